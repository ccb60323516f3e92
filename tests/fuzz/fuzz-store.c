/* memblock: libFuzzer target for the store (plugin/store.c).
 *
 * The input picks a chunk size, two store sizes and a memory cap shared
 * by both stores, then a list of operations: write (random, zero or
 * mixed pages), zero (what trim and write-zeroes do), read, extents and
 * out-of-range requests.  Each store has a flat reference buffer and a
 * reference page map (a page is "held" once non-zero data is written
 * to it, and released when a zero or trim covers it whole, or covers
 * all of the device's last partial page).  After every operation the
 * store must agree with the reference:
 *
 *   - every read returns exactly the reference bytes;
 *   - extents cover the range exactly, alternate between data and hole,
 *     and a hole is exactly a run of pages not held;
 *   - store_allocated is the held pages, the cap's use is the sum over
 *     both stores and never above the cap;
 *   - a write fails with ENOSPC exactly when its new pages do not fit
 *     under the cap, and then changes nothing;
 *   - out-of-range requests fail with EINVAL and change nothing;
 *   - destroying both stores gives the whole cap back.
 *
 * Build: make build/fuzz/fuzz-store (clang, -fsanitize=fuzzer,address,
 * undefined).  Run: make fuzz FUZZ_SECONDS=300.
 */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store.h"

#define PAGE STORE_PAGE
#define MAX_SIZE_A ((uint64_t) 8 << 20)   /* 2048 chunks of 4K: 2 levels */
#define MAX_SIZE_B ((uint64_t) 64 << 10)
#define MAX_LEN ((uint64_t) 256 << 10)     /* longest request */
#define HOT ((uint64_t) 128 << 10)         /* where most requests land */
#define MAX_OPS 200

#define CHECK(cond, ...)                                                \
  do {                                                                  \
    if (!(cond)) {                                                      \
      fprintf (stderr, "fuzz-store: %s:%d: check failed: %s: ",         \
               __FILE__, __LINE__, #cond);                              \
      fprintf (stderr, __VA_ARGS__);                                    \
      fprintf (stderr, "\n");                                           \
      abort ();                                                         \
    }                                                                   \
  } while (0)

/* Input reader: returns zeroes once the input runs out. */
struct input {
  const uint8_t *p;
  size_t left;
};

static uint64_t
take (struct input *in, unsigned bytes)
{
  uint64_t v = 0;

  while (bytes-- > 0) {
    v = v << 8;
    if (in->left > 0) {
      v |= *in->p++;
      in->left--;
    }
  }
  return v;
}

/* One store under test and its reference. */
struct dev {
  struct store *s;
  uint64_t size;
  uint8_t *ref;                 /* size bytes */
  uint8_t *held;                /* one flag per page */
  uint64_t npages;
};

static struct store_limit limit;
static int trace = -1;          /* FUZZ_STORE_TRACE=1 prints each step */

#define TRACE(...)                                                      \
  do { if (trace) fprintf (stderr, __VA_ARGS__); } while (0)
static uint8_t scratch[MAX_LEN + 2 * PAGE];

static uint64_t
held_pages (const struct dev *d)
{
  uint64_t n = 0;

  for (uint64_t p = 0; p < d->npages; p++)
    n += d->held[p];
  return n;
}

/* Pages [first, last] touched by [off, off+len), len > 0. */
#define FIRST_PAGE(off) ((off) / PAGE)
#define LAST_PAGE(off, len) (((off) + (len) - 1) / PAGE)

/* Check the store's counters against the reference. */
static void
check_accounting (struct dev *d, struct dev *other)
{
  CHECK (store_allocated (d->s) == held_pages (d) * PAGE,
         "allocated %lu, reference %lu pages",
         (unsigned long) store_allocated (d->s), (unsigned long) held_pages (d));
  CHECK (atomic_load (&limit.used) ==
         store_allocated (d->s) + store_allocated (other->s),
         "cap use %lu != %lu + %lu", (unsigned long) atomic_load (&limit.used),
         (unsigned long) store_allocated (d->s),
         (unsigned long) store_allocated (other->s));
  CHECK (atomic_load (&limit.used) <= limit.max, "cap passed");
}

/* Fill buf with len bytes of a pattern chosen by kind and seed. */
static void
fill (uint8_t *buf, uint64_t off, uint64_t len, unsigned kind, uint32_t seed)
{
  uint64_t x = seed | ((uint64_t) kind << 32) | 1;

  switch (kind % 4) {
  case 0:                                       /* all zero */
    memset (buf, 0, len);
    break;
  case 1:                                       /* random */
  case 2:                                       /* random, some pages zero */
    for (uint64_t i = 0; i < len; i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      memcpy (buf + i, &x, len - i < 8 ? len - i : 8);
    }
    if (kind % 4 == 2)
      for (uint64_t p = off / PAGE; p <= (off + len) / PAGE; p++)
        if ((p + seed) % 3 == 0) {
          uint64_t a = p * PAGE > off ? p * PAGE - off : 0;
          uint64_t b = (p + 1) * PAGE - off < len ? (p + 1) * PAGE - off : len;
          if (a < b)
            memset (buf + a, 0, b - a);
        }
    break;
  default:                                      /* one byte in 509 set */
    memset (buf, 0, len);
    for (uint64_t i = seed % 509; i < len; i += 509)
      buf[i] = 1;
    break;
  }
}

static void
check_read (struct dev *d, uint64_t off, uint64_t len)
{
  CHECK (store_read (d->s, scratch, len, off) == 0, "read %lu+%lu failed",
         (unsigned long) off, (unsigned long) len);
  if (memcmp (scratch, d->ref + off, len) == 0)
    return;
  for (uint64_t i = 0; i < len; i++)
    CHECK (scratch[i] == d->ref[off + i],
           "read %lu+%lu: byte %lu is %#x, reference %#x",
           (unsigned long) off, (unsigned long) len, (unsigned long) (off + i),
           scratch[i], d->ref[off + i]);
}

static void
do_write (struct dev *d, uint64_t off, uint64_t len,
          unsigned kind, uint32_t seed)
{
  uint64_t need = 0, room;
  int r;

  fill (scratch, off, len, kind, seed);
  TRACE ("  data kind %u seed %u\n", kind % 4, seed);
  /* Pages it newly holds: not held, and its bytes in them not all zero. */
  for (uint64_t p = FIRST_PAGE (off); len > 0 && p <= LAST_PAGE (off, len);
       p++) {
    uint64_t a = p * PAGE > off ? p * PAGE : off;
    uint64_t b = (p + 1) * PAGE < off + len ? (p + 1) * PAGE : off + len;
    bool nonzero = false;

    for (uint64_t i = a; i < b && !nonzero; i++)
      nonzero = scratch[i - off] != 0;
    need += !d->held[p] && nonzero;
  }
  room = limit.max - atomic_load (&limit.used);
  errno = 0;
  r = store_write (d->s, scratch, len, off);
  if (need * PAGE > room) {
    CHECK (r == -1 && errno == ENOSPC, "write %lu+%lu of %lu new pages with "
           "%lu free: result %d, errno %d", (unsigned long) off,
           (unsigned long) len, (unsigned long) need,
           (unsigned long) (room / PAGE), r, errno);
    return;                     /* refused: nothing may change */
  }
  CHECK (r == 0, "write %lu+%lu failed (errno %d) with %lu pages free, "
         "%lu needed", (unsigned long) off, (unsigned long) len, errno,
         (unsigned long) (room / PAGE), (unsigned long) need);
  memcpy (d->ref + off, scratch, len);
  for (uint64_t p = FIRST_PAGE (off); len > 0 && p <= LAST_PAGE (off, len);
       p++) {
    uint64_t a = p * PAGE > off ? p * PAGE : off;
    uint64_t b = (p + 1) * PAGE < off + len ? (p + 1) * PAGE : off + len;

    for (uint64_t i = a; i < b && !d->held[p]; i++)
      d->held[p] = scratch[i - off] != 0;
  }
}

static void
do_zero (struct dev *d, uint64_t off, uint64_t len)
{
  CHECK (store_zero (d->s, len, off) == 0, "zero %lu+%lu failed",
         (unsigned long) off, (unsigned long) len);
  memset (d->ref + off, 0, len);
  /* Pages covered whole are released; partly covered ones stay held,
   * except the device's last partial page when the range runs to the end.
   */
  uint64_t end = off + len == d->size ? d->npages * PAGE : off + len;
  for (uint64_t p = (off + PAGE - 1) / PAGE; (p + 1) * PAGE <= end; p++)
    d->held[p] = 0;
}

/* Extents collected from store_extents. */
struct ext_state {
  struct dev *d;
  uint64_t next;                /* where the next extent must start */
  int last_hole;                /* -1 before the first */
  unsigned calls, stop_after;
};

static int
ext_cb (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  struct ext_state *st = opaque;
  struct dev *d = st->d;

  CHECK (offset == st->next, "extent at %lu, expected %lu",
         (unsigned long) offset, (unsigned long) st->next);
  CHECK (length > 0, "empty extent");
  CHECK (offset + length <= d->size, "extent past the end");
  CHECK (st->last_hole != (int) hole, "two %s extents in a row",
         hole ? "hole" : "data");
  for (uint64_t p = FIRST_PAGE (offset); p <= LAST_PAGE (offset, length); p++)
    CHECK (d->held[p] == !hole, "extent %lu+%lu says %s, page %lu is %s",
           (unsigned long) offset, (unsigned long) length,
           hole ? "hole" : "data", (unsigned long) p,
           d->held[p] ? "held" : "not held");
  st->next = offset + length;
  st->last_hole = hole;
  return ++st->calls == st->stop_after ? 1 : 0;
}

static void
check_extents (struct dev *d, uint64_t off, uint64_t len, unsigned stop_after)
{
  struct ext_state st = { .d = d, .next = off, .last_hole = -1,
                          .stop_after = stop_after };

  CHECK (store_extents (d->s, len, off, ext_cb, &st) == 0, "extents failed");
  if (stop_after == 0 || st.calls < stop_after)
    CHECK (st.next == off + len, "extents end at %lu, not %lu",
           (unsigned long) st.next, (unsigned long) (off + len));
}

/* Extent callback for requests that must fail before any extent. */
static int
ext_never (void *opaque, uint64_t offset, uint64_t length, bool hole)
{
  (void) opaque;
  CHECK (0, "extent %lu+%lu (%s) reported for an out-of-range request",
         (unsigned long) offset, (unsigned long) length,
         hole ? "hole" : "data");
  return -1;
}

/* Requests reaching past the end fail with EINVAL and change nothing. */
static void
check_out_of_range (struct dev *d, uint64_t off, uint64_t len)
{
  uint64_t before = store_allocated (d->s);

  errno = 0;
  CHECK (store_write (d->s, scratch, len, off) == -1 && errno == EINVAL,
         "write %lu+%lu past %lu", (unsigned long) off, (unsigned long) len,
         (unsigned long) d->size);
  errno = 0;
  CHECK (store_zero (d->s, len, off) == -1 && errno == EINVAL, "zero past end");
  errno = 0;
  CHECK (store_read (d->s, scratch, len, off) == -1 && errno == EINVAL,
         "read past end");
  errno = 0;
  CHECK (store_extents (d->s, len, off, ext_never, NULL) == -1 &&
         errno == EINVAL,
         "extents past end");
  CHECK (store_allocated (d->s) == before, "out-of-range request changed use");
}

/* Pick offset and length inside d (len may be 0). */
static void
pick_range (struct input *in, struct dev *d, uint64_t *off, uint64_t *len)
{
  uint64_t o = take (in, 3), l = take (in, 3);
  unsigned mode = take (in, 1);

  if (d->size == 0) {
    *off = *len = 0;
    return;
  }
  o %= mode & 8 || d->size < HOT ? d->size : HOT;  /* mostly the hot zone */
  if (mode & 1)
    o &= ~(PAGE - 1);                   /* page aligned */
  switch (mode >> 1 & 3) {
  case 0: l = l % 16; break;             /* tiny */
  case 1: l = (l % 8 + 1) * PAGE; break; /* whole pages */
  default: l %= MAX_LEN + 1; break;      /* anything */
  }
  if (l > d->size - o)
    l = d->size - o;
  *off = o;
  *len = l;
}

static int
dev_init (struct dev *d, uint64_t size, unsigned shift)
{
  d->size = size;
  d->npages = (size + PAGE - 1) / PAGE;
  d->s = store_create (size, shift, &limit);
  d->ref = calloc (1, size + 1);
  d->held = calloc (1, d->npages + 1);
  return d->s && d->ref && d->held ? 0 : -1;
}

static void
dev_free (struct dev *d)
{
  store_destroy (d->s);
  free (d->ref);
  free (d->held);
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct input in = { data, size };
  struct dev devs[2];
  unsigned shift = STORE_MIN_CHUNK_SHIFT + take (&in, 1) % 5; /* 4K..64K */
  unsigned size_kind = take (&in, 1);
  uint64_t size_a = take (&in, 3) %
    ((size_kind & 3) == 0 ? MAX_SIZE_A + 1 : HOT + 1);
  uint64_t size_b = take (&in, 2) % (MAX_SIZE_B + 1);
  unsigned cap = take (&in, 1);

  if (trace == -1)
    trace = getenv ("FUZZ_STORE_TRACE") != NULL;
  /* A cap of 0..127 pages, or none. */
  atomic_store (&limit.used, 0);
  limit.max = cap & 0x80 ? UINT64_MAX : (uint64_t) (cap & 0x7f) * PAGE;
  TRACE ("chunk %u, sizes %lu and %lu, cap %lu\n", 1u << shift,
         (unsigned long) size_a, (unsigned long) size_b,
         (unsigned long) limit.max);
  if (dev_init (&devs[0], size_a, shift) == -1 ||
      dev_init (&devs[1], size_b, shift) == -1)
    abort ();

  for (unsigned n = 0; n < MAX_OPS && in.left > 0; n++) {
    unsigned op = take (&in, 1);
    struct dev *d = &devs[op >> 7], *other = &devs[!(op >> 7)];
    uint64_t off, len;

    pick_range (&in, d, &off, &len);
    TRACE ("op %u on store %d: %s %lu+%lu\n", n, op >> 7,
           (const char *[]) { "write", "write", "write", "zero", "zero",
                              "read", "extents", "out-of-range" }[op & 7],
           (unsigned long) off, (unsigned long) len);
    switch (op & 7) {
    case 0: case 1: case 2: {
      unsigned kind = take (&in, 1);
      uint32_t seed = take (&in, 4);

      do_write (d, off, len, kind, seed);
      break;
    }
    case 3: case 4:
      do_zero (d, off, len);
      break;
    case 5:
      check_read (d, off, len);
      break;
    case 6:
      check_extents (d, off, len, (op >> 3) & 3);
      break;
    default:
      check_out_of_range (d, d->size - (len > d->size ? d->size : len),
                          len + 1 + (op >> 3 & 15));
      check_out_of_range (d, d->size + 1 + (op >> 3 & 15), 0);
      break;
    }
    check_accounting (d, other);
  }

  /* Everything, at the end. */
  for (int i = 0; i < 2; i++) {
    for (uint64_t o = 0; o < devs[i].size; o += MAX_LEN)
      check_read (&devs[i], o,
                  devs[i].size - o < MAX_LEN ? devs[i].size - o : MAX_LEN);
    if (devs[i].size > 0)
      check_extents (&devs[i], 0, devs[i].size, 0);
    check_accounting (&devs[i], &devs[!i]);
  }
  dev_free (&devs[0]);
  CHECK (atomic_load (&limit.used) == store_allocated (devs[1].s),
         "destroying a store did not give its pages back");
  dev_free (&devs[1]);
  CHECK (atomic_load (&limit.used) == 0, "cap use %lu after destroying all",
         (unsigned long) atomic_load (&limit.used));
  return 0;
}
