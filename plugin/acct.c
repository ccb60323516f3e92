/* memblock: accounting, a store's counters against a shared limit.
 *
 * A store counts the bytes of its pages that hold data (store_data) and
 * the memory they hold (store_allocated: the same for raw pages, the
 * blobs for compressed units).  A store_limit adds up the memory of all
 * its stores.  A request gathers what it did in a struct tally and
 * settles it once, at its end.
 *
 *   I5  Memory cap: limit->used is the memory held by all its stores
 *       plus the reservations of requests in flight, and never passes
 *       max.  A request reserves (a CAS against max) what it may come
 *       to hold before it creates a chunk or changes a byte, and a
 *       request that must look again under its locks reserves the
 *       difference before it changes anything; ENOSPC thus changes
 *       nothing.  Settling gives back what was reserved and not used;
 *       the counters move down only after the memory has gone.
 *   I6  Chunks count too: creating one charges its header and bitmaps,
 *       the backend's table and the directory nodes it needs, with
 *       malloc's overhead (acct_chunk_cost), to the limit and to
 *       store_metadata.  A request that may create chunks reserves their
 *       cost with its data, before anything changes (acct_prepay), so a
 *       refused raw write or a refused zero creates nothing; a
 *       compressed write, whose growth is known only once it has packed
 *       under its locks (Z2), may keep the chunks it made.  A chunk's
 *       cost stays counted until the store is destroyed, as the chunk
 *       stays (I1).
 *   I7  A load (store_fill) may reserve a whole piece before it knows
 *       which of its pages hold data: such a reservation is speculative,
 *       counted in limit->speculative while in flight and in
 *       limit->settled once given back.  A write refused with ENOSPC
 *       while one was in flight, or settled, since the write began, may
 *       have lost to it rather than to the data, and is tried again
 *       (acct_watch_retry); each retry follows a load's progress, so
 *       a load whose data fits under the cap always succeeds.
 */

#include <errno.h>
#include <sched.h>

#include "store-int.h"

/* Reserve bytes against the limit, adding them to t->reserved;
 * -1/ENOSPC if the cap would be passed (nothing reserved).
 */
int
acct_reserve (struct store *s, struct tally *t, uint64_t bytes)
{
  uint64_t used;

  if (s->limit == NULL || bytes == 0)
    return 0;
  used = atomic_load_explicit (&s->limit->used, memory_order_relaxed);
  do {
    if (bytes > s->limit->max || used > s->limit->max - bytes) {
      errno = ENOSPC;
      return -1;
    }
  } while (!atomic_compare_exchange_weak_explicit (&s->limit->used, &used,
                                                   used + bytes,
                                                   memory_order_relaxed,
                                                   memory_order_relaxed));
  t->reserved += bytes;
  return 0;
}

/* What creating the chunk at idx costs now (I6): its header and
 * bitmaps, the backend's table, the directory nodes it needs but for
 * those the chunk at prev (counted before; UINT64_MAX for none) needs
 * too.  Nodes are never freed, so the cost only falls as other chunks
 * are created.
 */
uint64_t
acct_chunk_cost (const struct store *s, uint64_t idx, uint64_t prev)
{
  return STORE_MALLOC_COST (store_header_bytes (s)) + s->ops->chunk_bytes (s)
         + chunkdir_missing_nodes (&s->dir, idx, prev)
           * STORE_MALLOC_COST (CHUNKDIR_NODE_BYTES);
}

/* What store_grow will spend on the chunk at idx for a write of the n
 * bytes at in there (prev as for acct_chunk_cost): nothing unless
 * store_must_grow says it must make it.
 */
uint64_t
acct_grow_cost (const struct store *s, uint64_t idx, uint64_t prev,
                 const unsigned char *in, uint64_t n)
{
  return store_must_grow (s, idx, in, n) ? acct_chunk_cost (s, idx, prev) : 0;
}

/* Reserve bytes for chunks the request may create (I6); -1/ENOSPC. */
int
acct_prepay (struct store *s, struct tally *t, uint64_t bytes)
{
  if (acct_reserve (s, t, bytes) == -1)
    return -1;
  t->prepaid += bytes;
  return 0;
}

/* Charge a new chunk's bytes to the request, from what it prepaid or
 * else reserved now; -1/ENOSPC (nothing charged).
 */
int
acct_meta (struct store *s, struct tally *t, uint64_t bytes)
{
  if (bytes <= t->prepaid)
    t->prepaid -= bytes;
  else if (acct_reserve (s, t, bytes - t->prepaid) == -1)
    return -1;
  else
    t->prepaid = 0;
  t->meta += bytes;
  return 0;
}

/* Count raw pages newly set and cleared: each holds a page of memory. */
void
acct_pages (struct tally *t, uint64_t gained, uint64_t released)
{
  t->gained += gained * STORE_PAGE;
  t->released += released * STORE_PAGE;
  t->held += ((int64_t) gained - (int64_t) released) * (int64_t) STORE_PAGE;
}

/* Count spare pages (spare.c, W2) taken into use or given back: they
 * were held already, so the memory held falls by them (and rises again
 * by the pages gained).
 */
void
acct_spare (struct tally *t, uint64_t pages)
{
  t->spare_gone += pages * STORE_PAGE;
  t->held -= (int64_t) (pages * STORE_PAGE);
}

/* Bring the counters in line with what the request did, and give back
 * what it reserved and did not come to hold (I5).
 */
void
acct_settle (struct store *s, const struct tally *t)
{
  int64_t kept = t->held + (int64_t) t->meta;

  /* Overwrites change nothing: leave the shared counters' cache lines
   * alone, so that threads writing different places do not contend.
   */
  if (t->gained != t->released)
    atomic_fetch_add_explicit (&s->data, t->gained - t->released,
                               memory_order_relaxed);
  if (t->held != 0)
    atomic_fetch_add_explicit (&s->held, (uint64_t) t->held,
                               memory_order_relaxed);
  if (t->meta != 0)
    atomic_fetch_add_explicit (&s->meta, t->meta, memory_order_relaxed);
  if (t->spare_gone != 0)
    atomic_fetch_sub_explicit (&s->spare, t->spare_gone,
                               memory_order_relaxed);
  if (s->limit != NULL && (int64_t) t->reserved != kept)
    atomic_fetch_sub_explicit (&s->limit->used,
                               t->reserved - (uint64_t) kept,
                               memory_order_relaxed);
}

/* Reserve bytes speculatively (I7); -1/ENOSPC. */
int
acct_speculate (struct store *s, struct tally *t, uint64_t bytes)
{
  if (acct_reserve (s, t, bytes) == -1)
    return -1;
  if (s->limit)
    atomic_fetch_add (&s->limit->speculative, bytes);
  return 0;
}

/* Settle a request that reserved bytes speculatively, then say so
 * (I7).
 */
void
acct_speculate_settle (struct store *s, const struct tally *t,
                       uint64_t bytes)
{
  acct_settle (s, t);
  if (s->limit && bytes > 0) {
    atomic_fetch_add (&s->limit->settled, 1);
    atomic_fetch_sub (&s->limit->speculative, bytes);
  }
}

/* Note the limit's speculative reservations before an attempt. */
void
acct_watch (const struct store *s, struct acct_watch *w)
{
  w->inflight = s->limit ? atomic_load (&s->limit->speculative) : 0;
  w->settled = s->limit ? atomic_load (&s->limit->settled) : 0;
}

/* After an attempt refused with ENOSPC: whether a speculative
 * reservation was in flight or settled since acct_watch (w), so that
 * the attempt is worth making again; if so, yield first (I7).
 */
bool
acct_watch_retry (const struct store *s, const struct acct_watch *w)
{
  if (s->limit == NULL ||
      (w->inflight == 0 && atomic_load (&s->limit->speculative) == 0 &&
       w->settled == atomic_load (&s->limit->settled)))
    return false;
  sched_yield ();
  return true;
}
