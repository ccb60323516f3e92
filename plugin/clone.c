/* memblock: the clone layer, a clone's view of its chain of sources.
 *
 * A clone (store_create_clone) starts as an exact view of a source
 * store that no one writes any more (a read-only device).  Its chunks
 * carry a hide bitmap beside map (pagemap.h has the classes); a missing
 * chunk in a clone is all source, and chains of clones read through
 * each source in turn.  Both backends keep these rules:
 *
 *   C1  A page leaves the source class once, under its lock, and never
 *       comes back: a write or a zero sets hide, and in a clone every
 *       data page has hide set.  A write into a page still showing its
 *       source first copies the source's page up (clone_copy_up: a
 *       partial write keeps the rest of it) and keeps the page only if
 *       it is not all zero.
 *   C2  A reader loads hide before map; a writer sets map before hide
 *       (release), and a release sets hide before it clears map.  So a
 *       reader sees a class the page really had: never the source's
 *       bytes once the page has been trimmed or written, and never
 *       zeroes for a page that went straight from source to data.
 *   C3  Writes and zeroes in a clone reserve, before any change, the
 *       pages that may need memory: a partial write or zero into a page
 *       still showing its source is counted even if the result turns
 *       out all zero (the unused reservation is given back), unless no
 *       store down the chain has the chunk, where the source reads
 *       zeroes.  A zero can thus fail with ENOSPC in a clone, changing
 *       nothing.  A clone creates a chunk wherever it must hide a
 *       source's chunk, so a write or zero can create chunks of zeroes
 *       (headers only).
 */

#include <string.h>

#include "pagemap.h"
#include "store-int.h"

/* Whether some store down s's chain of sources has the chunk at idx:
 * where none has, a clone's missing chunk reads zeroes.
 */
bool
clone_source_has_chunk (const struct store *s, uint64_t idx)
{
  for (s = s->source; s != NULL; s = s->source)
    if (chunkdir_get (&s->dir, idx) != NULL)
      return true;
  return false;
}

/* The first chunk index in [idx, end) that s or a store down its chain
 * has, or end: every chunk before it reads zeroes.
 */
uint64_t
clone_next_chunk (const struct store *s, uint64_t idx, uint64_t end)
{
  for (; s != NULL; s = s->source)
    end = chunkdir_next (&s->dir, idx, end);
  return end;
}

/* Fill len bytes at out with what [offset, offset+len) of s's source
 * holds, or zeroes if s has none.  Bytes within one page, the common
 * case, find the store that holds that page with a walk down the chain,
 * which a long chain of snapshot layers makes worth it; longer runs go
 * through store_read, run by run.
 */
void
clone_read_source (struct store *s, unsigned char *out,
                   uint64_t len, uint64_t offset)
{
  uint64_t p = offset >> STORE_PAGE_SHIFT;

  if (s->source && ((offset + len - 1) >> STORE_PAGE_SHIFT) != p) {
    store_read (s->source, out, len, offset);
    return;
  }
  for (s = s->source; s != NULL; s = s->source) {
    uint64_t idx = offset >> s->chunk_shift;
    struct chunk *c = chunkdir_get (&s->dir, idx);
    uint64_t mask = (1ULL << (s->chunk_shift - STORE_PAGE_SHIFT)) - 1;

    if (c == NULL)
      continue;                 /* all source, or zeroes at the end */
    switch (pagemap_class (c, p & mask)) {
    case STORE_SOURCE:
      continue;
    case STORE_DATA:
      s->ops->read (s, c, idx << s->chunk_shift, out,
                    offset & ((1ULL << s->chunk_shift) - 1), len);
      return;
    case STORE_ZERO:
      break;
    }
    break;
  }
  memset (out, 0, len);
}

/* Copy [from, to) of chunk c (at base) into out by the class of each
 * run of pages: data from data (the chunk's bytes from `from` on),
 * zeroes, or the source's bytes.
 */
void
clone_read_runs (struct store *s, struct chunk *c, uint64_t base,
                 const unsigned char *data, unsigned char *out,
                 uint64_t from, uint64_t to)
{
  uint64_t pos = from;

  while (pos < to) {
    enum store_class cls;
    uint64_t run = pagemap_run (c, pos, to, &cls);

    if (cls == STORE_DATA)
      memcpy (out + (pos - from), data + (pos - from), run - pos);
    else if (cls == STORE_ZERO)
      memset (out + (pos - from), 0, run - pos);
    else
      clone_read_source (s, out + (pos - from), run - pos, base + pos);
    pos = run;
  }
}

/* Copy up the page at device offset at, which shows its source, into
 * page (zeroes beyond what is read): unless bytes [from, to) cover it,
 * read the source's page first; then those bytes become src (zeroes if
 * src is NULL).  True if the page is then not all zero and must be
 * kept as data (C1).
 */
bool
clone_copy_up (struct store *s, unsigned char *page, uint64_t at,
               uint64_t from, uint64_t to, const unsigned char *src)
{
  uint64_t len = store_page_len (s, at);

  if (from > 0 || to < len)
    store_read (s->source, page, len, at);
  store_page_edit (page, from, to, src);
  return !store_is_zero (page, len);
}

/* What the chunks a zero of [offset, offset+count) of clone s must
 * create to hide its sources' chunks will cost (C3, I6).
 */
uint64_t
clone_hide_cost (struct store *s, uint64_t count, uint64_t offset)
{
  uint64_t idx, last, prev = UINT64_MAX, cost = 0;

  if (s->source == NULL || count == 0)
    return 0;
  last = (offset + count - 1) >> s->chunk_shift;
  for (idx = offset >> s->chunk_shift; ; idx++) {
    if ((idx = clone_next_chunk (s->source, idx, last + 1)) > last)
      break;
    if (chunkdir_get (&s->dir, idx) == NULL) {
      cost += acct_chunk_cost (s, idx, prev);
      prev = idx;
    }
  }
  return cost;
}

/* Bytes a zero of [offset, offset+count) of clone s may take (C3): a
 * page for each partial page at either end that still shows a source
 * that may hold data there.
 */
uint64_t
clone_zero_need (struct store *s, uint64_t count, uint64_t offset)
{
  uint64_t ends[2] = { offset, offset + count }, need = 0;
  uint64_t page_mask = (1ULL << (s->chunk_shift - STORE_PAGE_SHIFT)) - 1;

  if (s->source == NULL || count == 0)
    return 0;
  for (int i = 0; i < 2; i++) {
    uint64_t at = ends[i], p = at >> STORE_PAGE_SHIFT;
    struct chunk *c = chunkdir_get (&s->dir, at >> s->chunk_shift);

    if (at % STORE_PAGE == 0 || at >= s->size ||
        (i == 1 && p == offset >> STORE_PAGE_SHIFT && need > 0))
      continue;
    if ((c == NULL || pagemap_class (c, p & page_mask) == STORE_SOURCE) &&
        clone_source_has_chunk (s, at >> s->chunk_shift))
      need++;
  }
  return need * STORE_PAGE;
}
