/* Byte streams over one fd (pipe ends, FIFO ends, connected sockets): whole writes with
 * timeouts, SIGPIPE turned into EPIPE, and a reader that reads ahead in large chunks and
 * splits length-prefixed frames here in C. Every wait also watches the object's eventfd, so
 * that fipc_pipe_wake() (a close from another thread) ends it at once. */
#include "pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SMALL_FRAME 4096 /* PIPE_BUF: frames up to this size are written atomically */
#define RBUF_BASE (64 * 1024)      /* read-ahead buffer */
#define RBUF_MAX (4 * 1024 * 1024) /* it grows up to this for one frame; larger frames are
                                      received straight into the message (p->large) */

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

fipc_pipe *fipc_pipe_new(int fd, int flags, int guard)
{
    fipc_pipe *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->fd = fd;
    p->flags = flags;
    p->guard = guard;
    p->fds_open = 1;
    p->pid = (int32_t)getpid();
    p->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake < 0) {
        free(p);
        return NULL;
    }
    if (flags & FIPC_PIPE_READ) {
        p->data = malloc(RBUF_BASE);
        if (!p->data) {
            close(p->wake);
            free(p);
            errno = ENOMEM;
            return NULL;
        }
        p->cap = RBUF_BASE;
    }
    return p;
}

/* ---- the life cycle: calls counted in C, fds closed by whoever is last ---- */

static void close_fds(fipc_pipe *p)
{
    if (__atomic_exchange_n(&p->fds_open, 0, __ATOMIC_SEQ_CST)) {
        close(p->fd);
        close(p->wake);
    }
}

/* Enter a call: 0 if the object is closed (the call must not touch the fds). A closer sets
 * `closed` before it reads `busy`, a caller counts itself in `busy` before it reads `closed`:
 * one of the two sees the other (sequentially consistent). */
static int enter(fipc_pipe *p)
{
    __atomic_add_fetch(&p->busy, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_load_n(&p->closed, __ATOMIC_SEQ_CST))
        return 1;
    if (__atomic_sub_fetch(&p->busy, 1, __ATOMIC_SEQ_CST) == 0)
        close_fds(p);
    return 0;
}

static int64_t leave(fipc_pipe *p, int64_t rc)
{
    if (__atomic_sub_fetch(&p->busy, 1, __ATOMIC_SEQ_CST) == 0 &&
        __atomic_load_n(&p->closed, __ATOMIC_SEQ_CST))
        close_fds(p);
    return rc;
}

/* The body of every public read or write: counted, -ECANCELED on a closed object, and
 * -EBUSY if another thread is reading (writing) on the object already: an end is used by
 * one thread at a time, and a second one is refused rather than let interleave its frames
 * or move the read-ahead buffer under the first. */
static int claim(int32_t *side)
{
    return !__atomic_exchange_n(side, 1, __ATOMIC_ACQUIRE);
}

static int64_t release(int32_t *side, int64_t rc)
{
    __atomic_store_n(side, 0, __ATOMIC_RELEASE);
    return rc;
}

#define EXCLUSIVE(p, side, call)                                                        \
    (enter(p) ? leave(p, claim(&(p)->side) ? release(&(p)->side, (call)) : -EBUSY)      \
              : -ECANCELED)

/* After fork() both processes hold the same eventfd: a wake-up written by one would end the
 * other's waits. So a process writes to `wake` only once it has an eventfd of its own there
 * (a fresh one put in place of the inherited number), and a wait ignores a wake-up that this
 * process did not ask for (see wait_ready). */
static int renew_wake(fipc_pipe *p)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return -errno;
    int rc = dup3(fd, p->wake, O_CLOEXEC) < 0 ? -errno : 0;
    close(fd);
    if (rc == 0)
        p->pid = (int32_t)getpid();
    return rc;
}

static int write_wake(fipc_pipe *p)
{
    __atomic_store_n(&p->woken, 1, __ATOMIC_SEQ_CST);
    if (p->pid != (int32_t)getpid()) {
        int rc = renew_wake(p);
        if (rc < 0)
            return rc;
    }
    uint64_t one = 1;
    /* EAGAIN only once the counter is near 2^64: it is readable then anyway */
    return write(p->wake, &one, sizeof one) < 0 && errno != EAGAIN ? -errno : 0;
}

int fipc_pipe_wake(fipc_pipe *p)
{
    if (!enter(p))
        return 0; /* closed: every call returns at once anyway */
    return (int)leave(p, write_wake(p));
}

void fipc_pipe_close(fipc_pipe *p)
{
    /* counted like a call, so that no call leaving meanwhile closes the eventfd (and lets
     * its number be reused) before the wake-up is written to it */
    __atomic_add_fetch(&p->busy, 1, __ATOMIC_SEQ_CST);
    if (!__atomic_exchange_n(&p->closed, 1, __ATOMIC_SEQ_CST))
        (void)write_wake(p); /* a failure costs a blocked call its wake-up, not the close */
    leave(p, 0); /* the last to leave closes the fds: this call if none runs */
}

void fipc_pipe_free(fipc_pipe *p)
{
    if (p) {
        fipc_pipe_close(p);
        free(p->data);
        free(p);
    }
}

/* Wait until the fd is ready for `events`, the deadline passes (-ETIMEDOUT) or the object is
 * woken (-ECANCELED); -EINTR goes back to Python. POLLERR/POLLHUP count as ready: the next
 * read or write says what happened. */
static int wait_ready(fipc_pipe *p, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd f[2] = {{.fd = p->fd, .events = events},
                              {.fd = p->wake, .events = POLLIN}};
        struct timespec ts;
        int rc = ppoll(f, 2, fipc_remaining(deadline, &ts), NULL);
        if (rc < 0)
            return -errno;
        if (f[1].revents) {
            if (__atomic_load_n(&p->woken, __ATOMIC_SEQ_CST))
                return -ECANCELED;
            rc = renew_wake(p); /* a forked copy's wake-up: take an eventfd of our own */
            if (rc < 0)
                return rc;
            continue;
        }
        if (rc == 0)
            return -ETIMEDOUT;
        if (f[0].revents & POLLNVAL)
            return -EBADF;
        return 0;
    }
}

/* ---- SIGPIPE: a write to a pipe without readers must fail with EPIPE, never kill us.
 * SIGPIPE raised by write() is directed at the writing thread, so blocking it in this
 * thread for the duration of the write and consuming the pending instance afterwards
 * keeps the process alive whatever its disposition. (Sockets use MSG_NOSIGNAL.) */

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

/* Write iov[0..cnt) (cnt <= 2) completely, skipping the first `offset` bytes: the one
 * write loop of common.c, asked never to wait itself (timeout 0), so that every wait here
 * also watches the wake-up eventfd. */
static int64_t write_iov_counted(fipc_pipe *p, struct iovec *iov, int cnt, size_t offset,
                                 double timeout)
{
    struct iovec orig[2];
    memcpy(orig, iov, (size_t)cnt * sizeof *iov);
    int sock = (p->flags & FIPC_PIPE_SOCK) != 0;
    int64_t deadline = FIPC_DEADLINE_UNSET, rc;
    sigpipe_guard g;
    guard_enter(&g, sock ? 0 : p->guard);
    for (;;) {
        rc = fipc_write_all(p->fd, iov, cnt, offset, 0.0, sock, &p->written);
        if (rc != -ETIMEDOUT || timeout == 0)
            break;
        rc = wait_ready(p, POLLOUT, fipc_deadline_lazy(&deadline, timeout));
        if (rc < 0)
            break;
        offset = p->written;
        memcpy(iov, orig, (size_t)cnt * sizeof *iov); /* fipc_write_all moved them on */
    }
    guard_leave(&g, rc == -EPIPE);
    p->torn = rc < 0 && p->written > 0;
    return rc;
}

static int64_t write_iov(fipc_pipe *p, struct iovec *iov, int cnt, size_t offset,
                         double timeout)
{
    return EXCLUSIVE(p, writing, write_iov_counted(p, iov, cnt, offset, timeout));
}

int64_t fipc_pipe_write(fipc_pipe *p, const char *buf, size_t len, size_t offset,
                        double timeout)
{
    struct iovec iov[1] = {{(void *)buf, len}};
    return write_iov(p, iov, 1, offset, timeout);
}

int64_t fipc_pipe_send(fipc_pipe *p, const char *buf, size_t len, size_t offset,
                       double timeout)
{
    if (len > UINT32_MAX)
        return -EMSGSIZE;
    if (len <= SMALL_FRAME - FIPC_FRAME_HEADER) {
        /* one contiguous write: cheaper than writev, and atomic (<= PIPE_BUF) */
        char frame[SMALL_FRAME];
        fipc_frame_put((unsigned char *)frame, (uint32_t)len);
        if (len)
            memcpy(frame + FIPC_FRAME_HEADER, buf, len);
        struct iovec iov[1] = {{frame, FIPC_FRAME_HEADER + len}};
        return write_iov(p, iov, 1, offset, timeout);
    }
    unsigned char header[FIPC_FRAME_HEADER];
    fipc_frame_put(header, (uint32_t)len);
    struct iovec iov[2] = {{header, FIPC_FRAME_HEADER}, {(void *)buf, len}};
    return write_iov(p, iov, 2, offset, timeout);
}

int64_t fipc_pipe_send_many(fipc_pipe *p, const char *payload, size_t payload_len,
                            const uint32_t *lens, size_t count, size_t offset, double timeout)
{
    size_t body = 0;
    for (size_t i = 0; i < count; i++)
        body += lens[i];
    if (body != payload_len || count > (SIZE_MAX - body) / FIPC_FRAME_HEADER)
        return -EINVAL;
    size_t total = body + FIPC_FRAME_HEADER * count;
    char small[SMALL_FRAME];
    char *frames = total <= sizeof small ? small : malloc(total);
    if (!frames)
        return -ENOMEM;
    char *f = frames;
    for (size_t i = 0; i < count; i++) {
        uint32_t n = lens[i];
        fipc_frame_put((unsigned char *)f, n);
        if (n)
            memcpy(f + FIPC_FRAME_HEADER, payload, n);
        f += FIPC_FRAME_HEADER + n;
        payload += n;
    }
    struct iovec iov[1] = {{frames, total}};
    int64_t rc = write_iov(p, iov, 1, offset, timeout);
    if (frames != small)
        free(frames);
    return rc;
}

/* ---- the reading side: a fixed read-ahead buffer; frames that do not fit in it are
 * received straight into the message Python allocated (no growth, no second copy) ---- */

/* Move the unread bytes to the front of the buffer. */
static void rbuf_compact(fipc_pipe *p)
{
    size_t avail = p->end - p->start;
    if (p->start > 0) {
        memmove(p->data, p->data + p->start, avail);
        p->start = 0;
        p->end = avail;
    }
}

/* Grow the buffer to hold one frame of `need` bytes (need <= RBUF_MAX). */
static int rbuf_grow(fipc_pipe *p, size_t need)
{
    rbuf_compact(p);
    size_t cap = p->cap;
    while (cap < need)
        cap *= 2;
    char *data = realloc(p->data, cap);
    if (!data)
        return -ENOMEM;
    p->data = data;
    p->cap = cap;
    return 0;
}

/* One read() into [buf, buf + n): first without waiting (one system call when data is
 * there), then waiting for POLLIN as `timeout` says (0: never). Returns > 0, 0 at end of
 * stream, or -errno / -ETIMEDOUT / -ECANCELED. */
static ssize_t read_wait(fipc_pipe *p, char *buf, size_t n, double timeout, int64_t *deadline)
{
    for (;;) {
        ssize_t r = read(p->fd, buf, n);
        if (r >= 0)
            return r;
        if (errno != EAGAIN)
            return -errno;
        if (timeout == 0)
            return -ETIMEDOUT;
        int rc = wait_ready(p, POLLIN, fipc_deadline_lazy(deadline, timeout));
        if (rc < 0)
            return rc;
    }
}

/* One read_wait() into the free space of the buffer. An empty buffer that grew for one
 * frame goes back to its normal size first. */
static ssize_t rbuf_fill(fipc_pipe *p, double timeout, int64_t *deadline)
{
    if (p->start == p->end) {
        p->start = p->end = 0;
        if (p->cap > RBUF_BASE) {
            char *data = realloc(p->data, RBUF_BASE);
            if (data) {
                p->data = data;
                p->cap = RBUF_BASE;
            }
        }
    } else if (p->end == p->cap) {
        rbuf_compact(p);
    }
    ssize_t n = read_wait(p, p->data + p->end, p->cap - p->end, timeout, deadline);
    if (n > 0)
        p->end += (size_t)n;
    return n;
}

static int64_t recv_frame(fipc_pipe *p, uint32_t max_size, double timeout, char **msg)
{
    if (!p->data)
        return -EBADF;
    int64_t deadline = FIPC_DEADLINE_UNSET;
    for (;;) {
        if (p->large) {
            *msg = NULL;
            return p->large;
        }
        size_t avail = p->end - p->start;
        if (avail >= FIPC_FRAME_HEADER) {
            uint32_t len = fipc_frame_get((unsigned char *)p->data + p->start);
            if (len > max_size)
                return FIPC_TOOBIG;
            size_t frame = FIPC_FRAME_HEADER + (size_t)len;
            if (avail >= frame) {
                *msg = p->data + p->start + FIPC_FRAME_HEADER;
                p->next = p->start + frame;
                return len;
            }
            if (frame > RBUF_MAX) {
                p->start += FIPC_FRAME_HEADER;
                p->large = len;
                p->got = 0;
                continue;
            }
            if (frame > p->cap) {
                if (rbuf_grow(p, frame) < 0)
                    return -ENOMEM;
            } else if (p->cap - p->start < frame) {
                rbuf_compact(p);
            }
        }
        ssize_t n = rbuf_fill(p, timeout, &deadline);
        if (n == 0)
            return FIPC_EOF; /* a frame cut short by the writer's end is dropped */
        if (n < 0)
            return n;
    }
}

/* What the previous recv, recv_many or read returned, once the caller says it took it. */
static fipc_pipe *taken(fipc_pipe *p, int took)
{
    if (took)
        p->start = p->next;
    return p;
}

int64_t fipc_pipe_recv(fipc_pipe *p, uint32_t max_size, double timeout, char **msg, int took)
{
    return EXCLUSIVE(p, reading, recv_frame(taken(p, took), max_size, timeout, msg));
}

static int64_t recv_frames(fipc_pipe *p, uint32_t max_size, double timeout, uint32_t *spans,
                           size_t max_count)
{
    char *msg;
    int64_t len = recv_frame(p, max_size, timeout, &msg);
    if (len < 0 || max_count == 0 || msg == NULL)
        return len < 0 ? len : 0;
    spans[0] = (uint32_t)(msg - p->data);
    spans[1] = spans[0] + (uint32_t)len;
    size_t count = 1, at = p->next;
    /* then every whole frame already buffered; the buffer does not move meanwhile */
    while (count < max_count && p->end - at >= FIPC_FRAME_HEADER) {
        uint32_t n = fipc_frame_get((unsigned char *)p->data + at);
        size_t frame = FIPC_FRAME_HEADER + (size_t)n;
        if (n > max_size || p->end - at < frame)
            break; /* an oversized frame is reported by the next call */
        spans[2 * count] = (uint32_t)(at + FIPC_FRAME_HEADER);
        spans[2 * count + 1] = (uint32_t)(at + frame);
        at += frame;
        count++;
    }
    p->next = at;
    return (int64_t)count;
}

int64_t fipc_pipe_recv_many(fipc_pipe *p, uint32_t max_size, double timeout, uint32_t *spans,
                            size_t max_count, int took)
{
    return EXCLUSIVE(p, reading, recv_frames(taken(p, took), max_size, timeout, spans, max_count));
}

static int64_t recv_large(fipc_pipe *p, char *out, size_t n, double timeout)
{
    if (!p->data || p->large == 0 || n != p->large || p->got > n)
        return -EINVAL;
    int64_t deadline = FIPC_DEADLINE_UNSET;
    if (p->got == 0)
        fipc_hint_hugepages(out, n); /* fewer page faults on the fresh message */
    size_t avail = p->end - p->start;
    if (avail > 0 && p->got < n) {
        size_t take = avail < n - p->got ? avail : n - p->got;
        memcpy(out + p->got, p->data + p->start, take);
        p->start += take;
        p->got += take;
    }
    while (p->got < n) {
        ssize_t r = read_wait(p, out + p->got, n - p->got, timeout, &deadline);
        if (r == 0)
            return FIPC_EOF;
        if (r < 0)
            return r;
        p->got += (size_t)r;
    }
    return (int64_t)n; /* the caller sets p->large = 0 once it holds the message */
}

int64_t fipc_pipe_recv_into(fipc_pipe *p, char *out, size_t n, double timeout)
{
    return EXCLUSIVE(p, reading, recv_large(p, out, n, timeout));
}

static int64_t read_some(fipc_pipe *p, size_t n, double timeout, char **data)
{
    if (!p->data)
        return -EBADF;
    int64_t deadline = FIPC_DEADLINE_UNSET;
    if (p->start == p->end) {
        ssize_t got = rbuf_fill(p, timeout, &deadline);
        if (got <= 0)
            return got;
    }
    size_t avail = p->end - p->start;
    size_t take = avail < n ? avail : n;
    *data = p->data + p->start;
    p->next = p->start + take;
    return (int64_t)take;
}

int64_t fipc_pipe_read(fipc_pipe *p, size_t n, double timeout, char **data, int took)
{
    return EXCLUSIVE(p, reading, read_some(taken(p, took), n, timeout, data));
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
