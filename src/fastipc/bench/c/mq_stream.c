/* C baseline: one-way stream of 64-byte messages through a POSIX message queue of depth 10,
 * blocking mq_send/mq_receive. usage: mq_stream CPU_RECEIVER CPU_SENDER [COUNT];
 * prints messages per second as seen by the receiver. */
#include "bench.h"
#include <fcntl.h>
#include <mqueue.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int cpu0 = argc > 1 ? atoi(argv[1]) : 0, cpu1 = argc > 2 ? atoi(argv[2]) : 0;
    long count = argc > 3 ? atol(argv[3]) : 1000000;
    char name[64];
    snprintf(name, sizeof name, "/fastipc-bench-c-%d-stream", (int)getpid());
    struct mq_attr attr = {.mq_maxmsg = 10, .mq_msgsize = 64};
    mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
    if (q == (mqd_t)-1)
        die("mq_open");
    mq_unlink(name);
    char msg[64];
    memset(msg, 'x', sizeof msg);
    unsigned prio;
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        pin(cpu1);
        for (long i = 0; i <= count; i++)
            if (mq_send(q, msg, 64, 0) < 0)
                die("mq_send");
        _exit(0);
    }
    pin(cpu0);
    if (mq_receive(q, msg, sizeof msg, &prio) != 64) /* the sender is running */
        die("mq_receive");
    double t0 = now();
    for (long i = 0; i < count; i++)
        if (mq_receive(q, msg, sizeof msg, &prio) != 64)
            die("mq_receive");
    double dt = now() - t0;
    waitpid(child, NULL, 0);
    printf("%.1f\n", count / dt);
    return 0;
}
