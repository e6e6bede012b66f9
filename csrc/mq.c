/* POSIX message queues: one call per user operation.
 *
 * The descriptor stays blocking: a receiver that has to wait sleeps in mq_timedreceive, and
 * the next mq_send hands the message straight to it (the kernel's pipelined send), which is
 * measurably quicker than sleeping in ppoll and receiving once woken. mq_timed* take an
 * absolute CLOCK_REALTIME time: the deadline is kept on CLOCK_MONOTONIC and converted at the
 * last moment. A timeout of 0 first polls the descriptor (an expired deadline would fail
 * only after a trip through the scheduler), then passes an expired deadline, so that the
 * call cannot sleep even when another process empties (or fills) the queue in between.
 *
 * Before sleeping, a caller may spin for up to `spin` seconds, polling the descriptor without
 * waiting: a sleeping peer costs the other side a wake-up (and itself a context switch) on
 * every message. */
#include "mq.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>

/* The absolute CLOCK_REALTIME time of a CLOCK_MONOTONIC deadline (ns, >= 0). */
static struct timespec *realtime_at(int64_t deadline, struct timespec *ts)
{
    struct timespec left;
    fipc_remaining(deadline, &left);
    if (clock_gettime(CLOCK_REALTIME, ts) < 0)
        return NULL;
    ts->tv_sec += left.tv_sec;
    ts->tv_nsec += left.tv_nsec;
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000;
    }
    return ts;
}

/* timeout 0: is the queue ready at all? An expired mq_timed* deadline fails only after a
 * trip through the scheduler (about 20 µs); poll answers at once. 1 ready, 0 not, -errno. */
static int ready_now(int mqd, short events)
{
    struct pollfd p = {.fd = mqd, .events = events};
    int rc = poll(&p, 1, 0);
    return rc < 0 ? -errno : rc;
}

/* Poll the descriptor without sleeping until it is ready for `events`, for at most `spin`
 * seconds (and never past the deadline). Whatever the outcome, the caller then makes its
 * one blocking call: readiness here is only a hint, another process may be quicker. */
static void spin_wait(int mqd, short events, double spin, int64_t deadline)
{
    if (spin > 1.0) /* never spin for longer than a second (and never overflow below) */
        spin = 1.0;
    int64_t end = fipc_now_ns() + (int64_t)(spin * 1e9);
    if (deadline >= 0 && end > deadline)
        end = deadline;
    struct pollfd p = {.fd = mqd, .events = events};
    do {
        if (poll(&p, 1, 0) != 0) /* ready, or an error the real call will report */
            return;
    } while (fipc_now_ns() < end);
}

int fipc_mq_open(const char *name, int create, int mode, long max_messages,
                 long max_message_size)
{
    mqd_t q;
    if (create) {
        struct mq_attr attr = {0};
        attr.mq_maxmsg = max_messages;
        attr.mq_msgsize = max_message_size;
        q = mq_open(name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, (mode_t)mode, &attr);
    } else {
        q = mq_open(name, O_RDWR | O_CLOEXEC);
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

int fipc_mq_send(int mqd, const char *buf, size_t len, unsigned int priority, double timeout,
                 double spin)
{
    int64_t deadline = fipc_deadline(timeout);
    if (timeout == 0) {
        int ready = ready_now(mqd, POLLOUT);
        if (ready <= 0)
            return ready < 0 ? ready : -ETIMEDOUT;
    } else if (spin > 0) {
        spin_wait(mqd, POLLOUT, spin, deadline);
    }
    struct timespec ts;
    int rc;
    if (deadline < 0)
        rc = mq_send((mqd_t)mqd, buf, len, priority);
    else if (realtime_at(deadline, &ts) == NULL)
        return -errno;
    else
        rc = mq_timedsend((mqd_t)mqd, buf, len, priority, &ts);
    if (rc < 0)
        return errno == EAGAIN ? -ETIMEDOUT : -errno;
    return 0;
}

int64_t fipc_mq_receive(int mqd, char *buf, size_t cap, double timeout, double spin)
{
    unsigned int prio = 0;
    int64_t deadline = fipc_deadline(timeout);
    if (timeout == 0) {
        int ready = ready_now(mqd, POLLIN);
        if (ready <= 0)
            return ready < 0 ? ready : -ETIMEDOUT;
    } else if (spin > 0) {
        spin_wait(mqd, POLLIN, spin, deadline);
    }
    struct timespec ts;
    ssize_t n;
    if (deadline < 0)
        n = mq_receive((mqd_t)mqd, buf, cap, &prio);
    else if (realtime_at(deadline, &ts) == NULL)
        return -errno;
    else
        n = mq_timedreceive((mqd_t)mqd, buf, cap, &prio, &ts);
    if (n < 0)
        return errno == EAGAIN ? -ETIMEDOUT : -errno;
    if ((size_t)n > cap || prio > FIPC_MQ_PRIO_MASK) /* never let a caller read past buf */
        return -EMSGSIZE;
    return (int64_t)n << FIPC_MQ_PRIO_BITS | prio;
}
