/* fastipc pipe.c: anonymous pipes, FIFOs, framed messages.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_PIPE_H
#define FASTIPC_PIPE_H

#include "fastipc.h"

/* CDEF BEGIN */
typedef struct fipc_rbuf {
    char *data;         /* read-ahead buffer, owned by C (fipc_rbuf_free); 64 KiB, grown up
                           to 4 MiB for one frame, larger frames go to FIPC_LARGE */
    size_t cap;
    size_t start;       /* first unread byte */
    size_t end;         /* one past the last byte read from the fd */
    uint32_t large;     /* length of the frame announced by FIPC_LARGE */
} fipc_rbuf;

int fipc_pipe_open(int fds[2], int size);
int fipc_pipe_set_size(int fd, int size);
int fipc_pipe_get_size(int fd);
fipc_rbuf *fipc_rbuf_new(void);
void fipc_rbuf_free(fipc_rbuf *rb);
/* Write all of buf (pipe_write) or one frame, a 4-byte big-endian length then buf
 * (pipe_send), starting at byte `offset` of what is to be written, so that a call
 * interrupted by EINTR resumes where it stopped. Progress is stored in *written.
 * guard: 0 trusts that SIGPIPE is ignored, 1 checks its disposition and blocks it only
 * when it is not ignored, 2 always blocks it around the write. */
int64_t fipc_pipe_write(int fd, const char *buf, size_t len, size_t offset, double timeout,
                        int guard, size_t *written);
int64_t fipc_pipe_send(int fd, const char *buf, size_t len, size_t offset, double timeout,
                       int guard, size_t *written);
/* `count` frames whose payloads lie back to back in `payload`, with lengths `lens`, in one
 * write (several if the pipe fills up); resumable like fipc_pipe_send. */
int64_t fipc_pipe_send_many(int fd, const char *payload, size_t payload_len,
                            const uint32_t *lens, size_t count, size_t offset, double timeout,
                            int guard, size_t *written);
/* Like fipc_pipe_recv, then up to max_count - 1 more frames already buffered, without
 * waiting: returns the count; payload i spans [spans[2i], spans[2i+1]) of rb->data. */
int64_t fipc_pipe_recv_many(int fd, fipc_rbuf *rb, uint32_t max_size, double timeout,
                            uint32_t *spans, size_t max_count);
int64_t fipc_pipe_recv_into(int fd, fipc_rbuf *rb, char *out, size_t n, size_t *got,
                            double timeout);
/* Raw read: up to n bytes, read ahead into rb; *data points at them (valid until the next
 * call). 0 at end of stream. */
int64_t fipc_pipe_read(int fd, fipc_rbuf *rb, size_t n, double timeout, char **data);
/* One frame: its length, with *msg pointing at its payload inside rb (valid until the next
 * call); FIPC_EOF at end of stream (a frame cut short is dropped), FIPC_TOOBIG for a length
 * over max_size, FIPC_LARGE for a frame larger than the buffer: its header is consumed, its
 * length is in rb->large, and fipc_pipe_recv_into receives its payload into Python's memory.
 */
int64_t fipc_pipe_recv(int fd, fipc_rbuf *rb, uint32_t max_size, double timeout, char **msg);
int fipc_fifo_writer_present(int fd);
/* CDEF END */

#endif
