/* C baseline: ping-pong between two processes over two named POSIX semaphores.
 * usage: sem_pingpong CPU_PARENT CPU_CHILD [ROUNDS]; prints microseconds per round trip. */
#include "bench.h"
#include <fcntl.h>
#include <sched.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int cpu0 = argc > 1 ? atoi(argv[1]) : 0, cpu1 = argc > 2 ? atoi(argv[2]) : 0;
    long rounds = argc > 3 ? atol(argv[3]) : 20000;
    char n1[64], n2[64];
    snprintf(n1, sizeof n1, "/fastipc-bench-c-%d-ping", (int)getpid());
    snprintf(n2, sizeof n2, "/fastipc-bench-c-%d-pong", (int)getpid());
    sem_t *ping = sem_open(n1, O_CREAT | O_EXCL, 0600, 0);
    sem_t *pong = sem_open(n2, O_CREAT | O_EXCL, 0600, 0);
    if (ping == SEM_FAILED || pong == SEM_FAILED)
        die("sem_open");
    sem_unlink(n1);
    sem_unlink(n2);
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        pin(cpu1);
        for (long i = 0; i <= rounds; i++) {
            while (sem_wait(ping) < 0)
                ;
            sem_post(pong);
        }
        _exit(0);
    }
    pin(cpu0);
    sem_post(ping);
    while (sem_wait(pong) < 0)
        ;
    double t0 = now();
    for (long i = 0; i < rounds; i++) {
        sem_post(ping);
        while (sem_wait(pong) < 0)
            ;
    }
    double dt = now() - t0;
    waitpid(child, NULL, 0);
    printf("%.3f\n", dt / rounds * 1e6);
    return 0;
}
