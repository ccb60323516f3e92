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
 * Usage: store-bench [-t SECONDS] [-r RUNS] [-m MIB_PER_THREAD]
 * Output: one line per figure: "op bs threads variant gibps cpus".
 */

#define _GNU_SOURCE
#include <errno.h>
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

#define MAX_THREADS 2
#define BIG ((uint64_t) 1 << 20)
#define CHUNK_SHIFT 24                  /* the plugin's default, 16 MiB */
#define CHUNK ((uint64_t) 1 << CHUNK_SHIFT)
#define ZRANGE (4 * CHUNK)              /* each zero-write range */

enum variant { V_MEMCPY, V_STORE, V_MUTEX, NVARIANTS };
static const char *variant_name[] = { "memcpy", "store", "mutex" };

enum op { OP_READ, OP_WRITE, OP_ZWRITE, OP_ZWRITE_CHUNK, NOPS };
static const char *op_name[] = { "read", "write", "zwrite", "zwrite-chunk" };

/* Store layout: thread i's range at i * region; then, from zbase, a
 * range of ZRANGE without chunks and one of ZRANGE whose chunks exist
 * (each holds one written page, its last).  plain mirrors the threads'
 * ranges and has one ZRANGE for the memcpy of zeroes.
 */
static struct store *store;
static unsigned char *plain;
static unsigned char *zeroes;           /* BIG zero bytes */
static uint64_t region;                 /* bytes per thread */
static uint64_t zbase;
static pthread_mutex_t global_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_bool stop;
static pthread_barrier_t barrier;
static int cpu_list[MAX_THREADS];

struct job {
  int id;
  enum op op;
  uint64_t bs;
  enum variant v;
  unsigned char *buf;                   /* BIG bytes, the thread's own */
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

/* One operation of the job's kind at offset off of its range. */
static inline void
do_op (struct job *j, uint64_t base, uint64_t off)
{
  bool write = j->op != OP_READ;

  if (j->v == V_MEMCPY) {
    unsigned char *p = plain + (j->op >= OP_ZWRITE
                                ? region * MAX_THREADS : base) + off;
    if (write)
      memcpy (p, j->buf, j->bs);
    else
      memcpy (j->buf, p, j->bs);
    return;
  }
  if (j->v == V_MUTEX)
    pthread_mutex_lock (&global_lock);
  if ((write ? store_write (store, j->buf, j->bs, base + off)
       : store_read (store, j->buf, j->bs, base + off)) == -1)
    die ("store");
  if (j->v == V_MUTEX)
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
    do_op (j, base, off);
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
run (int threads, enum op op, uint64_t bs, enum variant v, double secs,
     unsigned char **bufs)
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
                             .buf = op >= OP_ZWRITE ? zeroes : bufs[i] };
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

/* Print the medians of n figures (which it reorders). */
static void
print (const char *op, const char *bs, int threads, enum variant v,
       struct figure *f, int n)
{
  double g[99], c[99];

  for (int i = 0; i < n; i++)
    g[i] = f[i].gibps, c[i] = f[i].cpus;
  printf ("%s %s %d %s %.3f %.2f\n", op, bs, threads, variant_name[v],
          median (g, n), median (c, n));
}

int
main (int argc, char **argv)
{
  double secs = 0.3;
  int reps = 5, opt, i, ncpu = 0;
  uint64_t mib = 256, plain_size, written;
  unsigned char *bufs[MAX_THREADS];
  static const uint64_t sizes[] = { 4096, BIG };
  /* res[threads-1][op][size][variant][rep] */
  static struct figure res[MAX_THREADS][NOPS][2][NVARIANTS][99];
  cpu_set_t set;

  while ((opt = getopt (argc, argv, "t:r:m:")) != -1) {
    switch (opt) {
    case 't': secs = atof (optarg); break;
    case 'r': reps = atoi (optarg); break;
    case 'm': mib = strtoull (optarg, NULL, 10); break;
    default:
      fprintf (stderr, "usage: %s [-t SECONDS] [-r RUNS] [-m MIB]\n", argv[0]);
      return 2;
    }
  }
  if (reps < 1 || reps > 99 || mib < 1 || mib > (1 << 20) || secs <= 0) {
    fprintf (stderr, "%s: bad arguments\n", argv[0]);
    return 2;
  }

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
  store = store_create (zbase + 2 * ZRANGE, CHUNK_SHIFT, NULL);
  if (store == NULL)
    die ("store_create");
  plain_size = region * MAX_THREADS + ZRANGE;
  plain = mmap (NULL, plain_size, PROT_READ | PROT_WRITE,
                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (plain == MAP_FAILED)
    die ("mmap");
  madvise (plain, plain_size, MADV_NOHUGEPAGE);
  zeroes = calloc (1, BIG);
  if (zeroes == NULL)
    die ("calloc");
  for (i = 0; i < MAX_THREADS; i++) {
    bufs[i] = aligned_alloc (4096, BIG);
    if (bufs[i] == NULL)
      die ("aligned_alloc");
    for (uint64_t k = 0; k < BIG; k++)
      bufs[i][k] = (unsigned char) (k * 7 + i * 13 + 1) | 1;
  }
  /* Allocate every page of the threads' ranges, so that writes go to
   * allocated chunks, and the last page of each zwrite-chunk chunk.
   */
  memset (plain, 1, plain_size);
  for (uint64_t off = 0; off < region * MAX_THREADS; off += BIG)
    if (store_write (store, bufs[0], BIG, off) == -1)
      die ("store_write");
  for (uint64_t c = zbase + ZRANGE; c < zbase + 2 * ZRANGE; c += CHUNK)
    if (store_write (store, bufs[0], 4096, c + CHUNK - 4096) == -1)
      die ("store_write");
  written = store_allocated (store);

  for (int r = 0; r < reps; r++) {
    for (int t = 1; t <= MAX_THREADS; t++)
      for (int o = OP_READ; o <= OP_WRITE; o++)
        for (int s = 0; s < 2; s++)
          for (int v = 0; v < NVARIANTS; v++)
            res[t - 1][o][s][v][r] = run (t, o, sizes[s], v, secs, bufs);
    res[0][OP_ZWRITE][1][V_MEMCPY][r] =
      run (1, OP_ZWRITE, BIG, V_MEMCPY, secs, bufs);
    res[0][OP_ZWRITE][1][V_STORE][r] =
      run (1, OP_ZWRITE, BIG, V_STORE, secs, bufs);
    res[0][OP_ZWRITE_CHUNK][1][V_STORE][r] =
      run (1, OP_ZWRITE_CHUNK, BIG, V_STORE, secs, bufs);
  }

  for (int o = OP_READ; o <= OP_WRITE; o++)
    for (int s = 0; s < 2; s++)
      for (int t = 1; t <= MAX_THREADS; t++)
        for (int v = 0; v < NVARIANTS; v++)
          print (op_name[o], s ? "1m" : "4k", t, v, res[t - 1][o][s][v],
                 reps);
  print ("zwrite", "1m", 1, V_MEMCPY, res[0][OP_ZWRITE][1][V_MEMCPY], reps);
  print ("zwrite", "1m", 1, V_STORE, res[0][OP_ZWRITE][1][V_STORE], reps);
  print ("zwrite-chunk", "1m", 1, V_STORE,
         res[0][OP_ZWRITE_CHUNK][1][V_STORE], reps);

  /* Zeroes must have stayed holes: nothing more allocated. */
  if (store_allocated (store) != written) {
    fprintf (stderr, "store-bench: %llu bytes allocated, expected %llu\n",
             (unsigned long long) store_allocated (store),
             (unsigned long long) written);
    return 1;
  }
  store_destroy (store);
  munmap (plain, plain_size);
  free (zeroes);
  for (i = 0; i < MAX_THREADS; i++)
    free (bufs[i]);
  return 0;
}
