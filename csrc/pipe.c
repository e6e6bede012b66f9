/* Anonymous and named pipes: whole writes with timeouts, SIGPIPE turned into EPIPE, and a
 * reader that reads ahead in large chunks and splits length-prefixed frames here in C. */
#include "pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FRAME_HEADER 4
#define SMALL_FRAME 4096 /* PIPE_BUF: frames up to this size are written atomically */
#define RBUF_BASE (64 * 1024)      /* read-ahead buffer */
#define RBUF_MAX (4 * 1024 * 1024) /* it grows up to this for one frame; larger frames are
                                      received straight into the message (FIPC_LARGE) */

int fipc_pipe_open(int fds[2], int size)
{
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    if (size > 0) {
        int rc = fipc_pipe_set_size(fds[1], size);
        if (rc < 0) {
            close(fds[0]);
            close(fds[1]);
            return rc;
        }
    }
    return 0;
}

int fipc_pipe_set_size(int fd, int size)
{
    int rc = fcntl(fd, F_SETPIPE_SZ, size);
    return rc < 0 ? -errno : rc;
}

int fipc_pipe_get_size(int fd)
{
    int rc = fcntl(fd, F_GETPIPE_SZ);
    return rc < 0 ? -errno : rc;
}

/* ---- SIGPIPE: a write to a pipe without readers must fail with EPIPE, never kill us.
 * SIGPIPE raised by write() is directed at the writing thread, so blocking it in this
 * thread for the duration of the write and consuming the pending instance afterwards
 * keeps the process alive whatever its disposition. */

typedef struct {
    sigset_t old;
    int active;
} sigpipe_guard;

static int sigpipe_ignored(void)
{
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) < 0)
        return 0;
    return !(sa.sa_flags & SA_SIGINFO) && sa.sa_handler == SIG_IGN;
}

static void guard_enter(sigpipe_guard *g, int mode)
{
    g->active = 0;
    if (mode == 0 || (mode == 1 && sigpipe_ignored()))
        return;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    if (pthread_sigmask(SIG_BLOCK, &set, &g->old) == 0)
        g->active = 1;
}

static void guard_leave(sigpipe_guard *g, int got_epipe)
{
    if (!g->active)
        return;
    /* If SIGPIPE was already blocked before us, a pending one may be the caller's: leave it. */
    if (got_epipe && !sigismember(&g->old, SIGPIPE)) {
        sigset_t set;
        struct timespec zero = {0, 0};
        sigemptyset(&set);
        sigaddset(&set, SIGPIPE);
        while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
            ;
    }
    pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* Write iov[0..cnt) completely, skipping the first `offset` bytes. */
static int64_t write_iov(int fd, struct iovec *iov, int cnt, size_t offset, double timeout,
                         int guard, size_t *written)
{
    size_t total = 0;
    for (int i = 0; i < cnt; i++)
        total += iov[i].iov_len;
    size_t done = offset;
    /* skip what an earlier, interrupted call already wrote */
    int first = 0;
    size_t skip = offset;
    while (first < cnt && skip >= iov[first].iov_len) {
        skip -= iov[first].iov_len;
        first++;
    }
    if (first < cnt) {
        iov[first].iov_base = (char *)iov[first].iov_base + skip;
        iov[first].iov_len -= skip;
    }

    int64_t deadline = -2; /* computed on the first wait only: the fast path needs no clock */
    int64_t rc = 0;
    sigpipe_guard g;
    guard_enter(&g, guard);
    while (done < total) {
        /* write() is measurably cheaper than writev() for one buffer */
        ssize_t n = cnt - first == 1 ? write(fd, iov[first].iov_base, iov[first].iov_len)
                                     : writev(fd, iov + first, cnt - first);
        if (n > 0) {
            done += (size_t)n;
            size_t adv = (size_t)n;
            while (first < cnt && adv >= iov[first].iov_len) {
                adv -= iov[first].iov_len;
                first++;
            }
            if (first < cnt) {
                iov[first].iov_base = (char *)iov[first].iov_base + adv;
                iov[first].iov_len -= adv;
            }
            continue;
        }
        if (n < 0 && errno == EAGAIN) {
            if (deadline == -2)
                deadline = fipc_deadline(timeout);
            rc = fipc_wait_fd(fd, POLLOUT, deadline);
            if (rc < 0)
                break;
            continue;
        }
        rc = n < 0 ? -errno : -EIO;
        break;
    }
    guard_leave(&g, rc == -EPIPE);
    *written = done;
    return rc < 0 ? rc : (int64_t)done;
}

int64_t fipc_pipe_write(int fd, const char *buf, size_t len, size_t offset, double timeout,
                        int guard, size_t *written)
{
    struct iovec iov[1] = {{(void *)buf, len}};
    return write_iov(fd, iov, 1, offset, timeout, guard, written);
}

int64_t fipc_pipe_send(int fd, const char *buf, size_t len, size_t offset, double timeout,
                       int guard, size_t *written)
{
    if (len > UINT32_MAX)
        return -EMSGSIZE;
    unsigned char header[FRAME_HEADER] = {
        (unsigned char)(len >> 24), (unsigned char)(len >> 16),
        (unsigned char)(len >> 8), (unsigned char)len};
    if (len <= SMALL_FRAME - FRAME_HEADER) {
        /* one contiguous write: cheaper than writev, and atomic (<= PIPE_BUF) */
        char frame[SMALL_FRAME];
        memcpy(frame, header, FRAME_HEADER);
        if (len)
            memcpy(frame + FRAME_HEADER, buf, len);
        struct iovec iov[1] = {{frame, FRAME_HEADER + len}};
        return write_iov(fd, iov, 1, offset, timeout, guard, written);
    }
    struct iovec iov[2] = {{header, FRAME_HEADER}, {(void *)buf, len}};
    return write_iov(fd, iov, 2, offset, timeout, guard, written);
}

int64_t fipc_pipe_send_many(int fd, const char *payload, size_t payload_len,
                            const uint32_t *lens, size_t count, size_t offset, double timeout,
                            int guard, size_t *written)
{
    size_t body = 0;
    for (size_t i = 0; i < count; i++)
        body += lens[i];
    if (body != payload_len || count > (SIZE_MAX - body) / FRAME_HEADER)
        return -EINVAL;
    size_t total = body + FRAME_HEADER * count;
    char small[SMALL_FRAME];
    char *frames = total <= sizeof small ? small : malloc(total);
    if (!frames)
        return -ENOMEM;
    char *p = frames;
    for (size_t i = 0; i < count; i++) {
        uint32_t n = lens[i];
        unsigned char header[FRAME_HEADER] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                                              (unsigned char)(n >> 8), (unsigned char)n};
        memcpy(p, header, FRAME_HEADER);
        if (n)
            memcpy(p + FRAME_HEADER, payload, n);
        p += FRAME_HEADER + n;
        payload += n;
    }
    struct iovec iov[1] = {{frames, total}};
    int64_t rc = write_iov(fd, iov, 1, offset, timeout, guard, written);
    if (frames != small)
        free(frames);
    return rc;
}

/* ---- the reading side: a fixed read-ahead buffer; frames that do not fit in it are
 * received straight into the message Python allocated (no growth, no second copy) ---- */

fipc_rbuf *fipc_rbuf_new(void)
{
    size_t cap = RBUF_BASE;
    fipc_rbuf *rb = calloc(1, sizeof *rb);
    if (!rb)
        return NULL;
    rb->data = malloc(cap);
    if (!rb->data) {
        free(rb);
        return NULL;
    }
    rb->cap = cap;
    return rb;
}

void fipc_rbuf_free(fipc_rbuf *rb)
{
    if (rb) {
        free(rb->data);
        free(rb);
    }
}

/* Move the unread bytes to the front of the buffer. */
static void rbuf_compact(fipc_rbuf *rb)
{
    size_t avail = rb->end - rb->start;
    if (rb->start > 0) {
        memmove(rb->data, rb->data + rb->start, avail);
        rb->start = 0;
        rb->end = avail;
    }
}

/* Grow the buffer to hold one frame of `need` bytes (need <= RBUF_MAX). */
static int rbuf_grow(fipc_rbuf *rb, size_t need)
{
    rbuf_compact(rb);
    size_t cap = rb->cap;
    while (cap < need)
        cap *= 2;
    char *data = realloc(rb->data, cap);
    if (!data)
        return -ENOMEM;
    rb->data = data;
    rb->cap = cap;
    return 0;
}

/* One read() into [p, p + n), waiting as `timeout` says. The read end is a blocking fd:
 * with no timeout, the kernel's own sleep inside read() is the cheapest wait (one system
 * call per wake-up, as a plain C reader has); with a timeout, ppoll first so that read()
 * never blocks past the deadline. An fd someone made non-blocking works too.
 * Returns > 0, 0 at end of stream, or -errno / -ETIMEDOUT. */
static ssize_t read_wait(int fd, char *p, size_t n, double timeout, int64_t *deadline)
{
    for (;;) {
        if (timeout >= 0) {
            if (*deadline == -2)
                *deadline = fipc_deadline(timeout);
            int rc = fipc_wait_fd(fd, POLLIN, *deadline);
            if (rc < 0)
                return rc;
        }
        ssize_t r = read(fd, p, n);
        if (r >= 0)
            return r;
        if (errno != EAGAIN)
            return -errno;
        if (timeout < 0) {
            int rc = fipc_wait_fd(fd, POLLIN, -1);
            if (rc < 0)
                return rc;
        }
    }
}

/* One read_wait() into the free space of the buffer. An empty buffer that grew for one
 * frame goes back to its normal size first. */
static ssize_t rbuf_fill(int fd, fipc_rbuf *rb, double timeout, int64_t *deadline)
{
    if (rb->start == rb->end) {
        rb->start = rb->end = 0;
        if (rb->cap > RBUF_BASE) {
            char *data = realloc(rb->data, RBUF_BASE);
            if (data) {
                rb->data = data;
                rb->cap = RBUF_BASE;
            }
        }
    } else if (rb->end == rb->cap) {
        rbuf_compact(rb);
    }
    ssize_t n = read_wait(fd, rb->data + rb->end, rb->cap - rb->end, timeout, deadline);
    if (n > 0)
        rb->end += (size_t)n;
    return n;
}

static uint32_t frame_len(const char *p)
{
    const unsigned char *h = (const unsigned char *)p;
    return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

int64_t fipc_pipe_recv(int fd, fipc_rbuf *rb, uint32_t max_size, double timeout, char **msg)
{
    int64_t deadline = -2;
    for (;;) {
        size_t avail = rb->end - rb->start;
        if (avail >= FRAME_HEADER) {
            uint32_t len = frame_len(rb->data + rb->start);
            if (len > max_size)
                return FIPC_TOOBIG;
            size_t frame = FRAME_HEADER + (size_t)len;
            if (avail >= frame) {
                *msg = rb->data + rb->start + FRAME_HEADER;
                rb->start += frame;
                return len;
            }
            if (frame > RBUF_MAX) {
                rb->start += FRAME_HEADER;
                rb->large = len;
                return FIPC_LARGE;
            }
            if (frame > rb->cap) {
                if (rbuf_grow(rb, frame) < 0)
                    return -ENOMEM;
            } else if (rb->cap - rb->start < frame) {
                rbuf_compact(rb);
            }
        }
        ssize_t n = rbuf_fill(fd, rb, timeout, &deadline);
        if (n == 0)
            return FIPC_EOF; /* a frame cut short by the writer's end is dropped */
        if (n < 0)
            return n;
    }
}

int64_t fipc_pipe_recv_many(int fd, fipc_rbuf *rb, uint32_t max_size, double timeout,
                            uint32_t *spans, size_t max_count)
{
    char *msg;
    int64_t len = fipc_pipe_recv(fd, rb, max_size, timeout, &msg);
    if (len < 0 || max_count == 0)
        return len < 0 ? len : 0;
    spans[0] = (uint32_t)(msg - rb->data);
    spans[1] = spans[0] + (uint32_t)len;
    size_t count = 1;
    /* then every whole frame already buffered; the buffer does not move meanwhile */
    while (count < max_count && rb->end - rb->start >= FRAME_HEADER) {
        uint32_t n = frame_len(rb->data + rb->start);
        size_t frame = FRAME_HEADER + (size_t)n;
        if (n > max_size || rb->end - rb->start < frame)
            break; /* an oversized frame is reported by the next call */
        spans[2 * count] = (uint32_t)(rb->start + FRAME_HEADER);
        spans[2 * count + 1] = (uint32_t)(rb->start + frame);
        rb->start += frame;
        count++;
    }
    return (int64_t)count;
}

int64_t fipc_pipe_recv_into(int fd, fipc_rbuf *rb, char *out, size_t n, size_t *got,
                            double timeout)
{
    int64_t deadline = -2;
    if (*got == 0)
        fipc_hint_hugepages(out, n); /* fewer page faults on the fresh message */
    size_t avail = rb->end - rb->start;
    if (avail > 0 && *got < n) {
        size_t take = avail < n - *got ? avail : n - *got;
        memcpy(out + *got, rb->data + rb->start, take);
        rb->start += take;
        *got += take;
    }
    while (*got < n) {
        ssize_t r = read_wait(fd, out + *got, n - *got, timeout, &deadline);
        if (r == 0)
            return FIPC_EOF;
        if (r < 0)
            return r;
        *got += (size_t)r;
    }
    return (int64_t)n;
}

int64_t fipc_pipe_read(int fd, fipc_rbuf *rb, size_t n, double timeout, char **data)
{
    int64_t deadline = -2;
    if (rb->start == rb->end) {
        ssize_t got = rbuf_fill(fd, rb, timeout, &deadline);
        if (got <= 0)
            return got;
    }
    size_t avail = rb->end - rb->start;
    size_t take = avail < n ? avail : n;
    *data = rb->data + rb->start;
    rb->start += take;
    return (int64_t)take;
}

/* Does a FIFO opened for reading have a writer? tee() on an empty pipe answers without
 * consuming anything: EAGAIN while a writer holds it open, 0 once none does. */
int fipc_fifo_writer_present(int fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
        return -errno;
    ssize_t n = tee(fd, p[1], 1, SPLICE_F_NONBLOCK);
    int err = errno;
    close(p[0]);
    close(p[1]);
    if (n > 0)
        return 1; /* data is waiting */
    if (n == 0)
        return 0;
    return err == EAGAIN ? 1 : -err;
}
