/* memblock: address-space arena for chunk data. */

#define _GNU_SOURCE             /* mlock2, MLOCK_ONFAULT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "arena.h"

/* Address space reserved per mapping when slots are small. */
#define ARENA_REGION_BYTES ((size_t) 1 << 30)

struct arena_region {
  struct arena_region *next;
  void *base;
  size_t len;
};

/* Set up an empty arena of slot_size slots; max_slots bounds a region. */
void
arena_init (struct arena *a, size_t slot_size, uint64_t max_slots)
{
  size_t per_region = ARENA_REGION_BYTES / slot_size;

  if (per_region == 0)
    per_region = 1;
  if (max_slots > 0 && max_slots < per_region)
    per_region = max_slots;
  a->slot_size = slot_size;
  a->region_slots = per_region;
  a->next_slot = per_region;    /* forces a mapping on first alloc */
  a->regions = NULL;
}

/* Return a fresh zero-filled slot, or NULL with errno set. */
void *
arena_alloc (struct arena *a)
{
  struct arena_region *r;

  if (a->next_slot == a->region_slots) {
    r = malloc (sizeof *r);
    if (r == NULL)
      return NULL;
    r->len = a->region_slots * a->slot_size;
    r->base = mmap (NULL, r->len, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r->base == MAP_FAILED) {
      int err = errno;
      free (r);
      errno = err;
      return NULL;
    }
    /* A huge page would turn a 4 KiB write into 2 MiB of memory. */
    madvise (r->base, r->len, MADV_NOHUGEPAGE);
    r->next = a->regions;
    a->regions = r;
    a->next_slot = 0;
  }
  return (char *) a->regions->base + a->slot_size * a->next_slot++;
}

/* Give the pages of [addr, addr+len) back to the kernel; they read as
 * zero.  locked says they may be locked (arena_lock): MADV_DONTNEED
 * refuses locked memory, so they are unlocked first.
 */
void
arena_release (void *addr, size_t len, bool locked)
{
  if (locked)
    munlock (addr, len);
  /* MADV_DONTNEED on private anonymous memory always zero-fills on the
   * next touch.  Should it ever fail, zeroing by hand keeps the
   * contract at the cost of the memory.
   */
  if (madvise (addr, len, MADV_DONTNEED) == -1)
    memset (addr, 0, len);
}

/* Lock [addr, addr+len), pages written with data, in RAM.  Only these
 * ranges are locked (the kernel counts a locked range whole in VmLck
 * and RLIMIT_MEMLOCK, even with MLOCK_ONFAULT), and neighbouring ranges
 * merge into one mapping.  -1 with errno if the kernel refuses.
 */
int
arena_lock (void *addr, size_t len)
{
  return mlock2 (addr, len, MLOCK_ONFAULT);
}

/* Whether the kernel would let this process lock bytes more: try it on
 * untouched address space (MLOCK_ONFAULT faults nothing in).
 */
bool
arena_can_lock (uint64_t bytes)
{
  size_t len = (bytes + 4095) & ~(uint64_t) 4095;
  void *p = mmap (NULL, len, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  bool ok;

  if (p == MAP_FAILED)
    return false;
  ok = mlock2 (p, len, MLOCK_ONFAULT) == 0;
  munmap (p, len);
  return ok;
}

/* Unmap every region. */
void
arena_free (struct arena *a)
{
  struct arena_region *r, *next;

  for (r = a->regions; r != NULL; r = next) {
    next = r->next;
    munmap (r->base, r->len);
    free (r);
  }
  a->regions = NULL;
  a->next_slot = a->region_slots;
}
