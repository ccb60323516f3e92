/* memblock: loading a device from a raw image file.
 *
 * At start-up, before nbdkit accepts connections, a device declared
 * with :file=PATH is filled from the file.  Only the file's data is
 * read: SEEK_DATA/SEEK_HOLE skip its holes, and the store keeps all-zero
 * pages as holes, so neither costs memory.  The file is read with large
 * preads (from the page cache, usually) straight into the store's pages
 * (store_fill), by a few threads each taking every Nth stripe: the
 * store takes writes in parallel without a lock.
 * The file is read once; changing it later changes nothing.
 */

#define _GNU_SOURCE             /* SEEK_DATA, SEEK_HOLE */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "image.h"
#include "report.h"

#define IMAGE_STRIPE ((uint64_t) 64 << 20)   /* a thread's share at a time */
#define IMAGE_READ ((uint64_t) 8 << 20)       /* bytes per store_fill */
#define IMAGE_MAX_THREADS 4

/* Open path for reading as an image; its size in *size.  Returns the
 * descriptor, or -1 after logging a line starting with what.  The open
 * does not block (O_NONBLOCK), so a FIFO is refused at once instead of
 * waiting for a writer; reads then block as usual.
 */
int
image_open (const char *path, const char *what, uint64_t *size)
{
  struct stat st;
  off_t end;
  int fd = open (path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

  if (fd == -1) {
    report_error ("%s: file=%s: cannot open the image: %m", what, path);
    return -1;
  }
  if (fstat (fd, &st) == -1) {
    report_error ("%s: file=%s: fstat: %m", what, path);
    close (fd);
    return -1;
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    report_error ("%s: file=%s: %s", what, path,
                  S_ISDIR (st.st_mode) ? "is a directory, not an image"
                  : S_ISFIFO (st.st_mode)
                  ? "is a FIFO, not a regular file or block device"
                  : S_ISCHR (st.st_mode)
                  ? "is a character device, not a regular file or block device"
                  : "is not a regular file or block device");
    close (fd);
    return -1;
  }
  if (fcntl (fd, F_SETFL, fcntl (fd, F_GETFL) & ~O_NONBLOCK) == -1) {
    report_error ("%s: file=%s: fcntl: %m", what, path);
    close (fd);
    return -1;
  }
  end = lseek (fd, 0, SEEK_END);
  if (end == -1) {
    report_error ("%s: file=%s: lseek: %m", what, path);
    close (fd);
    return -1;
  }
  posix_fadvise (fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  *size = end;
  return fd;
}

/* What the loading threads share. */
struct image_job {
  int fd;
  struct store *s;
  uint64_t size;                /* bytes of the file */
  unsigned nthreads;
  _Atomic uint64_t data;        /* bytes of data read */
  _Atomic uint64_t *done;       /* bytes of the file dealt with */
  _Atomic bool failed;
  int err;                      /* errno of the first failure */
  pthread_mutex_t err_lock;
};

/* Record a failure (the first errno wins). */
static void
image_fail (struct image_job *j, int err)
{
  pthread_mutex_lock (&j->err_lock);
  if (!j->failed)
    j->err = err;
  j->failed = true;
  pthread_mutex_unlock (&j->err_lock);
}

/* store_fill callback: pread len bytes at offset of the image into buf;
 * past the end of the file, zeroes.
 */
static int
image_pread (void *opaque, void *buf, uint64_t len, uint64_t offset)
{
  struct image_job *j = opaque;
  unsigned char *p = buf;

  while (len > 0) {
    ssize_t r = pread (j->fd, p, len, offset);

    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1)
      return -1;
    if (r == 0) {                       /* the end of the file */
      memset (p, 0, len);
      return 0;
    }
    p += r;
    len -= r;
    offset += r;
  }
  return 0;
}

/* Copy the data of [from, to) of the file (from page-aligned) into the
 * store, extent by extent, each widened to whole pages (what it takes
 * from a hole reads as zeroes).
 */
static int
image_copy (struct image_job *j, uint64_t from, uint64_t to)
{
  while (from < to && !j->failed) {
    off_t data = lseek (j->fd, from, SEEK_DATA), hole;

    if (data == -1 && errno == ENXIO)   /* no data after from */
      return 0;
    if (data == -1)
      return -1;
    if ((uint64_t) data >= to)
      return 0;
    hole = lseek (j->fd, data, SEEK_HOLE);
    if (hole == -1)
      return -1;
    hole = ((uint64_t) hole + STORE_PAGE - 1) & ~(STORE_PAGE - 1);
    if ((uint64_t) hole > to)
      hole = to;
    for (from = data & ~(STORE_PAGE - 1);
         from < (uint64_t) hole && !j->failed; ) {
      uint64_t n = (uint64_t) hole - from < IMAGE_READ ? hole - from
                                                       : IMAGE_READ;

      if (store_fill (j->s, n, from, image_pread, j) == -1)
        return -1;
      from += n;
      j->data += n;
    }
  }
  return 0;
}

/* A loading thread: stripes first, first + nthreads, ... */
static void *
image_thread (void *arg)
{
  struct image_job *j = ((void **) arg)[0];
  unsigned first = (uintptr_t) ((void **) arg)[1];

  for (uint64_t stripe = first; stripe * IMAGE_STRIPE < j->size && !j->failed;
       stripe += j->nthreads) {
    uint64_t from = stripe * IMAGE_STRIPE;
    uint64_t to = from + IMAGE_STRIPE < j->size ? from + IMAGE_STRIPE : j->size;

    if (image_copy (j, from, to) == -1)
      image_fail (j, errno);
    *j->done += to - from;
  }
  return NULL;
}

/* Seconds since start. */
static double
image_elapsed (const struct timespec *start)
{
  struct timespec now;

  clock_gettime (CLOCK_MONOTONIC, &now);
  return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Fill store s from the image of size bytes open on fd (closed here),
 * as image_open gave them, counting progress in *done; 0, or -1 after
 * logging a line starting with what.
 */
int
image_load (int fd, uint64_t size, struct store *s, const char *what,
            _Atomic uint64_t *done)
{
  struct image_job j = { .fd = fd, .s = s, .done = done };
  pthread_t threads[IMAGE_MAX_THREADS];
  void *args[IMAGE_MAX_THREADS][2];
  struct timespec start;
  long cpus = sysconf (_SC_NPROCESSORS_ONLN);
  unsigned i, started = 0;

  clock_gettime (CLOCK_MONOTONIC, &start);
  j.size = size;
  j.nthreads = cpus < 1 ? 1 : cpus > IMAGE_MAX_THREADS ? IMAGE_MAX_THREADS : cpus;
  if ((j.size + IMAGE_STRIPE - 1) / IMAGE_STRIPE < j.nthreads)
    j.nthreads = (j.size + IMAGE_STRIPE - 1) / IMAGE_STRIPE;
  pthread_mutex_init (&j.err_lock, NULL);
  for (i = 0; i < j.nthreads; i++) {
    args[i][0] = &j;
    args[i][1] = (void *) (uintptr_t) i;
    errno = pthread_create (&threads[i], NULL, image_thread, args[i]);
    if (errno != 0) {
      image_fail (&j, errno);
      break;
    }
    started++;
  }
  for (i = 0; i < started; i++)
    pthread_join (threads[i], NULL);
  pthread_mutex_destroy (&j.err_lock);
  close (fd);
  if (j.failed) {
    errno = j.err;
    if (j.err == ENOSPC)
      report_error ("%s: the image's data does not fit under max-memory=%"
                    PRIu64 " (with what the devices loaded before it hold)",
                    what, config.max_memory);
    else
      report_error ("%s: loading the image: %m", what);
    return -1;
  }
  nbdkit_debug ("%s: loaded %" PRIu64 " bytes of data from a %" PRIu64
                "-byte image into %" PRIu64 " bytes of memory in %.3f s",
                what, (uint64_t) j.data, j.size, store_allocated (s),
                image_elapsed (&start));
  return 0;
}
