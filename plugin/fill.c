/* memblock: store_fill, loading data through a callback (images).
 *
 * Where the backend can (raw pages, not a clone, page-aligned), the
 * callback writes straight into the store's pages, a chunk piece at a
 * time, which saves a copy and faults the pages in at once; the piece's
 * pages are reserved whole first (I5) and what stays all zero is given
 * back: that reservation is speculative (I7 in acct.c).  Otherwise, or
 * where the cap leaves no room for a whole piece, the data goes through
 * a buffer and store_write, which keeps every rule of a write; a write
 * there that loses to another thread's speculative reservation is tried
 * again.
 */

#include <errno.h>
#include <stdlib.h>

#include "store-int.h"

/* Bytes store_fill passes through a buffer where it cannot fill pages
 * in place.
 */
#define FILL_BOUNCE ((uint64_t) 8 << 20)

/* Fill one chunk piece in place: 1 if done, 0 if the cap has no room
 * for it whole (nothing done), -1 with errno.
 */
static int
fill_direct (struct store *s, uint64_t idx, uint64_t coff, uint64_t n,
             store_fill_fn fn, void *opaque)
{
  uint64_t pages = (n + STORE_PAGE - 1) >> STORE_PAGE_SHIFT;
  uint64_t create = chunkdir_get (&s->dir, idx) == NULL
                    ? acct_chunk_cost (s, idx, UINT64_MAX) : 0;
  uint64_t bytes = pages * STORE_PAGE + create;
  struct tally t = { 0 };
  struct chunk *c;
  int r;

  if (acct_speculate (s, &t, bytes) == -1)
    return 0;
  t.prepaid = create;
  if ((c = store_chunk_create (s, idx, &t)) == NULL)
    r = -1;
  else
    r = s->ops->fill (s, c, idx << s->chunk_shift, coff, n, fn, opaque, &t);
  acct_speculate_settle (s, &t, bytes);
  return r == -1 ? -1 : 1;
}

/* store_write, tried again while it may have lost to a speculative
 * reservation (I7).
 */
static int
fill_write (struct store *s, const unsigned char *buf, uint64_t n,
            uint64_t offset)
{
  struct acct_watch w;

  for (;;) {
    acct_watch (s, &w);
    if (store_write (s, buf, n, offset) == 0)
      return 0;
    if (errno != ENOSPC || !acct_watch_retry (s, &w))
      return -1;
  }
}

/* Fill [offset, offset+len) through buf, in pieces of FILL_BOUNCE. */
static int
fill_bounce (struct store *s, unsigned char *buf, uint64_t len,
             uint64_t offset, store_fill_fn fn, void *opaque)
{
  for (uint64_t at = 0; at < len; at += FILL_BOUNCE) {
    uint64_t n = MIN (FILL_BOUNCE, len - at);

    if (fn (opaque, buf, n, offset + at) == -1 ||
        fill_write (s, buf, n, offset + at) == -1)
      return -1;
  }
  return 0;
}

/* Write [offset, offset+count) with what fn writes into the buffer it
 * is given (fn (opaque, buf, len, offset): 0, or -1 with errno).  In
 * place where it can (see above): offset and count must then be
 * page-aligned (the end may be the device's).  Pages left all zero
 * stay holes.  0, or -1 with errno.
 */
int
store_fill (struct store *s, uint64_t count, uint64_t offset,
            store_fill_fn fn, void *opaque)
{
  bool direct = s->ops->fill != NULL && s->source == NULL &&
                offset % STORE_PAGE == 0 &&
                (count % STORE_PAGE == 0 || offset + count == s->size);
  unsigned char *bounce = NULL;
  int r = 0;

  if (store_check_range (s, count, offset) == -1)
    return -1;
  FOR_EACH_CHUNK (s, count, offset, idx, coff, n, done) {
    if (direct && (r = fill_direct (s, idx, coff, n, fn, opaque)) != 0) {
      if (r == -1)
        break;
      r = 0;
      continue;
    }
    if (bounce == NULL &&
        (bounce = malloc (MIN (FILL_BOUNCE, count))) == NULL) {
      r = -1;
      break;
    }
    if ((r = fill_bounce (s, bounce, n, offset + done, fn, opaque)) == -1)
      break;
  }
  free (bounce);
  return r;
}
