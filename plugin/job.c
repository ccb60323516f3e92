/* memblock: background jobs started through the control socket.
 *
 * A job is a save of a device to a file (save.c), or the load of a new
 * device that device_create runs on its caller's thread (source.c) and
 * shows here while it runs (job_begin_load, job_end_load).  For a
 * save, job_start_save cuts a frozen view of the device
 * (manage_freeze, O(1): the device keeps serving), starts a thread that writes the view out with save_image
 * and gives it back (manage_thaw), and returns at once with the job's
 * id.  Everything a caller can get wrong (no such device, no path and no
 * :persist= path, a relative path, an existing file without overwrite,
 * a save to the same path already running) is refused there, before a
 * thread starts; what goes wrong while writing (a full disk, an
 * unwritable directory) fails the job, with save_image's one line.
 *
 * Jobs get ids 1, 2, ... and stay in a list in id order, finished ones
 * too: the last JOB_KEEP_FINISHED finished jobs are kept for job_list
 * and job_wait, older ones are dropped (and their threads joined) as
 * new ones finish.  job_wait sleeps on job_cond, which every job's end
 * broadcasts; a job someone waits for is never dropped.
 *
 * One lock, job_lock, guards the list and every job's state; progress
 * (done_bytes) is an atomic the save thread updates without it.  The
 * freeze is taken under job_lock, so a second save to one path cannot
 * slip in between the check and the start: the freeze is O(1), and
 * nothing that holds manage.c's or the registry's locks calls in here.
 *
 * job_shutdown (at unload) refuses new jobs, waits for the running ones
 * and for waiters to leave, joins every thread and frees the list.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "connect.h"
#include "job.h"
#include "manage.h"
#include "save.h"

#define JOB_KEEP_FINISHED 64    /* finished jobs kept for job_list */
#define JOB_MAX_RUNNING 16      /* saves running at once */

/* One job. */
struct job {
  struct job_info info;         /* done_bytes is filled from done */
  _Atomic uint64_t done;        /* progress, updated by the thread */
  bool overwrite;
  struct manage_frozen frozen;  /* the view being saved */
  pthread_t thread;
  bool has_thread;              /* a save: join it when dropping the job */
  unsigned waiters;             /* in job_wait: do not drop */
  struct job *next;
};

static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t job_cond = PTHREAD_COND_INITIALIZER;
static struct job *job_head, *job_tail;   /* in id order */
static uint64_t job_next_id = 1;
static unsigned job_running;
static unsigned job_finished;
static unsigned job_waiting;              /* threads in job_wait */
static bool job_stopping;                 /* job_shutdown was called */

/* The name of a job state as job_list shows it. */
const char *
job_state_name (enum job_state s)
{
  switch (s) {
  case JOB_RUNNING: return "running";
  case JOB_DONE: return "done";
  case JOB_FAILED: return "failed";
  }
  return "unknown";
}

/* Copy j's description into info; caller holds job_lock. */
static void
job_copy (const struct job *j, struct job_info *info)
{
  *info = j->info;
  info->done_bytes = j->info.state == JOB_DONE ? j->info.total_bytes
                                               : (uint64_t) j->done;
}

/* The job with this id, or NULL; caller holds job_lock. */
static struct job *
job_find (uint64_t id)
{
  for (struct job *j = job_head; j; j = j->next)
    if (j->info.id == id)
      return j;
  return NULL;
}

/* Drop the oldest finished jobs beyond JOB_KEEP_FINISHED, but not self
 * (the calling job's own thread) nor one that has waiters; caller holds
 * job_lock.
 */
static void
job_prune (const struct job *self)
{
  struct job **at = &job_head, *prev = NULL;

  while (*at && job_finished > JOB_KEEP_FINISHED) {
    struct job *j = *at;

    if (j == self || j->info.state == JOB_RUNNING || j->waiters > 0) {
      prev = j;
      at = &j->next;
      continue;
    }
    *at = j->next;
    if (job_tail == j)
      job_tail = prev;
    job_finished--;
    /* Its thread has set the state under the lock and only returns. */
    if (j->has_thread)
      pthread_join (j->thread, NULL);
    free (j);
  }
}

/* A job's thread: save the frozen view, give it back, record the end. */
static void *
job_thread (void *arg)
{
  struct job *j = arg;
  struct manage_err err = { .errnum = 0 };
  char label[CONNECT_QUOTE_MAX];
  int r;

  r = save_image (&j->frozen, j->info.path, j->overwrite, &j->done, NULL,
                  &err);
  manage_thaw (&j->frozen);
  connect_quote (j->info.device, label, sizeof label);
  pthread_mutex_lock (&job_lock);
  if (r == 0) {
    j->info.state = JOB_DONE;
    nbdkit_debug ("job %" PRIu64 ": device '%s' saved to %s (%" PRIu64
                  " bytes)", j->info.id, label, j->info.path,
                  j->info.total_bytes);
  }
  else {
    j->info.state = JOB_FAILED;
    snprintf (j->info.error, sizeof j->info.error, "%s", err.msg);
    nbdkit_debug ("job %" PRIu64 ": %s", j->info.id, err.msg);
  }
  job_running--;
  job_finished++;
  job_prune (j);
  pthread_cond_broadcast (&job_cond);
  pthread_mutex_unlock (&job_lock);
  return NULL;
}

/* Refuse a second save to path while one runs; caller holds job_lock. */
static int
job_check_busy (const char *label, const char *path, struct manage_err *err)
{
  if (job_stopping)
    return manage_fail (err, EBUSY, "device '%s': save to %s: the server "
                       "is shutting down", label, path);
  if (job_running >= JOB_MAX_RUNNING)
    return manage_fail (err, EBUSY, "device '%s': save to %s: %d saves "
                       "are running already", label, path, JOB_MAX_RUNNING);
  for (struct job *j = job_head; j; j = j->next)
    if (j->info.state == JOB_RUNNING && strcmp (j->info.path, path) == 0)
      return manage_fail (err, EBUSY, "device '%s': save to %s: job %"
                         PRIu64 " is saving to that path", label, path,
                         j->info.id);
  return 0;
}

/* Give j the next id and put it at the end of the list, running;
 * caller holds job_lock.
 */
static void
job_add (struct job *j)
{
  j->info.id = job_next_id++;
  job_running++;
  if (job_tail)
    job_tail->next = j;
  else
    job_head = j;
  job_tail = j;
}

/* Show a load device_create runs in job_list (see job.h). */
int
job_begin_load (const char *device, const char *from, uint64_t total,
                uint64_t *id, _Atomic uint64_t **done,
                struct manage_err *err)
{
  struct job *j = calloc (1, sizeof *j);

  if (j == NULL)
    return manage_fail (err, ENOMEM, "load: calloc: %m");
  j->info.kind = "load";
  snprintf (j->info.device, sizeof j->info.device, "%s", device);
  snprintf (j->info.path, sizeof j->info.path, "%s", from);
  j->info.state = JOB_RUNNING;
  j->info.total_bytes = total;
  pthread_mutex_lock (&job_lock);
  if (job_stopping) {
    pthread_mutex_unlock (&job_lock);
    free (j);
    return manage_fail (err, EBUSY, "load of '%s': the server is shutting "
                       "down", device);
  }
  job_add (j);
  *id = j->info.id;
  *done = &j->done;
  pthread_mutex_unlock (&job_lock);
  return 0;
}

/* Record how a load ended. */
void
job_end_load (uint64_t id, const char *error)
{
  struct job *j;

  pthread_mutex_lock (&job_lock);
  j = job_find (id);
  if (j != NULL) {
    j->info.state = error ? JOB_FAILED : JOB_DONE;
    if (error)
      snprintf (j->info.error, sizeof j->info.error, "%s", error);
    job_running--;
    job_finished++;
    job_prune (NULL);
    pthread_cond_broadcast (&job_cond);
  }
  pthread_mutex_unlock (&job_lock);
}

/* Start saving device to path (NULL: its :persist= path). */
int
job_start_save (const char *device, const char *path, bool overwrite,
                uint64_t *id, struct manage_err *err)
{
  struct manage_info *info = NULL;
  char label[CONNECT_QUOTE_MAX];
  struct job *j = NULL;
  int r = -1;

  if (device == NULL || *device == '\0')
    return manage_fail (err, EINVAL, "save: no device given");
  connect_quote (device, label, sizeof label);
  if (path == NULL) {
    info = malloc (sizeof *info);
    if (info == NULL)
      return manage_fail (err, ENOMEM, "device '%s': save: malloc: %m",
                         label);
    if (manage_get (device, info, err) == -1)
      goto out;
    if (info->persist[0] == '\0') {
      manage_fail (err, EINVAL, "device '%s': no path given, and the "
                  "device has no :persist= path", label);
      goto out;
    }
    path = info->persist;
  }
  if (save_check (device, path, overwrite, err) == -1)
    goto out;
  j = calloc (1, sizeof *j);
  if (j == NULL) {
    manage_fail (err, ENOMEM, "device '%s': save: calloc: %m", label);
    goto out;
  }
  j->info.kind = "save";
  snprintf (j->info.device, sizeof j->info.device, "%s", device);
  snprintf (j->info.path, sizeof j->info.path, "%s", path);
  j->info.state = JOB_RUNNING;
  j->overwrite = overwrite;

  pthread_mutex_lock (&job_lock);
  if (job_check_busy (label, path, err) == -1 ||
      manage_freeze (device, &j->frozen, err) == -1) {
    pthread_mutex_unlock (&job_lock);
    goto out;
  }
  j->info.total_bytes = j->frozen.size;
  errno = pthread_create (&j->thread, NULL, job_thread, j);
  if (errno != 0) {
    manage_fail (err, errno, "device '%s': save to %s: cannot start a "
                "thread: %m", label, path);
    pthread_mutex_unlock (&job_lock);
    manage_thaw (&j->frozen);
    goto out;
  }
  j->has_thread = true;
  job_add (j);
  *id = j->info.id;
  j = NULL;                     /* the list holds it */
  pthread_mutex_unlock (&job_lock);
  r = 0;
 out:
  free (j);
  free (info);
  return r;
}

/* Call fn on every job kept, oldest first, stopping at the first -1. */
int
job_list (int (*fn) (void *opaque, const struct job_info *), void *opaque)
{
  struct job_info info;
  int r = 0;

  pthread_mutex_lock (&job_lock);
  for (struct job *j = job_head; j && r == 0; j = j->next) {
    job_copy (j, &info);
    r = fn (opaque, &info);
  }
  pthread_mutex_unlock (&job_lock);
  return r;
}

/* Wait for job id to end and describe it; -1/ENOENT if no such job. */
int
job_wait (uint64_t id, struct job_info *info, struct manage_err *err)
{
  struct job *j;

  pthread_mutex_lock (&job_lock);
  j = job_find (id);
  if (j == NULL) {
    pthread_mutex_unlock (&job_lock);
    return manage_fail (err, ENOENT, "job %" PRIu64 ": no such job", id);
  }
  j->waiters++;
  job_waiting++;
  while (j->info.state == JOB_RUNNING)
    pthread_cond_wait (&job_cond, &job_lock);
  j->waiters--;
  job_waiting--;
  job_copy (j, info);
  pthread_cond_broadcast (&job_cond);   /* job_shutdown may wait for us */
  pthread_mutex_unlock (&job_lock);
  return 0;
}

/* Wait for every job to end, join the threads, free the list. */
void
job_shutdown (void)
{
  struct job *j, *next;

  pthread_mutex_lock (&job_lock);
  job_stopping = true;
  while (job_running > 0 || job_waiting > 0)
    pthread_cond_wait (&job_cond, &job_lock);
  j = job_head;
  job_head = job_tail = NULL;
  job_finished = 0;
  pthread_mutex_unlock (&job_lock);
  for (; j; j = next) {
    next = j->next;
    if (j->has_thread)
      pthread_join (j->thread, NULL);
    free (j);
  }
}
