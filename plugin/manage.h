/* memblock: managing devices while the server runs (the control
 * socket's verbs).  No JSON and no socket here: rpc.c turns requests
 * into these calls.
 */
#ifndef MEMBLOCK_MANAGE_H
#define MEMBLOCK_MANAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "connect.h"
#include "store.h"
#include "volatile.h"

/* Why a call was refused: an errno value and one line naming the device
 * and the cause.
 */
struct manage_err {
  int errnum;
  char msg[512];
};

/* Requests and bytes a device served, by kind (gate.h counts them). */
struct manage_stats {
  uint64_t reads, writes, zeroes, trims, flushes, extents;
  uint64_t bytes_read, bytes_written;
};

/* One device as device_list shows it. */
struct manage_info {
  char name[CONNECT_NAME_MAX + 1];
  uint64_t size;
  bool readonly;
  bool temp;
  char source[CONNECT_NAME_MAX + 1];       /* "" if none */
  char snapshot_of[CONNECT_NAME_MAX + 1];  /* "" if none */
  enum codec compress;
  uint64_t allocated;           /* bytes of memory its own layer holds */
  uint64_t data;                /* bytes of data its own layer holds */
  unsigned connections;
  struct manage_stats stats;
  char persist[4096];           /* :persist= path, "" if none */
  bool vol;                     /* :volatile */
  struct vol_status vstatus;    /* if vol */
};

/* What device_create asks for; the rules are a connect string's. */
struct manage_create {
  const char *name;
  int64_t size;                 /* -1: not given */
  int readonly;                 /* -1: not given, 0, 1 */
  const char *from;             /* NULL or "": not a clone */
  bool temp;
  int compress;                 /* -1: not given, else an enum codec */
  const char *file;             /* NULL: no image to load */
  const char *format;           /* file's format; NULL: raw */
  const char *uri;              /* NBD server to load from, or NULL */
  bool vol;                     /* :volatile */
};

/* A frozen, read-only view of a device's data at one instant, held for
 * saving it (save.c); manage_thaw gives it back.
 */
struct manage_frozen {
  struct store *store;          /* read it with store_read/store_extents */
  uint64_t size;
  char name[CONNECT_NAME_MAX + 1];
};

extern int manage_fail (struct manage_err *err, int errnum,
                        const char *fmt, ...)
  __attribute__ ((format (printf, 3, 4)));
extern int manage_list (int (*fn) (void *opaque, const struct manage_info *),
                        void *opaque);
extern int manage_get (const char *name, struct manage_info *info,
                       struct manage_err *err);
extern int manage_create (const struct manage_create *req,
                          struct manage_info *info, struct manage_err *err);
extern int manage_delete (const char *name, struct manage_err *err);
extern int manage_snapshot (size_t n, const char *const *devices,
                            const char *const *names,
                            struct manage_err *err);
extern int manage_rollback (const char *device, const char *snapshot,
                            struct manage_info *info, struct manage_err *err);
extern int manage_freeze (const char *device, struct manage_frozen *f,
                          struct manage_err *err);
extern void manage_thaw (struct manage_frozen *f);
extern int manage_power_cut (const char *device, const struct vol_cut *cut,
                             struct vol_result *res, struct manage_err *err);
extern int manage_power_status (const char *device, struct vol_status *st,
                                struct manage_err *err);
extern int manage_start (void);
extern void manage_stop (void);

#endif /* MEMBLOCK_MANAGE_H */
