/* memblock: spare pages, the memory a volatile device's cache keeps
 * across a flush (volatile.c) so that the next writes to those pages do
 * not wait for the kernel to fault fresh ones in.
 *
 * A flush folds the cache into the durable store and empties it.
 * Emptied by store_forget_detach, the cache gives all its memory back,
 * and every page written after the flush costs a page fault (tens of
 * microseconds in some virtual machines, where a write to a page
 * already held is a copy).  A raw cache that retains (store_set_retain)
 * is emptied by store_forget_keep instead: each page that held data
 * becomes a spare page of its chunk, reading as its source like any
 * page the cache does not hold, but still mapped; a later write to it
 * takes it back without a fault.  Spare pages no write took back stay
 * for later flushes while they and the new ones fit in the cache's
 * budget (spare_max); past it the flush empties the cache whole, as
 * without spares (store_forget_detach: O(1) with the gate closed, the
 * memory freed after it opens), so spares never pass the budget and a
 * flush never gives pages back to the kernel with the gate closed.
 *
 *   W1  A spare page is of class source (map and hide clear) and its
 *       bit is set in the chunk's spare bitmap; it holds stale bytes,
 *       which nothing reads: reads, extents and folds go by class.
 *       Its bit is cleared under its page lock by the request that
 *       takes it back (spare_take: a copy-up that writes the whole
 *       page, or a zero-filled page before a partial write) or gives
 *       it back (spare_release_bits, with the pages released with it),
 *       or with the device's gate closed (store_forget_keep).
 *   W2  Spare pages stay counted: store_allocated and the limit include
 *       them (in held) and store_spare says how many bytes they are;
 *       store_data does not.  So that spares do not refuse writes the
 *       cap would take, store_forget_keep keeps none while the limit is
 *       more than half used, nor past the budget (the caller then
 *       empties the cache whole).  Taking one back or giving it back moves
 *       the counters down by it (acct_spare) as the request settles.
 *       store_forget_detach (a power cut) takes the spare pages out
 *       with the rest.
 *   W3  store_forget_keep runs with the device's gate closed, as the
 *       fold before it (V2 in volatile.c), and costs a pass over the
 *       cache's bitmaps: it gives nothing back to the kernel.
 */

#include <errno.h>
#include <string.h>

#include "pagemap.h"
#include "store-int.h"

/* Make raw clone s keep its pages across store_forget_keep, and its
 * unused spares while they fit in spare_max bytes: before its first
 * chunk.  -1/EINVAL otherwise.
 */
int
store_set_retain (struct store *s, uint64_t spare_max)
{
  if (s->ops != &raw_ops || s->source == NULL || store_chunks (s) > 0) {
    errno = EINVAL;
    return -1;
  }
  s->retain = true;
  s->spare_max = spare_max;
  return 0;
}

/* Bytes of spare pages s keeps (W2). */
uint64_t
store_spare (const struct store *s)
{
  return atomic_load_explicit (&s->spare, memory_order_relaxed);
}

/* If locked page p of chunk c is spare, take it back for data (W1): its
 * bit cleared, counted in t (W2); true if it was.
 */
bool
spare_take (struct store *s, struct chunk *c, uint64_t p, struct tally *t)
{
  _Atomic uint64_t *sp = store_spare_bits (s, c);
  uint64_t bit = (uint64_t) 1 << (p % 64);

  if (sp == NULL ||
      !(atomic_fetch_and_explicit (&sp[p / 64], ~bit, memory_order_relaxed)
        & bit))
    return false;
  acct_spare (t, 1);
  return true;
}

/* Clear the spare bits of locked pages [p, q) of chunk c (W1), which
 * the caller gives back with them; returns how many were set.
 */
uint64_t
spare_release_bits (struct store *s, struct chunk *c, uint64_t p, uint64_t q)
{
  _Atomic uint64_t *sp = store_spare_bits (s, c);
  uint64_t n = 0;

  while (sp != NULL && p < q) {
    uint64_t w = p / 64, mask = pagemap_word_mask (p, q, &p);

    if (atomic_load_explicit (&sp[w], memory_order_relaxed) & mask)
      n += __builtin_popcountll (atomic_fetch_and_explicit
                                 (&sp[w], ~mask, memory_order_relaxed)
                                 & mask);
  }
  return n;
}

/* Take back the spare pages among locked pages [p, q) of chunk c,
 * zero-filled, for a caller that writes into them in place (W1).
 */
void
spare_clear (struct store *s, struct chunk *c, uint64_t p, uint64_t q,
             struct tally *t)
{
  for (; store_spare_bits (s, c) != NULL && p < q; p++)
    if (spare_take (s, c, p, t))
      memset (c->data + (p << STORE_PAGE_SHIFT), 0, STORE_PAGE);
}

/* Empty retaining cache s, as store_forget does, but keep the pages
 * that held data as spares (W1), with the spares no write took since
 * the last call.  The device's gate is closed (W3).  -1 with errno and
 * s unchanged: EINVAL if s does not retain, ENOSPC if they would not
 * all fit in its budget or its limit is more than half used (W2).
 */
int
store_forget_keep (struct store *s)
{
  uint64_t idx = 0;

  if (!s->retain) {
    errno = EINVAL;
    return -1;
  }
  if (atomic_load (&s->spare) + atomic_load (&s->data) > s->spare_max ||
      (s->limit && atomic_load (&s->limit->used) > s->limit->max / 2)) {
    errno = ENOSPC;             /* past the budget, or crowding the cap */
    return -1;
  }
  while ((idx = chunkdir_next (&s->dir, idx, s->dir.nchunks))
         < s->dir.nchunks) {
    struct chunk *c = chunkdir_get (&s->dir, idx);
    _Atomic uint64_t *sp = store_spare_bits (s, c);

    for (uint64_t w = 0; w < s->map_words; w++) {
      uint64_t d = atomic_load_explicit (&c->map[w], memory_order_relaxed);

      atomic_fetch_or_explicit (&sp[w], d, memory_order_relaxed);
      atomic_store_explicit (&c->map[w], 0, memory_order_relaxed);
      atomic_store_explicit (&c->hide[w], 0, memory_order_relaxed);
    }
    idx++;
  }
  atomic_fetch_add (&s->spare, atomic_load (&s->data));
  atomic_store (&s->data, 0);
  return 0;
}
