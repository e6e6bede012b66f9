/* POSIX message queues: one call per user operation.
 *
 * Each object holds the queue twice: a non-blocking descriptor (the fast path: a send or
 * receive first tries at once on it, and that one syscall is the whole call when the queue
 * is not full, or empty) and a blocking one, reopened through /proc/self/fd, on which a
 * call that has to wait sleeps in the kernel's own mq_timedsend / mq_timedreceive. There
 * the kernel queues the waiters in order and hands each message to one of them: a message
 * wakes one blocked reader, not every reader (as a poll on the queue does), and several
 * readers take turns. Before it sleeps, a wait tries again for up to h->spin seconds (a peer
 * answering at once is caught without a sleep on either side); a spinner cannot take a
 * message from a reader asleep in the kernel, which gets it directly from the sender. The
 * sleep is cut into slices of FIPC_MQ_SLICE_MS, after each of which `closed` is looked at,
 * so that closing the object from another thread ends the wait (-ECANCELED) instead of
 * leaving a thread asleep on a descriptor about to be closed. Deadlines are on
 * CLOCK_MONOTONIC; each slice's end is converted to the CLOCK_REALTIME that the kernel's
 * timed calls take at the last moment (a clock step moves one slice, not the deadline).
 * The eventfd that fipc_mq_wake writes is for event loops, which wait on it beside the
 * queue (fastipc.mq's awaitables).
 *
 * The native handle (csrc/py/mq.c) counts the calls busy and closes the descriptors
 * (fipc_mq_close) only once none is using them. */
#include "mq.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ATOMIC(field) ((_Atomic int32_t *)&(field))

void fipc_mq_close(fipc_mq *h)
{
    if (atomic_exchange(ATOMIC(h->released), 1) == 0) {
        /* nothing to do if they fail: they were open, and are closed either way */
        (void)mq_close((mqd_t)h->fd);
        (void)close(h->waitfd);
        (void)close(h->wakefd);
    }
}

/* One sleep of the kernel's blocking send (prio == NULL) or receive on h->waitfd, until the
 * monotonic `deadline` (ns, < 0: none) or for one slice, whichever comes first: the bytes
 * moved (0 for a send), or -errno (-ETIMEDOUT at the end of the slice or the deadline). */
static ssize_t sleep_transfer(const fipc_mq *h, char *buf, size_t len, unsigned int priority,
                              unsigned int *prio, int64_t deadline)
{
    int64_t left = (int64_t)FIPC_MQ_SLICE_MS * 1000000;
    if (deadline >= 0) {
        int64_t until = deadline - fipc_now_ns();
        if (until < left) /* past the deadline: one more try, which does not sleep */
            left = until > 0 ? until : 0;
    }
    struct timespec at;
    if (clock_gettime(CLOCK_REALTIME, &at) < 0)
        return -errno;
    left += at.tv_nsec;
    at.tv_sec += (time_t)(left / 1000000000);
    at.tv_nsec = (long)(left % 1000000000);
    ssize_t n = prio == NULL ? mq_timedsend((mqd_t)h->waitfd, buf, len, priority, &at)
                             : mq_timedreceive((mqd_t)h->waitfd, buf, len, prio, &at);
    return n < 0 ? -errno : n;
}

int fipc_mq_open(fipc_mq *h, const char *name, int create, int mode, long max_messages,
                 long max_message_size)
{
    mqd_t q;
    int flags = O_RDWR | O_CLOEXEC | O_NONBLOCK;
    int wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wakefd < 0)
        return -errno;
    if (create) {
        struct mq_attr attr = {0};
        attr.mq_maxmsg = max_messages;
        attr.mq_msgsize = max_message_size;
        q = mq_open(name, flags | O_CREAT | O_EXCL, (mode_t)mode, &attr);
    } else {
        q = mq_open(name, flags);
    }
    struct mq_attr a;
    if (q == (mqd_t)-1 || mq_getattr(q, &a) < 0) {
        int err = errno;
        if (q != (mqd_t)-1)
            mq_close(q);
        close(wakefd);
        return -err;
    }
    /* the same open queue, blocking, whatever became of its name since mq_open */
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", (int)q);
    int waitfd = open(path, O_RDWR | O_CLOEXEC);
    if (waitfd < 0) {
        int err = errno;
        mq_close(q);
        close(wakefd);
        return -err;
    }
    *h = (fipc_mq){.fd = (int)q, .waitfd = waitfd, .wakefd = wakefd,
                   .max_message_size = a.mq_msgsize};
    return 0;
}

int fipc_mq_unlink(const char *name)
{
    return mq_unlink(name) < 0 ? -errno : 0;
}

int fipc_mq_getattr(fipc_mq *h, fipc_mq_attr *attr)
{
    struct mq_attr a;
    if (mq_getattr((mqd_t)h->fd, &a) < 0)
        return -errno;
    attr->max_messages = a.mq_maxmsg;
    attr->max_message_size = a.mq_msgsize;
    attr->current_messages = a.mq_curmsgs;
    return 0;
}

int fipc_mq_wake(fipc_mq *h)
{
    atomic_store(ATOMIC(h->closed), 1);
    if (atomic_load(ATOMIC(h->released)))
        return 0;
    uint64_t one = 1;
    /* EAGAIN: the counter is already non-zero, which is all a waiter looks at */
    if (write(h->wakefd, &one, sizeof one) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}

int fipc_mq_renew_wake(fipc_mq *h)
{
    if (atomic_load(ATOMIC(h->released)))
        return 0;
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -errno;
    (void)close(h->wakefd); /* the parent's: this process's copy of it goes */
    h->wakefd = fd;
    return 0;
}

/* One attempt that does not wait, on the non-blocking descriptor: as sleep_transfer, or
 * -EAGAIN while the queue is full (receive: empty). */
static inline ssize_t try_transfer(const fipc_mq *h, char *buf, size_t len,
                                   unsigned int priority, unsigned int *prio)
{
    ssize_t n = prio == NULL ? mq_send((mqd_t)h->fd, buf, len, priority)
                             : mq_receive((mqd_t)h->fd, buf, len, prio);
    return n < 0 ? -errno : n;
}

/* The one send/receive loop: try at once; while the queue is full (receive: empty), try
 * again for up to h->spin seconds, then sleep in the kernel's send/receive, a slice at a
 * time, until the deadline. prio == NULL sends len bytes with priority `priority`; else
 * receives into buf (cap len). The sent 0 or the received length, or -ETIMEDOUT /
 * -ECANCELED / -EINTR / -errno. */
static int64_t transfer(fipc_mq *h, char *buf, size_t len, unsigned int priority,
                        unsigned int *prio, double timeout)
{
    ssize_t n = try_transfer(h, buf, len, priority, prio);
    if (n == -EAGAIN && timeout != 0) {
        int64_t deadline = fipc_deadline(timeout);
        double spin = h->spin > 1.0 ? 1.0 : h->spin;
        if (spin > 0) {
            int64_t end = fipc_now_ns() + (int64_t)(spin * 1e9);
            if (deadline >= 0 && end > deadline)
                end = deadline;
            while (n == -EAGAIN && fipc_now_ns() < end) {
                fipc_cpu_relax();
                n = try_transfer(h, buf, len, priority, prio);
            }
        }
        /* -ETIMEDOUT before the deadline: a slice ended; look at `closed`, then sleep again
         * (the main thread: go back to the caller, FIPC_SLEPT_A_SLICE, which calls again) */
        for (int slept = 0;
             n == -EAGAIN || (n == -ETIMEDOUT && (deadline < 0 || fipc_now_ns() < deadline));
             slept = 1) {
            if (atomic_load(ATOMIC(h->closed)))
                return -ECANCELED;
            if (slept && fipc_runs_signal_handlers())
                return FIPC_SLEPT_A_SLICE;
            n = sleep_transfer(h, buf, len, priority, prio, deadline);
        }
    }
    if (n < 0)
        return n == -EAGAIN ? -ETIMEDOUT : n;
    return (size_t)n > len ? -EMSGSIZE : (int64_t)n; /* never let a caller read past buf */
}

int fipc_mq_send(fipc_mq *h, const char *buf, size_t len, long long priority, double timeout)
{
    if (priority < 0 || priority >= 1 << FIPC_MQ_PRIO_BITS)
        return -EINVAL;
    if ((long long)len > h->max_message_size)
        return -EMSGSIZE;
    /* mq_send only reads buf: the cast drops const for the shared loop */
    return (int)transfer(h, (char *)buf, len, (unsigned int)priority, NULL, timeout);
}

int64_t fipc_mq_receive(fipc_mq *h, char *buf, double timeout)
{
    unsigned int prio = 0;
    int64_t rc = transfer(h, buf, (size_t)h->max_message_size, 0, &prio, timeout);
    return rc < 0 ? rc : rc << FIPC_MQ_PRIO_BITS | (int64_t)prio;
}
