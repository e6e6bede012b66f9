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
 * close-on-exec and blocking (waits are mq_timed* calls). max_messages and
 * max_message_size are used only when creating. Returns the descriptor or -errno. */
int fipc_mq_open(const char *name, int create, int mode, long max_messages,
                 long max_message_size);
int fipc_mq_close(int mqd);
int fipc_mq_unlink(const char *name);
int fipc_mq_getattr(int mqd, fipc_mq_attr *attr);
/* Send one message of len bytes with a priority; 0, -ETIMEDOUT when the queue stays full,
 * or -errno. While the queue is full, poll for up to `spin` seconds before sleeping. */
int fipc_mq_send(int mqd, const char *buf, size_t len, unsigned int priority, double timeout,
                 double spin);
/* Receive the oldest message of the highest priority into buf (cap >= the queue's
 * max_message_size). Returns length << FIPC_MQ_PRIO_BITS | priority (one value, so that
 * no output pointer is shared between threads), or -ETIMEDOUT or -errno. While the queue
 * is empty, poll for up to `spin` seconds before sleeping. */
enum { FIPC_MQ_PRIO_BITS = 16, FIPC_MQ_PRIO_MASK = 0xFFFF };
int64_t fipc_mq_receive(int mqd, char *buf, size_t cap, double timeout, double spin);
/* CDEF END */

#endif
