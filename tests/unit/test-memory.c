/* memblock unit tests: memory bounds.  Loads that fit the cap succeed
 * whatever their threads do (I7), trims need no memory, chunk headers
 * count against the cap (I6), and a compressed store's resident memory
 * follows what it counts under churn (pool.c, P2).
 */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

/* An image for store_fill: IMG_SIZE bytes, of which the first IMG_DATA
 * of every IMG_PIECE are data and the rest zeroes, loaded the way
 * image.c does: IMG_THREADS threads, each taking every other stripe of
 * IMG_STRIPE bytes, IMG_PIECE at a time.
 */
#define IMG_SIZE (128 * MiB)
#define IMG_STRIPE (64 * MiB)
#define IMG_PIECE (8 * MiB)
#define IMG_DATA (2 * MiB)
#define IMG_THREADS 2
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define FILL_ROUNDS 6
#else
#define FILL_ROUNDS 30
#endif

/* store_fill callback: the image's bytes at offset. */
static int
img_read (void *opaque, void *buf, uint64_t len, uint64_t offset)
{
  (void) opaque;
  for (uint64_t at = 0; at < len; at += STORE_PAGE) {
    uint64_t off = offset + at, n = MIN64 (STORE_PAGE, len - at);

    if (off % IMG_PIECE < IMG_DATA)
      helpers_fill ((unsigned char *) buf + at, n, off, 1);
    else
      memset ((unsigned char *) buf + at, 0, n);
  }
  return 0;
}

/* A loading thread. */
struct loader {
  struct store *s;
  unsigned first;
  int r, err;
  pthread_t thread;
};

/* Fill stripes first, first + IMG_THREADS, ... a piece at a time. */
static void *
loader_run (void *arg)
{
  struct loader *l = arg;

  for (uint64_t st = l->first * IMG_STRIPE; st < IMG_SIZE && l->r == 0;
       st += IMG_THREADS * IMG_STRIPE)
    for (uint64_t off = st; off < st + IMG_STRIPE && l->r == 0;
         off += IMG_PIECE) {
      l->r = store_fill (l->s, IMG_PIECE, off, img_read, NULL);
      l->err = errno;
    }
  return NULL;
}

/* An image whose data fits under the cap (32 MiB of data, and the
 * chunks' headers, under 33 MiB) loads in every round, although each
 * loader reserves whole pieces of which only a quarter is data (I7).
 */
START_TEST (test_fill_fits)
{
  unsigned char *out = malloc (IMG_DATA), failed = 0;

  for (int round = 0; round < FILL_ROUNDS; round++) {
    struct store_limit limit = { .max = 33 * MiB };
    struct store *s = store_create (IMG_SIZE, 24, &limit);
    struct loader l[IMG_THREADS];

    for (unsigned i = 0; i < IMG_THREADS; i++) {
      l[i] = (struct loader) { .s = s, .first = i };
      ck_assert_int_eq (pthread_create (&l[i].thread, NULL, loader_run,
                                        &l[i]), 0);
    }
    for (unsigned i = 0; i < IMG_THREADS; i++) {
      pthread_join (l[i].thread, NULL);
      if (l[i].r != 0)
        fprintf (stderr, "round %d: loader %u: %s\n", round, i,
                 strerror (l[i].err));
      failed += l[i].r != 0;
    }
    ck_assert_uint_eq (store_data (s), IMG_SIZE / IMG_PIECE * IMG_DATA);
    ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
    ck_assert_uint_eq (atomic_load (&limit.speculative), 0);
    ck_assert_int_eq (store_read (s, out, IMG_DATA, 5 * IMG_PIECE), 0);
    ck_assert (helpers_holds (out, IMG_DATA, 5 * IMG_PIECE, 1));
    store_destroy (s);
  }
  ck_assert_msg (failed == 0, "%u loads of an image that fits failed", failed);
  free (out);
}
END_TEST

/* Bytes [off, off+len) of s hold the pattern (seed) or are zero. */
static bool
reads_as (struct store *s, uint64_t off, uint64_t len, int seed)
{
  unsigned char *buf = malloc (len);
  bool ok;

  ck_assert_int_eq (store_read (s, buf, len, off), 0);
  ok = seed < 0 ? helpers_all_zero (buf, len)
                : helpers_holds (buf, len, off, seed);
  free (buf);
  return ok;
}

/* At a full cap, trims that start and end inside pages work, on a
 * compressed store and on a clone: their whole pages go, and the
 * partial pages at their ends keep their data.
 */
START_TEST (test_trim_at_cap)
{
  struct store *src = helpers_make_source (4 * MiB, 20, 7);
  struct store_limit limit = { .max = 256 * KiB };
  struct store *s = _i == 0 ? store_create_clone (src, &limit)
    : helpers_create_codec (4 * MiB, 20, &limit, helpers_codecs[_i]);
  unsigned char *buf = malloc (MiB);
  uint64_t off = 0, data;

  helpers_fill (buf, MiB, 0, 7);
  /* Fill to the cap, a unit at a time (the pattern does not compress). */
  while (store_write (s, buf + off, 16 * KiB, off) == 0)
    off += 16 * KiB;
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_gt (off, 32 * KiB);
  data = store_data (s);
  /* [100, 20880): pages 1 to 4 whole, parts of pages 0 and 5. */
  ck_assert_int_eq (store_trim (s, 20 * KiB + 300, 100), 0);
  ck_assert_uint_eq (store_data (s), data - 4 * STORE_PAGE);
  ck_assert (reads_as (s, 0, STORE_PAGE, 7));
  ck_assert (reads_as (s, STORE_PAGE, 4 * STORE_PAGE, -1));
  ck_assert (reads_as (s, 5 * STORE_PAGE, off - 5 * STORE_PAGE, 7));
  /* A trim inside one page changes nothing. */
  ck_assert_int_eq (store_trim (s, 100, 8 * STORE_PAGE + 1), 0);
  ck_assert (reads_as (s, 8 * STORE_PAGE, STORE_PAGE, 7));
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
  ck_assert_uint_le (atomic_load (&limit.used), limit.max);
  store_destroy (s);
  store_destroy (src);
  free (buf);
}
END_TEST

/* A thread that warms up what a store's user keeps beside the store:
 * its codec contexts (codec.c makes them on first use) and its malloc
 * arena with a 1 MiB buffer in it, as a churner uses them, so that RSS
 * read afterwards starts from there.  The buffer is taken twice: glibc
 * maps the first alone and, once it is freed, raises its threshold for
 * that, so the second lands in the arena, as a churner's does.
 */
static void *
warm_run (void *arg)
{
  struct store *s = helpers_create_codec (16 * MiB, 24, NULL,
                                          *(enum codec *) arg);

  for (int i = 0; i < 2; i++) {
    unsigned char *buf = malloc (MiB);

    helpers_fill_text (buf, MiB, 1);
    ck_assert_int_eq (store_write (s, buf, MiB, 0), 0);
    free (buf);
  }
  store_destroy (s);
  return NULL;
}

/* Warm up n threads with codec c (see warm_run), one after another. */
static void
warm_up (unsigned n, enum codec c)
{
  pthread_t t[8];

  for (unsigned i = 0; i < n; i++)
    ck_assert_int_eq (pthread_create (&t[i], NULL, warm_run, &c), 0);
  for (unsigned i = 0; i < n; i++)
    pthread_join (t[i], NULL);
  warm_run (&c);
}

/* Write a byte into each chunk of s and give its page back, until the
 * cap refuses; returns the chunks written.
 */
static uint64_t
touch_chunks (struct store *s, unsigned shift, uint64_t max)
{
  uint64_t n;

  for (n = 0; n < max; n++) {
    uint64_t off = n << shift;

    if (store_write (s, "x", 1, off) == -1) {
      ck_assert_int_eq (errno, ENOSPC);
      break;
    }
    ck_assert_int_eq (store_zero (s, STORE_PAGE, off), 0);
  }
  return n;
}

/* A client touching many chunks of a huge device and trimming what it
 * wrote cannot grow the store past the cap: headers count (I6), as the
 * kernel sees.  Variants: 16 MiB chunks raw and compressed, 4 KiB
 * chunks raw.
 */
START_TEST (test_headers_capped)
{
  const unsigned shift = _i == 2 ? 12 : 24;
  const uint64_t size = _i == 2 ? 256 * MiB : 256 * GiB;
  struct store_limit limit = { .max = MiB };
  struct store *s = helpers_create_codec (size, shift, &limit,
                                          _i == 1 ? CODEC_ZSTD : CODEC_NONE);
  uint64_t base, n, grown;

  warm_up (0, CODEC_ZSTD);
  base = helpers_rss_bytes ();
  n = touch_chunks (s, shift, size >> shift);
  grown = helpers_rss_bytes () - base;
  fprintf (stderr, "headers (%s, %u KiB chunks): %" PRIu64 " chunks touched "
           "of %" PRIu64 " under a 1 MiB cap, %" PRIu64 " bytes each; RSS "
           "+%" PRIu64 " KiB\n", _i == 1 ? "zstd" : "raw",
           (1u << shift) / 1024, n, size >> shift,
           store_metadata (s) / (n ? n : 1), grown / KiB);
  ck_assert_uint_lt (n, size >> shift);
  ck_assert_uint_eq (store_data (s), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
  ck_assert_uint_le (store_metadata (s), MiB);
  ck_assert_uint_gt (store_metadata (s), MiB - MiB / 8);
  /* What the kernel holds: the headers, and slack for the allocator. */
  ck_assert_msg (!HELPERS_RSS_CHECKED || grown <= MiB + 512 * KiB,
                 "RSS grew %" PRIu64 " KiB for %" PRIu64 " KiB of headers",
                 grown / KiB, store_metadata (s) / KiB);
  store_destroy (s);
}
END_TEST

/* Churn for the compressed-memory test. */
#define CHURN_SIZE (128 * MiB)
#define CHURN_THREADS 4

struct churner {
  struct store *s;
  unsigned id, phase;
  pthread_t thread;
};

/* One thread's share of a phase: random data (0), text over it (1),
 * partial trims and rewrites (2), in MiB pieces of its quarter.
 */
static void *
churn_run (void *arg)
{
  struct churner *c = arg;
  uint64_t share = CHURN_SIZE / CHURN_THREADS, lo = c->id * share;
  unsigned char *buf = malloc (MiB);
  unsigned seed = c->id * 7 + c->phase;

  for (uint64_t off = lo; off < lo + share; off += MiB) {
    switch (c->phase) {
    case 0:
      helpers_fill_random (buf, MiB, off + 1);
      ck_assert_int_eq (store_write (c->s, buf, MiB, off), 0);
      break;
    case 1:
      helpers_fill_text (buf, MiB, (unsigned) off);
      ck_assert_int_eq (store_write (c->s, buf, MiB, off), 0);
      break;
    default:
      for (int k = 0; k < 16; k++) {
        uint64_t at = off + rand_r (&seed) % (MiB - 64 * KiB);
        uint64_t n = 1 + rand_r (&seed) % (64 * KiB);

        if (k % 2)
          ck_assert_int_eq (store_trim (c->s, n, at), 0);
        else {
          helpers_fill_random (buf, n, at);
          ck_assert_int_eq (store_write (c->s, buf, n, at), 0);
        }
      }
    }
  }
  free (buf);
  return NULL;
}

/* The bound on a compressed store's resident memory (P2 in pool.c):
 * its blobs and an eighth more, two pages a chunk, its headers; and
 * for what is not the store's, 2 MiB and half a MiB per churning
 * thread (each makes zstd contexts of about 300 KiB, which its malloc
 * arena may keep).
 */
static uint64_t
churn_bound (struct store *s)
{
  return store_allocated (s) + store_allocated (s) / 8
         + 2 * STORE_PAGE * store_chunks (s) + store_metadata (s)
         + 2 * MiB + CHURN_THREADS * 512 * KiB;
}

/* Random data, then compressible data over it, then partial trims and
 * rewrites, by four threads: after each phase the RSS growth stays
 * within churn_bound of what the store counts, and after a full trim
 * the memory is back.
 */
START_TEST (test_compressed_rss)
{
  static const char *phases[] = { "random", "text over it", "trims" };
  struct store_limit limit = { .max = UINT64_MAX };
  struct store *s = helpers_create_codec (CHURN_SIZE, 24, &limit,
                                          helpers_codecs[_i]);
  struct churner c[CHURN_THREADS];
  uint64_t base, grown;

  warm_up (CHURN_THREADS, helpers_codecs[_i]);
  base = helpers_rss_bytes ();
  for (unsigned phase = 0; phase < 3; phase++) {
    for (unsigned i = 0; i < CHURN_THREADS; i++) {
      c[i] = (struct churner) { .s = s, .id = i, .phase = phase };
      ck_assert_int_eq (pthread_create (&c[i].thread, NULL, churn_run,
                                        &c[i]), 0);
    }
    for (unsigned i = 0; i < CHURN_THREADS; i++)
      pthread_join (c[i].thread, NULL);
    grown = helpers_rss_bytes () - base;
    fprintf (stderr, "compressed RSS (%s) after %s: +%" PRIu64 " KiB, store "
             "counts %" PRIu64 " KiB of blobs for %" PRIu64 " KiB of data, "
             "bound %" PRIu64 " KiB\n", codec_name (helpers_codecs[_i]),
             phases[phase], grown / KiB, store_allocated (s) / KiB,
             store_data (s) / KiB, churn_bound (s) / KiB);
    ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
    ck_assert_msg (!HELPERS_RSS_CHECKED || grown <= churn_bound (s),
                   "after %s: RSS +%" PRIu64 " KiB, over the bound %" PRIu64
                   " KiB", phases[phase], grown / KiB, churn_bound (s) / KiB);
  }
  ck_assert_int_eq (store_trim (s, CHURN_SIZE, 0), 0);
  grown = helpers_rss_bytes () - base;
  fprintf (stderr, "compressed RSS (%s) after a full trim: +%" PRIu64 " KiB\n",
           codec_name (helpers_codecs[_i]), grown / KiB);
  ck_assert_uint_eq (store_allocated (s), 0);
  ck_assert_msg (!HELPERS_RSS_CHECKED || grown <= churn_bound (s),
                 "after a full trim: RSS +%" PRIu64 " KiB, over the bound "
                 "%" PRIu64 " KiB", grown / KiB, churn_bound (s) / KiB);
  store_destroy (s);
}
END_TEST

/* 1 MiB writes into pages the store does not hold yet, every third
 * page all zero, in a plain store and in a clone of it (whose pages show
 * the source): the kernel faults a write's run in at once
 * (MADV_POPULATE_WRITE), and the pages that stay holes are given back,
 * so the RSS grows by the pages with data, as the store counts them.
 */
START_TEST (test_populate_rss)
{
  static const uint64_t size = 64 * MiB;
  struct store_limit limit = { .max = UINT64_MAX };
  struct store *src = store_create (size, 24, &limit), *s = src;
  unsigned char *buf = malloc (MiB);
  uint64_t base, grown, slack = 2 * MiB;

  ck_assert_ptr_nonnull (src);
  ck_assert_ptr_nonnull (buf);
  if (_i == 1) {
    /* The clone's source holds only a page per chunk. */
    for (uint64_t o = 0; o < size; o += 16 * MiB) {
      memset (buf, 0x5a, STORE_PAGE);
      ck_assert_int_eq (store_write (src, buf, STORE_PAGE, o), 0);
    }
    ck_assert_ptr_nonnull (s = store_create_clone (src, &limit));
  }
  for (uint64_t p = 0; p < MiB / STORE_PAGE; p++)
    memset (buf + p * STORE_PAGE, p % 3 ? (int) (p | 1) : 0, STORE_PAGE);
  base = helpers_rss_bytes ();
  for (uint64_t o = 0; o < size; o += MiB)
    ck_assert_int_eq (store_write (s, buf, MiB, o), 0);
  grown = helpers_rss_bytes () - base;
  fprintf (stderr, "populate (%s): RSS +%" PRIu64 " KiB for %" PRIu64
           " KiB of data\n", _i ? "clone" : "plain", grown / KiB,
           store_data (s) / KiB);
  /* 170 of each MiB's 256 pages hold data (a source page under a zero
   * page is hidden, not data).
   */
  ck_assert_uint_eq (store_data (s), size / MiB * 170 * STORE_PAGE);
  ck_assert_msg (!HELPERS_RSS_CHECKED || grown <= store_data (s) + slack,
                 "RSS +%" PRIu64 " KiB, the store holds %" PRIu64 " KiB",
                 grown / KiB, store_data (s) / KiB);
  if (s != src)
    store_destroy (s);
  store_destroy (src);
  free (buf);
}
END_TEST

/* Run the memory suite. */
int
main (void)
{
  Suite *s = suite_create ("memory");
  TCase *tc;

  tc = helpers_add_tcase (s, "fill", 120);
  tcase_add_test (tc, test_fill_fits);
  tc = helpers_add_tcase (s, "trim", 20);
  tcase_add_loop_test (tc, test_trim_at_cap, 0, HELPERS_NCODECS);
  tc = helpers_add_tcase (s, "headers", 60);
  tcase_add_loop_test (tc, test_headers_capped, 0, 3);
  tc = helpers_add_tcase (s, "compressed rss", 120);
  tcase_add_loop_test (tc, test_compressed_rss, 1, HELPERS_NCODECS);
  tc = helpers_add_tcase (s, "populate rss", 60);
  tcase_add_loop_test (tc, test_populate_rss, 0, 2);
  return helpers_run (s);
}
