/* memblock: blob pools, where a compressed chunk keeps its blobs. */
#ifndef MEMBLOCK_POOL_H
#define MEMBLOCK_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One chunk's pool: blobs packed one after another from base, a bump
 * allocator that pool_compact squeezes.  See pool.c for the rules.
 */
struct pool {
  unsigned char *base;          /* address space of the store's arena */
  uint64_t size;                /* bytes at base */
  _Atomic uint64_t top;         /* bytes handed out from base */
  _Atomic uint64_t live;        /* bytes of live blobs below top */
  _Atomic uint64_t heap;        /* blobs that did not fit, on the heap */
};

/* What pool_held says of a blob of len bytes: its header and it,
 * rounded up to 16 bytes.
 */
#define POOL_MAX_HELD(len) ((((uint64_t) (len)) + 8 + 15) & ~(uint64_t) 15)

extern void pool_init (struct pool *p, void *base, uint64_t size);
extern void *pool_alloc (struct pool *p, const void *blob, size_t len,
                         uint32_t owner);
extern size_t pool_held (const void *blob);
extern void pool_free (struct pool *p, void *blob);
extern bool pool_wants_compact (const struct pool *p);
extern void pool_compact (struct pool *p, void **blobs, uint32_t n);
extern void pool_destroy (struct pool *p, void **blobs, uint32_t n);

#endif /* MEMBLOCK_POOL_H */
