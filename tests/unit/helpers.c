/* memblock unit tests: data patterns, store fixtures and comparisons. */

#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "helpers.h"

const enum codec helpers_codecs[HELPERS_NCODECS] = {
  CODEC_NONE, CODEC_ZSTD, CODEC_LZ4,
};

/* Deterministic byte pattern for offset off under seed. */
static unsigned char
pattern (uint64_t off, unsigned seed)
{
  uint64_t x = off * 0x9e3779b97f4a7c15ULL + seed;
  x ^= x >> 29;
  return (unsigned char) (x | 1);       /* never zero */
}

/* Fill buf with the pattern of [off, off+len). */
void
helpers_fill (unsigned char *buf, uint64_t len, uint64_t off, unsigned seed)
{
  for (uint64_t i = 0; i < len; i++)
    buf[i] = pattern (off + i, seed);
}

/* True if buf holds the pattern of [off, off+len). */
bool
helpers_holds (const unsigned char *buf, uint64_t len, uint64_t off,
               unsigned seed)
{
  for (uint64_t i = 0; i < len; i++)
    if (buf[i] != pattern (off + i, seed))
      return false;
  return true;
}

/* True if len bytes at buf are zero. */
bool
helpers_all_zero (const unsigned char *buf, uint64_t len)
{
  for (uint64_t i = 0; i < len; i++)
    if (buf[i])
      return false;
  return true;
}

/* Fill buf with len bytes that do not compress (xorshift64). */
void
helpers_fill_random (unsigned char *buf, uint64_t len, uint64_t seed)
{
  uint64_t x = seed * 0x9e3779b97f4a7c15ULL | 1;

  for (uint64_t i = 0; i < len; i += 8) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    memcpy (buf + i, &x, len - i < 8 ? len - i : 8);
  }
}

/* Fill buf with len bytes of text-like data: words from a small
 * vocabulary, which compresses as real files do.
 */
void
helpers_fill_text (unsigned char *buf, uint64_t len, unsigned seed)
{
  static const char *words[] = {
    "block ", "device ", "memory ", "page ", "the ", "of ", "nbdkit ",
    "clone ", "write ", "read ", "\n", "zero ", "trim ", "extent ",
  };
  uint64_t i = 0;

  while (i < len) {
    const char *w = words[rand_r (&seed) % 14];
    for (; *w && i < len; w++)
      buf[i++] = *w;
  }
}

/* A store as store_create makes it, keeping its data with codec c. */
struct store *
helpers_create_codec (uint64_t size, unsigned shift,
                      struct store_limit *limit, enum codec c)
{
  struct store *s = store_create (size, shift, limit);

  ck_assert_ptr_nonnull (s);
  ck_assert_int_eq (store_set_codec (s, c), 0);
  return s;
}

/* n random unaligned writes (some of zeroes), zeroes and reads on s,
 * against its flat reference ref; buf is scratch of size bytes.
 */
void
helpers_random_ops (struct store *s, unsigned char *ref, unsigned char *buf,
                    uint64_t size, unsigned *seed, int n)
{
  for (int i = 0; i < n; i++) {
    uint64_t off = rand_r (seed) % size;
    uint64_t len = 1 + rand_r (seed) % (rand_r (seed) % 4 ? 9000 : 300000);
    if (len > size - off)
      len = size - off;
    switch (rand_r (seed) % 4) {
    case 0: case 1:
      helpers_fill (buf, len, off, i);
      if (rand_r (seed) % 8 == 0)
        memset (buf, 0, len);           /* sometimes zero data */
      ck_assert_int_eq (store_write (s, buf, len, off), 0);
      memcpy (ref + off, buf, len);
      break;
    case 2:
      ck_assert_int_eq (store_zero (s, len, off), 0);
      memset (ref + off, 0, len);
      break;
    case 3:
      ck_assert_int_eq (store_read (s, buf, len, off), 0);
      ck_assert_msg (memcmp (buf, ref + off, len) == 0,
                     "op %d: read of %" PRIu64 " at %" PRIu64, i, len, off);
      break;
    }
  }
}

/* store_extents callback appending to a helpers_extent_list. */
int
helpers_collect_extent (void *opaque, uint64_t offset, uint64_t length,
                        bool hole)
{
  struct helpers_extent_list *l = opaque;

  ck_assert_uint_lt (l->n, 256);
  l->off[l->n] = offset;
  l->len[l->n] = length;
  l->hole[l->n] = hole;
  l->n++;
  return 0;
}

/* A source store of size bytes with the pattern of seed in every other
 * 64 KiB and holes between, as a read-only device holds an image.
 */
struct store *
helpers_make_source (uint64_t size, unsigned shift, unsigned seed)
{
  struct store *src = store_create (size, shift, NULL);
  unsigned char *buf = malloc (64 * KiB);

  for (uint64_t off = 0; off < size; off += 128 * KiB) {
    uint64_t len = MIN64 (64 * KiB, size - off);
    helpers_fill (buf, len, off, seed);
    ck_assert_int_eq (store_write (src, buf, len, off), 0);
  }
  free (buf);
  return src;
}

/* True if [off, off+len) of a and b read the same. */
bool
helpers_same_bytes (struct store *a, struct store *b, uint64_t len,
                    uint64_t off)
{
  unsigned char *x = malloc (len), *y = malloc (len);
  bool r;

  ck_assert_int_eq (store_read (a, x, len, off), 0);
  ck_assert_int_eq (store_read (b, y, len, off), 0);
  r = memcmp (x, y, len) == 0;
  free (x);
  free (y);
  return r;
}

/* True if a and b report the same extents over the whole device. */
bool
helpers_same_extents (struct store *a, struct store *b)
{
  struct helpers_extent_list la = { 0 }, lb = { 0 };

  ck_assert_int_eq (store_extents (a, store_size (a), 0,
                                   helpers_collect_extent, &la), 0);
  ck_assert_int_eq (store_extents (b, store_size (b), 0,
                                   helpers_collect_extent, &lb), 0);
  return la.n == lb.n &&
         memcmp (la.off, lb.off, la.n * sizeof la.off[0]) == 0 &&
         memcmp (la.len, lb.len, la.n * sizeof la.len[0]) == 0 &&
         memcmp (la.hole, lb.hole, la.n * sizeof la.hole[0]) == 0;
}

/* Resident bytes of this process, from /proc/self/statm. */
uint64_t
helpers_rss_bytes (void)
{
  FILE *f = fopen ("/proc/self/statm", "r");
  unsigned long size, resident = 0;

  ck_assert_ptr_nonnull (f);
  ck_assert_int_eq (fscanf (f, "%lu %lu", &size, &resident), 2);
  fclose (f);
  return (uint64_t) resident * 4096;
}


/* Add to s a TCase name whose tests each get timeout seconds (when
 * Check forks them; CK_FORK=no, as under TSan, has no timeouts).
 */
TCase *
helpers_add_tcase (Suite *s, const char *name, double timeout)
{
  TCase *tc = tcase_create (name);

  tcase_set_timeout (tc, timeout);
  suite_add_tcase (s, tc);
  return tc;
}

/* Run every test of s; the exit status of a test binary. */
int
helpers_run (Suite *s)
{
  SRunner *sr = srunner_create (s);
  int failed;

  srunner_run_all (sr, CK_NORMAL);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* What one chunk of a store of size bytes (shift), or of a clone of
 * source if not NULL, costs beside its data (store_metadata after its
 * first write), where the directory has one level.
 */
uint64_t
helpers_chunk_header (uint64_t size, unsigned shift, struct store *source)
{
  struct store *s = source ? store_create_clone (source, NULL)
                           : store_create (size, shift, NULL);
  uint64_t header;

  ck_assert_int_eq (store_write (s, "x", 1, 0), 0);
  header = store_metadata (s);
  store_destroy (s);
  return header;
}

/* What s holds against its limit: data and chunk headers (I6). */
uint64_t
helpers_held (const struct store *s)
{
  return store_allocated (s) + store_metadata (s);
}
