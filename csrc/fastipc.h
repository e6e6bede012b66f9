/* fastipc: the C API, declared once.
 *
 * Every function is plain C (no Python.h) named fipc_<mechanism>_<verb>. It returns >= 0 on
 * success and -errno on failure, or one of the FIPC_* status codes below, which never collide
 * with an errno. Timeouts are seconds as a double: negative waits forever, 0 tries once.
 * EINTR is returned, never retried here, so that Python can run its signal handlers and retry
 * with the remaining time (PEP 475).
 *
 * The part between the CDEF markers is read by src/fastipc/_build.py as the cffi cdef, so it
 * holds only declarations cffi understands.
 */
#ifndef FASTIPC_H
#define FASTIPC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CDEF BEGIN */

/* ---- status codes shared by every mechanism ---- */
enum {
    FIPC_EOF = -1000,       /* the peer closed: end of stream */
    FIPC_TOOBIG = -1001,    /* a length read from the peer exceeds the allowed maximum */
    FIPC_CORRUPT = -1002,   /* a header or frame read from shared memory is inconsistent */
    FIPC_LARGE = -1003      /* a frame larger than the read-ahead buffer (fipc_pipe_recv) */
};

/* ---- pipe.c: anonymous pipes, FIFOs, framed messages ---- */
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

/* ---- signals.c: signals carrying a value ---- */
typedef struct fipc_siginfo {
    int signo;
    int code;
    int pid;
    int uid;
    int value;
    int has_value;
} fipc_siginfo;

int fipc_signal_send(int pid, int signum, int has_value, int value);
int fipc_signal_wait(const int *signums, int count, double timeout, fipc_siginfo *info);

/* ---- mq.c: POSIX message queues ---- */
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

/* ---- sem.c: POSIX semaphores ---- */
/* Open (create: 0 attach, 1 create exclusively) a named semaphore; *out receives the
 * handle (a sem_t *). Returns 0 or -errno. */
int fipc_sem_open(const char *name, int create, int mode, unsigned int value, void **out);
int fipc_sem_close(void *sem);
int fipc_sem_unlink(const char *name);
/* Decrement, waiting up to timeout seconds (CLOCK_MONOTONIC where the libc allows):
 * 0, -ETIMEDOUT, -EINTR or -errno. */
int fipc_sem_acquire(void *sem, double timeout);
int fipc_sem_release(void *sem);
/* The current value (>= 0) or -errno. */
int fipc_sem_value(void *sem);

/* ---- shm.c: shared memory and the ring channel ---- */
/* The binary layout is documented in docs/shm-layout.md. One fipc_shm per endpoint, owned by
 * Python (ffi.new); base is the start of a mapping Python owns (mmap), map_size its real size
 * from fstat. Every field read from the shared header is checked against map_size. */
enum {
    FIPC_SHM_HEADER = 256,      /* bytes before the ring's data */
    FIPC_SHM_NEED = -1100,      /* recv: the next message is larger than the buffer given;
                                   its length is in msg_total and it stays queued */
    FIPC_SHM_NOTREADY = -1101   /* attach: the writer has not finished its header yet */
};

typedef struct fipc_shm {
    char *base;             /* the mapping */
    uint64_t map_size;      /* its real size */
    uint64_t capacity;      /* ring bytes: map_size - FIPC_SHM_HEADER, a power of two */
    uint64_t pos;           /* writer: next head; reader: where the next frame starts */
    uint64_t peer;          /* writer: last tail seen; reader: last head seen */
    uint64_t release;       /* reader: tail to publish (frames read but not yet released) */
    uint64_t hold;          /* reader: never release beyond this (a live recv_view); or ~0 */
    uint64_t max_message;   /* largest message accepted (reader) or sent (writer) */
    uint64_t msg_total;     /* reader: length of the chunked message being assembled */
    uint64_t msg_done;      /* reader: bytes of it copied so far */
    uint64_t chunk;         /* writer: largest chunk of a streamed message */
    uint64_t last_len;      /* reader: length of the frame returned by the last recv */
    uint64_t last_pos;      /* reader: where that frame starts (for a hold) */
    uint64_t published;     /* reader: the tail last stored in the header */
    int64_t spin_max_ns;    /* longest spin before sleeping (0: never spin) */
    int64_t spin_ns;        /* current adaptive spin budget */
    int32_t peer_pid;       /* the other end's pid, 0 while unknown */
    int32_t role;           /* 1 writer, 2 reader */
    uint64_t spins, sleeps; /* statistics: waits satisfied by spinning / by sleeping */
    int32_t busy;           /* calls in progress on this handle (any thread) */
    int32_t closed;         /* set by fipc_shm_close: calls return -EBADF */
} fipc_shm;

int fipc_shm_writer_init(fipc_shm *h, char *base, uint64_t map_size, int32_t pid,
                         uint64_t max_message, double spin);
/* Attach a reader: checks the header against map_size; FIPC_SHM_NOTREADY while the writer
 * is still writing it, FIPC_CORRUPT when it cannot be a channel, -EPIPE once closed. */
int fipc_shm_reader_init(fipc_shm *h, char *base, uint64_t map_size, int32_t pid,
                         uint64_t max_message, double spin);
/* Send one message; *progress holds the bytes of it already streamed (0 on the first call,
 * the value left by an interrupted call to resume it). 0, -ETIMEDOUT, -EPIPE, -EINTR. */
int64_t fipc_shm_send(fipc_shm *h, const char *buf, uint64_t len, double timeout,
                      uint64_t *progress);
/* Send count messages stored back to back in buf with their lengths in lens; *sent says
 * how many went (all of them when it returns 0). */
int64_t fipc_shm_send_many(fipc_shm *h, const char *buf, const uint64_t *lens, uint64_t count,
                           double timeout, uint64_t *sent);
/* Receive the next message. dest NULL: a message stored whole is returned in place (*ptr into
 * the ring, valid until the next call); a streamed one returns FIPC_SHM_NEED. dest given: the
 * message is copied there (FIPC_SHM_NEED if cap is too small; it stays queued). Returns the
 * length, FIPC_EOF, FIPC_CORRUPT, -ETIMEDOUT, -EINTR. */
int64_t fipc_shm_recv(fipc_shm *h, char *dest, uint64_t cap, double timeout, char **ptr);
/* Up to max messages copied into dest (cap bytes), lengths into lens; fmt gets a Python
 * struct format ("64s8s...") of them, NUL-terminated, fmt_cap bytes at most. Waits up to
 * timeout for the first message only. Returns the count, or an error as fipc_shm_recv. */
int64_t fipc_shm_recv_many(fipc_shm *h, char *dest, uint64_t cap, uint64_t *lens, uint64_t max,
                           char *fmt, uint64_t fmt_cap, double timeout);
/* Release every frame read so far (up to hold) and publish it to the writer. */
int fipc_shm_release(fipc_shm *h);
/* Mark this end closed in the header and wake the peer, and any call of ours blocked in
 * another thread (it returns -EBADF). Returns how many calls are still in progress: the
 * mapping must not be unmapped before fipc_shm_busy() says 0. */
int fipc_shm_close(fipc_shm *h);
int fipc_shm_busy(fipc_shm *h);
/* 1 if the process is gone (or a zombie), 0 if it runs. */
int fipc_shm_pid_dead(int32_t pid);

/* ---- server.c: the epoll event loop ---- */
typedef struct fipc_srv fipc_srv;   /* opaque: one event loop (epoll + connections) */
enum {
    FIPC_SRV_RAW = 0,           /* framing: bytes as they arrive */
    FIPC_SRV_LENGTH = 1,        /* framing: 4-byte big-endian length, then the payload */
    FIPC_EV_CONNECT = 1,        /* kinds of control events */
    FIPC_EV_CLOSE = 3,
    FIPC_EV_FIELDS = 5,         /* int64 per control event: kind, fd, id, offset, length */
    FIPC_MSG_FIELDS = 3         /* int64 per message: fd, offset, length */
};
/* What one loop turn found. Control events before the messages (closes decided before the
 * turn, connects), the messages, then control events after them (closes found while
 * reading). A CONNECT's payload is the peer's sockaddr; a CLOSE's offset field is the errno
 * that ended the connection (0: closed cleanly). Valid until the next poll. */
typedef struct fipc_srv_batch {
    const int64_t *pre;
    size_t npre;
    const int64_t *msg;
    size_t nmsg;
    const int64_t *post;
    size_t npost;
    const char *data;
    size_t data_len;
} fipc_srv_batch;
/* A loop; NULL with errno set on failure. high_water: unsent bytes past which a
 * connection stops being read until its output drains. wake_r / wake_w: a non-blocking
 * pipe, owned by the caller, that wakes the loop when written (stop(), Python's signal
 * wake-up fd); it must outlive the loop. */
fipc_srv *fipc_srv_new(int framing, uint32_t max_message_size, size_t high_water, int wake_r,
                       int wake_w);
void fipc_srv_free(fipc_srv *s);
/* Watch a listening socket (non-blocking; owned by the caller, who closes it after
 * fipc_srv_free). */
int fipc_srv_listen(fipc_srv *s, int fd);
/* One loop turn: queue the n sends given (connection keys, lengths, and their payloads
 * end to end in `data`), flush every queued output, close finished connections, wait up
 * to `timeout` seconds, accept and read once each ready connection. Returns the number of
 * events and messages in *b, or -errno (-EINTR: a signal came before any event). A key is
 * a connection's id << 32 | its fd; sends to connections that are gone are dropped (their
 * CLOSE event tells). -EINVAL if the lengths add up to more than data_len. */
int fipc_srv_poll(fipc_srv *s, double timeout, const uint64_t *keys, const uint64_t *lens,
                  size_t n, const char *data, size_t data_len, fipc_srv_batch *b);
/* Queue sends as poll does, and write them out now. */
int fipc_srv_sendv(fipc_srv *s, const uint64_t *keys, const uint64_t *lens, size_t n,
                   const char *data, size_t data_len);
/* One send on a connection: written at once when nothing is queued and no batch is being
 * dispatched, queued otherwise. One frame with length framing. -EPIPE if it is gone. */
int fipc_srv_send(fipc_srv *s, uint64_t key, const char *buf, size_t len);
/* Close a connection after its queued output; its CLOSE event comes with the next poll. */
int fipc_srv_close(fipc_srv *s, uint64_t key);
/* Write out everything queued that the kernel takes now. */
int fipc_srv_flush(fipc_srv *s);
/* Unsent bytes queued on a connection, or -EPIPE. */
int64_t fipc_srv_pending(fipc_srv *s, uint64_t key);
int fipc_srv_count(fipc_srv *s);
/* A blocking client's send: all of buf (framed: as one frame) from byte `offset` of what
 * is to be written, MSG_NOSIGNAL; progress in *written (resume after EINTR). */
int64_t fipc_sock_send(int fd, const char *buf, size_t len, int framed, size_t offset,
                       double timeout, size_t *written);

/* CDEF END */

/* ---- internal helpers shared by the C files (common.c); not visible to Python ---- */
int64_t fipc_now_ns(void);
/* absolute CLOCK_MONOTONIC deadline in ns for a timeout in seconds; -1 means never */
int64_t fipc_deadline(double timeout);
/* remaining time until deadline as a timespec; returns NULL for "forever" */
struct timespec *fipc_remaining(int64_t deadline, struct timespec *ts);
/* wait until fd is ready for events or the deadline passes: 0, -ETIMEDOUT or -errno */
int fipc_wait_fd(int fd, short events, int64_t deadline);
/* advise transparent huge pages for a large buffer about to be filled (a hint only) */
void fipc_hint_hugepages(void *p, size_t n);

#endif
