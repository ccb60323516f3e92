/* memblock: sparse chunked in-memory block store (no nbdkit here). */
#ifndef MEMBLOCK_STORE_H
#define MEMBLOCK_STORE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "codec.h"

/* The store tracks data in 4 KiB pages inside chunks of
 * 2^chunk_shift bytes (4 KiB to 1 GiB).
 */
#define STORE_PAGE_SHIFT 12
#define STORE_PAGE ((uint64_t) 1 << STORE_PAGE_SHIFT)
#define STORE_MIN_CHUNK_SHIFT 12
#define STORE_MAX_CHUNK_SHIFT 30
#define STORE_MAX_SIZE ((uint64_t) INT64_MAX)

/* A memory cap shared by any number of stores. */
struct store_limit {
  _Atomic uint64_t used;        /* bytes held by all its stores */
  uint64_t max;                 /* cap on used; UINT64_MAX means none */
  _Atomic uint64_t speculative; /* part of used that loads reserved whole */
  _Atomic uint64_t settled;     /* speculative reservations settled so far */
};

/* Fill callback: write len bytes of the data at offset into buf; 0, or
 * -1 with errno.
 */
typedef int (*store_fill_fn) (void *opaque, void *buf, uint64_t len,
                              uint64_t offset);

/* Extent callback: return 0 to go on, 1 to stop, -1 on error. */
typedef int (*store_extent_fn) (void *opaque, uint64_t offset,
                                uint64_t length, bool hole);

struct store;

extern struct store *store_create (uint64_t size, unsigned chunk_shift,
                                   struct store_limit *limit);
extern struct store *store_create_clone (struct store *source,
                                         struct store_limit *limit);
extern struct store *store_ref (struct store *s);
extern void store_destroy (struct store *s);
extern struct store *store_source (const struct store *s);
extern unsigned store_refs (const struct store *s);
extern struct store *store_create_like (struct store *s);
extern int store_fold (struct store *child);
extern int store_forget (struct store *s);
struct store_husk;
extern struct store_husk *store_forget_detach (struct store *s);
extern void store_husk_free (struct store_husk *h);
extern int store_set_retain (struct store *s, uint64_t spare_max);
extern int store_forget_keep (struct store *s);
extern uint64_t store_spare (const struct store *s);
/* Whether a power cut keeps the unit-sized block at offset (volatile.c). */
typedef bool (*store_keep_fn) (void *opaque, uint64_t offset);
extern int store_fold_some (struct store *child, unsigned unit,
                            store_keep_fn keep, void *opaque,
                            uint64_t *kept, uint64_t *lost);
extern void store_set_source (struct store *s, struct store *source);
extern uint64_t store_size (const struct store *s);
extern uint64_t store_allocated (const struct store *s);
extern uint64_t store_data (const struct store *s);
extern uint64_t store_metadata (const struct store *s);
extern int store_set_codec (struct store *s, enum codec c);
extern enum codec store_codec (const struct store *s);
extern int store_set_mlock (struct store *s);
extern uint64_t store_pin_failures (const struct store *s);
extern uint64_t store_chunks (const struct store *s);
extern int store_read (struct store *s, void *buf,
                       uint64_t count, uint64_t offset);
extern int store_write (struct store *s, const void *buf,
                        uint64_t count, uint64_t offset);
extern int store_fill (struct store *s, uint64_t count, uint64_t offset,
                       store_fill_fn fn, void *opaque);
extern int store_zero (struct store *s, uint64_t count, uint64_t offset);
extern int store_trim (struct store *s, uint64_t count, uint64_t offset);
extern int store_extents (struct store *s, uint64_t count, uint64_t offset,
                          store_extent_fn fn, void *opaque);

#endif /* MEMBLOCK_STORE_H */
