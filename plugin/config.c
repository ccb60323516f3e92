/* memblock: plugin parameters. */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
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
       SEEN_MAXDEV = 16 };

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
    if (nbdkit_parse_unsigned (key, value, &n) == -1 ||
        n < 1 || n > CONFIG_MAX_DEVICES_LIMIT) {
      nbdkit_error ("max-devices=%s: expected a number from 1 to %d",
                    value, CONFIG_MAX_DEVICES_LIMIT);
      return -1;
    }
    config.max_devices = n;
    return 0;
  }
  nbdkit_error ("unknown parameter '%s' (see nbdkit memblock --help)", key);
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
  config.ndevices = 0;
}
