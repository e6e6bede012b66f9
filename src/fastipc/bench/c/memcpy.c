/* C baseline: one core's memcpy, no IPC: the bound on any copy-in copy-out channel.
 * usage: memcpy CPU_PARENT CPU_CHILD SIZE [COUNT]; prints GB/s (1e9 bytes/s). */
#include "bench.h"
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int main(int argc, char **argv)
{
    int cpu = argc > 1 ? atoi(argv[1]) : 0;
    size_t size = argc > 3 ? strtoull(argv[3], NULL, 10) : (1u << 20);
    long count = argc > 4 ? atol(argv[4]) : (long)((8ull << 30) / size);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) < 0)
        perror("sched_setaffinity");
    char *src = malloc(size), *dst = malloc(size);
    if (!src || !dst)
        return 1;
    memset(src, 1, size);
    memset(dst, 2, size);
    double t0 = now();
    for (long i = 0; i < count; i++) {
        src[i % size] = (char)i;
        memcpy(dst, src, size);
        __asm__ __volatile__("" : : "r"(dst) : "memory");
    }
    double dt = now() - t0;
    printf("%.6g\n", (double)size * count / dt / 1e9);
    return dst[0] == 42 ? 2 : 0;
}
