/* memblock: Check unit tests of store operations racing each other:
 * a big write against a trim inside it, writes against trims at the
 * memory cap, and reads against a clone's first writes and trims.
 */

#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "helpers.h"
#include "race.h"
#include "store.h"

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
        atomic_load (&limit.used) != helpers_held (pl.s))
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
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (pl.s));
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
  ck_assert_uint_eq (atomic_load (&limit.used), store_metadata (pl.s));
  ck_assert_msg (!HELPERS_RSS_CHECKED || after <= base + slack,
                 "after trimming everything RSS is %" PRIu64 " KiB above "
                 "the start (bound %" PRIu64 " KiB)",
                 (after - base) / KiB, slack / KiB);
  store_destroy (pl.s);
  free (pl.big);
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

/* Run the races suite. */
int
main (void)
{
  Suite *s = suite_create ("races");
  TCase *tc;

  /* Timeouts: three times or more a test's time under TSan, the slowest. */
  tc = helpers_add_tcase (s, "write trim", 60);
  tcase_add_loop_test (tc, test_race_write_trim_stability, 0, HELPERS_NCODECS);
  tc = helpers_add_tcase (s, "memory cap", 30);
  tcase_add_test (tc, test_race_memory_cap);
  tc = helpers_add_tcase (s, "clone reads", 180);
  tcase_add_test (tc, test_race_clone_reads);
  return helpers_run (s);
}
