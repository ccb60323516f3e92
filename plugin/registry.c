/* memblock: the process-wide table of named devices.
 *
 * Devices are created at start-up from the name= parameters (declare.c)
 * and, with dynamic=true, by the first client whose connect string asks
 * for a new one: a name with at least one option other than :ro.  A bare
 * name only ever finds a device, so a listing, the default export or a
 * client naming a device that has just gone never brings it back.  The
 * same name always gives the same data.  A device stays until the
 * plugin is unloaded, except a :temp one, which goes (with its memory)
 * when its last connection closes and no clone of it is left; then its
 * name is free again.  A temp device a client made goes with its last
 * connection whatever it did; a declared one waits until a client has
 * sent it a request, so a listing (which opens each export to describe
 * it, and sends no request) does not free it before its first user
 * came.  A clone counts as a user of its source, so a source is never
 * freed under a clone, and a request to a clone uses its sources.
 *
 * The table lock guards the table and every device's opens and clones
 * counts.  It is taken only at connect and disconnect time (and to list
 * exports), never on the data path: a connection holds a count on its
 * device, so its device pointer stays valid without locking.  A connect
 * racing the last close of a temp device either finds it (and its count
 * keeps it alive) or finds it gone and, if it asks for one, makes a
 * fresh one.
 */

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "human.h"
#include "registry.h"
#include "volatile.h"
#include "report.h"

struct store_limit registry_limit;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct device **registry_devices;  /* config.max_devices slots */
static size_t registry_count;

/* Describe dev as seen read-only or not:
 * "2 GiB, read-write, clone of golden, 14 MiB in memory", or for a
 * compressed device "2 GiB, read-write, 1.3 GiB of data in 470 MiB (zstd)".
 */
void
registry_describe (const struct device *dev, bool readonly,
                   char *buf, size_t len)
{
  char human[32], held[32], data[32], memory[80];
  enum codec codec = store_codec (dev->store);

  human_format_size (store_size (dev->store), human, sizeof human);
  human_format_amount (store_allocated (dev->store), held, sizeof held);
  if (codec == CODEC_NONE)
    snprintf (memory, sizeof memory, "%s in memory", held);
  else {
    human_format_amount (store_data (dev->store), data, sizeof data);
    snprintf (memory, sizeof memory, "%s of data in %s (%s)", data, held,
              codec_name (codec));
  }
  snprintf (buf, len, "%s, %s%s%s%s, %s", human,
            readonly ? "read-only" : "read-write",
            dev->source ? ", clone of " : "",
            dev->source ? dev->source->name : "",
            dev->temp ? ", temporary" : "", memory);
}

/* Find the device with this name; caller holds the lock. */
struct device *
registry_find (const char *name)
{
  size_t i;

  for (i = 0; i < registry_count; i++)
    if (strcmp (registry_devices[i]->name, name) == 0)
      return registry_devices[i];
  return NULL;
}

/* Make a device (a clone of source if not NULL), not yet in the table:
 * registry_add puts it there, registry_destroy frees it.  NULL after
 * logging why.
 */
struct device *
registry_make (const char *name, uint64_t size, bool readonly, bool temp,
               struct device *source, int compress)
{
  char label[CONNECT_QUOTE_MAX];
  struct device *dev;
  struct store *s = source
    ? store_create_clone (source->store, &registry_limit)
    : store_create (size, config.chunk_shift, &registry_limit);

  if (s == NULL ||
      store_set_codec (s, compress == -1 ? config.compress
                                         : (enum codec) compress) == -1 ||
      (config.mlock && store_set_mlock (s) == -1)) {
    report_error ("cannot create device '%s': %m",
                  connect_quote (name, label, sizeof label));
    store_destroy (s);
    return NULL;
  }
  if ((dev = registry_wrap (name, s, readonly, source)) == NULL) {
    store_destroy (s);
    return NULL;
  }
  dev->temp = temp;
  return dev;
}

/* Make a device that serves store, which it then holds (a snapshot, or
 * a device made with a loaded store); not yet in the table.
 */
struct device *
registry_wrap (const char *name, struct store *store, bool readonly,
               struct device *source)
{
  struct device *dev = calloc (1, sizeof *dev);

  if (dev == NULL) {
    report_error ("calloc: %m");
    return NULL;
  }
  strcpy (dev->name, name);
  connect_quote (name, dev->label, sizeof dev->label);
  dev->readonly = readonly;
  dev->source = source;
  dev->store = store;
  if (source)
    source->clones++;
  gate_init (&dev->gate);
  return dev;
}

/* Free a device registry_make made that is not in the table (nor the
 * source of another).
 */
void
registry_destroy (struct device *dev)
{
  if (dev->source)
    dev->source->clones--;
  gate_destroy (&dev->gate);
  store_destroy (dev->store);
  vol_destroy (dev->vol);
  free (dev->persist);
  free (dev);
}

/* Whether the table has no room for one more device (logged, naming
 * the device label); caller holds the lock.
 */
bool
registry_full (const char *label)
{
  if (registry_count < config.max_devices)
    return false;
  report_error ("cannot create device '%s': max-devices=%u reached",
                label, config.max_devices);
  return true;
}

/* Put a device registry_make made at the end of the table, which has
 * room for it: config_complete keeps the declared devices within
 * max-devices, and a client's device is made only after registry_full.
 */
void
registry_add (struct device *dev)
{
  pthread_mutex_lock (&registry_lock);
  registry_devices[registry_count++] = dev;
  pthread_mutex_unlock (&registry_lock);
}

/* Take dev out of the table and free it; caller holds the lock. */
void
registry_remove (struct device *dev)
{
  size_t i;

  /* Nothing may point at dev once it has gone (S3 in manage.c). */
  for (i = 0; i < registry_count; i++) {
    if (registry_devices[i]->source == dev) {
      registry_devices[i]->source = NULL;
      dev->clones--;
    }
    if (registry_devices[i]->snapshot_of == dev)
      registry_devices[i]->snapshot_of = NULL;
  }
  for (i = 0; i < registry_count && registry_devices[i] != dev; i++)
    ;
  memmove (&registry_devices[i], &registry_devices[i + 1],
           (registry_count - i - 1) * sizeof *registry_devices);
  registry_count--;
  registry_destroy (dev);
}

/* Make the empty table (the first half of the .get_ready callback's
 * work; declare_devices does the rest).
 */
int
registry_init (void)
{
  registry_limit.max = config.max_memory;
  registry_devices = calloc (config.max_devices, sizeof *registry_devices);
  if (registry_devices == NULL) {
    report_error ("calloc: %m");
    return -1;
  }
  return 0;
}

/* Destroy every device, saying in the debug log what each held. */
void
registry_free (void)
{
  char description[REGISTRY_DESCRIPTION_MAX];
  size_t i;

  for (i = 0; i < registry_count; i++) {
    registry_describe (registry_devices[i], registry_devices[i]->readonly,
                       description, sizeof description);
    nbdkit_debug ("device %s: %s", registry_devices[i]->label, description);
  }
  /* Clones first: nothing reads a source any more, but keep the order. */
  for (i = registry_count; i-- > 0; ) {
    gate_destroy (&registry_devices[i]->gate);
    store_destroy (registry_devices[i]->store);
    vol_destroy (registry_devices[i]->vol);
    free (registry_devices[i]->persist);
    free (registry_devices[i]);
  }
  free (registry_devices);
  registry_devices = NULL;
  registry_count = 0;
}

/* The name of the first device in the table: what the export name ""
 * gives; NULL if there is none (all were temporary and have gone).
 */
const char *
registry_default_name (void)
{
  const char *name = NULL;

  pthread_mutex_lock (&registry_lock);
  if (registry_count > 0)
    name = nbdkit_strdup_intern (registry_devices[0]->name);
  else
    report_error ("no device is left to be the default export");
  pthread_mutex_unlock (&registry_lock);
  return name;
}

/* Make the device a client's connect string asks for, when no device
 * has its name; caller holds the lock.  Everything that can refuse it
 * is checked before anything is made, so a refusal leaves the table as
 * it was.  NULL after logging why.
 */
static struct device *
registry_create (const struct connect *req, const char *quoted,
                 bool server_readonly)
{
  struct device *src = NULL, *dev;
  char what[CONNECT_QUOTE_MAX + 16];

  snprintf (what, sizeof what, "export '%s'", quoted);
  if (req->name[0] == '\0') {
    report_error ("no device is left to be the default export");
    return NULL;
  }
  if (!config.dynamic) {
    report_error ("%s: no such device (declare it with name=, or use "
                  "dynamic=true)", what);
    return NULL;
  }
  if (!connect_creates (req)) {
    report_error ("%s: no such device (with dynamic=true, ask for a new "
                  "device with an option: '%s:rw', '%s:size=SIZE' or "
                  "'%s:from=SOURCE')", what, quoted, quoted, quoted);
    return NULL;
  }
  if (req->readonly == 0 && server_readonly) {
    report_error ("export '%s:rw': the server (-r) is read-only", quoted);
    return NULL;
  }
  if (config_check_device (what, req->compress) == -1)
    return NULL;
  if (req->from[0]) {
    src = registry_find (req->from);
    if (src == NULL || !src->readonly) {
      char from[CONNECT_QUOTE_MAX];

      report_error ("%s: from=%s: %s", what,
                    connect_quote (req->from, from, sizeof from),
                    src ? "the source of a clone must be a read-only device"
                        : "no such device");
      return NULL;
    }
  }
  if (registry_full (quoted))
    return NULL;
  dev = registry_make (req->name,
                       req->size == -1 ? config.size : (uint64_t) req->size,
                       false, req->temp, src, req->compress);
  if (dev == NULL)
    return NULL;
  if (req->vol && vol_attach (dev) == -1) {
    registry_destroy (dev);
    return NULL;
  }
  dev->dynamic = true;
  registry_devices[registry_count++] = dev;  /* lock held: not registry_add */
  return dev;
}

/* Whether the connect string req, which found device dev, asks for
 * something dev is not (logged if so); caller holds the lock.
 */
static bool
registry_mismatch (const struct device *dev, const struct connect *req,
                   bool server_readonly)
{
  if (req->from[0] &&
      (dev->source == NULL || strcmp (dev->source->name, req->from))) {
    report_error ("export '%s': the device exists and is not a clone of "
                  "that source", dev->label);
    return true;
  }
  if (req->vol && dev->vol == NULL) {
    report_error ("export '%s': the device exists and is not volatile",
                  dev->label);
    return true;
  }
  if (req->compress != -1 &&
      (enum codec) req->compress != store_codec (dev->store)) {
    report_error ("export '%s': the device exists with compress=%s",
                  dev->label, codec_name (store_codec (dev->store)));
    return true;
  }
  if (req->size != -1 && (uint64_t) req->size != store_size (dev->store)) {
    report_error ("export '%s': the device exists with size %" PRIu64
                  ", not %" PRIi64, dev->label, store_size (dev->store),
                  req->size);
    return true;
  }
  if (req->readonly == 0 && (server_readonly || dev->readonly)) {
    report_error ("export '%s:rw': %s is read-only", dev->label,
                  dev->readonly ? "the device" : "the server (-r)");
    return true;
  }
  return false;
}

/* The device a client's parsed export name asks for (the first device
 * for an empty name), creating it when dynamic=true and the connect
 * string asks for one (connect_creates), and counted as open until
 * registry_close; NULL after logging why it is refused.  server_readonly
 * is nbdkit -r.  Names are valid UTF-8 by now, but are quoted in the log
 * all the same: a client could still send characters such as U+2028 or
 * U+202E.
 */
struct device *
registry_open (const struct connect *req, bool server_readonly)
{
  struct device *dev;
  char quoted[CONNECT_QUOTE_MAX];

  connect_quote (req->name, quoted, sizeof quoted);
  if (req->size != -1 && !config.dynamic) {
    report_error ("export '%s': a client may choose a size only with "
                  "dynamic=true", quoted);
    return NULL;
  }
  if (req->size != -1 && config.max_memory != UINT64_MAX &&
      (uint64_t) req->size > config.max_memory) {
    report_error ("export '%s': size=%" PRIi64 " is larger than "
                  "max-memory=%" PRIu64, quoted, req->size,
                  config.max_memory);
    return NULL;
  }

  pthread_mutex_lock (&registry_lock);
  if (req->name[0] == '\0')
    dev = registry_count > 0 ? registry_devices[0] : NULL;
  else
    dev = registry_find (req->name);
  if (dev == NULL)
    dev = registry_create (req, quoted, server_readonly);
  else if (registry_mismatch (dev, req, server_readonly))
    dev = NULL;
  if (dev)
    dev->opens++;
  pthread_mutex_unlock (&registry_lock);
  return dev;
}

/* A connection to dev has closed, having sent requests if used: free
 * dev, and then its sources, while they are temporary, nothing uses them
 * any more, and they were made by a client's connect or have been used.
 */
void
registry_close (struct device *dev, bool used)
{
  pthread_mutex_lock (&registry_lock);
  dev->opens--;
  for (struct device *d = dev; used && d; d = d->source)
    d->used = true;
  if (dev->opens == 0)
    clock_gettime (CLOCK_MONOTONIC, &dev->closed_at);
  if (config.temp_grace == 0)
    registry_reap (dev);
  pthread_mutex_unlock (&registry_lock);
}

/* Whether temp device dev is unused: no connection, no clone, and a
 * client made it or sent it a request; caller holds the lock.
 */
bool
registry_unused (const struct device *dev)
{
  return dev->temp && (dev->used || dev->dynamic) &&
         dev->opens == 0 && dev->clones == 0;
}

/* Free dev, and then its sources, while they are unused temp devices;
 * caller holds the lock.
 */
void
registry_reap (struct device *dev)
{
  while (dev && registry_unused (dev)) {
    struct device *source = dev->source;

    nbdkit_debug ("device %s: freed (temporary, no connection left)",
                  dev->label);
    registry_remove (dev);
    dev = source;
  }
}

/* Call fn on each device in order, stopping at the first -1. */
int
registry_list (int (*fn) (void *opaque, const struct device *dev),
               void *opaque)
{
  size_t i;
  int r = 0;

  pthread_mutex_lock (&registry_lock);
  for (i = 0; i < registry_count && r == 0; i++)
    r = fn (opaque, registry_devices[i]);
  pthread_mutex_unlock (&registry_lock);
  return r;
}

/* Take the table's lock, for manage.c's changes to the table. */
void
registry_lock_table (void)
{
  pthread_mutex_lock (&registry_lock);
}

/* Let go of the table's lock. */
void
registry_unlock_table (void)
{
  pthread_mutex_unlock (&registry_lock);
}

/* The devices in the table and their count; caller holds the lock. */
struct device **
registry_table (size_t *n)
{
  *n = registry_count;
  return registry_devices;
}

/* Put dev at the end of the table; caller holds the lock and checked
 * registry_full.
 */
void
registry_insert (struct device *dev)
{
  registry_devices[registry_count++] = dev;
}
