/* fastipc pipe.c: byte streams over one fd (pipe ends, FIFO ends, connected sockets), with
 * raw and framed (4-byte big-endian length + payload) I/O.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 *
 * Every wait polls the fd together with the object's eventfd `wake`: fipc_pipe_wake() makes
 * every call blocked on the object return -ECANCELED at once, so that closing it from another
 * thread never waits for the peer. The fd must be non-blocking; a call that can proceed
 * without waiting is one system call (the read or write itself, no poll first).
 *
 * The object owns the fd and counts the calls running on it (`busy`), so that Python's
 * hottest calls need no busy count of their own: fipc_pipe_close() wakes them and closes the
 * fds at once if none runs, else the last one to leave closes them; a call made after it
 * returns -ECANCELED without touching them. The memory is freed by fipc_pipe_free(), which
 * Python calls only once nothing can call in any more (the object is garbage).
 */
#ifndef FASTIPC_PIPE_H
#define FASTIPC_PIPE_H

#include "fastipc.h"

/* CDEF BEGIN */
enum {
    FIPC_PIPE_READ = 1,  /* flags of fipc_pipe_new: allocate the read-ahead buffer */
    FIPC_PIPE_SOCK = 2   /* the fd is a socket: sendmsg(MSG_NOSIGNAL) instead of write() */
};

typedef struct fipc_pipe {
    int fd;             /* the stream (not owned) */
    int wake;           /* eventfd (owned): readable once fipc_pipe_wake() was called */
    int flags;          /* FIPC_PIPE_* */
    int guard;          /* SIGPIPE guard of pipe writes: 0 trusts that SIGPIPE is ignored, 1
                           blocks it around a write unless ignored, 2 always blocks it */
    size_t written;     /* bytes of the current write that went, the offset to resume from */
    int32_t torn;       /* the last write stopped part-way (a frame is cut short) */
    char *data;         /* read-ahead buffer: 64 KiB, grown up to 4 MiB for one frame */
    size_t cap;
    size_t start;       /* first unread byte */
    size_t end;         /* one past the last byte read from the fd */
    size_t next;        /* where `start` goes once the caller has taken what the last recv,
                           recv_many or read returned (see `took`) */
    uint32_t large;     /* a frame too large for the buffer whose header was consumed: its
                           length, until the caller, having taken the payload that
                           fipc_pipe_recv_into completed, sets it to 0 */
    size_t got;         /* bytes of that frame delivered so far */
    int32_t busy;       /* calls running (atomic) */
    int32_t closed;     /* set by fipc_pipe_close (atomic) */
    int32_t fds_open;   /* 1 until the fds are closed, by exactly one thread (atomic) */
    int32_t woken;      /* set by fipc_pipe_wake / fipc_pipe_close (atomic): a wake-up seen
                           without it came from a forked copy of this object: not ours */
    int32_t pid;        /* the process whose eventfd `wake` is (see renew_wake) */
    int32_t reading;    /* a thread is in a read (atomic): another one gets -EBUSY */
    int32_t writing;    /* a thread is in a write (atomic): another one gets -EBUSY */
} fipc_pipe;

int fipc_pipe_open(int fds[2], int size);
int fipc_pipe_set_size(int fd, int size);
int fipc_pipe_get_size(int fd);
/* A stream object owning fd (NULL and errno on failure: fd stays the caller's). */
fipc_pipe *fipc_pipe_new(int fd, int flags, int guard);
/* Make every call blocked on p, now or later, return -ECANCELED. Safe from any thread. */
int fipc_pipe_wake(fipc_pipe *p);
/* Wake every call and close the fds now, or when the last running call leaves. */
void fipc_pipe_close(fipc_pipe *p);
/* Close (if not yet) and free the memory; no call may run or follow. */
void fipc_pipe_free(fipc_pipe *p);
/* Write all of buf (write) or one frame (send), starting at byte `offset` of what is to be
 * written, so that a call interrupted by EINTR resumes where it stopped; progress is kept in
 * p->written in every case. Returns the bytes written in all, or -errno / -ETIMEDOUT. */
int64_t fipc_pipe_write(fipc_pipe *p, const char *buf, size_t len, size_t offset,
                        double timeout);
int64_t fipc_pipe_send(fipc_pipe *p, const char *buf, size_t len, size_t offset,
                       double timeout);
/* `count` frames whose payloads lie back to back in `payload`, with lengths `lens`, in one
 * write (several if the pipe fills up); resumable like fipc_pipe_send. */
int64_t fipc_pipe_send_many(fipc_pipe *p, const char *payload, size_t payload_len,
                            const uint32_t *lens, size_t count, size_t offset, double timeout);
/* Reading: what a recv, recv_many or read returns stays unread until the caller passes
 * took=1 to the next of them, i.e. says that it copied the payload out. An exception raised
 * into the caller between the C call and that copy (a signal handler's) leaves the message
 * to the next call instead of losing it.
 *
 * One frame: its length, with *msg pointing at its payload inside p->data (valid until the
 * next call). A frame larger than the buffer: its length with *msg = NULL; its header is
 * consumed (p->large), and fipc_pipe_recv_into receives its payload into the caller's memory;
 * until then fipc_pipe_recv answers the same. FIPC_EOF at end of stream (a frame cut short is
 * dropped), FIPC_TOOBIG for a length over max_size. */
int64_t fipc_pipe_recv(fipc_pipe *p, uint32_t max_size, double timeout, char **msg, int took);
/* Like fipc_pipe_recv, then up to max_count - 1 more frames already buffered, without
 * waiting: returns the count; payload i spans [spans[2i], spans[2i+1]) of p->data. A large
 * frame first: returns 0, and fipc_pipe_recv_into takes it. */
int64_t fipc_pipe_recv_many(fipc_pipe *p, uint32_t max_size, double timeout, uint32_t *spans,
                            size_t max_count, int took);
/* The payload of the large frame announced by fipc_pipe_recv into out (n == p->large bytes),
 * resuming at p->got: n once it is complete (the caller then sets p->large to 0). */
int64_t fipc_pipe_recv_into(fipc_pipe *p, char *out, size_t n, double timeout);
/* Raw read: up to n bytes, read ahead into p; *data points at them (valid until the next
 * call). 0 at end of stream. */
int64_t fipc_pipe_read(fipc_pipe *p, size_t n, double timeout, char **data, int took);
int fipc_fifo_writer_present(int fd);
/* CDEF END */

#endif
