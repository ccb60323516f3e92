/* memblock: sparse chunked in-memory block store (no nbdkit here).
 *
 * A device of `size` bytes is cut into chunks of 2^chunk_shift bytes.
 * The chunk directory (chunkdir.c) maps a chunk index to a struct
 * chunk, created on the first request that must change it.  Each chunk
 * carries one bit per page in a few bitmaps (pagemap.h: what a page
 * reads as; pagelock.c: who may change it), and its data as the store's
 * backend keeps it: raw pages in an arena slot (raw.c), or compressed
 * units (units.c), behind one table of operations (store-int.h) chosen
 * once by store_set_codec.  A clone reads through its source where it
 * has not written (clone.c).  Accounting against a shared cap is
 * acct.c's; loading images store_fill (fill.c); block status
 * store_extents (extents.c).
 *
 * A write, from nbdkit to the page:
 *   store_write: check the range, reserve what ops->write_need says
 *     (acct.c), create the chunks that will get data (store_grow), lock
 *     the request's pages (pagelock.c), ops->write, unlock, settle;
 *   raw_write (raw.c): count again under the locks, reserve the rest,
 *     then copy each piece, one page transition at a time;
 *   or units_write (units.c): pack every unit touched into the chunk's
 *     pool (pool.c), reserve the growth, install; after the unlock,
 *     ops->tidy compacts the pools that want it.
 *
 * There is no global lock on the data path, and raw readers take no
 * lock at all.  The invariants, each at the top of the file that keeps
 * it:
 *   I1  chunk creation against zero and readers         here
 *   I2  a map bit means data, changed under page locks  pagelock.c
 *   I3  a raw reader against a release                  raw.c
 *   I4  a release run spanning clear pages              raw.c
 *   I5  the counters and the cap under ENOSPC           acct.c
 *   I6  chunk headers count against the cap too         acct.c
 *   I7  speculative load reservations, retried writes   acct.c
 *   C1-C3  clones: classes, orderings, reservations     clone.c
 *   Z1-Z2  compressed units: blobs, reservations        units.c
 *   P1-P2  blob pools: who may move a blob, the bound   pool.c
 *   M1  locked memory follows data pages                raw.c
 *   R1  who holds a store, and when it goes             here
 *   L1-L2  snapshot layers: freezing, folding           layer.c
 *   W1-W3  a volatile cache's spare pages               spare.c
 * Requests that overlap in flight land in one of the orders NBD allows:
 * each page ends up as some order of the requests that touched it left
 * it, and stays so.
 *
 *   I1  Chunks, once created, stay in the directory until store_destroy,
 *       so a reader never follows a pointer to freed memory.  Creation
 *       is serialised by grow_lock and published with a release store;
 *       a new chunk has every bit clear, so a zero or a read that finds
 *       the chunk missing and one that finds it empty agree.
 *   R1  A store is freed when its last holder lets go (store_destroy):
 *       whoever made it, and each clone whose source it is (a clone
 *       holds its source from store_create_clone until it is freed or
 *       store_set_source moves it).  So a source outlives its clones,
 *       whatever order their devices go in, and its memory stays
 *       counted until the last store reading it has gone.
 */

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "store-int.h"

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
  atomic_init (&s->refs, 1);
  s->size = size;
  s->chunk_shift = chunk_shift;
  s->map_words = ((1ULL << (chunk_shift - STORE_PAGE_SHIFT)) + 63) / 64;
  s->ops = &raw_ops;
  s->limit = limit;
  if (chunkdir_init (&s->dir, nchunks) == -1) {
    free (s);
    return NULL;
  }
  arena_init (&s->arena, s->ops->slot_bytes (s), nchunks);
  pthread_mutex_init (&s->grow_lock, NULL);
  return s;
}

/* Create a clone of source: O(1), it holds nothing until written, and
 * it holds source (R1).
 */
struct store *
store_create_clone (struct store *source, struct store_limit *limit)
{
  struct store *s = store_create (source->size, source->chunk_shift, limit);

  if (s != NULL)
    s->source = store_ref (source);
  return s;
}

/* Take one more hold on s (R1); returns s. */
struct store *
store_ref (struct store *s)
{
  atomic_fetch_add (&s->refs, 1);
  return s;
}

/* How many hold s (R1). */
unsigned
store_refs (const struct store *s)
{
  return atomic_load (&s->refs);
}

/* The store a clone reads through, or NULL. */
struct store *
store_source (const struct store *s)
{
  return s->source;
}

/* chunkdir_free callback: free one chunk and what its backend gave it. */
static void
store_free_chunk (void *leaf, void *opaque)
{
  const struct store *s = opaque;

  s->ops->chunk_free (s, leaf);
  free (leaf);
}

/* Let go of s (R1): when no one holds it any more, free it, give its
 * memory and its share of the limit back, and let go of its source.
 */
void
store_destroy (struct store *s)
{
  while (s != NULL && atomic_fetch_sub (&s->refs, 1) == 1) {
    struct store *source = s->source;

    if (s->limit)
      atomic_fetch_sub (&s->limit->used,
                        atomic_load (&s->held) + atomic_load (&s->meta));
    chunkdir_free (&s->dir, store_free_chunk, s);
    arena_free (&s->arena);
    pthread_mutex_destroy (&s->grow_lock);
    free (s);
    s = source;
  }
}

/* What store_forget_detach took out of a store: its chunks and their
 * memory, still counted against the limit until store_husk_free.
 */
struct store_husk {
  struct store *s;              /* held, for its backend's chunk_free */
  struct chunkdir dir;
  struct arena arena;
  uint64_t bytes;               /* held + meta, for the limit */
};

/* Take every page s holds itself out of it in O(1), so that it reads
 * as its source again (a volatile layer after a flush or a power cut);
 * the pages are freed by store_husk_free, which may run later, outside
 * the gate.  No request may be inside s: its device's gate is closed.
 * NULL with errno (ENOMEM) and s unchanged.
 */
struct store_husk *
store_forget_detach (struct store *s)
{
  struct store_husk *h = malloc (sizeof *h);

  if (h == NULL)
    return NULL;
  if (chunkdir_init (&h->dir, s->dir.nchunks) == -1) {
    free (h);
    return NULL;
  }
  /* Swap: the husk takes the full directory and arena, s the empty. */
  struct chunkdir fresh = h->dir;

  h->dir = s->dir;
  h->arena = s->arena;
  h->bytes = atomic_load (&s->held) + atomic_load (&s->meta);
  h->s = store_ref (s);
  s->dir = fresh;
  arena_init (&s->arena, s->ops->slot_bytes (s), fresh.nchunks);
  atomic_store (&s->data, 0);
  atomic_store (&s->held, 0);
  atomic_store (&s->meta, 0);
  atomic_store (&s->chunks, 0);
  atomic_store (&s->spare, 0);  /* the husk has them (W2 in spare.c) */
  return h;
}

/* Free what store_forget_detach took, and give it back to the limit. */
void
store_husk_free (struct store_husk *h)
{
  if (h == NULL)
    return;
  chunkdir_free (&h->dir, store_free_chunk, h->s);
  arena_free (&h->arena);
  if (h->s->limit)
    atomic_fetch_sub (&h->s->limit->used, h->bytes);
  store_destroy (h->s);
  free (h);
}

/* Drop every page s holds itself at once (store_forget_detach, then
 * store_husk_free).  0, or -1 with errno and s unchanged.
 */
int
store_forget (struct store *s)
{
  struct store_husk *h = store_forget_detach (s);

  if (h == NULL)
    return -1;
  store_husk_free (h);
  return 0;
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
  return atomic_load_explicit (&s->data, memory_order_relaxed);
}

/* Bytes the store's chunks take beside their data: headers, bitmaps,
 * tables and directory nodes (I6).
 */
uint64_t
store_metadata (const struct store *s)
{
  return atomic_load_explicit (&s->meta, memory_order_relaxed);
}

/* Keep the store's data compressed with codec c, choosing the backend:
 * only before the first write, and with chunks of at least a unit.
 * -1/EINVAL otherwise.
 */
int
store_set_codec (struct store *s, enum codec c)
{
  if ((c != CODEC_NONE && ((uint64_t) 1 << s->chunk_shift) < CODEC_UNIT) ||
      (c != CODEC_NONE && s->mlock) || store_chunks (s) > 0) {
    errno = EINVAL;
    return -1;
  }
  s->codec = c;
  s->ops = c == CODEC_NONE ? &raw_ops : &units_ops;
  arena_init (&s->arena, s->ops->slot_bytes (s), s->dir.nchunks);
  return 0;
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
int
store_check_range (const struct store *s, uint64_t count, uint64_t offset)
{
  if (count > s->size || offset > s->size - count) {
    errno = EINVAL;
    return -1;
  }
  return 0;
}

/* The chunk at idx, created if it is missing (I1) and charged to t
 * (I6); NULL with errno (ENOSPC at the cap) on failure.
 */
struct chunk *
store_chunk_create (struct store *s, uint64_t idx, struct tally *t)
{
  struct chunk *c = chunkdir_get (&s->dir, idx);
  uint64_t cost;
  int err = 0;

  if (c != NULL)
    return c;
  pthread_mutex_lock (&s->grow_lock);
  c = chunkdir_get (&s->dir, idx);
  if (c == NULL &&
      acct_meta (s, t, cost = acct_chunk_cost (s, idx, UINT64_MAX)) == -1)
    err = errno;
  else if (c == NULL) {
    c = calloc (1, store_header_bytes (s));
    if (c == NULL) {
      err = errno;
      t->meta -= cost;
    }
    else {
      c->lock = c->map + s->map_words;
      if (s->source)
        c->hide = c->lock + s->map_words;
      if (s->ops->chunk_init (s, c) == -1 ||
          chunkdir_set (&s->dir, idx, c) == -1) {
        /* An arena slot lost here is untouched address space. */
        err = errno;
        t->meta -= cost;
        s->ops->chunk_free (s, c);
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

/* Whether a write of the n bytes at in into chunk idx must create it:
 * it is missing, and gets non-zero data or, in a clone, may show a
 * source there.
 */
bool
store_must_grow (const struct store *s, uint64_t idx,
                 const unsigned char *in, uint64_t n)
{
  return chunkdir_get (&s->dir, idx) == NULL &&
         (!store_is_zero (in, n) || clone_source_has_chunk (s, idx));
}

/* Create the missing chunks a write will change, from what it prepaid;
 * -1 with errno if one cannot be created.
 */
static int
store_grow (struct store *s, const unsigned char *in,
            uint64_t count, uint64_t offset, struct tally *t)
{
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    if (store_must_grow (s, idx, in + done, n) &&
        store_chunk_create (s, idx, t) == NULL)
      return -1;
  }
  return 0;
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

    if (c == NULL)
      clone_read_source (s, out + done, n, offset + done);
    else if (s->ops->read (s, c, idx << s->chunk_shift, out + done,
                           coff, n) == -1)
      return -1;
  }
  return 0;
}

/* Write count bytes from buf at offset; ENOSPC at the cap changes
 * nothing.
 */
int
store_write (struct store *s, const void *buf, uint64_t count, uint64_t offset)
{
  const unsigned char *in = buf;
  struct tally t = { 0 };
  struct store_req rq;
  uint64_t create = 0;
  int r = -1;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  if (count == 0)
    return 0;
  /* Reserve first, so that a refused write leaves no trace, not even an
   * empty chunk; then create chunks; only then lock and write (I5, I6).
   */
  rq.need = s->ops->write_need (s, in, count, offset, &create);
  if (acct_reserve (s, &t, rq.need) == -1)
    return -1;
  if ((create == 0 || (acct_prepay (s, &t, create) == 0 &&
                       store_grow (s, in, count, offset, &t) == 0)) &&
      pagelock_req_lock (s, &rq, count, offset) == 0) {
    r = s->ops->write (s, &rq, in, &t);
    pagelock_req_unlock (s, &rq);
    s->ops->tidy (s, &rq);      /* keeps errno */
    store_req_free (&rq);
  }
  acct_settle (s, &t);
  return r;
}

/* Zero [offset, offset+count) (in range), creating the chunks a clone
 * needs to hide its source's; with advisory (a trim), chunks the cap
 * leaves no room for are skipped instead.
 */
static int
store_zero_range (struct store *s, uint64_t count, uint64_t offset,
                  bool advisory)
{
  uint64_t pos = offset, end = offset + count;
  struct tally t = { 0 };
  bool create = true;
  int r = 0;

  if (acct_reserve (s, &t, s->ops->zero_need (s, count, offset)) == -1)
    return -1;
  if (acct_prepay (s, &t, clone_hide_cost (s, count, offset)) == -1) {
    if (!advisory) {
      acct_settle (s, &t);
      return -1;
    }
    create = false;
  }
  while (pos < end && r == 0) {
    uint64_t idx = pos >> s->chunk_shift;
    uint64_t last = (end - 1) >> s->chunk_shift;
    uint64_t next = clone_next_chunk (s, idx, last + 1);
    uint64_t coff = pos & ((1ULL << s->chunk_shift) - 1);
    uint64_t n = MIN (end - pos, (1ULL << s->chunk_shift) - coff);
    struct chunk *c;

    if (next != idx) {          /* skip chunks that read as zeroes */
      pos = next > last ? end : next << s->chunk_shift;
      continue;
    }
    if ((c = chunkdir_get (&s->dir, idx)) != NULL ||
        (create && (c = store_chunk_create (s, idx, &t)) != NULL))
      r = s->ops->zero (s, c, idx << s->chunk_shift, coff, n, &t);
    else if (create)
      r = -1;
    pos += n;
  }
  acct_settle (s, &t);
  return r;
}

/* Make [offset, offset+count) read as zeroes, releasing whole pages.
 * Only a clone or a compressed store can need memory for it, and fail
 * with ENOSPC (changing nothing) or ENOMEM.
 */
int
store_zero (struct store *s, uint64_t count, uint64_t offset)
{
  if (store_check_range (s, count, offset) == -1)
    return -1;
  return store_zero_range (s, count, offset, false);
}

/* Trim [offset, offset+count): give back its whole pages (the device's
 * last partial page counts as whole) and leave the partial pages at its
 * ends as they are.  A trim is advisory, so it needs no memory and works
 * at the cap: in a clone, a chunk the cap leaves no room to hide the
 * source with keeps showing it.  0, or -1 with errno (EINVAL, ENOMEM).
 */
int
store_trim (struct store *s, uint64_t count, uint64_t offset)
{
  uint64_t a, b;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  a = (offset + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
  b = MIN (store_whole_end (s, offset + count), s->size);
  return a < b ? store_zero_range (s, b - a, a, true) : 0;
}
