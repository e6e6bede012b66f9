/* futex_waitv for fastipc._aio (see aio.h). */
#include "aio.h"

#include <errno.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449 /* the same number on every architecture (asm-generic) */
#endif

int64_t fipc_aio_waitv(void *vec, uint32_t n, double timeout)
{
    struct timespec ts, *tsp = NULL;
    if (timeout >= 0) {
        int64_t end = fipc_deadline(timeout);
        if (end >= 0) {
            ts.tv_sec = end / 1000000000LL;
            ts.tv_nsec = end % 1000000000LL;
            tsp = &ts;
        }
    }
    long rc = syscall(SYS_futex_waitv, vec, n, 0, tsp, CLOCK_MONOTONIC);
    return rc < 0 ? -errno : rc;
}
