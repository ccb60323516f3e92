/* memblock unit tests: two operations in flight together, per round. */

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

#include "race.h"

/* Wait for a flag another thread sets within microseconds: spin, and
 * yield when the machine is too busy to run both threads.
 */
static void
race_wait (_Atomic unsigned *flag, unsigned round)
{
  for (unsigned spins = 0; atomic_load (flag) < round; spins++)
    if (spins > 10000)
      sched_yield ();
}

/* The racer's thread: each round, wait for the start, run, report. */
static void *
race_thread_run (void *arg)
{
  struct race_thread *t = arg;
  unsigned rounds = t->rounds ? t->rounds : RACE_ROUNDS;

  for (unsigned round = 1; round <= rounds; round++) {
    race_wait (&t->go, round);
    t->op (t->arg, round);
    atomic_store (&t->done, round);
  }
  return NULL;
}

/* Start the racer's thread, waiting for round 1; pthread_create's result. */
int
race_start (struct race_thread *t)
{
  return pthread_create (&t->thread, NULL, race_thread_run, t);
}

/* Run main_op in this thread and the racer's op in its own, together. */
void
race_round (struct race_thread *t, unsigned round, race_op_fn main_op,
            void *arg)
{
  atomic_store (&t->go, round);
  main_op (arg, round);
  race_wait (&t->done, round);
}

/* Wait for the racer's thread to end, after its last round. */
void
race_join (struct race_thread *t)
{
  pthread_join (t->thread, NULL);
}

/* Spin for a random time up to about max_us microseconds, so that an
 * operation lands at a random point inside the other one.
 */
void
race_delay (unsigned *seed, unsigned max_us)
{
  struct timespec start, now;
  long ns = (long) (rand_r (seed) % (max_us + 1)) * 1000;

  clock_gettime (CLOCK_MONOTONIC, &start);
  do
    clock_gettime (CLOCK_MONOTONIC, &now);
  while ((now.tv_sec - start.tv_sec) * 1000000000L
         + (now.tv_nsec - start.tv_nsec) < ns);
}
