/* memblock: sparse chunked in-memory block store (no nbdkit here).
 *
 * Layout.  A device of `size` bytes is cut into chunks of 2^chunk_shift
 * bytes.  The chunk directory (chunkdir.c) maps a chunk index to a
 * struct chunk, created on the first write that stores non-zero data in
 * it.  A chunk's data is a slot of MAP_NORESERVE address space from the
 * store's arena (arena.c), so the kernel backs only the 4 KiB pages
 * that are written.  Each chunk carries two bitmaps with one bit per
 * page:
 *
 *   map   clear: the page reads as zeroes and holds no memory (it is
 *         untouched, or was given back with MADV_DONTNEED);
 *         set: the page holds data and is counted.
 *   lock  set while one request changes the page (see below).
 *
 * Reads copy set pages and fill clear pages with zeroes without
 * touching the mapping; extents report clear pages as holes; write
 * zeroes and trim clear bits and give whole pages back to the kernel.
 * Accounting (per store and against a shared store_limit) counts set
 * bits, so it follows what is really held, page by page.
 *
 * Concurrency.  There is no global lock on the data path, and readers
 * take no lock at all.  Whatever changes a page's memory or its map bit
 * (a write, a write-zeroes or a trim) first takes the page's lock bit,
 * and so does the release that gives it back; page locks are taken a
 * bitmap word at a time (up to 64 pages in one CAS), in ascending order
 * of chunk and page, and a request holds no other lock while it waits,
 * so requests cannot deadlock.  These invariants hold between requests:
 *
 *   I1  Chunks, once created, stay in the directory until store_destroy,
 *       so a reader never follows a pointer to freed memory.  Creation
 *       is serialised by grow_lock and published with a release store;
 *       a new chunk has every bit clear, so a zero or a read that finds
 *       the chunk missing and one that finds it empty agree.
 *   I2  A set bit means the page holds data and is counted; a clear bit
 *       means it reads zeroes and holds no memory.  Only a holder of the
 *       page's lock changes the bit or the page's memory: a write copies
 *       and then sets the bit (release); a release clears the bit and
 *       then calls madvise.  Since both hold the lock, a write can never
 *       refill a page behind a release (the race where a copy faulted a
 *       released page back in under a clear bit: the page then read as
 *       zeroes, changed its mind on the next partial write, and held
 *       memory that no counter saw).
 *   I3  Reader vs release: a reader loads the bit (acquire) and copies
 *       without a lock.  If a release overlaps, the copy may see some
 *       zeroes from the page the kernel gave back, which is one of the
 *       mixes NBD allows for overlapping requests.  A read fault on a
 *       released page maps the kernel's shared zero page: no memory.
 *   I4  A release run may span clear pages between two set bits (one
 *       madvise call for the run): those pages are inside the releasing
 *       request's locked range, so no write is filling them.
 *   I5  Memory cap: limit->used is the pages set in all its stores plus
 *       the reservations of writes in flight, and never passes max.  A
 *       write counts the pages it will newly set (clear pages whose new
 *       data is not all zero) and reserves them (CAS against max)
 *       before it creates a chunk or copies a byte; then it locks its
 *       whole range and counts again, exactly, since a release may have
 *       cleared a page in between, and reserves the difference.  A write
 *       refused with ENOSPC thus changes no byte, and outside such a
 *       race creates no chunk.  The counts only move down when bits are
 *       cleared, after the release.
 *
 * Clones.  A clone (store_create_clone) starts as an exact view of a
 * source store that no one writes any more (a read-only device).  Its
 * chunks carry a third bitmap, hide, and a page is in one of three
 * classes:
 *
 *   map set              data: the clone's own page;
 *   map clear, hide set  zero: trimmed or zeroed in the clone;
 *   both clear           source: reads what the source reads there.
 *
 * A missing chunk in a clone is all source.  Chains of clones read
 * through each source in turn.
 *
 *   C1  A page leaves the source class once, under its lock, and never
 *       comes back: a write or a zero sets hide, and in a clone every
 *       data page has hide set.  A write into a page still showing its
 *       source first copies the source's page (a partial write keeps
 *       the rest of it) and keeps the page only if it is not all zero.
 *   C2  A reader loads hide before map; a writer sets map before hide
 *       (release), and a release sets hide before it clears map.  So a
 *       reader sees a class the page really had: never the source's
 *       bytes once the page has been trimmed or written, and never
 *       zeroes for a page that went straight from source to data.
 *   C3  Writes and zeroes in a clone reserve, before any change, the
 *       pages that may need memory: a partial write or zero into a page
 *       still showing its source is counted even if the result turns out
 *       all zero (the unused reservation is given back), unless no store
 *       down the chain has the chunk, where the source reads zeroes.  A zero can
 *       thus fail with ENOSPC in a clone, changing nothing.  A clone
 *       creates a chunk wherever it must hide a source's chunk, so a
 *       write or zero can create chunks of zeroes (headers only).
 *
 * Compressed stores (store_set_codec).  Units are aligned groups of
 * STORE_UNIT_PAGES pages (16 KiB); a unit's pages share one blob from
 * codec.c, and a chunk has no arena slot.  The map, hide and lock
 * bitmaps and every page-state rule above stay as they are (a write of
 * zeroes into a page holding data keeps it, as in a raw store), with
 * these:
 *
 *   Z1  c->unit[u] is the blob of unit u, or NULL when none of its pages
 *       holds data.  The blob holds the unit with every page that does
 *       not hold data zeroed.  It is read, replaced and freed only under
 *       the locks of all the unit's pages, readers' included, so no
 *       reader ever sees a blob freed.
 *   Z2  A write rebuilds every unit it touches under the locks of its
 *       whole range, then reserves the exact growth in bytes held before
 *       it installs a blob: ENOSPC changes nothing.  A zero rebuilds units
 *       a chunk at a time; it reserves, before any change, a unit's worth
 *       for each partial page at its ends (a unit can grow only where
 *       part of a page is zeroed), and a unit whose pages it only
 *       releases keeps its old blob if the new one would be larger.
 *
 * Locked memory (store_set_mlock, raw stores only).
 *
 *   M1  A page is locked in RAM (mlock2, MLOCK_ONFAULT) under its page
 *       lock just before data first goes into it, and unlocked just
 *       before it is given back.  Only pages that hold data are locked,
 *       so the kernel's count of locked memory (VmLck) follows them, and
 *       neighbouring locked pages merge into one mapping.  A refusal
 *       (vm.max_map_count, say) leaves the page unlocked and is counted
 *       for the caller to report.
 *
 * Requests that overlap in flight land in one of the orders NBD allows:
 * each page ends up as some order of the requests that touched it left
 * it, and stays so; disjoint requests never wait for each other (two
 * requests sharing a bitmap word take different bits of it).
 */

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "chunkdir.h"
#include "codec.h"
#include "store.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* What a page reads as (see "Clones" above). */
enum store_class {
  STORE_ZERO,                   /* zeroes: a hole, or hidden in a clone */
  STORE_DATA,                   /* the chunk's own page */
  STORE_SOURCE,                 /* the source's page (clones only) */
};

struct chunk {
  unsigned char *data;          /* raw: 2^chunk_shift bytes from the arena */
  void **unit;                  /* compressed: a blob per unit, or NULL (Z1) */
  _Atomic uint64_t *lock;       /* one bit per page: its lock (I2) */
  _Atomic uint64_t *hide;       /* clones: one bit per page, C1; else NULL */
  _Atomic uint64_t map[];       /* one bit per page: holds data (I2) */
};

/* Pages in a compressed unit. */
#define STORE_UNIT_PAGES (CODEC_UNIT / STORE_PAGE)

struct store {
  uint64_t size;
  unsigned chunk_shift;
  size_t map_words;             /* uint64_t words in a chunk's map */
  struct store *source;         /* clones: the read-only source, else NULL */
  enum codec codec;             /* CODEC_NONE: raw pages in the arena */
  bool mlock;                   /* lock pages holding data in RAM (M1) */
  _Atomic uint64_t pin_failures;  /* pages the kernel would not lock */
  struct chunkdir dir;
  pthread_mutex_t grow_lock;    /* serialises chunk creation and arena */
  struct arena arena;
  _Atomic uint64_t pages;       /* set bits over all chunks */
  _Atomic uint64_t held;        /* bytes of memory they hold */
  _Atomic uint64_t chunks;      /* chunks created */
  struct store_limit *limit;    /* may be NULL */
};

/* Create an empty store of size bytes, or NULL with errno set. */
struct store *
store_create (uint64_t size, unsigned chunk_shift, struct store_limit *limit)
{
  struct store *s;
  uint64_t nchunks;

  if (size > STORE_MAX_SIZE ||
      chunk_shift < STORE_MIN_CHUNK_SHIFT ||
      chunk_shift > STORE_MAX_CHUNK_SHIFT) {
    errno = EINVAL;
    return NULL;
  }
  s = calloc (1, sizeof *s);
  if (s == NULL)
    return NULL;
  nchunks = (size >> chunk_shift) + ((size & ((1ULL << chunk_shift) - 1)) != 0);
  s->size = size;
  s->chunk_shift = chunk_shift;
  s->map_words = ((1ULL << (chunk_shift - STORE_PAGE_SHIFT)) + 63) / 64;
  s->limit = limit;
  if (chunkdir_init (&s->dir, nchunks) == -1) {
    free (s);
    return NULL;
  }
  arena_init (&s->arena, (size_t) 1 << chunk_shift, nchunks);
  pthread_mutex_init (&s->grow_lock, NULL);
  return s;
}

/* Create a clone of source: O(1), it holds nothing until written. */
struct store *
store_create_clone (struct store *source, struct store_limit *limit)
{
  struct store *s = store_create (source->size, source->chunk_shift, limit);

  if (s != NULL)
    s->source = source;
  return s;
}

/* chunkdir_free callback: free one chunk's header and blobs (raw data
 * is the arena's).
 */
static void
store_free_chunk (void *leaf, void *opaque)
{
  struct chunk *c = leaf;
  const struct store *s = opaque;

  if (c->unit)
    for (uint64_t u = 0; u < (s->map_words * 64) / STORE_UNIT_PAGES; u++)
      codec_free (c->unit[u]);
  free (c->unit);
  free (c);
}

/* Free the store and give its memory and its share of the limit back. */
void
store_destroy (struct store *s)
{
  if (s == NULL)
    return;
  if (s->limit)
    atomic_fetch_sub (&s->limit->used, atomic_load (&s->held));
  chunkdir_free (&s->dir, store_free_chunk, s);
  arena_free (&s->arena);
  pthread_mutex_destroy (&s->grow_lock);
  free (s);
}

/* Size of the device in bytes. */
uint64_t
store_size (const struct store *s)
{
  return s->size;
}

/* Bytes of memory the data takes: the written pages, 4 KiB each, or in
 * a compressed store their blobs with the allocator's overhead.
 */
uint64_t
store_allocated (const struct store *s)
{
  return atomic_load_explicit (&s->held, memory_order_relaxed);
}

/* Bytes of data held: the written pages, 4 KiB each. */
uint64_t
store_data (const struct store *s)
{
  return atomic_load_explicit (&s->pages, memory_order_relaxed) * STORE_PAGE;
}

/* Keep the store's data compressed with codec c: only before the first
 * write, and with chunks of at least a unit.  -1/EINVAL otherwise.
 */
int
store_set_codec (struct store *s, enum codec c)
{
  if ((c != CODEC_NONE && ((uint64_t) 1 << s->chunk_shift) < CODEC_UNIT) ||
      store_chunks (s) > 0) {
    errno = EINVAL;
    return -1;
  }
  s->codec = c;
  return 0;
}

/* Lock every page that holds data in RAM (M1): a raw store only,
 * before the first write.  -1/EINVAL otherwise.
 */
int
store_set_mlock (struct store *s)
{
  if (s->codec != CODEC_NONE || store_chunks (s) > 0) {
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
store_page_pin (struct store *s, struct chunk *c, uint64_t p)
{
  if (s->mlock &&
      arena_lock (c->data + (p << STORE_PAGE_SHIFT), STORE_PAGE) == -1)
    atomic_fetch_add_explicit (&s->pin_failures, 1, memory_order_relaxed);
}

/* The codec the store's data is kept with. */
enum codec
store_codec (const struct store *s)
{
  return s->codec;
}

/* Number of chunks created so far. */
uint64_t
store_chunks (const struct store *s)
{
  return atomic_load_explicit (&s->chunks, memory_order_relaxed);
}

/* Fail with EINVAL unless [offset, offset+count) lies inside the device. */
static int
store_check_range (const struct store *s, uint64_t count, uint64_t offset)
{
  if (count > s->size || offset > s->size - count) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

/* True if len bytes at p are all zero.  Once the first 16 bytes are
 * known to be zero, p[i] == p[i+16] for every i means all are: memcmp
 * does that at full speed and stops at the first difference.
 */
static bool
store_is_zero (const unsigned char *p, size_t len)
{
  size_t i, head = len < 16 ? len : 16;

  for (i = 0; i < head; i++)
    if (p[i])
      return false;
  return len <= 16 || memcmp (p, p + 16, len - 16) == 0;
}

/* Load word w of chunk c's hide and map bitmaps: hide first (C2), so
 * that each page's class from the pair is one it really had.  A chunk
 * without hide (not a clone) hides every page.
 */
static inline void
store_load_word (struct chunk *c, uint64_t w, uint64_t *h, uint64_t *d)
{
  *h = c->hide
    ? atomic_load_explicit (&c->hide[w], memory_order_acquire) : ~(uint64_t) 0;
  *d = atomic_load_explicit (&c->map[w], memory_order_acquire);
}

/* The pages of word w of chunk c that are of class cls. */
static inline uint64_t
store_class_bits (struct chunk *c, uint64_t w, enum store_class cls)
{
  uint64_t h, d;

  store_load_word (c, w, &h, &d);
  switch (cls) {
  case STORE_DATA: return d;
  case STORE_ZERO: return ~d & h;
  default:         return ~d & ~h;
  }
}

/* The class of page p of chunk c. */
static inline enum store_class
store_page_class (struct chunk *c, uint64_t p)
{
  uint64_t h, d, bit = (uint64_t) 1 << (p % 64);

  store_load_word (c, p / 64, &h, &d);
  return (d & bit) ? STORE_DATA : (h & bit) ? STORE_ZERO : STORE_SOURCE;
}

/* Set page p's data bit after its data is in place; true if it was clear. */
static inline bool
store_page_mark (struct chunk *c, uint64_t p)
{
  uint64_t bit = (uint64_t) 1 << (p % 64);

  return !(atomic_fetch_or_explicit (&c->map[p / 64], bit,
                                     memory_order_release) & bit);
}

/* Bits [p % 64, hi) of word p / 64, where hi is q's bit if q is in that
 * word, else 64; *next receives the first page after them.
 */
static inline uint64_t
store_word_mask (uint64_t p, uint64_t q, uint64_t *next)
{
  uint64_t w = p / 64, hi = MIN (q - w * 64, 64);

  *next = w * 64 + hi;
  return (hi == 64 ? ~(uint64_t) 0 : ((uint64_t) 1 << hi) - 1)
         & (~(uint64_t) 0 << (p % 64));
}

/* Hide pages [p, q) of clone chunk c from its source (C1). */
static void
store_hide_pages (struct chunk *c, uint64_t p, uint64_t q)
{
  while (p < q) {
    uint64_t w = p / 64, mask = store_word_mask (p, q, &p);

    atomic_fetch_or_explicit (&c->hide[w], mask, memory_order_release);
  }
}

/* First page in [p, q) whose class differs from cls, or q. */
static uint64_t
store_run_end (struct chunk *c, uint64_t p, uint64_t q, enum store_class cls)
{
  while (p < q) {
    uint64_t differ = ~store_class_bits (c, p / 64, cls)
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
static uint64_t
store_run (struct chunk *c, uint64_t coff, uint64_t end, enum store_class *cls)
{
  uint64_t p = coff >> STORE_PAGE_SHIFT;
  uint64_t q = (end + STORE_PAGE - 1) >> STORE_PAGE_SHIFT;

  *cls = store_page_class (c, p);
  return MIN (store_run_end (c, p + 1, q, *cls) << STORE_PAGE_SHIFT, end);
}

/* Wait a little for another request's page lock: spin, then yield. */
static void
store_lock_wait (unsigned *spins)
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
static void
store_lock_pages (struct chunk *c, uint64_t p, uint64_t q)
{
  while (p < q) {
    uint64_t next, mask = store_word_mask (p, q, &next);
    _Atomic uint64_t *w = &c->lock[p / 64];
    uint64_t old = atomic_load_explicit (w, memory_order_relaxed);
    unsigned spins = 0;

    for (;;) {
      if ((old & mask) != 0) {
        store_lock_wait (&spins);
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
static void
store_unlock_pages (struct chunk *c, uint64_t p, uint64_t q)
{
  while (p < q) {
    uint64_t next, mask = store_word_mask (p, q, &next);

    atomic_fetch_and_explicit (&c->lock[p / 64], ~mask, memory_order_release);
    p = next;
  }
}

/* The pages [*p, *q) that bytes [coff, coff+n) of a chunk touch. */
static inline void
store_page_span (uint64_t coff, uint64_t n, uint64_t *p, uint64_t *q)
{
  *p = coff >> STORE_PAGE_SHIFT;
  *q = (coff + n + STORE_PAGE - 1) >> STORE_PAGE_SHIFT;
}

/* The pages [*p, *q) of a chunk, widened to whole units, that bytes
 * [coff, coff+n) touch.
 */
static void
store_unit_span (uint64_t coff, uint64_t n, uint64_t *p, uint64_t *q)
{
  store_page_span (coff, n, p, q);
  *p &= ~(uint64_t) (STORE_UNIT_PAGES - 1);
  *q = (*q + STORE_UNIT_PAGES - 1) & ~(uint64_t) (STORE_UNIT_PAGES - 1);
}

/* Create the chunk at idx if it is missing; NULL with errno on failure. */
static struct chunk *
store_chunk_create (struct store *s, uint64_t idx)
{
  size_t bitmaps = s->source ? 3 : 2;
  struct chunk *c;
  int err = 0;

  pthread_mutex_lock (&s->grow_lock);
  c = chunkdir_get (&s->dir, idx);
  if (c == NULL) {
    c = calloc (1, sizeof *c + bitmaps * s->map_words * sizeof (uint64_t));
    if (c == NULL)
      err = errno;
    else {
      c->lock = c->map + s->map_words;
      if (s->source)
        c->hide = c->lock + s->map_words;
      if ((s->codec == CODEC_NONE
           ? (c->data = arena_alloc (&s->arena)) == NULL
           : (c->unit = calloc (s->map_words * 64 / STORE_UNIT_PAGES,
                                sizeof *c->unit)) == NULL) ||
          chunkdir_set (&s->dir, idx, c) == -1) {
        /* An arena slot lost here is untouched address space. */
        err = errno;
        free (c->unit);
        free (c);
        c = NULL;
      }
      else
        atomic_fetch_add_explicit (&s->chunks, 1, memory_order_relaxed);
    }
  }
  pthread_mutex_unlock (&s->grow_lock);
  errno = err;
  return c;
}

/* Whether some store down s's chain of sources has the chunk at idx:
 * where none has, a clone's missing chunk reads zeroes.
 */
static bool
store_source_has_chunk (const struct store *s, uint64_t idx)
{
  for (s = s->source; s != NULL; s = s->source)
    if (chunkdir_get (&s->dir, idx) != NULL)
      return true;
  return false;
}

/* The first chunk index in [idx, end) that s or a store down its chain
 * has, or end.
 */
static uint64_t
store_next_chunk (const struct store *s, uint64_t idx, uint64_t end)
{
  for (; s != NULL; s = s->source)
    end = chunkdir_next (&s->dir, idx, end);
  return end;
}

/* Calls body once per chunk piece of [offset, offset+count):
 * idx (chunk index), coff (offset in chunk), n (bytes), done (bytes
 * before this piece).
 */
#define FOR_EACH_CHUNK(s, count, offset, idx, coff, n, done)            \
  for (uint64_t done = 0, idx, coff, n;                                 \
       done < (count) &&                                                \
         (idx = ((offset) + done) >> (s)->chunk_shift,                  \
          coff = ((offset) + done) & ((1ULL << (s)->chunk_shift) - 1),  \
          n = MIN ((count) - done, (1ULL << (s)->chunk_shift) - coff),  \
          1);                                                           \
       done += n)

static int store_read_units (struct store *s, struct chunk *c, uint64_t base,
                             unsigned char *out, uint64_t coff, uint64_t n);
static int store_write_units (struct store *s, const unsigned char *in,
                              uint64_t count, uint64_t offset);
static int store_zero_units (struct store *s, struct chunk *c, uint64_t base,
                             uint64_t coff, uint64_t n, uint64_t *released,
                             uint64_t *gained, int64_t *held);

/* Fill len bytes at out with what [offset, offset+len) of s's source
 * holds, or zeroes if s has none.
 */
static void
store_read_source (struct store *s, unsigned char *out,
                   uint64_t len, uint64_t offset)
{
  if (s->source)
    store_read (s->source, out, len, offset);
  else
    memset (out, 0, len);
}

/* Read count bytes at offset into buf. */
int
store_read (struct store *s, void *buf, uint64_t count, uint64_t offset)
{
  unsigned char *out = buf;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    struct chunk *c = chunkdir_get (&s->dir, idx);
    uint64_t pos = coff, end = coff + n;

    if (c == NULL) {
      store_read_source (s, out + done, n, offset + done);
      continue;
    }
    if (s->codec != CODEC_NONE) {
      if (store_read_units (s, c, idx << s->chunk_shift, out + done,
                            coff, n) == -1)
        return -1;
      continue;
    }
    while (pos < end) {
      enum store_class cls;
      uint64_t run = store_run (c, pos, end, &cls);
      unsigned char *to = out + done + (pos - coff);

      if (cls == STORE_DATA)
        memcpy (to, c->data + pos, run - pos);
      else if (cls == STORE_ZERO)
        memset (to, 0, run - pos);
      else
        store_read_source (s, to, run - pos, offset + done + (pos - coff));
      pos = run;
    }
  }
  return 0;
}

/* Count the pages a write would newly set: pages not holding data
 * whose new content may not be all zero.  That is exact, but for a
 * partial write into a page still showing a source that may hold data
 * there, always counted (C3).  A page is written whole when all its
 * bytes inside the device are.  chunks, if not NULL, holds the write's
 * chunks (see store_write_lock); else they are looked up.
 */
static uint64_t
store_write_count (struct store *s, const unsigned char *in,
                   uint64_t count, uint64_t offset, struct chunk **chunks)
{
  uint64_t need = 0, first = offset >> s->chunk_shift;

  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    struct chunk *c = chunks ? chunks[idx - first] : chunkdir_get (&s->dir, idx);
    uint64_t pos = coff, end = coff + n, base = idx << s->chunk_shift;
    bool source_data = store_source_has_chunk (s, idx);

    while (pos < end) {
      uint64_t next = MIN ((pos | (STORE_PAGE - 1)) + 1, end);
      uint64_t at = base + (pos & ~(STORE_PAGE - 1));
      enum store_class cls = c ? store_page_class (c, pos >> STORE_PAGE_SHIFT)
                             : s->source ? STORE_SOURCE : STORE_ZERO;

      if (cls == STORE_DATA)
        ;
      else if (cls == STORE_SOURCE && source_data &&
               next - pos < MIN (STORE_PAGE, s->size - at))
        need++;
      else if (!store_is_zero (in + done + (pos - coff), next - pos))
        need++;
      pos = next;
    }
  }
  return need;
}

/* Create the missing chunks a write will change: those that get
 * non-zero data and, in a clone, those where a source may show through.
 * -1 with errno if one cannot be created.
 */
static int
store_write_grow (struct store *s, const unsigned char *in,
                  uint64_t count, uint64_t offset)
{
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    if (chunkdir_get (&s->dir, idx) == NULL &&
        (!store_is_zero (in + done, n) || store_source_has_chunk (s, idx)) &&
        store_chunk_create (s, idx) == NULL)
      return -1;
  }
  return 0;
}

/* Reserve bytes against the limit; -1/ENOSPC if the cap would be passed. */
static int
store_reserve (struct store *s, uint64_t bytes)
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
  return 0;
}

/* Bring the counters in line: bytes reserved, pages newly set and
 * released, and the change in bytes held, never more than reserved (I5).
 */
static void
store_settle (struct store *s, uint64_t reserved, uint64_t gained,
              uint64_t released, int64_t held)
{
  /* Overwrites change nothing: leave the shared counters' cache lines
   * alone, so that threads writing different places do not contend.
   */
  if (gained != released)
    atomic_fetch_add_explicit (&s->pages, gained - released,
                               memory_order_relaxed);
  if (held != 0)
    atomic_fetch_add_explicit (&s->held, (uint64_t) held,
                               memory_order_relaxed);
  if (s->limit != NULL && (int64_t) reserved != held)
    atomic_fetch_sub_explicit (&s->limit->used, reserved - (uint64_t) held,
                               memory_order_relaxed);
}

/* store_settle for raw pages: reserved, gained and released in pages. */
static void
store_settle_pages (struct store *s, uint64_t reserved, uint64_t gained,
                    uint64_t released)
{
  store_settle (s, reserved * STORE_PAGE, gained, released,
                ((int64_t) gained - (int64_t) released) * (int64_t) STORE_PAGE);
}

/* Make locked page p of clone chunk c, which shows its source, its own:
 * fill it from the source, then apply edit (bytes [from, to) of the page
 * become src, or zeroes if src is NULL).  The page keeps data only if
 * the result is not all zero; returns 1 if it does (C3).
 */
static uint64_t
store_detach_page (struct store *s, struct chunk *c, uint64_t base,
                   uint64_t p, uint64_t from, uint64_t to,
                   const unsigned char *src)
{
  unsigned char *page = c->data + (p << STORE_PAGE_SHIFT);
  uint64_t off = base + (p << STORE_PAGE_SHIFT);
  uint64_t len = MIN (STORE_PAGE, s->size - off);
  uint64_t gained = 0;

  store_page_pin (s, c, p);
  if (from > 0 || to < len)
    store_read (s->source, page, len, off);
  if (src)
    memcpy (page + from, src, to - from);
  else
    memset (page + from, 0, to - from);
  if (store_is_zero (page, len))
    arena_release (page, STORE_PAGE, s->mlock);
  else
    gained = store_page_mark (c, p);
  store_hide_pages (c, p, p + 1);
  return gained;
}

/* Copy the n bytes at in into chunk c at coff, whose pages the caller
 * has locked; base is the chunk's offset in the device.  Returns pages
 * newly set.
 */
static uint64_t
store_write_chunk (struct store *s, struct chunk *c, uint64_t base,
                   const unsigned char *in, uint64_t coff, uint64_t n)
{
  uint64_t pos = coff, end = coff + n, gained = 0;

  while (pos < end) {
    enum store_class cls;
    uint64_t run = store_run (c, pos, end, &cls);

    if (cls == STORE_DATA) {
      memcpy (c->data + pos, in + (pos - coff), run - pos);
      pos = run;
      continue;
    }
    /* Other pages one at a time: zero data stays a hole. */
    while (pos < run) {
      uint64_t next = MIN ((pos | (STORE_PAGE - 1)) + 1, run);
      uint64_t p = pos >> STORE_PAGE_SHIFT, at = p << STORE_PAGE_SHIFT;

      if (cls == STORE_SOURCE)
        gained += store_detach_page (s, c, base, p, pos - at, next - at,
                                     in + (pos - coff));
      else if (!store_is_zero (in + (pos - coff), next - pos)) {
        store_page_pin (s, c, p);
        memcpy (c->data + pos, in + (pos - coff), next - pos);
        gained += store_page_mark (c, p);
      }
      pos = next;
    }
  }
  return gained;
}

/* Lock (lock true) or unlock the pages of a write in the chunks that
 * exist (whole units in a compressed store), in ascending order.  Locking records each piece's chunk in
 * chunks[] (NULL where it is missing: such a piece is all zeroes over
 * zeroes, and the write takes effect there before any later creation of
 * the chunk); unlocking and store_write_count then use the same chunks.
 */
static void
store_write_lock (struct store *s, uint64_t count, uint64_t offset,
                  struct chunk **chunks, bool lock)
{
  uint64_t first = offset >> s->chunk_shift;

  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    struct chunk *c;
    uint64_t p, q;

    if (lock)
      chunks[idx - first] = chunkdir_get (&s->dir, idx);
    if ((c = chunks[idx - first]) == NULL)
      continue;
    if (s->codec != CODEC_NONE)
      store_unit_span (coff, n, &p, &q);         /* whole units (Z1) */
    else
      store_page_span (coff, n, &p, &q);
    if (lock)
      store_lock_pages (c, p, q);
    else
      store_unlock_pages (c, p, q);
  }
}

/* Chunk pointers a write keeps on the stack; more are allocated. */
#define STORE_STACK_PIECES 16

/* Write count bytes from buf at offset; ENOSPC at the cap changes nothing. */
int
store_write (struct store *s, const void *buf, uint64_t count, uint64_t offset)
{
  const unsigned char *in = buf;
  struct chunk *stack[STORE_STACK_PIECES], **chunks = stack;
  uint64_t need, exact, gained = 0, pieces, first;
  int r = -1;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  if (count == 0)
    return 0;
  /* Reserve first, so that a refused write leaves no trace, not even an
   * empty chunk; then create chunks (none are missing for data when no
   * page is new); only then lock, count again and copy (I5).
   */
  if (s->codec != CODEC_NONE)
    return store_write_units (s, in, count, offset);
  need = store_write_count (s, in, count, offset, NULL);
  if (store_reserve (s, need * STORE_PAGE) == -1)
    return -1;
  if ((need > 0 || s->source) && store_write_grow (s, in, count, offset) == -1)
    goto out;
  first = offset >> s->chunk_shift;
  pieces = ((offset + count - 1) >> s->chunk_shift) - first + 1;
  if (pieces > STORE_STACK_PIECES &&
      (chunks = malloc (pieces * sizeof *chunks)) == NULL)
    goto out;
  store_write_lock (s, count, offset, chunks, true);
  exact = store_write_count (s, in, count, offset, chunks);
  if (exact <= need || store_reserve (s, (exact - need) * STORE_PAGE) == 0) {
    if (exact > need)
      need = exact;
    FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
      struct chunk *c = chunks[idx - first];

      if (c != NULL)
        gained += store_write_chunk (s, c, idx << s->chunk_shift,
                                     in + done, coff, n);
    }
    r = 0;
  }
  store_write_lock (s, count, offset, chunks, false);
  if (chunks != stack)
    free (chunks);
 out:
  store_settle_pages (s, need, gained, 0);
  return r;
}

/* Fill one chunk piece [coff, coff+n) of chunk c (at base) of a raw
 * store that is not a clone, straight into its pages: lock them, let
 * the kernel fault them in at once, have fn write the data, then keep
 * the pages that are not all zero and give the rest back.  The caller
 * reserved n bytes' worth of pages.  Counts pages gained; -1 with errno
 * if fn fails (the pages it filled are given back or keep old data).
 */
static int
store_fill_chunk (struct store *s, struct chunk *c, uint64_t base,
                  uint64_t coff, uint64_t n, store_fill_fn fn, void *opaque,
                  uint64_t *gained)
{
  uint64_t p, q, zero_start = 0, zero_end = 0;
  int r;

  store_page_span (coff, n, &p, &q);
  store_lock_pages (c, p, q);
#ifdef MADV_POPULATE_WRITE
  madvise (c->data + coff, n, MADV_POPULATE_WRITE);   /* a hint */
#endif
  r = fn (opaque, c->data + coff, n, base + coff);
  for (; p < q; p++) {
    unsigned char *page = c->data + (p << STORE_PAGE_SHIFT);
    bool keep = store_page_class (c, p) == STORE_DATA;

    if (!keep && r == 0 && !store_is_zero (page, STORE_PAGE)) {
      store_page_pin (s, c, p);
      *gained += store_page_mark (c, p);
      keep = true;
    }
    if (!keep && zero_end == p)       /* grow the run to give back */
      zero_end = p + 1;
    else if (!keep) {
      if (zero_end > zero_start)
        arena_release (c->data + (zero_start << STORE_PAGE_SHIFT),
                       (zero_end - zero_start) << STORE_PAGE_SHIFT, s->mlock);
      zero_start = p;
      zero_end = p + 1;
    }
  }
  if (zero_end > zero_start)
    arena_release (c->data + (zero_start << STORE_PAGE_SHIFT),
                   (zero_end - zero_start) << STORE_PAGE_SHIFT, s->mlock);
  store_unlock_pages (c, coff >> STORE_PAGE_SHIFT, q);
  return r;
}

/* Bytes store_fill passes through a buffer where it cannot fill pages
 * in place.
 */
#define STORE_FILL_BOUNCE ((uint64_t) 8 << 20)

/* Write [offset, offset+count) with what fn writes into the buffer it
 * is given (fn (opaque, buf, len, offset): 0, or -1 with errno): for
 * loading images.  In a raw store that is not a clone, fn writes
 * straight into the store's pages, a chunk piece at a time, which saves
 * a copy and faults pages in at once; offset and count must then be
 * page-aligned (the end may be the device's).  Otherwise, or where the
 * cap leaves no room for a whole piece, it goes through a buffer and
 * store_write, which keeps every rule of a write.  Pages left all zero
 * stay holes.  0, or -1 with errno.
 */
int
store_fill (struct store *s, uint64_t count, uint64_t offset,
            store_fill_fn fn, void *opaque)
{
  bool direct = s->codec == CODEC_NONE && s->source == NULL &&
                offset % STORE_PAGE == 0 &&
                (count % STORE_PAGE == 0 || offset + count == s->size);
  unsigned char *bounce = NULL;
  int r = 0;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    uint64_t pages = (n + STORE_PAGE - 1) >> STORE_PAGE_SHIFT, gained = 0;
    struct chunk *c;

    if (direct && store_reserve (s, pages * STORE_PAGE) == 0) {
      if ((c = store_chunk_create (s, idx)) == NULL) {
        store_settle_pages (s, pages, 0, 0);
        r = -1;
        break;
      }
      r = store_fill_chunk (s, c, idx << s->chunk_shift, coff, n,
                            fn, opaque, &gained);
      store_settle_pages (s, pages, gained, 0);
      if (r == -1)
        break;
      continue;
    }
    /* Through a buffer, in pieces of STORE_FILL_BOUNCE at most. */
    if (bounce == NULL &&
        (bounce = malloc (MIN (STORE_FILL_BOUNCE, count))) == NULL) {
      r = -1;
      break;
    }
    for (uint64_t at = 0; at < n && r == 0; at += STORE_FILL_BOUNCE) {
      uint64_t len = MIN (STORE_FILL_BOUNCE, n - at);

      r = fn (opaque, bounce, len, offset + done + at);
      if (r == 0)
        r = store_write (s, bounce, len, offset + done + at);
    }
    if (r == -1)
      break;
  }
  free (bounce);
  return r;
}

/* Zero [from, to) of chunk c, which lies inside one or two locked
 * pages; base is the chunk's offset in the device.  Returns pages newly
 * set (a clone's page that shows its source and keeps some of it).
 */
static uint64_t
store_zero_partial (struct store *s, struct chunk *c, uint64_t base,
                    uint64_t from, uint64_t to)
{
  uint64_t gained = 0;

  while (from < to) {
    uint64_t next = MIN ((from | (STORE_PAGE - 1)) + 1, to);
    uint64_t p = from >> STORE_PAGE_SHIFT, at = p << STORE_PAGE_SHIFT;

    switch (store_page_class (c, p)) {
    case STORE_DATA:
      memset (c->data + from, 0, next - from);
      break;
    case STORE_SOURCE:
      gained += store_detach_page (s, c, base, p, from - at, next - at, NULL);
      break;
    default:
      break;
    }
    from = next;
  }
  return gained;
}

/* Clear locked pages [p, q) of chunk c of s and give them back;
 * returns pages released.
 */
static uint64_t
store_release_pages (struct store *s, struct chunk *c, uint64_t p, uint64_t q)
{
  uint64_t released = 0, run_start = 0, run_end = 0;

  if (c->hide)
    store_hide_pages (c, p, q);
  while (p < q) {
    uint64_t w = p / 64, mask = store_word_mask (p, q, &p), old;

    if ((atomic_load_explicit (&c->map[w], memory_order_relaxed) & mask) == 0)
      continue;
    old = atomic_fetch_and_explicit (&c->map[w], ~mask, memory_order_acq_rel)
          & mask;
    if (old == 0)
      continue;
    released += __builtin_popcountll (old);
    /* Pages between the first and last released bit were clear, hence
     * zero already; handing them back too costs nothing (I4).
     */
    uint64_t first = w * 64 + __builtin_ctzll (old);
    uint64_t last = w * 64 + 64 - __builtin_clzll (old);
    if (first != run_end) {
      if (run_end > run_start)
        arena_release (c->data + (run_start << STORE_PAGE_SHIFT),
                       (run_end - run_start) << STORE_PAGE_SHIFT, s->mlock);
      run_start = first;
    }
    run_end = last;
  }
  if (run_end > run_start)
    arena_release (c->data + (run_start << STORE_PAGE_SHIFT),
                   (run_end - run_start) << STORE_PAGE_SHIFT, s->mlock);
  return released;
}

/* Zero [coff, coff+n) of chunk c under its pages' locks; base is the
 * chunk's offset in the device.  Counts pages released and newly set.
 */
static void
store_zero_chunk (struct store *s, struct chunk *c, uint64_t base,
                  uint64_t coff, uint64_t n,
                  uint64_t *released, uint64_t *gained)
{
  uint64_t end = coff + n, p, q;
  uint64_t a = (coff + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
  uint64_t b = (base + end == s->size ? end + STORE_PAGE - 1 : end)
               & ~(STORE_PAGE - 1);

  store_page_span (coff, n, &p, &q);
  store_lock_pages (c, p, q);
  if (a >= b)
    *gained += store_zero_partial (s, c, base, coff, end);
  else {
    *gained += store_zero_partial (s, c, base, coff, a);
    *gained += store_zero_partial (s, c, base, b, end);
    *released += store_release_pages (s, c, a >> STORE_PAGE_SHIFT,
                                      b >> STORE_PAGE_SHIFT);
  }
  store_unlock_pages (c, p, q);
}

/* Bytes a zero of [offset, offset+count) may take: in a clone, a page
 * for each partial page at either end that still shows a source that
 * may hold data there (C3);
 * in a compressed store, a unit for each partial page at either end
 * (Z2).
 */
static uint64_t
store_zero_count (struct store *s, uint64_t count, uint64_t offset)
{
  uint64_t ends[2] = { offset, offset + count }, need = 0;

  if (count == 0)
    return 0;
  if (s->codec != CODEC_NONE) {
    for (int i = 0; i < 2; i++)
      if (ends[i] % STORE_PAGE != 0 && ends[i] < s->size)
        need += codec_max_held ();
    return need;
  }
  if (s->source == NULL)
    return 0;
  for (int i = 0; i < 2; i++) {
    uint64_t at = ends[i], p = at >> STORE_PAGE_SHIFT;
    struct chunk *c = chunkdir_get (&s->dir, at >> s->chunk_shift);

    if (at % STORE_PAGE == 0 || at >= s->size ||
        (i == 1 && p == offset >> STORE_PAGE_SHIFT && need > 0))
      continue;
    if ((c == NULL ||
         store_page_class (c, p & ((1ULL << (s->chunk_shift - STORE_PAGE_SHIFT)) - 1))
         == STORE_SOURCE) &&
        store_source_has_chunk (s, at >> s->chunk_shift))
      need++;
  }
  return need * STORE_PAGE;
}

/* Make [offset, offset+count) read as zeroes, releasing whole pages.
 * Only in a clone can it need memory, and fail with ENOSPC (changing
 * nothing) or ENOMEM.
 */
int
store_zero (struct store *s, uint64_t count, uint64_t offset)
{
  uint64_t pos, end, need, released = 0, gained = 0;
  int64_t held = 0;
  int r = 0;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  need = store_zero_count (s, count, offset);
  if (store_reserve (s, need) == -1)
    return -1;
  for (pos = offset, end = offset + count; pos < end; ) {
    uint64_t idx = pos >> s->chunk_shift;
    uint64_t last = (end - 1) >> s->chunk_shift;
    uint64_t next = store_next_chunk (s, idx, last + 1);
    uint64_t coff, n;
    struct chunk *c;

    if (next != idx) {      /* skip chunks that read as zeroes */
      pos = next > last ? end : next << s->chunk_shift;
      continue;
    }
    coff = pos & ((1ULL << s->chunk_shift) - 1);
    n = MIN (end - pos, (1ULL << s->chunk_shift) - coff);
    c = chunkdir_get (&s->dir, idx);
    if (c == NULL && (c = store_chunk_create (s, idx)) == NULL) {
      r = -1;
      break;
    }
    if (s->codec != CODEC_NONE) {
      if (store_zero_units (s, c, idx << s->chunk_shift, coff, n,
                            &released, &gained, &held) == -1) {
        r = -1;
        break;
      }
    }
    else
      store_zero_chunk (s, c, idx << s->chunk_shift, coff, n,
                        &released, &gained);
    pos += n;
  }
  if (s->codec == CODEC_NONE)
    held = ((int64_t) gained - (int64_t) released) * (int64_t) STORE_PAGE;
  store_settle (s, need, gained, released, held);
  return r;
}

/* A unit's new state: its blob, pages that hold data and pages hidden. */
struct store_unit_edit {
  struct chunk *c;              /* the unit: c->unit[u] */
  uint64_t u;
  void *blob;
  uint64_t data, hide;          /* bits of the unit's pages, at p0 % 64 */
  int64_t held;                 /* change in bytes held */
};

/* Rebuild locked unit u of chunk c (at base in the device) into e: bytes
 * [from, to) of the chunk that lie in the unit become src[from...] (or
 * zeroes if src is NULL); with release, the whole pages among them are
 * released instead.  0, or -1 with errno.
 */
static int
store_unit_rebuild (struct store *s, struct chunk *c, uint64_t base,
                    uint64_t u, uint64_t from, uint64_t to,
                    const unsigned char *src, bool release,
                    struct store_unit_edit *e)
{
  unsigned char buf[CODEC_UNIT], *unit = buf;
  uint64_t p0 = u * STORE_UNIT_PAGES, h, d, us = p0 << STORE_PAGE_SHIFT;
  void *old = c->unit[u];
  bool whole = from <= us && to >= us + CODEC_UNIT;

  e->c = c;
  e->u = u;
  store_load_word (c, p0 / 64, &h, &d);
  e->data = d & ((((uint64_t) 1 << STORE_UNIT_PAGES) - 1) << (p0 % 64));
  e->hide = c->hide ? h & (((uint64_t) 1 << STORE_UNIT_PAGES) - 1)
                          << (p0 % 64) : 0;
  if (release && whole) {
    /* The whole unit goes: nothing to unpack. */
    e->data = 0;
    e->hide = c->hide ? (((uint64_t) 1 << STORE_UNIT_PAGES) - 1)
                        << (p0 % 64) : 0;
    e->blob = NULL;
    e->held = old ? - (int64_t) codec_held (old) : 0;
    return 0;
  }
  if (src && whole) {
    /* The write covers the unit: pack its data as it is.  Its all-zero
     * pages are the unit's pages without data (Z1), or data pages
     * written with zeroes, which stay data.
     */
    unit = (unsigned char *) src + (us - from);
    for (uint64_t i = 0; i < STORE_UNIT_PAGES; i++) {
      uint64_t bit = (uint64_t) 1 << ((p0 + i) % 64);

      if (!store_is_zero (unit + i * STORE_PAGE, STORE_PAGE))
        e->data |= bit;
      if (c->hide && (e->data & bit || !(d & bit)))
        e->hide |= bit;         /* data, or a source page now zero */
    }
    goto pack;
  }
  if (old == NULL)
    memset (buf, 0, sizeof buf);
  else if (codec_unpack (old, buf) == -1)
    return -1;
  for (uint64_t i = 0; i < STORE_UNIT_PAGES; i++) {
    uint64_t p = p0 + i, bit = (uint64_t) 1 << (p % 64);
    uint64_t ps = p << STORE_PAGE_SHIFT, pe = ps + STORE_PAGE;
    uint64_t a = from > ps ? from : ps, b = to < pe ? to : pe;
    unsigned char *page = buf + i * STORE_PAGE;
    enum store_class cls = (e->data & bit) ? STORE_DATA
      : (c->hide == NULL || (e->hide & bit)) ? STORE_ZERO : STORE_SOURCE;

    if (cls != STORE_DATA)
      memset (page, 0, STORE_PAGE);     /* keep Z1 even for odd blobs */
    if (a >= b)
      continue;
    if (release && a == ps && b == pe) {
      e->data &= ~bit;
      e->hide |= c->hide ? bit : 0;
      memset (page, 0, STORE_PAGE);
      continue;
    }
    if (cls == STORE_SOURCE && (a > ps || b < pe) && base + ps < s->size)
      store_read (s->source, page, MIN (STORE_PAGE, s->size - base - ps),
                  base + ps);
    if (src)
      memcpy (page + (a - ps), src + (a - from), b - a);
    else
      memset (page + (a - ps), 0, b - a);
    if (cls != STORE_DATA && !store_is_zero (page, STORE_PAGE))
      e->data |= bit;
    if (cls == STORE_SOURCE || (e->data & bit))
      e->hide |= c->hide ? bit : 0;
  }
 pack:
  e->blob = NULL;
  if (e->data != 0 && (e->blob = codec_pack (s->codec, unit)) == NULL)
    return -1;
  e->held = (int64_t) (e->blob ? codec_held (e->blob) : 0)
            - (int64_t) (old ? codec_held (old) : 0);
  return 0;
}

/* Install edit e of its locked unit; count pages gained and released.
 * Bits are set before they are cleared, hide between (C2).
 */
static void
store_unit_install (struct store_unit_edit *e,
                    uint64_t *gained, uint64_t *released)
{
  struct chunk *c = e->c;
  uint64_t u = e->u, p0 = u * STORE_UNIT_PAGES, w = p0 / 64;
  uint64_t mask = (((uint64_t) 1 << STORE_UNIT_PAGES) - 1) << (p0 % 64);
  uint64_t old = atomic_load_explicit (&c->map[w], memory_order_relaxed)
                 & mask;

  codec_free (c->unit[u]);
  c->unit[u] = e->blob;
  atomic_fetch_or_explicit (&c->map[w], e->data & ~old, memory_order_release);
  if (c->hide)
    atomic_fetch_or_explicit (&c->hide[w], e->hide, memory_order_release);
  atomic_fetch_and_explicit (&c->map[w], ~(old & ~e->data),
                             memory_order_release);
  *gained += __builtin_popcountll (e->data & ~old);
  *released += __builtin_popcountll (old & ~e->data);
}

/* Read [coff, coff+n) of chunk c (at base) of a compressed store into
 * out, a unit at a time under its locks; -1 with errno.
 */
static int
store_read_units (struct store *s, struct chunk *c, uint64_t base,
                  unsigned char *out, uint64_t coff, uint64_t n)
{
  unsigned char buf[CODEC_UNIT];
  uint64_t p, q, end = coff + n;
  int r = 0;

  store_unit_span (coff, n, &p, &q);
  for (; p < q && r == 0; p += STORE_UNIT_PAGES) {
    uint64_t us = p << STORE_PAGE_SHIFT;
    uint64_t a = MAX (coff, us), b = MIN (end, us + CODEC_UNIT);

    store_lock_pages (c, p, p + STORE_UNIT_PAGES);
    if (a == us && b == us + CODEC_UNIT &&
        ((store_class_bits (c, p / 64, STORE_DATA) >> (p % 64))
         & ((1u << STORE_UNIT_PAGES) - 1)) == (1u << STORE_UNIT_PAGES) - 1) {
      /* The whole unit, all data: straight into out. */
      r = codec_unpack (c->unit[p / STORE_UNIT_PAGES], out + (a - coff));
      a = b;
    }
    else if (c->unit[p / STORE_UNIT_PAGES])
      r = codec_unpack (c->unit[p / STORE_UNIT_PAGES], buf);
    while (a < b && r == 0) {
      enum store_class cls;
      uint64_t run = store_run (c, a, b, &cls);
      unsigned char *to = out + (a - coff);

      if (cls == STORE_DATA)
        memcpy (to, buf + (a - us), run - a);
      else if (cls == STORE_ZERO)
        memset (to, 0, run - a);
      else
        store_read_source (s, to, run - a, base + a);
      a = run;
    }
    store_unlock_pages (c, p, p + STORE_UNIT_PAGES);
  }
  return r;
}

/* store_write for a compressed store (Z2). */
static int
store_write_units (struct store *s, const unsigned char *in,
                   uint64_t count, uint64_t offset)
{
  struct chunk *stack[STORE_STACK_PIECES], **chunks = stack;
  struct store_unit_edit *edits;
  uint64_t first = offset >> s->chunk_shift, units = 0, k = 0;
  uint64_t pieces = ((offset + count - 1) >> s->chunk_shift) - first + 1;
  uint64_t gained = 0, released = 0, reserved = 0;
  int64_t held = 0;
  int r = -1;

  if (store_write_grow (s, in, count, offset) == -1)
    return -1;
  if (pieces > STORE_STACK_PIECES &&
      (chunks = malloc (pieces * sizeof *chunks)) == NULL)
    return -1;
  /* Every chunk piece spans whole units: at most two more than its
   * bytes make up.
   */
  units = count / CODEC_UNIT + 2 * pieces;
  if ((edits = malloc (units * sizeof *edits)) == NULL)
    goto out_chunks;
  store_write_lock (s, count, offset, chunks, true);
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    struct chunk *c = chunks[idx - first];
    uint64_t p, q;

    if (c == NULL)
      continue;
    store_unit_span (coff, n, &p, &q);
    for (; p < q; p += STORE_UNIT_PAGES, k++) {
      if (store_unit_rebuild (s, c, idx << s->chunk_shift,
                              p / STORE_UNIT_PAGES, coff, coff + n,
                              in + done, false, &edits[k]) == -1)
        goto out_free;
      held += edits[k].held;
    }
  }
  if (held > 0 && store_reserve (s, held) == -1)
    goto out_free;
  reserved = held > 0 ? held : 0;
  for (uint64_t i = 0; i < k; i++)
    store_unit_install (&edits[i], &gained, &released);
  store_settle (s, reserved, gained, released, held);
  r = 0;
  k = 0;                        /* nothing left to free */
 out_free:
  while (k-- > 0)
    codec_free (edits[k].blob);
  store_write_lock (s, count, offset, chunks, false);
  free (edits);
 out_chunks:
  if (chunks != stack)
    free (chunks);
  return r;
}

/* Zero [coff, coff+n) of chunk c (at base) of a compressed store, whose
 * reservation the caller made (Z2); counts pages released and gained and
 * the change in bytes held.  -1 with errno (nothing of the failing unit
 * changes).
 */
static int
store_zero_units (struct store *s, struct chunk *c, uint64_t base,
                  uint64_t coff, uint64_t n, uint64_t *released,
                  uint64_t *gained, int64_t *held)
{
  uint64_t p, q, end = coff + n;
  int r = 0;

  /* The device's last partial page goes whole when zeroed to the end. */
  if (base + end == s->size)
    end = (end + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
  store_unit_span (coff, n, &p, &q);
  store_lock_pages (c, p, q);
  for (uint64_t u = p / STORE_UNIT_PAGES; u < q / STORE_UNIT_PAGES; u++) {
    uint64_t us = u * CODEC_UNIT;
    bool partial = (coff > us && coff < us + CODEC_UNIT &&
                    coff % STORE_PAGE != 0) ||
                   (end > us && end < us + CODEC_UNIT && end % STORE_PAGE != 0);
    struct store_unit_edit e;

    if ((r = store_unit_rebuild (s, c, base, u, coff, end, NULL, true, &e))
        == -1)
      break;
    if (!partial && e.held > 0 && c->unit[u] != NULL) {
      /* Releases only: keep the old, smaller blob (Z2). */
      codec_free (e.blob);
      e.blob = c->unit[u];
      c->unit[u] = NULL;
      e.held = 0;
    }
    store_unit_install (&e, gained, released);
    *held += e.held;
  }
  store_unlock_pages (c, p, q);
  return r;
}

/* Extents waiting to be merged with their neighbours. */
struct store_extent_acc {
  store_extent_fn fn;
  void *opaque;
  uint64_t offset, length;
  bool hole;
};

/* Add an extent, merging it with the pending one; the fn's result. */
static int
store_extent_add (struct store_extent_acc *acc, uint64_t offset,
                  uint64_t length, bool hole)
{
  int r = 0;

  if (acc->length > 0 && acc->hole == hole) {
    acc->length += length;
    return 0;
  }
  if (acc->length > 0)
    r = acc->fn (acc->opaque, acc->offset, acc->length, acc->hole);
  acc->offset = offset;
  acc->length = length;
  acc->hole = hole;
  return r;
}

/* Add the extents of [offset, offset+count) of s to acc; a clone's
 * pages that show their source add the source's extents.
 */
static int
store_extents_add (struct store *s, uint64_t count, uint64_t offset,
                   struct store_extent_acc *acc)
{
  uint64_t pos, end;
  int r = 0;

  for (pos = offset, end = offset + count; pos < end && r == 0; ) {
    uint64_t idx = pos >> s->chunk_shift;
    uint64_t last = (end - 1) >> s->chunk_shift;
    uint64_t next = chunkdir_next (&s->dir, idx, last + 1);
    uint64_t base, cend;
    struct chunk *c;

    if (next != idx) {
      uint64_t hole_end = next > last ? end : next << s->chunk_shift;

      r = s->source ? store_extents_add (s->source, hole_end - pos, pos, acc)
                    : store_extent_add (acc, pos, hole_end - pos, true);
      pos = hole_end;
      continue;
    }
    c = chunkdir_get (&s->dir, idx);
    base = idx << s->chunk_shift;
    cend = MIN (end - base, 1ULL << s->chunk_shift);
    while (pos - base < cend && r == 0) {
      enum store_class cls;
      uint64_t run = store_run (c, pos - base, cend, &cls);

      if (cls == STORE_SOURCE)
        r = store_extents_add (s->source, base + run - pos, pos, acc);
      else
        r = store_extent_add (acc, pos, base + run - pos, cls == STORE_ZERO);
      pos = base + run;
    }
  }
  return r;
}

/* Report [offset, offset+count) as a series of data and hole extents. */
int
store_extents (struct store *s, uint64_t count, uint64_t offset,
               store_extent_fn fn, void *opaque)
{
  struct store_extent_acc acc = { .fn = fn, .opaque = opaque };
  int r;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  r = store_extents_add (s, count, offset, &acc);
  if (r == 0 && acc.length > 0)
    r = fn (opaque, acc.offset, acc.length, acc.hole);
  return r < 0 ? -1 : 0;
}
