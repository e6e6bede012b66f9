/* fastipc sem.c: POSIX semaphores.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_SEM_H
#define FASTIPC_SEM_H

#include "fastipc.h"

/* CDEF BEGIN */
/* Open (create: 0 attach, 1 create exclusively) a named semaphore; *out receives the
 * handle (a sem_t *). Returns 0 or -errno. */
int fipc_sem_open(const char *name, int create, int mode, unsigned int value, void **out);
int fipc_sem_close(void *sem);
int fipc_sem_unlink(const char *name);
/* Decrement, waiting up to timeout seconds on CLOCK_MONOTONIC (where the libc allows):
 * 0, -ETIMEDOUT, -EINTR, -ECANCELED once *closing is non-zero, or -errno. A wait first
 * spins for FIPC_SEM_SPIN_US. A sleeping sem_wait cannot be woken from outside, so the
 * wait then sleeps in slices of FIPC_SEM_SLICE_MS and looks at *closing between them. */
enum { FIPC_SEM_SLICE_MS = 20, FIPC_SEM_SPIN_US = 10 };
int fipc_sem_acquire(void *sem, double timeout, int *closing);
int fipc_sem_release(void *sem);
/* The current value (>= 0) or -errno. */
int fipc_sem_value(void *sem);
/* Decrement without waiting: 0, or -EAGAIN while the value is 0, or -errno. */
int fipc_sem_try(void *sem);
/* Awaiting (fastipc._aio) on glibc's sem_t, whose 64-bit word holds the value in its low
 * 32 bits (the futex word sem_post wakes) and the number of waiters in its high 32 bits
 * (sem_post wakes only when it is > 0): add delta (+1, -1, or 0 to look) to the waiters; the value
 * after it (>= 0), or -ENOSYS on a C library of another layout. *word: the address of the
 * futex word. */
int64_t fipc_sem_waiters(void *sem, int32_t delta, uint64_t *word);
/* Wake one sleeper of the semaphore if the value is > 0 and someone waits: passes on a
 * wake-up that an awaiting coroutine took and then gave up (cancelled, timed out). */
void fipc_sem_pass(void *sem);
/* CDEF END */

#endif
