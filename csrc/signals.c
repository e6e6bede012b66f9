/* Signals that carry a value (sigqueue) and synchronous waits for them (sigtimedwait). */
#include "signals.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>

int fipc_signal_send(int pid, int signum, int has_value, int value)
{
    int rc;
    if (has_value) {
        union sigval v;
        memset(&v, 0, sizeof v);
        v.sival_int = value;
        rc = sigqueue(pid, signum, v);
    } else {
        rc = kill(pid, signum);
    }
    return rc < 0 ? -errno : 0;
}

int fipc_signal_wait(const int *signums, int count, double timeout, fipc_siginfo *info)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++)
        if (sigaddset(&set, signums[i]) < 0)
            return -errno;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int rc;
    if (timeout < 0) {
        rc = sigwaitinfo(&set, &si);
    } else {
        struct timespec ts;
        rc = sigtimedwait(&set, &si, fipc_remaining(fipc_deadline(timeout), &ts));
    }
    if (rc < 0)
        return errno == EAGAIN ? -ETIMEDOUT : -errno;
    info->signo = si.si_signo;
    info->code = si.si_code;
    info->pid = si.si_pid;
    info->uid = (int)si.si_uid;
    info->has_value = si.si_code == SI_QUEUE;
    info->value = si.si_value.sival_int;
    return rc;
}

int fipc_signal_fd(const int *signums, int count)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++)
        if (sigaddset(&set, signums[i]) < 0)
            return -errno;
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}
