/* memblock: where a device's first data comes from.
 *
 * A raw image file is read directly (image.c).  Anything else is read
 * over NBD with libnbd: an image in a format qemu reads through a
 * `qemu-nbd --read-only --format=FMT` that libnbd starts with systemd
 * socket activation, one per connection (as nbdcopy does), or any NBD
 * server named by a URI.  qemu-nbd follows backing files as qemu would.
 *
 * Before qemu-nbd starts, `qemu-img info --backing-chain` is asked
 * about the file with the same format (its JSON read with json-c): a
 * file that is not in that format, an encrypted image, a missing
 * backing file or a corrupt header is refused there with qemu's own
 * one-line reason, instead of a qemu-nbd dying with its message lost.
 *
 * Only data is copied:
 *   N1  The source's base:allocation block status says where its holes
 *       and zero extents are; they are neither read nor stored.  A
 *       server without it is read whole, and the store still keeps no
 *       all-zero page.
 *   N2  Up to two connections per CPU (at most SOURCE_MAX_CONNS) read
 *       at once, each its own thread taking every Nth stripe of
 *       SOURCE_STRIPE bytes, so that one decodes while another fills
 *       the store: one qemu-nbd each for a file (they decode in
 *       parallel), or several connections to a server that allows
 *       multi-conn (one otherwise).  Each keeps SOURCE_DEPTH reads in
 *       flight into buffers of its own, and writes each to the store as
 *       it completes (store_write keeps no all-zero page); libnbd does
 *       not clear them first.
 *   N3  A load that fails part way (EIO from the server, qemu-nbd
 *       killed, max-memory reached) fails whole: the caller destroys
 *       the device, so nothing half-loaded is ever served.
 * Progress is counted in bytes of the source dealt with; a load that
 * takes over a second logs it once a second (nbdkit -v).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <libnbd.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "image.h"
#include "report.h"
#include "source.h"

#define SOURCE_MAX_CONNS 8
#define SOURCE_STRIPE ((uint64_t) 64 << 20)   /* a thread's share at a time */
#define SOURCE_READ ((uint64_t) 1 << 20)      /* bytes per read */
#define SOURCE_DEPTH 4                        /* reads in flight, each */
#define SOURCE_EXTENTS 1024                   /* extents per block status */
#define SOURCE_INFO_MAX ((size_t) 1 << 20)    /* qemu-img info's output */

extern char **environ;

/* An opened source. */
struct source {
  int fd;                       /* a raw file, or -1 */
  struct nbd_handle *h[SOURCE_MAX_CONNS];
  unsigned nconns;
  bool allocation;              /* base:allocation is there (N1) */
  uint64_t size;
  char label[4096 + 32];        /* "file=PATH (qcow2)" or "nbd=URI" */
};

/* One extent of block status. */
struct source_extent {
  uint64_t offset, length;
  bool zero;
};

/* The extents one block status call returned. */
struct source_extents {
  struct source_extent e[SOURCE_EXTENTS];
  size_t n;
};

/* What the loading threads share. */
struct source_job {
  struct source *src;
  struct store *s;
  _Atomic uint64_t *done;
  _Atomic bool failed;
  int err;                      /* errno of the first failure */
  char msg[512];                /* and its cause */
  unsigned running;
  pthread_mutex_t lock;
  pthread_cond_t cond;
};

/* One loading thread's handle and place. */
struct source_worker {
  struct source_job *j;
  unsigned index;
};

/* Whether a program is on PATH. */
static bool
source_have (const char *prog)
{
  const char *path = getenv ("PATH");
  char buf[4096];

  if (path == NULL || *path == '\0')
    path = "/usr/local/bin:/usr/bin:/bin";
  while (*path) {
    size_t n = strcspn (path, ":");

    if (n > 0 && snprintf (buf, sizeof buf, "%.*s/%s", (int) n, path,
                           prog) < (int) sizeof buf &&
        access (buf, X_OK) == 0)
      return true;
    path += n;
    if (*path == ':')
      path++;
  }
  return false;
}

/* Read all of fd into a string (at most SOURCE_INFO_MAX bytes); NULL
 * with errno.
 */
static char *
source_slurp (int fd)
{
  size_t used = 0, cap = 4096;
  char *buf = malloc (cap), *p;
  ssize_t r;

  while (buf) {
    if (used + 1 == cap) {
      if (cap >= SOURCE_INFO_MAX || (p = realloc (buf, cap * 2)) == NULL) {
        free (buf);
        errno = EFBIG;
        return NULL;
      }
      buf = p;
      cap *= 2;
    }
    r = read (fd, buf + used, cap - used - 1);
    if (r == -1 && errno == EINTR)
      continue;
    if (r == -1) {
      free (buf);
      return NULL;
    }
    if (r == 0)
      break;
    used += r;
  }
  if (buf)
    buf[used] = '\0';
  return buf;
}

/* The last non-empty line of s, without "qemu-img: " and the file's
 * name qemu puts in front, into buf.
 */
static void
source_last_line (const char *s, char *buf, size_t len)
{
  const char *end = s + strlen (s), *start;
  const char *p;

  while (end > s && (end[-1] == '\n' || end[-1] == ' '))
    end--;
  start = end;
  while (start > s && start[-1] != '\n')
    start--;
  if (strncmp (start, "qemu-img: ", 10) == 0)
    start += 10;
  /* "Could not open 'PATH': reason" says the path twice over. */
  if ((p = strstr (start, "': ")) != NULL && p < end)
    start = p + 3;
  snprintf (buf, len, "%.*s", (int) (end - start), start);
}

/* Run argv (a qemu-img command) with stdin from /dev/null, its output
 * and errors into *out and *err, its wait status in *status.  0, or -1
 * after report_error.
 */
static int
source_run (char *const *argv, char **out, char **err, int *status,
            const char *what, const char *file)
{
  posix_spawn_file_actions_t fa;
  int o[2] = { -1, -1 }, e[2] = { -1, -1 };
  pid_t pid;
  int r = -1, i;

  *out = *err = NULL;
  if (pipe2 (o, O_CLOEXEC) == -1 || pipe2 (e, O_CLOEXEC) == -1) {
    report_error ("%s: file=%s: pipe2: %m", what, file);
    goto out;
  }
  posix_spawn_file_actions_init (&fa);
  posix_spawn_file_actions_adddup2 (&fa, o[1], 1);
  posix_spawn_file_actions_adddup2 (&fa, e[1], 2);
  posix_spawn_file_actions_addopen (&fa, 0, "/dev/null", O_RDONLY, 0);
  errno = posix_spawnp (&pid, argv[0], &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy (&fa);
  close (o[1]);
  close (e[1]);
  o[1] = e[1] = -1;
  if (errno != 0) {
    report_error ("%s: file=%s: cannot run %s: %m", what, file, argv[0]);
    goto out;
  }
  /* qemu-img's errors are short: read its output first. */
  *out = source_slurp (o[0]);
  *err = source_slurp (e[0]);
  while (waitpid (pid, status, 0) == -1 && errno == EINTR)
    ;
  if (*out == NULL || *err == NULL) {
    report_error ("%s: file=%s: reading what %s %s says: %m", what, file,
                  argv[0], argv[1]);
    goto out;
  }
  r = 0;
 out:
  for (i = 0; i < 2; i++) {
    if (o[i] >= 0)
      close (o[i]);
    if (e[i] >= 0)
      close (e[i]);
  }
  if (r == -1) {
    free (*out);
    free (*err);
    *out = *err = NULL;
  }
  return r;
}

/* Check the file with qemu-img before qemu-nbd opens it (see above):
 * info says it is in that format, no layer of its backing chain is
 * encrypted and the chain opens; check finds no corruption (leaked
 * clusters are harmless, and some formats have no check).  0, or -1
 * after report_error with errno EINVAL.
 */
static int
source_check_image (const char *file, const char *format, const char *what)
{
  char *info_argv[] = { "qemu-img", "info", "--output=json",
                        "--backing-chain", "-f", (char *) format,
                        (char *) file, NULL };
  char *check_argv[] = { "qemu-img", "check", "-f", (char *) format,
                         (char *) file, NULL };
  char *out = NULL, *err = NULL, cause[256];
  struct json_object *info = NULL;
  int status, r = -1;
  size_t i, n;

  if (source_run (info_argv, &out, &err, &status, what, file) == -1)
    return -1;
  if (!WIFEXITED (status) || WEXITSTATUS (status) != 0) {
    source_last_line (err, cause, sizeof cause);
    report_error ("%s: file=%s: not a %s image qemu can open: %s", what,
                  file, format, cause[0] ? cause : "qemu-img info failed");
    goto out;
  }
  info = json_tokener_parse (out);
  if (info == NULL || !json_object_is_type (info, json_type_array) ||
      (n = json_object_array_length (info)) == 0) {
    report_error ("%s: file=%s: cannot read qemu-img info's answer", what,
                  file);
    goto out;
  }
  for (i = 0; i < n; i++) {
    struct json_object *layer = json_object_array_get_idx (info, i), *v;

    if (json_object_object_get_ex (layer, "encrypted", &v) &&
        json_object_get_boolean (v)) {
      const char *name = "";

      if (json_object_object_get_ex (layer, "filename", &v))
        name = json_object_get_string (v);
      report_error ("%s: file=%s: the image%s%s is encrypted, which "
                    "memblock cannot read", what, file,
                    i > 0 ? "'s backing file " : "", i > 0 ? name : "");
      goto out;
    }
  }
  free (out);
  free (err);
  if (source_run (check_argv, &out, &err, &status, what, file) == -1)
    goto out;
  /* 0 clean, 3 leaked clusters only, 63 no check for this format. */
  if (!WIFEXITED (status) ||
      (WEXITSTATUS (status) != 0 && WEXITSTATUS (status) != 3 &&
       WEXITSTATUS (status) != 63)) {
    const char *found = strstr (out, " errors were found");

    if (found) {                /* "N errors were found on the image." */
      while (found > out && found[-1] != '\n')
        found--;
      snprintf (cause, sizeof cause, "%.*s", (int) strcspn (found, ".\n"),
                found);
    }
    else
      source_last_line (err, cause, sizeof cause);
    report_error ("%s: file=%s: the %s image is corrupt or truncated "
                  "(qemu-img check: %s)", what, file, format,
                  cause[0] ? cause : "failed");
    goto out;
  }
  r = 0;
 out:
  json_object_put (info);
  free (out);
  free (err);
  if (r == -1)
    errno = EINVAL;
  return r;
}

/* A new handle asking for base:allocation; NULL after report_error. */
static struct nbd_handle *
source_handle (struct source *src, const char *what)
{
  struct nbd_handle *h = nbd_create ();

  if (h == NULL) {
    report_error ("%s: %s: %s", what, src->label, nbd_get_error ());
    return NULL;
  }
  if (nbd_add_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
      nbd_set_pread_initialize (h, false) == -1) {
    report_error ("%s: %s: %s", what, src->label, nbd_get_error ());
    nbd_close (h);
    return NULL;
  }
  return h;
}

/* Open connection i of src: a qemu-nbd of its own for a file, or the
 * URI.  0, or -1 after report_error.
 */
static int
source_connect (struct source *src, unsigned i, const struct source_spec *spec,
                const char *what)
{
  char *argv[] = { "qemu-nbd", "--read-only", "--format",
                   (char *) spec->format, "--discard=ignore",
                   (char *) spec->file, NULL };
  struct nbd_handle *h = source_handle (src, what);
  int64_t size;
  int r;

  if (h == NULL)
    return -1;
  if (spec->uri)
    r = nbd_connect_uri (h, spec->uri);
  else
    r = nbd_connect_systemd_socket_activation (h, argv);
  if (r == -1) {
    int e = nbd_get_errno ();

    report_error ("%s: %s: cannot connect: %s", what, src->label,
                  nbd_get_error ());
    nbd_close (h);
    errno = e == ENOENT ? ENOENT : EIO;
    return -1;
  }
  size = nbd_get_size (h);
  if (size == -1) {
    report_error ("%s: %s: %s", what, src->label, nbd_get_error ());
    nbd_close (h);
    errno = EIO;
    return -1;
  }
  if (i == 0) {
    src->size = size;
    src->allocation =
      nbd_can_meta_context (h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
  }
  else if ((uint64_t) size != src->size) {
    report_error ("%s: %s: two connections see different sizes", what,
                  src->label);
    nbd_close (h);
    errno = EIO;
    return -1;
  }
  src->h[i] = h;
  src->nconns = i + 1;
  return 0;
}

/* Open what spec names; its size in *size.  NULL after report_error. */
struct source *
source_open (const struct source_spec *spec, const char *what, uint64_t *size)
{
  struct source *src = calloc (1, sizeof *src);
  long cpus = sysconf (_SC_NPROCESSORS_ONLN);
  unsigned want, i;
  bool raw = spec->uri == NULL &&
    (spec->format == NULL || strcmp (spec->format, "raw") == 0);

  if (src == NULL) {
    report_error ("%s: calloc: %m", what);
    return NULL;
  }
  src->fd = -1;
  if (raw) {
    src->fd = image_open (spec->file, what, &src->size);
    if (src->fd == -1) {
      free (src);
      return NULL;
    }
    *size = src->size;
    return src;
  }

  if (spec->uri)
    snprintf (src->label, sizeof src->label, "nbd=%s", spec->uri);
  else {
    struct stat st;

    snprintf (src->label, sizeof src->label, "file=%s (%s)", spec->file,
              spec->format);
    if (stat (spec->file, &st) == -1 || access (spec->file, R_OK) == -1) {
      report_error ("%s: file=%s: cannot open the image: %m", what,
                    spec->file);
      goto fail;
    }
    if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
      report_error ("%s: file=%s: is not a regular file or block device",
                    what, spec->file);
      errno = EINVAL;
      goto fail;
    }
    if (!source_have ("qemu-img") || !source_have ("qemu-nbd")) {
      report_error ("%s: file=%s: format=%s needs qemu-img and qemu-nbd "
                    "(Debian package qemu-utils), which are not installed",
                    what, spec->file, spec->format);
      errno = ENOENT;
      goto fail;
    }
    if (source_check_image (spec->file, spec->format, what) == -1)
      goto fail;
  }
  if (source_connect (src, 0, spec, what) == -1)
    goto fail;
  /* N2: a server must allow multi-conn; each qemu-nbd is our own. */
  want = cpus < 1 ? 2 : 2 * cpus > SOURCE_MAX_CONNS ? SOURCE_MAX_CONNS
                                                    : 2 * cpus;
  if ((src->size + SOURCE_STRIPE - 1) / SOURCE_STRIPE < want)
    want = (src->size + SOURCE_STRIPE - 1) / SOURCE_STRIPE;
  if (spec->uri && nbd_can_multi_conn (src->h[0]) != 1)
    want = 1;
  for (i = 1; i < want; i++)
    if (source_connect (src, i, spec, what) == -1)
      goto fail;
  *size = src->size;
  return src;
 fail:
  source_close (src);
  return NULL;
}

/* Close src and whatever it holds (a qemu-nbd exits with its socket);
 * errno is kept.
 */
void
source_close (struct source *src)
{
  int e = errno;
  unsigned i;

  if (src == NULL)
    return;
  if (src->fd >= 0)
    close (src->fd);
  for (i = 0; i < src->nconns; i++)
    if (src->h[i]) {
      nbd_shutdown (src->h[i], 0);
      nbd_close (src->h[i]);
    }
  free (src);
  errno = e;
}

/* Record a failure: the first one wins. */
static void
source_fail (struct source_job *j, int err, const char *msg)
{
  pthread_mutex_lock (&j->lock);
  if (!j->failed) {
    j->err = err ? err : EIO;
    snprintf (j->msg, sizeof j->msg, "%s", msg);
  }
  j->failed = true;
  pthread_mutex_unlock (&j->lock);
}

/* block status callback: collect the extents of base:allocation. */
static int
source_extent_cb (void *opaque, const char *context, uint64_t offset,
                  uint32_t *entries, size_t nr, int *error)
{
  struct source_extents *x = opaque;
  size_t i;

  (void) error;
  if (strcmp (context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0)
    return 0;
  for (i = 0; i + 1 < nr && x->n < SOURCE_EXTENTS; i += 2) {
    x->e[x->n++] = (struct source_extent) {
      offset, entries[i], (entries[i + 1] & LIBNBD_STATE_ZERO) != 0
    };
    offset += entries[i];
  }
  return 0;
}

/* One connection's reads in flight: SOURCE_DEPTH buffers of
 * SOURCE_READ bytes, each written to the store when its read completes.
 */
struct source_pipe {
  struct source_job *j;
  struct nbd_handle *h;
  unsigned inflight;
  struct source_slot {
    struct source_pipe *p;
    unsigned char *buf;
    uint64_t offset, len;
    bool busy;
  } slot[SOURCE_DEPTH];
};

/* Completion of a read: store its data (or record its failure). */
static int
source_done (void *opaque, int *error)
{
  struct source_slot *sl = opaque;
  struct source_job *j = sl->p->j;
  char msg[128];

  if (*error != 0) {
    snprintf (msg, sizeof msg, "read of %" PRIu64 " bytes at %" PRIu64
              ": %s", sl->len, sl->offset, strerror (*error));
    source_fail (j, *error, msg);
  }
  else if (!j->failed && store_write (j->s, sl->buf, sl->len,
                                      sl->offset) == -1)
    source_fail (j, errno, errno == ENOSPC
                 ? "the data does not fit under max-memory"
                 : strerror (errno));
  else
    *j->done += sl->len;
  sl->busy = false;
  sl->p->inflight--;
  return 1;                     /* retire the command */
}

/* Wait for a read to complete; -1 if the connection failed. */
static int
source_poll (struct source_pipe *p)
{
  if (nbd_poll (p->h, -1) == -1) {
    source_fail (p->j, nbd_get_errno (), nbd_get_error ());
    return -1;
  }
  return 0;
}

/* Start reading [at, at+n) (n <= SOURCE_READ) into a free buffer. */
static int
source_issue (struct source_pipe *p, uint64_t at, uint64_t n)
{
  struct source_slot *sl = NULL;

  while (p->inflight == SOURCE_DEPTH)
    if (source_poll (p) == -1)
      return -1;
  for (unsigned k = 0; sl == NULL; k++)
    if (!p->slot[k].busy)
      sl = &p->slot[k];
  sl->offset = at;
  sl->len = n;
  sl->busy = true;
  p->inflight++;
  if (nbd_aio_pread (p->h, sl->buf, n, at,
                     (nbd_completion_callback) { .callback = source_done,
                                                 .user_data = sl }, 0)
      == -1) {
    sl->busy = false;
    p->inflight--;
    source_fail (p->j, nbd_get_errno (), nbd_get_error ());
    return -1;
  }
  return 0;
}

/* Copy [from, to) of the source's data through p's connection (N1, N2),
 * keeping up to SOURCE_DEPTH reads in flight.
 */
static int
source_copy (struct source_pipe *p, uint64_t from, uint64_t to)
{
  struct source_job *j = p->j;
  struct source_extents *x = malloc (sizeof *x);
  size_t i;

  if (x == NULL) {
    source_fail (j, errno, "malloc");
    return -1;
  }
  while (from < to && !j->failed) {
    x->n = 0;
    if (!j->src->allocation)
      x->e[x->n++] = (struct source_extent) { from, to - from, false };
    else if (nbd_block_status (p->h, to - from, from,
                               (nbd_extent_callback) {
                                 .callback = source_extent_cb,
                                 .user_data = x }, 0) == -1) {
      source_fail (j, nbd_get_errno (), nbd_get_error ());
      break;
    }
    if (x->n == 0) {
      source_fail (j, EIO, "the server's block status made no progress");
      break;
    }
    for (i = 0; i < x->n && !j->failed; i++) {
      uint64_t at = x->e[i].offset, end = at + x->e[i].length;

      if (end > to)
        end = to;
      if (x->e[i].zero)
        *j->done += end - at;
      while (!x->e[i].zero && at < end && !j->failed) {
        uint64_t n = end - at < SOURCE_READ ? end - at : SOURCE_READ;

        if (source_issue (p, at, n) == -1)
          break;
        at += n;
      }
      from = end;
    }
  }
  while (p->inflight > 0 && source_poll (p) == 0)
    ;
  free (x);
  return j->failed ? -1 : 0;
}

/* A loading thread: stripes index, index + nconns, ... (N2). */
static void *
source_thread (void *arg)
{
  struct source_worker *w = arg;
  struct source_job *j = w->j;
  uint64_t size = j->src->size;
  struct source_pipe p = { .j = j, .h = j->src->h[w->index] };
  unsigned k;

  for (k = 0; k < SOURCE_DEPTH; k++) {
    p.slot[k].p = &p;
    if ((p.slot[k].buf = malloc (SOURCE_READ)) == NULL)
      source_fail (j, errno, "malloc");
  }
  for (uint64_t stripe = w->index; stripe * SOURCE_STRIPE < size &&
         !j->failed; stripe += j->src->nconns) {
    uint64_t from = stripe * SOURCE_STRIPE;
    uint64_t to = size - from > SOURCE_STRIPE ? from + SOURCE_STRIPE : size;

    if (source_copy (&p, from, to) == -1)
      break;
  }
  for (k = 0; k < SOURCE_DEPTH; k++)
    free (p.slot[k].buf);
  pthread_mutex_lock (&j->lock);
  j->running--;
  pthread_cond_signal (&j->cond);
  pthread_mutex_unlock (&j->lock);
  return NULL;
}

/* Seconds since start. */
static double
source_elapsed (const struct timespec *start)
{
  struct timespec now;

  clock_gettime (CLOCK_MONOTONIC, &now);
  return (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
}

/* Wait for the threads, logging progress once a second. */
static void
source_wait (struct source_job *j, const char *what,
             const struct timespec *start)
{
  struct timespec t;

  pthread_mutex_lock (&j->lock);
  while (j->running > 0) {
    clock_gettime (CLOCK_REALTIME, &t);
    t.tv_sec += 1;
    if (pthread_cond_timedwait (&j->cond, &j->lock, &t) == ETIMEDOUT &&
        j->running > 0)
      nbdkit_debug ("%s: loading from %s: %" PRIu64 " of %" PRIu64
                    " bytes (%.0f%%) in %.1f s", what, j->src->label,
                    (uint64_t) *j->done, j->src->size,
                    j->src->size ? 100.0 * *j->done / j->src->size : 100.0,
                    source_elapsed (start));
  }
  pthread_mutex_unlock (&j->lock);
}

/* Fill store s from src, and close src; 0, or -1 after report_error
 * (N3: the caller then drops the store).
 */
int
source_load (struct source *src, struct store *s, const char *what,
             _Atomic uint64_t *done)
{
  _Atomic uint64_t own = 0;
  struct source_job j = { .src = src, .s = s, .done = done ? done : &own };
  struct source_worker w[SOURCE_MAX_CONNS];
  pthread_t threads[SOURCE_MAX_CONNS];
  struct timespec start;
  unsigned i, started = 0;
  int fd = src->fd;
  uint64_t size = src->size;

  if (fd >= 0) {                /* image_load closes it */
    src->fd = -1;
    source_close (src);
    return image_load (fd, size, s, what, j.done);
  }
  clock_gettime (CLOCK_MONOTONIC, &start);
  pthread_mutex_init (&j.lock, NULL);
  pthread_cond_init (&j.cond, NULL);
  for (i = 0; i < src->nconns; i++) {
    w[i] = (struct source_worker) { &j, i };
    pthread_mutex_lock (&j.lock);
    j.running++;
    pthread_mutex_unlock (&j.lock);
    errno = pthread_create (&threads[i], NULL, source_thread, &w[i]);
    if (errno != 0) {
      source_fail (&j, errno, "cannot start a loading thread");
      pthread_mutex_lock (&j.lock);
      j.running--;
      pthread_mutex_unlock (&j.lock);
      break;
    }
    started++;
  }
  source_wait (&j, what, &start);
  for (i = 0; i < started; i++)
    pthread_join (threads[i], NULL);
  pthread_cond_destroy (&j.cond);
  pthread_mutex_destroy (&j.lock);
  if (j.failed) {
    errno = j.err;
    if (j.err == ENOSPC)
      report_error ("%s: %s: the image's data does not fit under "
                    "max-memory=%" PRIu64 " (with what the devices loaded "
                    "before it hold)", what, src->label, config.max_memory);
    else
      report_error ("%s: %s: loading failed: %s", what, src->label, j.msg);
    source_close (src);
    errno = j.err;
    return -1;
  }
  nbdkit_debug ("%s: loaded %s: %" PRIu64 " bytes into %" PRIu64
                " bytes of memory in %.3f s", what, src->label, src->size,
                store_allocated (s), source_elapsed (&start));
  source_close (src);
  return 0;
}
