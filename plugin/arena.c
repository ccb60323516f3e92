/* memblock: address-space arena for chunk data. */

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

/* Give the pages of [addr, addr+len) back to the kernel; they read as zero. */
void
arena_release (void *addr, size_t len)
{
  /* MADV_DONTNEED on private anonymous memory always zero-fills on the
   * next touch.  Should it ever fail, zeroing by hand keeps the
   * contract at the cost of the memory.
   */
  if (madvise (addr, len, MADV_DONTNEED) == -1)
    memset (addr, 0, len);
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
