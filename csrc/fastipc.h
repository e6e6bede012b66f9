/* fastipc: the C API, declared once.
 *
 * Every function is plain C (no Python.h) named fipc_<mechanism>_<verb>. It returns >= 0 on
 * success and -errno on failure, or one of the FIPC_* status codes below, which never collide
 * with an errno. Timeouts are seconds as a double: negative waits forever, 0 tries once.
 * EINTR is returned, never retried here, so that Python can run its signal handlers and retry
 * with the remaining time (PEP 475).
 *
 * Each mechanism declares its own API in csrc/<mechanism>.h, which includes this file. The
 * part between the CDEF markers of every csrc header (this file first) is read by
 * src/fastipc/_build.py as the cffi cdef, so it holds only declarations cffi understands.
 */
#ifndef FASTIPC_H
#define FASTIPC_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CDEF BEGIN */

/* ---- status codes shared by every mechanism ---- */
enum {
    FIPC_EOF = -1000,       /* the peer closed: end of stream */
    FIPC_TOOBIG = -1001,    /* a length read from the peer exceeds the allowed maximum */
    FIPC_CORRUPT = -1002,   /* a header or frame read from shared memory is inconsistent */
    FIPC_NEED = -1003       /* the next message needs a larger buffer than the one given: its
                               length is known (last_len, or the frame header) and, except in
                               fipc_pipe_recv, it stays queued */
};

/* ---- adaptive spin of the futex-based waits (shared-memory rings) ---- */
typedef struct fipc_spin {
    int64_t max_ns;         /* longest spin before sleeping (0: never spin) */
    int64_t ns;             /* current budget: doubled by a spin that succeeds, halved by
                               sleeps that waited long (see fipc_spin_slept) */
} fipc_spin;

/* Add the native handle types (csrc/py/, the per-message path) to fastipc._fastipc: 0, or
 * -1 after printing the error. Called once, by fastipc._core. */
int fipc_py_install(void);

/* CDEF END */

/* ---- internal helpers shared by the C files (common.c); not visible to Python ---- */
#include <stdatomic.h>
struct iovec;

/* One step of a spin-wait: tell the CPU (and a hyper-thread sibling) that we are spinning. */
static inline void fipc_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    atomic_signal_fence(memory_order_seq_cst);
#endif
}

/* What a wait in the process's main thread returns once it has slept a whole slice without
 * what it waits for (the peer still there, the deadline not reached), instead of sleeping
 * again: the caller runs the signal handlers and calls again, as after a signal. A signal
 * caught while the wait was not in a system call (spinning, between two sleeps) interrupts
 * nothing: this bounds how long its handler waits to one slice. Every wait that sleeps in
 * slices (rings, Queue, mq, semaphores, pipes) asks fipc_runs_signal_handlers() first:
 * Python runs signal handlers only in the main thread, so a wait in another thread sleeps
 * on (a thousand idle waiters cost no CPU). */
#define FIPC_SLEPT_A_SLICE (-EINTR)

/* 1 in the thread that runs Python's signal handlers: the process's main thread (its
 * thread id is the process id; after a fork, the forking thread's in the child). */
int fipc_runs_signal_handlers(void);

/* The longest sleep of a wait between two looks (at the peer, at `closed`, for signal
 * handlers): the rings', the Queue's and the pipes' (mq.h and sem.h name their own). */
#define FIPC_SLICE_NS 100000000LL

/* Sleep on a futex word in shared memory while it holds val, at most ns nanoseconds:
 * 0 (woken, changed, or timed out: the caller looks again) or -EINTR / -errno. */
int fipc_futex_wait(_Atomic uint32_t *addr, uint32_t val, int64_t ns);
/* Wake every sleeper on the word. */
void fipc_futex_wake(_Atomic uint32_t *addr);
/* The adaptive spin: set from a spin= argument in seconds (capped at 1 s; <= 0: never);
 * after a spin that caught what it waited for (grow back towards max); after a wait that had
 * to sleep, with the time since the spin began. */
void fipc_spin_set(fipc_spin *s, double seconds);
void fipc_spin_caught(fipc_spin *s);
void fipc_spin_slept(fipc_spin *s, int64_t waited_ns);
int64_t fipc_now_ns(void);
/* absolute CLOCK_MONOTONIC deadline in ns for a timeout in seconds; -1 means never */
int64_t fipc_deadline(double timeout);
/* A deadline computed only when a call first has to wait, so that the fast path reads no
 * clock: start with `int64_t deadline = FIPC_DEADLINE_UNSET;`, then ask
 * fipc_deadline_lazy(&deadline, timeout) before each wait. */
#define FIPC_DEADLINE_UNSET INT64_MIN
static inline int64_t fipc_deadline_lazy(int64_t *deadline, double timeout)
{
    if (*deadline == FIPC_DEADLINE_UNSET)
        *deadline = fipc_deadline(timeout);
    return *deadline;
}

/* The one frame format of pipes and sockets: a 4-byte big-endian length, then the payload. */
#define FIPC_FRAME_HEADER 4
static inline void fipc_frame_put(unsigned char *h, uint32_t len)
{
    h[0] = (unsigned char)(len >> 24);
    h[1] = (unsigned char)(len >> 16);
    h[2] = (unsigned char)(len >> 8);
    h[3] = (unsigned char)len;
}
static inline uint32_t fipc_frame_get(const unsigned char *h)
{
    return (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
}

/* How fipc_write_all writes: write()/writev(); sendmsg(MSG_NOSIGNAL) (a socket);
 * pwritev2(RWF_NOSIGNAL) (a pipe: EPIPE without SIGPIPE; -EOPNOTSUPP before Linux 6.18). */
enum { FIPC_WRITE_PLAIN = 0, FIPC_WRITE_SOCK = 1, FIPC_WRITE_NOSIGNAL = 2 };
/* The one write-with-deadline loop: write iov[0..cnt) completely to a non-blocking fd,
 * skipping the first `offset` bytes (what an interrupted call already wrote), waiting for
 * POLLOUT until the deadline while the fd is full; `how` is a FIPC_WRITE_*. iov is
 * modified. Returns the bytes written in all (offset included), or -ETIMEDOUT / -EINTR /
 * -errno; the bytes written so far are in *written in every case. */
int64_t fipc_write_all(int fd, struct iovec *iov, int cnt, size_t offset, double timeout,
                       int how, size_t *written);
/* remaining time until deadline as a timespec; returns NULL for "forever" */
struct timespec *fipc_remaining(int64_t deadline, struct timespec *ts);
/* wait until fd is ready for events or the deadline passes: 0, -ETIMEDOUT or -errno */
int fipc_wait_fd(int fd, short events, int64_t deadline);
/* advise transparent huge pages for a large buffer about to be filled (a hint only) */
void fipc_hint_hugepages(void *p, size_t n);

#endif
