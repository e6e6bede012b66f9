/* POSIX named semaphores. Timed waits run on CLOCK_MONOTONIC through sem_clockwait where
 * glibc has it (2.30+), so that a change of the wall clock neither shortens nor stretches
 * them; older libcs fall back to sem_timedwait on CLOCK_REALTIME. */
#include "sem.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <semaphore.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__GLIBC__) && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 30)
#define HAVE_SEM_CLOCKWAIT 1
#endif
#endif

/* glibc's struct new_sem on 64-bit machines (nptl/semaphoreP.h, since 2.21): uint64_t data
 * (value: low 32 bits, waiters: high 32 bits), int private. */
#if defined(__GLIBC__) && __SIZEOF_POINTER__ == 8 && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HAVE_NEW_SEM 1
#define SEM_WAITER ((uint64_t)1 << 32)
#endif

int fipc_sem_open(const char *name, int create, int mode, unsigned int value, void **out)
{
    sem_t *s = create ? sem_open(name, O_CREAT | O_EXCL, (mode_t)mode, value)
                      : sem_open(name, 0);
    if (s == SEM_FAILED)
        return -errno;
    *out = s;
    return 0;
}

int fipc_sem_close(void *sem)
{
    return sem_close((sem_t *)sem) < 0 ? -errno : 0;
}

int fipc_sem_unlink(const char *name)
{
    return sem_unlink(name) < 0 ? -errno : 0;
}

/* One sleep of at most a slice, until the CLOCK_MONOTONIC time `until` (ns). */
static int wait_until(sem_t *s, int64_t until)
{
    struct timespec ts;
#ifdef HAVE_SEM_CLOCKWAIT
    ts.tv_sec = (time_t)(until / 1000000000);
    ts.tv_nsec = (long)(until % 1000000000);
    return sem_clockwait(s, CLOCK_MONOTONIC, &ts) < 0 ? -errno : 0;
#else
    struct timespec left;
    fipc_remaining(until, &left);
    if (clock_gettime(CLOCK_REALTIME, &ts) < 0)
        return -errno;
    ts.tv_sec += left.tv_sec;
    ts.tv_nsec += left.tv_nsec;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec += 1;
        ts.tv_nsec -= 1000000000;
    }
    return sem_timedwait(s, &ts) < 0 ? -errno : 0;
#endif
}

int fipc_sem_acquire(void *sem, double timeout, int *closing)
{
    sem_t *s = (sem_t *)sem;
    if (sem_trywait(s) == 0)
        return 0;
    if (errno != EAGAIN)
        return -errno;
    if (timeout == 0)
        return -ETIMEDOUT;
    int64_t deadline = fipc_deadline(timeout);
    /* A short spin before sleeping: a peer answering within microseconds (a ping-pong)
     * is caught without a wake-up on each side, which costs 20-25 us per round trip. */
    int64_t spin_end = fipc_now_ns() + FIPC_SEM_SPIN_US * 1000;
    do {
        fipc_cpu_relax();
        if (sem_trywait(s) == 0)
            return 0;
    } while (errno == EAGAIN && fipc_now_ns() < spin_end);
    for (int slept = 0;; slept = 1) {
        if (__atomic_load_n(closing, __ATOMIC_ACQUIRE))
            return -ECANCELED;
        if (slept && fipc_runs_signal_handlers())
            return FIPC_SLEPT_A_SLICE;
        int64_t until = fipc_now_ns() + (int64_t)FIPC_SEM_SLICE_MS * 1000000;
        if (deadline >= 0 && deadline < until)
            until = deadline;
        int rc = wait_until(s, until);
        if (rc != -ETIMEDOUT)
            return rc; /* 0, -EINTR or an error */
        if (deadline >= 0 && fipc_now_ns() >= deadline)
            return -ETIMEDOUT;
    }
}

int fipc_sem_release(void *sem)
{
    return sem_post((sem_t *)sem) < 0 ? -errno : 0;
}

int fipc_sem_value(void *sem)
{
    int v;
    if (sem_getvalue((sem_t *)sem, &v) < 0)
        return -errno;
    return v < 0 ? 0 : v; /* some libcs report waiters as a negative value */
}

int fipc_sem_try(void *sem)
{
    return sem_trywait((sem_t *)sem) == 0 ? 0 : -errno;
}

int64_t fipc_sem_waiters(void *sem, int32_t delta, uint64_t *word)
{
#ifdef HAVE_NEW_SEM
    uint64_t *data = (uint64_t *)sem;
    uint64_t d = delta > 0   ? __atomic_add_fetch(data, SEM_WAITER, __ATOMIC_SEQ_CST)
                 : delta < 0 ? __atomic_sub_fetch(data, SEM_WAITER, __ATOMIC_SEQ_CST)
                             : __atomic_load_n(data, __ATOMIC_SEQ_CST);
    *word = (uint64_t)(uintptr_t)data;
    return (int64_t)(uint32_t)d;
#else
    (void)sem;
    (void)delta;
    *word = 0;
    return -ENOSYS;
#endif
}

void fipc_sem_pass(void *sem)
{
#ifdef HAVE_NEW_SEM
    uint64_t d = __atomic_load_n((uint64_t *)sem, __ATOMIC_SEQ_CST);
    if ((uint32_t)d > 0 && (d >> 32) > 0) {
        /* cannot fail on a mapped semaphore; a lost wake costs a waiter one slice */
        long rc = syscall(SYS_futex, sem, FUTEX_WAKE, 1, NULL, NULL, 0);
        (void)rc;
    }
#else
    (void)sem;
#endif
}
