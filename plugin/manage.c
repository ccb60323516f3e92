/* memblock: managing devices while the server runs.
 *
 * The control socket's verbs (rpc.c) land here: make and delete
 * devices, snapshot them, roll them back, and freeze one for a save.
 * Everything here runs under the table's lock (registry.c), which only
 * connects, closes and these verbs take: never a request.
 *
 * A snapshot is a read-only device whose store is the device's store as
 * it was; the device goes on in a new, empty clone of it (layer.c).
 * Requests see the swap through the devices' gates (gate.c):
 *
 *   S1  A device's store pointer changes only with its gate closed, so
 *       a request uses one store from start to end.  A snapshot of
 *       several devices closes every gate before it swaps any store, so
 *       a request in flight on any of them is in all the snapshots or
 *       in none.  Refusals are all checked, and the new stores and
 *       devices made, before the first gate closes: a refused call
 *       changes nothing.
 *   S2  Deleting a device removes its name at once; its store goes when
 *       its last holder does (R1 in store.c).  A layer that is nobody's
 *       device any more and that only one store reads through is folded
 *       into that store's place (manage_tidy), with the gates of every
 *       device reading through it closed (L1, L2 in layer.c).  So chains
 *       shrink as snapshots go, and pages no device reads are freed.
 *   S3  Devices point at each other (source, snapshot_of) only while
 *       both exist: deleting one clears the pointers to it.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "job.h"
#include "source.h"
#include "volatile.h"
#include "manage.h"
#include "registry.h"
#include "report.h"

/* Most devices in one snapshot call. */
#define MANAGE_MAX_BATCH 256

/* Refuse with errno errnum and a one-line message; returns -1. */
int
manage_fail (struct manage_err *err, int errnum, const char *fmt, ...)
{
  va_list ap;

  err->errnum = errnum;
  va_start (ap, fmt);
  vsnprintf (err->msg, sizeof err->msg, fmt, ap);
  va_end (ap);
  nbdkit_debug ("control: %s", err->msg);
  return -1;
}

/* Whether name is a device name, bare (no options): -1 after filling
 * err (EINVAL) if not.
 */
static int
manage_check_name (const char *what, const char *name,
                   struct manage_err *err)
{
  struct connect c;
  char quoted[CONNECT_QUOTE_MAX];
  bool bare;

  connect_quote (name, quoted, sizeof quoted);
  if (name[0] == '\0')
    return manage_fail (err, EINVAL, "%s: a name must not be empty", what);
  report_capture (err);
  if (connect_parse (name, CONNECT_CLIENT, &c) == -1) {
    report_capture (NULL);
    err->errnum = EINVAL;
    return -1;
  }
  report_capture (NULL);
  bare = strcmp (c.name, name) == 0;
  connect_free (&c);
  if (!bare)
    return manage_fail (err, EINVAL, "%s '%s': not a plain device name "
                        "(':' starts an option)", what, quoted);
  return 0;
}

/* The device called name, or NULL after filling err (ENOENT); lock held. */
static struct device *
manage_find (const char *name, struct manage_err *err)
{
  struct device *dev = registry_find (name);
  char quoted[CONNECT_QUOTE_MAX];

  if (dev == NULL)
    manage_fail (err, ENOENT, "device '%s': no such device",
                 connect_quote (name, quoted, sizeof quoted));
  return dev;
}

/* Describe dev into info; lock held. */
static void
manage_describe (const struct device *dev, struct manage_info *info)
{
  uint64_t counts[GATE_KINDS];

  memset (info, 0, sizeof *info);
  strcpy (info->name, dev->name);
  info->size = store_size (dev->store);
  info->readonly = dev->readonly;
  info->temp = dev->temp;
  if (dev->source)
    strcpy (info->source, dev->source->name);
  if (dev->snapshot_of)
    strcpy (info->snapshot_of, dev->snapshot_of->name);
  info->compress = store_codec (dev->store);
  info->allocated = store_allocated (dev->store);
  info->data = store_data (dev->store);
  if (dev->vol) {               /* the cache and the durable store */
    info->allocated += store_allocated (store_source (dev->store));
    info->data += store_data (store_source (dev->store));
    info->vol = true;
    vol_status (dev, &info->vstatus);
  }
  info->connections = dev->opens;
  gate_counts ((struct gate *) &dev->gate, counts);
  info->stats.reads = counts[GATE_READ];
  info->stats.writes = counts[GATE_WRITE];
  info->stats.zeroes = counts[GATE_ZERO];
  info->stats.trims = counts[GATE_TRIM];
  info->stats.flushes = counts[GATE_FLUSH];
  info->stats.extents = counts[GATE_EXTENTS];
  info->stats.bytes_read = counts[GATE_BYTES_READ];
  info->stats.bytes_written = counts[GATE_BYTES_WRITTEN];
  if (dev->persist)
    snprintf (info->persist, sizeof info->persist, "%s", dev->persist);
}

/* Call fn on each device's description, stopping at the first -1. */
int
manage_list (int (*fn) (void *opaque, const struct manage_info *),
             void *opaque)
{
  struct manage_info *info = malloc (sizeof *info);
  struct device **table;
  size_t n, i;
  int r = 0;

  if (info == NULL)
    return -1;
  registry_lock_table ();
  table = registry_table (&n);
  for (i = 0; i < n && r == 0; i++) {
    manage_describe (table[i], info);
    r = fn (opaque, info);
  }
  registry_unlock_table ();
  free (info);
  return r;
}

/* Describe the device called name; -1 with err (ENOENT) if none. */
int
manage_get (const char *name, struct manage_info *info,
            struct manage_err *err)
{
  struct device *dev;

  registry_lock_table ();
  if ((dev = manage_find (name, err)) != NULL)
    manage_describe (dev, info);
  registry_unlock_table ();
  return dev ? 0 : -1;
}

/* Whether store s lies on dev's chain of stores. */
static bool
manage_reads_through (const struct device *dev, const struct store *s)
{
  for (const struct store *t = dev->store; t; t = store_source (t))
    if (t == s)
      return true;
  return false;
}

/* The devices whose chain passes through s, into a new array of *n;
 * NULL if out of memory.  Lock held.
 */
static struct device **
manage_readers (const struct store *s, size_t *n)
{
  struct device **table, **out;
  size_t count, i;

  table = registry_table (&count);
  if ((out = malloc ((count + 1) * sizeof *out)) == NULL)
    return NULL;
  *n = 0;
  for (i = 0; i < count; i++)
    if (manage_reads_through (table[i], s))
      out[(*n)++] = table[i];
  return out;
}

/* Whether store s is a device's store, or a volatile device's durable
 * store (V1 in volatile.c); lock held.
 */
static bool
manage_is_device_store (const struct store *s)
{
  struct device **table;
  size_t n, i;

  table = registry_table (&n);
  for (i = 0; i < n; i++)
    if (table[i]->store == s ||
        (table[i]->vol && store_source (table[i]->store) == s))
      return true;
  return false;
}

/* Refuse what would change a volatile device's layers (V1). */
static int
manage_not_volatile (const struct device *dev, const char *what,
                     struct manage_err *err)
{
  if (dev->vol == NULL)
    return 0;
  return manage_fail (err, EINVAL, "%s of %s: the device is volatile "
                      "(its layers are its write cache): no snapshot, "
                      "rollback or save", what, dev->label);
}

/* Put parent in child's place everywhere: as the store of the devices
 * that had child, and the source of the stores that read through it
 * (L2, gates closed); each lets go of child.  Lock held.
 */
static void
manage_replace (struct store *child, struct store *parent)
{
  struct device **table;
  size_t n, i;

  table = registry_table (&n);
  for (i = 0; i < n; i++) {
    if (table[i]->store == child) {
      table[i]->store = store_ref (parent);
      store_destroy (child);
      continue;
    }
    for (struct store *t = table[i]->store; t; t = store_source (t))
      if (store_source (t) == child) {
        store_set_source (t, parent);
        break;
      }
  }
}

/* Fold away the first layer found that is nobody's device and that one
 * store alone reads through (S2); true if one was folded.  Lock held.
 */
static bool
manage_fold_one (void)
{
  struct device **table;
  size_t n, i;

  table = registry_table (&n);
  for (i = 0; i < n; i++) {
    for (struct store *child = table[i]->store; store_source (child);
         child = store_source (child)) {
      struct store *parent = store_source (child);
      struct timespec t0, t1;
      int r;

      struct device **readers;
      size_t nr, k;

      /* A clone may keep its data with another codec than its source:
       * folding would give the device the source's.
       */
      if (store_refs (parent) != 1 || manage_is_device_store (parent) ||
          store_codec (parent) != store_codec (child))
        continue;
      if ((readers = manage_readers (child, &nr)) == NULL)
        return false;
      clock_gettime (CLOCK_MONOTONIC, &t0);
      for (k = 0; k < nr; k++)
        gate_close (&readers[k]->gate);
      r = store_fold (child);
      if (r == 0) {
        store_ref (parent);       /* kept while child goes */
        manage_replace (child, parent);
      }
      for (k = 0; k < nr; k++)
        gate_open (&readers[k]->gate);
      if (r == 0)
        store_destroy (parent);
      clock_gettime (CLOCK_MONOTONIC, &t1);
      nbdkit_debug ("layers: %s folding a layer under %s in %.3f ms",
                    r == 0 ? "done" : "failed", table[i]->label,
                    (t1.tv_sec - t0.tv_sec) * 1e3
                    + (t1.tv_nsec - t0.tv_nsec) / 1e6);
      free (readers);
      return r == 0;
    }
  }
  return false;
}

/* Fold every layer that can be (S2); lock held. */
static void
manage_tidy (void)
{
  while (manage_fold_one ())
    ;
}

/* Load dev's store from src (closed here), shown as a job meanwhile;
 * runs without the table's lock.  0, or -1 with err filled.
 */
static int
manage_load (struct device *dev, struct source *src, const char *from,
             uint64_t total, const char *what, struct manage_err *err)
{
  _Atomic uint64_t *done = NULL;
  uint64_t id;
  int r;

  if (job_begin_load (dev->name, from, total, &id, &done, err) == -1) {
    source_close (src);
    return -1;
  }
  r = source_load (src, dev->store, what, done);
  if (r == -1 && err->errnum == 0)
    err->errnum = errno ? errno : EIO;
  job_end_load (id, r == -1 ? err->msg : NULL);
  return r;
}

/* Check what req asks for against the table; caller holds its lock.
 * The source of a clone in *src.  0, or -1 with err filled.
 */
static int
manage_check_create (const struct manage_create *req, const char *what,
                     const char *quoted, uint64_t size, struct device **src,
                     struct manage_err *err)
{
  char from[CONNECT_QUOTE_MAX];

  *src = NULL;
  if (registry_find (req->name))
    return manage_fail (err, EEXIST, "%s: a device of that name exists",
                        what);
  if (req->from && req->from[0]) {
    connect_quote (req->from, from, sizeof from);
    if (req->file || req->uri)
      return manage_fail (err, EINVAL, "%s: a clone (from=%s) cannot "
                          "also load an image", what, from);
    if ((*src = registry_find (req->from)) == NULL)
      return manage_fail (err, ENOENT, "%s: from=%s: no such device", what,
                          from);
    if (!(*src)->readonly)
      return manage_fail (err, EINVAL, "%s: from=%s: the source of a clone "
                          "must be a read-only device", what, from);
    if (req->size != -1 && size != store_size ((*src)->store))
      return manage_fail (err, EINVAL, "%s: a clone has its source's size",
                          what);
  }
  if (req->file && req->uri)
    return manage_fail (err, EINVAL, "%s: give file or uri, not both", what);
  if (req->vol && req->readonly == 1)
    return manage_fail (err, EINVAL, "%s: a volatile device must be "
                        "writable", what);
  if (req->format && req->file == NULL)
    return manage_fail (err, EINVAL, "%s: format is the format of a file: "
                        "give file too", what);
  if (req->format && connect_check_format (req->format, what) == -1)
    return manage_fail (err, EINVAL, "%s: format must be a name such as "
                        "raw, qcow2 or vmdk", what);
  if (config_check_device (what, req->compress) == -1) {
    err->errnum = EINVAL;
    return -1;
  }
  if (registry_full (quoted)) {
    err->errnum = ENOSPC;
    return -1;
  }
  return 0;
}

/* Make the device req asks for (the rules of a connect string, and an
 * image to load), describe it into info; -1 with err if refused, with
 * nothing made.  A load runs without the table's lock, so connects and
 * other calls go on meanwhile; the name is checked again before the
 * device goes in.
 */
int
manage_create (const struct manage_create *req, struct manage_info *info,
               struct manage_err *err)
{
  struct device *src = NULL, *dev = NULL;
  char what[CONNECT_QUOTE_MAX + 16], quoted[CONNECT_QUOTE_MAX];
  uint64_t size = req->size == -1 ? config.size : (uint64_t) req->size;
  uint64_t image_size = 0;
  struct source_spec spec = { .file = req->file, .format = req->format,
                              .uri = req->uri };
  struct source *image = NULL;
  bool locked = true;

  if (manage_check_name ("device_create: name", req->name, err) == -1)
    return -1;
  connect_quote (req->name, quoted, sizeof quoted);
  snprintf (what, sizeof what, "device '%s'", quoted);
  registry_lock_table ();
  report_capture (err);
  if (manage_check_create (req, what, quoted, size, &src, err) == -1)
    goto out;
  if (req->file || req->uri) {
    registry_unlock_table ();
    locked = false;
    if ((image = source_open (&spec, what, &image_size)) == NULL) {
      err->errnum = errno ? errno : EINVAL;
      goto out;
    }
    if (req->size != -1 && image_size > size) {
      manage_fail (err, EINVAL, "%s: the image (%" PRIu64 " bytes) is "
                   "larger than size=%" PRIu64, what, image_size, size);
      source_close (image);
      goto out;
    }
    if (req->size == -1)
      size = image_size;
  }
  dev = registry_make (req->name, size, req->readonly == 1, req->temp, src,
                       req->compress);
  if (dev == NULL) {
    err->errnum = errno ? errno : ENOMEM;
    source_close (image);
    goto out;
  }
  if (image) {
    if (manage_load (dev, image, req->file ? req->file : req->uri,
                     image_size, what, err) == -1) {
      registry_destroy (dev);
      dev = NULL;
      goto out;
    }
    registry_lock_table ();
    locked = true;
    if (registry_find (req->name)) {
      manage_fail (err, EEXIST, "%s: a device of that name was made while "
                   "this one loaded", what);
      registry_destroy (dev);
      dev = NULL;
      goto out;
    }
    if (registry_full (quoted)) {
      err->errnum = ENOSPC;
      registry_destroy (dev);
      dev = NULL;
      goto out;
    }
  }
  if (req->vol && vol_attach (dev) == -1) {
    err->errnum = errno ? errno : ENOMEM;
    registry_destroy (dev);
    dev = NULL;
    goto out;
  }
  /* A temp device no one has opened yet waits for its first user. */
  dev->dynamic = false;
  registry_insert (dev);
  manage_describe (dev, info);
 out:
  report_capture (NULL);
  if (locked)
    registry_unlock_table ();
  if (dev == NULL && err->msg[0] && err->errnum == 0)
    err->errnum = EINVAL;
  return dev ? 0 : -1;
}

/* Find a volatile device for power_cut; lock held.  NULL with err. */
static struct device *
manage_find_volatile (const char *name, struct manage_err *err)
{
  struct device *dev = manage_find (name, err);

  if (dev && dev->vol == NULL) {
    manage_fail (err, EINVAL, "power cut of %s: the device is not "
                 "volatile (declare it with :volatile)", dev->label);
    return NULL;
  }
  return dev;
}

/* Cut a volatile device's power now, or arm a cut (volatile.c). */
int
manage_power_cut (const char *device, const struct vol_cut *cut,
                  struct vol_result *res, struct manage_err *err)
{
  struct device *dev;
  int r = -1;

  registry_lock_table ();
  if ((dev = manage_find_volatile (device, err)) == NULL)
    goto out;
  if (cut->unit != 512 && cut->unit != 4096) {
    manage_fail (err, EINVAL, "power cut of %s: unit must be 512 or 4096",
                 dev->label);
    goto out;
  }
  if ((r = vol_power_cut (dev, cut, res)) == -1)
    manage_fail (err, errno, "power cut of %s: %s (the cut happened; "
                 "less was kept)", dev->label, strerror (errno));
 out:
  registry_unlock_table ();
  return r;
}

/* A volatile device's counts. */
int
manage_power_status (const char *device, struct vol_status *st,
                     struct manage_err *err)
{
  struct device *dev;
  int r = -1;

  registry_lock_table ();
  if ((dev = manage_find_volatile (device, err)) != NULL) {
    vol_status (dev, st);
    r = 0;
  }
  registry_unlock_table ();
  return r;
}

/* Delete the device called name (S2, S3); EBUSY while it has
 * connections.
 */
int
manage_delete (const char *name, struct manage_err *err)
{
  struct device *dev;
  int r = -1;

  registry_lock_table ();
  if ((dev = manage_find (name, err)) == NULL)
    goto out;
  if (dev->opens > 0) {
    manage_fail (err, EBUSY, "device '%s': %u connection%s open on it",
                 dev->label, dev->opens, dev->opens == 1 ? " is" : "s are");
    goto out;
  }
  nbdkit_debug ("device %s: deleted", dev->label);
  registry_remove (dev);
  manage_tidy ();
  r = 0;
 out:
  registry_unlock_table ();
  return r;
}

/* Snapshot devices[i] as names[i], all at one instant (S1). */
int
manage_snapshot (size_t n, const char *const *devices,
                 const char *const *names, struct manage_err *err)
{
  struct device *dev[MANAGE_MAX_BATCH], *snap[MANAGE_MAX_BATCH];
  struct store *top[MANAGE_MAX_BATCH];
  size_t i, j, made = 0, count;
  int r = -1;

  if (n == 0 || n > MANAGE_MAX_BATCH)
    return manage_fail (err, EINVAL, "snapshot: from 1 to %d devices at "
                        "once", MANAGE_MAX_BATCH);
  for (i = 0; i < n; i++)
    if (manage_check_name ("snapshot: name", names[i], err) == -1)
      return -1;
  memset (top, 0, sizeof top);
  registry_lock_table ();
  for (i = 0; i < n; i++) {
    char quoted[CONNECT_QUOTE_MAX];

    connect_quote (names[i], quoted, sizeof quoted);
    if ((dev[i] = manage_find (devices[i], err)) == NULL ||
        manage_not_volatile (dev[i], "snapshot", err) == -1)
      goto out;
    if (registry_find (names[i])) {
      manage_fail (err, EEXIST, "snapshot '%s' of %s: a device of that "
                   "name exists", quoted, dev[i]->label);
      goto out;
    }
    for (j = 0; j < i; j++) {
      if (dev[j] == dev[i]) {
        manage_fail (err, EINVAL, "snapshot: device %s is named twice",
                     dev[i]->label);
        goto out;
      }
      if (strcmp (names[j], names[i]) == 0) {
        manage_fail (err, EEXIST, "snapshot: the name '%s' is given "
                     "twice", quoted);
        goto out;
      }
    }
  }
  registry_table (&count);
  if (count + n > config.max_devices) {
    manage_fail (err, ENOSPC, "snapshot: max-devices=%u leaves room for "
                 "%zu more devices, not %zu", config.max_devices,
                 config.max_devices - count, n);
    goto out;
  }
  /* Make everything first, so that a failure changes nothing (S1). */
  for (made = 0; made < n; made++) {
    struct device *d = dev[made];

    if (!d->readonly && (top[made] = store_create_like (d->store)) == NULL) {
      manage_fail (err, errno, "snapshot of %s: %s", d->label,
                   strerror (errno));
      goto out;
    }
    snap[made] = registry_wrap (names[made], NULL, true, d->source);
    if (snap[made] == NULL) {
      manage_fail (err, ENOMEM, "snapshot of %s: out of memory", d->label);
      store_destroy (top[made]);
      goto out;
    }
    snap[made]->snapshot_of = d;
  }
  for (i = 0; i < n; i++)
    gate_close (&dev[i]->gate);
  for (i = 0; i < n; i++) {
    if (top[i]) {
      snap[i]->store = dev[i]->store;
      dev[i]->store = top[i];
    }
    else
      snap[i]->store = store_ref (dev[i]->store);  /* read-only: shared */
  }
  for (i = 0; i < n; i++)
    gate_open (&dev[i]->gate);
  for (i = 0; i < n; i++) {
    registry_insert (snap[i]);
    nbdkit_debug ("device %s: snapshot %s taken", dev[i]->label,
                  snap[i]->label);
  }
  made = 0;
  r = 0;
 out:
  for (i = 0; i < made; i++) {
    store_destroy (top[i]);
    registry_destroy (snap[i]);
  }
  registry_unlock_table ();
  return r;
}

/* Make device's data snapshot's again (which stays); describe it. */
int
manage_rollback (const char *device, const char *snapshot,
                 struct manage_info *info, struct manage_err *err)
{
  struct device *dev, *snap;
  struct store *top, *old;
  int r = -1;

  registry_lock_table ();
  if ((dev = manage_find (device, err)) == NULL ||
      (snap = manage_find (snapshot, err)) == NULL ||
      manage_not_volatile (dev, "rollback", err) == -1)
    goto out;
  if (dev->readonly) {
    manage_fail (err, EROFS, "rollback of %s: the device is read-only",
                 dev->label);
    goto out;
  }
  if (snap->snapshot_of != dev) {
    manage_fail (err, EINVAL, "rollback of %s: %s is not a snapshot of "
                 "it", dev->label, snap->label);
    goto out;
  }
  if ((top = store_create_like (snap->store)) == NULL) {
    manage_fail (err, errno, "rollback of %s: %s", dev->label,
                 strerror (errno));
    goto out;
  }
  gate_close (&dev->gate);
  old = dev->store;
  dev->store = top;
  gate_open (&dev->gate);
  store_destroy (old);
  nbdkit_debug ("device %s: rolled back to %s", dev->label, snap->label);
  manage_tidy ();
  manage_describe (dev, info);
  r = 0;
 out:
  registry_unlock_table ();
  return r;
}

/* Cut a read-only view of device at this instant into f, held until
 * manage_thaw: a writable device goes on in a new layer, as after a
 * snapshot (S1); a read-only one is shared as it is.
 */
int
manage_freeze (const char *device, struct manage_frozen *f,
               struct manage_err *err)
{
  struct device *dev;
  struct store *top = NULL;
  int r = -1;

  registry_lock_table ();
  if ((dev = manage_find (device, err)) == NULL ||
      manage_not_volatile (dev, "save", err) == -1)
    goto out;
  if (!dev->readonly && (top = store_create_like (dev->store)) == NULL) {
    manage_fail (err, errno, "freezing %s: %s", dev->label,
                 strerror (errno));
    goto out;
  }
  strcpy (f->name, dev->name);
  if (top) {
    gate_close (&dev->gate);
    f->store = dev->store;
    dev->store = top;
    gate_open (&dev->gate);
  }
  else
    f->store = store_ref (dev->store);
  f->size = store_size (f->store);
  r = 0;
 out:
  registry_unlock_table ();
  return r;
}

/* Let go of a view manage_freeze cut, folding away what it leaves. */
void
manage_thaw (struct manage_frozen *f)
{
  registry_lock_table ();
  store_destroy (f->store);
  f->store = NULL;
  manage_tidy ();
  registry_unlock_table ();
}

/* Free the temp devices whose temp-grace has run out; lock held. */
static void
manage_reap_expired (void)
{
  struct device **table;
  struct timespec now;
  size_t n, i;

  clock_gettime (CLOCK_MONOTONIC, &now);
  table = registry_table (&n);
  for (i = n; i-- > 0; ) {
    struct device *d = table[i];

    struct timespec due = d->closed_at;

    due.tv_sec += config.temp_grace;
    if (registry_unused (d) &&
        (now.tv_sec > due.tv_sec ||
         (now.tv_sec == due.tv_sec && now.tv_nsec >= due.tv_nsec))) {
      registry_reap (d);
      manage_tidy ();
      table = registry_table (&n);
      i = n;                    /* the table changed: start again */
    }
  }
}

static pthread_t manage_reaper;
static bool manage_reaper_running;
static pthread_mutex_t manage_stop_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t manage_stop_cond = PTHREAD_COND_INITIALIZER;
static bool manage_stopping;

/* The reaper thread: once a second, free temp devices past their grace. */
static void *
manage_reaper_thread (void *arg)
{
  (void) arg;
  pthread_mutex_lock (&manage_stop_lock);
  while (!manage_stopping) {
    struct timespec t;

    clock_gettime (CLOCK_REALTIME, &t);
    t.tv_sec += 1;
    pthread_cond_timedwait (&manage_stop_cond, &manage_stop_lock, &t);
    if (manage_stopping)
      break;
    pthread_mutex_unlock (&manage_stop_lock);
    registry_lock_table ();
    manage_reap_expired ();
    registry_unlock_table ();
    pthread_mutex_lock (&manage_stop_lock);
  }
  pthread_mutex_unlock (&manage_stop_lock);
  return NULL;
}

/* Start the temp-grace reaper if temp-grace= asks for one (after fork). */
int
manage_start (void)
{
  sigset_t all, old;
  int e;

  if (config.temp_grace == 0)
    return 0;
  /* Signals stay with nbdkit's own threads. */
  sigfillset (&all);
  pthread_sigmask (SIG_SETMASK, &all, &old);
  e = pthread_create (&manage_reaper, NULL, manage_reaper_thread, NULL);
  pthread_sigmask (SIG_SETMASK, &old, NULL);
  if (e != 0) {
    errno = e;
    nbdkit_error ("temp-grace: pthread_create: %m");
    return -1;
  }
  manage_reaper_running = true;
  return 0;
}

/* Stop the reaper (at unload). */
void
manage_stop (void)
{
  if (!manage_reaper_running)
    return;
  pthread_mutex_lock (&manage_stop_lock);
  manage_stopping = true;
  pthread_cond_signal (&manage_stop_cond);
  pthread_mutex_unlock (&manage_stop_lock);
  pthread_join (manage_reaper, NULL);
  manage_reaper_running = false;
}
