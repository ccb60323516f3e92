/* memblock: a disk with a volatile write cache that loses power on
 * command (:volatile, and the control socket's power_cut).
 *
 * A volatile device serves a layer over its durable store: the device's
 * store is a clone (the cache) whose source is the durable state.  A
 * write, write-zeroes or trim lands in the cache and is unflushed; a
 * flush folds the cache into the durable store and empties it; a write
 * with FUA lands in both.  A power cut folds the part of the cache it
 * keeps (none, all, or unit-sized blocks drawn from a seed) and drops
 * the rest.  Invariants:
 *
 *   V1  The device's store pointer never changes: the cache is emptied
 *       in place (store_forget).  So the control socket's walks of the
 *       device chains (manage.c) never race a flush, and the durable
 *       store is always store_source (dev->store).  manage.c never
 *       folds the durable store away (it counts as a device's store),
 *       and refuses snapshot, rollback and save of a volatile device.
 *   V2  A flush and a cut run with the device's gate closed (gate.c,
 *       G2: its excl mutex makes them exclusive with each other and
 *       with the control socket), from outside the gate: a flush is
 *       called outside it, and an armed cut runs after the write that
 *       fires it has left it.  So the cache does not change under a
 *       fold, and a request is entirely before or after it.
 *   V3  A FUA request changes the cache before the durable store, so a
 *       reader (through the cache) never sees the durable pages of its
 *       range change: they are the cache's own by then.  Both hold the
 *       same bytes there afterwards.
 *   V4  Each cut bumps the generation.  A connection opened before a
 *       cut gets EIO for every request until it goes (a pulled disk:
 *       nbdkit 1.32 cannot close it from the plugin); one opened later
 *       sees the state after the cut.  From the moment an armed cut
 *       fires until it is done, every new request gets EIO.
 *   V5  Every unflushed write's range is logged (up to VOL_LOG_MAX
 *       entries; more are only counted) so that a cut can say how many
 *       writes it kept whole, in part or not at all.  A flush or a cut
 *       empties the log.  The log and the counts are under v->lock, a
 *       lock of this device only.
 *   V6  A cut, or a flush that keeps no spares (V7), takes the cache's
 *       pages out in O(1) with the gate closed (store_forget_detach)
 *       and frees them after it opens, on the reclaimer thread
 *       (vol_reclaim), so neither the requests waiting at the gate nor
 *       the control call's reply wait for the kernel to unmap them.
 *       They stay counted against max-memory until freed.  The thread
 *       ends when nothing is left to free (so an idle server has no
 *       thread of ours), and is joined by the next vol_reclaim or by
 *       vol_stop (at unload).
 *   V7  A raw cache retains (spare.c): a flush keeps the pages that held
 *       data as spares for the writes after it, beside the spares no
 *       write took, while all fit in a quarter of the device (256 MiB
 *       at most) and the cap is at most half used (store_forget_keep,
 *       with the gate closed, giving nothing back to the kernel); so a
 *       working set rewritten between flushes takes no page faults.
 *       Otherwise the flush empties the cache as V6 says; a cut always
 *       does, spares included.
 *
 * With keep=random each unit-sized block of the cache's own pages is
 * kept or not by a hash of the seed and the block's index, so the same
 * workload, seed and cut give the same device.
 */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "registry.h"
#include "store.h"
#include "volatile.h"

#define VOL_LOG_MAX ((size_t) 1 << 22)   /* 64 MiB of log at most */
#define VOL_SPARE_MAX ((uint64_t) 256 << 20)  /* unused spares, at most */

/* One unflushed write. */
struct vol_extent {
  uint64_t offset, length;
};

struct vol {
  _Atomic unsigned generation;  /* bumped by each cut (V4) */
  _Atomic bool pending;         /* an armed cut fired and is not done */
  _Atomic bool armed;           /* read without the lock on each write */
  pthread_mutex_t lock;         /* the rest (V5) */
  struct vol_extent *log;
  size_t nlog, caplog;
  uint64_t untracked;           /* unflushed writes past VOL_LOG_MAX */
  uint64_t unflushed_writes, unflushed_bytes;
  uint64_t writes, flushes, cuts;
  uint64_t arm_left;            /* writes before the armed cut */
  struct vol_cut arm;
  struct vol_result last;
};

/* Caches' pages waiting to be freed (V6), and the thread freeing them. */
struct vol_husks {
  struct store_husk *h;
  struct vol_husks *next;
};
static pthread_mutex_t vol_reclaim_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vol_husks *vol_reclaim_list;
static bool vol_reclaim_started;   /* a thread to join */
static bool vol_reclaim_running;   /* and it has not ended its loop */
static bool vol_reclaim_stopping;
static pthread_t vol_reclaim_thread;

/* The reclaimer thread: free what is handed over, then end. */
static void *
vol_reclaimer (void *arg)
{
  (void) arg;
  pthread_mutex_lock (&vol_reclaim_lock);
  while (vol_reclaim_list != NULL) {
    struct vol_husks *l = vol_reclaim_list;

    vol_reclaim_list = l->next;
    pthread_mutex_unlock (&vol_reclaim_lock);
    store_husk_free (l->h);
    free (l);
    pthread_mutex_lock (&vol_reclaim_lock);
  }
  vol_reclaim_running = false;
  pthread_mutex_unlock (&vol_reclaim_lock);
  return NULL;
}

/* Free h on the reclaimer thread, starting it if need be, or here if
 * it cannot be (V6).
 */
static void
vol_reclaim (struct store_husk *h)
{
  struct vol_husks *l = malloc (sizeof *l);
  sigset_t all, old;
  int e = 0;

  if (h == NULL)
    return;
  pthread_mutex_lock (&vol_reclaim_lock);
  if (l != NULL && !vol_reclaim_stopping) {
    l->h = h;
    l->next = vol_reclaim_list;
    vol_reclaim_list = l;
    h = NULL;
    if (!vol_reclaim_running) {
      /* The last thread has left its loop (or there was none). */
      if (vol_reclaim_started)
        pthread_join (vol_reclaim_thread, NULL);
      sigfillset (&all);        /* signals stay with nbdkit's threads */
      pthread_sigmask (SIG_SETMASK, &all, &old);
      e = pthread_create (&vol_reclaim_thread, NULL, vol_reclaimer, NULL);
      pthread_sigmask (SIG_SETMASK, &old, NULL);
      vol_reclaim_started = vol_reclaim_running = e == 0;
      if (e != 0) {             /* no thread: free it here */
        vol_reclaim_list = l->next;
        h = l->h;
      }
    }
  }
  pthread_mutex_unlock (&vol_reclaim_lock);
  if (h != NULL) {              /* no thread: free it now */
    free (l);
    store_husk_free (h);
  }
}

/* At unload: free what is waiting and join the reclaimer (V6). */
void
vol_stop (void)
{
  pthread_mutex_lock (&vol_reclaim_lock);
  vol_reclaim_stopping = true;
  pthread_mutex_unlock (&vol_reclaim_lock);
  if (vol_reclaim_started)
    pthread_join (vol_reclaim_thread, NULL);
  vol_reclaim_started = false;
}

/* A new volatile state: no cut, nothing unflushed; NULL with errno. */
struct vol *
vol_create (void)
{
  struct vol *v = calloc (1, sizeof *v);

  if (v == NULL)
    return NULL;
  pthread_mutex_init (&v->lock, NULL);
  return v;
}

/* Free v. */
void
vol_destroy (struct vol *v)
{
  if (v == NULL)
    return;
  pthread_mutex_destroy (&v->lock);
  free (v->log);
  free (v);
}

/* Make dev volatile: what it holds now is durable, and it goes on in an
 * empty cache over it.  Call before dev is served.  0, or -1 after
 * logging.
 */
int
vol_attach (struct device *dev)
{
  struct store *cache;

  if ((dev->vol = vol_create ()) == NULL) {
    nbdkit_error ("%s: volatile: calloc: %m", dev->label);
    return -1;
  }
  if ((cache = store_create_like (dev->store)) == NULL) {
    nbdkit_error ("%s: volatile: cannot make its cache: %m", dev->label);
    vol_destroy (dev->vol);
    dev->vol = NULL;
    return -1;
  }
  /* Spare pages across flushes (V7): a quarter of the device, at most
   * VOL_SPARE_MAX, kept unused.
   */
  if (store_codec (cache) == CODEC_NONE)
    store_set_retain (cache, store_size (cache) / 4 < VOL_SPARE_MAX
                             ? store_size (cache) / 4 : VOL_SPARE_MAX);
  store_destroy (dev->store);   /* the cache holds it now */
  dev->store = cache;
  return 0;
}

/* The generation a connection opened now belongs to (V4). */
unsigned
vol_generation (const struct vol *v)
{
  return atomic_load (&v->generation);
}

/* Whether a request of a connection of this generation gets EIO (V4). */
bool
vol_refused (const struct vol *v, unsigned generation)
{
  return atomic_load (&v->generation) != generation ||
    atomic_load (&v->pending);
}

/* Apply op (VOL_WRITE, VOL_ZERO, VOL_TRIM) to store s. */
static int
vol_apply (struct store *s, int op, const void *buf, uint64_t count,
           uint64_t offset)
{
  switch (op) {
  case VOL_WRITE: return store_write (s, buf, count, offset);
  case VOL_ZERO: return store_zero (s, count, offset);
  default: return store_trim (s, count, offset);
  }
}

/* Record an unflushed write (V5); v->lock held. */
static void
vol_log (struct vol *v, uint64_t count, uint64_t offset)
{
  if (v->nlog == v->caplog && v->caplog < VOL_LOG_MAX) {
    size_t cap = v->caplog ? v->caplog * 2 : 1024;
    struct vol_extent *log = realloc (v->log, cap * sizeof *log);

    if (log != NULL) {
      v->log = log;
      v->caplog = cap;
    }
  }
  if (v->nlog < v->caplog)
    v->log[v->nlog++] = (struct vol_extent) { offset, count };
  else
    v->untracked++;
  v->unflushed_writes++;
  v->unflushed_bytes += count;
}

/* A write, zero or trim of count bytes at offset has landed in dev's
 * cache (inside the gate): with FUA, make it durable too (V3), else log
 * it.  *cut_now is set if it fires an armed cut, which the caller runs
 * with vol_cut_armed once out of the gate.  0, or -1 with errno.
 */
int
vol_wrote (struct device *dev, const void *buf, uint64_t count,
           uint64_t offset, int op, bool fua, bool *cut_now)
{
  struct vol *v = dev->vol;
  int r = 0;

  *cut_now = false;
  if (fua)
    r = vol_apply (store_source (dev->store), op, buf, count, offset);
  pthread_mutex_lock (&v->lock);
  v->writes++;
  if (!fua && r == 0)
    vol_log (v, count, offset);
  if (atomic_load (&v->armed) && --v->arm_left == 0) {
    atomic_store (&v->armed, false);
    atomic_store (&v->pending, true);
    *cut_now = true;
  }
  pthread_mutex_unlock (&v->lock);
  return r;
}

/* Empty the log and the unflushed counts; v->lock held. */
static void
vol_clear (struct vol *v)
{
  v->nlog = 0;
  v->untracked = 0;
  v->unflushed_writes = v->unflushed_bytes = 0;
}

/* A flush: fold the cache into the durable store and empty it (V2). */
int
vol_flush (struct device *dev, unsigned generation)
{
  struct vol *v = dev->vol;
  struct store_husk *husk = NULL;
  int r = 0;

  gate_close (&dev->gate);
  if (vol_refused (v, generation)) {
    errno = EIO;
    r = -1;
  }
  else if ((r = store_fold (dev->store)) == 0 &&
           store_forget_keep (dev->store) == -1 &&
           (husk = store_forget_detach (dev->store)) == NULL)
    r = -1;
  if (r == 0) {
    pthread_mutex_lock (&v->lock);
    vol_clear (v);
    v->flushes++;
    pthread_mutex_unlock (&v->lock);
  }
  gate_open (&dev->gate);
  vol_reclaim (husk);
  return r;
}

/* A 64-bit mix of x (splitmix64's finaliser). */
static uint64_t
vol_mix (uint64_t x)
{
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* How a cut decides. */
struct vol_decide {
  enum vol_keep keep;
  uint64_t seed;
  unsigned unit;
};

/* store_keep_fn: whether the cut keeps the unit at offset. */
static bool
vol_keeps (void *opaque, uint64_t offset)
{
  const struct vol_decide *d = opaque;

  switch (d->keep) {
  case VOL_KEEP_ALL: return true;
  case VOL_KEEP_NONE: return false;
  default: return vol_mix (d->seed ^ vol_mix (offset / d->unit)) & 1;
  }
}

/* Sort the log by offset (only to classify writes). */
static int
vol_cmp (const void *a, const void *b)
{
  const struct vol_extent *x = a, *y = b;

  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Count the logged writes the cut kept whole, in part, or not at all. */
static void
vol_classify (struct vol *v, const struct vol_decide *d,
              struct vol_result *res)
{
  size_t i;

  res->writes_untracked = v->untracked;
  if (d->keep != VOL_KEEP_RANDOM) {
    if (d->keep == VOL_KEEP_ALL)
      res->writes_kept = v->nlog;
    else
      res->writes_lost = v->nlog;
    return;
  }
  qsort (v->log, v->nlog, sizeof *v->log, vol_cmp);
  for (i = 0; i < v->nlog; i++) {
    uint64_t at = v->log[i].offset - v->log[i].offset % d->unit;
    uint64_t end = v->log[i].offset + v->log[i].length;
    bool some = false, all = true;

    for (; at < end && (all || !some); at += d->unit) {
      if (vol_keeps ((void *) d, at))
        some = true;
      else
        all = false;
    }
    if (v->log[i].length == 0 || (some && all))
      res->writes_kept++;
    else if (some)
      res->writes_partial++;
    else
      res->writes_lost++;
  }
}

/* Cut the power now, with the gate closed (V2, V4); the cache's pages
 * go to *husk, for vol_reclaim once the gate is open (V6).
 */
static int
vol_cut_closed (struct device *dev, const struct vol_cut *cut,
                struct vol_result *res, struct store_husk **husk)
{
  struct vol *v = dev->vol;
  struct vol_decide d = { cut->keep, cut->seed,
                          cut->unit ? cut->unit : STORE_PAGE };
  int r, e = 0;

  memset (res, 0, sizeof *res);
  /* Even at max-memory the power goes: what could not be kept is lost. */
  r = store_fold_some (dev->store, d.unit, vol_keeps, &d,
                       &res->bytes_kept, &res->bytes_lost);
  if (r == -1)
    e = errno;
  if ((*husk = store_forget_detach (dev->store)) == NULL &&
      store_forget (dev->store) == -1) {     /* out of memory: free now */
    e = errno;
    r = -1;
  }
  pthread_mutex_lock (&v->lock);
  vol_classify (v, &d, res);
  vol_clear (v);
  v->cuts++;
  v->last = *res;
  atomic_store (&v->armed, false);
  atomic_fetch_add (&v->generation, 1);
  atomic_store (&v->pending, false);
  pthread_mutex_unlock (&v->lock);
  nbdkit_debug ("%s: power cut, keep=%s: kept %" PRIu64 " writes (%"
                PRIu64 " in part), lost %" PRIu64 "; %" PRIu64 " bytes "
                "kept, %" PRIu64 " lost", dev->label, vol_keep_name (cut->keep),
                res->writes_kept, res->writes_partial, res->writes_lost,
                res->bytes_kept, res->bytes_lost);
  errno = e;
  return r;
}

/* Run the cut an armed write fired, outside the gate (V2). */
void
vol_cut_armed (struct device *dev)
{
  struct vol *v = dev->vol;
  struct store_husk *husk = NULL;
  struct vol_result res;
  struct vol_cut cut;

  pthread_mutex_lock (&v->lock);
  cut = v->arm;
  pthread_mutex_unlock (&v->lock);
  gate_close (&dev->gate);
  if (vol_cut_closed (dev, &cut, &res, &husk) == -1)
    nbdkit_error ("%s: power cut: %m (the cut happened; less was kept)",
                  dev->label);
  gate_open (&dev->gate);
  vol_reclaim (husk);
}

/* The control socket's power_cut: now, or armed for after_writes. */
int
vol_power_cut (struct device *dev, const struct vol_cut *cut,
               struct vol_result *res)
{
  struct vol *v = dev->vol;
  int r;

  memset (res, 0, sizeof *res);
  if (cut->after_writes > 0) {
    pthread_mutex_lock (&v->lock);
    v->arm = *cut;
    v->arm_left = cut->after_writes;
    atomic_store (&v->armed, true);
    pthread_mutex_unlock (&v->lock);
    return 0;
  }
  struct store_husk *husk = NULL;

  gate_close (&dev->gate);
  r = vol_cut_closed (dev, cut, res, &husk);
  gate_open (&dev->gate);
  vol_reclaim (husk);
  return r;
}

/* Describe volatile device dev. */
void
vol_status (const struct device *dev, struct vol_status *st)
{
  struct vol *v = dev->vol;

  st->spare_bytes = store_spare (dev->store);
  pthread_mutex_lock (&v->lock);
  st->unflushed_writes = v->unflushed_writes;
  st->unflushed_bytes = v->unflushed_bytes;
  st->writes = v->writes;
  st->flushes = v->flushes;
  st->cuts = v->cuts;
  st->armed = atomic_load (&v->armed);
  st->armed_after = st->armed ? v->arm_left : 0;
  st->armed_keep = v->arm.keep;
  st->last = v->last;
  pthread_mutex_unlock (&v->lock);
}

/* The name of a keep mode. */
const char *
vol_keep_name (enum vol_keep k)
{
  switch (k) {
  case VOL_KEEP_NONE: return "none";
  case VOL_KEEP_ALL: return "all";
  case VOL_KEEP_RANDOM: return "random";
  }
  return "?";
}

/* Parse a keep mode; -1 if s is none of them. */
int
vol_keep_parse (const char *s, enum vol_keep *k)
{
  if (strcmp (s, "none") == 0)
    *k = VOL_KEEP_NONE;
  else if (strcmp (s, "all") == 0)
    *k = VOL_KEEP_ALL;
  else if (strcmp (s, "random") == 0)
    *k = VOL_KEEP_RANDOM;
  else
    return -1;
  return 0;
}
