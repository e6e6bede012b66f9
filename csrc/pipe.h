/* fastipc pipe.c: byte streams over one fd (pipe ends, FIFO ends, connected sockets), with
 * raw and framed (4-byte big-endian length + payload) I/O.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header): only
 * what is not per-message (making a pipe, its size, a FIFO's writer). The streams themselves
 * are driven by their native handle (csrc/py/pipe.c), which embeds a fipc_pipe, counts the
 * calls running on it and frees it (fipc_pipe_fini) only once none runs.
 *
 * Every wait polls the fd together with the object's eventfd `wake`: fipc_pipe_wake() makes
 * every call blocked on the object return -ECANCELED at once, so that closing it from another
 * thread never waits for the peer. The fd must be non-blocking; a call that can proceed
 * without waiting is one system call (the read or write itself, no poll first).
 */
#ifndef FASTIPC_PIPE_H
#define FASTIPC_PIPE_H

#include "fastipc.h"

/* CDEF BEGIN */
int fipc_pipe_open(int fds[2], int size);
int fipc_pipe_set_size(int fd, int size);
int fipc_pipe_get_size(int fd);
int fipc_fifo_writer_present(int fd);
/* CDEF END */

#include <stdatomic.h>
#include <sys/uio.h>

enum {
    FIPC_PIPE_READ = 1,  /* flags of fipc_pipe_init: allocate the read-ahead buffer */
    FIPC_PIPE_SOCK = 2   /* the fd is a socket: sendmsg(MSG_NOSIGNAL) instead of write() */
};

/* How the next attempt starts (p->wait_mode). A call tries once without waiting (with the
 * GIL held), then, if it must wait, again with the GIL released: that second attempt knows
 * the fd was not ready a moment ago, so it waits for it first (FIPC_WAIT_FIRST) rather than
 * try again at once, sparing a system call that would fail (and take the pipe's lock from
 * under the peer). */
enum { FIPC_WAIT_NOW = 0, FIPC_WAIT_FIRST = 1 };

/* SIGPIPE guard of pipe writes: trust that SIGPIPE is ignored; ask the kernel for the
 * disposition on every write and block SIGPIPE around it unless ignored; always block it. */
enum { FIPC_GUARD_NONE = 0, FIPC_GUARD_CHECK = 1, FIPC_GUARD_ALWAYS = 2 };

typedef struct fipc_pipe {
    int fd;             /* the stream (owned once fipc_pipe_init succeeded) */
    int wake;           /* eventfd (owned): readable once fipc_pipe_wake() was called */
    int flags;          /* FIPC_PIPE_* */
    int guard;          /* FIPC_GUARD_* */
    size_t written;     /* bytes of the current write that went, the offset to resume from */
    int32_t torn;       /* the last write stopped part-way (a frame is cut short) */
    char *data;         /* read-ahead buffer: 64 KiB, grown up to 4 MiB for one frame */
    size_t cap;
    size_t start;       /* first unread byte */
    size_t end;         /* one past the last byte read from the fd */
    size_t next;        /* where `start` goes once the caller has taken what the last
                           fipc_pipe_recv / fipc_pipe_next / fipc_pipe_read returned
                           (fipc_pipe_took) */
    uint32_t large;     /* a frame too large for the buffer whose header was consumed: its
                           length, until the caller, having taken the payload that
                           fipc_pipe_recv_into completed, calls fipc_pipe_took_large */
    size_t got;         /* bytes of that frame delivered so far */
    int wait_mode;      /* FIPC_WAIT_*, set by the caller before each attempt; the first read
                           or write of the attempt uses it up */
    _Atomic int32_t woken;  /* set by fipc_pipe_wake: a wake-up seen without it came from a
                               forked copy of this object: not ours */
    int32_t pid;        /* the process whose eventfd `wake` is (see renew_wake) */
    _Atomic int32_t reading;  /* a thread is in a read: another one gets -EBUSY */
    _Atomic int32_t writing;  /* a thread is in a write: another one gets -EBUSY */
} fipc_pipe;

/* Set up p for the non-blocking fd: 0, or -errno (fd stays the caller's). */
int fipc_pipe_init(fipc_pipe *p, int fd, int flags, int guard);
/* Make every call blocked on p, now or later, return -ECANCELED. Safe from any thread. */
int fipc_pipe_wake(fipc_pipe *p);
/* Close the fds and free the buffer; no call may run or follow. Idempotent. */
void fipc_pipe_fini(fipc_pipe *p);

/* An end is used by one thread at a time: a call claims its side (&p->reading or
 * &p->writing) for its whole duration, waits included; 0 if another thread has it (the
 * caller fails with -EBUSY rather than interleave frames or move the buffer under it). */
static inline int fipc_pipe_claim(_Atomic int32_t *side)
{
    return !atomic_exchange_explicit(side, 1, memory_order_acquire);
}
static inline void fipc_pipe_unclaim(_Atomic int32_t *side)
{
    atomic_store_explicit(side, 0, memory_order_release);
}

/* Write all of buf (write) or one frame (send), starting at byte `offset` of what is to be
 * written, so that a call that waits again resumes where it stopped; progress is kept in
 * p->written in every case, and p->torn says whether a failure left part of it written.
 * Returns the bytes written in all, or -errno / -ETIMEDOUT. */
int64_t fipc_pipe_write(fipc_pipe *p, const char *buf, size_t len, size_t offset,
                        double timeout);
int64_t fipc_pipe_send(fipc_pipe *p, const char *buf, size_t len, size_t offset,
                       double timeout);
/* Frames of `count` messages back to back: the size they need (0 if it overflows or a
 * message is too long for a frame), and the encoder that writes them into out. */
size_t fipc_pipe_frames_size(const struct iovec *msgs, size_t count);
void fipc_pipe_frames(char *out, const struct iovec *msgs, size_t count);

/* Reading: what fipc_pipe_recv, fipc_pipe_next or fipc_pipe_read returns stays unread until
 * the caller calls fipc_pipe_took, i.e. says that it copied the payload out: a caller that
 * fails between the two (an exception raised into it) leaves the message to the next call.
 *
 * One frame: its length, with *msg pointing at its payload inside p->data (valid until the
 * next call). FIPC_NEED for a frame larger than the buffer: its header is consumed, its
 * length is p->large, and fipc_pipe_recv_into receives its payload into the caller's memory;
 * until the caller calls fipc_pipe_took_large, fipc_pipe_recv answers the same. FIPC_EOF at
 * end of stream (a frame cut short is dropped), FIPC_TOOBIG for a length over max_size. */
int64_t fipc_pipe_recv(fipc_pipe *p, uint32_t max_size, double timeout, char **msg);
/* The next whole frame already buffered after what was returned so far (never waits): its
 * length and *msg as above, moving p->next past it; -1 if there is none (an oversized frame
 * is reported by the next fipc_pipe_recv). */
int64_t fipc_pipe_next(fipc_pipe *p, uint32_t max_size, char **msg);
/* The payload of the large frame announced by fipc_pipe_recv into out (n == p->large bytes),
 * resuming at p->got: n once it is complete. */
int64_t fipc_pipe_recv_into(fipc_pipe *p, char *out, size_t n, double timeout);
/* Raw read: up to n bytes, read ahead into p; *data points at them (valid until the next
 * call). 0 at end of stream. */
int64_t fipc_pipe_read(fipc_pipe *p, size_t n, double timeout, char **data);
static inline void fipc_pipe_took(fipc_pipe *p)
{
    p->start = p->next;
}
static inline void fipc_pipe_took_large(fipc_pipe *p)
{
    p->large = 0;
    p->got = 0;
}

#endif
