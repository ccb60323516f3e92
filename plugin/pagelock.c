/* memblock: page locks, one bit per page in a chunk's lock bitmap.
 *
 * Whatever changes a page's memory or its map or hide bit (a write, a
 * write-zeroes, a trim, a fill) first takes the page's lock bit, and
 * so does the release that gives the page back; in a compressed store
 * readers take them too (Z1 in units.c).  Raw readers take none.
 *
 *   I2  A set map bit means the page holds data and is counted; a clear
 *       bit means it reads zeroes (or its source) and holds no memory.
 *       Only a holder of the page's lock changes the bit or the page's
 *       memory: a write copies and then sets the bit (release); a
 *       release clears the bit and then gives the memory back.  Since
 *       both hold the lock, a write can never refill a page behind a
 *       release (the race where a copy faulted a released page back in
 *       under a clear bit: the page then read as zeroes, changed its
 *       mind on the next partial write, and held memory no counter saw).
 *
 * Deadlock: locks are taken a bitmap word at a time (up to 64 pages in
 * one CAS), in ascending order of chunk and page, and a request holds
 * no other lock while it waits.  Disjoint requests never wait for each
 * other (two requests sharing a word take different bits of it).
 */

#include <sched.h>
#include <stdlib.h>

#include "pagemap.h"
#include "store-int.h"

/* Wait a little for another request's page lock: spin, then yield. */
static void
pagelock_wait (unsigned *spins)
{
  if (++*spins < 128) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause ();
#endif
  }
  else
    sched_yield ();
}

/* Lock pages [p, q) of chunk c, a word at a time in ascending order. */
void
pagelock_lock (struct chunk *c, uint64_t p, uint64_t q)
{
  while (p < q) {
    uint64_t next, mask = pagemap_word_mask (p, q, &next);
    _Atomic uint64_t *w = &c->lock[p / 64];
    uint64_t old = atomic_load_explicit (w, memory_order_relaxed);
    unsigned spins = 0;

    for (;;) {
      if ((old & mask) != 0) {
        pagelock_wait (&spins);
        old = atomic_load_explicit (w, memory_order_relaxed);
      }
      else if (atomic_compare_exchange_weak_explicit (w, &old, old | mask,
                                                      memory_order_acquire,
                                                      memory_order_relaxed))
        break;
    }
    p = next;
  }
}

/* Unlock pages [p, q) of chunk c. */
void
pagelock_unlock (struct chunk *c, uint64_t p, uint64_t q)
{
  while (p < q) {
    uint64_t next, mask = pagemap_word_mask (p, q, &next);

    atomic_fetch_and_explicit (&c->lock[p / 64], ~mask, memory_order_release);
    p = next;
  }
}

/* Find the chunks of [offset, offset+count) and lock, in ascending
 * order, the pages the backend's span says a change there needs.  A
 * missing chunk is recorded as NULL and left alone: such a piece is
 * zeroes over zeroes (store_grow made every chunk that gets data), and
 * the request takes effect there before any later creation of it.
 * 0, or -1 with errno (nothing locked).
 */
int
pagelock_req_lock (struct store *s, struct store_req *rq,
                   uint64_t count, uint64_t offset)
{
  rq->count = count;
  rq->offset = offset;
  rq->first = offset >> s->chunk_shift;
  rq->pieces = ((offset + count - 1) >> s->chunk_shift) - rq->first + 1;
  rq->chunks = rq->stack;
  if (rq->pieces > STORE_STACK_PIECES &&
      (rq->chunks = malloc (rq->pieces * sizeof *rq->chunks)) == NULL)
    return -1;
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    struct chunk *c = chunkdir_get (&s->dir, idx);
    uint64_t p, q;

    rq->chunks[idx - rq->first] = c;
    if (c != NULL) {
      s->ops->span (coff, n, &p, &q);
      pagelock_lock (c, p, q);
    }
  }
  return 0;
}

/* Unlock what pagelock_req_lock locked (store_req_free frees rq). */
void
pagelock_req_unlock (struct store *s, struct store_req *rq)
{
  FOR_EACH_CHUNK (s, rq->count, rq->offset, idx, coff, n, done) {
    struct chunk *c = store_req_chunk (rq, idx);
    uint64_t p, q;

    if (c != NULL) {
      s->ops->span (coff, n, &p, &q);
      pagelock_unlock (c, p, q);
    }
  }
}
