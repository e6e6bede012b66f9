/* POSIX message queues: one call per user operation.
 *
 * The descriptor is non-blocking: a send or receive first tries at once (the whole fast
 * path is that one syscall); only when the queue is full (or empty) does it wait. It first
 * tries again for up to h->spin seconds (a peer answering at once is caught without a
 * sleep on either side), then sleeps in ppoll on the queue and the object's wake-up
 * eventfd, so that closing the object from another thread ends the wait (-ECANCELED)
 * instead of leaving a thread asleep in mq_receive on a descriptor about to be closed. A
 * queue that another process emptied (or filled) between the wake-up and the retry is
 * waited for again. Deadlines are on CLOCK_MONOTONIC.
 *
 * The busy count is kept here, not in Python: Python's own (fastipc._core.uses_handle)
 * costs about as much as the rest of a 64-byte send, so the hot send and receive count
 * themselves on the way in and out of C, and the descriptors are closed only once no call
 * is in C (by fipc_mq_release, or by the last call to leave). */
#include "mq.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ATOMIC(field) ((_Atomic int32_t *)&(field))

static void close_fds(fipc_mq *h)
{
    if (atomic_exchange(ATOMIC(h->released), 1) == 0) {
        mq_close((mqd_t)h->fd);
        close(h->wakefd);
    }
}

/* Leave C: the last call out closes the descriptors once release was asked for. The
 * count is decremented, then `release` read; fipc_mq_release sets `release`, then reads
 * the count: one of the two sees the other (both seq_cst). */
static void leave(fipc_mq *h)
{
    if (atomic_fetch_sub(ATOMIC(h->busy), 1) == 1 && atomic_load(ATOMIC(h->release)))
        close_fds(h);
}

/* Enter C: counted first, then `closed` read (fipc_mq_wake sets it before it wakes). */
static int enter(fipc_mq *h)
{
    atomic_fetch_add(ATOMIC(h->busy), 1);
    if (atomic_load(ATOMIC(h->closed))) {
        leave(h);
        return -ECANCELED;
    }
    return 0;
}

/* Sleep until the queue is ready for `events`, the wake-up fd is written, or the deadline:
 * 0 (ready: try again), -ECANCELED (woken), -ETIMEDOUT, -EINTR or -errno. */
static int wait_queue(const fipc_mq *h, short events, int64_t deadline)
{
    struct pollfd p[2] = {{.fd = h->fd, .events = events}, {.fd = h->wakefd, .events = POLLIN}};
    struct timespec ts;
    int rc = ppoll(p, 2, fipc_remaining(deadline, &ts), NULL);
    if (rc < 0)
        return -errno;
    if (p[1].revents)
        return -ECANCELED;
    if (p[0].revents & POLLNVAL)
        return -EBADF;
    return rc == 0 ? -ETIMEDOUT : 0;
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
    *h = (fipc_mq){.fd = (int)q, .wakefd = wakefd, .max_message_size = a.mq_msgsize};
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

void fipc_mq_release(fipc_mq *h)
{
    atomic_store(ATOMIC(h->closed), 1);
    atomic_store(ATOMIC(h->release), 1);
    if (atomic_load(ATOMIC(h->busy)) == 0)
        close_fds(h);
}

int fipc_mq_renew_wake(fipc_mq *h)
{
    atomic_store(ATOMIC(h->busy), 0);
    if (atomic_load(ATOMIC(h->release))) {
        close_fds(h);
        return 0;
    }
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -errno;
    close(h->wakefd);
    h->wakefd = fd;
    return 0;
}

/* The one send/receive loop: try at once; while the queue is full (receive: empty), try
 * again for up to h->spin seconds, then sleep until it is ready. prio == NULL sends len
 * bytes with priority `priority`; else receives into buf (cap len). The sent 0 or the
 * received length, or -ETIMEDOUT / -ECANCELED / -EINTR / -errno. */
static int64_t transfer(fipc_mq *h, char *buf, size_t len, unsigned int priority,
                        unsigned int *prio, double timeout)
{
    int64_t deadline = FIPC_DEADLINE_UNSET, spin_end = FIPC_DEADLINE_UNSET;
    for (;;) {
        ssize_t n = prio == NULL ? mq_send((mqd_t)h->fd, buf, len, priority)
                                 : mq_receive((mqd_t)h->fd, buf, len, prio);
        if (n >= 0)
            return (size_t)n > len ? -EMSGSIZE : (int64_t)n; /* never let a caller read past buf */
        if (errno != EAGAIN)
            return -errno;
        if (timeout == 0)
            return -ETIMEDOUT;
        if (atomic_load(ATOMIC(h->closed)))
            return -ECANCELED;
        int64_t end = fipc_deadline_lazy(&deadline, timeout);
        if (spin_end == FIPC_DEADLINE_UNSET) {
            double spin = h->spin > 1.0 ? 1.0 : h->spin;
            spin_end = spin > 0 ? fipc_now_ns() + (int64_t)(spin * 1e9) : 0;
            if (end >= 0 && spin_end > end)
                spin_end = end;
        }
        if (spin_end > 0 && fipc_now_ns() < spin_end) {
            fipc_cpu_relax();
            continue;
        }
        spin_end = 0; /* spun once: sleep from now on */
        int rc = wait_queue(h, prio == NULL ? POLLOUT : POLLIN, end);
        if (rc < 0)
            return rc;
    }
}

int fipc_mq_send(fipc_mq *h, const char *buf, size_t len, long long priority, double timeout)
{
    if (priority < 0 || priority >= 1 << FIPC_MQ_PRIO_BITS)
        return -EINVAL;
    if ((long long)len > h->max_message_size)
        return -EMSGSIZE;
    int rc = enter(h);
    if (rc < 0)
        return rc;
    /* mq_send only reads buf: the cast drops const for the shared loop */
    rc = (int)transfer(h, (char *)buf, len, (unsigned int)priority, NULL, timeout);
    leave(h);
    return rc;
}

int64_t fipc_mq_receive(fipc_mq_rx *rx, double timeout)
{
    fipc_mq *h = rx->h;
    unsigned int prio = 0;
    int64_t rc = enter(h);
    if (rc < 0)
        return rc;
    rc = transfer(h, rx->buf, (size_t)h->max_message_size, 0, &prio, timeout);
    leave(h);
    return rc < 0 ? rc : rc << FIPC_MQ_PRIO_BITS | (int64_t)prio;
}

int64_t fipc_mq_receive_wait(fipc_mq_rx *rx)
{
    return fipc_mq_receive(rx, -1.0);
}
