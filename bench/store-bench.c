/* memblock benchmarks: in-process store throughput, no NBD transport.
 *
 * Measures GiB/s of 4 KiB (random offsets) and 1 MiB (sequential) reads
 * and writes, with 1 and 2 threads each working on its own range, for:
 *   memcpy  plain memcpy between the same buffers and a plain region;
 *   store   store_read/store_write into chunks already allocated;
 *   mutex   the same store with one global mutex around every call.
 * Also, with 1 thread, 1 MiB writes of zeroes that the store must find
 * zero and keep as holes: "zwrite" into chunks never created and
 * "zwrite-chunk" into unwritten pages of chunks that exist, beside
 * memcpy of the same zeroes.
 * Each figure is the median of -r runs of -t seconds; variants are
 * interleaved so that drift hits all of them alike.  Thread i is pinned
 * to the i-th CPU we may use.  Beside GiB/s, each figure gives the CPUs
 * the run got (process CPU time / wall time): on a shared machine, a
 * 2-thread run that got 1.3 CPUs cannot scale 2x.
 *
 * Other modes (they skip memcpy, mutex and the zero writes):
 *   -s       the store variant alone (read and write figures only), for
 *            comparing two builds of the store (run.sh builds this file
 *            against the store of a baseline commit too);
 *   -c LIST  a comma list of codecs (none, zstd, lz4): one store per
 *            codec (store_set_codec), each filled with the same data, and
 *            one variant per store, named after its codec.  A line
 *            "held CODEC DATA_BYTES HELD_BYTES" per store gives what the
 *            filled store holds (store_data, store_allocated), and a
 *            line "data FILE" or "data text" what it was filled with.
 * The data written (the prefill and every write): by default a short
 * repeating byte pattern; with -d FILE, the non-zero 4 KiB pages of 1 MiB
 * pieces spread evenly over FILE's data extents (a disk image of real
 * files: real data for the codecs); with -c and no -d, generated English-
 * like text.  With either, 4 KiB writes take their 4 KiB from successive
 * pages of the thread's 1 MiB buffer, and the stores are filled with
 * distinct data (2 x -m MiB of it), not one MiB repeated.
 * -p adds each run's GiB/s to every line, as a comma list.
 *
 * Three more modes measure what snapshots, the control socket and volatile
 * devices cost the data path; they need the store of layer.c and gate.c
 * (store.h's store_create_like, gate.h), so a build against an older
 * store (the baseline of store-compare.py) has neither and refuses them:
 *   -l N     reads only: "flat", one store, beside "layers", the top of a
 *            chain of N frozen layers as N snapshots leave it: the first
 *            layer holds the prefill, and after each snapshot
 *            (store_create_like of the layer, which is then never written
 *            again) LAYER_PERCENT % of the pages, at random, are
 *            written into the new top; "flat" gets the same writes, so
 *            both read the same bytes (checked on a sample of pages).
 *   -g       "store", the bare store, beside "gate", the same store with
 *            each request passing a gate as plugin/memblock.c does
 *            (gate_enter, the call, gate_leave with its kind and bytes).
 *   -V       a volatile device's write cache (plugin/volatile.c): reads
 *            and writes of three devices, each request passing the
 *            device's gate as with -g:
 *              plain     a store;
 *              volatile  a cache (store_create_like, store_set_retain)
 *                        over a store holding the prefill, written whole
 *                        and then flushed before each run (store_fold,
 *                        store_forget_keep, untimed): its writes land in
 *                        pages the cache does not hold, but keeps as
 *                        spares (plugin/spare.c), as after a flush the
 *                        pages written before it (its budget is the
 *                        whole range: the plugin's, a quarter of the
 *                        device up to 256 MiB, holds a range this size
 *                        on a device of 4 x 2 x -m MiB or more).  Each request also
 *                        checks the cut state
 *                        (memblock_cut_off) and each write does what
 *                        vol_wrote does without FUA: the device's mutex
 *                        around the write count, a log append (grown by
 *                        realloc) and the unflushed counts, and the
 *                        armed-cut check;
 *              vol-warm  the same over another store, its cache holding
 *                        every page already (written once at the start,
 *                        never flushed): writes overwrite the cache's own
 *                        pages;
 *              cold      a plain store trimmed whole before each run
 *                        (untimed): its writes, like volatile's, land in
 *                        pages it does not hold, which the kernel must
 *                        fault in (its reads read holes).
 *            Then the flush: the cache is filled with F MiB (the smaller
 *            of 256 and 2 x -m; "flushmib F") of 4 KiB writes at random
 *            offsets, each page once, or of 1 MiB sequential writes (with
 *            the same bookkeeping), and what vol_flush does is timed:
 *            gate_close, store_fold, store_forget_keep, the log emptied,
 *            gate_open.  Lines "flush 4k 1 volatile" and "flush 1m 1
 *            volatile" give F MiB / that time in GiB/s.
 *   In all three, the variants' order rotates each run.
 *
 * Usage: store-bench [-t SECONDS] [-r RUNS] [-m MIB_PER_THREAD]
 *                    [-s | -c CODECS | -l LAYERS | -g | -V] [-d FILE] [-p]
 * Output: one line per figure: "op bs threads variant gibps cpus [runs]".
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "store.h"
#if __has_include("gate.h")
#include "gate.h"
#define HAVE_LAYERS 1           /* store_create_like and the gate */
#else
#define HAVE_LAYERS 0
#endif

#define MAX_THREADS 2
#define BIG ((uint64_t) 1 << 20)
#define CHUNK_SHIFT 24                  /* the plugin's default, 16 MiB */
#define CHUNK ((uint64_t) 1 << CHUNK_SHIFT)
#define ZRANGE (4 * CHUNK)              /* each zero-write range */
#define PAGE 4096
#define MAX_VARIANTS 4
#define MAX_REPS 99
#define MAX_LAYERS 64
#define LAYER_PERCENT 3                 /* -l: pages written per layer */

/* What a variant does, and the store it uses. */
enum kind { K_MEMCPY, K_STORE, K_MUTEX, K_GATE, K_VOL };
struct vdev;
struct variant {
  const char *name;
  enum kind kind;
  struct store *st;
  struct vdev *vol;                     /* K_VOL: its device */
};
static struct variant variants[MAX_VARIANTS];
static int nvariants;

enum op { OP_READ, OP_WRITE, OP_ZWRITE, OP_ZWRITE_CHUNK, NOPS };
static const char *op_name[] = { "read", "write", "zwrite", "zwrite-chunk" };

/* Store layout: thread i's range at i * region; then, from zbase, a
 * range of ZRANGE without chunks and one of ZRANGE whose chunks exist
 * (each holds one written page, its last).  plain mirrors the threads'
 * ranges and has one ZRANGE for the memcpy of zeroes.
 */
static struct store *stores[MAX_VARIANTS];
static unsigned char *plain;
static unsigned char *zeroes;           /* BIG zero bytes */
/* Where each thread's reads land: not its write buffer, which a read of
 * holes would turn into zeroes for the writes after it.
 */
static unsigned char *rbufs[MAX_THREADS];
static uint64_t region;                 /* bytes per thread */
static uint64_t zbase;
static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool stop;
static pthread_barrier_t barrier;
static int cpu_list[MAX_THREADS];

#if HAVE_LAYERS
static struct gate gate;                /* -g, and -V's plain device */

/* -V: a volatile device's gate and bookkeeping as struct vol in
 * plugin/volatile.c keeps them (volatile.c needs nbdkit: this mirrors
 * vol_wrote without FUA, vol_log and vol_refused).
 */
#define VOL_LOG_MAX ((size_t) 1 << 22)
struct vdev_extent {
  uint64_t offset, length;
};
struct vdev {
  struct gate gate;
  _Atomic unsigned generation;
  _Atomic bool pending, armed;
  pthread_mutex_t lock;
  struct vdev_extent *log;
  size_t nlog, caplog;
  uint64_t untracked, unflushed_writes, unflushed_bytes, writes, arm_left;
};
static struct vdev vdevs[2];            /* volatile, vol-warm */

/* As vol_refused: a request of a connection of generation 0. */
static inline bool
vdev_refused (struct vdev *d)
{
  return atomic_load (&d->generation) != 0 || atomic_load (&d->pending);
}

/* As vol_wrote with fua false, and vol_log. */
static inline void
vdev_wrote (struct vdev *d, uint64_t count, uint64_t offset)
{
  pthread_mutex_lock (&d->lock);
  d->writes++;
  if (d->nlog == d->caplog && d->caplog < VOL_LOG_MAX) {
    size_t cap = d->caplog ? d->caplog * 2 : 1024;
    struct vdev_extent *log = realloc (d->log, cap * sizeof *log);

    if (log != NULL) {
      d->log = log;
      d->caplog = cap;
    }
  }
  if (d->nlog < d->caplog)
    d->log[d->nlog++] = (struct vdev_extent) { offset, count };
  else
    d->untracked++;
  d->unflushed_writes++;
  d->unflushed_bytes += count;
  if (atomic_load (&d->armed) && --d->arm_left == 0)
    atomic_store (&d->pending, true);
  pthread_mutex_unlock (&d->lock);
}

/* As vol_clear, under the lock. */
static void
vdev_clear (struct vdev *d)
{
  pthread_mutex_lock (&d->lock);
  d->nlog = 0;
  d->untracked = 0;
  d->unflushed_writes = d->unflushed_bytes = 0;
  pthread_mutex_unlock (&d->lock);
}
#endif

struct job {
  int id;
  enum op op;
  uint64_t bs;
  const struct variant *v;
  unsigned char *buf;                   /* BIG bytes, the thread's own */
  bool rotate;                          /* 4 KiB writes walk buf's pages */
  uint64_t bytes;                       /* result */
};

static double
clock_s (clockid_t clock)
{
  struct timespec ts;

  clock_gettime (clock, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die (const char *what)
{
  perror (what);
  exit (1);
}

/* One operation of the job's kind at offset off of its range; n is
 * the number of operations done before.
 */
static inline void
do_op (struct job *j, uint64_t base, uint64_t off, uint64_t n)
{
  bool write = j->op != OP_READ;
  unsigned char *buf = j->buf;

  if (write && j->rotate && j->bs < BIG)
    buf += (n % (BIG / j->bs)) * j->bs;
  if (j->v->kind == K_MEMCPY) {
    unsigned char *p = plain + (j->op >= OP_ZWRITE
                                ? region * MAX_THREADS : base) + off;
    if (write)
      memcpy (p, buf, j->bs);
    else
      memcpy (buf, p, j->bs);
    return;
  }
#if HAVE_LAYERS
  if (j->v->kind == K_GATE) {
    /* As plugin/memblock.c's pread and pwrite. */
    struct gate_stripe *st = gate_enter (&gate);
    int r = write ? store_write (j->v->st, buf, j->bs, base + off)
                  : store_read (j->v->st, buf, j->bs, base + off);

    gate_leave (st, write ? GATE_WRITE : GATE_READ, j->bs);
    if (r == -1)
      die ("store");
    return;
  }
  if (j->v->kind == K_VOL) {
    /* The same on a volatile device (memblock_cut_off, vol_wrote). */
    struct vdev *d = j->v->vol;
    struct gate_stripe *st = gate_enter (&d->gate);
    int r = vdev_refused (d) ? -1
      : write ? store_write (j->v->st, buf, j->bs, base + off)
      : store_read (j->v->st, buf, j->bs, base + off);

    if (r == 0 && write)
      vdev_wrote (d, j->bs, base + off);
    gate_leave (st, write ? GATE_WRITE : GATE_READ, j->bs);
    if (r == -1)
      die ("store");
    return;
  }
#endif
  if (j->v->kind == K_MUTEX)
    pthread_mutex_lock (&global_lock);
  if ((write ? store_write (j->v->st, buf, j->bs, base + off)
       : store_read (j->v->st, buf, j->bs, base + off)) == -1)
    die ("store");
  if (j->v->kind == K_MUTEX)
    pthread_mutex_unlock (&global_lock);
}

static void *
worker (void *arg)
{
  struct job *j = arg;
  cpu_set_t set;
  uint64_t base, len, pos = 0, n = 0;
  uint64_t x = 0x9e3779b97f4a7c15ULL * (j->id + 1);     /* xorshift */

  switch (j->op) {
  case OP_ZWRITE:       base = zbase, len = ZRANGE; break;
  case OP_ZWRITE_CHUNK: base = zbase + ZRANGE, len = ZRANGE; break;
  default:              base = j->id * region, len = region; break;
  }
  CPU_ZERO (&set);
  CPU_SET (cpu_list[j->id], &set);
  pthread_setaffinity_np (pthread_self (), sizeof set, &set);
  pthread_barrier_wait (&barrier);
  while (!atomic_load_explicit (&stop, memory_order_relaxed)) {
    uint64_t off;

    if (j->bs < BIG) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      off = (x % (len / j->bs)) * j->bs;
    }
    else {
      off = pos;
      pos = pos + j->bs >= len ? 0 : pos + j->bs;
      /* Keep off the written last MiB of each chunk. */
      if (j->op == OP_ZWRITE_CHUNK && (pos & (CHUNK - 1)) == CHUNK - BIG)
        pos = pos + j->bs >= len ? 0 : pos + j->bs;
    }
    do_op (j, base, off, n);
    n++;
  }
  j->bytes = n * j->bs;
  return NULL;
}

/* Figures of one run. */
struct figure {
  double gibps;                 /* GiB/s over all threads */
  double cpus;                  /* CPU time / wall time */
};

/* Run one figure for secs seconds. */
static struct figure
run (int threads, enum op op, uint64_t bs, const struct variant *v,
     double secs, unsigned char **bufs, bool rotate)
{
  pthread_t tid[MAX_THREADS];
  struct job jobs[MAX_THREADS];
  struct timespec ts = { (time_t) secs,
                         (long) ((secs - (time_t) secs) * 1e9) };
  uint64_t total = 0;
  double t0, t1, c0, c1;
  int i;

  atomic_store (&stop, false);
  pthread_barrier_init (&barrier, NULL, threads + 1);
  for (i = 0; i < threads; i++) {
    jobs[i] = (struct job) { .id = i, .op = op, .bs = bs, .v = v,
                             .buf = op >= OP_ZWRITE ? zeroes
                                    : op == OP_READ ? rbufs[i] : bufs[i],
                             .rotate = rotate };
    if (pthread_create (&tid[i], NULL, worker, &jobs[i]) != 0)
      die ("pthread_create");
  }
  pthread_barrier_wait (&barrier);
  t0 = clock_s (CLOCK_MONOTONIC);
  c0 = clock_s (CLOCK_PROCESS_CPUTIME_ID);
  nanosleep (&ts, NULL);
  atomic_store (&stop, true);
  for (i = 0; i < threads; i++) {
    pthread_join (tid[i], NULL);
    total += jobs[i].bytes;
  }
  t1 = clock_s (CLOCK_MONOTONIC);
  c1 = clock_s (CLOCK_PROCESS_CPUTIME_ID);
  pthread_barrier_destroy (&barrier);
  return (struct figure) { total / (t1 - t0) / (1 << 30),
                           (c1 - c0) / (t1 - t0) };
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;

  return (x > y) - (x < y);
}

static double
median (double *x, int n)
{
  qsort (x, n, sizeof *x, cmp_double);
  return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

static bool print_runs;                 /* -p */

/* Print the medians of n figures, and with -p each run's GiB/s. */
static void
print (const char *op, const char *bs, int threads, const char *name,
       const struct figure *f, int n)
{
  double g[MAX_REPS], c[MAX_REPS];

  for (int i = 0; i < n; i++)
    g[i] = f[i].gibps, c[i] = f[i].cpus;
  printf ("%s %s %d %s %.3f %.2f", op, bs, threads, name,
          median (g, n), median (c, n));
  for (int i = 0; print_runs && i < n; i++)
    printf ("%c%.3f", i ? ',' : ' ', f[i].gibps);
  printf ("\n");
}

/* Data for the stores, used when -d or -c is given. */

/* Fill pool (len bytes, a multiple of PAGE) with the non-zero 4 KiB
 * pages of 1 MiB pieces spread evenly over the data extents of path;
 * if they are too few, repeat them.
 */
static void
pool_from_file (unsigned char *pool, uint64_t len, const char *path)
{
  static const unsigned char zero[PAGE];
  int fd = open (path, O_RDONLY);
  off_t size, off, start, end;
  uint64_t data = 0, stride, next = 0, pos = 0, got = 0;
  unsigned char *piece = malloc (BIG);

  if (fd == -1 || piece == NULL)
    die (path);
  size = lseek (fd, 0, SEEK_END);
  /* Pass 1: how much data there is. */
  for (off = 0; off < size; off = end) {
    start = lseek (fd, off, SEEK_DATA);
    if (start == -1)
      break;
    end = lseek (fd, start, SEEK_HOLE);
    data += end - start;
  }
  /* Pass 2: a piece every stride bytes of data. */
  stride = data / BIG > len / BIG ? data / BIG / (len / BIG) * BIG : BIG;
  for (off = 0; off < size && got < len; off = end) {
    start = lseek (fd, off, SEEK_DATA);
    if (start == -1)
      break;
    end = lseek (fd, start, SEEK_HOLE);
    for (off_t p = start; p < end && got < len; p += BIG, pos += BIG) {
      ssize_t r;

      if (pos < next)
        continue;
      next += stride;
      r = pread (fd, piece, end - p < (off_t) BIG ? (size_t) (end - p) : BIG,
                 p);
      if (r == -1)
        die (path);
      for (ssize_t k = 0; k + PAGE <= r && got < len; k += PAGE)
        if (memcmp (piece + k, zero, PAGE) != 0) {
          memcpy (pool + got, piece + k, PAGE);
          got += PAGE;
        }
    }
  }
  close (fd);
  free (piece);
  if (got == 0) {
    fprintf (stderr, "store-bench: %s: no data\n", path);
    exit (1);
  }
  for (uint64_t k = got; k < len; k += PAGE)
    memcpy (pool + k, pool + k % got, PAGE);
}

/* Fill pool with English-like text: words of a small vocabulary in a
 * pseudo-random order, with punctuation and line breaks.
 */
static void
pool_text (unsigned char *pool, uint64_t len)
{
  static const char *words[] = {
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as",
    "with", "be", "on", "not", "this", "by", "are", "or", "from", "at",
    "which", "but", "have", "an", "they", "more", "can", "device", "block",
    "memory", "server", "write", "read", "data", "page", "file", "system",
    "client", "request", "compressed", "export", "image", "size", "chunk",
    "return", "error", "value", "function", "struct", "buffer", "offset",
  };
  const unsigned nwords = sizeof words / sizeof words[0];
  uint64_t x = 0x2545f4914f6cdd1dULL, pos = 0, col = 0;

  while (pos < len) {
    const char *w;
    size_t n;

    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    w = words[x % nwords];
    n = strlen (w);
    for (size_t i = 0; i < n && pos < len; i++)
      pool[pos++] = w[i];
    col += n + 1;
    if (pos < len)
      pool[pos++] = (x >> 32) % 11 == 0 ? '.' : col > 70 ? '\n' : ' ';
    if (col > 70)
      col = 0;
  }
}

/* The variants of each mode. */
static void
add_variant (const char *name, enum kind kind, struct store *st)
{
  variants[nvariants++] = (struct variant) { name, kind, st, NULL };
}

static struct store *
new_store (void)
{
  struct store *st = store_create (zbase + 2 * ZRANGE, CHUNK_SHIFT, NULL);

  if (st == NULL)
    die ("store_create");
  return st;
}

static void
usage (const char *prog)
{
  fprintf (stderr, "usage: %s [-t SECONDS] [-r RUNS] [-m MIB] "
           "[-s | -c CODECS | -l LAYERS | -g | -V] [-d FILE] [-p]\n", prog);
  exit (2);
}

#if HAVE_LAYERS
/* -l: LAYER_PERCENT % of the pages of [0, len), at random (seed), written
 * into st with 4 KiB of buf's successive pages.
 */
static void
write_some (struct store *st, uint64_t len, uint64_t seed,
            const unsigned char *buf)
{
  uint64_t pages = len / PAGE, n = pages * LAYER_PERCENT / 100;
  uint64_t x = 0x9e3779b97f4a7c15ULL ^ (seed * 0xbf58476d1ce4e5b9ULL);

  for (uint64_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    if (store_write (st, buf + (i % (BIG / PAGE)) * PAGE, PAGE,
                     (x % pages) * PAGE) == -1)
      die ("store_write");
  }
}

/* -l: the chain of n frozen layers over base, flat getting the same
 * writes; returns the top.  layers[] keeps every store made, to free.
 */
static struct store *
make_chain (struct store *base, struct store *flat, int n, uint64_t len,
            const unsigned char *buf, struct store **layers)
{
  struct store *top = base;
  unsigned char *a = malloc (PAGE), *b = malloc (PAGE);
  uint64_t x = 12345;

  for (int i = 0; i < n; i++) {
    if ((layers[i] = top = store_create_like (top)) == NULL)
      die ("store_create_like");
    write_some (top, len, i + 1, buf);
    write_some (flat, len, i + 1, buf);
  }
  /* Both read the same bytes. */
  if (a == NULL || b == NULL)
    die ("malloc");
  for (int i = 0; i < 4096; i++) {
    uint64_t off;

    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    off = (x % (len / PAGE)) * PAGE;
    if (store_read (top, a, PAGE, off) == -1 ||
        store_read (flat, b, PAGE, off) == -1)
      die ("store_read");
    if (memcmp (a, b, PAGE) != 0) {
      fprintf (stderr, "store-bench: -l: layers and flat differ at %llu\n",
               (unsigned long long) off);
      exit (1);
    }
  }
  free (a);
  free (b);
  return top;
}

/* -V: empty a volatile device's cache as vol_flush does (store_fold,
 * store_forget, the log emptied, with the gate closed); the time it took.
 */
static double
vdev_flush (struct vdev *d, struct store *cache)
{
  double t0 = clock_s (CLOCK_MONOTONIC);

  gate_close (&d->gate);
  if (store_fold (cache) == -1 ||
      (store_forget_keep (cache) == -1 && store_forget (cache) == -1))
    die ("store_fold");
  vdev_clear (d);
  gate_open (&d->gate);
  return clock_s (CLOCK_MONOTONIC) - t0;
}

/* -V: fill the emptied cache with len bytes of bs writes (4 KiB at
 * random offsets, each page once, or 1 MiB sequential) through the
 * device's bookkeeping, then time its flush.
 */
static struct figure
flush_run (struct vdev *d, struct store *cache, uint64_t len, uint64_t bs,
           const unsigned char *buf, uint64_t seed)
{
  uint64_t n = len / bs, *order = malloc (n * sizeof *order);
  uint64_t x = 0x9e3779b97f4a7c15ULL ^ (seed * 0xbf58476d1ce4e5b9ULL);
  double t, c0;

  if (order == NULL)
    die ("malloc");
  for (uint64_t i = 0; i < n; i++)
    order[i] = i;
  for (uint64_t i = n - 1; bs < BIG && i > 0; i--) {   /* shuffle */
    uint64_t k, tmp;

    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    k = x % (i + 1);
    tmp = order[i], order[i] = order[k], order[k] = tmp;
  }
  for (uint64_t i = 0; i < n; i++) {
    struct gate_stripe *st = gate_enter (&d->gate);

    if (store_write (cache, buf + (i % (BIG / bs)) * bs, bs,
                     order[i] * bs) == -1)
      die ("store_write");
    vdev_wrote (d, bs, order[i] * bs);
    gate_leave (st, GATE_WRITE, bs);
  }
  free (order);
  if (d->unflushed_bytes != len)
    die ("flush_run: unflushed bytes");
  c0 = clock_s (CLOCK_PROCESS_CPUTIME_ID);
  t = vdev_flush (d, cache);
  return (struct figure) { len / t / (1 << 30),
                           (clock_s (CLOCK_PROCESS_CPUTIME_ID) - c0) / t };
}
#endif

int
main (int argc, char **argv)
{
  double secs = 0.3;
  int reps = 5, opt, i, ncpu = 0, nstores = 0;
  uint64_t mib = 256, plain_size = 0, written;
  unsigned char *bufs[MAX_THREADS], *pool = NULL;
  static const uint64_t sizes[] = { 4096, BIG };
  /* res[threads-1][op][size][variant][rep] */
  static struct figure res[MAX_THREADS][NOPS][2][MAX_VARIANTS][MAX_REPS];
  const char *codecs = NULL, *datafile = NULL;
  bool store_only = false, full, gated = false, volmode = false, rotate;
  int nlayers = 0, last_op = OP_WRITE;
  struct store *layers[MAX_LAYERS];
#if HAVE_LAYERS
  uint64_t flush_len = 0;
  static struct figure flushres[2][MAX_REPS];   /* -V: 4k, 1m */
#endif
  cpu_set_t set;

  while ((opt = getopt (argc, argv, "t:r:m:sc:d:pl:gV")) != -1) {
    switch (opt) {
    case 't': secs = atof (optarg); break;
    case 'r': reps = atoi (optarg); break;
    case 'm': mib = strtoull (optarg, NULL, 10); break;
    case 's': store_only = true; break;
    case 'c': codecs = optarg; break;
    case 'd': datafile = optarg; break;
    case 'p': print_runs = true; break;
    case 'l': nlayers = atoi (optarg); break;
    case 'g': gated = true; break;
    case 'V': volmode = true; break;
    default: usage (argv[0]);
    }
  }
  if (optind != argc ||
      (store_only + (codecs != NULL) + (nlayers != 0) + gated
       + volmode) > 1 ||
      nlayers < 0 || nlayers > MAX_LAYERS)
    usage (argv[0]);
  rotate = nlayers || gated || volmode;  /* the modes of gate.h */
  if (!HAVE_LAYERS && rotate) {
    fprintf (stderr, "%s: -l, -g and -V need a store with layers and gates "
             "(gate.h)\n", argv[0]);
    return 2;
  }
  if (reps < 1 || reps > MAX_REPS || mib < 1 || mib > (1 << 20) || secs <= 0) {
    fprintf (stderr, "%s: bad arguments\n", argv[0]);
    return 2;
  }
  full = !store_only && codecs == NULL && !rotate;

  /* Threads go to the first CPUs we may use (the same one if only one). */
  if (sched_getaffinity (0, sizeof set, &set) == -1)
    die ("sched_getaffinity");
  for (i = 0; i < CPU_SETSIZE && ncpu < MAX_THREADS; i++)
    if (CPU_ISSET (i, &set))
      cpu_list[ncpu++] = i;
  for (i = ncpu; i < MAX_THREADS; i++)
    cpu_list[i] = cpu_list[0];

  region = mib << 20;
  zbase = (region * MAX_THREADS + CHUNK - 1) & ~(CHUNK - 1);
#if HAVE_LAYERS
  if (nlayers) {
    stores[nstores++] = new_store ();   /* the chain's first layer */
    stores[nstores++] = new_store ();
    add_variant ("flat", K_STORE, stores[1]);
    add_variant ("layers", K_STORE, NULL);      /* once the chain is made */
    last_op = OP_READ;
  }
  else if (gated) {
    stores[nstores++] = new_store ();
    gate_init (&gate);
    add_variant ("store", K_STORE, stores[0]);
    add_variant ("gate", K_GATE, stores[0]);
  }
  else if (volmode) {
    stores[nstores++] = new_store ();   /* plain */
    stores[nstores++] = new_store ();   /* volatile's durable store */
    stores[nstores++] = new_store ();   /* vol-warm's */
    stores[nstores++] = new_store ();   /* cold */
    gate_init (&gate);
    for (i = 0; i < 2; i++) {
      gate_init (&vdevs[i].gate);
      pthread_mutex_init (&vdevs[i].lock, NULL);
    }
    add_variant ("plain", K_GATE, stores[0]);
    add_variant ("volatile", K_VOL, NULL);      /* their caches, once */
    add_variant ("vol-warm", K_VOL, NULL);      /* the prefill is in */
    add_variant ("cold", K_GATE, stores[3]);    /* trimmed before each run */
    variants[1].vol = &vdevs[0];
    variants[2].vol = &vdevs[1];
  }
  else
#endif
  if (codecs == NULL) {
    stores[nstores++] = new_store ();
    if (full)
      add_variant ("memcpy", K_MEMCPY, NULL);
    add_variant ("store", K_STORE, stores[0]);
    if (full)
      add_variant ("mutex", K_MUTEX, stores[0]);
  }
  else {
    char *list = strdup (codecs), *save = NULL;

    if (list == NULL)
      die ("strdup");
    for (char *name = strtok_r (list, ",", &save); name != NULL;
         name = strtok_r (NULL, ",", &save)) {
      enum codec c;

      if (codec_parse (name, &c) == -1 || nstores == MAX_VARIANTS) {
        fprintf (stderr, "%s: -c %s: expected up to %d of none, zstd, "
                 "lz4\n", argv[0], codecs, MAX_VARIANTS);
        return 2;
      }
      stores[nstores] = new_store ();
      if (store_set_codec (stores[nstores], c) == -1)
        die ("store_set_codec");
      add_variant (codec_name (c), K_STORE, stores[nstores]);
      nstores++;
    }
    free (list);
    if (nstores == 0)
      usage (argv[0]);
  }
  if (full) {
    plain_size = region * MAX_THREADS + ZRANGE;
    plain = mmap (NULL, plain_size, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (plain == MAP_FAILED)
      die ("mmap");
    madvise (plain, plain_size, MADV_NOHUGEPAGE);
    memset (plain, 1, plain_size);
  }
  zeroes = calloc (1, BIG);
  if (zeroes == NULL)
    die ("calloc");
  if (datafile != NULL || codecs != NULL) {
    pool = malloc (region * MAX_THREADS);
    if (pool == NULL)
      die ("malloc");
    if (datafile != NULL)
      pool_from_file (pool, region * MAX_THREADS, datafile);
    else
      pool_text (pool, region * MAX_THREADS);
  }
  for (i = 0; i < MAX_THREADS; i++) {
    bufs[i] = aligned_alloc (4096, BIG);
    rbufs[i] = aligned_alloc (4096, BIG);
    if (bufs[i] == NULL || rbufs[i] == NULL)
      die ("aligned_alloc");
    if (pool != NULL)
      /* Each thread writes data from the other's range. */
      memcpy (bufs[i], pool + ((i + 1) % MAX_THREADS) * region, BIG);
    else
      for (uint64_t k = 0; k < BIG; k++)
        bufs[i][k] = (unsigned char) (k * 7 + i * 13 + 1) | 1;
  }
  /* Allocate every page of the threads' ranges, so that writes go to
   * allocated chunks, and (for the zero writes) the last page of each
   * zwrite-chunk chunk.
   */
  for (int k = 0; k < nstores; k++) {
    for (uint64_t off = 0; off < region * MAX_THREADS; off += BIG)
      if (store_write (stores[k], pool ? pool + off : bufs[0], BIG,
                       off) == -1)
        die ("store_write");
    if (full)
      for (uint64_t c = zbase + ZRANGE; c < zbase + 2 * ZRANGE; c += CHUNK)
        if (store_write (stores[k], bufs[0], 4096, c + CHUNK - 4096) == -1)
          die ("store_write");
    if (codecs != NULL)
      printf ("held %s %llu %llu\n", variants[k].name,
              (unsigned long long) store_data (stores[k]),
              (unsigned long long) store_allocated (stores[k]));
  }
  if (codecs != NULL)
    printf ("data %s\n", datafile != NULL ? datafile : "text");
  written = store_allocated (stores[0]);
#if HAVE_LAYERS
  if (nlayers)
    variants[1].st = make_chain (stores[0], stores[1], nlayers,
                                 region * MAX_THREADS, bufs[1], layers);
  if (volmode) {
    /* The caches over the prefilled stores; vol-warm's gets every page. */
    for (i = 1; i <= 2; i++)
      if ((variants[i].st = store_create_like (stores[i])) == NULL ||
          store_set_retain (variants[i].st, region * MAX_THREADS) == -1)
        die ("store_create_like");
    for (uint64_t off = 0; off < region * MAX_THREADS; off += BIG)
      if (store_write (variants[2].st, bufs[1], BIG, off) == -1)
        die ("store_write");
    flush_len = region * MAX_THREADS < 256 * BIG ? region * MAX_THREADS
                                                  : 256 * BIG;
  }
#endif

  for (int r = 0; r < reps; r++) {
    for (int t = 1; t <= MAX_THREADS; t++)
      for (int o = OP_READ; o <= last_op; o++)
        for (int s = 0; s < 2; s++)
          for (int k = 0; k < nvariants; k++) {
            /* -l, -g and -V: the order rotates each run. */
            int v = rotate ? (k + r) % nvariants : k;

#if HAVE_LAYERS
            if (volmode && v == 1) {    /* as a flush leaves it */
              for (uint64_t off = 0; off < region * MAX_THREADS; off += BIG)
                if (store_write (variants[1].st, bufs[1], BIG, off) == -1)
                  die ("store_write");
              vdev_flush (&vdevs[0], variants[1].st);
            }
            else if (volmode && v == 2)
              vdev_clear (&vdevs[1]);
            else if (volmode && v == 3 &&
                     store_trim (variants[3].st, region * MAX_THREADS, 0) == -1)
              die ("store_trim");
#endif
            res[t - 1][o][s][v][r] = run (t, o, sizes[s], &variants[v], secs,
                                          bufs, pool != NULL);
          }
#if HAVE_LAYERS
    if (volmode)
      for (int s = 0; s < 2; s++) {
        vdev_flush (&vdevs[0], variants[1].st);
        flushres[s][r] = flush_run (&vdevs[0], variants[1].st, flush_len,
                                    sizes[s], bufs[0], r * 2 + s + 1);
      }
#endif
    if (!full)
      continue;
    /* variants: memcpy, store, mutex */
    res[0][OP_ZWRITE][1][0][r] =
      run (1, OP_ZWRITE, BIG, &variants[0], secs, bufs, false);
    res[0][OP_ZWRITE][1][1][r] =
      run (1, OP_ZWRITE, BIG, &variants[1], secs, bufs, false);
    res[0][OP_ZWRITE_CHUNK][1][1][r] =
      run (1, OP_ZWRITE_CHUNK, BIG, &variants[1], secs, bufs, false);
  }

  for (int o = OP_READ; o <= last_op; o++)
    for (int s = 0; s < 2; s++)
      for (int t = 1; t <= MAX_THREADS; t++)
        for (int v = 0; v < nvariants; v++)
          print (op_name[o], s ? "1m" : "4k", t, variants[v].name,
                 res[t - 1][o][s][v], reps);
  if (full) {
    print ("zwrite", "1m", 1, "memcpy", res[0][OP_ZWRITE][1][0], reps);
    print ("zwrite", "1m", 1, "store", res[0][OP_ZWRITE][1][1], reps);
    print ("zwrite-chunk", "1m", 1, "store", res[0][OP_ZWRITE_CHUNK][1][1],
           reps);

    /* Zeroes must have stayed holes: nothing more allocated. */
    if (store_allocated (stores[0]) != written) {
      fprintf (stderr, "store-bench: %llu bytes allocated, expected %llu\n",
               (unsigned long long) store_allocated (stores[0]),
               (unsigned long long) written);
      return 1;
    }
  }
#if HAVE_LAYERS
  if (volmode) {
    printf ("flushmib %llu\n", (unsigned long long) (flush_len >> 20));
    print ("flush", "4k", 1, "volatile", flushres[0], reps);
    print ("flush", "1m", 1, "volatile", flushres[1], reps);
    /* Flushed: the cache holds no data, only spare pages (counted),
     * its store every page.
     */
    if (store_data (variants[1].st) != 0 ||
        store_allocated (variants[1].st) != store_spare (variants[1].st) ||
        store_allocated (stores[1]) != region * MAX_THREADS) {
      fprintf (stderr, "store-bench: -V: the cache holds %llu bytes (%llu "
               "of data), its store %llu\n",
               (unsigned long long) store_allocated (variants[1].st),
               (unsigned long long) store_data (variants[1].st),
               (unsigned long long) store_allocated (stores[1]));
      return 1;
    }
    for (i = 1; i <= 2; i++)
      store_destroy (variants[i].st);
    for (i = 0; i < 2; i++) {
      gate_destroy (&vdevs[i].gate);
      pthread_mutex_destroy (&vdevs[i].lock);
      free (vdevs[i].log);
    }
  }
#endif
  for (int k = nlayers - 1; k >= 0; k--)
    store_destroy (layers[k]);
  for (int k = 0; k < nstores; k++)
    store_destroy (stores[k]);
#if HAVE_LAYERS
  if (gated || volmode)
    gate_destroy (&gate);
#endif
  if (plain != NULL)
    munmap (plain, plain_size);
  free (zeroes);
  free (pool);
  for (i = 0; i < MAX_THREADS; i++) {
    free (bufs[i]);
    free (rbufs[i]);
  }
  return 0;
}
