/* C baselines of fastipc.bench.mq, 64-byte messages between two processes pinned to two
 * CPUs, with no Python: the limit.
 *
 * usage: mq_pingpong CPU_PARENT CPU_CHILD COUNT MODE, MODE one of
 *   pingpong  COUNT round trips over two POSIX message queues (blocking mq_send/mq_receive);
 *             prints microseconds per round trip
 *   stream    the child sends COUNT messages into one queue of depth 10, the parent receives
 *             them; prints messages per second as seen by the receiver
 *   sem       COUNT round trips over two named POSIX semaphores; prints microseconds per
 *             round trip
 * One untimed round (message) first, so that the child is running when the clock starts. */
#include "bench.h"
#include <fcntl.h>
#include <mqueue.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { SIZE = 64, DEPTH = 10 };

/* A queue or semaphore name of this run, unlinked at once: both processes share the
 * descriptor (handle) across fork, nothing is left behind. */
static mqd_t queue(const char *tag)
{
    char name[64];
    snprintf(name, sizeof name, "/fastipc-bench-c-%d-%s", (int)getpid(), tag);
    struct mq_attr attr = {.mq_maxmsg = DEPTH, .mq_msgsize = SIZE};
    mqd_t q = mq_open(name, O_RDWR | O_CREAT | O_EXCL, 0600, &attr);
    if (q == (mqd_t)-1)
        die("mq_open");
    mq_unlink(name);
    return q;
}

static sem_t *semaphore(const char *tag)
{
    char name[64];
    snprintf(name, sizeof name, "/fastipc-bench-c-%d-%s", (int)getpid(), tag);
    sem_t *s = sem_open(name, O_CREAT | O_EXCL, 0600, 0);
    if (s == SEM_FAILED)
        die("sem_open");
    sem_unlink(name);
    return s;
}

static char msg[SIZE];
static unsigned prio;

static void put(mqd_t q)
{
    if (mq_send(q, msg, SIZE, 0) < 0)
        die("mq_send");
}

static void get(mqd_t q)
{
    if (mq_receive(q, msg, sizeof msg, &prio) != SIZE)
        die("mq_receive");
}

static void take(sem_t *s)
{
    while (sem_wait(s) < 0) /* EINTR */
        ;
}

enum mode { PINGPONG, STREAM, SEM };
static enum mode mode;
static mqd_t qa, qb;
static sem_t *ping, *pong;

/* One round of one side: the parent sends (posts) and waits for the answer, the child
 * waits and answers; in a stream, the child sends and the parent receives. */
static void round_of(int parent)
{
    if (mode == STREAM) {
        parent ? get(qa) : put(qa);
    } else if (mode == PINGPONG) {
        if (parent) {
            put(qa);
            get(qb);
        } else {
            get(qa);
            put(qb);
        }
    } else {
        sem_post(parent ? ping : pong);
        take(parent ? pong : ping);
    }
}

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s CPU_PARENT CPU_CHILD COUNT pingpong|stream|sem\n", argv0);
    return 2;
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return usage(argv[0]);
    int cpu0 = atoi(argv[1]), cpu1 = atoi(argv[2]);
    long count = atol(argv[3]);
    if (strcmp(argv[4], "pingpong") == 0)
        mode = PINGPONG;
    else if (strcmp(argv[4], "stream") == 0)
        mode = STREAM;
    else if (strcmp(argv[4], "sem") == 0)
        mode = SEM;
    else
        return usage(argv[0]);
    memset(msg, 'x', sizeof msg);
    if (mode == SEM) {
        ping = semaphore("ping");
        pong = semaphore("pong");
    } else {
        qa = queue("a");
        qb = mode == PINGPONG ? queue("b") : (mqd_t)-1;
    }
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        pin(cpu1);
        for (long i = 0; i <= count; i++)
            round_of(0);
        _exit(0);
    }
    pin(cpu0);
    round_of(1); /* untimed: the child is running when the clock starts */
    double t0 = now();
    for (long i = 0; i < count; i++)
        round_of(1);
    double dt = now() - t0;
    waitpid(child, NULL, 0);
    if (mode == STREAM)
        printf("%.1f\n", count / dt);
    else
        printf("%.3f\n", dt / count * 1e6);
    return 0;
}
