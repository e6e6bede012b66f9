/* Deadlines and fd waits shared by the mechanisms. */
#include "fastipc.h"

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <sys/mman.h>
#include <limits.h>
#include <linux/futex.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_NOSIGNAL
#define RWF_NOSIGNAL 0x00000100 /* Linux 6.18: a write to a pipe without readers raises no
                                   SIGPIPE (EPIPE only) */
#endif

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

/* Drop `n` bytes from the front of iov[*first..cnt). */
static void iov_advance(struct iovec *iov, int cnt, int *first, size_t n)
{
    while (*first < cnt && n >= iov[*first].iov_len) {
        n -= iov[*first].iov_len;
        (*first)++;
    }
    if (*first < cnt) {
        iov[*first].iov_base = (char *)iov[*first].iov_base + n;
        iov[*first].iov_len -= n;
    }
}

int64_t fipc_write_all(int fd, struct iovec *iov, int cnt, size_t offset, double timeout,
                       int how, size_t *written)
{
    size_t total = 0;
    for (int i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    int first = 0;
    iov_advance(iov, cnt, &first, offset);
    size_t done = offset;
    int64_t deadline = FIPC_DEADLINE_UNSET, rc = 0;
    while (done < total) {
        ssize_t n;
        if (how == FIPC_WRITE_SOCK) {
            struct msghdr msg = {.msg_iov = iov + first, .msg_iovlen = (size_t)(cnt - first)};
            n = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        } else if (how == FIPC_WRITE_NOSIGNAL) {
            n = pwritev2(fd, iov + first, cnt - first, -1, RWF_NOSIGNAL);
        } else if (cnt - first == 1) { /* write() is measurably cheaper than writev() */
            n = write(fd, iov[first].iov_base, iov[first].iov_len);
        } else {
            n = writev(fd, iov + first, cnt - first);
        }
        if (n > 0) {
            done += (size_t)n;
            iov_advance(iov, cnt, &first, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            rc = fipc_wait_fd(fd, POLLOUT, fipc_deadline_lazy(&deadline, timeout));
            if (rc < 0)
                break;
            continue;
        }
        rc = n < 0 ? -errno : -EIO;
        break;
    }
    *written = done;
    return rc < 0 ? rc : (int64_t)done;
}

int fipc_futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
    long rc = syscall(SYS_futex, addr, FUTEX_WAIT, val, &ts, NULL, 0);
    if (rc < 0 && errno != EAGAIN && errno != ETIMEDOUT)
        return -errno; /* EINTR goes back to Python */
    return 0;
}

int fipc_runs_signal_handlers(void)
{
    return syscall(SYS_gettid) == getpid();
}

void fipc_futex_wake(_Atomic uint32_t *addr)
{
    /* Cannot fail on a valid shared mapping; a failure would only cost the sleeper one
     * slice, after which it looks again. */
    long rc = syscall(SYS_futex, addr, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    (void)rc;
}

void fipc_spin_set(fipc_spin *s, double seconds)
{
    if (seconds > 1.0)
        seconds = 1.0;
    s->max_ns = seconds > 0 ? (int64_t)(seconds * 1e9) : 0;
    s->ns = s->max_ns;
}

void fipc_spin_caught(fipc_spin *s)
{
    if (s->ns < s->max_ns)
        s->ns = s->ns * 2 > s->max_ns ? s->max_ns : s->ns * 2;
}

/* After a wait that had to sleep: if what we waited for came soon after the spin gave up
 * (within a few spins and wake-ups: the peer answers at the pace of its own wake-ups, not
 * of its work), spinning would catch it once both sides spin again: spin fully again. (Too
 * tight a bound traps two busy peers in sleeping for each other: each wait then lasts a
 * wake-up, 20-100 us on a loaded VM, and so does the next.) If it came much later, spinning
 * wastes the CPU: spin half as long next time, down to a microsecond. */
void fipc_spin_slept(fipc_spin *s, int64_t waited_ns)
{
    if (s->max_ns <= 0)
        return;
    if (waited_ns < 4 * s->max_ns + 100000) {
        s->ns = s->max_ns;
    } else {
        s->ns /= 2;
        if (s->ns < 1000)
            s->ns = s->max_ns < 1000 ? s->max_ns : 1000;
    }
}
