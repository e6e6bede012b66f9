/* POSIX message queues: one call per user operation.
 *
 * The descriptor is non-blocking: a send or receive first tries at once (the whole fast
 * path is that one syscall); only when the queue is full (or empty) does it wait, in ppoll on
 * the queue and the object's wake-up eventfd, so that closing the object from another
 * thread ends the wait (-ECANCELED) instead of leaving a thread asleep in mq_receive on a
 * descriptor about to be closed. A queue that another process emptied (or filled) between
 * the wake-up and the retry is waited for again. Deadlines are on CLOCK_MONOTONIC.
 *
 * Before sleeping, a caller may spin for up to `spin` seconds, polling without waiting:
 * a sleeping peer costs the other side a wake-up (and itself a context switch) on every
 * message. */
#include "mq.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Wait until the queue is ready for `events`, the wake-up fd is written, or the deadline:
 * 0 (ready: try again), -ECANCELED (woken), -ETIMEDOUT, -EINTR or -errno. spin > 0 first
 * polls without sleeping for up to that long (never past the deadline). */
static int wait_queue(int mqd, short events, int wakefd, int64_t deadline, double spin)
{
    struct pollfd p[2] = {{.fd = mqd, .events = events}, {.fd = wakefd, .events = POLLIN}};
    int rc;
    if (spin > 0) {
        int64_t end = fipc_now_ns() + (int64_t)((spin > 1.0 ? 1.0 : spin) * 1e9);
        if (deadline >= 0 && end > deadline)
            end = deadline;
        do
            rc = poll(p, 2, 0);
        while (rc == 0 && fipc_now_ns() < end);
    } else {
        struct timespec ts;
        rc = ppoll(p, 2, fipc_remaining(deadline, &ts), NULL);
    }
    if (rc < 0)
        return -errno;
    if (p[1].revents)
        return -ECANCELED;
    if (p[0].revents & POLLNVAL)
        return -EBADF;
    return rc == 0 && spin <= 0 ? -ETIMEDOUT : 0;
}

int fipc_mq_open(const char *name, int create, int mode, long max_messages,
                 long max_message_size)
{
    mqd_t q;
    int flags = O_RDWR | O_CLOEXEC | O_NONBLOCK;
    if (create) {
        struct mq_attr attr = {0};
        attr.mq_maxmsg = max_messages;
        attr.mq_msgsize = max_message_size;
        q = mq_open(name, flags | O_CREAT | O_EXCL, (mode_t)mode, &attr);
    } else {
        q = mq_open(name, flags);
    }
    if (q == (mqd_t)-1)
        return -errno;
    return (int)q;
}

int fipc_mq_close(int mqd)
{
    return mq_close((mqd_t)mqd) < 0 ? -errno : 0;
}

int fipc_mq_unlink(const char *name)
{
    return mq_unlink(name) < 0 ? -errno : 0;
}

int fipc_mq_getattr(int mqd, fipc_mq_attr *attr)
{
    struct mq_attr a;
    if (mq_getattr((mqd_t)mqd, &a) < 0)
        return -errno;
    attr->max_messages = a.mq_maxmsg;
    attr->max_message_size = a.mq_msgsize;
    attr->current_messages = a.mq_curmsgs;
    return 0;
}

int fipc_mq_wake_open(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int fipc_mq_wake(int wakefd)
{
    uint64_t one = 1;
    /* EAGAIN: the counter is already non-zero, which is all a waiter looks at */
    if (write(wakefd, &one, sizeof one) < 0 && errno != EAGAIN)
        return -errno;
    return 0;
}

/* The one send/receive loop: try at once; while the queue is full (receive: empty), wait.
 * prio == NULL sends len bytes with priority `priority`; else receives into buf (cap len).
 * The sent 0 or the received length, or -ETIMEDOUT / -ECANCELED / -EINTR / -errno. */
static int64_t transfer(int mqd, int wakefd, char *buf, size_t len, unsigned int priority,
                        unsigned int *prio, double timeout, double spin)
{
    int64_t deadline = FIPC_DEADLINE_UNSET;
    for (;;) {
        ssize_t n = prio == NULL ? mq_send((mqd_t)mqd, buf, len, priority)
                                 : mq_receive((mqd_t)mqd, buf, len, prio);
        if (n >= 0)
            return (size_t)n > len ? -EMSGSIZE : (int64_t)n; /* never let a caller read past buf */
        if (errno != EAGAIN)
            return -errno;
        if (timeout == 0)
            return -ETIMEDOUT;
        int rc = wait_queue(mqd, prio == NULL ? POLLOUT : POLLIN, wakefd,
                            fipc_deadline_lazy(&deadline, timeout), spin);
        if (rc < 0)
            return rc;
        spin = 0; /* spun once: sleep from now on */
    }
}

int fipc_mq_send(int mqd, int wakefd, const char *buf, size_t len, unsigned int priority,
                 double timeout, double spin)
{
    /* mq_send only reads buf: the cast drops const for the shared loop */
    return (int)transfer(mqd, wakefd, (char *)buf, len, priority, NULL, timeout, spin);
}

int64_t fipc_mq_receive(int mqd, int wakefd, char *buf, size_t cap, unsigned int *priority,
                        double timeout, double spin)
{
    return transfer(mqd, wakefd, buf, cap, 0, priority, timeout, spin);
}
