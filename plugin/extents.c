/* memblock: store_extents, data and holes through a clone's chain.
 *
 * Data pages are data; zero pages and missing chunks are holes, except
 * in a clone, where pages and chunks that show the source report the
 * source's extents.  Neighbouring extents of one kind are merged before
 * they reach the callback.
 */

#include "pagemap.h"
#include "store-int.h"

/* Extents waiting to be merged with their neighbours. */
struct extents_acc {
  store_extent_fn fn;
  void *opaque;
  uint64_t offset, length;
  bool hole;
};

/* Add an extent, merging it with the pending one; the fn's result. */
static int
extents_add (struct extents_acc *acc, uint64_t offset, uint64_t length,
             bool hole)
{
  int r = 0;

  if (acc->length > 0 && acc->hole == hole) {
    acc->length += length;
    return 0;
  }
  if (acc->length > 0)
    r = acc->fn (acc->opaque, acc->offset, acc->length, acc->hole);
  acc->offset = offset;
  acc->length = length;
  acc->hole = hole;
  return r;
}

static int extents_walk (struct store *s, uint64_t count, uint64_t offset,
                         struct extents_acc *acc);

/* Add what [offset, offset+count) of s's source reports (holes if s
 * has none).
 */
static int
extents_source (struct store *s, uint64_t count, uint64_t offset,
                struct extents_acc *acc)
{
  return s->source ? extents_walk (s->source, count, offset, acc)
                   : extents_add (acc, offset, count, true);
}

/* Add the extents of [offset, offset+count) of s to acc. */
static int
extents_walk (struct store *s, uint64_t count, uint64_t offset,
              struct extents_acc *acc)
{
  uint64_t pos = offset, end = offset + count;
  int r = 0;

  while (pos < end && r == 0) {
    uint64_t idx = pos >> s->chunk_shift;
    uint64_t last = (end - 1) >> s->chunk_shift;
    uint64_t next = chunkdir_next (&s->dir, idx, last + 1);
    uint64_t base = idx << s->chunk_shift, cend;
    struct chunk *c;

    if (next != idx) {          /* chunks s does not have */
      uint64_t gap_end = next > last ? end : next << s->chunk_shift;

      r = extents_source (s, gap_end - pos, pos, acc);
      pos = gap_end;
      continue;
    }
    c = chunkdir_get (&s->dir, idx);
    cend = MIN (end - base, 1ULL << s->chunk_shift);
    while (pos - base < cend && r == 0) {
      enum store_class cls;
      uint64_t run = pagemap_run (c, pos - base, cend, &cls);

      r = cls == STORE_SOURCE
          ? extents_source (s, base + run - pos, pos, acc)
          : extents_add (acc, pos, base + run - pos, cls == STORE_ZERO);
      pos = base + run;
    }
  }
  return r;
}

/* Report [offset, offset+count) as a series of data and hole extents. */
int
store_extents (struct store *s, uint64_t count, uint64_t offset,
               store_extent_fn fn, void *opaque)
{
  struct extents_acc acc = { .fn = fn, .opaque = opaque };
  int r;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  r = extents_walk (s, count, offset, &acc);
  if (r == 0 && acc.length > 0)
    r = fn (opaque, acc.offset, acc.length, acc.hole);
  return r < 0 ? -1 : 0;
}
