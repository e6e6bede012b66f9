/* POSIX message queues: one call per user operation, timeouts through mq_timed*.
 *
 * The descriptor stays blocking: a blocked receiver sleeps in the kernel, which hands a
 * message straight to it on the next send (no poll-then-receive round). mq_timed* take an
 * absolute CLOCK_REALTIME time, computed at the last moment from the relative timeout; a
 * timeout of 0 passes "now", which the kernel treats as "do not sleep". */
#include "fastipc.h"

#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sys/stat.h>
#include <time.h>

/* absolute CLOCK_REALTIME time `timeout` seconds from now; NULL means "no timeout" */
static struct timespec *realtime_deadline(double timeout, struct timespec *ts)
{
    if (timeout < 0 || timeout > 1e9) /* forever (1e9 s: ~31 years, avoids overflow) */
        return NULL;
    if (clock_gettime(CLOCK_REALTIME, ts) < 0)
        return NULL;
    int64_t ns = (int64_t)(timeout * 1e9);
    ts->tv_sec += (time_t)(ns / 1000000000);
    ts->tv_nsec += (long)(ns % 1000000000);
    if (ts->tv_nsec >= 1000000000) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000;
    }
    return ts;
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

int fipc_mq_send(int mqd, const char *buf, size_t len, unsigned int priority, double timeout)
{
    struct timespec ts;
    struct timespec *abs = realtime_deadline(timeout, &ts);
    int rc = abs ? mq_timedsend((mqd_t)mqd, buf, len, priority, abs)
                 : mq_send((mqd_t)mqd, buf, len, priority);
    if (rc < 0)
        return errno == EAGAIN ? -ETIMEDOUT : -errno;
    return 0;
}

int64_t fipc_mq_receive(int mqd, char *buf, size_t cap, double timeout, unsigned int *priority)
{
    struct timespec ts;
    struct timespec *abs = realtime_deadline(timeout, &ts);
    ssize_t n = abs ? mq_timedreceive((mqd_t)mqd, buf, cap, priority, abs)
                    : mq_receive((mqd_t)mqd, buf, cap, priority);
    if (n < 0)
        return errno == EAGAIN ? -ETIMEDOUT : -errno;
    if ((size_t)n > cap) /* the kernel never does this; never let a caller read past buf */
        return -EMSGSIZE;
    return (int64_t)n;
}
