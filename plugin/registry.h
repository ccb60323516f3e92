/* memblock: the process-wide table of named devices. */
#ifndef MEMBLOCK_REGISTRY_H
#define MEMBLOCK_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "connect.h"
#include "store.h"

/* A device lives from its creation until registry_free (plugin
 * unload), or, if temp, until its last connection closes and it has no
 * clones left (if declared, only once a request came).  The counts are
 * guarded by the registry's lock.
 */
struct device {
  char name[CONNECT_NAME_MAX + 1];
  char label[CONNECT_QUOTE_MAX];  /* name as quoted for log messages */
  bool readonly;
  bool temp;                    /* freed when nothing uses it any more */
  struct device *source;        /* a clone's source, else NULL */
  struct store *store;
  unsigned opens;               /* connections open on it */
  unsigned clones;              /* devices whose source it is */
  bool used;                    /* a connection sent it a request */
  bool dynamic;                 /* made by a client's connect */
};

/* Room for registry_describe's longest description. */
#define REGISTRY_DESCRIPTION_MAX (CONNECT_NAME_MAX + 192)

extern struct store_limit registry_limit;

extern int registry_init (void);
extern void registry_free (void);
extern struct device *registry_make (const char *name, uint64_t size,
                                     bool readonly, bool temp,
                                     struct device *source, int compress);
extern void registry_destroy (struct device *dev);
extern void registry_add (struct device *dev);
extern const char *registry_default_name (void);
extern struct device *registry_open (const struct connect *req,
                                     bool server_readonly);
extern void registry_close (struct device *dev, bool used);
extern int registry_list (int (*fn) (void *opaque, const struct device *dev),
                          void *opaque);
extern void registry_describe (const struct device *dev, bool readonly,
                               char *buf, size_t len);

#endif /* MEMBLOCK_REGISTRY_H */
