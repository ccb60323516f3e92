/* memblock: a device's request gate and its request counts. */
#ifndef MEMBLOCK_GATE_H
#define MEMBLOCK_GATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* What a request was, for the counts. */
enum gate_kind {
  GATE_READ, GATE_WRITE, GATE_ZERO, GATE_TRIM, GATE_FLUSH, GATE_EXTENTS,
  GATE_OTHER,                   /* counted nowhere: get_size */
  GATE_BYTES_READ, GATE_BYTES_WRITTEN,
  GATE_KINDS
};

/* Threads spread over the stripes, so that requests on different
 * threads touch different cache lines.
 */
#define GATE_STRIPES 16

/* One cache line: requests inside the gate on this stripe's threads,
 * and their counts.
 */
struct gate_stripe {
  _Atomic uint64_t inside;
  _Atomic uint64_t count[GATE_KINDS];
} __attribute__ ((aligned (64)));

struct gate {
  struct gate_stripe stripe[GATE_STRIPES];
  _Atomic bool closed;          /* requests wait outside */
  pthread_mutex_t lock;         /* guards the waits on opened */
  pthread_cond_t opened;
  unsigned closers;             /* gate_close calls not yet reopened */
  pthread_mutex_t excl;         /* held by the closing thread (G2) */
};

extern void gate_init (struct gate *g);
extern void gate_destroy (struct gate *g);
extern struct gate_stripe *gate_enter (struct gate *g);
extern void gate_leave (struct gate_stripe *st, enum gate_kind kind,
                        uint64_t bytes);
extern void gate_close (struct gate *g);
extern void gate_open (struct gate *g);
extern void gate_counts (struct gate *g, uint64_t out[GATE_KINDS]);

#endif /* MEMBLOCK_GATE_H */
