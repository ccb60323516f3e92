/* memblock: Check unit tests of the chunked store (plugin/store.c). */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "helpers.h"
#include "race.h"
#include "store.h"

START_TEST (test_create_bad)
{
  errno = 0;
  ck_assert_ptr_null (store_create (STORE_MAX_SIZE + 1, 24, NULL));
  ck_assert_int_eq (errno, EINVAL);
  ck_assert_ptr_null (store_create (MiB, 11, NULL));
  ck_assert_ptr_null (store_create (MiB, 31, NULL));
}
END_TEST

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

START_TEST (test_zero_releases)
{
  struct store_limit limit = { .max = UINT64_MAX };
  struct store *s = store_create (64 * MiB, 20, &limit);     /* 1 MiB chunks */
  unsigned char *buf = malloc (4 * MiB), *out = malloc (4 * MiB);

  helpers_fill (buf, 4 * MiB, MiB, 3);
  ck_assert_int_eq (store_write (s, buf, 4 * MiB, MiB), 0);
  ck_assert_uint_eq (store_allocated (s), 4 * MiB);
  ck_assert_uint_eq (atomic_load (&limit.used), 4 * MiB);
  /* Zero from mid-page in chunk 1 to mid-page in chunk 4: chunks 2
   * and 3 are released whole, and the whole pages of chunk 1; what
   * stays is the first page of chunk 1 and all of chunk 4.
   */
  ck_assert_int_eq (store_zero (s, 3 * MiB, MiB + 100), 0);
  ck_assert_uint_eq (store_allocated (s), STORE_PAGE + MiB);
  ck_assert_uint_eq (atomic_load (&limit.used), STORE_PAGE + MiB);
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

START_TEST (test_memory_cap)
{
  struct store_limit limit = { .max = 16 * STORE_PAGE };
  struct store *a = store_create (GiB, 16, &limit);
  struct store *b = store_create (GiB, 16, &limit);   /* shares the cap */
  unsigned char *buf = malloc (64 * KiB), *out = malloc (64 * KiB);

  helpers_fill (buf, 64 * KiB, 0, 9);
  ck_assert_int_eq (store_write (a, buf, 40 * KiB, 0), 0);       /* 10 pages */
  ck_assert_int_eq (store_write (b, buf, 16 * KiB, MiB), 0);     /* 4 pages */
  /* 3 new pages do not fit in the 2 left: refused, nothing written. */
  errno = 0;
  ck_assert_int_eq (store_write (a, buf, 12 * KiB, 100 * MiB), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_eq (store_chunks (a), 1);      /* not even a chunk */
  /* A write overlapping held pages and new ones is refused whole. */
  helpers_fill (out, 64 * KiB, 0, 77);
  ck_assert_int_eq (store_write (a, out, 52 * KiB, 0), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_int_eq (store_read (a, out, 64 * KiB, 0), 0);
  ck_assert (helpers_holds (out, 40 * KiB, 0, 9));
  ck_assert (helpers_all_zero (out + 40 * KiB, 24 * KiB));
  ck_assert_int_eq (store_read (a, out, 12 * KiB, 100 * MiB), 0);
  ck_assert (helpers_all_zero (out, 12 * KiB));
  /* Overwrites and zero data still work at the cap. */
  ck_assert_int_eq (store_write (a, buf, 40 * KiB, 0), 0);
  memset (out, 0, 64 * KiB);
  ck_assert_int_eq (store_write (a, out, 64 * KiB, 200 * MiB), 0);
  /* The 2 pages left fit. */
  ck_assert_int_eq (store_write (a, buf, 8 * KiB, 300 * MiB), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 16 * STORE_PAGE);
  ck_assert_int_eq (store_write (b, buf, 1, 0), -1);
  /* Releasing memory lets writes in again. */
  ck_assert_int_eq (store_zero (b, 16 * KiB, MiB), 0);
  ck_assert_int_eq (store_write (a, buf, 12 * KiB, 100 * MiB), 0);
  ck_assert_int_eq (store_read (a, out, 12 * KiB, 100 * MiB), 0);
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
  ck_assert_uint_eq (atomic_load (&limit.used), store_allocated (s));
  store_destroy (s);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
}
END_TEST

/* What the write/trim race does each round. */
#define RACE_DEV (8 * MiB)
#define RACE_WRITE (4 * MiB)
struct race_plan {
  struct store *s;
  unsigned char *data[2];       /* RACE_WRITE bytes each, two patterns */
  unsigned char *big;           /* the one the racing write copies */
  uint64_t write_off;           /* where the big write lands */
  uint64_t trim_off;            /* the page trimmed inside it */
  unsigned seed;                /* the trimmer's delays */
  int errors;
};

/* The big write over pages that hold data. */
static void
race_big_write (void *arg, unsigned round)
{
  struct race_plan *pl = arg;

  (void) round;
  if (store_write (pl->s, pl->big, RACE_WRITE, pl->write_off) == -1)
    pl->errors++;
}

/* Racer: trim one page inside the big write. */
static void
race_trim_page (void *arg, unsigned round)
{
  struct race_plan *pl = arg;

  (void) round;
  race_delay (&pl->seed, 400);
  if (store_zero (pl->s, STORE_PAGE, pl->trim_off) == -1)
    pl->errors++;
}

/* store_extents callback adding up data bytes. */
static int
sum_data (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  (void) offset;
  if (!hole)
    *(uint64_t *) opaque += length;
  return 0;
}

/* A big write racing a trim of a page inside it: once both have
 * completed the page must settle in one state (the write's data or
 * zeroes, whole) that a later partial write and read agree with, and
 * the counters must match what extents report as data.
 */
START_TEST (test_race_write_trim_stability)
{
  time_t start = time (NULL);
  struct store_limit limit = { .max = UINT64_MAX };
  struct race_plan pl = {
    .s = helpers_create_codec (RACE_DEV, 24, &limit, helpers_codecs[_i]),
  };
  unsigned char page[4096], again[4096], small[512];
  unsigned seed = 4242, unstable = 0, mixed = 0, miscounted = 0;
  /* A compressed write packs all 4 MiB: fewer rounds. */
  const unsigned rounds = helpers_codecs[_i] == CODEC_NONE ? RACE_ROUNDS
                                                   : RACE_ROUNDS / 20;
  struct race_thread t = { .op = race_trim_page, .arg = &pl, .rounds = rounds };

  for (int i = 0; i < 2; i++) {
    pl.data[i] = malloc (RACE_WRITE);
    helpers_fill (pl.data[i], RACE_WRITE, 0, i + 1);
  }
  ck_assert_int_eq (store_write (pl.s, pl.data[0], RACE_WRITE, RACE_WRITE), 0);
  ck_assert_int_eq (race_start (&t), 0);
  for (unsigned round = 1; round <= rounds; round++) {
    uint64_t page_off, data = 0;

    /* The big write goes over data (pages with set bits); the trim
     * lands at a random page and a random moment of the copy.
     */
    pl.write_off = (rand_r (&seed) % 2) * 256 * KiB;
    pl.trim_off = pl.write_off +
                  (rand_r (&seed) % (RACE_WRITE / STORE_PAGE)) * STORE_PAGE;
    page_off = pl.trim_off - pl.write_off;
    ck_assert_int_eq (store_write (pl.s, pl.data[round % 2], RACE_WRITE,
                                   pl.write_off), 0);
    pl.big = pl.data[(round + 1) % 2];
    race_round (&t, round, race_big_write, &pl);

    ck_assert_int_eq (store_read (pl.s, page, sizeof page, pl.trim_off), 0);
    if (!helpers_all_zero (page, sizeof page) &&
        memcmp (page, pl.big + page_off, sizeof page) != 0)
      mixed++;
    memset (small, 0xc3, sizeof small);
    ck_assert_int_eq (store_write (pl.s, small, sizeof small, pl.trim_off), 0);
    ck_assert_int_eq (store_read (pl.s, again, sizeof again, pl.trim_off), 0);
    if (memcmp (again, small, sizeof small) != 0 ||
        memcmp (again + 512, page + 512, sizeof page - 512) != 0)
      unstable++;
    ck_assert_int_eq (store_extents (pl.s, RACE_DEV, 0, sum_data, &data), 0);
    if (data != store_data (pl.s) ||
        atomic_load (&limit.used) != store_allocated (pl.s))
      miscounted++;
  }
  race_join (&t);
  ck_assert_int_eq (pl.errors, 0);
  ck_assert_msg (unstable == 0 && mixed == 0 && miscounted == 0,
                 "of %u rounds: %u pages changed their mind, %u held a mix "
                 "of data and zeroes, %u miscounted",
                 rounds, unstable, mixed, miscounted);
  fprintf (stderr, "write/trim race (%s): %u rounds in %ld s, all stable\n",
           codec_name (helpers_codecs[_i]), rounds,
           (long) (time (NULL) - start));
  store_destroy (pl.s);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  free (pl.data[0]);
  free (pl.data[1]);
}
END_TEST

/* The memory-cap race: big writes into ranges of a device sixteen
 * times the cap, against trims of runs inside the same ranges.
 */
#define CAP_MAX (16 * MiB)
#define CAP_DEV (256 * MiB)
struct cap_plan {
  struct store *s;
  unsigned char *big;           /* RACE_WRITE bytes of data */
  uint64_t off;                 /* the range of this round */
  unsigned seed;
  int errors;                   /* failures other than ENOSPC */
  uint64_t peak;                /* highest RSS seen by the trimmer */
};

/* A big write of the range; ENOSPC is expected at the cap. */
static void
cap_write (void *arg, unsigned round)
{
  struct cap_plan *pl = arg;

  (void) round;
  if (store_write (pl->s, pl->big, RACE_WRITE, pl->off) == -1 &&
      errno != ENOSPC)
    pl->errors++;
}

/* Racer: two trims inside the range, then a sample of RSS. */
static void
cap_trim (void *arg, unsigned round)
{
  struct cap_plan *pl = arg;
  uint64_t rss;

  /* Runs of up to 512 KiB: a run clears whole bitmap words, which a
   * later trim of the range skips if nothing sets their bits again.
   */
  for (int i = 0; i < 2; i++) {
    uint64_t at = rand_r (&pl->seed) % (RACE_WRITE / STORE_PAGE) * STORE_PAGE;
    uint64_t len = (1 + rand_r (&pl->seed) % 128) * STORE_PAGE;

    if (len > RACE_WRITE - at)
      len = RACE_WRITE - at;
    race_delay (&pl->seed, 100);
    if (store_zero (pl->s, len, pl->off + at) == -1)
      pl->errors++;
  }
  if (round % 8 == 0 && (rss = helpers_rss_bytes ()) > pl->peak)
    pl->peak = rss;
}

/* Racing writes and trims at the cap never hold memory past the cap
 * (RSS, with a stated bound), and trimming everything gives it all back.
 */
START_TEST (test_race_memory_cap)
{
  time_t start = time (NULL);
  struct store_limit limit = { .max = CAP_MAX };
  struct cap_plan pl = { .s = store_create (CAP_DEV, 20, &limit), .seed = 99 };
  struct race_thread t = { .op = cap_trim, .arg = &pl };
  unsigned seed = 7;
  uint64_t base, held, after, data = 0;
  /* Slack: the test's own buffers and stacks are touched before base
   * is taken, so this covers only chunk headers (256 of 48 bytes),
   * stdio and allocator noise.
   */
  const uint64_t slack = MiB;

  pl.big = malloc (RACE_WRITE);
  helpers_fill (pl.big, RACE_WRITE, 0, 5);
  ck_assert_int_eq (race_start (&t), 0);
  base = helpers_rss_bytes ();
  pl.peak = base;
  for (unsigned round = 1; round <= RACE_ROUNDS; round++) {
    pl.off = rand_r (&seed) % (CAP_DEV / RACE_WRITE) * RACE_WRITE;
    /* Write the range, then race a rewrite over its pages with trims. */
    cap_write (&pl, round);
    race_round (&t, round, cap_write, &pl);
    ck_assert_uint_le (atomic_load (&limit.used), CAP_MAX);
    /* Trimming the whole range gives its pages back, so that later
     * writes fit: a page filled behind a trim and left with a clear
     * bit would stay, uncounted, and the next writes would pile up
     * past the cap.
     */
    if (rand_r (&seed) % 2)
      ck_assert_int_eq (store_zero (pl.s, RACE_WRITE, pl.off), 0);
  }
  race_join (&t);
  ck_assert_int_eq (pl.errors, 0);
  ck_assert_int_eq (store_extents (pl.s, CAP_DEV, 0, sum_data, &data), 0);
  ck_assert_uint_eq (data, store_allocated (pl.s));
  ck_assert_uint_eq (atomic_load (&limit.used), store_allocated (pl.s));
  held = helpers_rss_bytes ();
  ck_assert_msg (!HELPERS_RSS_CHECKED ||
                 held <= base + store_allocated (pl.s) + slack,
                 "RSS is %" PRIu64 " KiB above the start but the store "
                 "counts %" PRIu64 " KiB: memory no counter sees",
                 (held - base) / KiB, store_allocated (pl.s) / KiB);
  ck_assert_msg (!HELPERS_RSS_CHECKED ||
                 pl.peak <= base + CAP_MAX + slack,
                 "RSS peaked %" PRIu64 " KiB above the start, past the cap "
                 "(%" PRIu64 " KiB) plus %" PRIu64 " KiB",
                 (pl.peak - base) / KiB, CAP_MAX / KiB, slack / KiB);
  ck_assert_int_eq (store_zero (pl.s, CAP_DEV, 0), 0);
  after = helpers_rss_bytes ();
  fprintf (stderr, "memory-cap race: %d rounds in %ld s, RSS above the start: "
           "peak %" PRIu64 " KiB (cap %" PRIu64 " KiB), after trimming "
           "everything %" PRIu64 " KiB\n", RACE_ROUNDS,
           (long) (time (NULL) - start), (pl.peak - base) / KiB,
           CAP_MAX / KiB, after > base ? (after - base) / KiB : 0);
  ck_assert_uint_eq (store_allocated (pl.s), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  ck_assert_msg (!HELPERS_RSS_CHECKED || after <= base + slack,
                 "after trimming everything RSS is %" PRIu64 " KiB above "
                 "the start (bound %" PRIu64 " KiB)",
                 (after - base) / KiB, slack / KiB);
  store_destroy (pl.s);
  free (pl.big);
}
END_TEST

/* A fresh clone reads and maps exactly as its source, and holds nothing. */
START_TEST (test_clone_view)
{
  struct store *src = helpers_make_source (4 * MiB + 1000, 20, 1);
  struct store *c = store_create_clone (src, NULL);

  ck_assert_ptr_nonnull (c);
  ck_assert_uint_eq (store_size (c), store_size (src));
  ck_assert (helpers_same_bytes (c, src, store_size (src), 0));
  ck_assert (helpers_same_bytes (c, src, 5000, 65536 - 3));
  ck_assert (helpers_same_extents (c, src));
  ck_assert_uint_eq (store_allocated (c), 0);
  ck_assert_uint_eq (store_chunks (c), 0);
  store_destroy (c);
  store_destroy (src);
}
END_TEST

/* Writes copy only the pages they touch; the source never changes. */
START_TEST (test_clone_write)
{
  struct store *src = helpers_make_source (4 * MiB, 20, 2);
  struct store *ref = helpers_make_source (4 * MiB, 20, 2);
  struct store *c = store_create_clone (src, NULL);
  unsigned char buf[3 * 4096], out[3 * 4096], zero[4096] = { 0 };

  /* 100 bytes inside a source page: that page is copied, whole. */
  memset (buf, 0xab, 100);
  ck_assert_int_eq (store_write (c, buf, 100, 4096 + 50), 0);
  ck_assert_uint_eq (store_allocated (c), STORE_PAGE);
  ck_assert_int_eq (store_read (c, out, 4096, 4096), 0);
  ck_assert (helpers_holds (out, 50, 4096, 2));
  ck_assert_int_eq (out[50], 0xab);
  ck_assert (helpers_holds (out + 150, 4096 - 150, 4096 + 150, 2));
  /* Across a page boundary and over a hole of the source. */
  helpers_fill (buf, sizeof buf, 0, 9);
  ck_assert_int_eq (store_write (c, buf, sizeof buf, 64 * KiB - 5000), 0);
  ck_assert_int_eq (store_read (c, out, sizeof out, 64 * KiB - 5000), 0);
  ck_assert (memcmp (out, buf, sizeof buf) == 0);
  /* Zero data over a source page: it reads zeroes and holds nothing. */
  ck_assert_int_eq (store_write (c, zero, 4096, 8192), 0);
  ck_assert_int_eq (store_read (c, out, 4096, 8192), 0);
  ck_assert (helpers_all_zero (out, 4096));
  /* A partial zero write into a hole of the source stays a hole. */
  uint64_t before = store_allocated (c);
  ck_assert_int_eq (store_write (c, zero, 100, 100 * KiB), 0);
  ck_assert_uint_eq (store_allocated (c), before);
  /* The source is untouched, and the clone differs only where written. */
  ck_assert (helpers_same_bytes (src, ref, 4 * MiB, 0));
  ck_assert (helpers_same_bytes (c, src, 4096, 0));
  ck_assert (helpers_same_bytes (c, src, 4 * MiB - 128 * KiB, 128 * KiB));
  store_destroy (c);
  store_destroy (ref);
  store_destroy (src);
}
END_TEST

/* Trim and zero in a clone read zeroes over source data, release the
 * clone's pages, show as holes, and never touch the source.
 */
START_TEST (test_clone_trim)
{
  struct store *src = helpers_make_source (4 * MiB, 20, 3);
  struct store *c = store_create_clone (src, NULL);
  unsigned char buf[8192], out[8192];
  struct helpers_extent_list l = { 0 };

  /* Whole pages over source data: zeroes, no memory. */
  ck_assert_int_eq (store_zero (c, 16 * KiB, 8 * KiB), 0);
  ck_assert_int_eq (store_read (c, out, 8192, 8 * KiB), 0);
  ck_assert (helpers_all_zero (out, 8192));
  ck_assert_uint_eq (store_allocated (c), 0);
  ck_assert_int_eq (store_extents (c, 64 * KiB, 0, helpers_collect_extent,
                                   &l), 0);
  ck_assert_uint_eq (l.n, 3);
  ck_assert (!l.hole[0]); ck_assert_uint_eq (l.len[0], 8 * KiB);
  ck_assert (l.hole[1]);  ck_assert_uint_eq (l.len[1], 16 * KiB);
  ck_assert (!l.hole[2]);
  /* Part of a source page: that page becomes the clone's own. */
  ck_assert_int_eq (store_zero (c, 100, 40 * KiB + 10), 0);
  ck_assert_uint_eq (store_allocated (c), STORE_PAGE);
  ck_assert_int_eq (store_read (c, out, 4096, 40 * KiB), 0);
  ck_assert (helpers_holds (out, 10, 40 * KiB, 3));
  ck_assert (helpers_all_zero (out + 10, 100));
  ck_assert (helpers_holds (out + 110, 4096 - 110, 40 * KiB + 110, 3));
  /* Written pages of the clone are released by a trim. */
  helpers_fill (buf, sizeof buf, 0, 4);
  ck_assert_int_eq (store_write (c, buf, sizeof buf, 200 * KiB), 0);
  ck_assert_uint_eq (store_allocated (c), 3 * STORE_PAGE);
  ck_assert_int_eq (store_zero (c, 4 * MiB - 192 * KiB, 192 * KiB), 0);
  ck_assert_uint_eq (store_allocated (c), STORE_PAGE);
  ck_assert_int_eq (store_read (c, out, 8192, 200 * KiB), 0);
  ck_assert (helpers_all_zero (out, 8192));
  /* Writing a trimmed page again: the rest of it stays zero. */
  ck_assert_int_eq (store_write (c, "x", 1, 8 * KiB), 0);
  ck_assert_int_eq (store_read (c, out, 4096, 8 * KiB), 0);
  ck_assert_int_eq (out[0], 'x');
  ck_assert (helpers_all_zero (out + 1, 4095));
  /* The source is untouched. */
  ck_assert_int_eq (store_read (src, out, 8192, 8 * KiB), 0);
  ck_assert (helpers_holds (out, 8192, 8 * KiB, 3));
  ck_assert_uint_eq (store_allocated (src), 2 * MiB);
  store_destroy (c);
  store_destroy (src);
}
END_TEST

/* A clone of a clone reads through both; each level keeps its own. */
START_TEST (test_clone_chain)
{
  struct store *src = helpers_make_source (2 * MiB, 16, 5);
  struct store *mid = store_create_clone (src, NULL);
  struct store *leaf, *ref = helpers_make_source (2 * MiB, 16, 5);
  unsigned char buf[4096], out[4096];

  helpers_fill (buf, sizeof buf, 0, 6);
  ck_assert_int_eq (store_write (mid, buf, 4096, 0), 0);
  ck_assert_int_eq (store_zero (mid, 4096, 4096), 0);
  /* mid is read-only from here on. */
  leaf = store_create_clone (mid, NULL);
  ck_assert (helpers_same_bytes (leaf, mid, 2 * MiB, 0));
  ck_assert (helpers_same_extents (leaf, mid));
  ck_assert_int_eq (store_write (leaf, "L", 1, 4096 + 7), 0);
  ck_assert_int_eq (store_read (leaf, out, 4096, 4096), 0);
  ck_assert_int_eq (out[7], 'L');
  out[7] = 0;
  ck_assert (helpers_all_zero (out, 4096));
  ck_assert_int_eq (store_read (leaf, out, 4096, 0), 0);
  ck_assert (memcmp (out, buf, 4096) == 0);
  ck_assert (helpers_same_bytes (leaf, src, 2 * MiB - 8192, 8192));
  ck_assert (helpers_same_bytes (src, ref, 2 * MiB, 0));
  ck_assert_uint_eq (store_allocated (leaf), STORE_PAGE);
  store_destroy (leaf);
  store_destroy (mid);
  store_destroy (ref);
  store_destroy (src);
}
END_TEST

/* A clone's own pages count against the cap; a refused write or zero in
 * a clone changes nothing.
 */
START_TEST (test_clone_enospc)
{
  struct store_limit limit = { .max = 4 * STORE_PAGE };
  struct store *src = helpers_make_source (MiB, 16, 7);
  struct store *c = store_create_clone (src, &limit);
  unsigned char buf[5 * 4096], out[5 * 4096], before[5 * 4096];

  helpers_fill (buf, sizeof buf, 0, 8);
  ck_assert_int_eq (store_read (c, before, sizeof before, 0), 0);
  errno = 0;
  ck_assert_int_eq (store_write (c, buf, sizeof buf, 0), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_int_eq (store_read (c, out, sizeof out, 0), 0);
  ck_assert (memcmp (out, before, sizeof out) == 0);
  ck_assert_uint_eq (store_chunks (c), 0);
  ck_assert_int_eq (store_write (c, buf, 4 * 4096, 0), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 4 * STORE_PAGE);
  /* A partial zero of a source page needs a page: refused whole. */
  ck_assert_int_eq (store_zero (c, 3 * 4096, 4 * 4096 + 10), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_int_eq (store_read (c, out, 4096, 4 * 4096), 0);
  ck_assert (helpers_holds (out, 4096, 4 * 4096, 7));
  ck_assert_int_eq (store_read (c, out, 4096, 6 * 4096), 0);
  ck_assert (helpers_holds (out, 4096, 6 * 4096, 7));
  /* Whole-page zeroes need nothing and free the clone's pages. */
  ck_assert_int_eq (store_zero (c, 8 * 4096, 0), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  /* Now a zero with two partial source pages fits, and keeps both. */
  ck_assert_int_eq (store_zero (c, 3 * 4096, 12 * 4096 + 10), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 2 * STORE_PAGE);
  ck_assert_int_eq (store_read (c, out, 4096, 15 * 4096), 0);
  ck_assert (helpers_all_zero (out, 10));
  ck_assert (helpers_holds (out + 10, 4096 - 10, 15 * 4096 + 10, 7));
  store_destroy (c);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  store_destroy (src);
}
END_TEST

/* Random writes, zeroes and reads on a clone of a random source, against
 * flat references of both.
 */
START_TEST (test_clone_random_against_reference)
{
  const uint64_t size = 2 * MiB + 12345;
  struct store *src = store_create (size, 16, NULL);
  struct store *c;
  unsigned char *ref = calloc (1, size), *sref = calloc (1, size);
  unsigned char *buf = malloc (size);
  unsigned seed = 777;

  for (int i = 0; i < 60; i++) {
    uint64_t off = rand_r (&seed) % size;
    uint64_t len = MIN64 ((uint64_t) (1 + rand_r (&seed) % 50000), size - off);
    helpers_fill (buf, len, off, 1000 + i);
    ck_assert_int_eq (store_write (src, buf, len, off), 0);
    memcpy (sref + off, buf, len);
  }
  memcpy (ref, sref, size);
  c = store_create_clone (src, NULL);
  ck_assert_int_eq (store_set_codec (c, helpers_codecs[_i]), 0);
  helpers_random_ops (c, ref, buf, size, &seed, 3000);
  ck_assert_int_eq (store_read (c, buf, size, 0), 0);
  ck_assert (memcmp (buf, ref, size) == 0);
  ck_assert_int_eq (store_read (src, buf, size, 0), 0);
  ck_assert (memcmp (buf, sref, size) == 0);
  free (ref);
  free (sref);
  free (buf);
  store_destroy (c);
  store_destroy (src);
}
END_TEST

/* What the clone read race does each round. */
struct clone_plan {
  struct store *c;
  unsigned char *data;          /* RACE_WRITE bytes to write */
  unsigned char *seen;          /* RACE_WRITE bytes read meanwhile */
  bool trim;                    /* trim instead of write */
};

/* Racer: read the whole range while the main thread changes it. */
static void
clone_read (void *arg, unsigned round)
{
  struct clone_plan *pl = arg;

  (void) round;
  ck_assert_int_eq (store_read (pl->c, pl->seen, RACE_WRITE, 0), 0);
}

/* Write or trim the whole range of the clone. */
static void
clone_change (void *arg, unsigned round)
{
  struct clone_plan *pl = arg;

  (void) round;
  if (pl->trim)
    ck_assert_int_eq (store_zero (pl->c, RACE_WRITE, 0), 0);
  else
    ck_assert_int_eq (store_write (pl->c, pl->data, RACE_WRITE, 0), 0);
}

/* Reads racing a clone's first write or trim of a page see, per page,
 * the source's page or the new one: never zeroes for a write (C2).
 */
START_TEST (test_race_clone_reads)
{
  struct store *src = store_create (RACE_WRITE, 20, NULL);
  struct clone_plan pl = { .data = malloc (RACE_WRITE), .seen = malloc (RACE_WRITE) };
  struct race_thread t = { .op = clone_read, .arg = &pl };
  unsigned char *orig = malloc (RACE_WRITE);
  unsigned torn = 0;

  helpers_fill (orig, RACE_WRITE, 0, 11);
  helpers_fill (pl.data, RACE_WRITE, 0, 12);
  ck_assert_int_eq (store_write (src, orig, RACE_WRITE, 0), 0);
  ck_assert_int_eq (race_start (&t), 0);
  for (unsigned round = 1; round <= RACE_ROUNDS; round++) {
    pl.c = store_create_clone (src, NULL);
    pl.trim = round % 3 == 0;
    race_round (&t, round, clone_change, &pl);
    for (uint64_t off = 0; off < RACE_WRITE; off += STORE_PAGE) {
      const unsigned char *page = pl.seen + off;
      if (memcmp (page, orig + off, STORE_PAGE) != 0 &&
          (pl.trim ? !helpers_all_zero (page, STORE_PAGE)
                   : memcmp (page, pl.data + off, STORE_PAGE) != 0))
        torn++;
    }
    store_destroy (pl.c);
  }
  race_join (&t);
  ck_assert_msg (torn == 0, "%u pages read as neither the source nor the "
                 "new content", torn);
  store_destroy (src);
  free (orig);
  free (pl.data);
  free (pl.seen);
}
END_TEST

/* codec_pack keeps same-filled units in a word, compresses text, and
 * keeps random data raw rather than growing it; unpack gives it back.
 */
START_TEST (test_codec_units)
{
  unsigned char in[CODEC_UNIT], out[CODEC_UNIT];
  void *b;

  memset (in, 0x5a, sizeof in);                  /* same-filled */
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_le (codec_held (b), 40);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  codec_free (b);
  for (size_t i = 0; i < sizeof in; i += 8)      /* one repeated word */
    memcpy (in + i, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_le (codec_held (b), 40);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  codec_free (b);
  helpers_fill_text (in, sizeof in, 3);                  /* compressible */
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_lt (codec_held (b), CODEC_UNIT / 2);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  codec_free (b);
  helpers_fill_random (in, sizeof in, 4);                /* incompressible */
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_le (codec_held (b), codec_max_held ());
  ck_assert_uint_ge (codec_held (b), CODEC_UNIT);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  codec_free (b);
}
END_TEST

/* A compressed store holds text in less than its size, random data in
 * about its size, same-filled pages in next to nothing; partial writes,
 * trims and zeroes work page by page inside units; extents stay exact
 * to the page; the cap counts the bytes really held.
 */
START_TEST (test_compressed_pages)
{
  struct store_limit limit = { .max = UINT64_MAX };
  struct store *s = helpers_create_codec (64 * MiB, 20, &limit,
                                          helpers_codecs[_i]);
  unsigned char *text = malloc (MiB), *rnd = malloc (MiB), *out = malloc (MiB);
  struct helpers_extent_list l = { 0 };

  helpers_fill_text (text, MiB, 1);
  helpers_fill_random (rnd, MiB, 2);
  ck_assert_int_eq (store_write (s, text, MiB, 0), 0);
  ck_assert_uint_eq (store_data (s), MiB);
  ck_assert_uint_lt (store_allocated (s), MiB / 2);
  ck_assert_uint_eq (atomic_load (&limit.used), store_allocated (s));
  ck_assert_int_eq (store_write (s, rnd, MiB, 8 * MiB), 0);
  ck_assert_uint_le (store_allocated (s), MiB / 2 + MiB + 64 * KiB);
  memset (out, 0x33, MiB);                               /* same-filled */
  uint64_t before = store_allocated (s);
  ck_assert_int_eq (store_write (s, out, MiB, 16 * MiB), 0);
  ck_assert_uint_le (store_allocated (s) - before, 64 * 40);
  ck_assert_int_eq (store_read (s, out, MiB, 0), 0);
  ck_assert (memcmp (out, text, MiB) == 0);
  ck_assert_int_eq (store_read (s, out, MiB, 8 * MiB), 0);
  ck_assert (memcmp (out, rnd, MiB) == 0);

  /* A partial write into a compressed page, across a unit boundary. */
  ck_assert_int_eq (store_write (s, "HELLO", 5, CODEC_UNIT - 2), 0);
  memcpy (text + CODEC_UNIT - 2, "HELLO", 5);
  ck_assert_int_eq (store_read (s, out, 64 * KiB, 0), 0);
  ck_assert (memcmp (out, text, 64 * KiB) == 0);
  /* Trim one page in the middle of a unit: a hole of one page. */
  ck_assert_int_eq (store_zero (s, STORE_PAGE, 8 * MiB + STORE_PAGE), 0);
  memset (rnd + STORE_PAGE, 0, STORE_PAGE);
  ck_assert_uint_eq (store_data (s), 3 * MiB - STORE_PAGE);
  ck_assert_int_eq (store_extents (s, 4 * STORE_PAGE, 8 * MiB,
                                   helpers_collect_extent, &l), 0);
  ck_assert_uint_eq (l.n, 3);
  ck_assert (!l.hole[0]); ck_assert_uint_eq (l.len[0], STORE_PAGE);
  ck_assert (l.hole[1]);  ck_assert_uint_eq (l.len[1], STORE_PAGE);
  ck_assert (!l.hole[2]); ck_assert_uint_eq (l.len[2], 2 * STORE_PAGE);
  /* Zero part of a page: zeroes there, the rest kept. */
  ck_assert_int_eq (store_zero (s, 100, 8 * MiB + 3 * STORE_PAGE + 10), 0);
  memset (rnd + 3 * STORE_PAGE + 10, 0, 100);
  ck_assert_int_eq (store_read (s, out, MiB, 8 * MiB), 0);
  ck_assert (memcmp (out, rnd, MiB) == 0);
  /* A write of zeroes into a hole stays a hole. */
  memset (out, 0, MiB);
  ck_assert_int_eq (store_write (s, out, MiB, 32 * MiB), 0);
  ck_assert_uint_eq (store_data (s), 3 * MiB - STORE_PAGE);
  ck_assert_uint_eq (atomic_load (&limit.used), store_allocated (s));
  /* Trimming everything gives every byte back. */
  ck_assert_int_eq (store_zero (s, 64 * MiB, 0), 0);
  ck_assert_uint_eq (store_data (s), 0);
  ck_assert_uint_eq (store_allocated (s), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  ck_assert_int_eq (store_read (s, out, MiB, 8 * MiB), 0);
  ck_assert (helpers_all_zero (out, MiB));
  store_destroy (s);
  free (text);
  free (rnd);
  free (out);
}
END_TEST

/* At a cap counted in compressed bytes, a write that does not fit fails
 * with ENOSPC and changes nothing; one that compresses well still fits.
 */
START_TEST (test_compressed_enospc)
{
  struct store_limit limit = { .max = 256 * KiB };
  struct store *s = helpers_create_codec (64 * MiB, 20, &limit,
                                          helpers_codecs[_i]);
  unsigned char *rnd = malloc (MiB), *text = malloc (MiB), *out = malloc (MiB);
  uint64_t used;

  helpers_fill_random (rnd, MiB, 5);
  helpers_fill_text (text, MiB, 6);
  ck_assert_int_eq (store_write (s, rnd, 192 * KiB, 0), 0);
  used = atomic_load (&limit.used);
  ck_assert_uint_eq (used, store_allocated (s));
  errno = 0;
  ck_assert_int_eq (store_write (s, rnd, 128 * KiB, MiB), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_eq (atomic_load (&limit.used), used);
  ck_assert_int_eq (store_read (s, out, 128 * KiB, MiB), 0);
  ck_assert (helpers_all_zero (out, 128 * KiB));
  /* Overwriting held random data with text shrinks it and fits. */
  ck_assert_int_eq (store_write (s, text, 128 * KiB, 0), 0);
  ck_assert_uint_lt (atomic_load (&limit.used), used);
  ck_assert_int_eq (store_read (s, out, 128 * KiB, 0), 0);
  ck_assert (memcmp (out, text, 128 * KiB) == 0);
  /* A refused overwrite that would grow leaves the old data. */
  ck_assert_int_eq (store_write (s, rnd, 128 * KiB, 2 * MiB), 0);
  used = atomic_load (&limit.used);
  if (store_write (s, rnd + 7, 128 * KiB, 0) == -1) {
    ck_assert_int_eq (errno, ENOSPC);
    ck_assert_uint_eq (atomic_load (&limit.used), used);
    ck_assert_int_eq (store_read (s, out, 128 * KiB, 0), 0);
    ck_assert (memcmp (out, text, 128 * KiB) == 0);
  }
  ck_assert_uint_le (atomic_load (&limit.used), limit.max);
  store_destroy (s);
  ck_assert_uint_eq (atomic_load (&limit.used), 0);
  free (rnd);
  free (text);
  free (out);
}
END_TEST

/* store_fill callback: the bytes of a buffer at offset, failing past
 * its end.
 */
struct fill_src {
  const unsigned char *data;
  uint64_t size;
};

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
    ck_assert_uint_eq (atomic_load (&limit.used), store_allocated (s));
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
  ck_assert_uint_eq (atomic_load (&limit.used), store_allocated (s));
  store_destroy (s);
  /* At a cap too small for a whole piece, the exact write rules apply. */
  limit.max = MiB + 3 * STORE_PAGE;
  s = store_create (size, 20, &limit);
  ck_assert_int_eq (store_fill (s, size, 0, fill_from, &src), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), MiB + 3 * STORE_PAGE);
  ck_assert_int_eq (store_read (s, out, size, 0), 0);
  ck_assert (memcmp (out, img, size) == 0);
  store_destroy (s);
  free (img);
  free (out);
}
END_TEST

/* Build the suite. */
static Suite *
store_suite (void)
{
  Suite *s = suite_create ("store");
  TCase *tc = tcase_create ("store");

  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_create_bad);
  tcase_add_test (tc, test_unwritten_reads_zero);
  tcase_add_test (tc, test_bounds);
  tcase_add_test (tc, test_round_trip_boundaries);
  tcase_add_test (tc, test_largest_device);
  tcase_add_test (tc, test_zero_writes_allocate_nothing);
  tcase_add_test (tc, test_zero_releases);
  tcase_add_test (tc, test_extents);
  tcase_add_test (tc, test_extents_stop);
  tcase_add_test (tc, test_memory_cap);
  tcase_add_loop_test (tc, test_random_against_reference, 0, HELPERS_NCODECS);
  tcase_add_loop_test (tc, test_threads_disjoint, 0, HELPERS_NCODECS);
  tcase_add_loop_test (tc, test_race_write_trim_stability, 0, HELPERS_NCODECS);
  tcase_add_test (tc, test_race_memory_cap);
  tcase_add_test (tc, test_clone_view);
  tcase_add_test (tc, test_clone_write);
  tcase_add_test (tc, test_clone_trim);
  tcase_add_test (tc, test_clone_chain);
  tcase_add_test (tc, test_clone_enospc);
  tcase_add_loop_test (tc, test_clone_random_against_reference, 0, HELPERS_NCODECS);
  tcase_add_test (tc, test_fill);
  tcase_add_loop_test (tc, test_codec_units, 1, HELPERS_NCODECS);
  tcase_add_loop_test (tc, test_compressed_pages, 1, HELPERS_NCODECS);
  tcase_add_loop_test (tc, test_compressed_enospc, 1, HELPERS_NCODECS);
  tcase_add_test (tc, test_race_clone_reads);
  suite_add_tcase (s, tc);
  return s;
}

int
main (void)
{
  SRunner *sr = srunner_create (store_suite ());
  int failed;

  srunner_run_all (sr, CK_NORMAL);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
