/* memblock: libFuzzer target for the store (plugin/store.c).
 *
 * The input picks a chunk size, two store sizes and a memory cap shared
 * by all stores, then a list of operations: write (random, zero or
 * mixed pages), zero (what trim and write-zeroes do), read, extents,
 * out-of-range requests, clone, and snapshot, rollback and delete
 * (with folds; see below).  A clone freezes a device (it
 * becomes a read-only source: reads and extents only from then on) and
 * adds a copy-on-write clone of it (store_create_clone), so devices form
 * trees: sibling clones of one source, and chains of up to MAX_DEPTH
 * clones.  Each device has a flat reference buffer, which a clone
 * starts as a copy of its source's, and a reference page map: a page
 * of a plain store is own (it holds data: non-zero data was written to
 * it) or a hole; a page of a clone is own, a hole (hidden: trimmed, or
 * written or zeroed to all zeroes) or shows its source (untouched).
 * The model also knows which chunks each store has created: a store
 * creates a chunk where it first stores non-zero data and a clone also
 * where it must hide a source's chunk (store.c, C3), so a write of
 * zeroes or a zero where neither the clone nor a store down its chain
 * has the chunk leaves the clone's pages showing the source (which
 * reads zeroes there).  After every operation every store must agree
 * with the reference:
 *
 *   - every read returns exactly the reference bytes;
 *   - extents cover the range exactly, alternate between data and hole,
 *     and a page is data exactly when it is own, or shows its source
 *     and the source reports it as data (down the chain); no non-zero
 *     byte lies in a hole;
 *   - store_allocated is the store's own pages, store_chunks its
 *     chunks, store_metadata what creating them cost (acct_chunk_cost,
 *     asked just before each request that creates chunks), the cap's
 *     use is the sum of both over all live stores and never above the
 *     cap;
 *   - a write or zero fails with ENOSPC exactly when the pages it may
 *     newly set and the chunks it creates do not fit under the cap, and
 *     then changes nothing.
 *     Those pages are, per page touched: not own and getting non-zero
 *     data, and in a clone also every partial write or zero of a page
 *     still showing its source where a store down the chain has the
 *     chunk (the clone reserves it before it knows whether the result
 *     is all zero);
 *   - a frozen source never changes: after each write or zero in a
 *     clone, the range is read, and the extents of the chunks it
 *     touches are checked, in the clone and every store down its chain;
 *   - out-of-range requests fail with EINVAL and change nothing;
 *   - destroying the stores, clones before their sources, gives the
 *     whole cap back.
 *
 * A page is covered whole by a request when it covers all of the
 * page's bytes inside the device (all of the device's last partial
 * page counts as whole).  A trim makes the pages it covers whole holes,
 * leaves the others as they are and never fails; in a clone it creates
 * the chunks it must hide a source's chunk with only if all of them fit
 * under the cap, and else leaves those chunks showing the source.
 *
 * Half the inputs keep every store compressed (zstd or lz4, chunks of
 * 16K at least): then store_data is the own pages, store_allocated
 * bytes; a write may fail with ENOSPC only under a cap (its growth in
 * bytes cannot be foreseen), changing no byte; a zero reserves a unit's
 * worth (POOL_MAX_HELD of codec_max_size) for each partial page at
 * either end, and fails with ENOSPC exactly when that does not fit.
 *
 * Snapshots (layer.c, as manage.c drives it): the stores are named by
 * up to MAX_HANDLES handles, devices (writable or, once cloned,
 * read-only) and snapshots, and each store has a reference count (R1),
 * checked against store_refs.  A snapshot of a device freezes its store
 * as the snapshot's and gives the device store_create_like of it; a
 * rollback gives the device store_create_like of one of its snapshots'
 * stores and lets the old one go; deleting a handle lets its store go,
 * then folds, as manage_tidy does, every layer that is no handle's
 * store and that one store alone reads through: the reference predicts
 * store_fold run by run of the child's own pages (data written, hidden
 * pages zeroed into the parent), each run refused with ENOSPC exactly
 * as that write or zero would be (the fold then fails, having changed
 * the runs before; the chain stays and is folded at a later tidy), and
 * on success puts the parent in the child's place (store_set_source, or
 * the handle's store).  A compressed store's growth cannot be foreseen,
 * so under a cap compressed layers are not folded.  At the end the
 * handles are deleted one by one, snapshots first, each folding what it
 * can, until no store and no byte of the cap is left.
 *
 * Volatile devices (volatile.c, as manage.c drives it): a writable
 * device that is no clone's source may be made volatile (vol_attach):
 * its store becomes the durable store, held by a new cache over it
 * alone (store_create_like), in which the device goes on; it is never
 * folded away as a layer nobody holds, and the device takes no
 * snapshot, rollback or clone.  Writes, zeroes and trims land in the
 * cache; with FUA (an operation bit) the same request then runs in the
 * durable store, and the cache's pages that still show it read its new
 * bytes.  A flush is store_fold of the cache (predicted as a snapshot's
 * fold), then, if it went through, store_forget_keep of a raw cache
 * (spare.c) if the spares no write took since the last flush and the
 * new ones fit in SPARE_MAX and the cap is at most half used: the pages
 * that held data become spares too (a flag per page: counted in
 * store_allocated and store_spare; every state change of a page takes
 * its spare back or gives it back), and the cache, keeping its chunks,
 * reads as the durable store;
 * otherwise store_forget_detach and store_husk_free: the cap counts the
 * pages until freed, and then the cache holds nothing.  A power cut is
 * store_fold_some with a keep of none, all, or units (512 or 4096
 * bytes) picked by a mask from the input: the reference folds the kept
 * stretches of each run as writes and zeroes refused exactly as those
 * would be, counts the bytes kept and lost as it goes, and, where the
 * fold went through, checks the rule itself: each unit the cache held
 * reads its kept or its old durable bytes; then the cache is emptied
 * whole (store_forget_detach), spares too.  Compressed layers under a
 * cap are neither flushed nor cut but with keep none (their growth
 * cannot be foreseen).
 *
 * Build: make build/fuzz/fuzz-store (clang, -fsanitize=fuzzer,address,
 * undefined).  Run: make fuzz FUZZ_SECONDS=300.  Replay a crash with
 * FUZZ_STORE_TRACE=1 build/fuzz/fuzz-store FILE to see each step.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"
#include "store-int.h"

#define PAGE STORE_PAGE
#define MAX_SIZE_A ((uint64_t) 8 << 20)   /* 2048 chunks of 4K: 2 levels */
#define MAX_SIZE_B ((uint64_t) 64 << 10)
#define MAX_LEN ((uint64_t) 256 << 10)     /* longest request */
#define HOT ((uint64_t) 128 << 10)         /* where most requests land */
#define MAX_OPS 200
#define MAX_DEVS 16                         /* live stores, layers too */
#define MAX_HANDLES 8                       /* devices and snapshots */
#define MAX_DEPTH 6                         /* clones in a chain */
#define SPARE_MAX (16 * PAGE)               /* a cache's unused spares */

#define CHECK(cond, ...)                                                \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "fuzz-store: %s:%d: check failed: %s: ",         \
               __FILE__, __LINE__, #cond);                              \
      fprintf (stderr, __VA_ARGS__);                                    \
      fprintf (stderr, "\n");                                           \
      abort ();                                                         \
    }                                                                   \
  } while (0)

/* Input reader: returns zeroes once the input runs out. */
struct input {
  const uint8_t *p;
  size_t left;
};

static uint64_t
take (struct input *in, unsigned bytes)
{
  uint64_t v = 0;

  while (bytes-- > 0) {
    v = v << 8;
    if (in->left > 0) {
      v |= *in->p++;
      in->left--;
    }
  }
  return v;
}

/* Reference state of a page. */
enum page_state {
  P_HOLE,                       /* reads zeroes, holds nothing: a hole */
  P_OWN,                        /* the store's own data, counted */
  P_SOURCE,                     /* clones: shows the source's page */
};

/* One store under test and its reference. */
struct dev {
  struct store *s;
  int id;
  uint64_t size;
  uint8_t *ref;                 /* size bytes */
  uint8_t *state;               /* one enum page_state per page */
  uint64_t npages, own;         /* own: pages in P_OWN */
  uint8_t *chunk;               /* one flag per chunk: created */
  uint8_t *spare;               /* one flag per page: a spare (spare.c) */
  uint64_t nspare;              /* flags set */
  bool retain;                  /* a raw volatile cache: keeps spares */
  uint64_t nchunks, chunks;     /* chunks: flags set */
  uint64_t meta;                /* what creating them cost */
  struct dev *source;           /* clones: the source, else NULL */
  unsigned refs;                /* holders: handles, clones (R1) */
  bool live;                    /* not yet freed */
  bool frozen;                  /* a source now: never written again */
};

/* A device or a snapshot, as manage.c sees one: a name for a store.
 * Only a writable device's store is written; a snapshot's store, or a
 * read-only device's (a clone's source), is frozen.
 */
struct handle {
  struct dev *d;
  bool writable;
  bool vol;                     /* volatile: d is its cache (see top) */
  struct handle *snapshot_of;   /* the device it is a snapshot of */
};

static struct store_limit limit;
static unsigned shift;          /* chunk shift of all the stores */
static enum codec codec;        /* codec of all the stores */
static struct dev devs[MAX_DEVS];       /* slots; live ones are stores */
static int ndevs;                       /* live stores */
static struct handle hslots[MAX_HANDLES];
static struct handle *handles[MAX_HANDLES];  /* in the order made */
static int nhandles;
static unsigned folds;                  /* folds done, for the checks */
static int trace = -1;          /* FUZZ_STORE_TRACE=1 prints each step */

#define TRACE(...)                                                      \
  do { if (trace) fprintf (stderr, __VA_ARGS__); } while (0)
static uint8_t scratch[MAX_LEN + 2 * PAGE];

/* Pages [first, last] touched by [off, off+len), len > 0. */
#define FIRST_PAGE(off) ((off) / PAGE)
#define LAST_PAGE(off, len) (((off) + (len) - 1) / PAGE)
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* The bytes [*a, *b) of page p that [off, off+len) covers. */
static void
page_piece (uint64_t p, uint64_t off, uint64_t len, uint64_t *a, uint64_t *b)
{
  *a = MAX (p * PAGE, off);
  *b = MIN ((p + 1) * PAGE, off + len);
}

/* Whether [a, b) is all of page p inside the device. */
static bool
page_whole (const struct dev *d, uint64_t p, uint64_t a, uint64_t b)
{
  return a == p * PAGE && b == MIN ((p + 1) * PAGE, d->size);
}

/* Whether len bytes at buf are all zero (as store_is_zero: once the
 * first 16 are, memcmp against the bytes 16 further does the rest).
 */
static bool
all_zero (const uint8_t *buf, uint64_t len)
{
  uint64_t head = MIN (len, 16);

  for (uint64_t i = 0; i < head; i++)
    if (buf[i])
      return false;
  return len <= 16 || memcmp (buf, buf + 16, len - 16) == 0;
}

/* Whether page p of d reads as zeroes in the reference. */
static bool
ref_page_zero (const struct dev *d, uint64_t p)
{
  return all_zero (d->ref + p * PAGE, MIN (PAGE, d->size - p * PAGE));
}

/* Set page p's state; the store took back or gave back a spare page
 * there, as each state change of the model is a page the store changed
 * under its lock (W1 in spare.c).
 */
static void
set_state (struct dev *d, uint64_t p, enum page_state st)
{
  if (d->spare[p]) {
    d->spare[p] = 0;
    d->nspare--;
  }
  d->own -= d->state[p] == P_OWN;
  d->own += st == P_OWN;
  d->state[p] = st;
}

/* Whether some store down d's chain of sources has chunk idx. */
static bool
chain_has_chunk (const struct dev *d, uint64_t idx)
{
  for (d = d->source; d != NULL; d = d->source)
    if (d->chunk[idx])
      return true;
  return false;
}

static void
chunk_create (struct dev *d, uint64_t idx)
{
  if (!d->chunk[idx]) {
    d->chunk[idx] = 1;
    d->chunks++;
  }
}

/* The chunks a request will create, with what they cost, asked of the
 * store before it runs.
 */
struct plan {
  uint64_t first, n, cost;
  uint8_t make[MAX_LEN / 4096 + 3];
};

/* Plan to create chunk idx of d if it is missing. */
static void
plan_add (struct plan *pl, struct dev *d, uint64_t idx, uint64_t *prev)
{
  if (d->chunk[idx] || pl->make[idx - pl->first])
    return;
  pl->make[idx - pl->first] = 1;
  pl->cost += acct_chunk_cost (d->s, idx, *prev);
  *prev = idx;
}

/* Create the planned chunks in the reference. */
static void
plan_apply (struct plan *pl, struct dev *d)
{
  for (uint64_t i = 0; i < pl->n; i++)
    if (pl->make[i])
      chunk_create (d, pl->first + i);
  d->meta += pl->cost;
}

/* The chunks a write of data at [off, off+len) creates: where it
 * stores non-zero data, and in a clone where a store down the chain has
 * the chunk; or, for a zero (zero true), only the latter.
 */
static void
plan_chunks (struct plan *pl, struct dev *d, const uint8_t *data,
             uint64_t off, uint64_t len, bool zero)
{
  uint64_t prev = UINT64_MAX;

  memset (pl, 0, sizeof *pl);
  if (len == 0)
    return;
  pl->first = off >> shift;
  pl->n = ((off + len - 1) >> shift) - pl->first + 1;
  for (uint64_t idx = pl->first; idx < pl->first + pl->n; idx++) {
    uint64_t a = MAX (idx << shift, off);
    uint64_t b = MIN ((idx + 1) << shift, off + len);

    if ((!zero && !all_zero (data + (a - off), b - a)) ||
        (d->source && chain_has_chunk (d, idx)))
      plan_add (pl, d, idx, &prev);
  }
}

/* Whether extents must report page p of d as data. */
static bool
page_is_data (const struct dev *d, uint64_t p)
{
  while (d->state[p] == P_SOURCE)
    d = d->source;
  return d->state[p] == P_OWN;
}

/* Check every store's counters against the reference, and the cap. */
static void
check_accounting (void)
{
  uint64_t sum = 0;

  for (int i = 0; i < MAX_DEVS; i++) {
    struct dev *d = &devs[i];

    if (!d->live)
      continue;
    CHECK (store_refs (d->s) == d->refs, "store %d: %u holders, reference "
           "%u", i, store_refs (d->s), d->refs);
    CHECK (store_source (d->s) == (d->source ? d->source->s : NULL),
           "store %d: not reading through the reference's source", i);
    CHECK (store_data (d->s) == d->own * PAGE,
           "store %d: %lu pages of data, reference %lu", i,
           (unsigned long) (store_data (d->s) / PAGE),
           (unsigned long) d->own);
    CHECK (codec != CODEC_NONE ||
           store_allocated (d->s) == (d->own + d->nspare) * PAGE,
           "store %d: allocated %lu bytes for %lu pages and %lu spares", i,
           (unsigned long) store_allocated (d->s), (unsigned long) d->own,
           (unsigned long) d->nspare);
    CHECK (store_spare (d->s) == d->nspare * PAGE, "store %d: %lu bytes of "
           "spares, reference %lu pages", i, (unsigned long) store_spare (d->s),
           (unsigned long) d->nspare);
    CHECK (store_chunks (d->s) == d->chunks,
           "store %d: %lu chunks, reference %lu", i,
           (unsigned long) store_chunks (d->s), (unsigned long) d->chunks);
    CHECK (store_metadata (d->s) == d->meta,
           "store %d: %lu bytes of chunks, reference %lu", i,
           (unsigned long) store_metadata (d->s), (unsigned long) d->meta);
    sum += store_allocated (d->s) + store_metadata (d->s);
  }
  CHECK (atomic_load (&limit.used) == sum, "cap use %lu != %lu over %d stores",
         (unsigned long) atomic_load (&limit.used), (unsigned long) sum,
         ndevs);
  CHECK (atomic_load (&limit.used) <= limit.max, "cap passed");
}

/* Recount the reference's own pages and chunks (the counters above are
 * kept as they go).
 */
static void
check_model (const struct dev *d)
{
  uint64_t own = 0, chunks = 0;

  for (uint64_t p = 0; p < d->npages; p++) {
    own += d->state[p] == P_OWN;
    CHECK (d->source || d->state[p] != P_SOURCE, "model: source page %lu "
           "in store %d", (unsigned long) p, d->id);
  }
  for (uint64_t c = 0; c < d->nchunks; c++)
    chunks += d->chunk[c];
  CHECK (own == d->own && chunks == d->chunks, "model: counters of store %d",
         d->id);
}

/* Fill buf with len bytes of a pattern chosen by kind and seed. */
static void
fill (uint8_t *buf, uint64_t off, uint64_t len, unsigned kind, uint32_t seed)
{
  uint64_t x = seed | ((uint64_t) kind << 32) | 1;

  switch (kind % 4) {
  case 0:                                       /* all zero */
    memset (buf, 0, len);
    break;
  case 1:                                       /* random */
  case 2:                                       /* random, some pages zero */
    for (uint64_t i = 0; i < len; i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      memcpy (buf + i, &x, len - i < 8 ? len - i : 8);
    }
    if (kind % 4 == 2)
      for (uint64_t p = off / PAGE; p <= (off + len) / PAGE; p++)
        if ((p + seed) % 3 == 0) {
          uint64_t a = p * PAGE > off ? p * PAGE - off : 0;
          uint64_t b = (p + 1) * PAGE - off < len ? (p + 1) * PAGE - off : len;
          if (a < b)
            memset (buf + a, 0, b - a);
        }
    break;
  default:                                      /* one byte in 509 set */
    memset (buf, 0, len);
    for (uint64_t i = seed % 509; i < len; i += 509)
      buf[i] = 1;
    break;
  }
}

static void
check_read (struct dev *d, uint64_t off, uint64_t len)
{
  CHECK (store_read (d->s, scratch, len, off) == 0, "read %lu+%lu of store "
         "%d failed", (unsigned long) off, (unsigned long) len, d->id);
  if (memcmp (scratch, d->ref + off, len) == 0)
    return;
  for (uint64_t i = 0; i < len; i++)
    CHECK (scratch[i] == d->ref[off + i],
           "read %lu+%lu of store %d: byte %lu is %#x, reference %#x",
           (unsigned long) off, (unsigned long) len, d->id,
           (unsigned long) (off + i), scratch[i], d->ref[off + i]);
}

static void check_extents (struct dev *d, uint64_t off, uint64_t len,
                           unsigned stop_after);

/* After a write or zero in d: the range reads as the reference in d and
 * in every store down its chain (a source never changes), and their
 * extents over the chunks it touched are right.
 */
static void
check_chain (struct dev *d, uint64_t off, uint64_t len)
{
  uint64_t a = off >> shift << shift;
  uint64_t b = MIN (((off + len + (1ULL << shift) - 1) >> shift) << shift,
                    d->size);

  for (; d != NULL; d = d->source) {
    check_read (d, off, len);
    if (b > a)
      check_extents (d, a, b - a, 0);
  }
}

/* The store's answer to a request that may need need bytes: ENOSPC
 * exactly when they do not fit.  Returns true if the request went
 * through.
 */
static bool
check_enospc (struct dev *d, const char *what, uint64_t off, uint64_t len,
              uint64_t need, uint64_t room, int r, int err)
{
  if (need > room) {
    CHECK (r == -1 && err == ENOSPC, "%s %lu+%lu in store %d, %lu new bytes "
           "with %lu free: result %d, errno %d", what, (unsigned long) off,
           (unsigned long) len, d->id, (unsigned long) need,
           (unsigned long) room, r, err);
    TRACE ("  ENOSPC: %lu bytes needed, %lu free\n", (unsigned long) need,
           (unsigned long) room);
    return false;               /* refused: nothing may change */
  }
  CHECK (r == 0, "%s %lu+%lu in store %d failed (errno %d) with %lu bytes "
         "free, %lu needed", what, (unsigned long) off, (unsigned long) len,
         d->id, err, (unsigned long) room, (unsigned long) need);
  return true;
}

/* A compressed store's answer to a write: its growth in bytes cannot
 * be foreseen, so it may fail with ENOSPC only under a cap, and then
 * changes no byte (it may have made the chunks it would use).  Returns
 * true if the write went through.
 */
static bool
check_enospc_packed (struct dev *d, uint64_t off, uint64_t len, int r, int err)
{
  if (r == 0)
    return true;
  CHECK (err == ENOSPC && limit.max != UINT64_MAX, "write %lu+%lu in "
         "compressed store %d failed: errno %d", (unsigned long) off,
         (unsigned long) len, d->id, err);
  TRACE ("  ENOSPC (compressed)\n");
  return false;
}

/* Pages a write of data at [off, off+len) of d may newly set: not own,
 * and its bytes in them not all zero; in a clone also a page showing
 * its source and not covered whole.
 */
static uint64_t
write_need_pages (const struct dev *d, const uint8_t *data, uint64_t off,
                  uint64_t len)
{
  uint64_t need = 0;

  for (uint64_t p = FIRST_PAGE (off); len > 0 && p <= LAST_PAGE (off, len);
       p++) {
    uint64_t a, b;
    bool nonzero;

    page_piece (p, off, len, &a, &b);
    nonzero = !all_zero (data + (a - off), b - a);
    switch (d->state[p]) {
    case P_OWN:    break;
    case P_HOLE:   need += nonzero; break;
    case P_SOURCE:
      need += nonzero || (!page_whole (d, p, a, b) &&
                          chain_has_chunk (d, (p * PAGE) >> shift));
      break;
    }
  }
  return need;
}

/* What a write of data at [off, off+len) of d that went through
 * changes in the reference: its planned chunks, bytes and pages.
 */
static void
write_apply (struct dev *d, const uint8_t *data, uint64_t off, uint64_t len,
             struct plan *pl)
{
  if (len == 0)
    return;
  plan_apply (pl, d);
  memcpy (d->ref + off, data, len);
  for (uint64_t p = FIRST_PAGE (off); p <= LAST_PAGE (off, len); p++) {
    uint64_t a, b;

    page_piece (p, off, len, &a, &b);
    if (d->source && !d->chunk[(p * PAGE) >> shift]) {
      /* Zeroes where no store has the chunk: the page still shows its
       * source, which reads zeroes there.
       */
      CHECK (d->state[p] == P_SOURCE && all_zero (d->ref + a, b - a),
             "model: page %lu of store %d without a chunk",
             (unsigned long) p, d->id);
      continue;
    }
    switch (d->state[p]) {
    case P_OWN:
      break;
    case P_HOLE:
      if (!all_zero (data + (a - off), b - a))
        set_state (d, p, P_OWN);
      break;
    case P_SOURCE:              /* copied, kept if not all zero */
      set_state (d, p, ref_page_zero (d, p) ? P_HOLE : P_OWN);
      break;
    }
  }
}

/* A write of data (kind, seed) at [off, off+len) of d, checked;
 * true if it went through.
 */
static bool
do_write (struct dev *d, uint64_t off, uint64_t len,
          unsigned kind, uint32_t seed)
{
  uint64_t need, room;
  struct plan pl;
  int r, err;

  CHECK (!d->frozen, "model: write to frozen store %d", d->id);
  fill (scratch, off, len, kind, seed);
  TRACE ("  data kind %u seed %u\n", kind % 4, seed);
  plan_chunks (&pl, d, scratch, off, len, false);
  need = write_need_pages (d, scratch, off, len);
  room = limit.max - atomic_load (&limit.used);
  errno = 0;
  r = store_write (d->s, scratch, len, off);
  err = errno;
  /* A compressed store reserves the chunks first, then its growth. */
  if (codec != CODEC_NONE && pl.cost <= room
      ? !check_enospc_packed (d, off, len, r, err)
      : !check_enospc (d, "write", off, len,
                       (codec != CODEC_NONE ? 0 : need * PAGE) + pl.cost,
                       room, r, err)) {
    if (codec != CODEC_NONE && pl.cost <= room)
      plan_apply (&pl, d);
    check_chain (d, off, len);
    return false;
  }
  write_apply (d, scratch, off, len, &pl);
  if (d->source && len > 0)
    check_chain (d, off, len);
  return true;
}

/* What a zero of [off, off+len) (len > 0) of d that went through
 * changes in the reference: pages covered whole become holes; partly
 * covered ones stay own, and those showing their source are copied,
 * and kept if not all zero.
 */
static void
zero_apply (struct dev *d, uint64_t off, uint64_t len, struct plan *pl)
{
  plan_apply (pl, d);
  memset (d->ref + off, 0, len);
  for (uint64_t p = FIRST_PAGE (off); p <= LAST_PAGE (off, len); p++) {
    uint64_t a, b;

    page_piece (p, off, len, &a, &b);
    if (d->source && !d->chunk[(p * PAGE) >> shift])
      CHECK (d->state[p] == P_SOURCE, "model: page %lu of store %d without "
             "a chunk", (unsigned long) p, d->id);
    else if (page_whole (d, p, a, b))
      set_state (d, p, P_HOLE);
    else if (d->state[p] == P_SOURCE)
      set_state (d, p, ref_page_zero (d, p) ? P_HOLE : P_OWN);
  }
}

/* Bytes a zero of [off, off+len) of a raw store d may newly set: in a
 * clone, the pages at either end that it covers in part and that still
 * show their source.
 */
static uint64_t
zero_need (const struct dev *d, uint64_t off, uint64_t len)
{
  uint64_t need = 0;

  for (uint64_t p = FIRST_PAGE (off); len > 0 && p <= LAST_PAGE (off, len);
       p = p == FIRST_PAGE (off) ? MAX (p + 1, LAST_PAGE (off, len)) : p + 1) {
    uint64_t a, b;

    page_piece (p, off, len, &a, &b);
    need += d->state[p] == P_SOURCE && !page_whole (d, p, a, b) &&
            chain_has_chunk (d, (p * PAGE) >> shift);
  }
  return need * PAGE;
}

/* A zero of [off, off+len) of d, checked; true if it went through. */
static bool
do_zero (struct dev *d, uint64_t off, uint64_t len)
{
  uint64_t need, room;
  struct plan pl;
  int r, err;

  CHECK (!d->frozen, "model: zero in frozen store %d", d->id);
  need = zero_need (d, off, len);
  /* A compressed store reserves a unit's worth for each partial page at
   * either end instead (the unit may grow when packed again).
   */
  if (codec != CODEC_NONE && len > 0)
    need = ((off % PAGE != 0) + ((off + len) % PAGE != 0 && off + len < d->size))
           * POOL_MAX_HELD (codec_max_size ());
  /* A clone creates the chunks some store down its chain has. */
  plan_chunks (&pl, d, NULL, off, len, true);
  room = limit.max - atomic_load (&limit.used);
  errno = 0;
  r = store_zero (d->s, len, off);
  err = errno;
  if (!check_enospc (d, "zero", off, len, need + pl.cost, room, r, err)) {
    check_chain (d, off, len);
    return false;
  }
  if (len == 0)
    return true;
  zero_apply (d, off, len, &pl);
  if (d->source)
    check_chain (d, off, len);
  return true;
}

/* A trim: the pages [off, off+len) covers whole become holes where the
 * store has (or can make) their chunk; nothing else changes.
 */
static void
do_trim (struct dev *d, uint64_t off, uint64_t len)
{
  uint64_t a = (off + PAGE - 1) / PAGE * PAGE;
  uint64_t b = off + len == d->size ? off + len : (off + len) / PAGE * PAGE;
  struct plan pl;
  bool made;

  CHECK (!d->frozen, "model: trim in frozen store %d", d->id);
  plan_chunks (&pl, d, NULL, a, a < b ? b - a : 0, true);
  made = pl.cost <= limit.max - atomic_load (&limit.used);
  errno = 0;
  CHECK (store_trim (d->s, len, off) == 0, "trim %lu+%lu in store %d failed "
         "(errno %d)", (unsigned long) off, (unsigned long) len, d->id, errno);
  if (a >= b)
    return;
  if (made)
    plan_apply (&pl, d);
  TRACE ("  trim of pages [%lu, %lu), %s chunks to hide sources with\n",
         (unsigned long) (a / PAGE), (unsigned long) ((b + PAGE - 1) / PAGE),
         made ? "with" : "without");
  for (uint64_t p = a / PAGE; p * PAGE < b; p++) {
    if (d->source && !d->chunk[(p * PAGE) >> shift])
      continue;                 /* still the source */
    memset (d->ref + p * PAGE, 0, MIN (PAGE, d->size - p * PAGE));
    set_state (d, p, P_HOLE);
  }
  if (d->source)
    check_chain (d, off, len);
}

/* Extents collected from store_extents. */
struct ext_state {
  struct dev *d;
  uint64_t next;                /* where the next extent must start */
  int last_hole;                /* -1 before the first */
  unsigned calls, stop_after;
};

static int
ext_cb (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  struct ext_state *st = opaque;
  struct dev *d = st->d;

  CHECK (offset == st->next, "extent at %lu, expected %lu",
         (unsigned long) offset, (unsigned long) st->next);
  CHECK (length > 0, "empty extent");
  CHECK (offset + length <= d->size, "extent past the end");
  CHECK (st->last_hole != (int) hole, "two %s extents in a row",
         hole ? "hole" : "data");
  for (uint64_t p = FIRST_PAGE (offset); p <= LAST_PAGE (offset, length); p++)
    CHECK (page_is_data (d, p) == !hole, "store %d: extent %lu+%lu says %s, "
           "page %lu is %s", d->id, (unsigned long) offset,
           (unsigned long) length, hole ? "hole" : "data", (unsigned long) p,
           (const char *[]) { "a hole", "own", "the source's" }[d->state[p]]);
  if (hole)
    CHECK (all_zero (d->ref + offset, length), "store %d: hole %lu+%lu "
           "holds data", d->id, (unsigned long) offset,
           (unsigned long) length);
  st->next = offset + length;
  st->last_hole = hole;
  return ++st->calls == st->stop_after ? 1 : 0;
}

static void
check_extents (struct dev *d, uint64_t off, uint64_t len, unsigned stop_after)
{
  struct ext_state st = { .d = d, .next = off, .last_hole = -1,
                          .stop_after = stop_after };

  CHECK (store_extents (d->s, len, off, ext_cb, &st) == 0, "extents failed");
  if (stop_after == 0 || st.calls < stop_after)
    CHECK (st.next == off + len, "extents end at %lu, not %lu",
           (unsigned long) st.next, (unsigned long) (off + len));
}

/* Extent callback for requests that must fail before any extent. */
static int
ext_never (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  (void) opaque;
  CHECK (0, "extent %lu+%lu (%s) reported for an out-of-range request",
         (unsigned long) offset, (unsigned long) length,
         hole ? "hole" : "data");
  return -1;
}

/* Requests reaching past the end fail with EINVAL and change nothing. */
static void
check_out_of_range (struct dev *d, uint64_t off, uint64_t len)
{
  uint64_t before = store_allocated (d->s);

  errno = 0;
  CHECK (store_write (d->s, scratch, len, off) == -1 && errno == EINVAL,
         "write %lu+%lu past %lu", (unsigned long) off, (unsigned long) len,
         (unsigned long) d->size);
  errno = 0;
  CHECK (store_zero (d->s, len, off) == -1 && errno == EINVAL, "zero past end");
  errno = 0;
  CHECK (store_trim (d->s, len, off) == -1 && errno == EINVAL, "trim past end");
  errno = 0;
  CHECK (store_read (d->s, scratch, len, off) == -1 && errno == EINVAL,
         "read past end");
  errno = 0;
  CHECK (store_extents (d->s, len, off, ext_never, NULL) == -1 &&
         errno == EINVAL,
         "extents past end");
  CHECK (store_allocated (d->s) == before, "out-of-range request changed use");
}

/* Pick offset and length inside d (len may be 0). */
static void
pick_range (struct input *in, struct dev *d, uint64_t *off, uint64_t *len)
{
  uint64_t o = take (in, 3), l = take (in, 3);
  unsigned mode = take (in, 1);

  if (d->size == 0) {
    *off = *len = 0;
    return;
  }
  o %= mode & 8 || d->size < HOT ? d->size : HOT;  /* mostly the hot zone */
  if (mode & 1)
    o &= ~(PAGE - 1);                   /* page aligned */
  switch (mode >> 1 & 3) {
  case 0: l = l % 16; break;             /* tiny */
  case 1: l = (l % 8 + 1) * PAGE; break; /* whole pages */
  default: l %= MAX_LEN + 1; break;      /* anything */
  }
  if (l > d->size - o)
    l = d->size - o;
  *off = o;
  *len = l;
}

/* Set up a free slot as a store of size bytes, or, if source is not
 * NULL, as a clone of source (which is frozen from now on): made with
 * store_create_like if like (a snapshot's or a rollback's new layer),
 * else with store_create_clone and the codec.  It has no holder yet.
 */
static struct dev *
dev_init (uint64_t size, struct dev *source, bool like)
{
  struct dev *d = devs;

  while (d->live)
    d++;
  CHECK (d < devs + MAX_DEVS, "model: no free slot");
  memset (d, 0, sizeof *d);
  d->id = d - devs;
  d->live = true;
  d->size = size;
  d->npages = (size + PAGE - 1) / PAGE;
  d->nchunks = (size + (1ULL << shift) - 1) >> shift;
  d->source = source;
  if (source) {
    source->frozen = true;
    source->refs++;             /* the clone holds its source (R1) */
    d->s = like ? store_create_like (source->s)
                : store_create_clone (source->s, &limit);
  }
  else
    d->s = store_create (size, shift, &limit);
  if (d->s == NULL || (!like && store_set_codec (d->s, codec) == -1))
    abort ();
  CHECK (store_codec (d->s) == codec, "store %d: codec %d", d->id,
         store_codec (d->s));
  d->ref = calloc (1, size + 1);
  d->state = malloc (d->npages + 1);
  d->chunk = calloc (1, d->nchunks + 1);
  d->spare = calloc (1, d->npages + 1);
  if (d->s == NULL || d->ref == NULL || d->state == NULL || d->chunk == NULL ||
      d->spare == NULL)
    abort ();
  memset (d->state, source ? P_SOURCE : P_HOLE, d->npages + 1);
  if (source)
    memcpy (d->ref, source->ref, size);
  ndevs++;
  return d;
}

/* The reference lets go of d, as store_destroy does: when no one holds
 * it any more it is freed, and lets go of its source.  The store itself
 * is the caller's to let go (once, for the whole chain).
 */
static void
dev_release (struct dev *d)
{
  while (d != NULL && --d->refs == 0) {
    struct dev *source = d->source;

    TRACE ("  store %d freed\n", d->id);
    free (d->ref);
    free (d->state);
    free (d->chunk);
    free (d->spare);
    d->live = false;
    ndevs--;
    d = source;
  }
}

/* Clones in the chain down from d. */
static int
dev_depth (const struct dev *d)
{
  int depth = 0;

  while ((d = d->source) != NULL)
    depth++;
  return depth;
}

/* Every byte and every extent of d. */
static void
check_all (struct dev *d)
{
  for (uint64_t o = 0; o < d->size; o += MAX_LEN)
    check_read (d, o, MIN (d->size - o, MAX_LEN));
  if (d->size > 0)
    check_extents (d, 0, d->size, 0);
  check_model (d);
}

/* Add a handle for d, which it holds. */
static struct handle *
handle_add (struct dev *d, bool writable, struct handle *snapshot_of)
{
  struct handle *h = hslots;

  while (h->d != NULL)
    h++;
  CHECK (nhandles < MAX_HANDLES && h < hslots + MAX_HANDLES,
         "model: no free handle");
  h->d = d;
  h->writable = writable;
  h->vol = false;
  h->snapshot_of = snapshot_of;
  d->refs++;
  handles[nhandles++] = h;
  return h;
}

/* Whether d is some handle's store, or a volatile one's durable store
 * (manage_is_device_store).
 */
static bool
is_handle_store (const struct dev *d)
{
  for (int i = 0; i < nhandles; i++)
    if (handles[i]->d == d || (handles[i]->vol && handles[i]->d->source == d))
      return true;
  return false;
}

/* The class store_fold sees for page p of clone c, which has its chunk:
 * data, zero (hidden) or the source's.
 */
static enum page_state
fold_class (const struct dev *c, uint64_t p)
{
  return c->state[p];
}

/* Which unit-sized blocks of a child's own pages a fold copies (a power
 * cut's keep, store_fold_some): all (unit 0), none, or the blocks whose
 * bit, block index modulo 64, is set in mask.
 */
struct keep {
  unsigned unit;
  enum { KEEP_NONE, KEEP_ALL, KEEP_MASK } mode;
  uint64_t mask;
};

/* store_keep_fn for struct keep. */
static bool
keep_unit (void *opaque, uint64_t offset)
{
  const struct keep *k = opaque;

  return k->mode == KEEP_ALL ||
    (k->mode == KEEP_MASK && (k->mask >> (offset / k->unit % 64) & 1));
}

/* Fold [off, off+len) of child c, of class cls, into its source p as a
 * write of c's bytes or a zero, refused with ENOSPC exactly as that
 * write or zero would be; the chunks it creates are planned after those
 * planned before (*prev: the nodes they make serve it too), and *used
 * is the cap's use as it goes.  0, or -1 if refused.
 */
static int
fold_piece (struct dev *c, enum page_state cls, uint64_t off, uint64_t len,
            uint64_t *prev, uint64_t *used)
{
  struct dev *p = c->source;
  uint64_t idx = off >> shift, need, own;
  struct plan pl;

  memset (&pl, 0, sizeof pl);
  pl.first = idx;
  pl.n = 1;
  if (!p->chunk[idx] &&
      ((cls == P_OWN && !all_zero (c->ref + off, len)) ||
       (p->source && chain_has_chunk (p, idx))))
    plan_add (&pl, p, idx, prev);
  if (codec != CODEC_NONE)
    need = 0;                   /* uncapped: see fold_one */
  else if (cls == P_OWN)
    need = write_need_pages (p, c->ref + off, off, len) * PAGE;
  else
    need = zero_need (p, off, len);
  TRACE ("  fold %s %lu+%lu into store %d: %lu bytes, %lu free\n",
         cls == P_OWN ? "data" : "zero", (unsigned long) off,
         (unsigned long) len, p->id, (unsigned long) (need + pl.cost),
         (unsigned long) (limit.max - *used));
  if (need + pl.cost > limit.max - *used)
    return -1;
  own = p->own;
  if (cls == P_OWN)
    write_apply (p, c->ref + off, off, len, &pl);
  else
    zero_apply (p, off, len, &pl);
  *used += pl.cost + (p->own - own) * PAGE;     /* raw: exact */
  return 0;
}

/* What store_fold_some (c, k) must do, done to the reference of c's
 * source: run by run of c's own pages, chunk by chunk, and in each run
 * stretch by stretch of units k keeps alike (or the whole run if
 * k->unit is 0), a write of c's data or a zero of each kept stretch
 * (fold_piece; the fold then stops at the first refused, having changed
 * the stretches before).  Adds the bytes kept and lost, as far as it
 * went, to *kept and *lost.  0, or -1 if a stretch must be refused.
 */
static int
fold_model (struct dev *c, const struct keep *k, uint64_t *kept,
            uint64_t *lost)
{
  struct dev *p = c->source;
  uint64_t used = atomic_load (&limit.used), prev = UINT64_MAX;
  uint64_t pages_per_chunk = (1ULL << shift) / PAGE;

  for (uint64_t idx = 0; idx < c->nchunks; idx++) {
    uint64_t pg, end;

    if (!c->chunk[idx])
      continue;
    pg = idx * pages_per_chunk;
    end = MIN (pg + pages_per_chunk, c->npages);
    while (pg < end) {
      enum page_state cls = fold_class (c, pg);
      uint64_t run = pg, off, stop;

      while (run < end && fold_class (c, run) == cls)
        run++;
      off = pg * PAGE;
      stop = MIN (run * PAGE, c->size);
      pg = run;
      if (cls == P_SOURCE)
        continue;
      while (off < stop) {
        uint64_t from = off;
        bool keep = k->unit == 0 || keep_unit ((void *) k, off);

        if (k->unit == 0)
          off = stop;
        else
          do
            off = MIN (stop, off - off % k->unit + k->unit);
          while (off < stop && keep_unit ((void *) k, off) == keep);
        if (!keep) {
          *lost += off - from;
          continue;
        }
        *kept += off - from;
        if (fold_piece (c, cls, from, off - from, &prev, &used) == -1)
          return -1;
      }
    }
  }
  if (k->unit == 0)
    CHECK (memcmp (p->ref, c->ref, c->size) == 0, "model: store %d folded "
           "into store %d reads otherwise", c->id, p->id);
  return 0;
}

/* Put parent in child's place everywhere (manage_replace): as the
 * store of the handles that had child, and the source of the stores
 * that read through it; each lets go of child.
 */
static void
replace (struct dev *child, struct dev *parent)
{
  for (int i = 0; i < nhandles; i++) {
    if (handles[i]->d == child) {
      handles[i]->d = parent;
      store_ref (parent->s);
      parent->refs++;
      store_destroy (child->s);
      dev_release (child);
      continue;
    }
    for (struct dev *t = handles[i]->d; t; t = t->source)
      if (t->source == child) {
        store_set_source (t->s, parent->s);
        parent->refs++;
        t->source = parent;
        dev_release (child);
        break;
      }
  }
}

/* Fold away the first layer that is nobody's handle and that one store
 * alone reads through (manage_fold_one); true if one was folded.
 */
static bool
fold_one (void)
{
  for (int i = 0; i < nhandles; i++)
    for (struct dev *child = handles[i]->d; child->source;
         child = child->source) {
      struct dev *parent = child->source;
      uint64_t kept = 0, lost = 0;
      int want, r, err;

      if (parent->refs != 1 || is_handle_store (parent))
        continue;
      /* A compressed store's growth cannot be foreseen: under a cap the
       * fold is not tried (the reference could not follow a refusal).
       */
      if (codec != CODEC_NONE && limit.max != UINT64_MAX) {
        TRACE ("  store %d not folded into store %d: compressed, capped\n",
               child->id, parent->id);
        return false;
      }
      TRACE ("  folding store %d into store %d\n", child->id, parent->id);
      want = fold_model (child, &(struct keep) { 0 }, &kept, &lost);
      errno = 0;
      r = store_fold (child->s);
      err = errno;
      CHECK (r == want && (r == 0 || err == ENOSPC), "fold of store %d into "
             "store %d: result %d, errno %d, reference %d", child->id,
             parent->id, r, err, want);
      check_accounting ();
      check_chain (child, 0, MIN (child->size, HOT));
      if (r == -1)
        return false;
      store_ref (parent->s);    /* kept while child goes */
      parent->refs++;
      parent->frozen = child->frozen;
      replace (child, parent);
      store_destroy (parent->s);
      dev_release (parent);
      CHECK (!child->live, "model: store %d folded, still held", child->id);
      folds++;
      return true;
    }
  return false;
}

/* Fold every layer that can be (manage_tidy), checking each. */
static void
tidy (void)
{
  while (fold_one ())
    check_accounting ();
}

/* Snapshot writable device h (manage_snapshot): its store is frozen as
 * the snapshot's, and h goes on in store_create_like of it.
 */
static void
do_snapshot (struct handle *h)
{
  struct dev *old = h->d, *top;

  if (nhandles == MAX_HANDLES || ndevs == MAX_DEVS ||
      dev_depth (old) == MAX_DEPTH) {
    TRACE ("  no snapshot: %d handles, %d stores, depth %d\n", nhandles,
           ndevs, dev_depth (old));
    return;
  }
  top = dev_init (old->size, old, true);
  handle_add (old, false, h);   /* the snapshot takes h's hold */
  old->refs--;
  h->d = top;
  top->refs++;
  TRACE ("  snapshot: store %d frozen, device goes on in store %d\n",
         old->id, top->id);
  check_chain (top, 0, MIN (top->size, HOT));
}

/* Roll writable device h back to snapshot sn (manage_rollback). */
static void
do_rollback (struct handle *h, struct handle *sn)
{
  struct dev *old = h->d, *top;

  if (ndevs == MAX_DEVS || dev_depth (sn->d) == MAX_DEPTH) {
    TRACE ("  no rollback: %d stores, depth %d\n", ndevs,
           dev_depth (sn->d));
    return;
  }
  top = dev_init (sn->d->size, sn->d, true);
  h->d = top;
  top->refs++;
  TRACE ("  rollback to store %d: device goes on in store %d\n", sn->d->id,
         top->id);
  store_destroy (old->s);
  dev_release (old);
  check_accounting ();
  tidy ();
  check_chain (h->d, 0, MIN (h->d->size, HOT));
}

/* Delete handle h (manage_delete): it lets go of its store; then tidy. */
static void
do_delete (struct handle *h)
{
  struct dev *d = h->d;
  int i;

  for (i = 0; i < nhandles; i++)
    if (handles[i]->snapshot_of == h)
      handles[i]->snapshot_of = NULL;
  for (i = 0; handles[i] != h; i++)
    ;
  memmove (&handles[i], &handles[i + 1],
           (nhandles - i - 1) * sizeof handles[0]);
  nhandles--;
  h->d = NULL;
  TRACE ("  handle of store %d deleted\n", d->id);
  store_destroy (d->s);
  dev_release (d);
  check_accounting ();
  tidy ();
}

/* Make writable device h volatile (vol_attach): its store is frozen as
 * the durable store, which h's new cache (store_create_like of it)
 * alone holds, and h goes on in the cache.
 */
static void
vol_attach_model (struct handle *h)
{
  struct dev *old = h->d, *cache;

  if (ndevs == MAX_DEVS || dev_depth (old) == MAX_DEPTH) {
    TRACE ("  not made volatile: %d stores, depth %d\n", ndevs,
           dev_depth (old));
    return;
  }
  cache = dev_init (old->size, old, true);
  cache->retain = codec == CODEC_NONE;
  CHECK (store_set_retain (cache->s, SPARE_MAX) == (cache->retain ? 0 : -1),
         "store_set_retain of store %d", cache->id);
  store_destroy (old->s);       /* the cache holds it now */
  old->refs--;
  h->d = cache;
  h->vol = true;
  cache->refs++;
  TRACE ("  volatile: store %d durable, cache store %d\n", old->id,
         cache->id);
  check_chain (cache, 0, MIN (cache->size, HOT));
}

/* A FUA request on volatile h, which went through in the cache: the
 * same in the durable store (V3 in volatile.c).  The cache's pages that
 * show the durable store read its new bytes.
 */
static void
vol_fua_model (struct handle *h, unsigned type, uint64_t off, uint64_t len,
               unsigned kind, uint32_t seed)
{
  struct dev *c = h->d, *dur = c->source;

  TRACE ("  FUA: the same in durable store %d\n", dur->id);
  dur->frozen = false;
  if (type <= 2)
    do_write (dur, off, len, kind, seed);
  else if (type == 3)
    do_zero (dur, off, len);
  else
    do_trim (dur, off, len);
  dur->frozen = true;
  for (uint64_t p = FIRST_PAGE (off); len > 0 && p <= LAST_PAGE (off, len);
       p++)
    if (c->state[p] == P_SOURCE)
      memcpy (c->ref + p * PAGE, dur->ref + p * PAGE,
              MIN (PAGE, c->size - p * PAGE));
  check_chain (c, off, len);
}

/* Empty cache c in O(1) (store_forget_detach, then store_husk_free as
 * the reclaimer does): until freed its pages stay counted against the
 * cap; then it reads as the durable store and holds nothing.
 */
static void
vol_forget_model (struct dev *c)
{
  uint64_t used = atomic_load (&limit.used);
  struct store_husk *husk = store_forget_detach (c->s);

  CHECK (husk != NULL, "store_forget_detach of store %d failed", c->id);
  CHECK (atomic_load (&limit.used) == used, "cap use %lu before the husk "
         "is freed, %lu before", (unsigned long) atomic_load (&limit.used),
         (unsigned long) used);
  CHECK (store_data (c->s) == 0 && store_chunks (c->s) == 0 &&
         store_metadata (c->s) == 0, "store %d: forgotten, still counts",
         c->id);
  store_husk_free (husk);
  memset (c->state, P_SOURCE, c->npages + 1);
  memset (c->chunk, 0, c->nchunks + 1);
  memset (c->spare, 0, c->npages + 1);
  c->own = c->chunks = c->meta = c->nspare = 0;
  memcpy (c->ref, c->source->ref, c->size);
  check_accounting ();
  check_chain (c, 0, MIN (c->size, HOT));
}

/* Empty retaining cache c keeping spares (store_forget_keep), if the
 * spares no write took since the last flush and the pages that held
 * data fit in SPARE_MAX and the cap is at most half used: the pages
 * that held data become spares too, and every page shows the durable
 * store again; its chunks stay.  Whether it did.
 */
static bool
vol_keep_model (struct dev *c)
{
  bool want = c->retain && (c->nspare + c->own) * PAGE <= SPARE_MAX &&
              (limit.max == UINT64_MAX ||
               atomic_load (&limit.used) <= limit.max / 2);
  int r, err;

  errno = 0;
  r = store_forget_keep (c->s);
  err = errno;
  CHECK (r == (want ? 0 : -1) &&
         (r == 0 || err == (c->retain ? ENOSPC : EINVAL)),
         "store_forget_keep of store %d: result %d, errno %d, reference %d",
         c->id, r, err, want ? 0 : -1);
  if (!want)
    return false;
  TRACE ("  kept %lu pages as spares beside %lu\n",
         (unsigned long) c->own, (unsigned long) c->nspare);
  for (uint64_t p = 0; p < c->npages; p++)
    c->spare[p] |= c->state[p] == P_OWN;
  c->nspare += c->own;
  c->own = 0;
  memset (c->state, P_SOURCE, c->npages + 1);
  memcpy (c->ref, c->source->ref, c->size);
  check_accounting ();
  check_chain (c, 0, MIN (c->size, HOT));
  return true;
}

/* A flush of volatile h (vol_flush): fold the cache into the durable
 * store; if that went through, empty the cache, else it keeps its
 * pages (and reads the same).
 */
static void
vol_flush_model (struct handle *h)
{
  struct dev *c = h->d;
  uint64_t kept = 0, lost = 0;
  int want, r, err;

  /* A compressed store's growth cannot be foreseen (see fold_one). */
  if (codec != CODEC_NONE && limit.max != UINT64_MAX) {
    TRACE ("  not flushed: compressed, capped\n");
    return;
  }
  TRACE ("  flush: cache store %d into store %d\n", c->id, c->source->id);
  want = fold_model (c, &(struct keep) { 0 }, &kept, &lost);
  errno = 0;
  r = store_fold (c->s);
  err = errno;
  CHECK (r == want && (r == 0 || err == ENOSPC), "flush of store %d: result "
         "%d, errno %d, reference %d", c->id, r, err, want);
  check_accounting ();
  check_chain (c, 0, MIN (c->size, HOT));
  if (r == 0 && !vol_keep_model (c))
    vol_forget_model (c);
}

/* A power cut of volatile h (vol_cut_closed): fold the units k keeps
 * (store_fold_some: the bytes kept and lost as the reference counts
 * them), then empty the cache whatever the fold did.  Where the fold
 * went through, every unit the cache held reads its kept or its old
 * durable bytes, as k says, and every other byte is as it was.
 */
static void
vol_cut_model (struct handle *h, const struct keep *k)
{
  struct dev *c = h->d, *dur = c->source;
  uint64_t kept = 0, lost = 0, rkept = 0, rlost = 0;
  uint8_t *before;
  int want, r, err;

  if (codec != CODEC_NONE && limit.max != UINT64_MAX &&
      k->mode != KEEP_NONE) {
    TRACE ("  no cut: compressed, capped\n");
    return;
  }
  TRACE ("  cut: keep %s, unit %u, mask %#lx\n",
         (const char *[]) { "none", "all", "mask" }[k->mode], k->unit,
         (unsigned long) k->mask);
  if ((before = malloc (dur->size + 1)) == NULL)
    abort ();
  memcpy (before, dur->ref, dur->size);
  want = fold_model (c, k, &kept, &lost);
  errno = 0;
  r = store_fold_some (c->s, k->unit, keep_unit, (void *) k, &rkept, &rlost);
  err = errno;
  CHECK (r == want && (r == 0 || err == ENOSPC), "cut of store %d: result "
         "%d, errno %d, reference %d", c->id, r, err, want);
  CHECK (rkept == kept && rlost == lost, "cut of store %d: kept %lu lost "
         "%lu, reference %lu and %lu", c->id, (unsigned long) rkept,
         (unsigned long) rlost, (unsigned long) kept, (unsigned long) lost);
  for (uint64_t o = 0; r == 0 && o < c->size; o++) {
    uint64_t p = o / PAGE;
    bool held = c->chunk[(p * PAGE) >> shift] && c->state[p] != P_SOURCE;
    uint8_t want_byte = held && keep_unit ((void *) k, o) ? c->ref[o]
                                                          : before[o];

    CHECK (dur->ref[o] == want_byte, "model: cut of store %d: byte %lu is "
           "%#x, the rules say %#x", c->id, (unsigned long) o, dur->ref[o],
           want_byte);
  }
  free (before);
  check_accounting ();
  vol_forget_model (c);
}

/* A writable handle at or after handles[i], or NULL; if layers, one
 * that is not volatile (whose layers snapshots may change).
 */
static struct handle *
pick_writable (int i, bool layers)
{
  for (int k = 0; k < nhandles; k++) {
    struct handle *h = handles[(i + k) % nhandles];

    if (h->writable && !(layers && h->vol))
      return h;
  }
  return NULL;
}

/* How many handles are writable. */
static int
count_writable (void)
{
  int n = 0;

  for (int i = 0; i < nhandles; i++)
    n += handles[i]->writable;
  return n;
}

/* The first volatile handle at or after handles[i], or NULL. */
static struct handle *
pick_volatile (int i)
{
  for (int k = 0; k < nhandles; k++) {
    struct handle *h = handles[(i + k) % nhandles];

    if (h->vol)
      return h;
  }
  return NULL;
}

/* Snapshot, roll back, delete, make volatile, flush or cut, as sub
 * picks, on handle h (a cut takes mask, which units it keeps).
 */
static void
do_snapshot_op (struct handle *h, unsigned sub, uint64_t mask)
{
  switch (sub % 8) {
  case 0: case 1:
    if ((h = pick_writable (h - hslots, true)) != NULL)
      do_snapshot (h);
    break;
  case 2: {
    struct handle *sn = NULL;

    /* h if a snapshot of a writable device, else one after it. */
    for (int k = 0; k < nhandles && sn == NULL; k++) {
      struct handle *c = handles[(k + sub / 8) % nhandles];

      if (c->snapshot_of && c->snapshot_of->writable &&
          !c->snapshot_of->vol)
        sn = c;
    }
    if (sn)
      do_rollback (sn->snapshot_of, sn);
    else
      TRACE ("  no snapshot to roll back to\n");
    break;
  }
  case 4:
    if ((h = pick_writable (h - hslots, true)) != NULL)
      vol_attach_model (h);
    break;
  case 5:
    if ((h = pick_volatile (h - hslots)) != NULL)
      vol_flush_model (h);
    break;
  case 6: {
    struct keep k = { sub & 8 ? 512 : PAGE, (sub >> 4) % 3, mask };

    if ((h = pick_volatile (h - hslots)) != NULL)
      vol_cut_model (h, &k);
    break;
  }
  case 3: case 7:
    /* Any handle, so long as a writable device stays. */
    if (nhandles > 1 && (!h->writable || count_writable () > 1))
      do_delete (h);
    else
      TRACE ("  not deleted: the last device\n");
    break;
  }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct input in = { data, size };
  unsigned size_kind, cap;
  uint64_t size_a, size_b;

  shift = STORE_MIN_CHUNK_SHIFT + take (&in, 1) % 5; /* 4K..64K */
  size_kind = take (&in, 1);
  /* Bits 2-3 of size_kind: no codec (half the time), zstd or lz4,
   * which take chunks of 16K at least.
   */
  codec = (size_kind >> 2 & 3) < 2 ? CODEC_NONE
    : (size_kind >> 2 & 3) == 2 ? CODEC_ZSTD : CODEC_LZ4;
  if (codec != CODEC_NONE && shift < 14)
    shift = 14;
  size_a = take (&in, 3) % ((size_kind & 3) == 0 ? MAX_SIZE_A + 1 : HOT + 1);
  size_b = take (&in, 2) % (MAX_SIZE_B + 1);
  cap = take (&in, 1);
  if (trace == -1)
    trace = getenv ("FUZZ_STORE_TRACE") != NULL;
  /* A cap of 0..127 pages, or none. */
  atomic_store (&limit.used, 0);
  limit.max = cap & 0x80 ? UINT64_MAX : (uint64_t) (cap & 0x7f) * PAGE;
  TRACE ("chunk %u, codec %s, sizes %lu and %lu, cap %lu\n", 1u << shift,
         codec_name (codec), (unsigned long) size_a, (unsigned long) size_b,
         (unsigned long) limit.max);
  ndevs = nhandles = 0;
  memset (devs, 0, sizeof devs);
  memset (hslots, 0, sizeof hslots);
  handle_add (dev_init (size_a, NULL, false), true, NULL);
  handle_add (dev_init (size_b, NULL, false), true, NULL);

  for (unsigned n = 0; n < MAX_OPS && in.left > 0; n++) {
    /* One byte: the operation, the handle and two bits for the
     * operation; then the range but for a clone or a snapshot operation
     * (which takes one byte instead), then the data for a write.
     */
    unsigned op = take (&in, 1);
    unsigned type = op & 7, aux = op >> 6;
    bool clone = type == 7 && aux == 1, snap = type == 7 && aux >= 2;
    struct handle *h = handles[(op >> 3 & 7) % nhandles];
    struct dev *d;
    uint64_t off = 0, len = 0;

    /* Writes (and the out-of-range ones) go to a writable device. */
    if (type <= 4 || (type == 7 && aux == 0))
      h = pick_writable (h - hslots, false);
    CHECK (h != NULL, "model: no writable device");
    d = h->d;
    if (!clone && !snap)
      pick_range (&in, d, &off, &len);
    TRACE ("op %u on store %d: %s %lu+%lu\n", n, d->id,
           clone ? "clone" : snap ? "snapshot/rollback/delete/volatile" :
           (const char *[]) { "write", "write", "write", "zero", "trim",
                              "read", "extents", "out-of-range" }[type],
           (unsigned long) off, (unsigned long) len);
    switch (type) {
    case 0: case 1: case 2: {
      unsigned kind = take (&in, 1);
      uint32_t seed = take (&in, 4);

      /* Bit 0 of aux: FUA, on a volatile device. */
      if (do_write (d, off, len, kind, seed) && h->vol && (aux & 1))
        vol_fua_model (h, type, off, len, kind, seed);
      break;
    }
    case 3:
      if (do_zero (d, off, len) && h->vol && (aux & 1))
        vol_fua_model (h, type, off, len, 0, 0);
      break;
    case 4:
      do_trim (d, off, len);
      if (h->vol && (aux & 1))
        vol_fua_model (h, type, off, len, 0, 0);
      break;
    case 5:
      check_read (d, off, len);
      break;
    case 6:
      check_extents (d, off, len, aux);
      break;
    default:
      if (snap) {
        unsigned sub = take (&in, 1);

        do_snapshot_op (h, sub, sub % 8 == 6 ? take (&in, 8) : 0);
        break;
      }
      if (clone) {
        /* Freeze d (its device is read-only from now on) and clone it:
         * the clone, a new device, reads as d and holds nothing.
         */
        struct dev *c;

        if (ndevs == MAX_DEVS || nhandles == MAX_HANDLES ||
            dev_depth (d) == MAX_DEPTH || h->vol) {
          TRACE ("  no clone: %d stores, %d handles, depth %d%s\n", ndevs,
                 nhandles, dev_depth (d), h->vol ? ", volatile" : "");
          break;
        }
        h->writable = false;
        c = dev_init (d->size, d, false);
        handle_add (c, true, NULL);
        TRACE ("  store %d: clone of store %d, depth %d\n", c->id, d->id,
               dev_depth (c));
        check_chain (c, 0, MIN (d->size, HOT));
        break;
      }
      check_out_of_range (d, d->size - (len > d->size ? d->size : len),
                          len + 1 + (off & 15));
      check_out_of_range (d, d->size + 1 + (off >> 4 & 15), 0);
      break;
    }
    check_accounting ();
  }

  /* Everything, at the end; then the handles go, one by one, each
   * folding what it can.
   */
  for (int i = 0; i < MAX_DEVS; i++)
    if (devs[i].live)
      check_all (&devs[i]);
  check_accounting ();
  while (nhandles > 0) {
    struct handle *h = handles[nhandles - 1];
    unsigned before = folds;

    /* Snapshots and read-only devices first, the last made first: the
     * layers under the devices then fold.
     */
    for (int i = nhandles - 1; i >= 0; i--)
      if (!handles[i]->writable) {
        h = handles[i];
        break;
      }
    do_delete (h);
    for (int i = 0; i < nhandles && folds != before; i++)
      check_chain (handles[i]->d, 0, MIN (handles[i]->d->size, HOT));
  }
  CHECK (ndevs == 0, "model: %d stores left", ndevs);
  CHECK (atomic_load (&limit.used) == 0, "cap use %lu after destroying all",
         (unsigned long) atomic_load (&limit.used));
  return 0;
}
