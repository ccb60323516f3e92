/* memblock: connect strings, NAME[:ro|:rw][:size=SIZE][:from=SOURCE]
 * [:temp][:volatile][:compress=C][:format=FMT][:file=PATH|:persist=PATH|:nbd=URI].
 *
 * The same grammar names devices on the command line (name=...) and
 * selects them from a client (the NBD export name):
 *
 *   NAME          1 to 256 bytes of UTF-8, no control characters,
 *                 no '/' and no ':'
 *   :ro / :rw     read-only or read-write (at most one of them, once)
 *   :size=SIZE    device size, with nbdkit_parse_size suffixes
 *   :from=SOURCE  a copy-on-write clone of device SOURCE (a NAME)
 *   :temp         freed when its last connection closes
 *   :compress=C   keep the data compressed: zstd, lz4 or none
 *   :file=PATH    command line only: load a raw image at start-up; it
 *                 comes last and takes the rest of the string, so PATH
 *                 may hold ':'
 *   :persist=PATH command line only, last like :file=: load PATH at
 *                 start-up if it exists, save the device there at a
 *                 clean shutdown (save.c).  Only for a writable device
 *                 of its own: not with :ro, :from=, :temp or :file=.
 *                 Since both take the rest of the string, a :file= path
 *                 holding ":persist=" (or the reverse) is refused as the
 *                 two together, and the path is made absolute here
 *                 (nbdkit may chdir before the save at exit).
 *   :volatile     a disk with a volatile write cache (volatile.c)
 *   :format=FMT   command line only, with :file=: the image's format,
 *                 raw (the default) or one qemu-nbd reads (source.c)
 *   :nbd=URI      command line only, last like :file=: load from an NBD
 *                 server (libnbd's URI syntax)
 *
 * Export names arrive from the network, so every message about one
 * quotes it through connect_quote: escaped and cut short.
 */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "codec.h"
#include "connect.h"
#include "report.h"

static int connect_option_size (const char *opt, size_t len, const char *what,
                                struct connect *c);
static int connect_file (const char *path, enum connect_origin origin,
                         const char *what, struct connect *c);
static int connect_persist (const char *path, enum connect_origin origin,
                            const char *what, struct connect *c);
static int connect_check_persist (const struct connect *c, const char *what);
static int connect_uri (const char *uri, enum connect_origin origin,
                        const char *what, struct connect *c);
static int connect_check_source (const struct connect *c, const char *what);
static int connect_clash (const char *rest, const char *own,
                          const char *what);

/* Printable, length-limited form of untrusted s for log messages. */
const char *
connect_quote (const char *s, char *buf, size_t len)
{
  size_t o = 0;

  for (; *s && o + 8 < len; s++) {
    unsigned char ch = *s;
    if (ch >= 0x20 && ch < 0x7f && ch != '\\')
      buf[o++] = ch;
    else
      o += snprintf (buf + o, len - o, "\\x%02x", ch);
  }
  if (*s)
    snprintf (buf + o, len - o, "...");
  else
    buf[o] = '\0';
  return buf;
}

/* Length of the UTF-8 sequence at s if it is valid and not a control
 * character, else 0.
 */
static size_t
connect_utf8_char (const unsigned char *s)
{
  unsigned cp, n, i;

  if (s[0] < 0x80)
    return s[0] >= 0x20 && s[0] != 0x7f ? 1 : 0;
  else if ((s[0] & 0xe0) == 0xc0)
    n = 2, cp = s[0] & 0x1f;
  else if ((s[0] & 0xf0) == 0xe0)
    n = 3, cp = s[0] & 0x0f;
  else if ((s[0] & 0xf8) == 0xf0)
    n = 4, cp = s[0] & 0x07;
  else
    return 0;
  for (i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
      (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff) ||
      (cp >= 0x80 && cp <= 0x9f))            /* C1 controls */
    return 0;
  return n;
}

/* Check a device name of len bytes; report and return -1 if bad. */
static int
connect_check_name (const char *name, size_t len, const char *what)
{
  size_t i, n;

  if (len == 0) {
    report_error ("%s: the device name is empty", what);
    return -1;
  }
  if (len > CONNECT_NAME_MAX) {
    report_error ("%s: the device name is longer than %d bytes",
                  what, CONNECT_NAME_MAX);
    return -1;
  }
  for (i = 0; i < len; i += n) {
    if (name[i] == '/') {
      report_error ("%s: the device name may not contain '/'", what);
      return -1;
    }
    n = connect_utf8_char ((const unsigned char *) name + i);
    if (n == 0 || i + n > len) {
      report_error ("%s: the device name has a control character or "
                    "is not valid UTF-8", what);
      return -1;
    }
  }
  return 0;
}

/* Apply one option (between ':' separators) to c; -1 if bad. */
static int
connect_option (const char *opt, size_t len, const char *what,
                struct connect *c)
{
  if (len == 8 && strncmp (opt, "volatile", 8) == 0) {
    if (c->vol) {
      report_error ("%s: ':volatile' given twice", what);
      return -1;
    }
    c->vol = true;
    return 0;
  }
  if (len == 4 && strncmp (opt, "temp", 4) == 0) {
    if (c->temp) {
      report_error ("%s: ':temp' given twice", what);
      return -1;
    }
    c->temp = true;
    return 0;
  }
  if (len > 9 && strncmp (opt, "compress=", 9) == 0) {
    char value[8];
    enum codec codec;

    if (c->compress != -1) {
      report_error ("%s: ':compress=' given twice", what);
      return -1;
    }
    snprintf (value, sizeof value, "%.*s", (int) (len - 9), opt + 9);
    if (len - 9 >= sizeof value || codec_parse (value, &codec) == -1) {
      report_error ("%s: ':compress=' takes zstd, lz4 or none", what);
      return -1;
    }
    c->compress = codec;
    return 0;
  }
  if (len >= 7 && strncmp (opt, "format=", 7) == 0) {
    if (c->format[0]) {
      report_error ("%s: ':format=' given twice", what);
      return -1;
    }
    if (len - 7 > CONNECT_FORMAT_MAX) {
      report_error ("%s: ':format=': no format has so long a name", what);
      return -1;
    }
    memcpy (c->format, opt + 7, len - 7);
    c->format[len - 7] = '\0';
    return connect_check_format (c->format, what);
  }
  if (len > 5 && strncmp (opt, "from=", 5) == 0) {
    if (c->from[0]) {
      report_error ("%s: ':from=' given twice", what);
      return -1;
    }
    if (connect_check_name (opt + 5, len - 5, what) == -1)
      return -1;
    memcpy (c->from, opt + 5, len - 5);
    c->from[len - 5] = '\0';
    return 0;
  }
  return connect_option_size (opt, len, what, c);
}

/* Apply :ro, :rw or :size= to c; -1 if bad or unknown. */
static int
connect_option_size (const char *opt, size_t len, const char *what,
                     struct connect *c)
{
  char buf[CONNECT_QUOTE_MAX], value[64];
  int ro;

  if (len == 0) {
    report_error ("%s: empty option (a stray ':')", what);
    return -1;
  }
  if ((len == 2 && strncmp (opt, "ro", 2) == 0) ||
      (len == 2 && strncmp (opt, "rw", 2) == 0)) {
    ro = opt[1] == 'o';
    if (c->readonly != -1) {
      report_error ("%s: ':ro' and ':rw' may appear only once, "
                    "and not together", what);
      return -1;
    }
    c->readonly = ro;
    return 0;
  }
  if (len > 5 && strncmp (opt, "size=", 5) == 0) {
    if (c->size != -1) {
      report_error ("%s: ':size=' given twice", what);
      return -1;
    }
    if (len - 5 >= sizeof value) {
      report_error ("%s: the size is too long to be a number", what);
      return -1;
    }
    memcpy (value, opt + 5, len - 5);
    value[len - 5] = '\0';
    c->size = nbdkit_parse_size (value);
    if (c->size == -1) {
      report_error ("%s: bad size '%s'", what,
                    connect_quote (value, buf, sizeof buf));
      return -1;
    }
    return 0;
  }
  snprintf (value, sizeof value, "%.*s", (int) (len < 40 ? len : 40), opt);
  report_error ("%s: unknown option '%s' (expected ro, rw, size=SIZE, "
                "from=SOURCE, temp, volatile, compress=C, format=FMT, "
                "file=PATH, "
                "persist=PATH or nbd=URI)",
                what, connect_quote (value, buf, sizeof buf));
  return -1;
}

/* Parse str into c; on error log a line naming it and return -1. */
int
connect_parse (const char *str, enum connect_origin origin, struct connect *c)
{
  char quoted[CONNECT_QUOTE_MAX], what[CONNECT_QUOTE_MAX + 32];
  const char *colon = strchr (str, ':');
  size_t len = colon ? (size_t) (colon - str) : strlen (str);

  connect_quote (str, quoted, sizeof quoted);
  if (origin == CONNECT_CONFIG)
    snprintf (what, sizeof what, "name=%s", quoted);
  else
    snprintf (what, sizeof what, "export '%s'", quoted);

  *c = (struct connect) { .readonly = -1, .size = -1, .compress = -1 };
  if (connect_check_name (str, len, what) == -1)
    return -1;
  memcpy (c->name, str, len);
  c->name[len] = '\0';
  while (colon) {
    const char *opt = colon + 1;

    if (strncmp (opt, "file=", 5) == 0) {
      if (connect_file (opt + 5, origin, what, c) == -1)
        return -1;
      break;                    /* the path takes the rest */
    }
    if (strncmp (opt, "persist=", 8) == 0) {
      if (connect_persist (opt + 8, origin, what, c) == -1)
        return -1;
      break;                    /* the path takes the rest */
    }
    if (strncmp (opt, "nbd=", 4) == 0) {
      if (connect_uri (opt + 4, origin, what, c) == -1)
        return -1;
      break;                    /* the URI takes the rest */
    }
    colon = strchr (opt, ':');
    len = colon ? (size_t) (colon - opt) : strlen (opt);
    if (connect_option (opt, len, what, c) == -1)
      return -1;
  }
  if (c->from[0] && c->size != -1) {
    report_error ("%s: ':size=' cannot go with ':from=' (a clone has its "
                  "source's size)", what);
    connect_free (c);
    return -1;
  }
  if (c->from[0] && c->file) {
    report_error ("%s: ':from=' and ':file=' cannot go together", what);
    connect_free (c);
    return -1;
  }
  if (c->persist && connect_check_persist (c, what) == -1) {
    connect_free (c);
    return -1;
  }
  if (connect_check_source (c, what) == -1) {
    connect_free (c);
    return -1;
  }
  return 0;
}

/* Check a format name: lower-case letters and digits, as qemu names
 * them.  -1 after logging if bad.
 */
int
connect_check_format (const char *format, const char *what)
{
  size_t n = strspn (format, "abcdefghijklmnopqrstuvwxyz0123456789");

  if (*format == '\0' || format[n] != '\0' || n > CONNECT_FORMAT_MAX) {
    report_error ("%s: ':format=' takes a format name such as raw, qcow2 "
                  "or vmdk", what);
    return -1;
  }
  return 0;
}

/* Refuse :format= without :file=, and :nbd= with another source or a
 * clone; -1 if so.
 */
static int
connect_check_source (const struct connect *c, const char *what)
{
  const char *why = NULL;

  if (c->vol && c->readonly == 1)
    why = "':volatile' needs a writable device, not ':ro'";
  else if (c->vol && c->persist)
    why = "':volatile' cannot go with ':persist='";
  else if (c->format[0] && c->file == NULL)
    why = "':format=' is the format of a ':file=' image: give ':file=' "
          "after it";
  else if (c->uri && c->from[0])
    why = "':from=' and ':nbd=' cannot go together";
  else if (c->uri && (c->file || c->persist))
    why = "':nbd=' cannot go with ':file=' or ':persist='";
  if (why == NULL)
    return 0;
  report_error ("%s: %s", what, why);
  return -1;
}

/* Take URI of :nbd=URI, the rest of the string; -1 if bad. */
static int
connect_uri (const char *uri, enum connect_origin origin, const char *what,
             struct connect *c)
{
  if (origin == CONNECT_CLIENT) {
    report_error ("%s: ':nbd=' is for the command line only", what);
    return -1;
  }
  if (*uri == '\0') {
    report_error ("%s: ':nbd=' needs a URI", what);
    return -1;
  }
  if (connect_clash (uri, "nbd=", what) == -1)
    return -1;
  c->uri = strdup (uri);
  if (c->uri == NULL) {
    report_error ("strdup: %m");
    return -1;
  }
  return 0;
}

/* The options that take the rest of the string: they exclude each
 * other, so the rest of one (rest, after ':own') must not hold another.
 * -1 after logging if it does.
 */
static int
connect_clash (const char *rest, const char *own, const char *what)
{
  static const char *const last[] = { "file=", "persist=", "nbd=" };
  char marker[16];
  size_t i;

  for (i = 0; i < sizeof last / sizeof last[0]; i++) {
    if (strcmp (last[i], own) == 0)
      continue;
    snprintf (marker, sizeof marker, ":%s", last[i]);
    if (strstr (rest, marker)) {
      report_error ("%s: ':%s' and ':%s' cannot go together (each takes "
                    "the rest of the string)", what, own, last[i]);
      return -1;
    }
  }
  return 0;
}

/* Refuse :persist= with an option it cannot go with; -1 if so. */
static int
connect_check_persist (const struct connect *c, const char *what)
{
  const char *why = NULL;

  if (c->readonly == 1)
    why = "needs a writable device, not ':ro' (it is saved at exit)";
  else if (c->from[0])
    why = "cannot go with ':from=' (a clone's data is mostly its source's)";
  else if (c->temp)
    why = "cannot go with ':temp' (a temporary device does not last "
          "until exit)";
  if (why == NULL)
    return 0;
  report_error ("%s: ':persist=' %s", what, why);
  return -1;
}

/* Take PATH of :persist=PATH, the rest of the string, made absolute;
 * -1 if bad.
 */
static int
connect_persist (const char *path, enum connect_origin origin,
                 const char *what, struct connect *c)
{
  if (origin == CONNECT_CLIENT) {
    report_error ("%s: ':persist=' is for the command line only", what);
    return -1;
  }
  if (*path == '\0') {
    report_error ("%s: ':persist=' needs a path", what);
    return -1;
  }
  if (connect_clash (path, "persist=", what) == -1)
    return -1;
  c->persist = nbdkit_absolute_path (path);   /* NULL: it logged why */
  return c->persist ? 0 : -1;
}

/* Take PATH of :file=PATH, the rest of the string; -1 if bad. */
static int
connect_file (const char *path, enum connect_origin origin, const char *what,
              struct connect *c)
{
  if (origin == CONNECT_CLIENT) {
    report_error ("%s: ':file=' is for the command line only", what);
    return -1;
  }
  if (*path == '\0') {
    report_error ("%s: ':file=' needs a path", what);
    return -1;
  }
  if (connect_clash (path, "file=", what) == -1)
    return -1;
  c->file = strdup (path);
  if (c->file == NULL) {
    report_error ("strdup: %m");
    return -1;
  }
  return 0;
}

/* Whether c asks for a device to be made when none has its name (with
 * dynamic=true): it carries an option other than :ro.  A bare name, or
 * one with only :ro, names a device that must exist.
 */
bool
connect_creates (const struct connect *c)
{
  return c->readonly == 0 || c->size != -1 || c->from[0] || c->temp ||
         c->compress != -1 || c->vol;
}

/* Free what connect_parse allocated in c. */
void
connect_free (struct connect *c)
{
  free (c->file);
  c->file = NULL;
  free (c->persist);
  c->persist = NULL;
  free (c->uri);
  c->uri = NULL;
}
