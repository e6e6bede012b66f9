/* Plain-C epoll echo server: the limit for the Python servers.
 *   echo_server CPU _ tcp HOST       -> listens on HOST, a free port; prints "READY <port>"
 *   echo_server CPU _ unix PATH      -> listens on PATH; prints "READY PATH"
 * Messages are 4-byte big-endian length frames; each whole frame is echoed back. One read()
 * per ready connection per epoll_wait, replies written at once (queued when the socket is
 * full). Pinned to CPU; runs until SIGTERM, SIGINT or the end of its stdin. */
#include "bench.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (64 * 1024)

typedef struct {
    char in[2 * BUF];
    size_t in_len;
    char *out;
    size_t out_len, out_cap;
} conn;

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }


int main(int argc, char **argv)
{
    if (argc < 5) { fprintf(stderr, "usage: echo_server CPU _ tcp HOST | unix PATH\n"); return 2; }
    pin(atoi(argv[1]));
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int tcp = strcmp(argv[3], "tcp") == 0;
    int lfd;
    if (tcp) {
        struct sockaddr_in a = {.sin_family = AF_INET};
        if (inet_pton(AF_INET, argv[4], &a.sin_addr) != 1) die("inet_pton");
        lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        int one = 1;
        setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
        socklen_t len = sizeof a;
        getsockname(lfd, (struct sockaddr *)&a, &len);
        if (listen(lfd, 4096) < 0) die("listen");
        printf("READY %d\n", ntohs(a.sin_port));
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[4]);
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
        if (listen(lfd, 4096) < 0) die("listen");
        printf("READY %s\n", argv[4]);
    }
    fflush(stdout);

    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event sev = {.events = EPOLLIN, .data.fd = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &sev); /* stdin closed: the benchmark is over */
    size_t cap = 65536;
    conn **conns = calloc(cap, sizeof *conns);
    struct epoll_event evs[512];
    while (!stop) {
        int n = epoll_wait(ep, evs, 512, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == 0) {
                char b[64];
                if (read(0, b, sizeof b) <= 0)
                    stop = 1;
                continue;
            }
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                    if (c < 0) break;
                    if ((size_t)c >= cap) { close(c); continue; }
                    if (tcp) {
                        int one = 1;
                        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    }
                    conns[c] = calloc(1, sizeof(conn));
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &e);
                }
                continue;
            }
            conn *c = conns[fd];
            if (evs[i].events & EPOLLOUT && c->out_len) {
                ssize_t w = write(fd, c->out, c->out_len);
                if (w > 0) {
                    memmove(c->out, c->out + w, c->out_len - (size_t)w);
                    c->out_len -= (size_t)w;
                }
                if (!c->out_len) {
                    struct epoll_event e = {.events = EPOLLIN, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
                }
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                continue;
            ssize_t r = read(fd, c->in + c->in_len, sizeof c->in - c->in_len);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(fd);
                free(c->out);
                free(c);
                conns[fd] = NULL;
                continue;
            }
            c->in_len += (size_t)r;
            size_t pos = 0;
            while (c->in_len - pos >= 4) {
                const unsigned char *h = (const unsigned char *)c->in + pos;
                size_t len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
                if (len > BUF) { c->in_len = 0; pos = 0; break; } /* not this benchmark's */
                if (c->in_len - pos < 4 + len) break;
                pos += 4 + len;
            }
            if (pos) {
                if (c->out_len) { /* still backed up: queue behind */
                    if (c->out_len + pos > c->out_cap) {
                        c->out_cap = (c->out_len + pos) * 2;
                        c->out = realloc(c->out, c->out_cap);
                    }
                    memcpy(c->out + c->out_len, c->in, pos);
                    c->out_len += pos;
                } else {
                    ssize_t w = write(fd, c->in, pos);
                    if (w < 0) w = 0;
                    if ((size_t)w < pos) {
                        size_t left = pos - (size_t)w;
                        if (left > c->out_cap) { c->out_cap = left * 2; c->out = realloc(c->out, c->out_cap); }
                        memcpy(c->out, c->in + w, left);
                        c->out_len = left;
                        struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
                        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
                    }
                }
                memmove(c->in, c->in + pos, c->in_len - pos);
                c->in_len -= pos;
            }
        }
    }
    if (!tcp) unlink(argv[4]);
    return 0;
}
