/* memblock: plugin parameters. */
#ifndef MEMBLOCK_CONFIG_H
#define MEMBLOCK_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "connect.h"

#define CONFIG_DEFAULT_SIZE ((uint64_t) 16 << 20)       /* Mirage's 16M */
#define CONFIG_DEFAULT_CHUNK_SHIFT 24                   /* 16 MiB */
#define CONFIG_DEFAULT_MAX_DEVICES 64
#define CONFIG_MAX_DEVICES_LIMIT 65536
#define CONFIG_MAX_TEMP_GRACE 86400
#define CONFIG_SOCKET_PATH_MAX 108          /* sun_path */
#define CONFIG_DEFAULT_NAME "disk0"

struct config {
  uint64_t size;                /* size of devices that give none */
  unsigned chunk_shift;
  uint64_t max_memory;          /* UINT64_MAX: no cap */
  bool dynamic;                 /* create unknown exports on connect */
  unsigned max_devices;
  enum codec compress;          /* for devices that give no :compress= */
  bool mlock;                   /* lock every page held in RAM */
  char *control;                /* control socket path, or NULL */
  unsigned temp_grace;          /* seconds a closed temp device waits */
  struct connect *devices;      /* declared with name=, in order */
  size_t ndevices;
};

extern struct config config;

extern int config_set (const char *key, const char *value);
extern int config_complete (void);
extern int config_check_device (const char *what, int compress);
extern void config_free (void);

#define CONFIG_HELP \
  "name=NAME[:ro|:rw][:size=SIZE][:from=SOURCE][:temp][:compress=C][:file=PATH]\n" \
  "                                Declare a device (repeatable; default disk0).\n" \
  "size=SIZE                       Default device size (default 16M).\n" \
  "chunk-size=SIZE                 Allocation chunk, power of 2, 4K..1G (default 16M).\n" \
  "max-memory=SIZE                 Cap on data held by all devices (default none).\n" \
  "dynamic=BOOL                    Create unknown exports on connect (default false).\n" \
  "max-devices=N                   Most devices in all (default 64).\n" \
  "compress=zstd|lz4|none          Keep data compressed (default none).\n" \
  "mlock=BOOL                      Lock the pages held in RAM (default false).\n" \
  "control=PATH                    Listen for JSON-RPC on a Unix socket.\n" \
  "temp-grace=SECONDS              Keep a closed temp device this long (default 0)."

#endif /* MEMBLOCK_CONFIG_H */
