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

/* Open (create: 0 attach, 1 create exclusively) a queue read-write; the descriptor is
 * close-on-exec and non-blocking (the waits poll it together with a wake-up eventfd).
 * max_messages and max_message_size are used only when creating. The descriptor or -errno. */
int fipc_mq_open(const char *name, int create, int mode, long max_messages,
                 long max_message_size);
int fipc_mq_close(int mqd);
int fipc_mq_unlink(const char *name);
int fipc_mq_getattr(int mqd, fipc_mq_attr *attr);
/* The wake-up eventfd of one queue object (close-on-exec, non-blocking), or -errno; once
 * fipc_mq_wake() wrote to it, every send and receive waiting with it returns -ECANCELED. */
int fipc_mq_wake_open(void);
int fipc_mq_wake(int wakefd);
/* Send one message of len bytes with a priority: 0, -ETIMEDOUT when the queue stays full,
 * -ECANCELED once woken, -EINTR, or -errno. While the queue is full, poll it for up to
 * `spin` seconds before sleeping. */
int fipc_mq_send(int mqd, int wakefd, const char *buf, size_t len, unsigned int priority,
                 double timeout, double spin);
/* Receive the oldest message of the highest priority into buf (cap >= the queue's
 * max_message_size) and its priority into *priority (memory owned by the caller's call):
 * the message's length, or -ETIMEDOUT / -ECANCELED / -EINTR / -errno as fipc_mq_send. */
int64_t fipc_mq_receive(int mqd, int wakefd, char *buf, size_t cap, unsigned int *priority,
                        double timeout, double spin);
/* CDEF END */

#endif
