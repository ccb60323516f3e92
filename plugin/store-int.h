/* memblock: the store's internals, shared by its files (store.c is the
 * index).  Nothing here is for users of store.h.
 */
#ifndef MEMBLOCK_STORE_INT_H
#define MEMBLOCK_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "chunkdir.h"
#include "store.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* What a page reads as (pagemap.h has the bits behind it). */
enum store_class {
  STORE_ZERO,                   /* zeroes: a hole, or hidden in a clone */
  STORE_DATA,                   /* the chunk's own page */
  STORE_SOURCE,                 /* the source's page (clones only) */
};

/* One chunk of 2^chunk_shift bytes: its bitmaps, and its data as the
 * store's backend keeps it.
 */
struct units_chunk;

struct chunk {
  unsigned char *data;          /* raw.c: 2^chunk_shift bytes from the arena */
  struct units_chunk *units;    /* units.c: its blobs and their pool */
  _Atomic uint64_t *lock;       /* one bit per page: its lock (I2) */
  _Atomic uint64_t *hide;       /* clones: one bit per page (C1); else NULL */
  _Atomic uint64_t map[];       /* one bit per page: holds data (I2) */
};

/* What one request did, for acct_settle: every figure in bytes. */
struct tally {
  uint64_t reserved;            /* reserved against the limit (I5) */
  uint64_t prepaid;             /* part of it kept for chunks to create */
  uint64_t gained;              /* data: pages newly set */
  uint64_t released;            /* data: pages cleared */
  int64_t held;                 /* change in the memory the data holds */
  uint64_t meta;                /* chunks created: their headers (I6) */
  uint64_t spare_gone;          /* spare pages taken or given back (W2) */
};

/* What malloc takes for an allocation of n bytes: its header, rounded
 * up to 16 bytes (glibc), and never less than its smallest chunk.
 */
#define STORE_MALLOC_COST(n) MAX ((((uint64_t) (n)) + 8 + 15) & ~(uint64_t) 15, 32)

/* The chunks of a request's pieces, found once when it locks them. */
#define STORE_STACK_PIECES 16
struct store_req {
  uint64_t count, offset, first;  /* the range; first: its first chunk */
  uint64_t pieces;              /* chunks it touches */
  uint64_t need;                /* what the write reserved for data first */
  struct chunk **chunks;        /* per piece; NULL where missing */
  struct chunk *stack[STORE_STACK_PIECES];
};

/* How one kind of chunk keeps its pages (raw.c, units.c).  Chosen once
 * by store_set_codec; the entry points in store.c call through it and
 * nothing else tests the codec.  base is the chunk's offset in the
 * device, [coff, coff+n) a piece of it.
 */
struct store_ops {
  const char *name;
  /* Give new chunk c its data (an arena slot, a unit table): 0 or -1. */
  int (*chunk_init) (struct store *s, struct chunk *c);
  /* Free what chunk_init and the data path gave c (not c itself). */
  void (*chunk_free) (const struct store *s, struct chunk *c);
  /* The memory chunk_init allocates for a chunk (I6). */
  uint64_t (*chunk_bytes) (const struct store *s);
  /* The address space a chunk takes from the store's arena. */
  uint64_t (*slot_bytes) (const struct store *s);
  /* The pages [*p, *q) a change to bytes [coff, coff+n) must lock. */
  void (*span) (uint64_t coff, uint64_t n, uint64_t *p, uint64_t *q);
  /* Read a piece of present chunk c into out; 0 or -1 with errno. */
  int (*read) (struct store *s, struct chunk *c, uint64_t base,
               unsigned char *out, uint64_t coff, uint64_t n);
  /* Bytes a write must reserve for its data before it creates or locks
   * anything; *create receives what the chunks it creates will cost.
   */
  uint64_t (*write_need) (struct store *s, const unsigned char *in,
                          uint64_t count, uint64_t offset, uint64_t *create);
  /* Write the request, whose pages are locked; 0 or -1 (ENOSPC
   * changes nothing).
   */
  int (*write) (struct store *s, const struct store_req *rq,
                const unsigned char *in, struct tally *t);
  /* Bytes a zero of [offset, offset+count) must reserve first. */
  uint64_t (*zero_need) (struct store *s, uint64_t count, uint64_t offset);
  /* Zero a piece of present chunk c, locking it; 0 or -1 with errno. */
  int (*zero) (struct store *s, struct chunk *c, uint64_t base,
               uint64_t coff, uint64_t n, struct tally *t);
  /* After a write's locks are gone: tidy its chunks (pool.c), keeping
   * errno.
   */
  void (*tidy) (struct store *s, const struct store_req *rq);
  /* Fill a piece of c in place (fill.c), or NULL if it cannot. */
  int (*fill) (struct store *s, struct chunk *c, uint64_t base,
               uint64_t coff, uint64_t n, store_fill_fn fn, void *opaque,
               struct tally *t);
};

extern const struct store_ops raw_ops;
extern const struct store_ops units_ops;

struct store {
  _Atomic unsigned refs;        /* holders: its device, its clones (R1) */
  uint64_t size;
  unsigned chunk_shift;
  size_t map_words;             /* uint64_t words in a chunk's map */
  struct store *source;         /* clones: the read-only source (a
                                 * reference, R1), else NULL */
  enum codec codec;             /* how units_ops packs units */
  const struct store_ops *ops;  /* raw_ops, or units_ops when compressed */
  bool mlock;                   /* lock pages holding data in RAM (M1) */
  _Atomic uint64_t pin_failures;  /* pages the kernel would not lock */
  struct chunkdir dir;
  pthread_mutex_t grow_lock;    /* serialises chunk creation and arena */
  struct arena arena;
  _Atomic uint64_t data;        /* bytes of pages set over all chunks */
  _Atomic uint64_t held;        /* bytes of memory they hold */
  _Atomic uint64_t meta;        /* bytes of chunk headers and tables (I6) */
  _Atomic uint64_t chunks;      /* chunks created */
  bool retain;                  /* a volatile cache keeping spare pages */
  uint64_t spare_max;           /* bytes of unused spares it may keep */
  _Atomic uint64_t spare;       /* bytes of spare pages, in held (W2) */
  struct store_limit *limit;    /* may be NULL */
};

/* Calls body once per chunk piece of [offset, offset+count):
 * idx (chunk index), coff (offset in chunk), n (bytes), done (bytes
 * before this piece).
 */
#define FOR_EACH_CHUNK(s, count, offset, idx, coff, n, done)            \
  for (uint64_t done = 0, idx, coff, n;                                 \
       done < (count) &&                                                \
         (idx = ((offset) + done) >> (s)->chunk_shift,                  \
          coff = ((offset) + done) & ((1ULL << (s)->chunk_shift) - 1),  \
          n = MIN ((count) - done, (1ULL << (s)->chunk_shift) - coff),  \
          1);                                                           \
       done += n)

/* The request's chunk for piece idx (NULL where it was missing). */
static inline struct chunk *
store_req_chunk (const struct store_req *rq, uint64_t idx)
{
  return rq->chunks[idx - rq->first];
}

/* Free what pagelock_req_lock allocated for rq. */
static inline void
store_req_free (struct store_req *rq)
{
  if (rq->chunks != rq->stack)
    free (rq->chunks);
}

/* Bytes of the page at device offset at (page-aligned) that lie inside
 * the device: STORE_PAGE, or less for the device's last partial page.
 * A page is written or zeroed whole when all of these bytes are.
 */
static inline uint64_t
store_page_len (const struct store *s, uint64_t at)
{
  return MIN (STORE_PAGE, s->size - at);
}

/* The end of the whole pages before device offset end: end rounded
 * down to a page, or up when end is the device's (its last partial
 * page counts as whole).
 */
static inline uint64_t
store_whole_end (const struct store *s, uint64_t end)
{
  return (end == s->size ? end + STORE_PAGE - 1 : end) & ~(STORE_PAGE - 1);
}

/* True if len bytes at p are all zero.  Once the first 16 bytes are
 * known to be zero, p[i] == p[i+16] for every i means all are: memcmp
 * does that at full speed and stops at the first difference.
 */
static inline bool
store_is_zero (const unsigned char *p, size_t len)
{
  size_t i, head = len < 16 ? len : 16;

  for (i = 0; i < head; i++)
    if (p[i])
      return false;
  return len <= 16 || memcmp (p, p + 16, len - 16) == 0;
}

/* Make bytes [from, to) of page become src, or zeroes if src is NULL. */
static inline void
store_page_edit (unsigned char *page, uint64_t from, uint64_t to,
                 const unsigned char *src)
{
  if (src)
    memcpy (page + from, src, to - from);
  else
    memset (page + from, 0, to - from);
}

/* Bytes of a chunk's header and bitmaps (store_chunk_create). */
static inline size_t
store_header_bytes (const struct store *s)
{
  return sizeof (struct chunk)
         + ((s->source ? 3 : 2) + s->retain) * s->map_words
           * sizeof (uint64_t);
}

/* The spare bitmap of chunk c of a retaining store (spare.c), after its
 * other bitmaps; NULL if s does not retain.
 */
static inline _Atomic uint64_t *
store_spare_bits (const struct store *s, struct chunk *c)
{
  return s->retain ? c->map + (s->source ? 3 : 2) * s->map_words : NULL;
}

/* store.c */
extern int store_check_range (const struct store *s, uint64_t count,
                              uint64_t offset);
extern struct chunk *store_chunk_create (struct store *s, uint64_t idx,
                                         struct tally *t);
extern bool store_must_grow (const struct store *s, uint64_t idx,
                             const unsigned char *in, uint64_t n);

/* pagelock.c */
extern void pagelock_lock (struct chunk *c, uint64_t p, uint64_t q);
extern void pagelock_unlock (struct chunk *c, uint64_t p, uint64_t q);
extern int pagelock_req_lock (struct store *s, struct store_req *rq,
                              uint64_t count, uint64_t offset);
extern void pagelock_req_unlock (struct store *s, struct store_req *rq);

/* acct.c: a look at the limit's speculative reservations (I7). */
struct acct_watch {
  uint64_t inflight, settled;
};

/* acct.c */
extern int acct_reserve (struct store *s, struct tally *t, uint64_t bytes);
extern uint64_t acct_chunk_cost (const struct store *s, uint64_t idx,
                                 uint64_t prev);
extern uint64_t acct_grow_cost (const struct store *s, uint64_t idx,
                                uint64_t prev, const unsigned char *in,
                                uint64_t n);
extern int acct_prepay (struct store *s, struct tally *t, uint64_t bytes);
extern int acct_meta (struct store *s, struct tally *t, uint64_t bytes);
extern void acct_pages (struct tally *t, uint64_t gained, uint64_t released);
extern void acct_spare (struct tally *t, uint64_t pages);
extern void acct_settle (struct store *s, const struct tally *t);
extern int acct_speculate (struct store *s, struct tally *t, uint64_t bytes);
extern void acct_speculate_settle (struct store *s, const struct tally *t,
                                   uint64_t bytes);
extern void acct_watch (const struct store *s, struct acct_watch *w);
extern bool acct_watch_retry (const struct store *s,
                              const struct acct_watch *w);

/* spare.c */
extern bool spare_take (struct store *s, struct chunk *c, uint64_t p,
                        struct tally *t);
extern uint64_t spare_release_bits (struct store *s, struct chunk *c,
                                    uint64_t p, uint64_t q);
extern void spare_clear (struct store *s, struct chunk *c, uint64_t p,
                         uint64_t q, struct tally *t);

/* clone.c */
extern bool clone_source_has_chunk (const struct store *s, uint64_t idx);
extern uint64_t clone_next_chunk (const struct store *s, uint64_t idx,
                                  uint64_t end);
extern void clone_read_source (struct store *s, unsigned char *out,
                               uint64_t len, uint64_t offset);
extern bool clone_copy_up (struct store *s, unsigned char *page, uint64_t at,
                           uint64_t from, uint64_t to,
                           const unsigned char *src);
extern uint64_t clone_zero_need (struct store *s, uint64_t count,
                                 uint64_t offset);
extern uint64_t clone_hide_cost (struct store *s, uint64_t count,
                                 uint64_t offset);
extern void clone_read_runs (struct store *s, struct chunk *c, uint64_t base,
                             const unsigned char *data, unsigned char *out,
                             uint64_t from, uint64_t to);

#endif /* MEMBLOCK_STORE_INT_H */
