/* memblock: sparse radix directory of chunk pointers. */

#include <errno.h>
#include <stdlib.h>

#include "chunkdir.h"

#define FANOUT ((size_t) 1 << CHUNKDIR_BITS)

/* Size the tree for nchunks leaves and allocate its root. */
int
chunkdir_init (struct chunkdir *d, uint64_t nchunks)
{
  unsigned bits = 0;

  while (bits < 64 && ((uint64_t) 1 << bits) < nchunks)
    bits++;
  d->nchunks = nchunks;
  d->depth = bits <= CHUNKDIR_BITS ? 1 : (bits + CHUNKDIR_BITS - 1) / CHUNKDIR_BITS;
  d->root = calloc (FANOUT, sizeof (void *));
  return d->root == NULL ? -1 : 0;
}

/* Free the subtree of node at level, calling free_leaf on each leaf. */
static void
chunkdir_free_node (_Atomic (void *) *node, unsigned level,
                    void (*free_leaf) (void *, void *), void *opaque)
{
  size_t i;

  for (i = 0; i < FANOUT; i++) {
    void *p = atomic_load_explicit (&node[i], memory_order_relaxed);
    if (p == NULL)
      continue;
    if (level == 0) {
      if (free_leaf)
        free_leaf (p, opaque);
    }
    else
      chunkdir_free_node (p, level - 1, free_leaf, opaque);
  }
  free (node);
}

/* Free the whole tree; no reader may be running. */
void
chunkdir_free (struct chunkdir *d,
               void (*free_leaf) (void *leaf, void *opaque), void *opaque)
{
  if (d->root)
    chunkdir_free_node (d->root, d->depth - 1, free_leaf, opaque);
  d->root = NULL;
}

/* Install leaf at idx, allocating interior nodes; -1/ENOMEM on failure. */
int
chunkdir_set (struct chunkdir *d, uint64_t idx, void *leaf)
{
  _Atomic (void *) *node = d->root;
  unsigned level;

  if (idx >= d->nchunks) {
    errno = EINVAL;
    return -1;
  }
  for (level = d->depth - 1; level > 0; level--) {
    size_t i = (idx >> (level * CHUNKDIR_BITS)) & (FANOUT - 1);
    _Atomic (void *) *child = atomic_load_explicit (&node[i],
                                                    memory_order_acquire);
    if (child == NULL) {
      child = calloc (FANOUT, sizeof (void *));
      if (child == NULL)
        return -1;
      atomic_store_explicit (&node[i], child, memory_order_release);
    }
    node = child;
  }
  atomic_store_explicit (&node[idx & (FANOUT - 1)], leaf, memory_order_release);
  return 0;
}

/* The interior nodes chunkdir_set (d, idx, ...) would allocate now,
 * leaving out those it would also allocate for prev (an index counted
 * already; UINT64_MAX for none).
 */
unsigned
chunkdir_missing_nodes (const struct chunkdir *d, uint64_t idx, uint64_t prev)
{
  _Atomic (void *) *node = d->root;
  unsigned level, missing = 0;

  for (level = d->depth - 1; level > 0; level--) {
    size_t i = (idx >> (level * CHUNKDIR_BITS)) & (FANOUT - 1);

    if (node != NULL)
      node = atomic_load_explicit (&node[i], memory_order_acquire);
    /* The node for idx >> (level * CHUNKDIR_BITS), if missing. */
    if (node == NULL &&
        (idx >> (level * CHUNKDIR_BITS)) != (prev >> (level * CHUNKDIR_BITS)))
      missing++;
  }
  return missing;
}

/* Search node (covering indexes from base) for a leaf in [idx, end). */
static uint64_t
chunkdir_next_node (_Atomic (void *) *node, unsigned level,
                    uint64_t base, uint64_t idx, uint64_t end)
{
  unsigned shift = level * CHUNKDIR_BITS;
  size_t i = idx > base ? (idx - base) >> shift : 0;

  for (; i < FANOUT; i++) {
    uint64_t child_base = base + ((uint64_t) i << shift);
    void *p;

    if (child_base >= end)
      break;
    p = atomic_load_explicit (&node[i], memory_order_acquire);
    if (p == NULL)
      continue;
    if (level == 0)
      return child_base;
    else {
      uint64_t r = chunkdir_next_node (p, level - 1, child_base,
                                       idx > child_base ? idx : child_base,
                                       end);
      if (r < end)
        return r;
    }
  }
  return end;
}

/* Return the first index in [idx, end) holding a leaf, or end. */
uint64_t
chunkdir_next (const struct chunkdir *d, uint64_t idx, uint64_t end)
{
  if (end > d->nchunks)
    end = d->nchunks;
  if (idx >= end)
    return end;
  return chunkdir_next_node (d->root, d->depth - 1, 0, idx, end);
}
