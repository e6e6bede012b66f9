/* fastipc: the C API, declared once.
 *
 * Every function is plain C (no Python.h) named fipc_<mechanism>_<verb>. It returns >= 0 on
 * success and -errno on failure, or one of the FIPC_* status codes below, which never collide
 * with an errno. Timeouts are seconds as a double: negative waits forever, 0 tries once.
 * EINTR is returned, never retried here, so that Python can run its signal handlers and retry
 * with the remaining time (PEP 475).
 *
 * Each mechanism declares its own API in csrc/<mechanism>.h, which includes this file. The
 * part between the CDEF markers of every csrc/*.h (this file first) is read by
 * src/fastipc/_build.py as the cffi cdef, so it holds only declarations cffi understands.
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
