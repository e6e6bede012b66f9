/* fastipc mq.c: POSIX message queues.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_MQ_H
#define FASTIPC_MQ_H

#include "fastipc.h"

/* CDEF BEGIN */
typedef struct fipc_mq_attr {
    long max_messages;
    long max_message_size;
    long current_messages;
} fipc_mq_attr;

/* fipc_mq_receive returns the message's length << FIPC_MQ_PRIO_BITS | its priority
 * (priorities are below MQ_PRIO_MAX, 32768 on Linux). */
enum { FIPC_MQ_PRIO_BITS = 16 };

/* A wait sleeps in slices of this many ms, looking at `closed` between them: a close()
 * from another thread ends a wait within one slice. */
enum { FIPC_MQ_SLICE_MS = 100 };

/* One open queue object, in memory owned by Python (ffi.new), filled by fipc_mq_open. The
 * native handle of fastipc.mq.MessageQueue (csrc/py/mq.c) makes the sends and receives and
 * counts them busy; it calls fipc_mq_wake when the object is closed (waits end within a
 * slice: -ECANCELED), and fipc_mq_close once no call is using the descriptors. */
typedef struct fipc_mq {
    int32_t closed;             /* set by fipc_mq_wake */
    int32_t released;           /* the descriptors are closed (once) */
    int fd;                     /* the queue: close-on-exec, non-blocking */
    int waitfd;                 /* the same queue, blocking: waits sleep in the kernel's
                                   mq_timedsend/mq_timedreceive on it */
    int wakefd;                 /* eventfd, written by fipc_mq_wake (for event loops) */
    long max_message_size;      /* the queue's, from mq_getattr: receive buffers have it */
    double spin;                /* seconds a wait retries before it sleeps (at most 1) */
} fipc_mq;

/* Open (create: 0 attach, 1 create exclusively) a queue read-write, twice (the blocking
 * descriptor is reopened through /proc/self/fd: the same queue, whatever became of its
 * name), with its wake-up eventfd, into *h; max_messages and max_message_size are used
 * only when creating. 0 or -errno (then nothing is left open). */
int fipc_mq_open(fipc_mq *h, const char *name, int create, int mode, long max_messages,
                 long max_message_size);
int fipc_mq_unlink(const char *name);
int fipc_mq_getattr(fipc_mq *h, fipc_mq_attr *attr);
/* End every send and receive of h waiting now with -ECANCELED (within a slice), and make
 * the wake-up eventfd readable. */
int fipc_mq_wake(fipc_mq *h);
/* Close the descriptors (once; later calls do nothing). The caller makes sure that no call
 * is using them. */
void fipc_mq_close(fipc_mq *h);
/* In a child made by fork(): a wake-up eventfd of its own (the inherited one is shared
 * with the parent). */
int fipc_mq_renew_wake(fipc_mq *h);
/* Send one message of len bytes with a priority (0 .. MQ_PRIO_MAX-1): 0, -ETIMEDOUT when
 * the queue stays full (at once for timeout 0), -ECANCELED once woken, -EINTR, or -errno
 * (-EINVAL for a priority out of range, -EMSGSIZE for len over max_message_size: nothing
 * is sent). */
int fipc_mq_send(fipc_mq *h, const char *buf, size_t len, long long priority,
                 double timeout);
/* Receive the oldest message of the highest priority into buf (h->max_message_size
 * bytes): its length << FIPC_MQ_PRIO_BITS | its priority, or -ETIMEDOUT / -ECANCELED /
 * -EINTR / -errno as fipc_mq_send. */
int64_t fipc_mq_receive(fipc_mq *h, char *buf, double timeout);
/* CDEF END */

#endif
