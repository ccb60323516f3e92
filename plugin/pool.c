/* memblock: blob pools, where a compressed chunk keeps its blobs.
 *
 * glibc's malloc keeps freed small blocks in per-thread arenas, so
 * compressed blobs that are freed and packed again under churn leave
 * memory that no counter sees and malloc_trim cannot give back.  A pool
 * instead owns its memory: a slot of address space from the store's
 * arena (untouched until written), where blobs are placed one after
 * another, each behind a header that names its owner (the unit whose
 * blob it is).  A freed blob only marks its header dead; pool_compact
 * moves the live blobs down over the dead ones and gives the pages past
 * the new end back to the kernel.  A blob that finds the slot full goes
 * to the heap, and comes back into the slot when a compaction makes
 * room.
 *
 *   P1  Blobs are allocated, freed and read only under the page locks
 *       of their unit (Z1 in units.c), and pool_compact runs only under
 *       the locks of every page of the chunk, so no one holds a blob's
 *       address while it moves.  Allocation is a CAS on top, as two
 *       units of one chunk may allocate at once.
 *   P2  Bound: units.c compacts a pool after a request that leaves it
 *       with dead bytes of at least a page and more than an eighth of
 *       its live ones, or with dead bytes only (pool_wants_compact), so
 *       once requests are done a pool holds at most its live bytes, an
 *       eighth more, and two pages (the dead page allowed and the last,
 *       partial one), and nothing once it holds no live blob.
 */

#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "pool.h"

/* The header before each blob; size counts the header, 16-aligned. */
struct pool_obj {
  uint32_t size;
  uint32_t owner;               /* the unit, or POOL_DEAD */
  unsigned char blob[];
};

#define POOL_DEAD UINT32_MAX
#define POOL_PAGE ((uint64_t) 4096)

/* The header of blob. */
static struct pool_obj *
pool_obj (const void *blob)
{
  return (struct pool_obj *) ((unsigned char *) blob
                              - offsetof (struct pool_obj, blob));
}

/* Whether obj lies in p's slot (else it is on the heap). */
static bool
pool_owns (const struct pool *p, const struct pool_obj *obj)
{
  return (const unsigned char *) obj >= p->base &&
         (const unsigned char *) obj < p->base + p->size;
}

/* An empty pool over size bytes of address space at base. */
void
pool_init (struct pool *p, void *base, uint64_t size)
{
  p->base = base;
  p->size = size;
  atomic_init (&p->top, 0);
  atomic_init (&p->live, 0);
  atomic_init (&p->heap, 0);
}

/* Copy the len bytes of blob into p for owner; the copy, or NULL with
 * errno if it fits neither the slot nor the heap.
 */
void *
pool_alloc (struct pool *p, const void *blob, size_t len, uint32_t owner)
{
  uint64_t size = (sizeof (struct pool_obj) + len + 15) & ~(uint64_t) 15;
  uint64_t top = atomic_load_explicit (&p->top, memory_order_relaxed);
  struct pool_obj *obj;

  do {
    if (top + size > p->size) {
      if ((obj = malloc (size)) == NULL)
        return NULL;
      atomic_fetch_add_explicit (&p->heap, 1, memory_order_relaxed);
      goto fill;
    }
  } while (!atomic_compare_exchange_weak_explicit (&p->top, &top, top + size,
                                                   memory_order_relaxed,
                                                   memory_order_relaxed));
  obj = (struct pool_obj *) (p->base + top);
  atomic_fetch_add_explicit (&p->live, size, memory_order_relaxed);
 fill:
  obj->size = size;
  obj->owner = owner;
  memcpy (obj->blob, blob, len);
  return obj->blob;
}

/* Bytes of memory blob holds: its place in the slot.  A blob on the
 * heap counts the same (not malloc's header too), so that moving it
 * into the slot changes no count.
 */
size_t
pool_held (const void *blob)
{
  return pool_obj (blob)->size;
}

/* Free blob: dead in the slot until a compaction, or back to the heap. */
void
pool_free (struct pool *p, void *blob)
{
  struct pool_obj *obj = pool_obj (blob);

  if (pool_owns (p, obj)) {
    atomic_fetch_sub_explicit (&p->live, obj->size, memory_order_relaxed);
    obj->owner = POOL_DEAD;
  }
  else {
    atomic_fetch_sub_explicit (&p->heap, 1, memory_order_relaxed);
    free (obj);
  }
}

/* Whether p has enough dead bytes, or blobs on the heap, to compact: an
 * eighth of its live bytes and a page at least, or all it holds (P2).
 */
bool
pool_wants_compact (const struct pool *p)
{
  uint64_t top = atomic_load_explicit (&p->top, memory_order_relaxed);
  uint64_t live = atomic_load_explicit (&p->live, memory_order_relaxed);

  return (top > 0 && live == 0) ||
         (top - live >= POOL_PAGE && (top - live) * 8 > live) ||
         atomic_load_explicit (&p->heap, memory_order_relaxed) > 0;
}

/* Move the live blobs of p down over the dead ones, pointing blobs[owner]
 * at each blob's new place, give the pages past the new top back, then
 * bring blobs from the heap in where they fit.  The caller holds every
 * lock of the chunk (P1).
 */
void
pool_compact (struct pool *p, void **blobs, uint32_t n)
{
  uint64_t top = atomic_load_explicit (&p->top, memory_order_relaxed);
  uint64_t at = 0, to = 0;

  while (at < top) {
    struct pool_obj *obj = (struct pool_obj *) (p->base + at);
    uint32_t size = obj->size, owner = obj->owner;

    if (owner != POOL_DEAD) {
      if (to != at)
        memmove (p->base + to, obj, size);
      blobs[owner] = p->base + to + offsetof (struct pool_obj, blob);
      to += size;
    }
    at += size;
  }
  atomic_store_explicit (&p->top, to, memory_order_relaxed);
  at = (to + POOL_PAGE - 1) & ~(POOL_PAGE - 1);
  if (at < top)
    arena_release (p->base + at, ((top + POOL_PAGE - 1) & ~(POOL_PAGE - 1)) - at,
                   false);
  for (uint32_t u = 0; u < n && atomic_load (&p->heap) > 0; u++) {
    struct pool_obj *obj = blobs[u] ? pool_obj (blobs[u]) : NULL;
    void *moved;

    if (obj == NULL || pool_owns (p, obj) ||
        atomic_load_explicit (&p->top, memory_order_relaxed) + obj->size
        > p->size)
      continue;
    moved = pool_alloc (p, obj->blob, obj->size - sizeof *obj, u);
    pool_free (p, obj->blob);
    blobs[u] = moved;
  }
}

/* Free the blobs of p on the heap (the slot is the arena's). */
void
pool_destroy (struct pool *p, void **blobs, uint32_t n)
{
  for (uint32_t u = 0; u < n; u++)
    if (blobs[u] != NULL && !pool_owns (p, pool_obj (blobs[u])))
      pool_free (p, blobs[u]);
}
