/* memblock: JSON-RPC 2.0 requests of the control socket.
 *
 * control.c hands over one line at a time; this file parses it with
 * json-c, checks it, calls manage.c or job.c and writes the reply with
 * json-c: no JSON is ever built or read by hand.  Design notes and
 * invariants:
 *
 *   J1  Every request line gets exactly one reply line, except a valid
 *       notification (a request with no id), which gets none whatever
 *       its outcome.  A line that is not JSON gets -32700 and one that
 *       is not a valid request gets -32600, both with id null unless
 *       the request had a valid id; neither ends the connection.
 *   J2  A request is checked in full before anything is called: the
 *       method name (-32601), then every member of params: no unknown
 *       member, each of the right type, every required one there
 *       (-32602, the message naming the member).  So a bad request
 *       changes nothing.
 *   J3  What manage.c and job.c refuse goes back as -32000 with their
 *       message and data.errno the errno's name; it is logged only at
 *       debug level, so a client repeating a bad request cannot flood
 *       the log.  Sizes given as strings are checked here before
 *       nbdkit_parse_size sees them, for the same reason (it logs what
 *       it refuses).
 *   J4  Nothing here holds a lock or keeps state between calls: any
 *       number of client threads may run rpc_handle at once, and one
 *       blocked in job_wait holds up no other.
 */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "codec.h"
#include "job.h"
#include "manage.h"
#include "rpc.h"
#include "volatile.h"

/* Why a call failed: a JSON-RPC error code, a message and, for
 * refusals and internal errors, an errno value for data.errno (0: no
 * data).
 */
struct rpc_fail {
  int code;
  int errnum;
  char msg[640];
};

/* The JSON types a member of params may have. */
enum rpc_type {
  RPC_STRING,                   /* a string with no NUL byte */
  RPC_BOOL,
  RPC_SIZE,                     /* bytes: an integer, or "4G" */
  RPC_UINT,                     /* a non-negative integer */
  RPC_OBJECT,
};

/* One member a method's params may hold. */
struct rpc_param {
  const char *name;
  enum rpc_type type;
  bool required;
};

/* One method: its name, its params and the function doing it, which
 * returns 0 with *result set, or -1 with f filled.
 */
struct rpc_method {
  const char *name;
  const struct rpc_param *params;     /* ends with a NULL name */
  int (*fn) (struct json_object *params, struct json_object **result,
             struct rpc_fail *f);
};

/* Errno names for data.errno. */
static const struct {
  int errnum;
  const char *name;
} rpc_errnos[] = {
  { EPERM, "EPERM" }, { ENOENT, "ENOENT" }, { EIO, "EIO" },
  { E2BIG, "E2BIG" }, { EBADF, "EBADF" }, { EAGAIN, "EAGAIN" },
  { ENOMEM, "ENOMEM" }, { EACCES, "EACCES" }, { EBUSY, "EBUSY" },
  { EEXIST, "EEXIST" }, { EXDEV, "EXDEV" }, { ENODEV, "ENODEV" },
  { ENOTDIR, "ENOTDIR" }, { EISDIR, "EISDIR" }, { EINVAL, "EINVAL" },
  { ENFILE, "ENFILE" }, { EMFILE, "EMFILE" }, { EFBIG, "EFBIG" },
  { ENOSPC, "ENOSPC" }, { ESPIPE, "ESPIPE" }, { EROFS, "EROFS" },
  { ERANGE, "ERANGE" }, { ENAMETOOLONG, "ENAMETOOLONG" },
  { ENOTSUP, "ENOTSUP" }, { EOVERFLOW, "EOVERFLOW" },
  { ECANCELED, "ECANCELED" }, { ELOOP, "ELOOP" }, { EDQUOT, "EDQUOT" },
  { ETIMEDOUT, "ETIMEDOUT" }, { EINTR, "EINTR" }, { ENXIO, "ENXIO" },
  { ETXTBSY, "ETXTBSY" }, { ENOTEMPTY, "ENOTEMPTY" },
};

/* The name of errnum, "EIO" for one the table lacks. */
const char *
rpc_errno_name (int errnum)
{
  size_t i;

  for (i = 0; i < sizeof rpc_errnos / sizeof rpc_errnos[0]; i++)
    if (rpc_errnos[i].errnum == errnum)
      return rpc_errnos[i].name;
  return "EIO";
}

/* Fill f with code, errnum and a formatted message; returns -1. */
static int __attribute__ ((format (printf, 4, 5)))
rpc_failf (struct rpc_fail *f, int code, int errnum, const char *fmt, ...)
{
  va_list ap;

  f->code = code;
  f->errnum = errnum;
  va_start (ap, fmt);
  vsnprintf (f->msg, sizeof f->msg, fmt, ap);
  va_end (ap);
  return -1;
}

/* A bad member of params (-32602); returns -1. */
#define rpc_bad_param(f, ...) \
  rpc_failf ((f), RPC_INVALID_PARAMS, 0, __VA_ARGS__)

/* Out of memory while building a reply (-32603); returns -1. */
static int
rpc_nomem (struct rpc_fail *f)
{
  return rpc_failf (f, RPC_INTERNAL_ERROR, ENOMEM, "out of memory");
}

/* A refusal from manage.c or job.c (-32000); returns -1. */
static int
rpc_refused (struct rpc_fail *f, const struct manage_err *err)
{
  return rpc_failf (f, RPC_REFUSED, err->errnum ? err->errnum : EIO,
                    "%s", err->msg);
}

/* The member name of obj, or NULL if absent or null (an optional
 * member given as null counts as not given).
 */
static struct json_object *
rpc_member (struct json_object *obj, const char *name)
{
  struct json_object *v;

  if (!json_object_object_get_ex (obj, name, &v))
    return NULL;
  return v;
}

/* The string member name of params (already checked), or NULL. */
static const char *
rpc_string (struct json_object *params, const char *name)
{
  struct json_object *v = rpc_member (params, name);

  return v ? json_object_get_string (v) : NULL;
}

/* The boolean member name of params (already checked), or dflt. */
static bool
rpc_bool (struct json_object *params, const char *name, bool dflt)
{
  struct json_object *v = rpc_member (params, name);

  return v ? json_object_get_boolean (v) : dflt;
}

/* Whether v is a JSON integer from 0 to INT64_MAX (json-c saturates
 * larger ones to UINT64_MAX, so they fail too).
 */
static bool
rpc_is_uint (struct json_object *v, uint64_t max)
{
  return json_object_is_type (v, json_type_int) &&
    json_object_get_int64 (v) >= 0 &&
    json_object_get_uint64 (v) <= max;
}

/* Parse a size string the way nbdkit_parse_size does, checking first
 * what it would refuse with a log line: digits and one optional suffix
 * (b k m g t p e, or s for 512-byte sectors), not over INT64_MAX.
 * -1 if s is no size.
 */
static int64_t
rpc_parse_size (const char *s)
{
  static const char suffixes[] = "bBkKmMgGtTpPeEsS";
  uint64_t v = 0, scale = 1;
  const char *p = s, *q;

  if (*p < '0' || *p > '9')
    return -1;
  while (*p >= '0' && *p <= '9') {
    if (__builtin_mul_overflow (v, 10, &v) ||
        __builtin_add_overflow (v, (uint64_t) (*p - '0'), &v))
      return -1;
    p++;
  }
  if (*p != '\0') {
    if (p[1] != '\0' || (q = strchr (suffixes, *p)) == NULL)
      return -1;
    if (*p == 's' || *p == 'S')
      scale = 512;
    else
      scale = (uint64_t) 1 << (10 * ((q - suffixes) / 2));
  }
  if (__builtin_mul_overflow (v, scale, &v) || v > INT64_MAX)
    return -1;
  return nbdkit_parse_size (s);
}

/* Check that member p of params has the right type (v is its value). */
static int
rpc_check_type (const struct rpc_param *p, struct json_object *v,
                struct rpc_fail *f)
{
  size_t len;

  switch (p->type) {
  case RPC_STRING:
    if (!json_object_is_type (v, json_type_string))
      return rpc_bad_param (f, "'%s' must be a string", p->name);
    len = json_object_get_string_len (v);
    if (strlen (json_object_get_string (v)) != len)
      return rpc_bad_param (f, "'%s' must not contain a NUL character",
                            p->name);
    return 0;
  case RPC_BOOL:
    if (!json_object_is_type (v, json_type_boolean))
      return rpc_bad_param (f, "'%s' must be true or false", p->name);
    return 0;
  case RPC_SIZE:
    if (json_object_is_type (v, json_type_string)) {
      if (rpc_parse_size (json_object_get_string (v)) == -1)
        return rpc_bad_param (f, "'%s': \"%.64s\" is not a size (bytes, "
                              "or a number with a suffix K M G T P E)",
                              p->name, json_object_get_string (v));
      return 0;
    }
    if (!rpc_is_uint (v, INT64_MAX))
      return rpc_bad_param (f, "'%s' must be an integer from 0 to 2^63-1 "
                            "or a string such as \"4G\"", p->name);
    return 0;
  case RPC_UINT:
    if (!rpc_is_uint (v, UINT64_MAX))
      return rpc_bad_param (f, "'%s' must be a non-negative integer",
                            p->name);
    return 0;
  case RPC_OBJECT:
    if (!json_object_is_type (v, json_type_object))
      return rpc_bad_param (f, "'%s' must be an object", p->name);
    return 0;
  }
  return rpc_bad_param (f, "'%s': unknown type", p->name);
}

/* Check params against a method's members (J2). */
static int
rpc_check_params (const struct rpc_param *spec, struct json_object *params,
                  struct rpc_fail *f)
{
  const struct rpc_param *p;

  json_object_object_foreach (params, key, val) {
    for (p = spec; p->name != NULL; p++)
      if (strcmp (p->name, key) == 0)
        break;
    if (p->name == NULL)
      return rpc_bad_param (f, "unknown member '%.64s'", key);
    if (val == NULL) {
      if (p->required)
        return rpc_check_type (p, val, f);
      continue;
    }
    if (rpc_check_type (p, val, f) == -1)
      return -1;
  }
  for (p = spec; p->name != NULL; p++)
    if (p->required && !json_object_object_get_ex (params, p->name, NULL))
      return rpc_bad_param (f, "missing member '%s'", p->name);
  return 0;
}

/* The size member name of params (already checked), or -1 if absent. */
static int64_t
rpc_size (struct json_object *params, const char *name)
{
  struct json_object *v = rpc_member (params, name);

  if (v == NULL)
    return -1;
  if (json_object_is_type (v, json_type_string))
    return rpc_parse_size (json_object_get_string (v));
  return json_object_get_int64 (v);
}

/* Add member key with value v to obj, taking v; -1 if out of memory. */
static int
rpc_add (struct json_object *obj, const char *key, struct json_object *v)
{
  if (v == NULL || json_object_object_add (obj, key, v) != 0) {
    json_object_put (v);
    return -1;
  }
  return 0;
}

/* Add member key to obj: the string s, or null if s is empty (json-c
 * has no null object: NULL is null).  -1 if out of memory.
 */
static int
rpc_add_name (struct json_object *obj, const char *key, const char *s)
{
  if (*s == '\0')
    return json_object_object_add (obj, key, NULL) == 0 ? 0 : -1;
  return rpc_add (obj, key, json_object_new_string (s));
}

/* The request counts of a device as JSON; NULL if out of memory. */
static struct json_object *
rpc_stats_json (const struct manage_stats *s)
{
  struct json_object *o = json_object_new_object ();

  if (o == NULL ||
      rpc_add (o, "reads", json_object_new_uint64 (s->reads)) == -1 ||
      rpc_add (o, "writes", json_object_new_uint64 (s->writes)) == -1 ||
      rpc_add (o, "zeroes", json_object_new_uint64 (s->zeroes)) == -1 ||
      rpc_add (o, "trims", json_object_new_uint64 (s->trims)) == -1 ||
      rpc_add (o, "flushes", json_object_new_uint64 (s->flushes)) == -1 ||
      rpc_add (o, "bytes_read",
               json_object_new_uint64 (s->bytes_read)) == -1 ||
      rpc_add (o, "bytes_written",
               json_object_new_uint64 (s->bytes_written)) == -1) {
    json_object_put (o);
    return NULL;
  }
  return o;
}

/* What a power cut did as JSON; NULL if out of memory. */
static struct json_object *
rpc_cut_json (const struct vol_result *r)
{
  struct json_object *o = json_object_new_object ();

  if (o == NULL ||
      rpc_add (o, "writes_kept", json_object_new_uint64 (r->writes_kept)) ||
      rpc_add (o, "writes_partial",
               json_object_new_uint64 (r->writes_partial)) ||
      rpc_add (o, "writes_lost", json_object_new_uint64 (r->writes_lost)) ||
      rpc_add (o, "writes_untracked",
               json_object_new_uint64 (r->writes_untracked)) ||
      rpc_add (o, "bytes_kept", json_object_new_uint64 (r->bytes_kept)) ||
      rpc_add (o, "bytes_lost", json_object_new_uint64 (r->bytes_lost))) {
    json_object_put (o);
    return NULL;
  }
  return o;
}

/* A volatile device's counts as JSON; NULL if out of memory. */
static struct json_object *
rpc_vol_json (const struct vol_status *s)
{
  struct json_object *o = json_object_new_object ();

  if (o == NULL ||
      rpc_add (o, "unflushed_writes",
               json_object_new_uint64 (s->unflushed_writes)) ||
      rpc_add (o, "unflushed_bytes",
               json_object_new_uint64 (s->unflushed_bytes)) ||
      rpc_add (o, "writes", json_object_new_uint64 (s->writes)) ||
      rpc_add (o, "flushes", json_object_new_uint64 (s->flushes)) ||
      rpc_add (o, "cuts", json_object_new_uint64 (s->cuts)) ||
      rpc_add (o, "spare_bytes", json_object_new_uint64 (s->spare_bytes)) ||
      rpc_add (o, "armed", json_object_new_boolean (s->armed)) ||
      rpc_add (o, "armed_after_writes",
               json_object_new_uint64 (s->armed_after)) ||
      rpc_add (o, "armed_keep",
               json_object_new_string (vol_keep_name (s->armed_keep))) ||
      rpc_add (o, "last_cut", rpc_cut_json (&s->last))) {
    json_object_put (o);
    return NULL;
  }
  return o;
}

/* A device as device_list shows it; NULL if out of memory. */
static struct json_object *
rpc_info_json (const struct manage_info *i)
{
  struct json_object *o = json_object_new_object ();

  if (o == NULL ||
      rpc_add (o, "name", json_object_new_string (i->name)) == -1 ||
      rpc_add (o, "size", json_object_new_uint64 (i->size)) == -1 ||
      rpc_add (o, "readonly", json_object_new_boolean (i->readonly)) == -1 ||
      rpc_add (o, "temp", json_object_new_boolean (i->temp)) == -1 ||
      rpc_add_name (o, "source", i->source) == -1 ||
      rpc_add_name (o, "snapshot_of", i->snapshot_of) == -1 ||
      rpc_add (o, "compress",
               json_object_new_string (codec_name (i->compress))) == -1 ||
      rpc_add (o, "allocated", json_object_new_uint64 (i->allocated)) == -1 ||
      rpc_add (o, "data", json_object_new_uint64 (i->data)) == -1 ||
      rpc_add (o, "connections",
               json_object_new_uint64 (i->connections)) == -1 ||
      rpc_add (o, "stats", rpc_stats_json (&i->stats)) == -1 ||
      rpc_add_name (o, "persist", i->persist) == -1 ||
      (i->vol ? rpc_add (o, "volatile", rpc_vol_json (&i->vstatus))
              : json_object_object_add (o, "volatile", NULL)) != 0) {
    json_object_put (o);
    return NULL;
  }
  return o;
}

/* A job as job_list shows it; NULL if out of memory. */
static struct json_object *
rpc_job_json (const struct job_info *j)
{
  struct json_object *o = json_object_new_object ();

  if (o == NULL ||
      rpc_add (o, "id", json_object_new_uint64 (j->id)) == -1 ||
      rpc_add (o, "kind", json_object_new_string (j->kind)) == -1 ||
      rpc_add (o, "device", json_object_new_string (j->device)) == -1 ||
      rpc_add (o, "path", json_object_new_string (j->path)) == -1 ||
      rpc_add (o, "state",
               json_object_new_string (job_state_name (j->state))) == -1 ||
      rpc_add (o, "done_bytes",
               json_object_new_uint64 (j->done_bytes)) == -1 ||
      rpc_add (o, "total_bytes",
               json_object_new_uint64 (j->total_bytes)) == -1 ||
      (j->state == JOB_FAILED &&
       rpc_add (o, "error", json_object_new_string (j->error)) == -1)) {
    json_object_put (o);
    return NULL;
  }
  return o;
}

/* manage_list callback: append one device to the array opaque. */
static int
rpc_list_one (void *opaque, const struct manage_info *info)
{
  struct json_object *v = rpc_info_json (info);

  if (v == NULL || json_object_array_add (opaque, v) != 0) {
    json_object_put (v);
    return -1;
  }
  return 0;
}

/* device_list {} */
static int
rpc_device_list (struct json_object *params, struct json_object **result,
                 struct rpc_fail *f)
{
  struct json_object *a = json_object_new_array ();

  (void) params;
  if (a == NULL)
    return rpc_nomem (f);
  if (manage_list (rpc_list_one, a) == -1) {
    json_object_put (a);
    return rpc_nomem (f);
  }
  *result = a;
  return 0;
}

/* device_create {name, size?, readonly?, from?, temp?, compress?, file?,
 * format?, uri?}
 */
static int
rpc_device_create (struct json_object *params, struct json_object **result,
                   struct rpc_fail *f)
{
  struct manage_create req = {
    .name = rpc_string (params, "name"),
    .size = rpc_size (params, "size"),
    .readonly = -1,
    .from = rpc_string (params, "from"),
    .temp = rpc_bool (params, "temp", false),
    .compress = -1,
    .file = rpc_string (params, "file"),
    .format = rpc_string (params, "format"),
    .uri = rpc_string (params, "uri"),
    .vol = rpc_bool (params, "volatile", false),
  };
  const char *compress = rpc_string (params, "compress");
  struct manage_info info;
  struct manage_err err = { 0 };
  enum codec c;

  if (rpc_member (params, "readonly") != NULL)
    req.readonly = rpc_bool (params, "readonly", false);
  if (compress != NULL) {
    if (codec_parse (compress, &c) == -1)
      return rpc_bad_param (f, "'compress': \"%.64s\" is not one of "
                            "none, zstd, lz4", compress);
    req.compress = c;
  }
  if (manage_create (&req, &info, &err) == -1)
    return rpc_refused (f, &err);
  if ((*result = rpc_info_json (&info)) == NULL)
    return rpc_nomem (f);
  return 0;
}

/* device_delete {name} */
static int
rpc_device_delete (struct json_object *params, struct json_object **result,
                   struct rpc_fail *f)
{
  struct manage_err err = { 0 };

  if (manage_delete (rpc_string (params, "name"), &err) == -1)
    return rpc_refused (f, &err);
  if ((*result = json_object_new_boolean (true)) == NULL)
    return rpc_nomem (f);
  return 0;
}

/* Describe the snapshots names[0..n-1] just made, into *result. */
static int
rpc_snapshot_entries (size_t n, const char *const *names,
                      struct json_object **result, struct rpc_fail *f)
{
  struct json_object *a = json_object_new_array ();
  struct manage_info info;
  struct manage_err err = { 0 };
  size_t i;

  if (a == NULL)
    return rpc_nomem (f);
  for (i = 0; i < n; i++) {
    /* A concurrent delete may have taken it already. */
    if (manage_get (names[i], &info, &err) == -1) {
      json_object_put (a);
      return rpc_refused (f, &err);
    }
    if (rpc_list_one (a, &info) == -1) {
      json_object_put (a);
      return rpc_nomem (f);
    }
  }
  *result = a;
  return 0;
}

/* snapshot {device, name} or {devices: {DEVICE: NAME, ...}} */
static int
rpc_snapshot (struct json_object *params, struct json_object **result,
              struct rpc_fail *f)
{
  struct json_object *devs = rpc_member (params, "devices");
  const char *device = rpc_string (params, "device");
  const char *name = rpc_string (params, "name");
  const char **devices, **names;
  struct manage_err err = { 0 };
  size_t n, i;
  int r;

  if (devs != NULL && (device != NULL || name != NULL))
    return rpc_bad_param (f, "give either 'device' and 'name', or "
                          "'devices', not both");
  if (devs == NULL) {
    if (device == NULL)
      return rpc_bad_param (f, "missing member 'device' (or 'devices')");
    if (name == NULL)
      return rpc_bad_param (f, "missing member 'name'");
    if (manage_snapshot (1, &device, &name, &err) == -1)
      return rpc_refused (f, &err);
    return rpc_snapshot_entries (1, &name, result, f);
  }

  n = json_object_object_length (devs);
  if (n == 0)
    return rpc_bad_param (f, "'devices' must name at least one device");
  devices = calloc (n, sizeof *devices);
  names = calloc (n, sizeof *names);
  if (devices == NULL || names == NULL) {
    free (devices);
    free (names);
    return rpc_nomem (f);
  }
  i = 0;
  r = 0;
  json_object_object_foreach (devs, key, val) {
    if (!json_object_is_type (val, json_type_string) ||
        strlen (json_object_get_string (val)) !=
        (size_t) json_object_get_string_len (val)) {
      r = rpc_bad_param (f, "'devices': the snapshot name for '%.64s' "
                         "must be a string", key);
      break;
    }
    devices[i] = key;
    names[i] = json_object_get_string (val);
    i++;
  }
  if (r == 0 && manage_snapshot (n, devices, names, &err) == -1)
    r = rpc_refused (f, &err);
  if (r == 0)
    r = rpc_snapshot_entries (n, names, result, f);
  free (devices);
  free (names);
  return r;
}

/* rollback {device, snapshot} */
static int
rpc_rollback (struct json_object *params, struct json_object **result,
              struct rpc_fail *f)
{
  struct manage_info info;
  struct manage_err err = { 0 };

  if (manage_rollback (rpc_string (params, "device"),
                       rpc_string (params, "snapshot"), &info, &err) == -1)
    return rpc_refused (f, &err);
  if ((*result = rpc_info_json (&info)) == NULL)
    return rpc_nomem (f);
  return 0;
}

/* save {device, path?, overwrite?} */
static int
rpc_save (struct json_object *params, struct json_object **result,
          struct rpc_fail *f)
{
  struct manage_err err = { 0 };
  uint64_t id;

  if (job_start_save (rpc_string (params, "device"),
                      rpc_string (params, "path"),
                      rpc_bool (params, "overwrite", false), &id, &err) == -1)
    return rpc_refused (f, &err);
  if ((*result = json_object_new_object ()) == NULL ||
      rpc_add (*result, "job", json_object_new_uint64 (id)) == -1) {
    json_object_put (*result);
    return rpc_nomem (f);
  }
  return 0;
}

/* power_cut {device, keep?, seed?, unit?, after_writes?} */
static int
rpc_power_cut (struct json_object *params, struct json_object **result,
               struct rpc_fail *f)
{
  struct vol_cut cut = {
    .keep = VOL_KEEP_NONE,
    .unit = 4096,
  };
  struct vol_result res;
  struct manage_err err = { 0 };
  const char *keep = rpc_string (params, "keep");
  struct json_object *v;

  if (keep && vol_keep_parse (keep, &cut.keep) == -1)
    return rpc_bad_param (f, "'keep': \"%.64s\" is not one of none, all, "
                          "random", keep);
  if ((v = rpc_member (params, "seed")) != NULL)
    cut.seed = json_object_get_uint64 (v);
  if ((v = rpc_member (params, "unit")) != NULL) {
    if (json_object_get_uint64 (v) != 512 &&
        json_object_get_uint64 (v) != 4096)
      return rpc_bad_param (f, "'unit' must be 512 or 4096");
    cut.unit = json_object_get_uint64 (v);
  }
  if ((v = rpc_member (params, "after_writes")) != NULL)
    cut.after_writes = json_object_get_uint64 (v);
  if (manage_power_cut (rpc_string (params, "device"), &cut, &res,
                        &err) == -1)
    return rpc_refused (f, &err);
  if (cut.after_writes > 0) {
    if ((*result = json_object_new_object ()) == NULL ||
        rpc_add (*result, "armed", json_object_new_boolean (true)) ||
        rpc_add (*result, "after_writes",
                 json_object_new_uint64 (cut.after_writes))) {
      json_object_put (*result);
      return rpc_nomem (f);
    }
    return 0;
  }
  if ((*result = rpc_cut_json (&res)) == NULL)
    return rpc_nomem (f);
  return 0;
}

/* power_cut_status {device} */
static int
rpc_power_cut_status (struct json_object *params,
                      struct json_object **result, struct rpc_fail *f)
{
  struct vol_status st;
  struct manage_err err = { 0 };

  if (manage_power_status (rpc_string (params, "device"), &st, &err) == -1)
    return rpc_refused (f, &err);
  if ((*result = rpc_vol_json (&st)) == NULL)
    return rpc_nomem (f);
  return 0;
}

/* job_list callback: append one job to the array opaque. */
static int
rpc_job_one (void *opaque, const struct job_info *info)
{
  struct json_object *v = rpc_job_json (info);

  if (v == NULL || json_object_array_add (opaque, v) != 0) {
    json_object_put (v);
    return -1;
  }
  return 0;
}

/* job_list {} */
static int
rpc_job_list (struct json_object *params, struct json_object **result,
              struct rpc_fail *f)
{
  struct json_object *a = json_object_new_array ();

  (void) params;
  if (a == NULL)
    return rpc_nomem (f);
  if (job_list (rpc_job_one, a) == -1) {
    json_object_put (a);
    return rpc_nomem (f);
  }
  *result = a;
  return 0;
}

/* job_wait {job}: blocks this client's thread until the job ends. */
static int
rpc_job_wait (struct json_object *params, struct json_object **result,
              struct rpc_fail *f)
{
  struct job_info info;
  struct manage_err err = { 0 };

  if (job_wait (json_object_get_uint64 (rpc_member (params, "job")),
                &info, &err) == -1)
    return rpc_refused (f, &err);
  if ((*result = rpc_job_json (&info)) == NULL)
    return rpc_nomem (f);
  return 0;
}

static const struct rpc_param rpc_no_params[] = {
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_create_params[] = {
  { "name", RPC_STRING, true },
  { "size", RPC_SIZE, false },
  { "readonly", RPC_BOOL, false },
  { "from", RPC_STRING, false },
  { "temp", RPC_BOOL, false },
  { "compress", RPC_STRING, false },
  { "file", RPC_STRING, false },
  { "format", RPC_STRING, false },
  { "uri", RPC_STRING, false },
  { "volatile", RPC_BOOL, false },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_delete_params[] = {
  { "name", RPC_STRING, true },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_snapshot_params[] = {
  { "device", RPC_STRING, false },
  { "name", RPC_STRING, false },
  { "devices", RPC_OBJECT, false },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_rollback_params[] = {
  { "device", RPC_STRING, true },
  { "snapshot", RPC_STRING, true },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_save_params[] = {
  { "device", RPC_STRING, true },
  { "path", RPC_STRING, false },
  { "overwrite", RPC_BOOL, false },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_cut_params[] = {
  { "device", RPC_STRING, true },
  { "keep", RPC_STRING, false },
  { "seed", RPC_UINT, false },
  { "unit", RPC_UINT, false },
  { "after_writes", RPC_UINT, false },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_device_params[] = {
  { "device", RPC_STRING, true },
  { NULL, RPC_STRING, false },
};
static const struct rpc_param rpc_wait_params[] = {
  { "job", RPC_UINT, true },
  { NULL, RPC_STRING, false },
};

static const struct rpc_method rpc_methods[] = {
  { "device_list", rpc_no_params, rpc_device_list },
  { "device_create", rpc_create_params, rpc_device_create },
  { "device_delete", rpc_delete_params, rpc_device_delete },
  { "snapshot", rpc_snapshot_params, rpc_snapshot },
  { "rollback", rpc_rollback_params, rpc_rollback },
  { "save", rpc_save_params, rpc_save },
  { "job_list", rpc_no_params, rpc_job_list },
  { "job_wait", rpc_wait_params, rpc_job_wait },
  { "power_cut", rpc_cut_params, rpc_power_cut },
  { "power_cut_status", rpc_device_params, rpc_power_cut_status },
};

/* The method called name, or NULL. */
static const struct rpc_method *
rpc_find_method (const char *name)
{
  size_t i;

  for (i = 0; i < sizeof rpc_methods / sizeof rpc_methods[0]; i++)
    if (strcmp (rpc_methods[i].name, name) == 0)
      return &rpc_methods[i];
  return NULL;
}

/* Serialize a reply object and take it; NULL if out of memory. */
static char *
rpc_serialize (struct json_object *reply)
{
  const char *s;
  char *r = NULL;

  if (reply != NULL) {
    s = json_object_to_json_string_ext (reply, JSON_C_TO_STRING_PLAIN |
                                        JSON_C_TO_STRING_NOSLASHESCAPE);
    if (s != NULL)
      r = strdup (s);
  }
  json_object_put (reply);
  if (r == NULL)
    errno = ENOMEM;
  return r;
}

/* A reply object {"jsonrpc":"2.0","id":id} with id's own reference
 * taken (NULL id: null); NULL if out of memory.
 */
static struct json_object *
rpc_reply_base (struct json_object *id)
{
  struct json_object *r = json_object_new_object ();

  if (r == NULL ||
      rpc_add (r, "jsonrpc", json_object_new_string ("2.0")) == -1 ||
      json_object_object_add (r, "id", json_object_get (id)) != 0) {
    json_object_put (r);
    return NULL;
  }
  return r;
}

/* The error reply to the request with id id (NULL: null). */
static char *
rpc_error_reply (struct json_object *id, const struct rpc_fail *f)
{
  struct json_object *r = rpc_reply_base (id);
  struct json_object *e = json_object_new_object ();
  struct json_object *data = NULL;

  if (r == NULL || e == NULL)
    goto nomem;
  if (rpc_add (e, "code", json_object_new_int (f->code)) == -1 ||
      rpc_add (e, "message", json_object_new_string (f->msg)) == -1)
    goto nomem;
  if (f->errnum != 0) {
    data = json_object_new_object ();
    if (data == NULL ||
        rpc_add (data, "errno",
                 json_object_new_string (rpc_errno_name (f->errnum))) == -1)
      goto nomem;
    if (rpc_add (e, "data", data) == -1) {
      data = NULL;                /* rpc_add dropped it */
      goto nomem;
    }
    data = NULL;                  /* e holds it */
  }
  if (rpc_add (r, "error", e) == -1) {
    e = NULL;
    goto nomem;
  }
  return rpc_serialize (r);

 nomem:
  json_object_put (data);
  json_object_put (e);
  json_object_put (r);
  errno = ENOMEM;
  return NULL;
}

/* Make an error reply with id null. */
char *
rpc_error_line (int code, const char *message, int errnum)
{
  struct rpc_fail f = { .code = code, .errnum = errnum };

  snprintf (f.msg, sizeof f.msg, "%s", message);
  return rpc_error_reply (NULL, &f);
}

/* Whether id is a valid request id: a string, a number or null. */
static bool
rpc_valid_id (struct json_object *id)
{
  return id == NULL ||
    json_object_is_type (id, json_type_string) ||
    json_object_is_type (id, json_type_int) ||
    json_object_is_type (id, json_type_double);
}

/* Check req, a parsed request, and run it.  *id receives the id to
 * answer (NULL: null), *notify whether no reply is due; the result or
 * the failure go to *result or f.
 */
static int
rpc_run (struct json_object *req, struct json_object **id, bool *notify,
         struct json_object **result, struct rpc_fail *f)
{
  struct json_object *v, *params = NULL;
  const struct rpc_method *m;
  const char *method;
  int r;

  *id = NULL;
  *notify = false;
  if (!json_object_is_type (req, json_type_object))
    return rpc_failf (f, RPC_INVALID_REQUEST, 0,
                      json_object_is_type (req, json_type_array)
                      ? "batch requests are not supported"
                      : "a request must be a JSON object");
  if (json_object_object_get_ex (req, "id", &v)) {
    if (!rpc_valid_id (v))
      return rpc_failf (f, RPC_INVALID_REQUEST, 0,
                        "'id' must be a string, a number or null");
    *id = v;
  }
  if (!json_object_object_get_ex (req, "jsonrpc", &v) ||
      !json_object_is_type (v, json_type_string) ||
      strcmp (json_object_get_string (v), "2.0") != 0)
    return rpc_failf (f, RPC_INVALID_REQUEST, 0,
                      "'jsonrpc' must be \"2.0\"");
  if (!json_object_object_get_ex (req, "method", &v) ||
      !json_object_is_type (v, json_type_string))
    return rpc_failf (f, RPC_INVALID_REQUEST, 0,
                      "'method' must be a string");
  method = json_object_get_string (v);
  if (json_object_object_get_ex (req, "params", &params) &&
      !json_object_is_type (params, json_type_object))
    return rpc_failf (f, RPC_INVALID_REQUEST, 0,
                      "'params' must be an object");
  /* A valid request: from here on a notification gets no reply. */
  *notify = !json_object_object_get_ex (req, "id", NULL);

  m = rpc_find_method (method);
  if (m == NULL)
    return rpc_failf (f, RPC_METHOD_NOT_FOUND, 0,
                      "unknown method '%.64s'", method);
  if (params == NULL) {
    params = json_object_new_object ();
    if (params == NULL)
      return rpc_nomem (f);
  }
  else
    json_object_get (params);
  nbdkit_debug ("control: %s", m->name);
  r = rpc_check_params (m->params, params, f);
  if (r == 0)
    r = m->fn (params, result, f);
  json_object_put (params);
  if (r == -1)
    nbdkit_debug ("control: %s refused (%d): %s", m->name, f->code, f->msg);
  return r;
}

/* Answer one request line (J1). */
int
rpc_handle (const char *line, size_t len, char **reply)
{
  struct json_tokener *tok;
  struct json_object *req, *id, *result = NULL, *r;
  struct rpc_fail f = { 0 };
  bool notify;
  size_t end;

  *reply = NULL;
  tok = json_tokener_new ();
  if (tok == NULL) {
    errno = ENOMEM;
    return -1;
  }
  json_tokener_set_flags (tok, JSON_TOKENER_STRICT |
                          JSON_TOKENER_VALIDATE_UTF8);
  /* The NUL after the line tells json-c that the text ends there. */
  req = json_tokener_parse_ex (tok, line, len + 1);
  end = json_tokener_get_parse_end (tok);
  if (req == NULL || strlen (line) != len ||
      strspn (line + end, " \t\r\n") != len - end) {
    rpc_failf (&f, RPC_PARSE_ERROR, 0, "parse error: %s",
               req == NULL
               ? json_tokener_error_desc (json_tokener_get_error (tok))
               : strlen (line) != len ? "NUL byte in the line"
               : "text after the request");
    json_tokener_free (tok);
    json_object_put (req);
    *reply = rpc_error_reply (NULL, &f);
    return *reply ? 0 : -1;
  }
  json_tokener_free (tok);

  if (rpc_run (req, &id, &notify, &result, &f) == -1) {
    if (!notify && (*reply = rpc_error_reply (id, &f)) == NULL) {
      json_object_put (req);
      return -1;
    }
    json_object_put (req);
    return 0;
  }
  if (notify) {
    json_object_put (result);
    json_object_put (req);
    return 0;
  }
  r = rpc_reply_base (id);
  if (r == NULL || rpc_add (r, "result", result) == -1) {
    if (r == NULL)
      json_object_put (result);
    json_object_put (r);
    json_object_put (req);
    errno = ENOMEM;
    return -1;
  }
  json_object_put (req);
  *reply = rpc_serialize (r);
  return *reply ? 0 : -1;
}
