/* memblock unit tests: blob pools (plugin/pool.c) on their own, over a
 * small slot: placing blobs, the heap when the slot is full, compaction
 * moving live blobs down and bringing heap blobs back, and the memory
 * given back.
 */

#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "helpers.h"
#include "pool.h"

#define SLOT (64 * KiB)
#define NBLOBS 40

/* Blob i of the test: len bytes of pattern i. */
static size_t
blob_len (unsigned i)
{
  return 1000 + i * 37 % 3000;
}

/* Whether blob at p is blob i. */
static bool
blob_ok (const void *p, unsigned i)
{
  return helpers_holds (p, blob_len (i), 0, i);
}

/* Resident pages of [p, p + len), from mincore. */
static size_t
resident (void *p, size_t len)
{
  unsigned char vec[SLOT / 4096];
  size_t n = 0;

  ck_assert_int_eq (mincore (p, len, vec), 0);
  for (size_t i = 0; i < len / 4096; i++)
    n += vec[i] & 1;
  return n;
}

/* Blobs fill the slot, then go to the heap; freed blobs leave gaps
 * until a compaction, which moves the live ones down, brings heap
 * blobs in where they fit, and gives the pages past the end back.
 */
START_TEST (test_pool_compact)
{
  unsigned char *slot = mmap (NULL, SLOT, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  unsigned char buf[4096];
  void *blobs[NBLOBS] = { 0 };
  struct pool p;
  size_t held = 0, heap = 0;

  ck_assert_ptr_ne (slot, MAP_FAILED);
  pool_init (&p, slot, SLOT);
  ck_assert (!pool_wants_compact (&p));
  for (unsigned i = 0; i < NBLOBS; i++) {
    helpers_fill (buf, blob_len (i), 0, i);
    blobs[i] = pool_alloc (&p, buf, blob_len (i), i);
    ck_assert_ptr_nonnull (blobs[i]);
    ck_assert_uint_eq (pool_held (blobs[i]),
                       POOL_MAX_HELD (blob_len (i)));
    held += pool_held (blobs[i]);
    heap += (unsigned char *) blobs[i] < slot ||
            (unsigned char *) blobs[i] >= slot + SLOT;
  }
  /* About 2.5 KiB each: 40 do not fit in 64 KiB, the 20 kept will. */
  ck_assert_uint_gt (heap, 0);
  ck_assert (pool_wants_compact (&p));
  /* Free every other one, then compact. */
  for (unsigned i = 0; i < NBLOBS; i += 2) {
    held -= pool_held (blobs[i]);
    pool_free (&p, blobs[i]);
    blobs[i] = NULL;
  }
  pool_compact (&p, blobs, NBLOBS);
  for (unsigned i = 1; i < NBLOBS; i += 2) {
    ck_assert (blob_ok (blobs[i], i));
    /* Everything fits in the slot now. */
    ck_assert ((unsigned char *) blobs[i] >= slot &&
               (unsigned char *) blobs[i] < slot + SLOT);
  }
  ck_assert_uint_eq (atomic_load (&p.top), held);
  ck_assert_uint_eq (atomic_load (&p.live), held);
  ck_assert_uint_eq (atomic_load (&p.heap), 0);
  ck_assert (!pool_wants_compact (&p));
  /* Pages past the new top were given back. */
  ck_assert_uint_le (resident (slot, SLOT), (held + 4095) / 4096);
  /* Free all: the pool wants compacting and then holds nothing. */
  for (unsigned i = 1; i < NBLOBS; i += 2) {
    pool_free (&p, blobs[i]);
    blobs[i] = NULL;
  }
  ck_assert (pool_wants_compact (&p));
  pool_compact (&p, blobs, NBLOBS);
  ck_assert_uint_eq (atomic_load (&p.top), 0);
  ck_assert_uint_eq (resident (slot, SLOT), 0);
  pool_destroy (&p, blobs, NBLOBS);
  munmap (slot, SLOT);
}
END_TEST

/* A little dead space (under a page, or an eighth of the live bytes)
 * is left alone (P2).
 */
START_TEST (test_pool_threshold)
{
  unsigned char *slot = mmap (NULL, SLOT, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  unsigned char buf[4096] = { 1 };
  void *blobs[20] = { 0 };
  struct pool p;

  pool_init (&p, slot, SLOT);
  for (unsigned i = 0; i < 20; i++)
    blobs[i] = pool_alloc (&p, buf, 3000, i);          /* 3008 each */
  pool_free (&p, blobs[0]);                   /* 3008 dead: under a page */
  blobs[0] = NULL;
  ck_assert (!pool_wants_compact (&p));
  pool_free (&p, blobs[1]);                   /* 6016 < 54144 / 8 */
  blobs[1] = NULL;
  ck_assert (!pool_wants_compact (&p));
  pool_free (&p, blobs[2]);                   /* 9024 > 51136 / 8 */
  blobs[2] = NULL;
  ck_assert (pool_wants_compact (&p));
  pool_compact (&p, blobs, 20);
  ck_assert_uint_eq (atomic_load (&p.top), 17 * 3008);
  for (unsigned i = 3; i < 20; i++)
    ck_assert (memcmp (blobs[i], buf, 3000) == 0);
  pool_destroy (&p, blobs, 20);
  munmap (slot, SLOT);
}
END_TEST

/* Run the pool suite. */
int
main (void)
{
  Suite *s = suite_create ("pool");
  TCase *tc = helpers_add_tcase (s, "pool", 10);

  tcase_add_test (tc, test_pool_compact);
  tcase_add_test (tc, test_pool_threshold);
  return helpers_run (s);
}
