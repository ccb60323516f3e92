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
 */

#include <errno.h>

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

/* Count raw pages newly set and cleared: each holds a page of memory. */
void
acct_pages (struct tally *t, uint64_t gained, uint64_t released)
{
  t->gained += gained * STORE_PAGE;
  t->released += released * STORE_PAGE;
  t->held += ((int64_t) gained - (int64_t) released) * (int64_t) STORE_PAGE;
}

/* Bring the counters in line with what the request did, and give back
 * what it reserved and did not come to hold (I5).
 */
void
acct_settle (struct store *s, const struct tally *t)
{
  /* Overwrites change nothing: leave the shared counters' cache lines
   * alone, so that threads writing different places do not contend.
   */
  if (t->gained != t->released)
    atomic_fetch_add_explicit (&s->data, t->gained - t->released,
                               memory_order_relaxed);
  if (t->held != 0)
    atomic_fetch_add_explicit (&s->held, (uint64_t) t->held,
                               memory_order_relaxed);
  if (s->limit != NULL && (int64_t) t->reserved != t->held)
    atomic_fetch_sub_explicit (&s->limit->used,
                               t->reserved - (uint64_t) t->held,
                               memory_order_relaxed);
}
