/* C baseline: 64-byte ping-pong over two POSIX message queues, blocking mq_send/mq_receive.
 * usage: mq_pingpong CPU_PARENT CPU_CHILD [ROUNDS]; prints microseconds per round trip. */
#include "bench.h"
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int cpu0 = argc > 1 ? atoi(argv[1]) : 0, cpu1 = argc > 2 ? atoi(argv[2]) : 0;
    long rounds = argc > 3 ? atol(argv[3]) : 20000;
    char ping[64], pong[64];
    snprintf(ping, sizeof ping, "/fastipc-bench-c-%d-ping", (int)getpid());
    snprintf(pong, sizeof pong, "/fastipc-bench-c-%d-pong", (int)getpid());
    struct mq_attr attr = {.mq_maxmsg = 10, .mq_msgsize = 64};
    mqd_t a = mq_open(ping, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
    mqd_t b = mq_open(pong, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
    if (a == (mqd_t)-1 || b == (mqd_t)-1)
        die("mq_open");
    mq_unlink(ping);
    mq_unlink(pong);
    char msg[64];
    memset(msg, 'x', sizeof msg);
    unsigned prio;
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        pin(cpu1);
        for (long i = 0; i <= rounds; i++) {
            if (mq_receive(a, msg, sizeof msg, &prio) != 64)
                die("child mq_receive");
            if (mq_send(b, msg, 64, 0) < 0)
                die("child mq_send");
        }
        _exit(0);
    }
    pin(cpu0);
    /* one round first: the child is running */
    if (mq_send(a, msg, 64, 0) < 0 || mq_receive(b, msg, sizeof msg, &prio) != 64)
        die("warm-up");
    double t0 = now();
    for (long i = 0; i < rounds; i++) {
        if (mq_send(a, msg, 64, 0) < 0)
            die("mq_send");
        if (mq_receive(b, msg, sizeof msg, &prio) != 64)
            die("mq_receive");
    }
    double dt = now() - t0;
    waitpid(child, NULL, 0);
    printf("%.3f\n", dt / rounds * 1e6);
    return 0;
}
