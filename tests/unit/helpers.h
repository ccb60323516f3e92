/* memblock unit tests: data patterns, store fixtures and comparisons
 * shared by the test binaries (public store and codec API only).
 */
#ifndef MEMBLOCK_TEST_HELPERS_H
#define MEMBLOCK_TEST_HELPERS_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "store.h"

#define KiB ((uint64_t) 1 << 10)
#define MiB ((uint64_t) 1 << 20)
#define GiB ((uint64_t) 1 << 30)
#define MIN64(a, b) ((a) < (b) ? (a) : (b))

/* The codecs loop tests run with: _i indexes helpers_codecs. */
#define HELPERS_NCODECS 3
extern const enum codec helpers_codecs[HELPERS_NCODECS];

/* Sanitizers keep shadow memory for every page touched, which swamps
 * RSS: RSS bounds are checked in the plain build only.
 */
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
#define HELPERS_RSS_CHECKED false
#else
#define HELPERS_RSS_CHECKED true
#endif

/* Extents collected by helpers_collect_extent. */
struct helpers_extent_list {
  size_t n;
  uint64_t off[256], len[256];
  bool hole[256];
};

/* Data patterns. */
extern void helpers_fill (unsigned char *buf, uint64_t len, uint64_t off,
                          unsigned seed);
extern bool helpers_holds (const unsigned char *buf, uint64_t len,
                           uint64_t off, unsigned seed);
extern bool helpers_all_zero (const unsigned char *buf, uint64_t len);
extern void helpers_fill_random (unsigned char *buf, uint64_t len,
                                 uint64_t seed);
extern void helpers_fill_text (unsigned char *buf, uint64_t len,
                               unsigned seed);

/* Stores and what they hold. */
extern struct store *helpers_create_codec (uint64_t size, unsigned shift,
                                           struct store_limit *limit,
                                           enum codec c);
extern struct store *helpers_make_source (uint64_t size, unsigned shift,
                                          unsigned seed);
extern int helpers_collect_extent (void *opaque, uint64_t offset,
                                   uint64_t length, bool hole);
extern void helpers_random_ops (struct store *s, unsigned char *ref,
                                unsigned char *buf, uint64_t size,
                                unsigned *seed, int n);
extern bool helpers_same_bytes (struct store *a, struct store *b,
                                uint64_t len, uint64_t off);
extern bool helpers_same_extents (struct store *a, struct store *b);

/* What s holds against its limit: data and chunk headers. */
extern uint64_t helpers_held (const struct store *s);

/* What one chunk of a store of size bytes (shift), or of a clone of
 * source if not NULL, costs beside its data, where the store's
 * directory has one level.
 */
extern uint64_t helpers_chunk_header (uint64_t size, unsigned shift,
                                      struct store *source);

/* This process. */
extern uint64_t helpers_rss_bytes (void);

/* Suites. */
extern TCase *helpers_add_tcase (Suite *s, const char *name, double timeout);
extern int helpers_run (Suite *s);

#endif /* MEMBLOCK_TEST_HELPERS_H */
