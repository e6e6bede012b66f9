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

int fipc_pipe_init(fipc_pipe *p, int fd, int flags, int guard)
{
    memset(p, 0, sizeof *p);
    p->fd = fd;
    p->flags = flags;
    p->guard = guard;
    p->pid = (int32_t)getpid();
    p->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->wake < 0) {
        int err = errno;
        p->fd = p->wake = -1;
        return -err;
    }
    if (flags & FIPC_PIPE_READ) {
        p->data = malloc(RBUF_BASE);
        if (!p->data) {
            close(p->wake);
            p->fd = p->wake = -1;
            return -ENOMEM;
        }
        p->cap = RBUF_BASE;
    }
    return 0;
}

void fipc_pipe_fini(fipc_pipe *p)
{
    if (p->fd >= 0)
        close(p->fd);
    if (p->wake >= 0)
        close(p->wake);
    p->fd = p->wake = -1;
    free(p->data);
    p->data = NULL;
    p->cap = p->start = p->end = p->next = 0;
}

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

int fipc_pipe_wake(fipc_pipe *p)
{
    atomic_store(&p->woken, 1);
    if (p->wake < 0)
        return 0;
    if (p->pid != (int32_t)getpid()) {
        int rc = renew_wake(p);
        if (rc < 0)
            return rc;
    }
    uint64_t one = 1;
    /* EAGAIN only once the counter is near 2^64: it is readable then anyway */
    return write(p->wake, &one, sizeof one) < 0 && errno != EAGAIN ? -errno : 0;
}

/* Wait until the fd is ready for `events`, the deadline passes (-ETIMEDOUT) or the object is
 * woken (-ECANCELED); -EINTR goes back to Python, as does a slice slept without either
 * in the main thread (FIPC_SLEPT_A_SLICE). POLLERR/POLLHUP count as ready: the next read or write says what
 * happened. */
static int wait_ready(fipc_pipe *p, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd f[2] = {{.fd = p->fd, .events = events},
                              {.fd = p->wake, .events = POLLIN}};
        int64_t slice_end = fipc_now_ns() + FIPC_SLICE_NS;
        int sliced = deadline < 0 || deadline > slice_end;
        struct timespec ts;
        int rc = ppoll(f, 2, fipc_remaining(sliced ? slice_end : deadline, &ts), NULL);
        if (rc < 0)
            return -errno;
        if (f[1].revents) {
            if (atomic_load(&p->woken))
                return -ECANCELED;
            rc = renew_wake(p); /* a forked copy's wake-up: take an eventfd of our own */
            if (rc < 0)
                return rc;
            continue;
        }
        if (rc == 0 && !sliced)
            return -ETIMEDOUT;
        if (rc == 0) {
            if (fipc_runs_signal_handlers())
                return FIPC_SLEPT_A_SLICE;
            continue;
        }
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

/* Whether this kernel knows RWF_NOSIGNAL (Linux 6.18): a pipe write that says so fails
 * with EPIPE and raises no SIGPIPE, for the cost of the write alone. Learnt at the first
 * write; without it, every pipe write is guarded (sigpipe_guard). */
static _Atomic int nosignal_missing;

/* Write iov[0..cnt) (cnt <= 2) completely, skipping the first `offset` bytes: the one
 * write loop of common.c, asked never to wait itself (timeout 0), so that every wait here
 * also watches the wake-up eventfd. */
static int64_t write_iov(fipc_pipe *p, struct iovec *iov, int cnt, size_t offset,
                         double timeout)
{
    struct iovec orig[2];
    memcpy(orig, iov, (size_t)cnt * sizeof *iov);
    int how = (p->flags & FIPC_PIPE_SOCK) ? FIPC_WRITE_SOCK
              : atomic_load_explicit(&nosignal_missing, memory_order_relaxed)
                  ? FIPC_WRITE_PLAIN
                  : FIPC_WRITE_NOSIGNAL;
    int64_t deadline = FIPC_DEADLINE_UNSET, rc = 0;
    sigpipe_guard g;
    guard_enter(&g, how == FIPC_WRITE_PLAIN ? p->guard : FIPC_GUARD_NONE);
    p->written = offset;
    if (p->wait_mode == FIPC_WAIT_FIRST && timeout != 0) /* it was full a moment ago */
        rc = wait_ready(p, POLLOUT, fipc_deadline_lazy(&deadline, timeout));
    p->wait_mode = FIPC_WAIT_NOW;
    while (rc == 0) {
        rc = fipc_write_all(p->fd, iov, cnt, offset, 0.0, how, &p->written);
        if (rc == -EOPNOTSUPP && how == FIPC_WRITE_NOSIGNAL) {
            /* an older kernel (nothing was written): guard this write and every later one */
            atomic_store_explicit(&nosignal_missing, 1, memory_order_relaxed);
            how = FIPC_WRITE_PLAIN;
            guard_enter(&g, p->guard);
            rc = 0;
        }
        else if (rc != -ETIMEDOUT || timeout == 0)
            break;
        else
            rc = wait_ready(p, POLLOUT, fipc_deadline_lazy(&deadline, timeout));
        offset = p->written;
        memcpy(iov, orig, (size_t)cnt * sizeof *iov); /* fipc_write_all moved them on */
    }
    guard_leave(&g, rc == -EPIPE);
    p->torn = rc < 0 && p->written > 0;
    return rc;
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
    if (len > UINT32_MAX) {
        p->written = offset; /* nothing of it went */
        p->torn = offset > 0;
        return -EMSGSIZE;
    }
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

size_t fipc_pipe_frames_size(const struct iovec *msgs, size_t count)
{
    size_t total = 0;
    for (size_t i = 0; i < count; i++) {
        size_t n = msgs[i].iov_len;
        if (n > UINT32_MAX || n + FIPC_FRAME_HEADER > SIZE_MAX - total)
            return 0;
        total += FIPC_FRAME_HEADER + n;
    }
    return total;
}

void fipc_pipe_frames(char *out, const struct iovec *msgs, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        size_t n = msgs[i].iov_len;
        fipc_frame_put((unsigned char *)out, (uint32_t)n);
        if (n)
            memcpy(out + FIPC_FRAME_HEADER, msgs[i].iov_base, n);
        out += FIPC_FRAME_HEADER + n;
    }
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
    int mode = p->wait_mode;
    p->wait_mode = FIPC_WAIT_NOW;
    if (mode == FIPC_WAIT_FIRST && timeout != 0) {
        int rc = wait_ready(p, POLLIN, fipc_deadline_lazy(deadline, timeout));
        if (rc < 0)
            return rc;
    }
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

int64_t fipc_pipe_recv(fipc_pipe *p, uint32_t max_size, double timeout, char **msg)
{
    if (!p->data)
        return -EBADF;
    int64_t deadline = FIPC_DEADLINE_UNSET;
    p->next = p->start;
    for (;;) {
        if (p->large) {
            *msg = NULL;
            return FIPC_NEED;
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
                p->next = p->start;
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
        p->next = p->start;
        if (n == 0)
            return FIPC_EOF; /* a frame cut short by the writer's end is dropped */
        if (n < 0)
            return n;
    }
}

int64_t fipc_pipe_next(fipc_pipe *p, uint32_t max_size, char **msg)
{
    size_t at = p->next;
    if (p->large || !p->data || p->end - at < FIPC_FRAME_HEADER)
        return -1;
    uint32_t n = fipc_frame_get((unsigned char *)p->data + at);
    size_t frame = FIPC_FRAME_HEADER + (size_t)n;
    if (n > max_size || p->end - at < frame)
        return -1;
    *msg = p->data + at + FIPC_FRAME_HEADER;
    p->next = at + frame;
    return n;
}

int64_t fipc_pipe_recv_into(fipc_pipe *p, char *out, size_t n, double timeout)
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
    p->next = p->start;
    while (p->got < n) {
        ssize_t r = read_wait(p, out + p->got, n - p->got, timeout, &deadline);
        if (r == 0)
            return FIPC_EOF;
        if (r < 0)
            return r;
        p->got += (size_t)r;
    }
    return (int64_t)n; /* the caller calls fipc_pipe_took_large once it holds the message */
}

int64_t fipc_pipe_read(fipc_pipe *p, size_t n, double timeout, char **data)
{
    if (!p->data)
        return -EBADF;
    int64_t deadline = FIPC_DEADLINE_UNSET;
    p->next = p->start;
    if (p->start == p->end) {
        ssize_t got = rbuf_fill(p, timeout, &deadline);
        p->next = p->start;
        if (got <= 0)
            return got;
    }
    size_t avail = p->end - p->start;
    size_t take = avail < n ? avail : n;
    *data = p->data + p->start;
    p->next = p->start + take;
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
