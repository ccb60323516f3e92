/* memblock: the compressed-unit backend (store_set_codec).
 *
 * Units are aligned groups of UNITS_PAGES pages (CODEC_UNIT, 16 KiB); a
 * unit's pages share one blob from codec.c, and a chunk has a table of
 * blobs instead of an arena slot.  The map, hide and lock bitmaps and
 * every page-class rule (pagemap.h, C1-C3 in clone.c) stay as they are
 * (a write of zeroes into a page holding data keeps it, as in a raw
 * store).  A unit changes only in the functions named for the change:
 * dropped whole (units_drop), packed whole from a write that covers it
 * (units_pack_whole), or edited page by page (units_edit); each builds
 * a struct units_edit that units_install puts in place.
 *
 *   Z1  c->unit[u] is the blob of unit u, or NULL when none of its pages
 *       holds data.  The blob holds the unit's data pages; what it holds
 *       for the other pages is never read (readers and edits take those
 *       pages as zeroes).  It is read, replaced and freed only under the
 *       locks of all the unit's pages, readers' included, so no reader
 *       ever sees a blob freed.
 *   Z2  A write rebuilds every unit it touches under the locks of its
 *       whole range, then reserves the exact growth in bytes held before
 *       it installs a blob: ENOSPC changes nothing.  A zero rebuilds
 *       units a chunk at a time; it reserves, before any change, a
 *       unit's worth for each partial page at its ends (a unit can grow
 *       only where part of a page is zeroed), and a unit whose pages it
 *       only releases keeps its old blob if the new one would be larger.
 */

#include <stdlib.h>

#include "codec.h"
#include "pagemap.h"
#include "store-int.h"

/* Pages in a compressed unit, and the mask of their bits in a word. */
#define UNITS_PAGES (CODEC_UNIT / STORE_PAGE)
#define UNITS_MASK (((uint64_t) 1 << UNITS_PAGES) - 1)

/* A unit's new state: its blob, pages that hold data and pages hidden. */
struct units_edit {
  struct chunk *c;              /* the unit: c->unit[u] */
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

/* chunk_init: an empty table of blobs. */
static int
units_chunk_init (struct store *s, struct chunk *c)
{
  return (c->unit = calloc (units_per_chunk (s), sizeof *c->unit)) == NULL
         ? -1 : 0;
}

/* chunk_free: every blob, and the table. */
static void
units_chunk_free (const struct store *s, struct chunk *c)
{
  if (c->unit)
    for (uint64_t u = 0; u < units_per_chunk (s); u++)
      codec_free (c->unit[u]);
  free (c->unit);
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
    blob = c->unit[p / UNITS_PAGES];
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

/* Pack unit (the unit's bytes as e now says) into e->blob, unless no
 * page holds data, and count the change in bytes held.  0 or -1.
 */
static int
units_pack (struct store *s, const unsigned char *unit, struct units_edit *e)
{
  void *old = e->c->unit[e->u];

  if (e->data != 0 && (e->blob = codec_pack (s->codec, unit)) == NULL)
    return -1;
  e->held = (int64_t) (e->blob ? codec_held (e->blob) : 0)
            - (int64_t) (old ? codec_held (old) : 0);
  return 0;
}

/* A whole unit dropped: every page reads zeroes, nothing to unpack. */
static void
units_drop (struct chunk *c, uint64_t u, struct units_edit *e)
{
  void *old = c->unit[u];
  uint64_t d;

  units_edit_init (c, u, e, &d);
  e->data = 0;
  e->hide = c->hide ? UNITS_MASK << (u * UNITS_PAGES % 64) : 0;
  e->held = old ? - (int64_t) codec_held (old) : 0;
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
  if (c->unit[u] == NULL)
    memset (buf, 0, sizeof buf);
  else if (codec_unpack (c->unit[u], buf) == -1)
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

  codec_free (c->unit[e->u]);
  c->unit[e->u] = e->blob;
  atomic_fetch_or_explicit (&c->map[w], e->data & ~old, memory_order_release);
  if (c->hide)
    atomic_fetch_or_explicit (&c->hide[w], e->hide, memory_order_release);
  atomic_fetch_and_explicit (&c->map[w], ~(old & ~e->data),
                             memory_order_release);
  t->gained += __builtin_popcountll (e->data & ~old) * STORE_PAGE;
  t->released += __builtin_popcountll (old & ~e->data) * STORE_PAGE;
  t->held += e->held;
}

/* write_need: nothing before the locks; the exact growth is known once
 * the units are packed under them (Z2).
 */
static uint64_t
units_write_need (struct store *s, const unsigned char *in,
                  uint64_t count, uint64_t offset)
{
  (void) s;
  (void) in;
  (void) count;
  (void) offset;
  return 0;
}

/* write: rebuild every unit of the locked request, reserve the growth,
 * then install them all (Z2).
 */
static int
units_write (struct store *s, const struct store_req *rq,
             const unsigned char *in, struct tally *t)
{
  uint64_t pieces = ((rq->offset + rq->count - 1) >> s->chunk_shift)
                    - rq->first + 1;
  /* Each piece spans at most two units more than its bytes make up. */
  struct units_edit *edits = malloc ((rq->count / CODEC_UNIT + 2 * pieces)
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
    codec_free (edits[k].blob);
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
      need += codec_max_held ();
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
    if (!partial && e.held > 0 && c->unit[u] != NULL) {
      /* Releases only: keep the old, smaller blob (Z2). */
      codec_free (e.blob);
      e.blob = c->unit[u];
      c->unit[u] = NULL;
      e.held = 0;
    }
    units_install (&e, t);
  }
  pagelock_unlock (c, p, q);
  return r;
}

const struct store_ops units_ops = {
  .name       = "units",
  .chunk_init = units_chunk_init,
  .chunk_free = units_chunk_free,
  .span       = units_span,
  .read       = units_read,
  .write_need = units_write_need,
  .write      = units_write,
  .zero_need  = units_zero_need,
  .zero       = units_zero,
  .fill       = NULL,
};
