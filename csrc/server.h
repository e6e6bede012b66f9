/* fastipc server.c: the epoll event loop.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_SERVER_H
#define FASTIPC_SERVER_H

#include "fastipc.h"

/* CDEF BEGIN */
typedef struct fipc_srv fipc_srv;   /* opaque: one event loop (epoll + connections) */
enum {
    FIPC_SRV_RAW = 0,           /* framing: bytes as they arrive */
    FIPC_SRV_LENGTH = 1,        /* framing: 4-byte big-endian length, then the payload */
    FIPC_EV_CONNECT = 1,        /* kinds of control events */
    FIPC_EV_CLOSE = 3,
    FIPC_EV_FIELDS = 5,         /* int64 per control event: kind, fd, id, offset, length */
    FIPC_MSG_FIELDS = 3         /* int64 per message: fd, start, end (offsets in data) */
};
/* What one loop turn found. Control events before the messages (closes decided before the
 * turn, connects), the messages, then control events after them (closes found while
 * reading). A CONNECT's payload is the peer's sockaddr; a CLOSE's offset field is the errno
 * that ended the connection (0: closed cleanly; ETIMEDOUT: idle past idle_timeout). `timer`
 * is the time in seconds until the loop needs a turn even without I/O (an idle deadline,
 * listeners resting after EMFILE), -1.0 if none. Valid until the next poll. */
typedef struct fipc_srv_batch {
    const int64_t *pre;
    size_t npre;
    const int64_t *msg;
    size_t nmsg;
    const int64_t *post;
    size_t npost;
    const char *data;
    size_t data_len;
    double timer;
} fipc_srv_batch;
/* A loop in *out: 0, or -errno (*out NULL). high_water: unsent bytes past which a
 * connection stops being read until its output drains. wake_r / wake_w: a non-blocking
 * pipe, owned by the caller, that wakes the loop when written (stop(), Python's signal
 * wake-up fd); it must outlive the loop. idle_timeout > 0: a connection with nothing
 * received and nothing left to send for that many seconds is closed (CLOSE with ETIMEDOUT).
 * max_connections > 0: a connection accepted beyond that many is closed at once, unreported. */
int fipc_srv_new(fipc_srv **out, int framing, uint32_t max_message_size, size_t high_water,
                 int wake_r, int wake_w, double idle_timeout, int max_connections);
void fipc_srv_free(fipc_srv *s);
/* The epoll fd: readable whenever a turn would find something (for an outer event loop). */
int fipc_srv_fd(fipc_srv *s);
/* Watch a listening socket (non-blocking; owned by the caller, who closes it after
 * fipc_srv_free). */
int fipc_srv_listen(fipc_srv *s, int fd);
/* One loop turn: queue the n sends given (connection keys, lengths, and their payloads
 * end to end in `data`), flush every queued output, close finished and idle connections,
 * wait up to `timeout` seconds, accept and read once each ready connection. Returns the
 * number of events and messages in *b, or -errno (-EINTR: a signal came before any event).
 * A key is a connection's id << 32 | its fd; sends to connections that are gone are dropped
 * (their CLOSE event tells). -EINVAL if the lengths add up to more than data_len. */
int fipc_srv_poll(fipc_srv *s, double timeout, const uint64_t *keys, const uint64_t *lens,
                  size_t n, const char *data, size_t data_len, fipc_srv_batch *b);
/* Queue sends as poll does, and write out everything queued now (the end of a dispatch). */
int fipc_srv_sendv(fipc_srv *s, const uint64_t *keys, const uint64_t *lens, size_t n,
                   const char *data, size_t data_len);
/* One send on a connection: written at once when nothing is queued and no batch is being
 * dispatched, queued otherwise. One frame with length framing. -EPIPE if it is gone. */
int fipc_srv_send(fipc_srv *s, uint64_t key, const char *buf, size_t len);
/* Close a connection after its queued output; its CLOSE event comes with the next poll. */
int fipc_srv_close(fipc_srv *s, uint64_t key);
/* Unsent bytes queued on a connection, or -EPIPE. */
int64_t fipc_srv_pending(fipc_srv *s, uint64_t key);
/* CDEF END */

#endif
