/* memblock: a device's request gate and its request counts.
 *
 * Every request on a device passes its gate: gate_enter before it looks
 * at the device's store, gate_leave when it is done.  A snapshot or a
 * rollback closes the gates of the devices it changes (gate_close),
 * which waits until no request is inside, swaps their stores, and opens
 * them again; requests that come meanwhile wait at the gate.  So a
 * request sees one store from start to end, and is entirely before or
 * entirely after the swap.
 *
 * The gate is not a lock shared by all connections: a request changes
 * only its own stripe's cache line (one of GATE_STRIPES, chosen once per
 * thread), and reads `closed`, which only a closer writes.  The rules:
 *
 *   G1  gate_enter increments its stripe's `inside` and then loads
 *       `closed`; gate_close stores `closed` and then loads every
 *       `inside`, all sequentially consistent.  So either the request
 *       sees the gate closed (and backs out before touching the store),
 *       or the closer sees it inside and waits for it to leave.
 *   G2  Closers nest (closers counts them): the gate opens when the last
 *       one opens it.  A closer holds the gate's `excl` mutex (recursive,
 *       so one thread may close a gate twice) from gate_close to
 *       gate_open, so two threads never own one closed gate at once: the
 *       control socket's calls (serialised by the registry lock, which
 *       may close several gates) and a volatile device's flush or power
 *       cut (volatile.c, from a request's thread, outside the gate, one
 *       gate only).  A thread holding one gate's excl waits only for
 *       requests to leave, or for another excl under the registry lock,
 *       so no cycle forms.
 *   G3  The counts are per stripe, added with relaxed atomics, and
 *       summed on demand: a reader may see a request counted before its
 *       bytes, never a count going down.
 */

#include <sched.h>
#include <string.h>
#include <time.h>

#include "gate.h"

/* This thread's stripe: threads take stripes round robin. */
static _Thread_local unsigned gate_my_stripe = GATE_STRIPES;
static _Atomic unsigned gate_next_stripe;

/* Make an open gate with zero counts. */
void
gate_init (struct gate *g)
{
  pthread_mutexattr_t attr;

  memset (g->stripe, 0, sizeof g->stripe);
  atomic_init (&g->closed, false);
  pthread_mutex_init (&g->lock, NULL);
  pthread_cond_init (&g->opened, NULL);
  pthread_mutexattr_init (&attr);
  pthread_mutexattr_settype (&attr, PTHREAD_MUTEX_RECURSIVE);
  pthread_mutex_init (&g->excl, &attr);
  pthread_mutexattr_destroy (&attr);
  g->closers = 0;
}

/* Free what gate_init made; no request may be inside. */
void
gate_destroy (struct gate *g)
{
  pthread_mutex_destroy (&g->lock);
  pthread_cond_destroy (&g->opened);
  pthread_mutex_destroy (&g->excl);
}

/* This thread's stripe of g. */
static struct gate_stripe *
gate_stripe (struct gate *g)
{
  if (gate_my_stripe == GATE_STRIPES)
    gate_my_stripe = atomic_fetch_add_explicit (&gate_next_stripe, 1,
                                                memory_order_relaxed)
                     % GATE_STRIPES;
  return &g->stripe[gate_my_stripe];
}

/* Pass the gate, waiting while it is closed (G1); returns the stripe to
 * give gate_leave.
 */
struct gate_stripe *
gate_enter (struct gate *g)
{
  struct gate_stripe *st = gate_stripe (g);

  for (;;) {
    atomic_fetch_add (&st->inside, 1);
    if (!atomic_load (&g->closed))
      return st;
    atomic_fetch_sub (&st->inside, 1);
    pthread_mutex_lock (&g->lock);
    while (atomic_load (&g->closed))
      pthread_cond_wait (&g->opened, &g->lock);
    pthread_mutex_unlock (&g->lock);
  }
}

/* Leave the gate after a request of this kind and size (G3). */
void
gate_leave (struct gate_stripe *st, enum gate_kind kind, uint64_t bytes)
{
  atomic_fetch_add_explicit (&st->count[kind], 1, memory_order_relaxed);
  if (kind == GATE_READ)
    atomic_fetch_add_explicit (&st->count[GATE_BYTES_READ], bytes,
                               memory_order_relaxed);
  else if (kind == GATE_WRITE)
    atomic_fetch_add_explicit (&st->count[GATE_BYTES_WRITTEN], bytes,
                               memory_order_relaxed);
  atomic_fetch_sub_explicit (&st->inside, 1, memory_order_release);
}

/* Requests inside g now. */
static uint64_t
gate_inside (struct gate *g)
{
  uint64_t n = 0;

  for (unsigned i = 0; i < GATE_STRIPES; i++)
    n += atomic_load (&g->stripe[i].inside);
  return n;
}

/* Close g and wait until no request is inside (G1, G2).  Requests take
 * microseconds, so the wait spins briefly, then sleeps in short steps.
 */
void
gate_close (struct gate *g)
{
  unsigned spins = 0;

  pthread_mutex_lock (&g->excl);
  pthread_mutex_lock (&g->lock);
  g->closers++;
  atomic_store (&g->closed, true);
  pthread_mutex_unlock (&g->lock);
  while (gate_inside (g) != 0) {
    if (++spins < 64)
      sched_yield ();
    else
      nanosleep (&(struct timespec) { .tv_nsec = 50000 }, NULL);
  }
}

/* Open g again (the last of nested closers does, G2). */
void
gate_open (struct gate *g)
{
  pthread_mutex_lock (&g->lock);
  if (--g->closers == 0) {
    atomic_store (&g->closed, false);
    pthread_cond_broadcast (&g->opened);
  }
  pthread_mutex_unlock (&g->lock);
  pthread_mutex_unlock (&g->excl);
}

/* Sum g's counts into out (G3). */
void
gate_counts (struct gate *g, uint64_t out[GATE_KINDS])
{
  for (unsigned k = 0; k < GATE_KINDS; k++) {
    out[k] = 0;
    for (unsigned i = 0; i < GATE_STRIPES; i++)
      out[k] += atomic_load_explicit (&g->stripe[i].count[k],
                                      memory_order_relaxed);
  }
}
