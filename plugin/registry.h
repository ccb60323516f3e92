/* memblock: the process-wide table of named devices. */
#ifndef MEMBLOCK_REGISTRY_H
#define MEMBLOCK_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "connect.h"
#include "gate.h"
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
  struct device *snapshot_of;   /* a snapshot's device, else NULL */
  /* The device's data: changed only with the gate closed (gate.c),
   * read by requests inside it.
   */
  struct store *store;
  struct gate gate;
  unsigned opens;               /* connections open on it */
  unsigned clones;              /* devices whose source it is */
  bool used;                    /* a connection sent it a request */
  bool dynamic;                 /* made by a client's connect */
  char *persist;                /* :persist= path, or NULL */
  struct vol *vol;              /* :volatile (volatile.c), or NULL */
  struct timespec closed_at;    /* temp-grace: when its last close came */
};

/* Room for registry_describe's longest description. */
#define REGISTRY_DESCRIPTION_MAX (CONNECT_NAME_MAX + 192)

extern struct store_limit registry_limit;

extern int registry_init (void);
extern void registry_free (void);
extern struct device *registry_make (const char *name, uint64_t size,
                                     bool readonly, bool temp,
                                     struct device *source, int compress);
extern struct device *registry_wrap (const char *name, struct store *store,
                                     bool readonly, struct device *source);
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

/* For manage.c: the table, under its lock. */
extern void registry_lock_table (void);
extern void registry_unlock_table (void);
extern struct device **registry_table (size_t *n);
extern struct device *registry_find (const char *name);
extern bool registry_full (const char *label);
extern void registry_insert (struct device *dev);
extern void registry_remove (struct device *dev);
extern bool registry_unused (const struct device *dev);
extern void registry_reap (struct device *dev);

#endif /* MEMBLOCK_REGISTRY_H */
