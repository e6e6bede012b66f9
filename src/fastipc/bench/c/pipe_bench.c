/* Plain-C pipe baselines: the same work as the Python cases, with no Python.
 *   pipe_bench CPU_A CPU_B pingpong N        -> microseconds per 64-byte round trip
 *   pipe_bench CPU_A CPU_B stream N          -> 64-byte framed messages per second
 *   pipe_bench CPU_A CPU_B bulk N SIZE       -> GB/s moving N messages of SIZE bytes
 * The pipe keeps the kernel's default 64 KiB buffer. The parent is pinned to CPU_A, the
 * child to CPU_B. */
#include "bench.h"
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void full_write(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) { perror("write"); exit(1); }
        p += w; n -= (size_t)w;
    }
}

static void full_read(int fd, char *p, size_t n)
{
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) { perror("read"); exit(1); }
        p += r; n -= (size_t)r;
    }
}

int main(int argc, char **argv)
{
    if (argc < 5) { fprintf(stderr, "usage\n"); return 2; }
    int cpu_a = atoi(argv[1]), cpu_b = atoi(argv[2]);
    const char *mode = argv[3];
    long n = atol(argv[4]);
    size_t size = argc > 5 ? (size_t)atol(argv[5]) : 64;
    int up[2], down[2];
    if (pipe(up) || pipe(down)) { perror("pipe"); return 1; }
    char *buf = malloc(size + 4 < 65536 ? 65536 : size + 4);
    memset(buf, 'x', size + 4);
    pid_t pid = fork();
    if (pid == 0) {
        pin(cpu_b);
        close(up[0]); close(down[1]);
        char go;
        full_read(down[0], &go, 1);
        if (!strcmp(mode, "pingpong")) {
            for (long i = 0; i < n; i++) {
                full_read(down[0], buf, 68);
                full_write(up[1], buf, 68);
            }
        } else if (!strcmp(mode, "stream")) {
            uint32_t len = __builtin_bswap32(64);
            memcpy(buf, &len, 4);
            for (long i = 0; i < n; i++)
                full_write(up[1], buf, 68);
        } else {
            for (long i = 0; i < n; i++)
                full_write(up[1], buf, size);
        }
        _exit(0);
    }
    pin(cpu_a);
    close(up[1]); close(down[0]);
    double t0 = now(), result;
    full_write(down[1], "g", 1);
    if (!strcmp(mode, "pingpong")) {
        for (long i = 0; i < n; i++) {
            full_write(down[1], buf, 68);
            full_read(up[0], buf, 68);
        }
        result = (now() - t0) / n * 1e6;
    } else if (!strcmp(mode, "stream")) {
        /* read ahead in 64 KiB chunks and split the frames, as a careful C reader would */
        static char chunk[65536 + 68];
        size_t have = 0, got = 0;
        long msgs = 0;
        while (msgs < n) {
            ssize_t r = read(up[0], chunk + have, sizeof chunk - have);
            if (r <= 0) { perror("read"); return 1; }
            have += (size_t)r;
            size_t off = 0;
            while (have - off >= 4) {
                uint32_t len;
                memcpy(&len, chunk + off, 4);
                len = __builtin_bswap32(len);
                if (have - off < 4 + len) break;
                off += 4 + len; msgs++; got += len;
            }
            memmove(chunk, chunk + off, have - off);
            have -= off;
        }
        result = n / (now() - t0);
    } else {
        for (long i = 0; i < n; i++)
            full_read(up[0], buf, size);
        result = (double)n * size / (now() - t0) / 1e9;
    }
    waitpid(pid, NULL, 0);
    printf("%.6g\n", result);
    return 0;
}
