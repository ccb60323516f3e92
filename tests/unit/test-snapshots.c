/* memblock: Check unit tests of snapshots at store level.  A small
 * "world" of handles (devices and snapshots, each a store pointer and a
 * gate) is driven with the very store calls manage.c makes, in the same
 * order: a snapshot freezes the device's store and gives the device
 * store_create_like of it; a rollback gives it store_create_like of the
 * snapshot's store; deleting a handle lets its store go and folds every
 * layer that is nobody's handle and that one store alone reads through
 * (store_fold, then the parent put in the child's place).  Checked:
 * random operations against flat references (raw, zstd, lz4, clones of
 * a golden store), what the store holds once the snapshots are gone,
 * the memory cap over shared pages, snapshots and rollbacks racing
 * writers, and folds racing readers and writers.
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

#define SNAP_MAX_HANDLES 512

/* Fewer rounds under the sanitizers, which slow every copy down. */
#if defined(__SANITIZE_THREAD__)
#define SNAP_RANDOM_OPS 600
#define SNAP_RACE_SNAPSHOTS 80
#define SNAP_FOLD_ROUNDS 6
#elif defined(__SANITIZE_ADDRESS__)
#define SNAP_RANDOM_OPS 1500
#define SNAP_RACE_SNAPSHOTS 150
#define SNAP_FOLD_ROUNDS 15
#else
#define SNAP_RANDOM_OPS 2000
#define SNAP_RACE_SNAPSHOTS 250
#define SNAP_FOLD_ROUNDS 25
#endif

/* A device or a snapshot, as registry.c keeps one: its store (changed
 * only with its gate closed), its gate, and a flat reference.
 */
struct snap_handle {
  struct store *store;
  struct gate gate;
  unsigned char *ref;           /* size bytes, or NULL */
  struct snap_handle *snapshot_of;
  bool readonly;
};

/* The handles in registry order, and the limit all their stores share. */
struct snap_world {
  struct snap_handle *table[SNAP_MAX_HANDLES];
  size_t n;
  uint64_t size;
  struct store_limit limit;
  const struct store *unlimited;  /* a golden store outside the limit */
  unsigned folds, fold_failures;
  unsigned char *spare[SNAP_MAX_HANDLES];  /* freed references, reused */
  size_t nspare;
};

/* A reference buffer of w->size bytes, a spare one if there is one
 * (fresh ones cost page faults: a snapshot takes one each time).
 */
static unsigned char *
snap_ref_get (struct snap_world *w)
{
  unsigned char *ref = w->nspare ? w->spare[--w->nspare] : malloc (w->size);

  ck_assert_ptr_nonnull (ref);
  return ref;
}

/* Give a reference buffer back for snap_ref_get (NULL is fine). */
static void
snap_ref_put (struct snap_world *w, unsigned char *ref)
{
  if (ref && w->nspare < SNAP_MAX_HANDLES)
    w->spare[w->nspare++] = ref;
  else
    free (ref);
}

/* Free the spare references and the world. */
static void
snap_world_free (struct snap_world *w)
{
  while (w->nspare > 0)
    free (w->spare[--w->nspare]);
  free (w);
}

/* Make a handle for store (may be NULL until set) and append it. */
static struct snap_handle *
snap_add (struct snap_world *w, struct store *store, bool readonly,
          struct snap_handle *snapshot_of)
{
  struct snap_handle *h = calloc (1, sizeof *h);

  ck_assert_ptr_nonnull (h);
  ck_assert_uint_lt (w->n, SNAP_MAX_HANDLES);
  h->store = store;
  h->readonly = readonly;
  h->snapshot_of = snapshot_of;
  gate_init (&h->gate);
  w->table[w->n++] = h;
  return h;
}

/* Remove h from the table and free it, letting its store go (as
 * registry_remove and registry_destroy do).
 */
static void
snap_remove (struct snap_world *w, struct snap_handle *h)
{
  size_t i;

  for (i = 0; i < w->n; i++)
    if (w->table[i]->snapshot_of == h)
      w->table[i]->snapshot_of = NULL;
  for (i = 0; i < w->n && w->table[i] != h; i++)
    ;
  ck_assert_uint_lt (i, w->n);
  memmove (&w->table[i], &w->table[i + 1], (w->n - i - 1) * sizeof h);
  w->n--;
  gate_destroy (&h->gate);
  store_destroy (h->store);
  snap_ref_put (w, h->ref);
  free (h);
}

/* Whether store s lies on h's chain (manage_reads_through). */
static bool
snap_reads_through (const struct snap_handle *h, const struct store *s)
{
  for (const struct store *t = h->store; t; t = store_source (t))
    if (t == s)
      return true;
  return false;
}

/* Whether s is some handle's store (manage_is_device_store). */
static bool
snap_is_handle_store (const struct snap_world *w, const struct store *s)
{
  for (size_t i = 0; i < w->n; i++)
    if (w->table[i]->store == s)
      return true;
  return false;
}

/* Put parent in child's place everywhere (manage_replace). */
static void
snap_replace (struct snap_world *w, struct store *child, struct store *parent)
{
  for (size_t i = 0; i < w->n; i++) {
    if (w->table[i]->store == child) {
      w->table[i]->store = store_ref (parent);
      store_destroy (child);
      continue;
    }
    for (struct store *t = w->table[i]->store; t; t = store_source (t))
      if (store_source (t) == child) {
        store_set_source (t, parent);
        break;
      }
  }
}

/* Fold the first foldable layer (manage_fold_one); true if folded. */
static bool
snap_fold_one (struct snap_world *w)
{
  for (size_t i = 0; i < w->n; i++) {
    for (struct store *child = w->table[i]->store; store_source (child);
         child = store_source (child)) {
      struct store *parent = store_source (child);
      struct snap_handle *readers[SNAP_MAX_HANDLES];
      size_t nr = 0, k;
      int r;

      if (store_refs (parent) != 1 || snap_is_handle_store (w, parent) ||
          store_codec (parent) != store_codec (child))
        continue;
      for (k = 0; k < w->n; k++)
        if (snap_reads_through (w->table[k], child))
          readers[nr++] = w->table[k];
      for (k = 0; k < nr; k++)
        gate_close (&readers[k]->gate);
      r = store_fold (child);
      if (r == 0) {
        store_ref (parent);
        snap_replace (w, child, parent);
      }
      for (k = 0; k < nr; k++)
        gate_open (&readers[k]->gate);
      if (r == 0)
        store_destroy (parent);
      w->folds += r == 0;
      w->fold_failures += r != 0;
      return r == 0;
    }
  }
  return false;
}

/* Fold every layer that can be (manage_tidy). */
static void
snap_tidy (struct snap_world *w)
{
  while (snap_fold_one (w))
    ;
}

/* Snapshot dev (manage_snapshot): its store is frozen as the
 * snapshot's, and it goes on in store_create_like of it.
 */
static struct snap_handle *
snap_snapshot (struct snap_world *w, struct snap_handle *dev)
{
  struct store *top = store_create_like (dev->store);
  struct snap_handle *snap;

  ck_assert_ptr_nonnull (top);
  snap = snap_add (w, NULL, true, dev);
  gate_close (&dev->gate);
  snap->store = dev->store;
  dev->store = top;
  gate_open (&dev->gate);
  if (dev->ref) {
    snap->ref = snap_ref_get (w);
    memcpy (snap->ref, dev->ref, w->size);
  }
  return snap;
}

/* Roll dev back to snap (manage_rollback). */
static void
snap_rollback (struct snap_world *w, struct snap_handle *dev,
               struct snap_handle *snap)
{
  struct store *top, *old;

  ck_assert_ptr_eq (snap->snapshot_of, dev);
  top = store_create_like (snap->store);
  ck_assert_ptr_nonnull (top);
  gate_close (&dev->gate);
  old = dev->store;
  dev->store = top;
  gate_open (&dev->gate);
  store_destroy (old);
  snap_tidy (w);
  if (dev->ref && snap->ref)
    memcpy (dev->ref, snap->ref, w->size);
}

/* Delete h (manage_delete). */
static void
snap_delete (struct snap_world *w, struct snap_handle *h)
{
  snap_remove (w, h);
  snap_tidy (w);
}

/* Layers down s's chain. */
static unsigned
snap_depth (const struct store *s)
{
  unsigned d = 0;

  while ((s = store_source (s)) != NULL)
    d++;
  return d;
}

/* The cap's use is what the distinct live stores hold: a page shared by
 * layers is counted once, and no store is leaked.
 */
static void
snap_check_limit (const struct snap_world *w)
{
  const struct store *seen[4 * SNAP_MAX_HANDLES];
  size_t nseen = 0;
  uint64_t sum = 0;

  for (size_t i = 0; i < w->n; i++)
    for (const struct store *t = w->table[i]->store; t; t = store_source (t)) {
      size_t k;

      for (k = 0; k < nseen && seen[k] != t; k++)
        ;
      if (k < nseen)
        continue;
      ck_assert_uint_lt (nseen, sizeof seen / sizeof seen[0]);
      seen[nseen++] = t;
      if (t != w->unlimited)
        sum += helpers_held (t);
    }
  ck_assert_msg (atomic_load (&w->limit.used) == sum, "cap use %" PRIu64
                 " != %" PRIu64 " held by %zu live stores",
                 (uint64_t) atomic_load (&w->limit.used), sum, nseen);
}

/* Compare [off, off+len) of h, read through its gate, with its ref. */
static void
snap_check_range (struct snap_handle *h, unsigned char *buf, uint64_t len,
                  uint64_t off, const char *what, int op)
{
  struct gate_stripe *st = gate_enter (&h->gate);
  int r = store_read (h->store, buf, len, off);

  gate_leave (st, GATE_READ, len);
  ck_assert_int_eq (r, 0);
  if (memcmp (buf, h->ref + off, len) != 0) {
    uint64_t i;

    for (i = 0; buf[i] == h->ref[off + i]; i++)
      ;
    ck_abort_msg ("op %d: %s: read of %" PRIu64 " at %" PRIu64 ": byte %"
                  PRIu64 " is %#x, reference %#x", op, what, len, off,
                  off + i, buf[i], h->ref[off + i]);
  }
}

/* Fill len bytes for a write of seed: random, text, or a pattern. */
static void
snap_fill (unsigned char *buf, uint64_t len, uint64_t off, unsigned seed)
{
  switch (seed % 3) {
  case 0: helpers_fill_random (buf, len, seed); break;
  case 1: helpers_fill_text (buf, len, seed); break;
  default: helpers_fill (buf, len, off, seed); break;
  }
}

/* A random range in [0, size): mostly small, some page aligned. */
static void
snap_pick (unsigned *seed, uint64_t size, uint64_t *off, uint64_t *len)
{
  uint64_t o = (uint64_t) rand_r (seed) % size;
  uint64_t l = 1 + (uint64_t) rand_r (seed) % (rand_r (seed) % 8 ? 20000
                                                : 300000);

  if (rand_r (seed) % 2) {
    o &= ~(STORE_PAGE - 1);
    l = (l + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
  }
  *off = o;
  *len = MIN64 (l, size - o);
}

/* The configurations of the random test: codec, and whether the device
 * is a clone of a golden store.
 */
#define SNAP_NCONFIGS 5
#define SNAP_NSEEDS 3
static const struct {
  enum codec codec;
  bool golden;
  const char *name;
} snap_configs[SNAP_NCONFIGS] = {
  { CODEC_NONE, false, "raw" },
  { CODEC_ZSTD, false, "zstd" },
  { CODEC_LZ4, false, "lz4" },
  { CODEC_NONE, true, "clone of golden, raw" },
  { CODEC_LZ4, true, "clone of golden, lz4" },
};

/* What a flat store holding h's reference would allocate: a fresh store
 * like h's bottom (a clone of golden where there is one) with every
 * page that differs from golden's written.
 */
static uint64_t
snap_flat_allocated (struct snap_world *w, struct snap_handle *h,
                     struct snap_handle *golden, unsigned shift,
                     enum codec c)
{
  struct store *flat = golden ? store_create_clone (golden->store, NULL)
                              : store_create (w->size, shift, NULL);
  uint64_t a;

  ck_assert_ptr_nonnull (flat);
  ck_assert_int_eq (store_set_codec (flat, c), 0);
  for (uint64_t off = 0; off < w->size; off += STORE_PAGE) {
    uint64_t n = MIN64 (STORE_PAGE, w->size - off);
    bool same = golden ? memcmp (h->ref + off, golden->ref + off, n) == 0
                       : helpers_all_zero (h->ref + off, n);

    if (!same)
      ck_assert_int_eq (store_write (flat, h->ref + off, n, off), 0);
  }
  a = store_allocated (flat);
  store_destroy (flat);
  return a;
}

/* Random writes, zeroes, trims, snapshots, rollbacks to a random
 * snapshot, deletes (with folds) and reads on one device, every read
 * checked against the flat references of the device and of each
 * snapshot; then every snapshot deleted: the chain is as deep as it
 * began and the store holds within 5% of a flat store's memory.
 */
START_TEST (test_random_ops)
{
  const unsigned cfg = _i / SNAP_NSEEDS, seedno = _i % SNAP_NSEEDS;
  const unsigned shifts[SNAP_NSEEDS] = { 16, 14, 20 };
  const unsigned shift = shifts[seedno];
  struct snap_world *w = calloc (1, sizeof *w);
  struct snap_handle *golden = NULL, *dev;
  unsigned char *buf = malloc (4 * MiB);
  unsigned seed = 1000 + _i, depth0;
  unsigned counts[8] = { 0 };
  uint64_t got, flat;

  ck_assert_ptr_nonnull (w);
  w->size = seedno == 1 ? 2 * MiB - 1000 : 2 * MiB;
  ck_assert_ptr_nonnull (buf);  /* odd last page too */
  w->limit.max = UINT64_MAX;
  if (snap_configs[cfg].golden) {
    struct store *g = helpers_make_source (w->size, shift, 77);

    golden = snap_add (w, g, true, NULL);
    w->unlimited = g;
    golden->ref = malloc (w->size);
    ck_assert_int_eq (store_read (g, golden->ref, w->size, 0), 0);
    dev = snap_add (w, store_create_clone (g, &w->limit), false, NULL);
    ck_assert_ptr_nonnull (dev->store);
    ck_assert_int_eq (store_set_codec (dev->store, snap_configs[cfg].codec),
                      0);
    dev->ref = malloc (w->size);
    memcpy (dev->ref, golden->ref, w->size);
  }
  else {
    dev = snap_add (w, helpers_create_codec (w->size, shift, &w->limit,
                                             snap_configs[cfg].codec),
                    false, NULL);
    dev->ref = calloc (1, w->size);
  }
  depth0 = snap_depth (dev->store);
  for (int op = 0; op < SNAP_RANDOM_OPS; op++) {
    unsigned r = rand_r (&seed) % 100;
    size_t nsnaps = w->n - 1 - (golden != NULL);
    struct snap_handle *pick = nsnaps ? w->table[w->n - 1 - rand_r (&seed)
                                                 % nsnaps] : NULL;
    uint64_t off, len, a, b;

    snap_pick (&seed, w->size, &off, &len);
    if (r >= 55 && r < 62 && nsnaps >= 10)
      r = 71;                   /* enough snapshots: delete one */
    if (r < 37) {
      unsigned ws = rand_r (&seed);

      snap_fill (buf, len, off, ws);
      ck_assert_int_eq (store_write (dev->store, buf, len, off), 0);
      memcpy (dev->ref + off, buf, len);
      counts[0]++;
    }
    else if (r < 47) {
      ck_assert_int_eq (store_zero (dev->store, len, off), 0);
      memset (dev->ref + off, 0, len);
      counts[1]++;
    }
    else if (r < 55) {
      ck_assert_int_eq (store_trim (dev->store, len, off), 0);
      a = (off + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
      b = off + len == w->size ? w->size : (off + len) & ~(STORE_PAGE - 1);
      if (a < b)
        memset (dev->ref + a, 0, b - a);
      counts[2]++;
    }
    else if (r < 62) {
      snap_snapshot (w, dev);
      counts[3]++;
    }
    else if (r < 67 && pick) {
      snap_rollback (w, dev, pick);
      counts[4]++;
    }
    else if (r >= 71 && r < 78 && pick) {
      snap_delete (w, pick);
      counts[5]++;
    }
    else {
      struct snap_handle *h = pick && rand_r (&seed) % 2 ? pick : dev;

      snap_check_range (h, buf, len, off, h == dev ? "device" : "snapshot",
                        op);
      counts[6]++;
    }
    if (op % 100 == 99)
      snap_check_limit (w);
    if (op % 500 == 499)
      for (size_t i = 0; i < w->n; i++)
        snap_check_range (w->table[i], buf, w->size, 0, "full", op);
  }
  /* Every snapshot goes, in a random order: everything folds away. */
  while (w->n > 1 + (golden != NULL)) {
    size_t first = 1 + (golden != NULL);

    snap_delete (w, w->table[first + rand_r (&seed) % (w->n - first)]);
    snap_check_limit (w);
    snap_check_range (dev, buf, w->size, 0, "device after a delete", -1);
  }
  ck_assert_uint_eq (snap_depth (dev->store), depth0);
  ck_assert_uint_eq (w->fold_failures, 0);
  got = store_allocated (dev->store);
  flat = snap_flat_allocated (w, dev, golden, shift, snap_configs[cfg].codec);
  fprintf (stderr, "random %s, seed %u (%u KiB chunks): %u writes, %u zeroes,"
           " %u trims, %u snapshots, %u rollbacks, %u deletes, %u reads, "
           "%u folds; allocated %" PRIu64 " KiB, flat %" PRIu64 " KiB\n",
           snap_configs[cfg].name, seedno, (1u << shift) / 1024, counts[0],
           counts[1], counts[2], counts[3], counts[4], counts[5], counts[6],
           w->folds, got / KiB, flat / KiB);
  ck_assert_uint_gt (counts[3], 0);
  ck_assert_uint_gt (w->folds, 0);
  ck_assert_msg (got * 100 <= flat * 105, "after every snapshot went: %"
                 PRIu64 " bytes allocated, a flat store %" PRIu64, got, flat);
  snap_check_limit (w);
  snap_remove (w, dev);
  if (golden)
    snap_remove (w, golden);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 0);
  free (buf);
  snap_world_free (w);
}
END_TEST

/* Write pages [first, first+n) of h with a pattern of seed, in its
 * reference too; the store's result.
 */
static int
snap_write_pages (struct snap_handle *h, uint64_t first, uint64_t n,
                  unsigned seed)
{
  unsigned char *buf = malloc (n * STORE_PAGE);
  int r;

  helpers_fill (buf, n * STORE_PAGE, first * STORE_PAGE, seed);
  r = store_write (h->store, buf, n * STORE_PAGE, first * STORE_PAGE);
  if (r == 0)
    memcpy (h->ref + first * STORE_PAGE, buf, n * STORE_PAGE);
  free (buf);
  return r;
}

/* Every byte of every handle reads as its reference. */
static void
snap_check_all (struct snap_world *w, const char *what)
{
  unsigned char *buf = malloc (w->size);

  for (size_t i = 0; i < w->n; i++)
    snap_check_range (w->table[i], buf, w->size, 0, what, -1);
  free (buf);
}

/* Bytes the live stores hold beside their pages: chunk headers. */
static uint64_t
snap_meta (const struct snap_world *w)
{
  uint64_t m = 0;

  for (const struct store *t = w->table[0]->store; t; t = store_source (t))
    m += store_metadata (t);
  return m;
}

/* The cap counts a page shared by a snapshot and its device once: after
 * a snapshot and overwrites, what is charged is the distinct pages.
 * Writes past the cap fail with ENOSPC and change nothing; trims and
 * rollbacks work at the cap; a fold that only overwrites works at a full
 * cap, one that needs pages fails with ENOSPC, changes no reader's data,
 * and succeeds once there is room.
 */
START_TEST (test_cap_shared)
{
  struct snap_world *w = calloc (1, sizeof *w);
  struct snap_handle *dev, *snap;
  unsigned char *before = malloc (MiB), *page = malloc (STORE_PAGE);
  uint64_t used;

  w->size = MiB;
  w->limit.max = UINT64_MAX;
  dev = snap_add (w, store_create (w->size, 16, &w->limit), false, NULL);
  dev->ref = calloc (1, w->size);
  /* 32 pages in chunks 0 and 1. */
  ck_assert_int_eq (snap_write_pages (dev, 0, 32, 1), 0);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 32 * STORE_PAGE
                     + snap_meta (w));
  snap = snap_snapshot (w, dev);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 32 * STORE_PAGE
                     + snap_meta (w));
  /* 8 pages overwritten: 40 distinct pages, 24 of them shared. */
  ck_assert_int_eq (snap_write_pages (dev, 0, 8, 2), 0);
  ck_assert_uint_eq (store_allocated (dev->store)
                     + store_allocated (snap->store), 40 * STORE_PAGE);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 40 * STORE_PAGE
                     + snap_meta (w));
  snap_check_limit (w);
  /* Room for 4 more pages, in chunks the device has. */
  w->limit.max = atomic_load (&w->limit.used) + 4 * STORE_PAGE;
  ck_assert_int_eq (snap_write_pages (dev, 8, 4, 3), 0);
  used = atomic_load (&w->limit.used);
  ck_assert_uint_eq (used, w->limit.max);
  ck_assert_uint_eq (used, 44 * STORE_PAGE + snap_meta (w));
  memcpy (before, dev->ref, w->size);
  /* At the cap: a shared page, part of one, a zero of part of one, a
   * shared page in a chunk the device lacks, and a hole all need memory
   * and fail, changing nothing.
   */
  errno = 0;
  ck_assert_int_eq (snap_write_pages (dev, 12, 1, 4), -1);
  ck_assert_int_eq (errno, ENOSPC);
  memset (page, 0x5a, 100);
  errno = 0;
  ck_assert_int_eq (store_write (dev->store, page, 100,
                                 13 * STORE_PAGE + 7), -1);
  ck_assert_int_eq (errno, ENOSPC);
  errno = 0;
  ck_assert_int_eq (store_zero (dev->store, 100, 14 * STORE_PAGE + 7), -1);
  ck_assert_int_eq (errno, ENOSPC);
  errno = 0;
  ck_assert_int_eq (snap_write_pages (dev, 20, 1, 5), -1);
  ck_assert_int_eq (errno, ENOSPC);
  errno = 0;
  ck_assert_int_eq (snap_write_pages (dev, 60, 1, 5), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_eq (atomic_load (&w->limit.used), used);
  ck_assert (memcmp (before, dev->ref, w->size) == 0);
  snap_check_all (w, "after refused writes");
  /* Its own pages can be written at the cap; shared ones trimmed. */
  ck_assert_int_eq (snap_write_pages (dev, 2, 3, 6), 0);
  ck_assert_int_eq (store_trim (dev->store, STORE_PAGE, 15 * STORE_PAGE), 0);
  memset (dev->ref + 15 * STORE_PAGE, 0, STORE_PAGE);
  ck_assert_uint_eq (atomic_load (&w->limit.used), used);
  snap_check_all (w, "at the cap");
  snap_check_limit (w);
  /* A rollback at the cap takes nothing and gives the 12 pages back. */
  snap_rollback (w, dev, snap);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 32 * STORE_PAGE
                     + snap_meta (w));
  snap_check_all (w, "after a rollback at the cap");
  /* Overwrites only, then a delete at a full cap: the fold needs no
   * page, and the 8 pages the two held twice come back.
   */
  w->limit.max = UINT64_MAX;
  ck_assert_int_eq (snap_write_pages (dev, 0, 8, 7), 0);
  w->limit.max = atomic_load (&w->limit.used);
  snap_delete (w, snap);
  ck_assert_uint_eq (w->folds, 1);
  ck_assert_uint_eq (snap_depth (dev->store), 0);
  ck_assert_uint_eq (store_allocated (dev->store), 32 * STORE_PAGE);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 32 * STORE_PAGE
                     + snap_meta (w));
  snap_check_all (w, "after a fold at the cap");
  /* New pages in a hole, then a delete at a full cap: the fold fails
   * with ENOSPC, the device reads the same, and folds later.
   */
  w->limit.max = UINT64_MAX;
  snap = snap_snapshot (w, dev);
  ck_assert_int_eq (snap_write_pages (dev, 40, 8, 8), 0);
  ck_assert_int_eq (snap_write_pages (dev, 1, 2, 9), 0);
  w->limit.max = atomic_load (&w->limit.used);
  snap_delete (w, snap);
  ck_assert_uint_eq (w->fold_failures, 1);
  ck_assert_uint_eq (snap_depth (dev->store), 1);
  ck_assert_uint_le (atomic_load (&w->limit.used), w->limit.max);
  snap_check_all (w, "after a refused fold");
  snap_check_limit (w);
  w->limit.max = UINT64_MAX;
  snap_tidy (w);
  ck_assert_uint_eq (w->folds, 2);
  ck_assert_uint_eq (snap_depth (dev->store), 0);
  ck_assert_uint_eq (store_allocated (dev->store), 40 * STORE_PAGE);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 40 * STORE_PAGE
                     + snap_meta (w));
  snap_check_all (w, "after the fold");
  snap_remove (w, dev);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 0);
  free (before);
  free (page);
  snap_world_free (w);
}
END_TEST

/* Deleting the read-only source of a clone whose codec differs (a raw
 * golden image, an lz4 device over it) leaves a layer nobody names that
 * one store reads through: manage_tidy folds the device into it.  The
 * device must read the same and keep its own codec, as device_list
 * reports it from store_codec.
 */
START_TEST (test_fold_keeps_codec)
{
  struct snap_world *w = calloc (1, sizeof *w);
  struct snap_handle *golden, *dev;
  struct store *g;
  unsigned char *buf = malloc (64 * KiB);

  w->size = MiB;
  w->limit.max = UINT64_MAX;
  g = helpers_create_codec (w->size, 16, &w->limit,
                            _i == 0 ? CODEC_NONE : CODEC_ZSTD);
  golden = snap_add (w, g, true, NULL);
  golden->ref = calloc (1, w->size);
  helpers_fill (buf, 64 * KiB, 0, 3);
  ck_assert_int_eq (store_write (g, buf, 64 * KiB, 0), 0);
  memcpy (golden->ref, buf, 64 * KiB);
  dev = snap_add (w, store_create_clone (g, &w->limit), false, NULL);
  ck_assert_int_eq (store_set_codec (dev->store,
                                     _i == 0 ? CODEC_LZ4 : CODEC_NONE), 0);
  dev->ref = malloc (w->size);
  memcpy (dev->ref, golden->ref, w->size);
  helpers_fill_text (buf, 16 * KiB, 4);
  ck_assert_int_eq (store_write (dev->store, buf, 16 * KiB, 8 * KiB), 0);
  memcpy (dev->ref + 8 * KiB, buf, 16 * KiB);
  snap_delete (w, golden);
  snap_check_all (w, "after its source went");
  snap_check_limit (w);
  fprintf (stderr, "clone's source deleted: %u folds, the device's codec %s"
           " (was %s)\n", w->folds, codec_name (store_codec (dev->store)),
           _i == 0 ? "lz4" : "none");
  ck_assert_msg (store_codec (dev->store) == (_i == 0 ? CODEC_LZ4
                                                      : CODEC_NONE),
                 "the device's codec changed to its deleted source's (%s)",
                 codec_name (store_codec (dev->store)));
  snap_remove (w, dev);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 0);
  free (buf);
  snap_world_free (w);
}
END_TEST

/* Snapshots and rollbacks racing writers.  Each writer writes whole
 * requests, every 512-byte sector of one holding its tag, and logs the
 * clock before its gate_enter and after its gate_leave; the main thread
 * logs the clock before each gate_close and after each gate_open.  A
 * request done before a snapshot's close must be in it (unless a
 * request not wholly before it overwrote it), one begun after its open
 * must not, and one seen must be seen whole.
 */
#define RACE_SIZE (512 * KiB)
#define RACE_SECTOR 512
#define RACE_SECTORS (RACE_SIZE / RACE_SECTOR)
#define RACE_WRITERS 2
#define RACE_LOG (1u << 18)

struct snap_req {
  uint64_t off, len, t_start, t_end, tag;
};

struct snap_writer {
  struct snap_handle *dev;
  _Atomic uint64_t *clock;
  _Atomic bool *stop;
  struct snap_req *log;
  unsigned id;
  _Atomic unsigned n;           /* requests logged */
  int failures;
  pthread_t thread;
};

/* The tag of request seq of writer id: never zero. */
static uint64_t
snap_tag (unsigned id, unsigned seq)
{
  return ((uint64_t) (id + 1) << 32) | (seq + 1);
}

/* A writer: requests of 4 KiB to 256 KiB at sector offsets, until told
 * to stop or its log is full.
 */
static void *
snap_writer_run (void *arg)
{
  struct snap_writer *wr = arg;
  uint64_t *buf = malloc (256 * KiB);
  unsigned seed = 31 + wr->id;

  while (!atomic_load (&wr->stop[0]) && wr->n < RACE_LOG) {
    struct snap_req *rq = &wr->log[wr->n];
    uint64_t len = (4 * KiB) << (rand_r (&seed) % 7);
    struct gate_stripe *st;

    len += (uint64_t) (rand_r (&seed) % 8) * RACE_SECTOR;
    len = MIN64 (len, 256 * KiB);
    rq->len = len;
    rq->off = (uint64_t) (rand_r (&seed) % ((RACE_SIZE - len) / RACE_SECTOR
                                            + 1)) * RACE_SECTOR;
    rq->tag = snap_tag (wr->id, wr->n);
    for (uint64_t i = 0; i < len / 8; i++)
      buf[i] = rq->tag;
    rq->t_start = atomic_fetch_add (wr->clock, 1);
    st = gate_enter (&wr->dev->gate);
    if (store_write (wr->dev->store, buf, len, rq->off) != 0)
      wr->failures++;
    gate_leave (st, GATE_WRITE, len);
    rq->t_end = atomic_fetch_add (wr->clock, 1);
    wr->n++;
    race_delay (&seed, 30);
  }
  free (buf);
  return NULL;
}

/* A snapshot of the race, or a rollback (base >= 0: to snapshot base). */
struct snap_event {
  struct snap_handle *snap;     /* the snapshot, or NULL for a rollback */
  int base;
  uint64_t c_close, c_open;
};

/* The tag in every word of sector s of buf, or UINT64_MAX if torn. */
static uint64_t
snap_sector_tag (const unsigned char *buf, uint64_t s)
{
  const uint64_t *w = (const uint64_t *) (buf + s * RACE_SECTOR);

  for (unsigned i = 1; i < RACE_SECTOR / 8; i++)
    if (w[i] != w[0])
      return UINT64_MAX;
  return w[0];
}

/* The request a tag names, or NULL. */
static const struct snap_req *
snap_lookup (struct snap_writer *wr, uint64_t tag)
{
  uint64_t id = (tag >> 32) - 1, seq = (tag & 0xffffffff) - 1;

  if (tag == 0 || id >= RACE_WRITERS || seq >= wr[id].n)
    return NULL;
  return &wr[id].log[seq];
}

/* Whether request r covers sector s. */
static bool
snap_covers (const struct snap_req *r, uint64_t s)
{
  return s * RACE_SECTOR >= r->off && s * RACE_SECTOR < r->off + r->len;
}

/* qsort: requests by t_end. */
static int
snap_by_end (const void *a, const void *b)
{
  const struct snap_req *x = *(const struct snap_req *const *) a;
  const struct snap_req *y = *(const struct snap_req *const *) b;

  return x->t_end < y->t_end ? -1 : x->t_end > y->t_end;
}

/* Check every snapshot of the race against the writers' logs (see
 * above); returns the requests that were in flight across a swap.
 */
static uint64_t
snap_verify (struct snap_event *ev, unsigned nev, struct snap_writer *wr)
{
  unsigned char *img = malloc (RACE_SIZE), *base = calloc (1, RACE_SIZE);
  uint64_t *maxstart = calloc (RACE_SECTORS, sizeof *maxstart);
  uint64_t *btag = calloc (RACE_SECTORS, sizeof *btag);
  unsigned char *seen = NULL;
  const struct snap_req **all;
  size_t nall = 0, p = 0, ri, seen_n = 0;
  uint64_t rc_close = 0, rc_open = 0, straddle = 0;

  for (unsigned i = 0; i < RACE_WRITERS; i++)
    seen_n += wr[i].n;
  all = malloc (seen_n * sizeof *all);
  seen = calloc (seen_n, 1);
  for (unsigned i = 0; i < RACE_WRITERS; i++)
    for (unsigned k = 0; k < wr[i].n; k++)
      all[nall++] = &wr[i].log[k];
  qsort (all, nall, sizeof *all, snap_by_end);
  for (unsigned e = 0; e < nev; e++) {
    for (ri = 0; ri < nall; ri++)
      straddle += all[ri]->t_start < ev[e].c_close &&
                  all[ri]->t_end > ev[e].c_close;
    if (ev[e].snap == NULL) {   /* a rollback: a new era on its base */
      ck_assert_int_eq (store_read (ev[ev[e].base].snap->store, base,
                                    RACE_SIZE, 0), 0);
      for (uint64_t s = 0; s < RACE_SECTORS; s++)
        btag[s] = snap_sector_tag (base, s);
      memset (maxstart, 0, RACE_SECTORS * sizeof *maxstart);
      rc_close = ev[e].c_close;
      rc_open = ev[e].c_open;
      continue;
    }
    /* Requests done before this close, and begun after the era's open:
     * they must be in.
     */
    for (; p < nall && all[p]->t_end < ev[e].c_close; p++)
      if (all[p]->t_start > rc_open)
        for (uint64_t s = all[p]->off / RACE_SECTOR;
             s < (all[p]->off + all[p]->len) / RACE_SECTOR; s++)
          if (all[p]->t_start > maxstart[s])
            maxstart[s] = all[p]->t_start;
    ck_assert_int_eq (store_read (ev[e].snap->store, img, RACE_SIZE, 0), 0);
    memset (seen, 0, nall);
    for (uint64_t s = 0; s < RACE_SECTORS; s++) {
      uint64_t v = snap_sector_tag (img, s);
      const struct snap_req *r = snap_lookup (wr, v);

      ck_assert_msg (v != UINT64_MAX, "snapshot %u: sector %" PRIu64
                     " torn", e, s);
      if (v == btag[s]) {
        ck_assert_msg (maxstart[s] == 0, "snapshot %u: sector %" PRIu64
                       " lost a request done before the snapshot", e, s);
        continue;
      }
      ck_assert_msg (r != NULL && snap_covers (r, s), "snapshot %u: sector %"
                     PRIu64 " holds %#" PRIx64 ", no request there", e, s, v);
      ck_assert_msg (r->t_end > rc_close, "snapshot %u: sector %" PRIu64
                     " holds a request rolled back", e, s);
      ck_assert_msg (r->t_start < ev[e].c_open, "snapshot %u: sector %"
                     PRIu64 " holds a request begun after it", e, s);
      ck_assert_msg (r->t_end > maxstart[s], "snapshot %u: sector %" PRIu64
                     " holds a request older than one done before it", e, s);
      seen[(r->tag >> 32) - 1 == 0 ? (r - wr[0].log)
           : wr[0].n + (r - wr[1].log)] = 1;
    }
    /* Each request seen is seen whole, but where one not wholly
     * before it overwrote it.
     */
    for (ri = 0; ri < nall; ri++) {
      const struct snap_req *r = ri < wr[0].n ? &wr[0].log[ri]
                                              : &wr[1].log[ri - wr[0].n];

      if (!seen[ri])
        continue;
      for (uint64_t s = r->off / RACE_SECTOR;
           s < (r->off + r->len) / RACE_SECTOR; s++) {
        const struct snap_req *o = snap_lookup (wr, snap_sector_tag (img, s));

        ck_assert_msg (o != NULL && o->t_end > r->t_start,
                       "snapshot %u: request %#" PRIx64 " only partly in it "
                       "(sector %" PRIu64 ")", e, r->tag, s);
      }
    }
  }
  free (all);
  free (seen);
  free (img);
  free (base);
  free (btag);
  free (maxstart);
  return straddle;
}

/* Hundreds of snapshots, and rollbacks to random ones, while two
 * threads write; each checked afterwards (snap_verify).
 */
START_TEST (test_race_snapshots)
{
  static const enum codec codecs[] = { CODEC_NONE, CODEC_LZ4 };
  struct snap_world *w = calloc (1, sizeof *w);
  const unsigned nev = SNAP_RACE_SNAPSHOTS + 1;
  struct snap_event *ev = calloc (nev, sizeof *ev);
  struct snap_writer wr[RACE_WRITERS];
  _Atomic uint64_t clock = 1;
  _Atomic bool stop = false;
  struct snap_handle *dev;
  unsigned seed = 5 + _i, nsnaps = 0, rollbacks = 0, e;
  uint64_t straddle, requests = 0;
  int failures = 0;

  w->size = RACE_SIZE;
  w->limit.max = UINT64_MAX;
  dev = snap_add (w, helpers_create_codec (RACE_SIZE, 16, &w->limit,
                                           codecs[_i]), false, NULL);
  for (unsigned i = 0; i < RACE_WRITERS; i++) {
    wr[i] = (struct snap_writer) { .dev = dev, .clock = &clock,
                                   .stop = &stop, .id = i };
    wr[i].log = malloc (RACE_LOG * sizeof *wr[i].log);
    ck_assert_int_eq (pthread_create (&wr[i].thread, NULL, snap_writer_run,
                                      &wr[i]), 0);
  }
  /* Both writers under way before the first snapshot. */
  for (unsigned i = 0; i < RACE_WRITERS; i++)
    while (atomic_load (&wr[i].n) < 2)
      sched_yield ();
  for (e = 0; e < nev - 1; e++) {
    race_delay (&seed, 200);
    if (nsnaps > 0 && rand_r (&seed) % 16 == 0) {
      /* A rollback to a random snapshot, timed as manage_rollback. */
      unsigned b;
      struct store *top, *old;

      do
        b = rand_r (&seed) % e;
      while (ev[b].snap == NULL);
      top = store_create_like (ev[b].snap->store);
      ck_assert_ptr_nonnull (top);
      ev[e].base = b;
      ev[e].c_close = atomic_fetch_add (&clock, 1);
      gate_close (&dev->gate);
      old = dev->store;
      dev->store = top;
      gate_open (&dev->gate);
      ev[e].c_open = atomic_fetch_add (&clock, 1);
      store_destroy (old);
      snap_tidy (w);
      rollbacks++;
      continue;
    }
    /* A snapshot, timed as manage_snapshot. */
    {
      struct store *top = store_create_like (dev->store);
      struct snap_handle *snap;

      ck_assert_ptr_nonnull (top);
      snap = snap_add (w, NULL, true, dev);
      ev[e].c_close = atomic_fetch_add (&clock, 1);
      gate_close (&dev->gate);
      snap->store = dev->store;
      dev->store = top;
      gate_open (&dev->gate);
      ev[e].c_open = atomic_fetch_add (&clock, 1);
      ev[e].snap = snap;
      nsnaps++;
    }
  }
  atomic_store (&stop, true);
  for (unsigned i = 0; i < RACE_WRITERS; i++) {
    pthread_join (wr[i].thread, NULL);
    failures += wr[i].failures;
    requests += wr[i].n;
  }
  /* The last: the device once the writers are done. */
  ev[e].snap = snap_snapshot (w, dev);
  ev[e].c_close = ev[e].c_open = atomic_fetch_add (&clock, 1);
  ck_assert_int_eq (failures, 0);
  snap_check_limit (w);
  straddle = snap_verify (ev, nev, wr);
  fprintf (stderr, "snapshots racing writers (%s): %u snapshots, %u "
           "rollbacks, %" PRIu64 " requests, %" PRIu64 " in flight across "
           "a swap, chain %u deep\n", codec_name (codecs[_i]), nsnaps + 1,
           rollbacks, requests, straddle, snap_depth (dev->store));
  ck_assert_uint_gt (straddle, 0);
  ck_assert_uint_gt (rollbacks, 0);
  /* Every snapshot goes: the layers fold back into one store. */
  while (w->n > 1)
    snap_delete (w, w->table[1 + rand_r (&seed) % (w->n - 1)]);
  ck_assert_uint_eq (snap_depth (dev->store), 0);
  snap_check_limit (w);
  snap_remove (w, dev);
  ck_assert_uint_eq (atomic_load (&w->limit.used), 0);
  for (unsigned i = 0; i < RACE_WRITERS; i++)
    free (wr[i].log);
  free (ev);
  snap_world_free (w);
}
END_TEST

/* The thread racing the folds: reads of the device and of one kept
 * snapshot through their gates, and, if it writes, writes into the
 * device (it alone changes the device's reference).
 */
struct snap_racer {
  struct snap_handle *dev, *kept;
  uint64_t size;
  bool writes;
  _Atomic bool stop;
  unsigned reads, bad;
  unsigned seed;
  char what[160];
  pthread_t thread;
};

/* The racer's loop. */
static void *
snap_racer_run (void *arg)
{
  struct snap_racer *rc = arg;
  unsigned char *buf = malloc (320 * KiB);

  while (!atomic_load (&rc->stop)) {
    struct snap_handle *h = rand_r (&rc->seed) % 2 ? rc->dev : rc->kept;
    struct gate_stripe *st;
    uint64_t off, len;
    int r;

    snap_pick (&rc->seed, rc->size, &off, &len);
    if (rc->writes && h == rc->dev && rand_r (&rc->seed) % 3 == 0) {
      snap_fill (buf, len, off, rand_r (&rc->seed));
      st = gate_enter (&h->gate);
      r = store_write (h->store, buf, len, off);
      gate_leave (st, GATE_WRITE, len);
      if (r == 0)
        memcpy (h->ref + off, buf, len);
      else if (!rc->bad++)
        snprintf (rc->what, sizeof rc->what, "write failed: %s",
                  strerror (errno));
      continue;
    }
    st = gate_enter (&h->gate);
    r = store_read (h->store, buf, len, off);
    gate_leave (st, GATE_READ, len);
    rc->reads++;
    if (r != 0 || memcmp (buf, h->ref + off, len) != 0) {
      if (!rc->bad++)
        snprintf (rc->what, sizeof rc->what, "%s: read of %" PRIu64 " at %"
                  PRIu64 " differs", h == rc->dev ? "device" : "snapshot",
                  len, off);
    }
  }
  free (buf);
  return NULL;
}

/* Folds racing readers (and writers): a device with eight snapshots,
 * each over its own writes; a thread reads the device and one kept
 * snapshot (and writes the device) while the others are deleted in a
 * random order, each delete folding layers under the gates.  Every read
 * equals the reference, round after round.
 */
START_TEST (test_race_folds)
{
  static const enum codec codecs[] = {
    CODEC_NONE, CODEC_ZSTD, CODEC_NONE, CODEC_LZ4,
  };
  unsigned char *buf = malloc (320 * KiB);
  unsigned seed = 300 + _i, folds = 0, reads = 0;

  for (unsigned round = 0; round < SNAP_FOLD_ROUNDS; round++) {
    struct snap_world *w = calloc (1, sizeof *w);
    struct snap_handle *dev, *snaps[8];
    struct snap_racer rc = { .writes = _i >= 2, .seed = seed + round };
    unsigned order[8], kept = rand_r (&seed) % 8;

    w->size = MiB;
    w->limit.max = UINT64_MAX;
    dev = snap_add (w, helpers_create_codec (w->size, 16, &w->limit,
                                             codecs[_i]), false, NULL);
    dev->ref = calloc (1, w->size);
    for (unsigned k = 0; k < 8; k++) {
      for (unsigned j = 0; j < 6; j++) {
        uint64_t off, len;

        snap_pick (&seed, w->size, &off, &len);
        snap_fill (buf, len, off, rand_r (&seed));
        ck_assert_int_eq (store_write (dev->store, buf, len, off), 0);
        memcpy (dev->ref + off, buf, len);
      }
      snaps[k] = snap_snapshot (w, dev);
      order[k] = k;
    }
    for (unsigned k = 7; k > 0; k--) {
      unsigned j = rand_r (&seed) % (k + 1), t = order[k];

      order[k] = order[j];
      order[j] = t;
    }
    rc.dev = dev;
    rc.kept = snaps[kept];
    rc.size = w->size;
    ck_assert_int_eq (pthread_create (&rc.thread, NULL, snap_racer_run, &rc),
                      0);
    for (unsigned k = 0; k < 8; k++) {
      race_delay (&seed, 400);
      if (order[k] != kept)
        snap_delete (w, snaps[order[k]]);
    }
    race_delay (&seed, 400);
    atomic_store (&rc.stop, true);
    pthread_join (rc.thread, NULL);
    ck_assert_msg (rc.bad == 0, "round %u: %u bad reads of %u: %s", round,
                   rc.bad, rc.reads, rc.what);
    ck_assert_uint_eq (w->fold_failures, 0);
    snap_check_limit (w);
    snap_check_all (w, "after the folds");
    folds += w->folds;
    reads += rc.reads;
    snap_delete (w, rc.kept);
    ck_assert_uint_eq (snap_depth (dev->store), 0);
    snap_check_all (w, "after every snapshot went");
    snap_remove (w, dev);
    ck_assert_uint_eq (atomic_load (&w->limit.used), 0);
    snap_world_free (w);
  }
  fprintf (stderr, "folds racing %s (%s): %u rounds, %u folds, %u reads\n",
           _i >= 2 ? "reads and writes" : "reads", codec_name (codecs[_i]),
           SNAP_FOLD_ROUNDS, folds, reads);
  ck_assert_uint_ge (folds, SNAP_FOLD_ROUNDS * 7);
  free (buf);
}
END_TEST

/* Run the snapshot suite. */
int
main (void)
{
  Suite *s = suite_create ("snapshots");
  TCase *tc;

  tc = helpers_add_tcase (s, "random", 120);
  tcase_add_loop_test (tc, test_random_ops, 0, SNAP_NCONFIGS * SNAP_NSEEDS);
  tc = helpers_add_tcase (s, "cap", 30);
  tcase_add_test (tc, test_cap_shared);
  tc = helpers_add_tcase (s, "codec", 30);
  tcase_add_loop_test (tc, test_fold_keeps_codec, 0, 2);
  tc = helpers_add_tcase (s, "race snapshots", 180);
  tcase_add_loop_test (tc, test_race_snapshots, 0, 2);
  tc = helpers_add_tcase (s, "race folds", 180);
  tcase_add_loop_test (tc, test_race_folds, 0, 4);
  return helpers_run (s);
}
