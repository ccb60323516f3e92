/* memblock: the compressed-unit backend (store_set_codec).
 *
 * Units are aligned groups of UNITS_PAGES pages (CODEC_UNIT, 16 KiB); a
 * unit's pages share one blob from codec.c.  A chunk has a table of
 * blobs, kept in a pool (pool.c) over its slot of the arena, which is
 * compacted after the requests that leave it with enough dead blobs
 * (units_tidy), so that its memory follows what it counts.  The map,
 * hide and lock bitmaps and every page-class rule (pagemap.h, C1-C3 in
 * clone.c) stay as they are (a write of zeroes into a page holding data
 * keeps it, as in a raw store).  A unit changes only in the functions named for the change:
 * dropped whole (units_drop), packed whole from a write that covers it
 * (units_pack_whole), or edited page by page (units_edit); each builds
 * a struct units_edit that units_install puts in place.
 *
 *   Z1  blob[u] is the blob of unit u, or NULL when none of its pages
 *       holds data.  The blob holds the unit's data pages; what it holds
 *       for the other pages is never read (readers and edits take those
 *       pages as zeroes).  It is read, replaced and freed only under the
 *       locks of all the unit's pages, readers' included, so no reader
 *       ever sees a blob freed.
 *   Z2  A write rebuilds every unit it touches under the locks of its
 *       whole range, then reserves the exact growth in bytes held before
 *       it installs a blob: ENOSPC changes no byte (the blobs it packed
 *       are freed; the chunks it made stay, counted, I6).  A zero rebuilds
 *       units a chunk at a time; it reserves, before any change, a
 *       unit's worth for each partial page at its ends (a unit can grow
 *       only where part of a page is zeroed), and a unit whose pages it
 *       only releases keeps its old blob if the new one would be larger.
 */

#include <errno.h>
#include <stdlib.h>

#include "codec.h"
#include "pagemap.h"
#include "pool.h"
#include "store-int.h"

/* Pages in a compressed unit, and the mask of their bits in a word. */
#define UNITS_PAGES (CODEC_UNIT / STORE_PAGE)
#define UNITS_MASK (((uint64_t) 1 << UNITS_PAGES) - 1)

/* A compressed chunk's blobs. */
struct units_chunk {
  struct pool pool;
  void *blob[];                 /* per unit (Z1) */
};

/* A unit's new state: its blob, pages that hold data and pages hidden. */
struct units_edit {
  struct chunk *c;              /* the unit: c->units->blob[u] */
  uint64_t u;
  void *blob;
  uint64_t data, hide;          /* bits of the unit's pages, at p0 % 64 */
  int64_t held;                 /* change in bytes held */
};

/* Units in a chunk of s. */
static uint64_t
units_per_chunk (const struct store *s)
{
  return s->map_words * 64 / UNITS_PAGES;
}

/* span: the pages [*p, *q) of a chunk, widened to whole units, that
 * bytes [coff, coff+n) touch (Z1).
 */
static void
units_span (uint64_t coff, uint64_t n, uint64_t *p, uint64_t *q)
{
  pagemap_span (coff, n, p, q);
  *p &= ~(uint64_t) (UNITS_PAGES - 1);
  *q = (*q + UNITS_PAGES - 1) & ~(uint64_t) (UNITS_PAGES - 1);
}

/* slot_bytes: room in the pool for every unit stored raw, and as much
 * again of dead blobs before a compaction; more goes to the heap.
 */
static uint64_t
units_slot_bytes (const struct store *s)
{
  return (2 * units_per_chunk (s) * POOL_MAX_HELD (codec_max_size ())
          + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
}

/* chunk_init: an empty table of blobs over an empty pool (the caller
 * holds grow_lock).
 */
static int
units_chunk_init (struct store *s, struct chunk *c)
{
  void *slot = arena_alloc (&s->arena);

  if (slot == NULL ||
      (c->units = calloc (1, sizeof *c->units
                             + units_per_chunk (s) * sizeof (void *))) == NULL)
    return -1;
  pool_init (&c->units->pool, slot, units_slot_bytes (s));
  return 0;
}

/* chunk_bytes: the table of blobs. */
static uint64_t
units_chunk_bytes (const struct store *s)
{
  return STORE_MALLOC_COST (sizeof (struct units_chunk)
                            + units_per_chunk (s) * sizeof (void *));
}

/* chunk_free: the blobs on the heap, and the table (the pool's slot is
 * the arena's).
 */
static void
units_chunk_free (const struct store *s, struct chunk *c)
{
  if (c->units)
    pool_destroy (&c->units->pool, c->units->blob, units_per_chunk (s));
  free (c->units);
}

/* Compact chunk c's pool if it wants it (P2 in pool.c), under the locks
 * of all its pages; the caller holds none.  errno is kept.
 */
static void
units_tidy_chunk (struct store *s, struct chunk *c)
{
  uint64_t pages = s->map_words * 64;
  int err = errno;

  if (!pool_wants_compact (&c->units->pool))
    return;
  pagelock_lock (c, 0, pages);
  if (pool_wants_compact (&c->units->pool))
    pool_compact (&c->units->pool, c->units->blob, units_per_chunk (s));
  pagelock_unlock (c, 0, pages);
  errno = err;
}

/* tidy: each chunk the write changed. */
static void
units_tidy (struct store *s, const struct store_req *rq)
{
  FOR_EACH_CHUNK (s, rq->count, rq->offset, idx, coff, n, done) {
    struct chunk *c = store_req_chunk (rq, idx);

    if (c != NULL)
      units_tidy_chunk (s, c);
  }
}

/* read: a unit at a time under its locks (Z1). */
static int
units_read (struct store *s, struct chunk *c, uint64_t base,
            unsigned char *out, uint64_t coff, uint64_t n)
{
  unsigned char buf[CODEC_UNIT];
  uint64_t p, q, end = coff + n;
  int r = 0;

  units_span (coff, n, &p, &q);
  for (; p < q && r == 0; p += UNITS_PAGES) {
    uint64_t us = p << STORE_PAGE_SHIFT;
    uint64_t a = MAX (coff, us), b = MIN (end, us + CODEC_UNIT);
    void *blob;

    pagelock_lock (c, p, p + UNITS_PAGES);
    blob = c->units->blob[p / UNITS_PAGES];
    if (a == us && b == us + CODEC_UNIT &&
        ((pagemap_class_bits (c, p / 64, STORE_DATA) >> (p % 64))
         & UNITS_MASK) == UNITS_MASK)
      /* The whole unit, all data: straight into out. */
      r = codec_unpack (blob, out + (a - coff));
    else if (blob == NULL || (r = codec_unpack (blob, buf)) == 0)
      clone_read_runs (s, c, base, buf + (a - us), out + (a - coff), a, b);
    pagelock_unlock (c, p, p + UNITS_PAGES);
  }
  return r;
}

/* Start edit e of locked unit u of chunk c from the unit's bits now;
 * *d receives the word's data bits.
 */
static void
units_edit_init (struct chunk *c, uint64_t u, struct units_edit *e,
                 uint64_t *d)
{
  uint64_t p0 = u * UNITS_PAGES, h;

  pagemap_load (c, p0 / 64, &h, d);
  e->c = c;
  e->u = u;
  e->blob = NULL;
  e->data = *d & (UNITS_MASK << (p0 % 64));
  e->hide = c->hide ? h & (UNITS_MASK << (p0 % 64)) : 0;
}

/* The memory blob (NULL: none) holds. */
static int64_t
units_held (const void *blob)
{
  return blob ? (int64_t) pool_held (blob) : 0;
}

/* Pack unit (the unit's bytes as e now says) into a new blob in the
 * chunk's pool, unless no page holds data, and count the change in
 * bytes held.  0 or -1.
 */
static int
units_pack (struct store *s, const unsigned char *unit, struct units_edit *e)
{
  struct units_chunk *uc = e->c->units;
  const void *packed;

  if (e->data != 0 &&
      ((packed = codec_pack (s->codec, unit)) == NULL ||
       (e->blob = pool_alloc (&uc->pool, packed, codec_size (packed),
                              e->u)) == NULL))
    return -1;
  e->held = units_held (e->blob) - units_held (uc->blob[e->u]);
  return 0;
}

/* Give back a blob made for an edit that is not installed. */
static void
units_discard (struct units_edit *e)
{
  if (e->blob)
    pool_free (&e->c->units->pool, e->blob);
}

/* A whole unit dropped: every page reads zeroes, nothing to unpack. */
static void
units_drop (struct chunk *c, uint64_t u, struct units_edit *e)
{
  uint64_t d;

  units_edit_init (c, u, e, &d);
  e->data = 0;
  e->hide = c->hide ? UNITS_MASK << (u * UNITS_PAGES % 64) : 0;
  e->held = - units_held (c->units->blob[u]);
}

/* A whole unit packed as a write gives it (unit: its CODEC_UNIT bytes).
 * Its all-zero pages are the ones without data, or data pages written
 * with zeroes, which stay data.
 */
static int
units_pack_whole (struct store *s, struct chunk *c, uint64_t u,
                  const unsigned char *unit, struct units_edit *e)
{
  uint64_t d, p0 = u * UNITS_PAGES;

  units_edit_init (c, u, e, &d);
  for (uint64_t i = 0; i < UNITS_PAGES; i++) {
    uint64_t bit = (uint64_t) 1 << ((p0 + i) % 64);

    if (!store_is_zero (unit + i * STORE_PAGE, STORE_PAGE))
      e->data |= bit;
    if (c->hide && (e->data & bit || !(d & bit)))
      e->hide |= bit;           /* data, or a source page now zero */
  }
  return units_pack (s, unit, e);
}

/* A unit edited: bytes [from, to) of the chunk that lie in locked unit
 * u of chunk c (at base) become src[from...], or, if src is NULL, are
 * zeroed, the whole pages among them released.  Pages showing their
 * source are copied up where only part of them changes (C1).  0 or -1.
 */
static int
units_edit (struct store *s, struct chunk *c, uint64_t base, uint64_t u,
            uint64_t from, uint64_t to, const unsigned char *src,
            struct units_edit *e)
{
  unsigned char buf[CODEC_UNIT];
  uint64_t d, p0 = u * UNITS_PAGES;

  units_edit_init (c, u, e, &d);
  if (c->units->blob[u] == NULL)
    memset (buf, 0, sizeof buf);
  else if (codec_unpack (c->units->blob[u], buf) == -1)
    return -1;
  for (uint64_t i = 0; i < UNITS_PAGES; i++) {
    uint64_t p = p0 + i, bit = (uint64_t) 1 << (p % 64);
    uint64_t ps = p << STORE_PAGE_SHIFT, pe = ps + STORE_PAGE;
    uint64_t a = MAX (from, ps), b = MIN (to, pe);
    unsigned char *page = buf + i * STORE_PAGE;
    const unsigned char *in = src ? src + (a - from) : NULL;
    enum store_class cls = (e->data & bit) ? STORE_DATA
      : (c->hide == NULL || (e->hide & bit)) ? STORE_ZERO : STORE_SOURCE;

    if (cls != STORE_DATA)
      memset (page, 0, STORE_PAGE);     /* Z1: only data pages count */
    if (a >= b)
      continue;
    if (src == NULL && a == ps && b == pe) {
      e->data &= ~bit;                  /* released whole */
      memset (page, 0, STORE_PAGE);
    }
    else if (cls == STORE_SOURCE) {
      if (clone_copy_up (s, page, base + ps, a - ps, b - ps, in))
        e->data |= bit;
    }
    else {
      store_page_edit (page, a - ps, b - ps, in);
      if (cls == STORE_ZERO && !store_is_zero (page, STORE_PAGE))
        e->data |= bit;
    }
    if (c->hide && (cls == STORE_SOURCE || (e->data & bit) || src == NULL))
      e->hide |= bit;
  }
  return units_pack (s, buf, e);
}

/* Install edit e of its locked unit, counting pages gained and
 * released.  Bits are set before they are cleared, hide between (C2).
 */
static void
units_install (struct units_edit *e, struct tally *t)
{
  struct chunk *c = e->c;
  uint64_t p0 = e->u * UNITS_PAGES, w = p0 / 64;
  uint64_t mask = UNITS_MASK << (p0 % 64);
  uint64_t old = atomic_load_explicit (&c->map[w], memory_order_relaxed)
                 & mask;

  if (c->units->blob[e->u])
    pool_free (&c->units->pool, c->units->blob[e->u]);
  c->units->blob[e->u] = e->blob;
  atomic_fetch_or_explicit (&c->map[w], e->data & ~old, memory_order_release);
  if (c->hide)
    atomic_fetch_or_explicit (&c->hide[w], e->hide, memory_order_release);
  atomic_fetch_and_explicit (&c->map[w], ~(old & ~e->data),
                             memory_order_release);
  t->gained += __builtin_popcountll (e->data & ~old) * STORE_PAGE;
  t->released += __builtin_popcountll (old & ~e->data) * STORE_PAGE;
  t->held += e->held;
}

/* write_need: no data before the locks, as the exact growth is known
 * once the units are packed under them (Z2); the chunks to create.
 */
static uint64_t
units_write_need (struct store *s, const unsigned char *in,
                  uint64_t count, uint64_t offset, uint64_t *create)
{
  uint64_t prev = UINT64_MAX;

  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    uint64_t cost = acct_grow_cost (s, idx, prev, in + done, n);

    if (cost > 0) {
      *create += cost;
      prev = idx;
    }
  }
  return 0;
}

/* write: rebuild every unit of the locked request, reserve the growth,
 * then install them all (Z2).
 */
static int
units_write (struct store *s, const struct store_req *rq,
             const unsigned char *in, struct tally *t)
{
  /* Each piece spans at most two units more than its bytes make up. */
  struct units_edit *edits = malloc ((rq->count / CODEC_UNIT + 2 * rq->pieces)
                                     * sizeof *edits);
  uint64_t k = 0;
  int64_t held = 0;
  int r = -1;

  if (edits == NULL)
    return -1;
  FOR_EACH_CHUNK (s, rq->count, rq->offset, idx, coff, n, done) {
    struct chunk *c = store_req_chunk (rq, idx);
    uint64_t p, q;

    if (c == NULL)
      continue;
    units_span (coff, n, &p, &q);
    for (; p < q; p += UNITS_PAGES, k++) {
      uint64_t us = p << STORE_PAGE_SHIFT;

      if (coff <= us && coff + n >= us + CODEC_UNIT
          ? units_pack_whole (s, c, p / UNITS_PAGES, in + done + (us - coff),
                              &edits[k]) == -1
          : units_edit (s, c, idx << s->chunk_shift, p / UNITS_PAGES,
                        coff, coff + n, in + done, &edits[k]) == -1)
        goto out;
      held += edits[k].held;
    }
  }
  if (held > 0 && acct_reserve (s, t, held) == -1)
    goto out;
  for (uint64_t i = 0; i < k; i++)
    units_install (&edits[i], t);
  k = 0;                        /* nothing left to free */
  r = 0;
 out:
  while (k-- > 0)
    units_discard (&edits[k]);
  free (edits);
  return r;
}

/* zero_need: a unit's worth for each partial page at either end (Z2). */
static uint64_t
units_zero_need (struct store *s, uint64_t count, uint64_t offset)
{
  uint64_t ends[2] = { offset, offset + count }, need = 0;

  for (int i = 0; i < 2 && count > 0; i++)
    if (ends[i] % STORE_PAGE != 0 && ends[i] < s->size)
      need += POOL_MAX_HELD (codec_max_size ());
  return need;
}

/* zero: rebuild the piece's units under their locks; the caller made
 * the reservation (Z2).  -1 with errno (the failing unit is unchanged).
 */
static int
units_zero (struct store *s, struct chunk *c, uint64_t base,
            uint64_t coff, uint64_t n, struct tally *t)
{
  uint64_t p, q, end = coff + n;
  int r = 0;

  if (base + end == s->size)    /* the last partial page goes whole */
    end = store_whole_end (s, base + end) - base;
  units_span (coff, n, &p, &q);
  pagelock_lock (c, p, q);
  for (uint64_t u = p / UNITS_PAGES; u < q / UNITS_PAGES && r == 0; u++) {
    uint64_t us = u * CODEC_UNIT;
    bool partial = (coff > us && coff < us + CODEC_UNIT &&
                    coff % STORE_PAGE != 0) ||
                   (end > us && end < us + CODEC_UNIT && end % STORE_PAGE != 0);
    struct units_edit e;

    if (coff <= us && end >= us + CODEC_UNIT)
      units_drop (c, u, &e);
    else if ((r = units_edit (s, c, base, u, coff, end, NULL, &e)) == -1)
      break;
    if (!partial && e.held > 0 && c->units->blob[u] != NULL) {
      /* Releases only: keep the old, smaller blob (Z2). */
      units_discard (&e);
      e.blob = c->units->blob[u];
      c->units->blob[u] = NULL;
      e.held = 0;
    }
    units_install (&e, t);
  }
  pagelock_unlock (c, p, q);
  units_tidy_chunk (s, c);
  return r;
}

const struct store_ops units_ops = {
  .name       = "units",
  .chunk_init = units_chunk_init,
  .chunk_free = units_chunk_free,
  .chunk_bytes = units_chunk_bytes,
  .slot_bytes = units_slot_bytes,
  .tidy       = units_tidy,
  .span       = units_span,
  .read       = units_read,
  .write_need = units_write_need,
  .write      = units_write,
  .zero_need  = units_zero_need,
  .zero       = units_zero,
  .fill       = NULL,
};
