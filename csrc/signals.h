/* fastipc signals.c: signals carrying a value.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_SIGNALS_H
#define FASTIPC_SIGNALS_H

#include "fastipc.h"

/* CDEF BEGIN */
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
/* A signalfd (non-blocking, close-on-exec) for signums: readable while one of them is
 * pending for the thread that watches it (or its process). The fd, or -errno. */
int fipc_signal_fd(const int *signums, int count);
/* CDEF END */

#endif
