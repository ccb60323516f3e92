/* memblock: the process-wide table of named devices. */
#ifndef MEMBLOCK_REGISTRY_H
#define MEMBLOCK_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "connect.h"
#include "store.h"

/* A device lives from creation until registry_free (plugin unload). */
struct device {
  char name[CONNECT_NAME_MAX + 1];
  char label[CONNECT_QUOTE_MAX];  /* name as quoted for log messages */
  bool readonly;
  struct store *store;
};

/* Room for registry_describe's "16 MiB, read-write". */
#define REGISTRY_DESCRIPTION_MAX 64

extern struct store_limit registry_limit;

extern int registry_init (void);
extern void registry_free (void);
extern struct device *registry_default (void);
extern struct device *registry_open (const struct connect *req);
extern int registry_list (int (*fn) (void *opaque, const struct device *dev),
                          void *opaque);
extern void registry_format_size (uint64_t size, char *buf, size_t len);
extern void registry_describe (const struct device *dev, bool readonly,
                               char *buf, size_t len);

#endif /* MEMBLOCK_REGISTRY_H */
