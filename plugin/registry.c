/* memblock: the process-wide table of named devices.
 *
 * Devices are created at start-up from the name= parameters and, with
 * dynamic=true, by the first client that asks for a new name.  They are
 * never removed while nbdkit runs: the same name always gives the same
 * data, and a connection's device pointer stays valid without locking.
 * The table lock is taken only to look up or add a device (at connect
 * time), never on the data path.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "registry.h"

struct store_limit registry_limit;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct device **registry_devices;  /* config.max_devices slots */
static size_t registry_count;

/* Human form of a size: "16 MiB" when exact, else "1000 bytes". */
void
registry_format_size (uint64_t size, char *buf, size_t len)
{
  static const char units[][4] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
  int u = -1;

  while (u < 5 && size >= 1024 && size % 1024 == 0) {
    size /= 1024;
    u++;
  }
  if (u < 0)
    snprintf (buf, len, "%" PRIu64 " bytes", size);
  else
    snprintf (buf, len, "%" PRIu64 " %s", size, units[u]);
}

/* Describe dev as seen read-only or not: "16 MiB, read-write". */
void
registry_describe (const struct device *dev, bool readonly,
                   char *buf, size_t len)
{
  char human[32];

  registry_format_size (store_size (dev->store), human, sizeof human);
  snprintf (buf, len, "%s, %s", human, readonly ? "read-only" : "read-write");
}

/* Create a device and add it to the table; caller holds the lock. */
static struct device *
registry_add (const char *name, uint64_t size, bool readonly)
{
  struct device *dev;
  char quoted[CONNECT_QUOTE_MAX];

  connect_quote (name, quoted, sizeof quoted);
  if (registry_count >= config.max_devices) {
    nbdkit_error ("cannot create device '%s': max-devices=%u reached",
                  quoted, config.max_devices);
    errno = ENOSPC;
    return NULL;
  }
  dev = calloc (1, sizeof *dev);
  if (dev == NULL) {
    nbdkit_error ("calloc: %m");
    return NULL;
  }
  strcpy (dev->name, name);
  strcpy (dev->label, quoted);
  dev->readonly = readonly;
  dev->store = store_create (size, config.chunk_shift, &registry_limit);
  if (dev->store == NULL) {
    nbdkit_error ("cannot create device '%s': %m", quoted);
    free (dev);
    return NULL;
  }
  registry_devices[registry_count++] = dev;
  return dev;
}

/* Create the declared devices (the .get_ready callback's work). */
int
registry_init (void)
{
  size_t i;

  registry_limit.max = config.max_memory;
  registry_devices = calloc (config.max_devices, sizeof *registry_devices);
  if (registry_devices == NULL) {
    nbdkit_error ("calloc: %m");
    return -1;
  }
  for (i = 0; i < config.ndevices; i++) {
    const struct connect *c = &config.devices[i];
    if (registry_add (c->name, c->size == -1 ? config.size : (uint64_t) c->size,
                      c->readonly == 1) == NULL)
      return -1;
  }
  return 0;
}

/* Destroy every device. */
void
registry_free (void)
{
  size_t i;

  for (i = 0; i < registry_count; i++) {
    store_destroy (registry_devices[i]->store);
    free (registry_devices[i]);
  }
  free (registry_devices);
  registry_devices = NULL;
  registry_count = 0;
}

/* The first declared device: what the export name "" gives. */
struct device *
registry_default (void)
{
  return registry_devices[0];
}

/* Find the device with this name; caller holds the lock. */
static struct device *
registry_find (const char *name)
{
  size_t i;

  for (i = 0; i < registry_count; i++)
    if (strcmp (registry_devices[i]->name, name) == 0)
      return registry_devices[i];
  return NULL;
}

/* The device a client's parsed export name asks for, creating it when
 * dynamic=true; NULL after logging why it is refused.  Names are valid
 * UTF-8 by now, but are quoted in the log all the same: a client could
 * still send characters such as U+2028 or U+202E.
 */
struct device *
registry_open (const struct connect *req)
{
  struct device *dev;
  char quoted[CONNECT_QUOTE_MAX];

  connect_quote (req->name, quoted, sizeof quoted);
  if (req->size != -1 && !config.dynamic) {
    nbdkit_error ("export '%s': a client may choose a size only with "
                  "dynamic=true", quoted);
    return NULL;
  }
  if (req->size != -1 && config.max_memory != UINT64_MAX &&
      (uint64_t) req->size > config.max_memory) {
    nbdkit_error ("export '%s': size=%" PRIi64 " is larger than "
                  "max-memory=%" PRIu64, quoted, req->size,
                  config.max_memory);
    return NULL;
  }

  pthread_mutex_lock (&registry_lock);
  dev = registry_find (req->name);
  if (dev == NULL && config.dynamic)
    dev = registry_add (req->name,
                        req->size == -1 ? config.size : (uint64_t) req->size,
                        false);
  else if (dev == NULL)
    nbdkit_error ("export '%s': no such device (declare it with name=, "
                  "or use dynamic=true)", quoted);
  else if (req->size != -1 && (uint64_t) req->size != store_size (dev->store)) {
    nbdkit_error ("export '%s': the device exists with size %" PRIu64
                  ", not %" PRIi64, dev->label, store_size (dev->store),
                  req->size);
    dev = NULL;
  }
  pthread_mutex_unlock (&registry_lock);
  return dev;
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
