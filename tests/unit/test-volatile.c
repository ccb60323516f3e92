/* memblock: Check unit tests of volatile devices (volatile.c) at store
 * level.  A model device makes the composition volatile.c makes, with
 * the same store calls in the same order: a cache (store_create_like)
 * over the durable store, retaining spare pages if raw
 * (store_set_retain); writes, zeroes and trims land in the cache, and
 * with FUA in the durable store after it; a flush is gate_close,
 * store_fold, store_forget_keep (or store_forget when the cache does
 * not retain, or the cap is more than half used), gate_open; a power
 * cut is store_fold_some with the keep rule of vol_keeps, then
 * store_forget.  Random
 * workloads on raw, compressed and cloned durable stores run against
 * two flat references: what the durable store must hold (flushed and
 * FUA writes) and what the device reads (every write).  A race checks
 * that writers passing the gate and a flushing thread leave exactly the
 * requests that entered before the last flush in the durable store.
 */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "helpers.h"
#include "race.h"
#include "store.h"
#include "volatile.h"

#define VT_SHIFT 18             /* 256 KiB chunks */
#define VT_MAX_OP (128 * KiB)   /* the longest request of a workload */

/* Requests of a workload: fewer under the sanitizers, which slow every
 * copy and comparison down about tenfold.
 */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define VT_OPS 60
#else
#define VT_OPS 200
#endif

/* A durable store the tests run on. */
struct vt_kind {
  const char *name;
  enum codec codec;
  bool clone;                   /* a clone of a golden store */
  uint64_t size;
};

static const struct vt_kind vt_kinds[] = {
  { "raw", CODEC_NONE, false, 2 * MiB + 1536 },
  { "zstd", CODEC_ZSTD, false, 2 * MiB + 1536 },
  { "lz4", CODEC_LZ4, false, 2 * MiB },
  { "clone", CODEC_NONE, true, 2 * MiB + 1536 },
  { "clone-lz4", CODEC_LZ4, true, 2 * MiB },
};
#define VT_NKINDS ((int) (sizeof vt_kinds / sizeof vt_kinds[0]))

/* What a power cut keeps, and in which units. */
struct vt_keep {
  enum vol_keep keep;
  unsigned unit;
};

static const struct vt_keep vt_keep_modes[] = {
  { VOL_KEEP_NONE, 4096 }, { VOL_KEEP_ALL, 4096 },
  { VOL_KEEP_RANDOM, 512 }, { VOL_KEEP_RANDOM, 4096 },
};
#define VT_NKEEPS ((int) (sizeof vt_keep_modes / sizeof vt_keep_modes[0]))

/* How a cut decides (volatile.c's struct vol_decide). */
struct vt_decide {
  enum vol_keep keep;
  uint64_t seed;
  unsigned unit;
};

/* A 64-bit mix of x (volatile.c's vol_mix: splitmix64's finaliser). */
static uint64_t
vt_mix (uint64_t x)
{
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

/* store_keep_fn: whether the cut keeps the unit at offset (vol_keeps). */
static bool
vt_keeps (void *opaque, uint64_t offset)
{
  const struct vt_decide *d = opaque;

  switch (d->keep) {
  case VOL_KEEP_ALL: return true;
  case VOL_KEEP_NONE: return false;
  default: return vt_mix (d->seed ^ vt_mix (offset / d->unit)) & 1;
  }
}

/* The name of a keep mode (volatile.c's vol_keep_name). */
static const char *
vt_keep_name (enum vol_keep k)
{
  return k == VOL_KEEP_NONE ? "none" : k == VOL_KEEP_ALL ? "all" : "random";
}

/* A volatile device at store level, and what it must hold. */
struct vt_dev {
  struct store_limit limit;     /* the durable store's and the cache's */
  struct store *cache;          /* the device's store */
  struct store *durable;        /* store_source (cache) */
  struct gate gate;
  uint64_t size, npages;
  unsigned char *dref;          /* the durable state: flushed and FUA */
  unsigned char *aref;          /* what the device reads: every write */
  unsigned char *touched;       /* per page: changed since the last flush */
  unsigned char *buf;           /* a request's data */
  unsigned flushes, fuas, ops;
  unsigned kept;                /* flushes that kept spare pages */
};

/* What one cut did, for the tests that compare cuts. */
struct vt_cut_result {
  uint64_t kept, lost;          /* store_fold_some's bytes */
  uint64_t units_differ;        /* units whose durable and device values differ */
};

/* Bytes of the page at offset at that lie inside d. */
static uint64_t
vt_page_len (const struct vt_dev *d, uint64_t at)
{
  return MIN64 (STORE_PAGE, d->size - at);
}

/* Give s its first content: the pattern of seed everywhere (full) or
 * in every other 64 KiB, with holes between.
 */
static void
vt_content (struct store *s, bool full, unsigned seed)
{
  uint64_t size = store_size (s), step = 64 * KiB;
  unsigned char *buf = malloc (step);

  for (uint64_t off = 0; off < size; off += full ? step : 2 * step) {
    uint64_t len = MIN64 (step, size - off);

    helpers_fill (buf, len, off, seed);
    ck_assert_int_eq (store_write (s, buf, len, off), 0);
  }
  free (buf);
}

/* Open d on a durable store of kind k under a cap of max bytes: its
 * content first (in place, or a golden store's and some of its own as
 * a clone), then an empty cache over it, as vol_attach makes it.
 */
static void
vt_open (struct vt_dev *d, const struct vt_kind *k, uint64_t max, bool full)
{
  struct store *dev;

  memset (d, 0, sizeof *d);
  d->limit.max = max;
  d->size = k->size;
  d->npages = (k->size + STORE_PAGE - 1) / STORE_PAGE;
  if (k->clone) {
    struct store *golden = store_create (k->size, VT_SHIFT, NULL);
    unsigned char *own = malloc (200 * KiB);

    ck_assert_ptr_nonnull (golden);
    vt_content (golden, full, 7);
    dev = store_create_clone (golden, &d->limit);
    ck_assert_ptr_nonnull (dev);
    store_destroy (golden);     /* the clone holds it (R1) */
    ck_assert_int_eq (store_set_codec (dev, k->codec), 0);
    helpers_fill (own, 200 * KiB, MiB / 2 + 100, 8);
    ck_assert_int_eq (store_write (dev, own, 200 * KiB, MiB / 2 + 100), 0);
    free (own);
  }
  else {
    dev = helpers_create_codec (k->size, VT_SHIFT, &d->limit, k->codec);
    vt_content (dev, full, 7);
  }
  /* vol_attach: the device goes on in an empty cache over what it held. */
  d->cache = store_create_like (dev);
  ck_assert_ptr_nonnull (d->cache);
  ck_assert_int_eq (store_set_retain (d->cache, d->size / 4),
                    k->codec == CODEC_NONE ? 0 : -1);
  store_destroy (dev);
  d->durable = store_source (d->cache);
  ck_assert_ptr_eq (d->durable, dev);
  ck_assert_int_eq (store_codec (d->cache), k->codec);
  gate_init (&d->gate);
  d->dref = malloc (d->size);
  d->aref = malloc (d->size);
  d->buf = malloc (VT_MAX_OP);
  d->touched = calloc (d->npages, 1);
  ck_assert_int_eq (store_read (d->durable, d->dref, d->size, 0), 0);
  memcpy (d->aref, d->dref, d->size);
}

/* Close d: the cache goes, and the durable store with it (R1). */
static void
vt_close (struct vt_dev *d)
{
  gate_destroy (&d->gate);
  store_destroy (d->cache);
  ck_assert_uint_eq (atomic_load (&d->limit.used), 0);
  free (d->dref);
  free (d->aref);
  free (d->buf);
  free (d->touched);
}

/* Apply op (VOL_WRITE, VOL_ZERO, VOL_TRIM) to s (volatile.c's vol_apply). */
static int
vt_store_op (struct store *s, int op, const void *buf, uint64_t count,
             uint64_t offset)
{
  switch (op) {
  case VOL_WRITE: return store_write (s, buf, count, offset);
  case VOL_ZERO: return store_zero (s, count, offset);
  default: return store_trim (s, count, offset);
  }
}

/* The whole pages [*a, *b) a trim of [offset, offset+count) gives back
 * (store_trim: the device's last partial page counts as whole).
 */
static void
vt_trim_span (const struct vt_dev *d, uint64_t count, uint64_t offset,
              uint64_t *a, uint64_t *b)
{
  uint64_t end = offset + count;

  *a = (offset + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
  *b = MIN64 ((end == d->size ? end + STORE_PAGE - 1 : end)
              & ~(STORE_PAGE - 1), d->size);
}

/* Apply op to the flat reference ref as the store must read after it. */
static void
vt_ref_op (const struct vt_dev *d, unsigned char *ref, int op,
           const unsigned char *buf, uint64_t count, uint64_t offset)
{
  uint64_t a, b;

  switch (op) {
  case VOL_WRITE: memcpy (ref + offset, buf, count); break;
  case VOL_ZERO: memset (ref + offset, 0, count); break;
  default:
    vt_trim_span (d, count, offset, &a, &b);
    if (a < b)
      memset (ref + a, 0, b - a);
  }
}

/* Mark the pages op may have made the cache's own. */
static void
vt_mark (struct vt_dev *d, int op, uint64_t count, uint64_t offset)
{
  uint64_t a = offset, b = offset + count;

  if (op == VOL_TRIM)
    vt_trim_span (d, count, offset, &a, &b);
  if (a < b)
    memset (d->touched + a / STORE_PAGE, 1,
            (b + STORE_PAGE - 1) / STORE_PAGE - a / STORE_PAGE);
}

/* A request on the device, as memblock.c runs it: inside the gate, op
 * on the cache, then with FUA on the durable store (V3).
 */
static void
vt_request (struct vt_dev *d, int op, const unsigned char *buf,
            uint64_t count, uint64_t offset, bool fua)
{
  struct gate_stripe *st = gate_enter (&d->gate);
  int r = vt_store_op (d->cache, op, buf, count, offset);

  ck_assert_msg (r == 0, "op %d of %" PRIu64 " at %" PRIu64 ": %s", op,
                 count, offset, strerror (errno));
  if (fua)
    ck_assert_int_eq (vt_store_op (d->durable, op, buf, count, offset), 0);
  gate_leave (st, op == VOL_WRITE ? GATE_WRITE : GATE_ZERO, count);
  vt_ref_op (d, d->aref, op, buf, count, offset);
  vt_mark (d, op, count, offset);
  if (fua) {
    vt_ref_op (d, d->dref, op, buf, count, offset);
    d->fuas++;
  }
  d->ops++;
}

/* A store's extents, adjacent ones of a kind merged. */
struct vt_extents {
  size_t n, cap;
  uint64_t *off, *len;
  bool *hole;
};

/* store_extent_fn: append an extent to a struct vt_extents. */
static int
vt_collect (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  struct vt_extents *l = opaque;

  if (l->n > 0 && l->hole[l->n - 1] == hole &&
      l->off[l->n - 1] + l->len[l->n - 1] == offset) {
    l->len[l->n - 1] += length;
    return 0;
  }
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->off = realloc (l->off, l->cap * sizeof *l->off);
    l->len = realloc (l->len, l->cap * sizeof *l->len);
    l->hole = realloc (l->hole, l->cap * sizeof *l->hole);
  }
  l->off[l->n] = offset;
  l->len[l->n] = length;
  l->hole[l->n] = hole;
  l->n++;
  return 0;
}

/* True if a and b report the same extents (merged) over the device. */
static bool
vt_same_extents (struct store *a, struct store *b)
{
  struct vt_extents x = { 0 }, y = { 0 };
  bool same;

  ck_assert_int_eq (store_extents (a, store_size (a), 0, vt_collect, &x), 0);
  ck_assert_int_eq (store_extents (b, store_size (b), 0, vt_collect, &y), 0);
  same = x.n == y.n &&
         memcmp (x.off, y.off, x.n * sizeof *x.off) == 0 &&
         memcmp (x.len, y.len, x.n * sizeof *x.len) == 0 &&
         memcmp (x.hole, y.hole, x.n * sizeof *x.hole) == 0;
  free (x.off), free (x.len), free (x.hole);
  free (y.off), free (y.len), free (y.hole);
  return same;
}

/* After a flush or a cut: the cache holds nothing (or, if kept, only
 * spare pages and its chunks), the cap counts the durable store and
 * that, and reads (bytes and extents) fall through to the durable
 * store, which holds dref.
 */
static void
vt_check_forgotten (struct vt_dev *d, const char *what, bool kept)
{
  unsigned char *got = malloc (d->size);

  ck_assert_uint_eq (store_data (d->cache), 0);
  ck_assert_uint_eq (store_allocated (d->cache), store_spare (d->cache));
  if (!kept) {
    ck_assert_uint_eq (store_allocated (d->cache), 0);
    ck_assert_uint_eq (store_metadata (d->cache), 0);
    ck_assert_uint_eq (store_chunks (d->cache), 0);
  }
  ck_assert_msg (atomic_load (&d->limit.used) == helpers_held (d->durable)
                 + helpers_held (d->cache),
                 "%s: the cap counts %" PRIu64 " bytes, the durable store "
                 "holds %" PRIu64 " and the cache %" PRIu64, what,
                 atomic_load (&d->limit.used), helpers_held (d->durable),
                 helpers_held (d->cache));
  ck_assert_int_eq (store_read (d->durable, got, d->size, 0), 0);
  ck_assert_msg (memcmp (got, d->dref, d->size) == 0,
                 "%s: the durable store differs from its reference", what);
  ck_assert_int_eq (store_read (d->cache, got, d->size, 0), 0);
  ck_assert_msg (memcmp (got, d->dref, d->size) == 0,
                 "%s: the device does not read as its durable store", what);
  ck_assert_msg (vt_same_extents (d->cache, d->durable),
                 "%s: the device's extents are not its durable store's", what);
  free (got);
}

/* A flush, as vol_flush: fold the cache in and empty it, keeping its
 * pages as spares if it can, gate closed.
 */
static void
vt_flush (struct vt_dev *d)
{
  bool kept;

  gate_close (&d->gate);
  ck_assert_int_eq (store_fold (d->cache), 0);
  kept = store_forget_keep (d->cache) == 0;
  if (!kept) {
    ck_assert (errno == EINVAL || errno == ENOSPC);
    ck_assert_int_eq (store_forget (d->cache), 0);
  }
  gate_open (&d->gate);
  memcpy (d->dref, d->aref, d->size);
  memset (d->touched, 0, d->npages);
  d->flushes++;
  d->kept += kept;
  vt_check_forgotten (d, "flush", kept);
}

/* Run n random requests (writes, zeroes, trims; a fifth with FUA) and,
 * flush_pct percent of the time, flushes; check some reads on the way.
 */
static void
vt_workload (struct vt_dev *d, unsigned *seed, int n, unsigned flush_pct)
{
  unsigned char *out = malloc (VT_MAX_OP);

  for (int i = 0; i < n; i++) {
    uint64_t off = rand_r (seed) % d->size;
    uint64_t len = 1 + rand_r (seed) % (rand_r (seed) % 4 ? 9000 : VT_MAX_OP);
    unsigned r = rand_r (seed) % 100;
    int op = r % 4 < 2 ? VOL_WRITE : r % 4 == 2 ? VOL_ZERO : VOL_TRIM;
    bool fua = rand_r (seed) % 5 == 0;

    if (r < flush_pct) {
      vt_flush (d);
      continue;
    }
    if (len > d->size - off)
      len = d->size - off;
    if (op == VOL_WRITE) {
      switch (rand_r (seed) % 4) {
      case 0: memset (d->buf, 0, len); break;
      case 1: helpers_fill_text (d->buf, len, *seed); break;
      default: helpers_fill (d->buf, len, off, rand_r (seed));
      }
    }
    vt_request (d, op, d->buf, len, off, fua);
    if (rand_r (seed) % 6 == 0) {
      ck_assert_int_eq (store_read (d->cache, out, len, off), 0);
      ck_assert_msg (memcmp (out, d->aref + off, len) == 0,
                     "request %d: read of %" PRIu64 " at %" PRIu64, i, len,
                     off);
    }
  }
  free (out);
}

/* Cut the power, as vol_cut_closed: fold what keep keeps, forget the
 * cache, gate closed.  The fold's result, with errno; the cache must
 * be empty whatever the fold did.
 */
static int
vt_cut (struct vt_dev *d, const struct vt_decide *dd, uint64_t *kept,
        uint64_t *lost)
{
  int r, err = 0;

  *kept = *lost = 0;
  gate_close (&d->gate);
  r = store_fold_some (d->cache, dd->unit, vt_keeps, (void *) dd, kept, lost);
  if (r == -1)
    err = errno;
  ck_assert_int_eq (store_forget (d->cache), 0);
  gate_open (&d->gate);
  errno = err;
  return r;
}

/* Cut the power with keep mode kp and seed, and check every byte: each
 * unit holds its durable value, or what the unflushed writes left there
 * where the rule keeps it; the bytes kept and lost add up to the
 * cache's own pages (touched ones at most, those whose bytes differ at
 * least, or exactly the touched ones if exact); the cache is empty.
 */
static void
vt_cut_check (struct vt_dev *d, const struct vt_keep *kp, uint64_t seed,
              bool exact, struct vt_cut_result *res)
{
  struct vt_decide dd = { kp->keep, seed, kp->unit };
  unsigned char *got = malloc (d->size), *want = malloc (d->size);
  uint64_t upper = 0, lower = 0, kept, lost, wrong = 0, misplaced = 0;
  uint64_t differ = 0;

  for (uint64_t p = 0; p < d->npages; p++) {
    uint64_t at = p * STORE_PAGE, len = vt_page_len (d, at);

    if (d->touched[p])
      upper += len;
    if (memcmp (d->aref + at, d->dref + at, len) != 0)
      lower += len;
  }
  for (uint64_t u = 0; u < d->size; u += kp->unit) {
    uint64_t len = MIN64 (kp->unit, d->size - u);
    const unsigned char *src = vt_keeps (&dd, u) ? d->aref : d->dref;

    memcpy (want + u, src + u, len);
    if (memcmp (d->aref + u, d->dref + u, len) != 0)
      differ++;
  }
  ck_assert_int_eq (vt_cut (d, &dd, &kept, &lost), 0);
  ck_assert_int_eq (store_read (d->durable, got, d->size, 0), 0);
  for (uint64_t u = 0; u < d->size; u += kp->unit) {
    uint64_t len = MIN64 (kp->unit, d->size - u);

    if (memcmp (got + u, d->dref + u, len) != 0 &&
        memcmp (got + u, d->aref + u, len) != 0)
      wrong++;
    else if (memcmp (got + u, want + u, len) != 0)
      misplaced++;
  }
  ck_assert_msg (wrong == 0, "keep=%s unit %u: %" PRIu64 " units hold "
                 "neither their durable value nor an unflushed write's",
                 vt_keep_name (kp->keep), kp->unit, wrong);
  ck_assert_msg (misplaced == 0, "keep=%s unit %u: %" PRIu64 " units kept "
                 "or lost against the rule", vt_keep_name (kp->keep),
                 kp->unit, misplaced);
  ck_assert_msg (kept + lost >= lower && kept + lost <= upper,
                 "keep=%s: %" PRIu64 " kept + %" PRIu64 " lost, not within "
                 "the cache's own pages [%" PRIu64 ", %" PRIu64 "]",
                 vt_keep_name (kp->keep), kept, lost, lower, upper);
  if (exact)
    ck_assert_uint_eq (kept + lost, upper);
  if (kp->keep == VOL_KEEP_NONE)
    ck_assert_uint_eq (kept, 0);
  if (kp->keep == VOL_KEEP_ALL)
    ck_assert_uint_eq (lost, 0);
  memcpy (d->dref, got, d->size);
  memcpy (d->aref, got, d->size);
  memset (d->touched, 0, d->npages);
  vt_check_forgotten (d, "cut", false);
  if (res)
    *res = (struct vt_cut_result) { kept, lost, differ };
  free (got);
  free (want);
}

/* Random writes, zeroes, trims, flushes and FUA on each kind of durable
 * store, then a cut with each keep mode, twice (the device goes on
 * after a cut): every byte is what the rules allow.
 */
START_TEST (test_vt_workload)
{
  const struct vt_kind *k = &vt_kinds[_i / VT_NKEEPS];
  const struct vt_keep *kp = &vt_keep_modes[_i % VT_NKEEPS];
  unsigned seed = 1000 + _i;
  struct vt_dev d;

  vt_open (&d, k, UINT64_MAX, false);
  for (int round = 0; round < 2; round++) {
    vt_workload (&d, &seed, VT_OPS / 2, 6);
    vt_flush (&d);
    vt_workload (&d, &seed, round ? VT_OPS / 4 : VT_OPS / 2, 6);
    vt_cut_check (&d, kp, 77 + _i + round, false, NULL);
  }
  ck_assert_uint_ge (d.flushes, 2);
  ck_assert_uint_gt (d.fuas, 5);
  if (k->codec == CODEC_NONE)   /* a raw cache keeps spares (spare.c) */
    ck_assert_uint_gt (d.kept, 0);
  vt_close (&d);
}
END_TEST

/* Over a durable store that reads nonzero everywhere, every page an
 * unflushed request touches becomes the cache's own: the bytes a cut
 * keeps and loses add up to exactly those pages.
 */
START_TEST (test_vt_kept_lost)
{
  const struct vt_kind *k = &vt_kinds[_i / VT_NKEEPS];
  const struct vt_keep *kp = &vt_keep_modes[_i % VT_NKEEPS];
  unsigned seed = 2000 + _i;
  struct vt_dev d;
  uint64_t durable;

  vt_open (&d, k, UINT64_MAX, true);
  vt_workload (&d, &seed, VT_OPS * 2 / 5, 0);
  durable = helpers_held (d.durable);
  ck_assert_uint_eq (atomic_load (&d.limit.used),
                     durable + helpers_held (d.cache));
  ck_assert_uint_gt (helpers_held (d.cache), 0);
  vt_cut_check (&d, kp, 5, true, NULL);
  /* Folding nothing, the cut gives all the cache's memory back. */
  if (kp->keep == VOL_KEEP_NONE)
    ck_assert_uint_eq (atomic_load (&d.limit.used), durable);
  vt_close (&d);
}
END_TEST

/* The same workload and seed give the same device after a random cut,
 * byte for byte and in bytes kept; another seed gives another.
 */
START_TEST (test_vt_seed)
{
  const struct vt_kind *k = &vt_kinds[_i / 2];
  const struct vt_keep *kp = &vt_keep_modes[2 + _i % 2];
  unsigned char *image[3];
  struct vt_cut_result res[3];
  const uint64_t seeds[3] = { 99, 99, 100 };

  for (int run = 0; run < 3; run++) {
    unsigned wseed = 3000 + _i;
    struct vt_dev d;

    vt_open (&d, k, UINT64_MAX, false);
    vt_workload (&d, &wseed, VT_OPS * 2 / 3, 6);
    vt_workload (&d, &wseed, 80, 0);  /* plenty left unflushed */
    vt_cut_check (&d, kp, seeds[run], false, &res[run]);
    image[run] = malloc (d.size);
    ck_assert_int_eq (store_read (d.durable, image[run], d.size, 0), 0);
    vt_close (&d);
  }
  ck_assert_uint_ge (res[0].units_differ, 32);
  ck_assert_uint_gt (res[0].kept, 0);
  ck_assert_uint_gt (res[0].lost, 0);
  ck_assert_msg (memcmp (image[0], image[1], k->size) == 0,
                 "one seed, one workload, two devices");
  ck_assert_uint_eq (res[0].kept, res[1].kept);
  ck_assert_uint_eq (res[0].lost, res[1].lost);
  ck_assert_msg (memcmp (image[0], image[2], k->size) != 0,
                 "another seed kept the same units");
  ck_assert_uint_ne (res[0].kept, res[2].kept);
  ck_assert_uint_eq (res[0].kept + res[0].lost, res[2].kept + res[2].lost);
  for (int run = 0; run < 3; run++)
    free (image[run]);
}
END_TEST

/* At the memory cap the power still goes: the cache is dropped and the
 * cap counts the durable store alone, which holds in each unit its old
 * value or the cache's.  Variants: codec, keep mode, and whether a
 * flush failed at the cap first (it must lose nothing).
 */
START_TEST (test_vt_cap)
{
  const struct vt_kind k = { "cap", helpers_codecs[_i / (2 * VT_NKEEPS)],
                             false, 2 * MiB };
  const struct vt_keep *kp = &vt_keep_modes[_i % VT_NKEEPS];
  const bool flush_first = _i / VT_NKEEPS % 2;
  struct vt_decide dd = { kp->keep, 31, kp->unit };
  struct vt_dev d;
  unsigned char *got, *before;
  uint64_t off, kept, lost, used;
  int r;

  vt_open (&d, &k, UINT64_MAX, false);
  d.limit.max = atomic_load (&d.limit.used) + MiB / 2;
  got = malloc (d.size);
  before = malloc (d.size);
  /* Fill the durable store's holes in the cache until the cap refuses. */
  for (off = 64 * KiB; off < d.size; off += 128 * KiB) {
    helpers_fill_random (d.buf, 64 * KiB, off);
    if (store_write (d.cache, d.buf, 64 * KiB, off) == -1)
      break;
    vt_ref_op (&d, d.aref, VOL_WRITE, d.buf, 64 * KiB, off);
  }
  ck_assert_uint_lt (off, d.size);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_gt (off, 128 * KiB);
  if (flush_first) {
    /* vol_flush: a failed fold leaves the cache, and loses nothing. */
    gate_close (&d.gate);
    r = store_fold (d.cache);
    ck_assert_int_eq (r, -1);
    ck_assert_int_eq (errno, ENOSPC);
    gate_open (&d.gate);
    ck_assert_int_eq (store_read (d.cache, got, d.size, 0), 0);
    ck_assert_msg (memcmp (got, d.aref, d.size) == 0,
                   "a flush that failed at the cap lost writes");
  }
  ck_assert_uint_le (atomic_load (&d.limit.used), d.limit.max);
  ck_assert_int_eq (store_read (d.durable, before, d.size, 0), 0);
  r = vt_cut (&d, &dd, &kept, &lost);
  if (kp->keep == VOL_KEEP_NONE)
    ck_assert_int_eq (r, 0);
  else if (kp->keep == VOL_KEEP_ALL && !flush_first)
    ck_assert_int_eq (r, -1);     /* it really was at the cap */
  if (r == -1)
    ck_assert_int_eq (errno, ENOSPC);
  used = atomic_load (&d.limit.used);
  ck_assert_uint_eq (used, helpers_held (d.durable));
  ck_assert_uint_le (used, d.limit.max);
  ck_assert_uint_eq (store_allocated (d.cache), 0);
  ck_assert_uint_eq (store_metadata (d.cache), 0);
  ck_assert_int_eq (store_read (d.durable, got, d.size, 0), 0);
  for (uint64_t u = 0; u < d.size; u += dd.unit) {
    bool old = memcmp (got + u, before + u, dd.unit) == 0;
    bool cached = memcmp (got + u, d.aref + u, dd.unit) == 0;

    ck_assert_msg (old || (cached && vt_keeps (&dd, u)),
                   "unit at %" PRIu64 ": neither its old value nor a kept "
                   "one of the cache's", u);
  }
  memcpy (d.dref, got, d.size);
  memcpy (d.aref, got, d.size);
  vt_check_forgotten (&d, "cut at the cap", false);
  free (got);
  free (before);
  vt_close (&d);
}
END_TEST

/* The race: VT_WRITERS threads write whole tagged requests through the
 * gate, each cycling over its own VT_SLOTS slots, while a third flushes
 * VT_FLUSHES times, checking the durable store each time, and then cuts
 * with keep=none.
 */
#define VT_WRITERS 2
#define VT_SLOTS 32
#define VT_STRIDE (32 * KiB)
#define VT_SKEW 512                     /* requests start inside a page */
#define VT_LEN (20 * KiB)
#define VT_RACE_SIZE (VT_WRITERS * VT_SLOTS * VT_STRIDE)
#define VT_MAX_REQS 200000
#if defined(__SANITIZE_THREAD__)
#define VT_ROUNDS 2
#define VT_FLUSHES 30
#else
#define VT_ROUNDS 3
#define VT_FLUSHES 80
#endif

/* One request: the sequence numbers taken inside the gate. */
struct vt_req {
  uint64_t enter, leave;
};

/* A gate-closed window of the flusher: after gate_close, before gate_open. */
struct vt_window {
  uint64_t closed, opening;
};

struct vt_race;

/* A writing thread. */
struct vt_writer {
  struct vt_race *race;
  unsigned id;
  _Atomic uint64_t done;        /* requests completed */
  uint64_t n;                   /* requests made, once stopped */
  uint64_t durable;             /* requests done at the last flush */
  struct vt_req *req;
  unsigned char *buf;
  int errors;
  pthread_t thread;
};

/* One round of the race. */
struct vt_race {
  struct store *cache, *durable;
  struct gate gate;
  _Atomic uint64_t seq;         /* orders the requests and the flushes */
  _Atomic bool stop;
  struct vt_window win[VT_FLUSHES + 1];  /* the flushes, then the cut */
  unsigned seed;
  int errors;
  uint64_t wrong;               /* slots found wrong by the flusher */
  unsigned char *slot;          /* the flusher's: VT_STRIDE bytes */
  unsigned char *want;          /* the flusher's: VT_LEN bytes */
  struct vt_writer w[VT_WRITERS];
  pthread_t flusher;
};

/* Where request k of writer w lands. */
static uint64_t
vt_req_offset (unsigned w, uint64_t k)
{
  return ((uint64_t) w * VT_SLOTS + k % VT_SLOTS) * VT_STRIDE + VT_SKEW;
}

/* Fill buf with request k of writer w: 32-bit words of its tag, each
 * mixed with its place, so that a torn or misplaced page shows.
 */
static void
vt_req_fill (unsigned char *buf, unsigned w, uint64_t k)
{
  uint32_t tag = (w + 1) << 24 | (uint32_t) (k + 1);

  for (uint32_t i = 0; i < VT_LEN / 4; i++) {
    uint32_t x = tag * 2654435761u + i;

    memcpy (buf + 4 * i, &x, 4);
  }
}

/* Slots of the durable store that do not hold, whole, the last of the
 * first done[w] requests of each writer w to land there (zeroes where
 * none did), with zeroes around; slot and want are scratch.
 */
static uint64_t
vt_race_wrong (struct store *durable, const uint64_t done[VT_WRITERS],
               unsigned char *slot, unsigned char *want)
{
  uint64_t wrong = 0;

  for (unsigned w = 0; w < VT_WRITERS; w++)
    for (uint64_t s = 0; s < VT_SLOTS; s++) {
      uint64_t off = vt_req_offset (w, s);
      bool ok;

      if (store_read (durable, slot, VT_STRIDE, off - VT_SKEW) == -1)
        return UINT64_MAX;
      if (s < done[w]) {
        vt_req_fill (want, w, s + (done[w] - 1 - s) / VT_SLOTS * VT_SLOTS);
        ok = memcmp (slot + VT_SKEW, want, VT_LEN) == 0;
      }
      else
        ok = helpers_all_zero (slot + VT_SKEW, VT_LEN);
      if (!ok || !helpers_all_zero (slot, VT_SKEW) ||
          !helpers_all_zero (slot + VT_SKEW + VT_LEN,
                             VT_STRIDE - VT_SKEW - VT_LEN))
        wrong++;
    }
  return wrong;
}

/* A writer: requests as memblock_pwrite makes them, until told to stop. */
static void *
vt_writer_run (void *arg)
{
  struct vt_writer *w = arg;
  struct vt_race *ra = w->race;
  uint64_t k;

  for (k = 0; k < VT_MAX_REQS && !atomic_load (&ra->stop); k++) {
    uint64_t off = vt_req_offset (w->id, k);
    struct gate_stripe *st;

    vt_req_fill (w->buf, w->id, k);
    st = gate_enter (&ra->gate);
    w->req[k].enter = atomic_fetch_add (&ra->seq, 1);
    if (store_write (ra->cache, w->buf, VT_LEN, off) == -1)
      w->errors++;
    w->req[k].leave = atomic_fetch_add (&ra->seq, 1);
    atomic_store (&w->done, k + 1);
    gate_leave (st, GATE_WRITE, VT_LEN);
  }
  w->n = k;
  return NULL;
}

/* Wait until the writers have entered n more requests since sequence
 * number from.
 */
static void
vt_wait_requests (struct vt_race *ra, uint64_t from, uint64_t n)
{
  while (atomic_load (&ra->seq) < from + 1 + 2 * n)
    sched_yield ();
}

/* The flusher: flushes as vol_flush, each checked with the gate still
 * closed, then a cut with keep=none as vol_power_cut once some requests
 * have landed in the cache since the last flush; then the writers stop.
 */
static void *
vt_flusher_run (void *arg)
{
  struct vt_race *ra = arg;
  struct vt_decide none = { VOL_KEEP_NONE, 0, STORE_PAGE };
  uint64_t kept = 0, lost = 0, done[VT_WRITERS];

  for (unsigned i = 0; i <= VT_FLUSHES; i++) {
    race_delay (&ra->seed, 300);
    if (i == VT_FLUSHES)
      vt_wait_requests (ra, ra->win[i - 1].opening, 16);
    gate_close (&ra->gate);
    ra->win[i].closed = atomic_fetch_add (&ra->seq, 1);
    /* Flushes keep a raw cache's pages as spares (the writers then
     * take them back); the cut lets everything go.
     */
    if (i < VT_FLUSHES) {
      if (store_fold (ra->cache) == -1 ||
          (store_forget_keep (ra->cache) == -1 &&
           store_forget (ra->cache) == -1))
        ra->errors++;
    }
    else if (store_fold_some (ra->cache, STORE_PAGE, vt_keeps, &none, &kept,
                              &lost) == -1 || kept != 0 ||
             store_forget (ra->cache) == -1)
      ra->errors++;
    for (unsigned w = 0; w < VT_WRITERS && i < VT_FLUSHES; w++)
      ra->w[w].durable = done[w] = atomic_load (&ra->w[w].done);
    ra->wrong += vt_race_wrong (ra->durable, done, ra->slot, ra->want);
    ra->win[i].opening = atomic_fetch_add (&ra->seq, 1);
    gate_open (&ra->gate);
  }
  atomic_store (&ra->stop, true);
  return NULL;
}

/* Two writers and a flusher race on a raw or compressed device: each
 * request is inside or outside every flush and the cut, never across;
 * at every flush, and after the cut, the durable store holds exactly
 * the requests that entered the gate before that flush closed it, each
 * whole, and none after.
 */
START_TEST (test_vt_race)
{
  uint64_t in = 0, out = 0, dropped = 0;

  for (unsigned round = 0; round < VT_ROUNDS; round++) {
    struct store_limit limit = { .max = UINT64_MAX };
    struct store *dev = helpers_create_codec (VT_RACE_SIZE, VT_SHIFT, &limit,
                                              helpers_codecs[_i]);
    struct vt_race *ra = calloc (1, sizeof *ra);
    uint64_t last, across = 0, wrong, durable[VT_WRITERS];

    ra->cache = store_create_like (dev);
    ck_assert_ptr_nonnull (ra->cache);
    if (store_codec (ra->cache) == CODEC_NONE)
      ck_assert_int_eq (store_set_retain (ra->cache, VT_RACE_SIZE / 4), 0);
    store_destroy (dev);
    ra->durable = store_source (ra->cache);
    ra->seed = 50 + round + 100 * _i;
    ra->slot = malloc (VT_STRIDE);
    ra->want = malloc (VT_LEN);
    gate_init (&ra->gate);
    for (unsigned w = 0; w < VT_WRITERS; w++) {
      ra->w[w].race = ra;
      ra->w[w].id = w;
      ra->w[w].buf = malloc (VT_LEN);
      ra->w[w].req = malloc (VT_MAX_REQS * sizeof (struct vt_req));
      ck_assert_int_eq (pthread_create (&ra->w[w].thread, NULL,
                                        vt_writer_run, &ra->w[w]), 0);
    }
    ck_assert_int_eq (pthread_create (&ra->flusher, NULL, vt_flusher_run,
                                      ra), 0);
    pthread_join (ra->flusher, NULL);
    for (unsigned w = 0; w < VT_WRITERS; w++)
      pthread_join (ra->w[w].thread, NULL);
    ck_assert_int_eq (ra->errors, 0);
    ck_assert_msg (ra->wrong == 0, "round %u: %" PRIu64 " slots wrong at "
                   "the flushes or the cut", round, ra->wrong);
    last = ra->win[VT_FLUSHES - 1].closed;
    for (unsigned w = 0; w < VT_WRITERS; w++) {
      struct vt_writer *wr = &ra->w[w];

      ck_assert_int_eq (wr->errors, 0);
      durable[w] = 0;
      for (uint64_t k = 0; k < wr->n; k++) {
        const struct vt_req *q = &wr->req[k];

        for (unsigned i = 0; i <= VT_FLUSHES; i++)
          if (q->enter < ra->win[i].closed ? q->leave > ra->win[i].closed
                                           : q->enter < ra->win[i].opening)
            across++;
        if (q->enter < last) {
          durable[w] = k + 1;
          in++;
        }
        else {
          out++;
          dropped += q->enter < ra->win[VT_FLUSHES].closed;
        }
      }
      ck_assert_uint_eq (durable[w], wr->durable);
    }
    ck_assert_msg (across == 0, "round %u: %" PRIu64 " requests ran across "
                   "a flush or the cut", round, across);
    wrong = vt_race_wrong (ra->durable, durable, ra->slot, ra->want);
    ck_assert_msg (wrong == 0, "round %u: %" PRIu64 " slots do not hold "
                   "the last request that entered before the last flush",
                   round, wrong);
    for (unsigned w = 0; w < VT_WRITERS; w++) {
      free (ra->w[w].buf);
      free (ra->w[w].req);
    }
    gate_destroy (&ra->gate);
    store_destroy (ra->cache);
    ck_assert_uint_eq (atomic_load (&limit.used), 0);
    free (ra->slot);
    free (ra->want);
    free (ra);
  }
  fprintf (stderr, "race (%s): %" PRIu64 " requests before the last flush, "
           "%" PRIu64 " after, %" PRIu64 " of them dropped by the cut\n",
           codec_name (helpers_codecs[_i]), in, out, dropped);
  ck_assert_uint_ge (dropped, 16 * VT_ROUNDS);
}
END_TEST

/* Read one byte of d's device. */
static unsigned char
vt_byte (struct vt_dev *d, uint64_t at)
{
  unsigned char b;

  ck_assert_int_eq (store_read (d->cache, &b, 1, at), 0);
  return b;
}

/* A raw cache's spare pages (spare.c), page by page, with a budget of
 * 12 pages: a flush keeps the pages that held data, counted; a partial
 * write of a spare copies up the durable page; a whole zero or trim
 * gives spares back, and a later partial write there reads zeroes
 * around it, not the stale bytes; a flush keeps the spares no write
 * took with the new ones while all fit in the budget, and past it
 * empties the cache whole; a cut lets all go.
 */
START_TEST (test_vt_spares)
{
  struct vt_dev d;
  uint64_t last = vt_kinds[0].size - 1536;
  unsigned char b;

  vt_open (&d, &vt_kinds[0], UINT64_MAX, false);
  ck_assert_int_eq (store_set_retain (d.cache, 12 * STORE_PAGE), 0);
  memset (d.buf, 0xaa, 8 * STORE_PAGE);
  vt_request (&d, VOL_WRITE, d.buf, 8 * STORE_PAGE, 0, false);
  memset (d.buf, 0x33, 1536);
  vt_request (&d, VOL_WRITE, d.buf, 1536, last, false);
  vt_flush (&d);
  ck_assert_uint_eq (store_spare (d.cache), 9 * STORE_PAGE);
  /* A partial write of a spare: the durable page under it. */
  memset (d.buf, 0x11, 10);
  vt_request (&d, VOL_WRITE, d.buf, 10, 100, false);
  ck_assert_uint_eq (store_spare (d.cache), 8 * STORE_PAGE);
  ck_assert_uint_eq (store_data (d.cache), STORE_PAGE);
  ck_assert_int_eq (vt_byte (&d, 99), 0xaa);
  ck_assert_int_eq (vt_byte (&d, 100), 0x11);
  /* A whole zero, then a partial write: zeroes around it. */
  vt_request (&d, VOL_ZERO, NULL, STORE_PAGE, STORE_PAGE, false);
  vt_request (&d, VOL_TRIM, NULL, 2 * STORE_PAGE, 2 * STORE_PAGE, false);
  ck_assert_uint_eq (store_spare (d.cache), 5 * STORE_PAGE);
  memset (d.buf, 0x22, 10);
  vt_request (&d, VOL_WRITE, d.buf, 10, STORE_PAGE + 50, false);
  ck_assert_int_eq (vt_byte (&d, STORE_PAGE + 49), 0);
  ck_assert_int_eq (vt_byte (&d, STORE_PAGE + 50), 0x22);
  ck_assert_int_eq (vt_byte (&d, 2 * STORE_PAGE - 1), 0);
  /* The device's last, partial page. */
  memset (d.buf, 0x44, 10);
  vt_request (&d, VOL_WRITE, d.buf, 10, last + 1000, false);
  ck_assert_int_eq (vt_byte (&d, last + 999), 0x33);
  ck_assert_int_eq (vt_byte (&d, last + 1000), 0x44);
  ck_assert_int_eq (vt_byte (&d, last + 1535), 0x33);
  ck_assert_uint_eq (store_spare (d.cache), 4 * STORE_PAGE);
  /* The next flush keeps pages 0, 1 and the last beside 4 to 7, and so
   * does one with nothing written.
   */
  vt_flush (&d);
  ck_assert_uint_eq (store_spare (d.cache), 7 * STORE_PAGE);
  vt_flush (&d);
  ck_assert_uint_eq (store_spare (d.cache), 7 * STORE_PAGE);
  /* Six new pages would make 13: the flush empties the cache whole. */
  memset (d.buf, 0x55, 6 * STORE_PAGE);
  vt_request (&d, VOL_WRITE, d.buf, 6 * STORE_PAGE, 8 * STORE_PAGE, false);
  vt_flush (&d);
  ck_assert_uint_eq (store_spare (d.cache), 0);
  ck_assert_uint_eq (store_chunks (d.cache), 0);
  ck_assert_int_eq (store_read (d.cache, &b, 1, 100), 0);
  ck_assert_int_eq (b, 0x11);
  /* A cut takes the spares with the rest. */
  vt_request (&d, VOL_WRITE, d.buf, 10, 0, false);
  vt_flush (&d);
  ck_assert_uint_eq (store_spare (d.cache), STORE_PAGE);
  vt_cut_check (&d, &vt_keep_modes[0], 1, false, NULL);
  ck_assert_uint_eq (store_spare (d.cache), 0);
  vt_close (&d);
}
END_TEST

/* Spare pages in the kernel's terms, with a budget of 48 MiB: rewriting
 * the 32 MiB a flush kept takes no new memory; a flush of 32 MiB more,
 * past the budget, gives all back.
 */
START_TEST (test_vt_spares_rss)
{
  static const uint64_t len = 32 * MiB;
  struct vt_kind k = { "raw", CODEC_NONE, false, 2 * len };
  struct vt_dev d;
  unsigned char *data = malloc (MiB);
  uint64_t base, kept, rewritten, back, grown, slack = 4 * MiB;

  vt_open (&d, &k, UINT64_MAX, false);
  ck_assert_int_eq (store_set_retain (d.cache, 48 * MiB), 0);
  helpers_fill (data, MiB, 0, 9);
  for (uint64_t o = 0; o < len; o += MiB)
    ck_assert_int_eq (store_write (d.durable, data, MiB, o), 0);
  base = helpers_rss_bytes ();
  for (uint64_t o = 0; o < len; o += MiB)
    ck_assert_int_eq (store_write (d.cache, data, MiB, o), 0);
  ck_assert_int_eq (store_fold (d.cache), 0);
  ck_assert_int_eq (store_forget_keep (d.cache), 0);
  kept = helpers_rss_bytes () - base;
  ck_assert_uint_eq (store_spare (d.cache), len);
  for (uint64_t o = 0; o < len; o += MiB)
    ck_assert_int_eq (store_write (d.cache, data, MiB, o), 0);
  rewritten = helpers_rss_bytes () - base;
  ck_assert_uint_eq (store_spare (d.cache), 0);
  ck_assert_uint_eq (store_data (d.cache), len);
  ck_assert_int_eq (store_fold (d.cache), 0);
  ck_assert_int_eq (store_forget_keep (d.cache), 0);
  for (uint64_t o = len; o < 2 * len; o += MiB)
    ck_assert_int_eq (store_write (d.cache, data, MiB, o), 0);
  grown = helpers_held (d.durable);
  ck_assert_int_eq (store_fold (d.cache), 0);
  grown = helpers_held (d.durable) - grown;     /* the new half, folded */
  ck_assert_int_eq (store_forget_keep (d.cache), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_int_eq (store_forget (d.cache), 0);
  back = helpers_rss_bytes () - base;
  fprintf (stderr, "spares: RSS +%" PRIu64 " KiB kept by a flush, +%" PRIu64
           " KiB rewritten, +%" PRIu64 " KiB after a flush past the "
           "budget\n", kept / KiB, rewritten / KiB, back / KiB);
  ck_assert_uint_eq (store_spare (d.cache), 0);
  ck_assert_uint_eq (store_allocated (d.cache), 0);
  if (HELPERS_RSS_CHECKED) {
    ck_assert_uint_ge (kept, len - slack);
    ck_assert_uint_le (rewritten, kept + slack);
    ck_assert_uint_le (back, grown + slack);
  }
  free (data);
  vt_close (&d);
}
END_TEST

/* Run the volatile suite. */
int
main (void)
{
  Suite *s = suite_create ("volatile");
  TCase *tc;

  /* Timeouts: three times or more a test's time under TSan. */
  tc = helpers_add_tcase (s, "workload", 60);
  tcase_add_loop_test (tc, test_vt_workload, 0, VT_NKINDS * VT_NKEEPS);
  tc = helpers_add_tcase (s, "kept lost", 60);
  tcase_add_loop_test (tc, test_vt_kept_lost, 0, VT_NKINDS * VT_NKEEPS);
  tc = helpers_add_tcase (s, "seed", 60);
  tcase_add_loop_test (tc, test_vt_seed, 0, VT_NKINDS * 2);
  tc = helpers_add_tcase (s, "cap", 60);
  tcase_add_loop_test (tc, test_vt_cap, 0, HELPERS_NCODECS * 2 * VT_NKEEPS);
  tc = helpers_add_tcase (s, "spares", 60);
  tcase_add_test (tc, test_vt_spares);
  tcase_add_test (tc, test_vt_spares_rss);
  tc = helpers_add_tcase (s, "race", 180);
  tcase_add_loop_test (tc, test_vt_race, 0, HELPERS_NCODECS);
  return helpers_run (s);
}
