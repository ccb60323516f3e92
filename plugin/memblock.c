/* memblock: nbdkit plugin serving named, sparse, in-memory block devices.
 *
 * This file holds only the nbdkit callbacks.  A request goes:
 *   memblock_pwrite  -> store_write (store.c) -> chunk pages
 * with the device chosen once per connection in memblock_open from the
 * NBD export name (connect.c parses it, registry.c finds the device).
 */

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "connect.h"
#include "control.h"
#include "declare.h"
#include "human.h"
#include "manage.h"
#include "registry.h"
#include "save.h"
#include "store.h"
#include "volatile.h"

#define MEMBLOCK_VERSION "1.0"

/* Largest read or write nbdkit 1.32 accepts in one request. */
#define MEMBLOCK_MAX_REQUEST (64 * 1024 * 1024)

/* Per-connection state. */
struct handle {
  struct device *dev;
  bool readonly;                /* device, connection (:ro) or nbdkit -r */
  bool used;                    /* a request came (not just a listing) */
  unsigned vol_gen;             /* a volatile device's generation at open */
  char description[REGISTRY_DESCRIPTION_MAX];
};

/* Set once a refusal at max-memory is logged; a trim or zero resets it,
 * so a client hammering at the cap gives one log line, not thousands.
 */
static atomic_bool memblock_cap_logged;

/* Set once pages the kernel would not lock (mlock=true) are logged. */
static atomic_bool memblock_pin_logged;

/* The .unload callback. */
static void
memblock_unload (void)
{
  control_stop ();
  manage_stop ();
  vol_stop ();
  save_persist_all ();
  registry_free ();
  config_free ();
}

/* The .dump_plugin callback. */
static void
memblock_dump_plugin (void)
{
  printf ("memblock_version=%s\n", MEMBLOCK_VERSION);
  printf ("memblock_default_size=%" PRIu64 "\n", CONFIG_DEFAULT_SIZE);
  printf ("memblock_default_chunk_size=%" PRIu64 "\n",
          (uint64_t) 1 << CONFIG_DEFAULT_CHUNK_SHIFT);
  printf ("memblock_max_size=%" PRIu64 "\n", STORE_MAX_SIZE);
  printf ("memblock_default_max_devices=%d\n", CONFIG_DEFAULT_MAX_DEVICES);
}

/* The .get_ready callback: create the declared devices, then claim
 * the control socket's path (before nbdkit forks).
 */
static int
memblock_get_ready (void)
{
  if (registry_init () == -1 || declare_devices () == -1)
    return -1;
  return config.control ? control_check () : 0;
}

/* The .after_fork callback: start the temp-grace reaper and serve the
 * control socket (threads do not survive nbdkit's fork).
 */
static int
memblock_after_fork (void)
{
  if (manage_start () == -1)
    return -1;
  return config.control ? control_start () : 0;
}

/* What memblock_add_export needs. */
struct memblock_list {
  struct nbdkit_exports *exports;
  bool readonly;                /* nbdkit -r */
};

/* registry_list callback: advertise one device. */
static int
memblock_add_export (void *opaque, const struct device *dev)
{
  struct memblock_list *l = opaque;
  char description[REGISTRY_DESCRIPTION_MAX];

  registry_describe (dev, dev->readonly || l->readonly,
                     description, sizeof description);
  return nbdkit_add_export (l->exports, dev->name, description);
}

/* The .list_exports callback: every device, with size and ro/rw. */
static int
memblock_list_exports (int readonly, int is_tls,
                       struct nbdkit_exports *exports)
{
  struct memblock_list l = { .exports = exports, .readonly = readonly };

  (void) is_tls;
  return registry_list (memblock_add_export, &l);
}

/* The .default_export callback: the first device in the table. */
static const char *
memblock_default_export (int readonly, int is_tls)
{
  (void) readonly;
  (void) is_tls;
  return registry_default_name ();
}

/* The .open callback: pick the device named by the export name. */
static void *
memblock_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  struct connect req = { .readonly = -1, .size = -1, .compress = -1 };
  struct handle *h;

  if (name != NULL && *name != '\0' &&
      connect_parse (name, CONNECT_CLIENT, &req) == -1)
    return NULL;
  /* Nothing may fail after registry_open, which may make the device. */
  h = calloc (1, sizeof *h);
  if (h == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  h->dev = registry_open (&req, readonly);
  if (h->dev == NULL) {
    free (h);
    return NULL;
  }
  h->readonly = readonly || h->dev->readonly || req.readonly == 1;
  if (h->dev->vol)
    h->vol_gen = vol_generation (h->dev->vol);
  registry_describe (h->dev, h->readonly,
                     h->description, sizeof h->description);
  return h;
}

/* The .close callback: a :temp device may go with its last connection. */
static void
memblock_close (void *handle)
{
  struct handle *h = handle;

  registry_close (h->dev, h->used);
  free (h);
}

/* The .export_description callback. */
static const char *
memblock_export_description (void *handle)
{
  struct handle *h = handle;

  return h->description;
}

/* The .get_size callback. */
static int64_t
memblock_get_size (void *handle)
{
  struct handle *h = handle;
  struct gate_stripe *st = gate_enter (&h->dev->gate);
  int64_t size = store_size (h->dev->store);

  gate_leave (st, GATE_OTHER, 0);
  return size;
}

/* The .block_size callback: any byte offset works; 4 KiB is the page. */
static int
memblock_block_size (void *handle,
                     uint32_t *minimum, uint32_t *preferred, uint32_t *maximum)
{
  (void) handle;
  *minimum = 1;
  *preferred = STORE_PAGE;
  *maximum = MEMBLOCK_MAX_REQUEST;
  return 0;
}

/* The .can_write callback: 0 forces a read-only connection. */
static int
memblock_can_write (void *handle)
{
  struct handle *h = handle;

  return !h->readonly;
}

/* Answer yes: for can_flush, can_trim, can_zero, can_fast_zero,
 * can_extents and can_multi_conn (every connection sees one store).
 */
static int
memblock_yes (void *handle)
{
  (void) handle;
  return 1;
}

/* The .can_fua callback: RAM needs no flush, so FUA is native. */
static int
memblock_can_fua (void *handle)
{
  (void) handle;
  return NBDKIT_FUA_NATIVE;
}

/* The .can_cache callback: the data is already in memory. */
static int
memblock_can_cache (void *handle)
{
  (void) handle;
  return NBDKIT_CACHE_NATIVE;
}

/* Refuse a write-type request on a read-only connection with EROFS. */
static int
memblock_check_writable (struct handle *h, const char *op)
{
  if (!h->readonly)
    return 0;
  nbdkit_error ("%s: %s refused: read-only", h->dev->label, op);
  errno = EROFS;
  return -1;
}

/* Whether a request on a volatile device must fail with EIO: its power
 * was cut since this connection opened (V4 in volatile.c).  Call inside
 * the gate.
 */
static bool
memblock_cut_off (struct handle *h)
{
  if (h->dev->vol == NULL || !vol_refused (h->dev->vol, h->vol_gen))
    return false;
  errno = EIO;
  return true;
}

/* Log a failed store call and return -1 with errno kept. */
static int
memblock_failed (struct handle *h, const char *op,
                 uint32_t count, uint64_t offset)
{
  int err = errno;
  char cap[32];

  if (err != ENOSPC)
    nbdkit_error ("%s: %s of %" PRIu32 " bytes at %" PRIu64 ": %m",
                  h->dev->label, op, count, offset);
  else if (!atomic_exchange (&memblock_cap_logged, true)) {
    human_format_size (registry_limit.max, cap, sizeof cap);
    nbdkit_error ("%s: %s of %" PRIu32 " bytes at %" PRIu64 " refused "
                  "with ENOSPC: max-memory (%s) is all in use; trim or "
                  "zero data to free some (further refusals are not "
                  "logged until then)",
                  h->dev->label, op, count, offset, cap);
  }
  errno = err;
  return -1;
}

/* The .pread callback.  Every request passes the device's gate
 * (gate.c), which counts it and keeps a snapshot from swapping the
 * store under it.
 */
static int
memblock_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
                uint32_t flags)
{
  struct handle *h = handle;
  struct gate_stripe *st = gate_enter (&h->dev->gate);
  int r = memblock_cut_off (h) ? -1
    : store_read (h->dev->store, buf, count, offset);

  gate_leave (st, GATE_READ, count);
  (void) flags;
  h->used = true;
  if (r == -1)
    return errno == EIO && h->dev->vol ? -1
      : memblock_failed (h, "read", count, offset);
  return 0;
}

/* Run a write-type request on the store inside the gate: op on the
 * device's store, and on a volatile device the bookkeeping of its
 * write cache (FUA, unflushed writes, an armed power cut).
 */
static int
memblock_store_write (struct handle *h, int op, const void *buf,
                      uint32_t count, uint64_t offset, uint32_t flags,
                      bool *cut_now)
{
  struct store *s = h->dev->store;
  int r;

  *cut_now = false;
  if (memblock_cut_off (h))
    return -1;
  switch (op) {
  case VOL_WRITE: r = store_write (s, buf, count, offset); break;
  case VOL_ZERO: r = store_zero (s, count, offset); break;
  default: r = store_trim (s, count, offset); break;
  }
  if (r == 0 && h->dev->vol)
    r = vol_wrote (h->dev, buf, count, offset, op,
                   flags & NBDKIT_FLAG_FUA, cut_now);
  return r;
}

/* The .pwrite callback; FUA matters only on a volatile device. */
static int
memblock_pwrite (void *handle, const void *buf, uint32_t count,
                 uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  struct gate_stripe *st;
  bool pinfail, cut_now;
  int r;

  h->used = true;
  if (memblock_check_writable (h, "write") == -1)
    return -1;
  st = gate_enter (&h->dev->gate);
  r = memblock_store_write (h, VOL_WRITE, buf, count, offset, flags,
                            &cut_now);
  pinfail = config.mlock && store_pin_failures (h->dev->store) > 0;
  gate_leave (st, GATE_WRITE, count);
  if (cut_now)
    vol_cut_armed (h->dev);
  if (r == -1)
    return errno == EIO && h->dev->vol ? -1
      : memblock_failed (h, "write", count, offset);
  if (pinfail && !atomic_exchange (&memblock_pin_logged, true))
    nbdkit_error ("%s: mlock=true: the kernel refused to lock some pages "
                  "(too many mappings? see vm.max_map_count); they stay "
                  "unlocked", h->dev->label);
  return 0;
}

/* The .flush callback: nothing to do for RAM, but a volatile device
 * makes its cache durable (outside the gate, V2 in volatile.c).
 */
static int
memblock_flush (void *handle, uint32_t flags)
{
  struct handle *h = handle;
  int r = 0;

  (void) flags;
  h->used = true;
  if (h->dev->vol && (r = vol_flush (h->dev, h->vol_gen)) == -1 &&
      errno != EIO)
    nbdkit_error ("%s: flush: %m", h->dev->label);
  gate_leave (gate_enter (&h->dev->gate), GATE_FLUSH, 0);
  return r;
}

/* Shared by .trim and .zero: both release whole pages; vop is
 * VOL_TRIM (advisory: partial pages stay, no memory needed) or
 * VOL_ZERO (the range reads as zeroes).
 */
static int
memblock_zero_range (struct handle *h, const char *op, enum gate_kind kind,
                     int vop, uint32_t count, uint64_t offset,
                     uint32_t flags)
{
  struct gate_stripe *st;
  bool cut_now;
  int r;

  h->used = true;
  if (memblock_check_writable (h, op) == -1)
    return -1;
  st = gate_enter (&h->dev->gate);
  r = memblock_store_write (h, vop, NULL, count, offset, flags, &cut_now);
  gate_leave (st, kind, count);
  if (cut_now)
    vol_cut_armed (h->dev);
  if (r == -1)
    return errno == EIO && h->dev->vol ? -1
      : memblock_failed (h, op, count, offset);
  atomic_store (&memblock_cap_logged, false);
  return 0;
}

/* The .trim callback. */
static int
memblock_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return memblock_zero_range (handle, "trim", GATE_TRIM, VOL_TRIM,
                              count, offset, flags);
}

/* The .zero callback; never slow, so NBDKIT_FLAG_FAST_ZERO is honoured. */
static int
memblock_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  return memblock_zero_range (handle, "zero", GATE_ZERO, VOL_ZERO,
                              count, offset, flags);
}

/* State for memblock_add_extent. */
struct memblock_extents {
  struct nbdkit_extents *extents;
  bool req_one;
};

/* store_extents callback: pass one extent on to nbdkit. */
static int
memblock_add_extent (void *opaque, uint64_t offset, uint64_t length,
                     bool hole)
{
  struct memblock_extents *e = opaque;

  if (nbdkit_add_extent (e->extents, offset, length,
                         hole ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0)
      == -1)
    return -1;
  return e->req_one ? 1 : 0;
}

/* The .extents callback. */
static int
memblock_extents (void *handle, uint32_t count, uint64_t offset,
                  uint32_t flags, struct nbdkit_extents *extents)
{
  struct handle *h = handle;
  struct memblock_extents e = {
    .extents = extents, .req_one = flags & NBDKIT_FLAG_REQ_ONE,
  };

  struct gate_stripe *st = gate_enter (&h->dev->gate);
  int r = memblock_cut_off (h) ? -1
    : store_extents (h->dev->store, count, offset, memblock_add_extent, &e);

  gate_leave (st, GATE_EXTENTS, 0);
  h->used = true;
  if (r == -1)
    return errno == EIO && h->dev->vol ? -1
      : memblock_failed (h, "extents", count, offset);
  return 0;
}

/* The .cache callback: nothing to prefetch. */
static int
memblock_cache (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  struct handle *h = handle;
  struct gate_stripe *st = gate_enter (&h->dev->gate);
  bool cut = memblock_cut_off (h);

  gate_leave (st, GATE_OTHER, 0);
  h->used = true;
  (void) count;
  (void) offset;
  (void) flags;
  return cut ? -1 : 0;
}

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static struct nbdkit_plugin plugin = {
  .name               = "memblock",
  .longname           = "memblock sparse in-memory block devices",
  .version            = MEMBLOCK_VERSION,
  .description        = "Named, sparse, chunked in-memory block devices",
  .unload             = memblock_unload,
  .config             = config_set,
  .config_complete    = config_complete,
  .config_help        = CONFIG_HELP,
  .magic_config_key   = "name",
  .dump_plugin        = memblock_dump_plugin,
  .get_ready          = memblock_get_ready,
  .after_fork         = memblock_after_fork,
  .list_exports       = memblock_list_exports,
  .default_export     = memblock_default_export,
  .open               = memblock_open,
  .close              = memblock_close,
  .export_description = memblock_export_description,
  .get_size           = memblock_get_size,
  .block_size         = memblock_block_size,
  .can_write          = memblock_can_write,
  .can_flush          = memblock_yes,
  .can_trim           = memblock_yes,
  .can_zero           = memblock_yes,
  .can_fast_zero      = memblock_yes,
  .can_extents        = memblock_yes,
  .can_fua            = memblock_can_fua,
  .can_multi_conn     = memblock_yes,
  .can_cache          = memblock_can_cache,
  .pread              = memblock_pread,
  .pwrite             = memblock_pwrite,
  .flush              = memblock_flush,
  .trim               = memblock_trim,
  .zero               = memblock_zero,
  .extents            = memblock_extents,
  .cache              = memblock_cache,
  .errno_is_preserved = 1,
};

NBDKIT_REGISTER_PLUGIN (plugin)
