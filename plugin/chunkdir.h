/* memblock: sparse radix directory of chunk pointers. */
#ifndef MEMBLOCK_CHUNKDIR_H
#define MEMBLOCK_CHUNKDIR_H

#include <stdatomic.h>
#include <stdint.h>

/* A radix tree of 512-way nodes, as deep as the chunk count needs
 * (a 2^63-byte device of 16 MiB chunks is five levels).  Nodes are
 * allocated on first use and never freed before chunkdir_free, so
 * lookups are lock-free: a reader follows acquire-loaded pointers that
 * stay valid for the directory's lifetime.  Writers (chunkdir_set) must
 * be serialised by the caller.
 */
#define CHUNKDIR_BITS 9
#define CHUNKDIR_NODE_BYTES (sizeof (void *) << CHUNKDIR_BITS)

struct chunkdir {
  uint64_t nchunks;             /* valid indexes are [0, nchunks) */
  unsigned depth;               /* levels, >= 1; level 0 holds leaves */
  _Atomic (void *) *root;
};

extern int chunkdir_init (struct chunkdir *d, uint64_t nchunks);
extern void chunkdir_free (struct chunkdir *d,
                           void (*free_leaf) (void *leaf, void *opaque),
                           void *opaque);
extern int chunkdir_set (struct chunkdir *d, uint64_t idx, void *leaf);
extern unsigned chunkdir_missing_nodes (const struct chunkdir *d,
                                        uint64_t idx, uint64_t prev);
extern uint64_t chunkdir_next (const struct chunkdir *d,
                               uint64_t idx, uint64_t end);

/* Return the leaf at idx, or NULL if none was ever set. */
static inline void *
chunkdir_get (const struct chunkdir *d, uint64_t idx)
{
  _Atomic (void *) *node = d->root;
  unsigned level;

  for (level = d->depth - 1; level > 0; level--) {
    size_t i = (idx >> (level * CHUNKDIR_BITS)) & ((1u << CHUNKDIR_BITS) - 1);
    node = atomic_load_explicit (&node[i], memory_order_acquire);
    if (node == NULL)
      return NULL;
  }
  return atomic_load_explicit (&node[idx & ((1u << CHUNKDIR_BITS) - 1)],
                               memory_order_acquire);
}

#endif /* MEMBLOCK_CHUNKDIR_H */
