/* memblock: snapshot layers, built from the clone layer (clone.c).
 *
 * A snapshot of a device freezes its store, as it is, into a read-only
 * layer and gives the device a new, empty clone of it to write into
 * (store_create_like): O(1), no data copied.  Rollback gives the device
 * a fresh clone of the snapshot and lets go of its old one.  Over time
 * a device sits on a chain of frozen layers, each holding the pages
 * written between two snapshots.
 *
 * When a layer is no longer anyone's snapshot and only one store reads
 * through it, it is folded away: store_fold copies its one reader's own
 * pages (data and zeroes) down into it, after which the layer reads as
 * that reader did, and the caller puts it in the reader's place
 * (store_set_source, or the device's store) and lets the reader go.  A
 * fold costs the reader's pages, the delta written since the snapshot,
 * and the pages the two held twice come back: a device whose snapshots
 * are all gone is one store again, holding only its own data.
 *
 *   L1  A frozen layer is never written again, except by store_fold,
 *       and store_fold only changes the pages its one reader (the
 *       child) overrides: a reader of the child never reaches them, so
 *       the child's view is the same before, during and after.  The
 *       child itself must not change meanwhile: its device's gate is
 *       closed (gate.c), or it is frozen too.
 *   L2  A store's source changes (store_set_source) only while no
 *       request can be reading through it: the gates of every device
 *       whose chain passes through it are closed.  The old source is
 *       let go (R1) only after that.
 */

#include <errno.h>
#include <stdlib.h>

#include "pagemap.h"
#include "store-int.h"

/* A clone of s for a device to write into once s is frozen: the same
 * codec, locking and limit.  NULL with errno on failure.
 */
struct store *
store_create_like (struct store *s)
{
  struct store *c = store_create_clone (s, s->limit);

  if (c == NULL)
    return NULL;
  if (store_set_codec (c, s->codec) == -1 ||
      (s->mlock && store_set_mlock (c) == -1)) {
    int err = errno;

    store_destroy (c);
    errno = err;
    return NULL;
  }
  return c;
}

/* Make s read through source instead of its current one, holding the
 * new source and letting the old go (L2).
 */
void
store_set_source (struct store *s, struct store *source)
{
  struct store *old = s->source;

  s->source = source ? store_ref (source) : NULL;
  store_destroy (old);
}

/* Which part of a child's own pages a fold copies: all of them, or the
 * unit-sized blocks keep says yes to (a power cut, volatile.c).
 */
struct layer_fold {
  struct store *child, *parent;
  unsigned unit;                /* 0: all */
  store_keep_fn keep;
  void *opaque;
  uint64_t kept, lost;          /* bytes */
  unsigned char *buf;
};

/* Copy [at, at+len) of child's own pages, of class cls, into parent:
 * data as it reads, zeroes as a zero.
 */
static int
layer_fold_copy (struct layer_fold *f, enum store_class cls, uint64_t at,
                 uint64_t len)
{
  if (cls == STORE_ZERO)
    return store_zero (f->parent, len, at);
  if (store_read (f->child, f->buf, len, at) == -1)
    return -1;
  return store_write (f->parent, f->buf, len, at);
}

/* Fold one run of child's own pages, [at, at+len), of class cls: all of
 * it, or the longest stretches of units keep says yes to.
 */
static int
layer_fold_run (struct layer_fold *f, enum store_class cls, uint64_t at,
                uint64_t len)
{
  uint64_t end = at + len, from;

  if (f->unit == 0) {
    f->kept += len;
    return layer_fold_copy (f, cls, at, len);
  }
  while (at < end) {
    bool keep = f->keep (f->opaque, at - at % f->unit);

    from = at;
    do
      at = MIN (end, at - at % f->unit + f->unit);
    while (at < end && f->keep (f->opaque, at) == keep);
    if (!keep)
      f->lost += at - from;
    else {
      f->kept += at - from;
      if (layer_fold_copy (f, cls, from, at - from) == -1)
        return -1;
    }
  }
  return 0;
}

/* Fold child's own pages into its source (L1): afterwards the source
 * reads as child does.  0, or -1 with errno (ENOSPC at the cap, ENOMEM)
 * having changed only pages child overrides.
 */
int
store_fold (struct store *child)
{
  return store_fold_some (child, 0, NULL, NULL, NULL, NULL);
}

/* Fold into child's source only the unit-sized blocks of child's own
 * pages keep says yes to (unit 0: all), adding the bytes folded and
 * not to *kept and *lost if not NULL; as store_fold otherwise (L1).
 */
int
store_fold_some (struct store *child, unsigned unit, store_keep_fn keep,
                 void *opaque, uint64_t *kept, uint64_t *lost)
{
  struct layer_fold f = {
    .child = child, .parent = child->source, .unit = keep ? unit : 0,
    .keep = keep, .opaque = opaque,
  };
  uint64_t chunk = 1ULL << child->chunk_shift, idx = 0;
  int r = 0;

  if (f.parent == NULL || (keep && (unit == 0 || STORE_PAGE % unit))) {
    errno = EINVAL;
    return -1;
  }
  if ((f.buf = malloc (chunk)) == NULL)
    return -1;
  while (r == 0 &&
         (idx = chunkdir_next (&child->dir, idx, child->dir.nchunks))
         < child->dir.nchunks) {
    struct chunk *c = chunkdir_get (&child->dir, idx);
    uint64_t base = idx << child->chunk_shift;
    uint64_t end = MIN (chunk, child->size - base), pos = 0;

    while (r == 0 && pos < end) {
      enum store_class cls;
      uint64_t run = pagemap_run (c, pos, end, &cls);

      if (cls != STORE_SOURCE)
        r = layer_fold_run (&f, cls, base + pos, run - pos);
      pos = run;
    }
    idx++;
  }
  free (f.buf);
  if (kept)
    *kept += f.kept;
  if (lost)
    *lost += f.lost;
  return r;
}
