/* memblock: Check unit tests of clones (store_create_clone): views of
 * the source, copies of the pages written, trims over source data,
 * chains, the memory cap, and random I/O against flat references.
 */

#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"
#include "store.h"

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
 * a clone changes nothing.  The cap holds 4 pages and the header of the
 * one chunk the clone makes.
 */
START_TEST (test_clone_enospc)
{
  struct store *src = helpers_make_source (MiB, 16, 7);
  uint64_t header = helpers_chunk_header (MiB, 16, src);
  struct store_limit limit = { .max = 4 * STORE_PAGE + header };
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
  ck_assert_uint_eq (atomic_load (&limit.used), 4 * STORE_PAGE + header);
  ck_assert_uint_eq (store_metadata (c), header);
  /* A partial zero of a source page needs a page: refused whole. */
  ck_assert_int_eq (store_zero (c, 3 * 4096, 4 * 4096 + 10), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_int_eq (store_read (c, out, 4096, 4 * 4096), 0);
  ck_assert (helpers_holds (out, 4096, 4 * 4096, 7));
  ck_assert_int_eq (store_read (c, out, 4096, 6 * 4096), 0);
  ck_assert (helpers_holds (out, 4096, 6 * 4096, 7));
  /* Whole-page zeroes need nothing and free the clone's pages. */
  ck_assert_int_eq (store_zero (c, 8 * 4096, 0), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), header);
  /* Now a zero with two partial source pages fits, and keeps both. */
  ck_assert_int_eq (store_zero (c, 3 * 4096, 12 * 4096 + 10), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), 2 * STORE_PAGE + header);
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

/* Run the clones suite. */
int
main (void)
{
  Suite *s = suite_create ("clones");
  TCase *tc;

  /* Timeouts: three times or more a test's time under TSan, the slowest. */
  tc = helpers_add_tcase (s, "clone", 10);
  tcase_add_test (tc, test_clone_view);
  tcase_add_test (tc, test_clone_write);
  tcase_add_test (tc, test_clone_trim);
  tcase_add_test (tc, test_clone_chain);
  tcase_add_test (tc, test_clone_enospc);
  tc = helpers_add_tcase (s, "reference", 30);
  tcase_add_loop_test (tc, test_clone_random_against_reference, 0,
                       HELPERS_NCODECS);
  return helpers_run (s);
}
