/* What every C baseline shares: fail loudly, pin to a CPU, read the monotonic clock. */
#ifndef FASTIPC_BENCH_H
#define FASTIPC_BENCH_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

__attribute__((unused)) static void die(const char *what)
{
    perror(what);
    exit(1);
}

__attribute__((unused)) static void pin(int cpu)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        die("sched_setaffinity");
}

__attribute__((unused)) static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#endif
