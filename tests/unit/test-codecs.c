/* memblock: Check unit tests of compression: codec_pack and
 * codec_unpack on single units, and stores keeping their data with zstd
 * and lz4 (partial writes, trims, extents, the cap in compressed bytes).
 */

#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "helpers.h"
#include "store.h"

/* codec_pack keeps same-filled units in a word, compresses text, and
 * keeps random data raw rather than growing it; unpack gives it back
 * (the blob is the thread's until its next codec_pack).
 */
START_TEST (test_codec_units)
{
  unsigned char in[CODEC_UNIT], out[CODEC_UNIT];
  const void *b;

  memset (in, 0x5a, sizeof in);                  /* same-filled */
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_le (codec_size (b), 40);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  for (size_t i = 0; i < sizeof in; i += 8)      /* one repeated word */
    memcpy (in + i, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_le (codec_size (b), 40);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  helpers_fill_text (in, sizeof in, 3);                  /* compressible */
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_lt (codec_size (b), CODEC_UNIT / 2);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
  helpers_fill_random (in, sizeof in, 4);                /* incompressible */
  b = codec_pack (helpers_codecs[_i], in);
  ck_assert_uint_le (codec_size (b), codec_max_size ());
  ck_assert_uint_ge (codec_size (b), CODEC_UNIT);
  ck_assert_int_eq (codec_unpack (b, out), 0);
  ck_assert (memcmp (in, out, sizeof in) == 0);
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
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
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
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
  /* Trimming everything gives every byte back but the chunks' headers. */
  ck_assert_int_eq (store_zero (s, 64 * MiB, 0), 0);
  ck_assert_uint_eq (store_data (s), 0);
  ck_assert_uint_eq (store_allocated (s), 0);
  ck_assert_uint_eq (atomic_load (&limit.used), store_metadata (s));
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
  uint64_t used, held;

  helpers_fill_random (rnd, MiB, 5);
  helpers_fill_text (text, MiB, 6);
  ck_assert_int_eq (store_write (s, rnd, 192 * KiB, 0), 0);
  used = atomic_load (&limit.used);
  ck_assert_uint_eq (used, helpers_held (s));
  /* Refused, it keeps at most the header of the chunk it made. */
  held = store_allocated (s);
  errno = 0;
  ck_assert_int_eq (store_write (s, rnd, 128 * KiB, MiB), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_uint_eq (store_allocated (s), held);
  ck_assert_uint_eq (atomic_load (&limit.used), helpers_held (s));
  ck_assert_uint_le (atomic_load (&limit.used),
                     used + helpers_chunk_header (64 * MiB, 20, NULL) + 8 * KiB);
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

/* Run the codecs suite; the loops skip helpers_codecs[0], CODEC_NONE. */
int
main (void)
{
  Suite *s = suite_create ("codecs");
  TCase *tc;

  /* Timeouts: three times or more a test's time under TSan, the slowest. */
  tc = helpers_add_tcase (s, "units", 10);
  tcase_add_loop_test (tc, test_codec_units, 1, HELPERS_NCODECS);
  tc = helpers_add_tcase (s, "stores", 10);
  tcase_add_loop_test (tc, test_compressed_pages, 1, HELPERS_NCODECS);
  tcase_add_loop_test (tc, test_compressed_enospc, 1, HELPERS_NCODECS);
  return helpers_run (s);
}
