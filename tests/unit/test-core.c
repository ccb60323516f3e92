/* memblock: Check unit tests of the store's core: creation, bounds,
 * round trips, zero and trim, extents, the memory cap, store_fill, and
 * random and threaded I/O against what was written.
 */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "helpers.h"
#include "store.h"

/* Sizes past STORE_MAX_SIZE and chunk shifts out of range are refused. */
START_TEST (test_create_bad)
{
  errno = 0;
  ck_assert_ptr_null (store_create (STORE_MAX_SIZE + 1, 24, NULL));
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_null (store_create (MiB, 11, NULL));
  ck_assert_ptr_null (store_create (MiB, 31, NULL));
}
END_TEST

/* Unwritten data reads as zeroes and holds no memory. */
START_TEST (test_unwritten_reads_zero)
{
  struct store *s = store_create (16 * MiB, 24, NULL);
  unsigned char *buf = malloc (MiB);

  memset (buf, 0xaa, MiB);
  ck_assert_int_eq (store_read (s, buf, MiB, 3 * MiB + 17), 0);
  ck_assert (helpers_all_zero (buf, MiB));
  ck_assert_uint_eq (store_allocated (s), 0);
  ck_assert_uint_eq (store_chunks (s), 0);
  free (buf);
  store_destroy (s);
}
END_TEST

/* Requests reaching past the end fail; up to the last byte they work. */
START_TEST (test_bounds)
{
  struct store *s = store_create (MiB, 16, NULL);
  unsigned char b[8] = { 1 };

  errno = 0;
  ck_assert_int_eq (store_write (s, b, 2, MiB - 1), -1);
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_int_eq (store_read (s, b, 1, MiB), -1);
  ck_assert_int_eq (store_read (s, b, 8, UINT64_MAX - 2), -1);
  ck_assert_int_eq (store_zero (s, 2, UINT64_MAX), -1);
  ck_assert_int_eq (store_read (s, b, 0, MiB), 0);
  ck_assert_int_eq (store_write (s, b, 1, MiB - 1), 0);
  ck_assert_uint_eq (store_allocated (s), STORE_PAGE);
  store_destroy (s);

  /* A zero-sized device accepts only empty requests. */
  s = store_create (0, 24, NULL);
  ck_assert_int_eq (store_read (s, b, 0, 0), 0);
  ck_assert_int_eq (store_read (s, b, 1, 0), -1);
  ck_assert_int_eq (store_write (s, b, 1, 0), -1);
  store_destroy (s);
}
END_TEST

/* Round trips across chunk and page boundaries, for several chunk sizes. */
START_TEST (test_round_trip_boundaries)
{
  static const unsigned shifts[] = { 12, 16, 24 };
  unsigned char *in = malloc (3 * MiB), *out = malloc (3 * MiB);

  for (size_t k = 0; k < sizeof shifts / sizeof shifts[0]; k++) {
    uint64_t chunk = (uint64_t) 1 << shifts[k];
    struct store *s = store_create (128 * MiB, shifts[k], NULL);
    uint64_t offs[] = { chunk - 1, chunk - 4096, 2 * chunk - 7, 5 * chunk };
    uint64_t lens[] = { 2, 8192, 3 * MiB, 4096 * 3 + 5 };

    for (size_t i = 0; i < 4; i++) {
      helpers_fill (in, lens[i], offs[i], k + 1);
      ck_assert_int_eq (store_write (s, in, lens[i], offs[i]), 0);
    }
    for (size_t i = 0; i < 4; i++) {
      /* Read a margin around each write: zero or earlier data outside. */
      ck_assert_int_eq (store_read (s, out, lens[i], offs[i]), 0);
      ck_assert_msg (helpers_holds (out, lens[i], offs[i], k + 1),
                     "chunk %" PRIu64 " write %zu", chunk, i);
    }
    ck_assert_int_eq (store_read (s, out, 4096, 40 * MiB), 0);
    ck_assert (helpers_all_zero (out, 4096));
    store_destroy (s);
  }
  free (in);
  free (out);
}
END_TEST

/* The last bytes of the largest device. */
START_TEST (test_largest_device)
{
  struct store *s = store_create (STORE_MAX_SIZE, 24, NULL);
  unsigned char in[8192], out[8192];
  uint64_t end = STORE_MAX_SIZE;

  ck_assert_ptr_nonnull (s);
  ck_assert_uint_eq (store_size (s), end);
  helpers_fill (in, sizeof in, end - sizeof in, 7);
  ck_assert_int_eq (store_write (s, in, sizeof in, end - sizeof in), 0);
  ck_assert_int_eq (store_write (s, "\x5a", 1, end - 1), 0);
  ck_assert_int_eq (store_read (s, out, sizeof out, end - sizeof out), 0);
  ck_assert (helpers_holds (out, sizeof out - 1, end - sizeof out, 7));
  ck_assert_int_eq (out[sizeof out - 1], 0x5a);
  ck_assert_int_eq (store_write (s, in, 2, end - 1), -1);
  ck_assert_int_eq (errno, EINVAL);
  /* Only the pages written are held: 8 KiB spans at most 3 pages. */
  ck_assert_uint_le (store_allocated (s), 3 * STORE_PAGE);
  ck_assert_uint_eq (store_chunks (s), 1);
  /* Zeroing 4 GiB at the end walks a sparse directory quickly. */
  ck_assert_int_eq (store_zero (s, 4 * GiB - 1, end - 4 * GiB + 1), 0);
  ck_assert_uint_eq (store_allocated (s), 0);
  ck_assert_int_eq (store_read (s, out, sizeof out, end - sizeof out), 0);
  ck_assert (helpers_all_zero (out, sizeof out));
  store_destroy (s);
}
END_TEST

/* Writes of zeroes into holes allocate nothing; over data they overwrite. */
START_TEST (test_zero_writes_allocate_nothing)
{
  struct store *s = store_create (64 * MiB, 24, NULL);
  unsigned char *zeroes = calloc (1, 4 * MiB), buf[4096];

  ck_assert_int_eq (store_write (s, zeroes, 4 * MiB, 10 * MiB + 3), 0);
  ck_assert_uint_eq (store_allocated (s), 0);
  ck_assert_uint_eq (store_chunks (s), 0);
  /* In an allocated chunk, zero data into unwritten pages stays a hole. */
  ck_assert_int_eq (store_write (s, "x", 1, 0), 0);
  ck_assert_int_eq (store_write (s, zeroes, MiB, 64 * KiB), 0);
  ck_assert_uint_eq (store_allocated (s), STORE_PAGE);
  /* Zero data over written data does overwrite it. */
  ck_assert_int_eq (store_write (s, zeroes, 1, 0), 0);
  ck_assert_int_eq (store_read (s, buf, sizeof buf, 0), 0);
  ck_assert (helpers_all_zero (buf, sizeof buf));
  free (zeroes);
  store_destroy (s);
}
END_TEST

/* store_zero releases whole pages and chunks, and zeroes partial pages. */
START_TEST (test_zero_releases)
{
  struct store_limit limit = { .max = UINT64_MAX };
  struct store *s = store_create (64 * MiB, 20, &limit);     /* 1 MiB chunks */
  unsigned char *buf = malloc (4 * MiB), *out = malloc (4 * MiB);

  helpers_fill (buf, 4 * MiB, MiB, 3);
  ck_assert_int_eq (store_write (s, buf, 4 * MiB, MiB), 0);
  ck_assert_uint_eq (store_allocated (s), 4 * MiB);
  ck_assert_uint_eq (atomic_load (&limit.used), 4 * MiB + store_metadata (s));
  /* Zero from mid-page in chunk 1 to mid-page in chunk 4: chunks 2
   * and 3 are released whole, and the whole pages of chunk 1; what
   * stays is the first page of chunk 1 and all of chunk 4.
   */
  ck_assert_int_eq (store_zero (s, 3 * MiB, MiB + 100), 0);
  ck_assert_uint_eq (store_allocated (s), STORE_PAGE + MiB);
  ck_assert_uint_eq (atomic_load (&limit.used),
                     STORE_PAGE + MiB + store_metadata (s));
  ck_assert_int_eq (store_read (s, out, 4 * MiB, MiB), 0);
  ck_assert (helpers_holds (out, 100, MiB, 3));
  ck_assert (helpers_all_zero (out + 100, 3 * MiB));
  ck_assert (helpers_holds (out + 3 * MiB + 100, MiB - 100, 4 * MiB + 100, 3));
  /* Data written again after a release reads back. */
  ck_assert_int_eq (store_write (s, buf, MiB, 2 * MiB), 0);
  ck_assert_int_eq (store_read (s, out, MiB, 2 * MiB), 0);
  ck_assert (helpers_holds (out, MiB, MiB, 3));
  /* Zeroing part of one page keeps the page and zeroes just that part. */
  ck_assert_int_eq (store_zero (s, 10, 2 * MiB + 5), 0);
  ck_assert_int_eq (store_read (s, out, 32, 2 * MiB), 0);
  ck_assert (helpers_holds (out, 5, MiB, 3));
  ck_assert (helpers_all_zero (out + 5, 10));
  ck_assert (helpers_holds (out + 15, 17, MiB + 15, 3));
  store_destroy (s);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  free (buf);
  free (out);
}
END_TEST

/* Extents of a 1 TiB device: data pages, holes between, sub-ranges. */
START_TEST (test_extents)
{
  struct store *s = store_create (1ULL << 40, 24, NULL);    /* 1 TiB */
  unsigned char buf[3 * 4096];
  struct helpers_extent_list l = { 0 };

  helpers_fill (buf, sizeof buf, 0, 1);
  ck_assert_int_eq (store_write (s, buf, 4096, 8192), 0);           /* page 2 */
  ck_assert_int_eq (store_write (s, buf, 100, 20 * MiB + 5), 0);    /* chunk 1 */
  ck_assert_int_eq (store_write (s, buf, sizeof buf, 512 * GiB), 0);
  ck_assert_int_eq (store_extents (s, 1ULL << 40, 0, helpers_collect_extent,
                                   &l), 0);

  ck_assert_uint_eq (l.n, 7);
  ck_assert (l.hole[0]);  ck_assert_uint_eq (l.off[0], 0);
  ck_assert_uint_eq (l.len[0], 8192);
  ck_assert (!l.hole[1]); ck_assert_uint_eq (l.off[1], 8192);
  ck_assert_uint_eq (l.len[1], 4096);
  ck_assert (l.hole[2]);  ck_assert_uint_eq (l.off[2], 12288);
  ck_assert (!l.hole[3]); ck_assert_uint_eq (l.off[3], 20 * MiB);
  ck_assert_uint_eq (l.len[3], 4096);
  ck_assert (l.hole[4]);
  ck_assert (!l.hole[5]); ck_assert_uint_eq (l.off[5], 512 * GiB);
  ck_assert_uint_eq (l.len[5], sizeof buf);
  ck_assert (l.hole[6]);
  ck_assert_uint_eq (l.off[6] + l.len[6], 1ULL << 40);

  /* A sub-range starting mid-page reports from that offset. */
  l.n = 0;
  ck_assert_int_eq (store_extents (s, 10000, 8192 + 100,
                                   helpers_collect_extent, &l), 0);
  ck_assert_uint_eq (l.n, 2);
  ck_assert (!l.hole[0]); ck_assert_uint_eq (l.off[0], 8292);
  ck_assert_uint_eq (l.len[0], 4096 - 100);
  ck_assert (l.hole[1]);  ck_assert_uint_eq (l.off[1] + l.len[1], 8292 + 10000);

  /* After zeroing, everything is one hole. */
  ck_assert_int_eq (store_zero (s, 1ULL << 40, 0), 0);
  l.n = 0;
  ck_assert_int_eq (store_extents (s, 1ULL << 40, 0, helpers_collect_extent,
                                   &l), 0);
  ck_assert_uint_eq (l.n, 1);
  ck_assert (l.hole[0]);
  ck_assert_uint_eq (l.len[0], 1ULL << 40);
  store_destroy (s);
}
END_TEST

/* store_extents callback that stops after the first extent. */
static int
first_extent (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  helpers_collect_extent (opaque, offset, length, hole);
  return 1;
}

/* A callback returning 1 stops store_extents after that extent. */
START_TEST (test_extents_stop)
{
  struct store *s = store_create (GiB, 24, NULL);
  struct helpers_extent_list l = { 0 };

  ck_assert_int_eq (store_write (s, "a", 1, 5 * MiB), 0);
  ck_assert_int_eq (store_extents (s, GiB, 0, first_extent, &l), 0);
  ck_assert_uint_eq (l.n, 1);
  ck_assert (l.hole[0]);
  ck_assert_uint_eq (l.len[0], 5 * MiB);
  store_destroy (s);
}
END_TEST

/* Two stores share a cap: a write past it fails whole with ENOSPC.
 * The cap holds 16 pages and the headers of the three chunks that get
 * data before it is reached (one directory level: no node to add).
 */
START_TEST (test_memory_cap)
{
  uint64_t header = helpers_chunk_header (32 * MiB, 16, NULL);
  struct store_limit limit = { .max = 16 * STORE_PAGE + 3 * header };
  struct store *a = store_create (32 * MiB, 16, &limit);
  struct store *b = store_create (32 * MiB, 16, &limit);   /* shares the cap */
  unsigned char *buf = malloc (64 * KiB), *out = malloc (64 * KiB);

  ck_assert_uint_lt (header, STORE_PAGE);
  helpers_fill (buf, 64 * KiB, 0, 9);
  ck_assert_int_eq (store_write (a, buf, 40 * KiB, 0), 0);       /* 10 pages */
  ck_assert_int_eq (store_write (b, buf, 16 * KiB, MiB), 0);     /* 4 pages */
  /* 3 new pages and a chunk do not fit in the 2 pages and one header
   * left: refused, nothing written.
   */
  errno = 0;
  ck_assert_int_eq (store_write (a, buf, 12 * KiB, 10 * MiB), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_eq (store_chunks (a), 1);      /* not even a chunk */
  /* A write overlapping held pages and new ones is refused whole. */
  helpers_fill (out, 64 * KiB, 0, 77);
  ck_assert_int_eq (store_write (a, out, 52 * KiB, 0), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_int_eq (store_read (a, out, 64 * KiB, 0), 0);
  ck_assert (helpers_holds (out, 40 * KiB, 0, 9));
  ck_assert (helpers_all_zero (out + 40 * KiB, 24 * KiB));
  ck_assert_int_eq (store_read (a, out, 12 * KiB, 10 * MiB), 0);
  ck_assert (helpers_all_zero (out, 12 * KiB));
  /* Overwrites and zero data still work at the cap. */
  ck_assert_int_eq (store_write (a, buf, 40 * KiB, 0), 0);
  memset (out, 0, 64 * KiB);
  ck_assert_int_eq (store_write (a, out, 64 * KiB, 20 * MiB), 0);
  /* The 2 pages left fit. */
  ck_assert_int_eq (store_write (a, buf, 8 * KiB, 30 * MiB), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 16 * STORE_PAGE + 3 * header);
  ck_assert_uint_eq (store_metadata (a) + store_metadata (b), 3 * header);
  ck_assert_int_eq (store_write (b, buf, 1, 0), -1);
  /* Releasing memory lets writes in again. */
  ck_assert_int_eq (store_zero (b, 16 * KiB, MiB), 0);
  ck_assert_int_eq (store_write (a, buf, 12 * KiB, 10 * MiB), 0);
  ck_assert_int_eq (store_read (a, out, 12 * KiB, 10 * MiB), 0);
  ck_assert (helpers_holds (out, 12 * KiB, 0, 9));
  store_destroy (a);
  store_destroy (b);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  free (buf);
  free (out);
}
END_TEST

/* Random unaligned writes, zeroes and reads against a flat reference,
 * for each codec.
 */
START_TEST (test_random_against_reference)
{
  const uint64_t size = 3 * MiB + 12345;
  struct store *s = helpers_create_codec (size, 16, NULL, helpers_codecs[_i]);
  unsigned char *ref = calloc (1, size), *buf = malloc (size);
  unsigned seed = 12345;

  helpers_random_ops (s, ref, buf, size, &seed, 3000);
  ck_assert_int_eq (store_read (s, buf, size, 0), 0);
  ck_assert (memcmp (buf, ref, size) == 0);
  ck_assert_uint_le (store_data (s), (size + STORE_PAGE) & ~(STORE_PAGE - 1));
  free (ref);
  free (buf);
  store_destroy (s);
}
END_TEST

#define NTHREADS 8
#define SLICE (16 * KiB)      /* each thread's stripe inside every chunk */

/* One thread of test_threads_disjoint, and whether it saw its data. */
struct worker {
  struct store *s;
  unsigned id;
  int rounds;
  bool ok;
};

/* Write, then read back, this thread's stripes of every chunk. */
static void *
worker_run (void *arg)
{
  struct worker *w = arg;
  uint64_t size = store_size (w->s);
  unsigned char in[SLICE], out[SLICE];

  w->ok = true;
  for (int r = 0; r < w->rounds; r++) {
    for (uint64_t off = w->id * SLICE; off < size; off += NTHREADS * SLICE) {
      helpers_fill (in, SLICE, off, r);
      if (store_write (w->s, in, SLICE, off) == -1)
        w->ok = false;
    }
    for (uint64_t off = w->id * SLICE; off < size; off += NTHREADS * SLICE) {
      if (store_read (w->s, out, SLICE, off) == -1 ||
          !helpers_holds (out, SLICE, off, r))
        w->ok = false;
    }
    /* Release every other round, so creation, release and reuse race. */
    if (r % 2 == 1)
      for (uint64_t off = w->id * SLICE; off < size; off += 2 * NTHREADS * SLICE)
        if (store_zero (w->s, SLICE, off) == -1)
          w->ok = false;
  }
  return NULL;
}

/* Eight threads write, read and zero their own stripes of shared chunks. */
START_TEST (test_threads_disjoint)
{
  struct store_limit limit = { .max = UINT64_MAX };
  /* 128 KiB chunks: every chunk is shared by all eight threads. */
  struct store *s = helpers_create_codec (32 * MiB, 17, &limit,
                                          helpers_codecs[_i]);
  struct worker w[NTHREADS];
  pthread_t t[NTHREADS];
  unsigned char out[SLICE];

  for (unsigned i = 0; i < NTHREADS; i++) {
    w[i] = (struct worker) { .s = s, .id = i, .rounds = 7 };
    ck_assert_int_eq (pthread_create (&t[i], NULL, worker_run, &w[i]), 0);
  }
  for (unsigned i = 0; i < NTHREADS; i++) {
    pthread_join (t[i], NULL);
    ck_assert_msg (w[i].ok, "thread %u saw wrong data", i);
  }
  /* Every chunk was created exactly once despite the races. */
  ck_assert_uint_eq (store_chunks (s), 32 * MiB / (128 * KiB));
  /* The last round (6) left every stripe holding data. */
  for (uint64_t off = 0; off < 32 * MiB; off += SLICE) {
    ck_assert_int_eq (store_read (s, out, SLICE, off), 0);
    ck_assert (helpers_holds (out, SLICE, off, 6));
  }
  ck_assert_uint_eq (store_data (s), 32 * MiB);
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
  store_destroy (s);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
}
END_TEST

/* A source for store_fill: size bytes at data. */
struct fill_src {
  const unsigned char *data;
  uint64_t size;
};

/* store_fill callback: the bytes of a fill_src at offset, failing past
 * its end.
 */
static int
fill_from (void *opaque, void *buf, uint64_t len, uint64_t offset)
{
  struct fill_src *f = opaque;

  if (offset + len > f->size) {
    errno = EIO;
    return -1;
  }
  memcpy (buf, f->data + offset, len);
  return 0;
}

/* store_fill loads data as a write would, in place in a raw store and
 * through a buffer in a compressed store or a clone: zero pages stay
 * holes, counters follow, a failing source leaves no memory behind.
 */
START_TEST (test_fill)
{
  const uint64_t size = 6 * MiB;
  struct store_limit limit = { .max = UINT64_MAX };
  unsigned char *img = calloc (1, size), *out = malloc (size);
  struct fill_src src = { .data = img, .size = size };
  struct store *s, *base;
  struct helpers_extent_list l = { 0 };
  uint64_t header;

  helpers_fill_text (img, MiB, 9);                      /* 1 MiB of data */
  helpers_fill_random (img + 2 * MiB, 8192, 10);  /* two pages, then holes */
  helpers_fill_random (img + 4 * MiB + 4096, 4096, 11);
  for (int v = 0; v < 3; v++) {
    base = v == 2 ? store_create (size, 20, NULL) : NULL;
    s = v == 2 ? store_create_clone (base, &limit)
               : helpers_create_codec (size, 20, &limit, v ? CODEC_ZSTD
                                                        : CODEC_NONE);
    ck_assert_int_eq (store_fill (s, size, 0, fill_from, &src), 0);
    ck_assert_int_eq (store_read (s, out, size, 0), 0);
    ck_assert (memcmp (out, img, size) == 0);
    ck_assert_uint_eq (store_data (s), MiB + 3 * STORE_PAGE);
    ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
    l.n = 0;
    ck_assert_int_eq (store_extents (s, size, 0, helpers_collect_extent,
                                     &l), 0);
    ck_assert_uint_eq (l.n, 6);
    ck_assert (!l.hole[0]); ck_assert_uint_eq (l.len[0], MiB);
    ck_assert (!l.hole[2]); ck_assert_uint_eq (l.len[2], 8192);
    ck_assert (!l.hole[4]); ck_assert_uint_eq (l.off[4], 4 * MiB + 4096);
    store_destroy (s);
    store_destroy (base);
    ck_assert_uint_eq (atomic_load (&limit.used), 0);
  }
  /* A source that fails half-way: an error, and no memory held for the
   * piece it failed in.
   */
  s = store_create (2 * size, 20, &limit);
  errno = 0;
  src.size = size;
  ck_assert_int_eq (store_fill (s, 2 * size, 0, fill_from, &src), -1);
  ck_assert_int_eq (errno, EIO);
  ck_assert_uint_eq (store_data (s), MiB + 3 * STORE_PAGE);
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
  store_destroy (s);
  /* At a cap too small for a whole piece, the exact write rules apply:
   * the data and the headers of its three chunks fit exactly.
   */
  header = helpers_chunk_header (size, 20, NULL);
  limit.max = MiB + 3 * STORE_PAGE + 3 * header;
  s = store_create (size, 20, &limit);
  ck_assert_int_eq (store_fill (s, size, 0, fill_from, &src), 0);
  ck_assert_uint_eq (atomic_load (&limit.used),
                     MiB + 3 * STORE_PAGE + 3 * header);
  ck_assert_int_eq (store_read (s, out, size, 0), 0);
  ck_assert (memcmp (out, img, size) == 0);
  store_destroy (s);
  free (img);
  free (out);
}
END_TEST

/* Run the core suite. */
int
main (void)
{
  Suite *s = suite_create ("core");
  TCase *tc;

  /* Timeouts: three times or more a test's time under TSan, the slowest. */
  tc = helpers_add_tcase (s, "io", 10);
  tcase_add_test (tc, test_create_bad);
  tcase_add_test (tc, test_unwritten_reads_zero);
  tcase_add_test (tc, test_bounds);
  tcase_add_test (tc, test_round_trip_boundaries);
  tcase_add_test (tc, test_largest_device);
  tc = helpers_add_tcase (s, "zero", 10);
  tcase_add_test (tc, test_zero_writes_allocate_nothing);
  tcase_add_test (tc, test_zero_releases);
  tc = helpers_add_tcase (s, "extents", 10);
  tcase_add_test (tc, test_extents);
  tcase_add_test (tc, test_extents_stop);
  tc = helpers_add_tcase (s, "memory cap", 10);
  tcase_add_test (tc, test_memory_cap);
  tc = helpers_add_tcase (s, "fill", 10);
  tcase_add_test (tc, test_fill);
  tc = helpers_add_tcase (s, "reference", 30);
  tcase_add_loop_test (tc, test_random_against_reference, 0, HELPERS_NCODECS);
  tc = helpers_add_tcase (s, "threads", 60);
  tcase_add_loop_test (tc, test_threads_disjoint, 0, HELPERS_NCODECS);
  return helpers_run (s);
}
