/* memblock: a chunk's map and hide bitmaps, one bit per page.
 *
 * A page is in one of three classes:
 *
 *   map set              data: the chunk's own page;
 *   map clear, hide set  zero: reads zeroes, holds nothing (in a store
 *                        that is not a clone, hide reads as all set);
 *   both clear           source: reads what the clone's source reads.
 *
 * Loads here are acquire loads, hide before map, and the writers in
 * raw.c and units.c store in the matching order (C2 in clone.c), so a
 * class read here is one the page really had.  The lock bits are
 * pagelock.c's.
 */
#ifndef MEMBLOCK_PAGEMAP_H
#define MEMBLOCK_PAGEMAP_H

#include "store-int.h"

/* Load word w of chunk c's hide and map bitmaps: hide first (C2).  A
 * chunk without hide (not a clone) hides every page.
 */
static inline void
pagemap_load (struct chunk *c, uint64_t w, uint64_t *h, uint64_t *d)
{
  *h = c->hide
    ? atomic_load_explicit (&c->hide[w], memory_order_acquire) : ~(uint64_t) 0;
  *d = atomic_load_explicit (&c->map[w], memory_order_acquire);
}

/* The pages of word w of chunk c that are of class cls. */
static inline uint64_t
pagemap_class_bits (struct chunk *c, uint64_t w, enum store_class cls)
{
  uint64_t h, d;

  pagemap_load (c, w, &h, &d);
  switch (cls) {
  case STORE_DATA: return d;
  case STORE_ZERO: return ~d & h;
  default:         return ~d & ~h;
  }
}

/* The class of page p of chunk c. */
static inline enum store_class
pagemap_class (struct chunk *c, uint64_t p)
{
  uint64_t h, d, bit = (uint64_t) 1 << (p % 64);

  pagemap_load (c, p / 64, &h, &d);
  return (d & bit) ? STORE_DATA : (h & bit) ? STORE_ZERO : STORE_SOURCE;
}

/* Set page p's data bit after its data is in place (release); true if
 * it was clear.
 */
static inline bool
pagemap_mark (struct chunk *c, uint64_t p)
{
  uint64_t bit = (uint64_t) 1 << (p % 64);

  return !(atomic_fetch_or_explicit (&c->map[p / 64], bit,
                                     memory_order_release) & bit);
}

/* Bits [p % 64, hi) of word p / 64, where hi is q's bit if q is in that
 * word, else 64; *next receives the first page after them.
 */
static inline uint64_t
pagemap_word_mask (uint64_t p, uint64_t q, uint64_t *next)
{
  uint64_t w = p / 64, hi = MIN (q - w * 64, 64);

  *next = w * 64 + hi;
  return (hi == 64 ? ~(uint64_t) 0 : ((uint64_t) 1 << hi) - 1)
         & (~(uint64_t) 0 << (p % 64));
}

/* Hide pages [p, q) of clone chunk c from its source (C1). */
static inline void
pagemap_hide (struct chunk *c, uint64_t p, uint64_t q)
{
  while (p < q) {
    uint64_t w = p / 64, mask = pagemap_word_mask (p, q, &p);

    atomic_fetch_or_explicit (&c->hide[w], mask, memory_order_release);
  }
}

/* First page in [p, q) whose class differs from cls, or q. */
static inline uint64_t
pagemap_run_end (struct chunk *c, uint64_t p, uint64_t q, enum store_class cls)
{
  while (p < q) {
    uint64_t differ = ~pagemap_class_bits (c, p / 64, cls)
                      & (~(uint64_t) 0 << (p % 64));

    if (differ)
      return MIN ((p & ~(uint64_t) 63) + __builtin_ctzll (differ), q);
    p = (p | 63) + 1;
  }
  return q;
}

/* End (byte offset in the chunk) of the run of pages like the one at
 * coff, bounded by end; *cls receives their class.
 */
static inline uint64_t
pagemap_run (struct chunk *c, uint64_t coff, uint64_t end,
             enum store_class *cls)
{
  uint64_t p = coff >> STORE_PAGE_SHIFT;
  uint64_t q = (end + STORE_PAGE - 1) >> STORE_PAGE_SHIFT;

  *cls = pagemap_class (c, p);
  return MIN (pagemap_run_end (c, p + 1, q, *cls) << STORE_PAGE_SHIFT, end);
}

/* The pages [*p, *q) that bytes [coff, coff+n) of a chunk touch. */
static inline void
pagemap_span (uint64_t coff, uint64_t n, uint64_t *p, uint64_t *q)
{
  *p = coff >> STORE_PAGE_SHIFT;
  *q = (coff + n + STORE_PAGE - 1) >> STORE_PAGE_SHIFT;
}

#endif /* MEMBLOCK_PAGEMAP_H */
