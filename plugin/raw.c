/* memblock: the raw-page backend, each chunk a slot of the arena.
 *
 * A chunk's data is a slot of MAP_NORESERVE address space from the
 * store's arena (arena.c), so the kernel backs only the pages that are
 * written.  Reads copy data pages and fill the others without touching
 * the mapping; a page given back (MADV_DONTNEED) reads zeroes.  A page
 * changes class only in the functions named for the change: ZERO to
 * DATA (raw_zero_to_data), SOURCE to DATA or ZERO (raw_source_to_own),
 * DATA to ZERO (raw_release); data pages are overwritten in place.
 *
 *   I3  Reader against release: a reader loads the bit (acquire) and
 *       copies without a lock.  If a release overlaps, the copy may see
 *       some zeroes from the page the kernel gave back, which is one of
 *       the mixes NBD allows for overlapping requests.  A read fault on
 *       a released page maps the kernel's shared zero page: no memory.
 *   I4  A release run may span clear pages between two set bits (one
 *       madvise call for the run): those pages are inside the releasing
 *       request's locked range, so no write is filling them.
 *   M1  With store_set_mlock, a page is locked in RAM (mlock2,
 *       MLOCK_ONFAULT) under its page lock just before data first goes
 *       into it, and unlocked just before it is given back.  Only pages
 *       that hold data are locked, so the kernel's count of locked
 *       memory (VmLck) follows them, and neighbouring locked pages
 *       merge into one mapping.  A refusal (vm.max_map_count, say)
 *       leaves the page unlocked and is counted for the caller.
 */

#include <errno.h>
#include <sys/mman.h>

#include "pagemap.h"
#include "store-int.h"

/* Lock every page that holds data in RAM (M1): a raw store only,
 * before the first write.  -1/EINVAL otherwise.
 */
int
store_set_mlock (struct store *s)
{
  if (s->ops != &raw_ops || store_chunks (s) > 0) {
    errno = EINVAL;
    return -1;
  }
  s->mlock = true;
  return 0;
}

/* Pages the kernel refused to lock so far (M1). */
uint64_t
store_pin_failures (const struct store *s)
{
  return atomic_load_explicit (&s->pin_failures, memory_order_relaxed);
}

/* Lock locked page p of chunk c in RAM before data goes into it, if the
 * store locks its pages (M1).
 */
static void
raw_pin (struct store *s, struct chunk *c, uint64_t p)
{
  if (s->mlock &&
      arena_lock (c->data + (p << STORE_PAGE_SHIFT), STORE_PAGE) == -1)
    atomic_fetch_add_explicit (&s->pin_failures, 1, memory_order_relaxed);
}

/* Pages [start, end) of a chunk waiting to be given back in one call. */
struct raw_run {
  uint64_t start, end;
};

/* Give run r's pages of chunk c back to the kernel (unlocked first,
 * M1), and empty it.
 */
static void
raw_run_flush (struct store *s, struct chunk *c, struct raw_run *r)
{
  if (r->end > r->start)
    arena_release (c->data + (r->start << STORE_PAGE_SHIFT),
                   (r->end - r->start) << STORE_PAGE_SHIFT, s->mlock);
  r->start = r->end;
}

/* Add pages [p, q) to run r, first giving back the run if they do not
 * follow it.
 */
static void
raw_run_add (struct store *s, struct chunk *c, struct raw_run *r,
             uint64_t p, uint64_t q)
{
  if (p != r->end) {
    raw_run_flush (s, c, r);
    r->start = p;
  }
  r->end = q;
}

/* chunk_init: a slot of the arena (the caller holds grow_lock). */
static int
raw_chunk_init (struct store *s, struct chunk *c)
{
  return (c->data = arena_alloc (&s->arena)) == NULL ? -1 : 0;
}

/* chunk_bytes: nothing but address space (the header is store.c's). */
static uint64_t
raw_chunk_bytes (const struct store *s)
{
  (void) s;
  return 0;
}

/* slot_bytes: the chunk's pages. */
static uint64_t
raw_slot_bytes (const struct store *s)
{
  return (uint64_t) 1 << s->chunk_shift;
}

/* tidy: nothing to do. */
static void
raw_tidy (struct store *s, const struct store_req *rq)
{
  (void) s;
  (void) rq;
}

/* chunk_free: the slot is the arena's, freed with it. */
static void
raw_chunk_free (const struct store *s, struct chunk *c)
{
  (void) s;
  (void) c;
}

/* read: copy by class, with no lock (I3). */
static int
raw_read (struct store *s, struct chunk *c, uint64_t base,
          unsigned char *out, uint64_t coff, uint64_t n)
{
  clone_read_runs (s, c, base, c->data + coff, out, coff, coff + n);
  return 0;
}

/* ZERO to DATA: bytes [pos, next) of locked page p get in, unless they
 * are all zero (the page stays a hole).  A spare page taken back is
 * cleared first (W1 in spare.c).  Returns 1 if the page was set.
 */
static uint64_t
raw_zero_to_data (struct store *s, struct chunk *c, uint64_t p,
                  uint64_t pos, uint64_t next, const unsigned char *in,
                  struct tally *t)
{
  if (store_is_zero (in, next - pos))
    return 0;
  raw_pin (s, c, p);
  if (spare_take (s, c, p, t))
    memset (c->data + (p << STORE_PAGE_SHIFT), 0, STORE_PAGE);
  memcpy (c->data + pos, in, next - pos);
  return pagemap_mark (c, p);
}

/* SOURCE to DATA or ZERO: locked page p of clone chunk c (at base) is
 * copied up with bytes [from, to) of it becoming src (zeroes if NULL),
 * kept if not all zero, and hidden (C1, C2).  A spare page is taken back
 * (the copy-up writes all of it, W1 in spare.c).  Returns 1 if it was
 * set.
 */
static uint64_t
raw_source_to_own (struct store *s, struct chunk *c, uint64_t base,
                   uint64_t p, uint64_t from, uint64_t to,
                   const unsigned char *src, struct tally *t)
{
  unsigned char *page = c->data + (p << STORE_PAGE_SHIFT);
  uint64_t gained = 0;

  raw_pin (s, c, p);
  spare_take (s, c, p, t);
  if (clone_copy_up (s, page, base + (p << STORE_PAGE_SHIFT), from, to, src))
    gained = pagemap_mark (c, p);
  else
    arena_release (page, STORE_PAGE, s->mlock);
  pagemap_hide (c, p, p + 1);
  return gained;
}

/* DATA to ZERO: clear locked pages [p, q) of chunk c and give them
 * back, hiding them first in a clone (C2); returns pages released.  The
 * spare pages among them go back too (W1 in spare.c), counted in t.
 */
static uint64_t
raw_release (struct store *s, struct chunk *c, uint64_t p, uint64_t q,
             struct tally *t)
{
  struct raw_run run = { 0, 0 };
  uint64_t released = 0, spared = spare_release_bits (s, c, p, q);

  if (c->hide)
    pagemap_hide (c, p, q);
  if (spared > 0) {             /* whole runs, spares or not: all zero */
    acct_spare (t, spared);
    raw_run_add (s, c, &run, p, q);
    raw_run_flush (s, c, &run);
  }
  while (p < q) {
    uint64_t w = p / 64, mask = pagemap_word_mask (p, q, &p), old;

    if ((atomic_load_explicit (&c->map[w], memory_order_relaxed) & mask) == 0)
      continue;
    old = atomic_fetch_and_explicit (&c->map[w], ~mask, memory_order_acq_rel)
          & mask;
    if (old == 0)
      continue;
    released += __builtin_popcountll (old);
    /* Clear pages between the first and last released bit are zero
     * already; handing them back too costs nothing (I4).
     */
    raw_run_add (s, c, &run, w * 64 + __builtin_ctzll (old),
                 w * 64 + 64 - __builtin_clzll (old));
  }
  raw_run_flush (s, c, &run);
  return released;
}

/* Count the pages a write would newly set: pages not holding data
 * whose new content may not be all zero.  That is exact, but for a
 * partial write into a page still showing a source that may hold data
 * there, always counted (C3).  rq, if not NULL, holds the locked
 * chunks; else they are looked up, and *create receives what the
 * missing ones that must be made will cost (I6).
 */
static uint64_t
raw_count (struct store *s, const unsigned char *in, uint64_t count,
           uint64_t offset, const struct store_req *rq, uint64_t *create)
{
  uint64_t need = 0, prev = UINT64_MAX;

  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    struct chunk *c = rq ? store_req_chunk (rq, idx)
                         : chunkdir_get (&s->dir, idx);
    uint64_t pos = coff, end = coff + n, base = idx << s->chunk_shift;
    bool source_data = clone_source_has_chunk (s, idx);

    if (c == NULL && rq == NULL) {
      uint64_t cost = acct_grow_cost (s, idx, prev, in + done, n);

      if (cost > 0) {
        *create += cost;
        prev = idx;
      }
    }

    while (pos < end) {
      uint64_t next = MIN ((pos | (STORE_PAGE - 1)) + 1, end);
      uint64_t at = base + (pos & ~(STORE_PAGE - 1));
      enum store_class cls = c ? pagemap_class (c, pos >> STORE_PAGE_SHIFT)
                             : s->source ? STORE_SOURCE : STORE_ZERO;

      if (cls == STORE_DATA)
        ;
      else if (cls == STORE_SOURCE && source_data &&
               next - pos < store_page_len (s, at))
        need++;
      else if (!store_is_zero (in + done + (pos - coff), next - pos))
        need++;
      pos = next;
    }
  }
  return need;
}

/* write_need: the pages the write would newly set, counted unlocked. */
static uint64_t
raw_write_need (struct store *s, const unsigned char *in,
                uint64_t count, uint64_t offset, uint64_t *create)
{
  return raw_count (s, in, count, offset, NULL, create) * STORE_PAGE;
}

/* Copy the n bytes at in into locked chunk c (at base) at coff. */
static void
raw_write_chunk (struct store *s, struct chunk *c, uint64_t base,
                 const unsigned char *in, uint64_t coff, uint64_t n,
                 struct tally *t)
{
  uint64_t pos = coff, end = coff + n, gained = 0;

  while (pos < end) {
    enum store_class cls;
    uint64_t run = pagemap_run (c, pos, end, &cls);

    if (cls == STORE_DATA) {
      memcpy (c->data + pos, in + (pos - coff), run - pos);
      pos = run;
      continue;
    }
    /* Other pages one at a time: zero data stays a hole.  A run of
     * several with data has the kernel fault them in with one call
     * rather than a fault per page (a hint, as in raw_fill); a page of
     * it that stays a hole is then given back.
     */
    bool populated = false;

#ifdef MADV_POPULATE_WRITE
    if (run - pos > STORE_PAGE &&
        !store_is_zero (in + (pos - coff), run - pos)) {
      uint64_t a = pos & ~(STORE_PAGE - 1);

      populated = madvise (c->data + a, ((run + STORE_PAGE - 1)
                                         & ~(STORE_PAGE - 1)) - a,
                           MADV_POPULATE_WRITE) == 0;
    }
#endif
    while (pos < run) {
      uint64_t next = MIN ((pos | (STORE_PAGE - 1)) + 1, run);
      uint64_t p = pos >> STORE_PAGE_SHIFT, at = p << STORE_PAGE_SHIFT;

      if (cls == STORE_SOURCE)
        gained += raw_source_to_own (s, c, base, p, pos - at, next - at,
                                     in + (pos - coff), t);
      else if (raw_zero_to_data (s, c, p, pos, next, in + (pos - coff), t))
        gained++;
      else if (populated)
        arena_release (c->data + at, STORE_PAGE, false);
      pos = next;
    }
  }
  acct_pages (t, gained, 0);
}

/* write: count again, exactly, under the locks (a release may have
 * cleared a page since write_need), reserve any difference, then copy
 * (I5).
 */
static int
raw_write (struct store *s, const struct store_req *rq,
           const unsigned char *in, struct tally *t)
{
  uint64_t exact = raw_count (s, in, rq->count, rq->offset, rq, NULL)
                   * STORE_PAGE;

  if (exact > rq->need && acct_reserve (s, t, exact - rq->need) == -1)
    return -1;
  FOR_EACH_CHUNK (s, rq->count, rq->offset, idx, coff, n, done) {
    struct chunk *c = store_req_chunk (rq, idx);

    if (c != NULL)
      raw_write_chunk (s, c, idx << s->chunk_shift, in + done, coff, n, t);
  }
  return 0;
}

/* Zero [from, to) of chunk c (at base), inside one or two locked
 * pages; returns pages newly set (a clone's page that shows its source
 * and keeps some of it).
 */
static uint64_t
raw_zero_partial (struct store *s, struct chunk *c, uint64_t base,
                  uint64_t from, uint64_t to, struct tally *t)
{
  uint64_t gained = 0;

  while (from < to) {
    uint64_t next = MIN ((from | (STORE_PAGE - 1)) + 1, to);
    uint64_t p = from >> STORE_PAGE_SHIFT, at = p << STORE_PAGE_SHIFT;

    switch (pagemap_class (c, p)) {
    case STORE_DATA:
      memset (c->data + from, 0, next - from);
      break;
    case STORE_SOURCE:
      gained += raw_source_to_own (s, c, base, p, from - at, next - at, NULL,
                                   t);
      break;
    default:
      break;
    }
    from = next;
  }
  return gained;
}

/* zero_need: only a clone's partial end pages can need memory (C3). */
static uint64_t
raw_zero_need (struct store *s, uint64_t count, uint64_t offset)
{
  return clone_zero_need (s, count, offset);
}

/* zero: the whole pages are released, the partial ones at the ends
 * zeroed in place, all under the pages' locks.
 */
static int
raw_zero (struct store *s, struct chunk *c, uint64_t base,
          uint64_t coff, uint64_t n, struct tally *t)
{
  uint64_t end = coff + n, p, q, gained = 0, released = 0;
  uint64_t a = (coff + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
  uint64_t b = store_whole_end (s, base + end) - base;

  pagemap_span (coff, n, &p, &q);
  pagelock_lock (c, p, q);
  if (a >= b)
    gained += raw_zero_partial (s, c, base, coff, end, t);
  else {
    gained += raw_zero_partial (s, c, base, coff, a, t);
    gained += raw_zero_partial (s, c, base, b, end, t);
    released += raw_release (s, c, a >> STORE_PAGE_SHIFT,
                             b >> STORE_PAGE_SHIFT, t);
  }
  pagelock_unlock (c, p, q);
  acct_pages (t, gained, released);
  return 0;
}

/* fill: lock the piece's pages, let the kernel fault them in at once,
 * have fn write the data straight into them, then keep the pages that
 * are not all zero and give the rest back.  The caller reserved the
 * piece's pages.  -1 with errno if fn fails (the pages it filled are
 * given back or keep their old data).
 */
static int
raw_fill (struct store *s, struct chunk *c, uint64_t base,
          uint64_t coff, uint64_t n, store_fill_fn fn, void *opaque,
          struct tally *t)
{
  struct raw_run run = { 0, 0 };
  uint64_t p, q, first, gained = 0;
  int r;

  pagemap_span (coff, n, &p, &q);
  first = p;
  pagelock_lock (c, first, q);
#ifdef MADV_POPULATE_WRITE
  madvise (c->data + coff, n, MADV_POPULATE_WRITE);   /* a hint */
#endif
  spare_clear (s, c, p, q, t);  /* filled, then kept or given back */
  r = fn (opaque, c->data + coff, n, base + coff);
  for (; p < q; p++) {
    unsigned char *page = c->data + (p << STORE_PAGE_SHIFT);

    if (pagemap_class (c, p) == STORE_DATA)
      continue;
    if (r == 0 && !store_is_zero (page, STORE_PAGE)) {
      raw_pin (s, c, p);
      gained += pagemap_mark (c, p);
    }
    else
      raw_run_add (s, c, &run, p, p + 1);
  }
  raw_run_flush (s, c, &run);
  pagelock_unlock (c, first, q);
  acct_pages (t, gained, 0);
  return r;
}

const struct store_ops raw_ops = {
  .name       = "raw",
  .chunk_init = raw_chunk_init,
  .chunk_free = raw_chunk_free,
  .chunk_bytes = raw_chunk_bytes,
  .slot_bytes = raw_slot_bytes,
  .tidy       = raw_tidy,
  .span       = pagemap_span,
  .read       = raw_read,
  .write_need = raw_write_need,
  .write      = raw_write,
  .zero_need  = raw_zero_need,
  .zero       = raw_zero,
  .fill       = raw_fill,
};
