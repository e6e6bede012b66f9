/* Deadlines and fd waits shared by the mechanisms. */
#include "fastipc.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

int64_t fipc_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t fipc_deadline(double timeout)
{
    if (timeout < 0)
        return -1;
    if (timeout > 1e9) /* ~31 years: treat as forever rather than overflow */
        return -1;
    return fipc_now_ns() + (int64_t)(timeout * 1e9);
}

struct timespec *fipc_remaining(int64_t deadline, struct timespec *ts)
{
    if (deadline < 0)
        return NULL;
    int64_t left = deadline - fipc_now_ns();
    if (left < 0)
        left = 0;
    ts->tv_sec = left / 1000000000;
    ts->tv_nsec = left % 1000000000;
    return ts;
}

int fipc_wait_fd(int fd, short events, int64_t deadline)
{
    struct pollfd p = {.fd = fd, .events = events};
    struct timespec ts;
    int rc = ppoll(&p, 1, fipc_remaining(deadline, &ts), NULL);
    if (rc < 0)
        return -errno;
    if (rc == 0)
        return -ETIMEDOUT;
    if (p.revents & POLLNVAL)
        return -EBADF;
    return 0; /* ready, or POLLERR/POLLHUP: the next syscall tells which */
}

void fipc_hint_hugepages(void *p, size_t n)
{
    /* Faulting in fresh memory 4 KiB at a time costs more than copying into it; ask for
     * transparent huge pages on the 2 MiB-aligned part. Only a hint: errors are ignored. */
    const uintptr_t huge = 2u << 20;
    uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    uintptr_t end = ((uintptr_t)p + n) & ~(huge - 1);
    if (n >= 2 * huge && end > start)
        (void)madvise((void *)start, end - start, MADV_HUGEPAGE);
}
