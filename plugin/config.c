/* memblock: plugin parameters. */

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "arena.h"
#include "config.h"
#include "human.h"
#include "report.h"
#include "store.h"

struct config config = {
  .size = CONFIG_DEFAULT_SIZE,
  .chunk_shift = CONFIG_DEFAULT_CHUNK_SHIFT,
  .max_memory = UINT64_MAX,
  .max_devices = CONFIG_DEFAULT_MAX_DEVICES,
};

/* Keys seen so far, to refuse a repeated one. */
static unsigned config_seen;
enum { SEEN_SIZE = 1, SEEN_CHUNK = 2, SEEN_MAXMEM = 4, SEEN_DYNAMIC = 8,
       SEEN_MAXDEV = 16, SEEN_COMPRESS = 32, SEEN_MLOCK = 64,
       SEEN_CONTROL = 128, SEEN_GRACE = 256 };

/* Whether value is 1 to max digits, so that nbdkit_parse_unsigned
 * will not log a refusal of its own (one line per bad parameter).
 */
static bool
config_digits (const char *value, size_t max)
{
  size_t n = strspn (value, "0123456789");

  return n >= 1 && n <= max && value[n] == '\0';
}

/* Refuse key if it was already given; else remember it. */
static int
config_once (const char *key, unsigned bit)
{
  if (config_seen & bit) {
    nbdkit_error ("%s: given more than once", key);
    return -1;
  }
  config_seen |= bit;
  return 0;
}

/* Parse a size for key; -1 after logging a line naming key. */
static int64_t
config_size (const char *key, const char *value)
{
  int64_t r = nbdkit_parse_size (value);

  if (r == -1)
    nbdkit_error ("%s=%s: not a valid size (0 to 2^63-1 bytes, "
                  "suffixes K M G T P E)", key, value);
  return r;
}

/* Add a device declared with name=CONNECT. */
static int
config_add_device (const char *value)
{
  struct connect c, *n;
  size_t i;

  if (connect_parse (value, CONNECT_CONFIG, &c) == -1)
    return -1;
  for (i = 0; i < config.ndevices; i++) {
    if (strcmp (config.devices[i].name, c.name) == 0) {
      nbdkit_error ("name=%s: device '%s' is declared twice", value, c.name);
      connect_free (&c);
      return -1;
    }
  }
  n = realloc (config.devices, (config.ndevices + 1) * sizeof *n);
  if (n == NULL) {
    nbdkit_error ("realloc: %m");
    connect_free (&c);
    return -1;
  }
  config.devices = n;
  config.devices[config.ndevices++] = c;
  return 0;
}

/* The .config callback: one key=value. */
int
config_set (const char *key, const char *value)
{
  int64_t r;

  if (strcmp (key, "name") == 0)
    return config_add_device (value);
  if (strcmp (key, "size") == 0) {
    if (config_once (key, SEEN_SIZE) == -1 ||
        (r = config_size (key, value)) == -1)
      return -1;
    config.size = r;
    return 0;
  }
  if (strcmp (key, "chunk-size") == 0) {
    if (config_once (key, SEEN_CHUNK) == -1 ||
        (r = config_size (key, value)) == -1)
      return -1;
    if (r < ((int64_t) 1 << STORE_MIN_CHUNK_SHIFT) ||
        r > ((int64_t) 1 << STORE_MAX_CHUNK_SHIFT) || (r & (r - 1)) != 0) {
      nbdkit_error ("chunk-size=%s: must be a power of 2 from 4K to 1G",
                    value);
      return -1;
    }
    config.chunk_shift = __builtin_ctzll (r);
    return 0;
  }
  if (strcmp (key, "max-memory") == 0) {
    if (config_once (key, SEEN_MAXMEM) == -1 ||
        (r = config_size (key, value)) == -1)
      return -1;
    if (r < (int64_t) STORE_PAGE) {
      nbdkit_error ("max-memory=%s: must be at least 4K", value);
      return -1;
    }
    config.max_memory = r;
    return 0;
  }
  if (strcmp (key, "dynamic") == 0) {
    if (config_once (key, SEEN_DYNAMIC) == -1)
      return -1;
    if ((r = nbdkit_parse_bool (value)) == -1) {
      nbdkit_error ("dynamic=%s: expected true or false", value);
      return -1;
    }
    config.dynamic = r;
    return 0;
  }
  if (strcmp (key, "max-devices") == 0) {
    unsigned n;
    if (config_once (key, SEEN_MAXDEV) == -1)
      return -1;
    if (!config_digits (value, 5) ||
        nbdkit_parse_unsigned (key, value, &n) == -1 ||
        n < 1 || n > CONFIG_MAX_DEVICES_LIMIT) {
      nbdkit_error ("max-devices=%s: expected a number from 1 to %d",
                    value, CONFIG_MAX_DEVICES_LIMIT);
      return -1;
    }
    config.max_devices = n;
    return 0;
  }
  if (strcmp (key, "compress") == 0) {
    if (config_once (key, SEEN_COMPRESS) == -1)
      return -1;
    if (codec_parse (value, &config.compress) == -1) {
      nbdkit_error ("compress=%s: expected zstd, lz4 or none", value);
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "mlock") == 0) {
    if (config_once (key, SEEN_MLOCK) == -1)
      return -1;
    if ((r = nbdkit_parse_bool (value)) == -1) {
      nbdkit_error ("mlock=%s: expected true or false", value);
      return -1;
    }
    config.mlock = r;
    return 0;
  }
  if (strcmp (key, "control") == 0) {
    if (config_once (key, SEEN_CONTROL) == -1)
      return -1;
    if (value[0] != '/' || strlen (value) >= CONFIG_SOCKET_PATH_MAX) {
      nbdkit_error ("control=%s: must be an absolute path of at most %d "
                    "bytes", value, CONFIG_SOCKET_PATH_MAX - 1);
      return -1;
    }
    if ((config.control = strdup (value)) == NULL) {
      nbdkit_error ("strdup: %m");
      return -1;
    }
    return 0;
  }
  if (strcmp (key, "temp-grace") == 0) {
    unsigned n;
    if (config_once (key, SEEN_GRACE) == -1)
      return -1;
    if (!config_digits (value, 5) ||
        nbdkit_parse_unsigned (key, value, &n) == -1 ||
        n > CONFIG_MAX_TEMP_GRACE) {
      nbdkit_error ("temp-grace=%s: expected seconds from 0 to %d",
                    value, CONFIG_MAX_TEMP_GRACE);
      return -1;
    }
    config.temp_grace = n;
    return 0;
  }
  nbdkit_error ("unknown parameter '%s' (see nbdkit memblock --help)", key);
  return -1;
}

/* Whether a device may keep its data with codec compress (-1: the
 * compress= default) beside the other parameters; -1 after logging one
 * line for the first rule it breaks.  what names the device ("name=a",
 * "export 'a'"), or is NULL for the compress= default itself.
 */
int
config_check_device (const char *what, int compress)
{
  enum codec codec = compress == -1 ? config.compress : (enum codec) compress;
  const char *sep = what ? ": " : "";
  char given[32], chunk[32];

  if (codec == CODEC_NONE)
    return 0;
  if (what == NULL)
    what = "";
  snprintf (given, sizeof given, "%scompress=%s",
            compress == -1 ? "" : ":", codec_name (codec));
  if (config.mlock) {
    report_error ("%s%s%s cannot go with mlock=true: compressed data is "
                  "not locked (see LOCKED MEMORY in nbdkit-memblock(1))",
                  what, sep, given);
    return -1;
  }
  if (((uint64_t) 1 << config.chunk_shift) < CODEC_UNIT) {
    human_format_size ((uint64_t) 1 << config.chunk_shift,
                       chunk, sizeof chunk);
    report_error ("%s%s%s needs chunk-size of at least %zuK, not %s",
                  what, sep, given, CODEC_UNIT / 1024, chunk);
    return -1;
  }
  return 0;
}

/* With mlock=true, check that the kernel lets nbdkit lock all the data
 * it may hold: max-memory, or without a cap more than RLIMIT_MEMLOCK
 * (which only CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK allows).
 * Asking the kernel is the only sure test: the capability overrides
 * the limit.
 */
static int
config_check_mlock (void)
{
  struct rlimit rl;
  uint64_t want;
  char have[32], need[32];

  if (getrlimit (RLIMIT_MEMLOCK, &rl) == -1) {
    nbdkit_error ("mlock=true: getrlimit: %m");
    return -1;
  }
  want = config.max_memory != UINT64_MAX ? config.max_memory
    : rl.rlim_cur == RLIM_INFINITY ? 0 : (uint64_t) rl.rlim_cur + STORE_PAGE;
  if (want == 0 || arena_can_lock (want))
    return 0;
  human_format_size (rl.rlim_cur, have, sizeof have);
  if (config.max_memory == UINT64_MAX)
    nbdkit_error ("mlock=true: RLIMIT_MEMLOCK (%s) cannot cover the data "
                  "and max-memory is not set: set max-memory= no larger "
                  "than the limit, or raise it (ulimit -l)", have);
  else {
    human_format_size (config.max_memory, need, sizeof need);
    nbdkit_error ("mlock=true: RLIMIT_MEMLOCK (%s) cannot cover "
                  "max-memory=%s: raise it to at least %s "
                  "(ulimit -l %" PRIu64 ") or lower max-memory",
                  have, need, need, (config.max_memory + 1023) / 1024);
  }
  return -1;
}

/* The .config_complete callback: defaults and cross-checks. */
int
config_complete (void)
{
  if (config.ndevices == 0 && config_add_device (CONFIG_DEFAULT_NAME) == -1)
    return -1;
  if (config.ndevices > config.max_devices) {
    nbdkit_error ("max-devices=%u: %zu devices are declared with name=",
                  config.max_devices, config.ndevices);
    return -1;
  }
  if (config_check_device (NULL, -1) == -1)
    return -1;
  for (size_t i = 0; i < config.ndevices; i++) {
    char what[CONNECT_NAME_MAX + 8];

    snprintf (what, sizeof what, "name=%s", config.devices[i].name);
    if (config_check_device (what, config.devices[i].compress) == -1)
      return -1;
  }
  if (config.mlock && config_check_mlock () == -1)
    return -1;
  return 0;
}

/* Free what config_set allocated. */
void
config_free (void)
{
  size_t i;

  for (i = 0; i < config.ndevices; i++)
    connect_free (&config.devices[i]);
  free (config.devices);
  config.devices = NULL;
  free (config.control);
  config.control = NULL;
  config.ndevices = 0;
}
