/* memblock: address-space arena for chunk data. */
#ifndef MEMBLOCK_ARENA_H
#define MEMBLOCK_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An arena hands out fixed-size slots of anonymous, MAP_NORESERVE
 * memory carved from large regions.  The kernel backs only the 4 KiB
 * pages that are touched, so a slot costs address space, not memory,
 * until it is written.  Carving many slots from one mapping keeps the
 * number of kernel VMAs small (vm.max_map_count) even for tiny slots.
 *
 * The arena is not thread-safe: the caller serialises arena_alloc.
 */
struct arena_region;

struct arena {
  size_t slot_size;             /* bytes per slot (a chunk) */
  size_t region_slots;          /* slots per mapping */
  size_t next_slot;             /* next free slot in the newest region */
  struct arena_region *regions; /* newest first */
};

extern void arena_init (struct arena *a, size_t slot_size, uint64_t max_slots);
extern void *arena_alloc (struct arena *a);
extern void arena_release (void *addr, size_t len, bool locked);
extern int arena_lock (void *addr, size_t len);
extern bool arena_can_lock (uint64_t bytes);
extern void arena_free (struct arena *a);

#endif /* MEMBLOCK_ARENA_H */
