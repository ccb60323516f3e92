/* memblock unit tests: a harness that runs two store operations
 * really in flight together, round after round.
 */
#ifndef MEMBLOCK_TEST_RACE_H
#define MEMBLOCK_TEST_RACE_H

#include <pthread.h>

/* Rounds of the race tests; fewer under ThreadSanitizer, which slows
 * every copy down about tenfold.
 */
#if defined(__SANITIZE_THREAD__)
#define RACE_ROUNDS 500
#else
#define RACE_ROUNDS 3000
#endif

/* One side of a race: what a thread does in round round. */
typedef void (*race_op_fn) (void *arg, unsigned round);

/* A thread (the racer) that runs op at the moment the main thread
 * starts its own operation, once per round: the two really are in
 * flight together.
 */
struct race_thread {
  _Atomic unsigned go;          /* round number released by the main thread */
  _Atomic unsigned done;        /* rounds finished by this thread */
  race_op_fn op;
  void *arg;
  unsigned rounds;              /* RACE_ROUNDS if 0 */
  pthread_t thread;
};

extern int race_start (struct race_thread *t);
extern void race_round (struct race_thread *t, unsigned round,
                        race_op_fn main_op, void *arg);
extern void race_join (struct race_thread *t);
extern void race_delay (unsigned *seed, unsigned max_us);

#endif /* MEMBLOCK_TEST_RACE_H */
