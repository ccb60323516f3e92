/* memblock: background jobs started through the control socket. */
#ifndef MEMBLOCK_JOB_H
#define MEMBLOCK_JOB_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "connect.h"
#include "manage.h"

enum job_state { JOB_RUNNING, JOB_DONE, JOB_FAILED };

/* One job as job_list shows it. */
struct job_info {
  uint64_t id;
  const char *kind;             /* "save" or "load" */
  char device[CONNECT_NAME_MAX + 1];
  char path[4096];
  enum job_state state;
  uint64_t done_bytes, total_bytes;
  char error[512];              /* when failed */
};

/* Start saving device to path (NULL: its :persist= path) as a sparse
 * raw image; *id receives the job's id.  -1 with err filled if refused.
 */
extern int job_start_save (const char *device, const char *path,
                           bool overwrite, uint64_t *id,
                           struct manage_err *err);
/* A load that device_create runs itself, shown in job_list meanwhile:
 * job_begin_load gives it an id and the counter to update; job_end_load
 * records how it ended (error NULL: done).  -1 with err if refused.
 */
extern int job_begin_load (const char *device, const char *from,
                           uint64_t total, uint64_t *id,
                           _Atomic uint64_t **done, struct manage_err *err);
extern void job_end_load (uint64_t id, const char *error);
extern int job_list (int (*fn) (void *opaque, const struct job_info *),
                     void *opaque);
/* Wait for job id to end and describe it; -1/ENOENT if no such job. */
extern int job_wait (uint64_t id, struct job_info *info,
                     struct manage_err *err);
extern const char *job_state_name (enum job_state s);
/* Wait for every job to end (at unload). */
extern void job_shutdown (void);

#endif /* MEMBLOCK_JOB_H */
