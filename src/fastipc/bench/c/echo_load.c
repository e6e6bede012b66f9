/* Plain-C load generator for the echo servers.
 *   echo_load CPU _ tcp PORT|unix PATH CONNS SECONDS SERVER_PID
 * Opens CONNS connections to 127.0.0.1:PORT or PATH; each keeps one 64-byte request (a
 * 4-byte big-endian length frame) outstanding and sends the next as soon as the whole
 * response is back. After a warm-up of a fifth of SECONDS it counts completed requests for
 * SECONDS and reads the server's CPU time (utime + stime of /proc/SERVER_PID/stat) at both
 * ends of that window. Prints "REQ_PER_S CPU_US_PER_REQ". Pinned to CPU. */
#include "bench.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD 64
#define FRAME (4 + PAYLOAD)

static double cpu_seconds(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    unsigned long ut = 0, st = 0;
    /* after ") ": state(3) ppid ... utime is field 14, stime 15 */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}


int main(int argc, char **argv)
{
    if (argc < 8) { fprintf(stderr, "usage: echo_load CPU _ tcp PORT|unix PATH CONNS SECONDS PID\n"); return 2; }
    pin(atoi(argv[1]));
    int tcp = strcmp(argv[3], "tcp") == 0;
    int nconn = atoi(argv[5]);
    double seconds = atof(argv[6]);
    int pid = atoi(argv[7]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nconn + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    int ep = epoll_create1(0);
    int *fds = calloc((size_t)nconn, sizeof *fds);
    size_t *got = calloc((size_t)nconn, sizeof *got);
    char req[FRAME];
    memset(req, 'r', sizeof req);
    req[0] = req[1] = req[2] = 0;
    req[3] = PAYLOAD;
    for (int i = 0; i < nconn; i++) {
        int fd;
        for (int tries = 0;; tries++) {
            if (tcp) {
                struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[4]))};
                inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
                fd = socket(AF_INET, SOCK_STREAM, 0);
                if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
            } else {
                struct sockaddr_un a = {.sun_family = AF_UNIX};
                snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[4]);
                fd = socket(AF_UNIX, SOCK_STREAM, 0);
                if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) break;
            }
            if (tries > 2000) die("connect");
            close(fd);
            usleep(1000);
        }
        if (tcp) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        fds[i] = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
        if (write(fd, req, FRAME) != FRAME) die("write");
    }
    struct epoll_event evs[1024];
    char buf[4096];
    long done = 0;
    double t0 = now(), warm = t0 + seconds / 5, end = warm + seconds;
    double start_cpu = -1, start_t = 0;
    long start_done = 0;
    for (;;) {
        double t = now();
        if (start_cpu < 0 && t >= warm) {
            start_cpu = cpu_seconds(pid);
            start_t = t;
            start_done = done;
        }
        if (t >= end) break;
        int n = epoll_wait(ep, evs, 1024, 1000);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        if (n == 0) { fprintf(stderr, "stalled\n"); return 1; }
        for (int i = 0; i < n; i++) {
            int k = (int)evs[i].data.u32;
            ssize_t r = read(fds[k], buf, sizeof buf);
            if (r <= 0) die("read (server closed)");
            got[k] += (size_t)r;
            while (got[k] >= FRAME) {
                got[k] -= FRAME;
                done++;
                if (write(fds[k], req, FRAME) != FRAME) die("write");
            }
        }
    }
    double end_cpu = cpu_seconds(pid);
    double dt = now() - start_t;
    long reqs = done - start_done;
    double us = (start_cpu >= 0 && end_cpu >= 0 && reqs) ? (end_cpu - start_cpu) * 1e6 / reqs : -1;
    for (int i = 0; i < nconn; i++) close(fds[i]);
    printf("%.1f %.3f\n", reqs / dt, us);
    return 0;
}
