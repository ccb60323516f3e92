/* memblock: saving a device's data to a file as a sparse raw image.
 *
 * What is saved is a frozen view (manage_freeze): a read-only store cut
 * at one instant while the device keeps serving reads and writes.
 * Nothing here locks the device, and the view does not change under
 * the save, so the image is the device as it was at that instant.
 *
 * The image is sparse.  store_extents tells data from holes: holes are
 * never written, and inside a data extent every all-zero 4 KiB page is
 * skipped as well (zeroes written as data, a compressed unit that was
 * all zero), so only runs of non-zero pages reach pwrite; ftruncate
 * then gives the file its size, and what was never written reads as
 * zeroes and shows as a hole to SEEK_HOLE.  Data is read with
 * store_read in pieces of SAVE_PIECE into one buffer, outside the
 * store_extents callback: a walk collects up to SAVE_EXTENTS extents
 * and stops, they are copied, and the next walk starts after them.
 *
 * PATH is never a partial image: the image is written to PATH.tmp in
 * the same directory (a stale one, left by a crash, is removed first),
 * fsynced, closed and renamed over PATH (with RENAME_NOREPLACE when
 * overwriting is not allowed, so a file that appeared during the save
 * is not clobbered), and then the directory is fsynced.  Any failure
 * before the rename unlinks PATH.tmp, so a full disk or an unwritable
 * directory leaves nothing behind.  (If only the directory's fsync
 * fails, the complete image is in place and the save is reported as
 * failed all the same: it may not survive a crash.)  Writeback is
 * started every SAVE_KICK bytes (sync_file_range), so the disk works
 * while the store is still being read and the final fsync is short.
 *
 * A refusal or failure is one line in a struct manage_err:
 * "device 'NAME': save to PATH: CAUSE: strerror".
 *
 * save_persist_all runs at unload (SIGTERM, SIGINT), after nbdkit has
 * closed every connection: it waits for running save jobs, then saves
 * every device declared with :persist= to its path, through a frozen
 * view like any other save, overwriting the old image.
 */

#define _GNU_SOURCE             /* renameat2, sync_file_range */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "connect.h"
#include "human.h"
#include "job.h"
#include "registry.h"
#include "save.h"
#include "store.h"

#define SAVE_PIECE ((uint64_t) 8 << 20)     /* bytes per store_read */
#define SAVE_KICK ((uint64_t) 64 << 20)     /* start writeback this often */
#define SAVE_EXTENTS 64                     /* extents per walk */
#define SAVE_PATH_MAX 4096                  /* with ".tmp", as job_info's */

/* One extent of the frozen store. */
struct save_extent {
  uint64_t offset, length;
  bool hole;
};

/* The extents one store_extents walk collected. */
struct save_walk {
  struct save_extent ext[SAVE_EXTENTS];
  size_t n;
};

/* One save in progress. */
struct save_ctx {
  struct store *store;
  int fd;                       /* PATH.tmp */
  unsigned char *buf;           /* SAVE_PIECE bytes */
  uint64_t kicked;              /* writeback started up to here */
  uint64_t data;                /* bytes of data written */
  bool read_failed;             /* the failure was the store's, not the file's */
  _Atomic uint64_t *done;
};

/* Fill err with errnum and "device 'LABEL': save to PATH: " and the
 * rest formatted (with %m for errnum); returns -1.
 */
static int __attribute__ ((format (printf, 5, 6)))
save_fail (struct manage_err *err, int errnum, const char *label,
           const char *path, const char *fmt, ...)
{
  va_list ap;
  int o = snprintf (err->msg, sizeof err->msg, "device '%s': save to %s: ",
                    label, path);

  if (o < 0 || (size_t) o >= sizeof err->msg)
    o = sizeof err->msg - 1;
  va_start (ap, fmt);
  errno = errnum;
  vsnprintf (err->msg + o, sizeof err->msg - o, fmt, ap);
  va_end (ap);
  err->errnum = errnum;
  errno = errnum;
  return -1;
}

/* Refuse a save of device name to path that cannot be right. */
int
save_check (const char *name, const char *path, bool overwrite,
            struct manage_err *err)
{
  char label[CONNECT_QUOTE_MAX];
  struct stat st;
  size_t len = path ? strlen (path) : 0;

  connect_quote (name, label, sizeof label);
  if (len == 0)
    return save_fail (err, EINVAL, label, "\"\"", "no path given");
  if (path[0] != '/')
    return save_fail (err, EINVAL, label, path,
                      "the path must be absolute");
  if (len + 4 >= SAVE_PATH_MAX)
    return save_fail (err, ENAMETOOLONG, label, "...",
                      "the path is longer than %d bytes", SAVE_PATH_MAX - 5);
  if (path[len - 1] == '/')
    return save_fail (err, EISDIR, label, path,
                      "the path names a directory");
  if (lstat (path, &st) == 0) {
    if (S_ISDIR (st.st_mode))
      return save_fail (err, EISDIR, label, path, "is a directory");
    if (!overwrite)
      return save_fail (err, EEXIST, label, path,
                        "the file exists (ask to overwrite it)");
  }
  return 0;
}

/* store_extents callback: collect extents until the walk is full. */
static int
save_collect_extent (void *opaque, uint64_t offset, uint64_t length,
                     bool hole)
{
  struct save_walk *w = opaque;

  w->ext[w->n++] = (struct save_extent) { offset, length, hole };
  return w->n == SAVE_EXTENTS ? 1 : 0;
}

/* Whether the n bytes at p (n >= 1) are all zero. */
static bool
save_zero (const unsigned char *p, size_t n)
{
  return p[0] == 0 && memcmp (p, p + 1, n - 1) == 0;
}

/* pwrite all len bytes at p to the file at offset; -1 with errno. */
static int
save_write (struct save_ctx *c, const unsigned char *p, uint64_t len,
            uint64_t offset)
{
  while (len > 0) {
    ssize_t r = pwrite (c->fd, p, len, offset);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -1;
    if (r == 0) {
      errno = ENOSPC;
      return -1;
    }
    p += r;
    len -= r;
    offset += r;
    c->data += r;
  }
  return 0;
}

/* Copy [offset, offset+len) of the store (len <= SAVE_PIECE) to the
 * file, writing only its runs of non-zero pages; -1 with errno.
 */
static int
save_piece (struct save_ctx *c, uint64_t offset, uint64_t len)
{
  uint64_t pos = 0, run = 0;
  bool in_run = false;

  if (store_read (c->store, c->buf, len, offset) == -1) {
    c->read_failed = true;
    return -1;
  }
  while (pos < len) {
    /* To the next page boundary of the device (or the piece's end). */
    uint64_t end = (((offset + pos) | (STORE_PAGE - 1)) + 1) - offset;
    bool zero;

    if (end > len)
      end = len;
    zero = save_zero (c->buf + pos, end - pos);
    if (!zero && !in_run) {
      run = pos;
      in_run = true;
    }
    else if (zero && in_run) {
      if (save_write (c, c->buf + run, pos - run, offset + run) == -1)
        return -1;
      in_run = false;
    }
    pos = end;
  }
  if (in_run && save_write (c, c->buf + run, len - run, offset + run) == -1)
    return -1;
  /* Have the kernel start writing back what is done: a hint only, the
   * final fsync reports any error.
   */
  if (offset + len - c->kicked >= SAVE_KICK) {
    (void) sync_file_range (c->fd, c->kicked, offset + len - c->kicked,
                            SYNC_FILE_RANGE_WRITE);
    c->kicked = offset + len;
  }
  return 0;
}

/* Copy the store's size bytes to the file, data extents piece by piece,
 * counting progress in *c->done; -1 with errno.
 */
static int
save_copy (struct save_ctx *c, uint64_t size)
{
  uint64_t pos = 0;

  while (pos < size) {
    struct save_walk w = { .n = 0 };

    if (store_extents (c->store, size - pos, pos, save_collect_extent,
                       &w) == -1) {
      c->read_failed = true;
      return -1;
    }
    if (w.n == 0 || w.ext[0].offset != pos) {   /* cannot happen */
      c->read_failed = true;
      errno = EIO;
      return -1;
    }
    for (size_t i = 0; i < w.n; i++) {
      const struct save_extent *e = &w.ext[i];

      if (e->hole) {
        *c->done += e->length;
        continue;
      }
      for (uint64_t at = e->offset; at < e->offset + e->length; ) {
        uint64_t n = e->offset + e->length - at;

        if (n > SAVE_PIECE)
          n = SAVE_PIECE;
        if (save_piece (c, at, n) == -1)
          return -1;
        at += n;
        *c->done += n;
      }
    }
    pos = w.ext[w.n - 1].offset + w.ext[w.n - 1].length;
  }
  return 0;
}

/* Rename tmp to path; without overwrite, never over a file that is
 * there.  -1 with errno.
 */
static int
save_rename (const char *tmp, const char *path, bool overwrite)
{
  if (overwrite)
    return rename (tmp, path);
  if (renameat2 (AT_FDCWD, tmp, AT_FDCWD, path, RENAME_NOREPLACE) == 0)
    return 0;
  if (errno != EINVAL && errno != ENOSYS)
    return -1;
  /* A filesystem without RENAME_NOREPLACE: link refuses an existing
   * path just the same.
   */
  if (link (tmp, path) == -1)
    return -1;
  unlink (tmp);
  return 0;
}

/* fsync the directory that holds path (absolute); -1 with errno. */
static int
save_sync_dir (const char *path)
{
  char copy[SAVE_PATH_MAX];
  int fd, r, e;

  snprintf (copy, sizeof copy, "%s", path);
  fd = open (dirname (copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd == -1)
    return -1;
  r = fsync (fd);
  e = errno;
  close (fd);
  errno = e;
  /* Some filesystems cannot sync a directory: nothing more to do. */
  return r == -1 && errno != EINVAL ? -1 : 0;
}

/* Write the frozen view f to path as a sparse raw image. */
int
save_image (const struct manage_frozen *f, const char *path, bool overwrite,
            _Atomic uint64_t *done_bytes, uint64_t *data_bytes,
            struct manage_err *err)
{
  char label[CONNECT_QUOTE_MAX], tmp[SAVE_PATH_MAX + 8];
  struct save_ctx c = { .store = f->store, .fd = -1, .done = done_bytes };
  struct stat st;
  bool had_old;
  int r = -1;

  *done_bytes = 0;
  connect_quote (f->name, label, sizeof label);
  if (save_check (f->name, path, overwrite, err) == -1)
    return -1;
  snprintf (tmp, sizeof tmp, "%s.tmp", path);
  had_old = stat (path, &st) == 0 && S_ISREG (st.st_mode);
  if (unlink (tmp) == -1 && errno != ENOENT)
    return save_fail (err, errno, label, path,
                      "cannot remove the stale %s: %m", tmp);
  c.fd = open (tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
  if (c.fd == -1)
    return save_fail (err, errno, label, path, "cannot create %s: %m", tmp);
  if (had_old)                  /* keep the old image's permissions */
    (void) fchmod (c.fd, st.st_mode & 07777);
  c.buf = malloc (SAVE_PIECE);
  if (c.buf == NULL) {
    save_fail (err, errno, label, path, "malloc: %m");
    goto out;
  }
  if (f->size > 0 && save_copy (&c, f->size) == -1) {
    if (c.read_failed)
      save_fail (err, errno, label, path, "reading the device: %m");
    else
      save_fail (err, errno, label, path, "writing %s: %m", tmp);
    goto out;
  }
  if (ftruncate (c.fd, f->size) == -1) {
    save_fail (err, errno, label, path, "setting the size of %s: %m", tmp);
    goto out;
  }
  if (fsync (c.fd) == -1) {
    save_fail (err, errno, label, path, "fsync %s: %m", tmp);
    goto out;
  }
  r = close (c.fd);
  c.fd = -1;
  if (r == -1) {
    save_fail (err, errno, label, path, "closing %s: %m", tmp);
    goto out;
  }
  r = -1;
  if (save_rename (tmp, path, overwrite) == -1) {
    if (errno == EEXIST)
      save_fail (err, errno, label, path,
                 "the file appeared during the save (ask to overwrite it)");
    else
      save_fail (err, errno, label, path, "renaming %s: %m", tmp);
    goto out;
  }
  if (save_sync_dir (path) == -1) {
    save_fail (err, errno, label, path,
               "the image is in place, but fsync of its directory: %m");
    free (c.buf);
    return -1;
  }
  if (data_bytes)
    *data_bytes = c.data;
  r = 0;
 out:
  if (c.fd != -1)
    close (c.fd);
  if (r == -1) {
    int e = errno;

    unlink (tmp);
    errno = e;
  }
  free (c.buf);
  return r;
}

/* A device to save at unload. */
struct save_persist {
  char name[CONNECT_NAME_MAX + 1];
  char *path;
};

/* The devices to save at unload. */
struct save_persist_list {
  struct save_persist *v;
  size_t n;
};

/* registry_list callback: note a device that has a :persist= path. */
static int
save_note_persist (void *opaque, const struct device *dev)
{
  struct save_persist_list *l = opaque;
  struct save_persist *v;

  if (dev->persist == NULL)
    return 0;
  v = realloc (l->v, (l->n + 1) * sizeof *v);
  if (v == NULL) {
    nbdkit_error ("device '%s': not saved to %s: realloc: %m",
                  dev->label, dev->persist);
    return 0;
  }
  l->v = v;
  v[l->n].path = strdup (dev->persist);
  if (v[l->n].path == NULL) {
    nbdkit_error ("device '%s': not saved to %s: strdup: %m",
                  dev->label, dev->persist);
    return 0;
  }
  strcpy (v[l->n].name, dev->name);
  l->n++;
  return 0;
}

/* Seconds since start. */
static double
save_elapsed (const struct timespec *start)
{
  struct timespec now;

  clock_gettime (CLOCK_MONOTONIC, &now);
  return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Save device name to its :persist= path at unload, logging the
 * outcome.
 */
static void
save_persist_one (const char *name, const char *path)
{
  char label[CONNECT_QUOTE_MAX], size[32], data[32];
  struct manage_frozen f;
  struct manage_err err = { .errnum = 0 };
  _Atomic uint64_t done = 0;
  uint64_t written = 0;
  struct timespec start;
  int r;

  clock_gettime (CLOCK_MONOTONIC, &start);
  connect_quote (name, label, sizeof label);
  if (manage_freeze (name, &f, &err) == -1) {
    nbdkit_error ("device '%s': not saved to %s: %s", label, path, err.msg);
    return;
  }
  r = save_image (&f, path, true, &done, &written, &err);
  human_format_size (f.size, size, sizeof size);
  manage_thaw (&f);
  if (r == -1) {
    nbdkit_error ("%s", err.msg);
    return;
  }
  human_format_amount (written, data, sizeof data);
  nbdkit_debug ("device '%s': saved to %s (persist): %s, %s of data, "
                "in %.3f s", label, path, size, data, save_elapsed (&start));
}

/* Save every device that has a :persist= path there (at unload). */
void
save_persist_all (void)
{
  struct save_persist_list l = { .v = NULL, .n = 0 };

  /* A save job still running may be writing one of these paths. */
  job_shutdown ();
  registry_list (save_note_persist, &l);
  for (size_t i = 0; i < l.n; i++) {
    save_persist_one (l.v[i].name, l.v[i].path);
    free (l.v[i].path);
  }
  free (l.v);
}
