/* TCP and Unix-domain servers on one epoll loop, and the blocking client's send.
 *
 * Python calls fipc_srv_poll() once per loop turn. A turn takes the sends the handlers made
 * during the previous turn (Python queues them and hands them over in this one call),
 * writes out every connection's output (one send() per connection), closes the connections
 * that were finished or idle past idle_timeout, waits in epoll_wait (GIL released), accepts
 * new connections (closing at once those past max_connections) and reads every ready one
 * once. It returns a batch of events (connect, message, close) laid out as int64 fields plus
 * one buffer of payloads, so that Python touches only the handler calls.
 *
 * Framing is done here: "length" frames are a 4-byte big-endian length and the payload; a
 * length over max_message_size closes the connection before anything is buffered for it.
 * Every byte count coming from a socket is checked against what was really read.
 *
 * Connections are indexed by fd; each also has a 32-bit id (its key for Python is
 * id << 32 | fd), so that a stale handle held by Python cannot write to a later connection
 * that got the same fd. A connection's fd is closed only at the start of the turn after its CLOSE event was
 * returned, so an fd number is never reused within one batch.
 *
 * A mutex guards the loop's state: the loop thread holds it except while it sleeps in
 * epoll_wait, so that fipc_srv_send / fipc_srv_close from another thread are safe.
 */
#include "server.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024)      /* one read() per ready connection per turn */
#define BATCH_LIMIT (4 * 1024 * 1024) /* stop reading in a turn past this many bytes */
#define BIG_FRAME (64 * 1024)       /* frames past this are read straight into their buffer */
#define MAX_EVENTS 512
#define MAX_LISTENERS 16
#define ACCEPT_BURST 64
#define PAUSE_NS 100000000LL        /* listeners rest 100 ms after EMFILE */
#define MAX_WAIT_MS 86400000        /* a timer a day or more away: wake once a day */

#define TAG_CONN 0ULL
#define TAG_LISTEN 1ULL
#define TAG_WAKE 2ULL
#define MAKE_TAG(tag, fd) (((tag) << 32) | (uint32_t)(fd))

enum { ST_OPEN = 0, ST_DOOMED = 1 };

typedef struct conn {
    int fd;
    int state;          /* ST_OPEN, or ST_DOOMED: CLOSE reported, closing after output */
    int dead;           /* the socket failed: drop output, close at the next turn */
    int paused;         /* not reading: output over the high-water mark */
    int dirty;          /* on the dirty list (output queued during dispatch) */
    int reaping;        /* on the reap list */
    int want_out;       /* a write was cut short: wait for EPOLLOUT */
    uint32_t mask;      /* events registered with epoll */
    uint64_t id;
    int64_t last;       /* idle_timeout: when it last received or finished sending */
    struct conn *older, *newer; /* idle_timeout: the list of open connections by `last` */
    char *in;           /* a partial frame carried over to the next read */
    size_t in_len, in_cap;
    char *out;          /* queued output: out[out_start, out_end) */
    size_t out_start, out_end, out_cap;
} conn;

typedef struct intvec {
    int *v;
    size_t n, cap;
} intvec;

typedef struct i64vec {
    int64_t *v;
    size_t n, cap;  /* in int64 */
} i64vec;

struct fipc_srv {
    int ep;
    int wake_r, wake_w; /* the caller's pipe: stop() and Python's signal wake-up write it */
    int framing;
    uint32_t max_msg;
    size_t high_water;
    int64_t idle_ns;    /* idle_timeout in ns; 0: none */
    int max_conns;      /* 0: no limit */
    int64_t now;        /* the turn's clock, read only when idle_ns is set */
    conn *oldest, *newest; /* idle_timeout: open connections, least recently active first */
    pthread_mutex_t mu;
    conn **conns;       /* indexed by fd */
    size_t conns_cap;
    int count;
    uint32_t next_id;
    int listeners[MAX_LISTENERS];
    int nlisteners;
    int listen_paused;
    int64_t paused_until;
    int deferring;      /* a batch is being dispatched: queue sends, flush next turn */
    int sleeping;       /* the loop thread waits in epoll_wait without the mutex */
    intvec dirty;       /* fds with output queued */
    intvec reap;        /* fds of doomed connections to close */
    intvec pend;        /* CLOSE events raised between turns: (fd, errno) pairs */
    int phase;          /* 0: before epoll_wait, 1: after (CLOSE events go to post) */
    i64vec pre, msg, post; /* the batch */
    char *data;
    size_t data_len, data_cap;
    struct epoll_event evs[MAX_EVENTS];
};

/* ------------------------------------------------------------------ small helpers */

/* Wake the loop thread sleeping in epoll_wait. */
static void wake(fipc_srv *s)
{
    char one = 1;
    if (write(s->wake_w, &one, 1) < 0)
        errno = 0; /* EAGAIN: the pipe is full, so the loop is being woken anyway */
}

static int vec_push(intvec *v, int x)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        int *p = realloc(v->v, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        v->v = p;
        v->cap = cap;
    }
    v->v[v->n++] = x;
    return 0;
}

static int reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c = c > SIZE_MAX / 2 ? need : c * 2;
    char *p = realloc(*buf, c);
    if (!p)
        return -ENOMEM;
    *buf = p;
    *cap = c;
    return 0;
}

static int data_reserve(fipc_srv *s, size_t extra)
{
    if (extra > SIZE_MAX - s->data_len)
        return -ENOMEM;
    return reserve(&s->data, &s->data_cap, s->data_len + extra);
}

static int64_t *grow(i64vec *v, size_t k)
{
    if (v->cap - v->n < k) {
        size_t cap = v->cap ? v->cap * 2 : 1024;
        int64_t *p = realloc(v->v, cap * sizeof *p);
        if (!p)
            return NULL;
        v->v = p;
        v->cap = cap;
    }
    int64_t *m = v->v + v->n;
    v->n += k;
    return m;
}

static int emit(fipc_srv *s, int kind, int fd, uint64_t id, int64_t off, int64_t len)
{
    i64vec *v = kind == FIPC_EV_CLOSE && s->phase ? &s->post : &s->pre;
    int64_t *m = grow(v, FIPC_EV_FIELDS);
    if (!m)
        return -ENOMEM;
    m[0] = kind;
    m[1] = fd;
    m[2] = (int64_t)id;
    m[3] = off;
    m[4] = len;
    return 0;
}

static int emit_msg(fipc_srv *s, int fd, size_t off, size_t len)
{
    int64_t *m = grow(&s->msg, FIPC_MSG_FIELDS);
    if (!m)
        return -ENOMEM;
    m[0] = fd;
    m[1] = (int64_t)off;
    m[2] = (int64_t)(off + len); /* the end: Python slices data[start:end] */
    return 0;
}

static size_t nevents(fipc_srv *s)
{
    return s->pre.n / FIPC_EV_FIELDS + s->msg.n / FIPC_MSG_FIELDS + s->post.n / FIPC_EV_FIELDS;
}

static conn *lookup(fipc_srv *s, uint64_t key)
{
    size_t fd = (size_t)(key & 0xffffffffu);
    if (fd >= s->conns_cap)
        return NULL;
    conn *c = s->conns[fd];
    return c && c->id == key >> 32 ? c : NULL;
}

/* ------------------------------------------------------------------ idle connections
 * With idle_timeout, the open connections form a list ordered by their last activity (a
 * byte received, or the output queue emptied): activity moves a connection to the newest
 * end, and the check at each turn looks only at the oldest end, so it costs O(1) plus one
 * step per connection it closes. */

static void idle_unlink(fipc_srv *s, conn *c)
{
    if (c->older)
        c->older->newer = c->newer;
    else if (s->oldest == c)
        s->oldest = c->newer;
    if (c->newer)
        c->newer->older = c->older;
    else if (s->newest == c)
        s->newest = c->older;
    c->older = c->newer = NULL;
}

static void idle_touch(fipc_srv *s, conn *c)
{
    if (!s->idle_ns || c->state != ST_OPEN)
        return; /* a doomed connection left the list for good */
    c->last = fipc_now_ns();
    if (s->newest == c)
        return;
    idle_unlink(s, c);
    c->older = s->newest;
    if (s->newest)
        s->newest->newer = c;
    else
        s->oldest = c;
    s->newest = c;
}

/* Register the events this connection wants now: input unless paused or doomed, output
 * while some is queued. */
static void update_mask(fipc_srv *s, conn *c)
{
    uint32_t want = 0;
    if (!c->dead) {
        if (c->state == ST_OPEN && !c->paused)
            want |= EPOLLIN | EPOLLRDHUP;
        if (c->want_out)
            want |= EPOLLOUT;
    }
    if (want == c->mask)
        return;
    struct epoll_event ev = {.events = want, .data.u64 = MAKE_TAG(TAG_CONN, c->fd)};
    if (epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
        c->mask = want;
    else
        c->dead = 1; /* cannot happen for a registered fd; treat it as a broken socket */
}

/* Report a connection as closed (once) and schedule its fd for closing. `err` is the errno
 * that ended it, 0 for a clean close. Inside a turn the event joins the batch; between
 * turns it waits on the pending list. */
static void doom(fipc_srv *s, conn *c, int err, int in_turn)
{
    if (c->state == ST_DOOMED)
        return;
    c->state = ST_DOOMED;
    idle_unlink(s, c);
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
    if (in_turn) {
        if (emit(s, FIPC_EV_CLOSE, c->fd, c->id, err, 0) < 0)
            c->dead = 1;
    } else if (vec_push(&s->pend, c->fd) < 0 || vec_push(&s->pend, err) < 0) {
        c->dead = 1; /* out of memory: the event is lost, the connection still closes */
    }
    if (!c->reaping && vec_push(&s->reap, c->fd) == 0)
        c->reaping = 1;
    update_mask(s, c);
}

static void conn_free(fipc_srv *s, conn *c)
{
    /* epoll forgets an fd when it is closed; removing it first keeps the set exact even if
     * the fd was duplicated elsewhere */
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    idle_unlink(s, c);
    s->conns[c->fd] = NULL;
    s->count--;
    free(c->in);
    free(c->out);
    free(c);
}

/* ------------------------------------------------------------------ output */

/* One send() of the queued output. 0 when it all went, 1 when some is left, <0 on error. */
static int conn_write(fipc_srv *s, conn *c)
{
    size_t n = c->out_end - c->out_start;
    c->want_out = 0;
    if (n == 0 || c->dead)
        return 0;
    ssize_t w = send(c->fd, c->out + c->out_start, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) {
            c->want_out = 1;
            return 1;
        }
        return -errno;
    }
    c->out_start += (size_t)w;
    if (c->out_start == c->out_end) {
        c->out_start = c->out_end = 0;
        idle_touch(s, c);
        if (c->out_cap > 4 * READ_CHUNK) {
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
    }
    if (c->paused && c->out_end - c->out_start <= s->high_water / 2)
        c->paused = 0;
    c->want_out = c->out_end > c->out_start;
    return c->want_out;
}

/* Write what is queued; on failure the connection is reported closed. */
static void conn_flush(fipc_srv *s, conn *c, int in_turn)
{
    int rc = conn_write(s, c);
    if (rc < 0) {
        c->dead = 1;
        c->out_start = c->out_end = 0;
        doom(s, c, -rc, in_turn);
    }
    update_mask(s, c);
}

static int append(conn *c, const char *a, size_t alen, const char *b, size_t blen)
{
    size_t used = c->out_end - c->out_start;
    if (alen + blen > SIZE_MAX - used)
        return -ENOMEM;
    if (c->out_start > 0 && c->out_cap - c->out_end < alen + blen) {
        memmove(c->out, c->out + c->out_start, used);
        c->out_start = 0;
        c->out_end = used;
    }
    int rc = reserve(&c->out, &c->out_cap, c->out_end + alen + blen);
    if (rc < 0)
        return rc;
    memcpy(c->out + c->out_end, a, alen);
    c->out_end += alen;
    if (blen) {
        memcpy(c->out + c->out_end, b, blen);
        c->out_end += blen;
    }
    return 0;
}

/* ------------------------------------------------------------------ input */

static void pause_listeners(fipc_srv *s)
{
    if (s->listen_paused)
        return;
    for (int i = 0; i < s->nlisteners; i++)
        epoll_ctl(s->ep, EPOLL_CTL_DEL, s->listeners[i], NULL);
    s->listen_paused = 1;
    s->paused_until = fipc_now_ns() + PAUSE_NS;
}

static void resume_listeners(fipc_srv *s)
{
    if (!s->listen_paused)
        return;
    for (int i = 0; i < s->nlisteners; i++) {
        struct epoll_event ev = {.events = EPOLLIN,
                                 .data.u64 = MAKE_TAG(TAG_LISTEN, s->listeners[i])};
        epoll_ctl(s->ep, EPOLL_CTL_ADD, s->listeners[i], &ev);
    }
    s->listen_paused = 0;
}

static int conns_reserve(fipc_srv *s, int fd)
{
    if ((size_t)fd < s->conns_cap)
        return 0;
    size_t cap = s->conns_cap ? s->conns_cap : 256;
    while (cap <= (size_t)fd)
        cap *= 2;
    conn **p = realloc(s->conns, cap * sizeof *p);
    if (!p)
        return -ENOMEM;
    memset(p + s->conns_cap, 0, (cap - s->conns_cap) * sizeof *p);
    s->conns = p;
    s->conns_cap = cap;
    return 0;
}

static void do_accept(fipc_srv *s, int lfd)
{
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage ss;
        socklen_t slen = sizeof ss;
        int fd = accept4(lfd, (struct sockaddr *)&ss, &slen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                pause_listeners(s);
            /* EAGAIN: drained; ECONNABORTED, EPROTO, EINTR...: that client is gone */
            if (errno == EAGAIN || errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
                errno == ENOMEM || errno == EINTR)
                return;
            continue;
        }
        if (s->max_conns && s->count >= s->max_conns) {
            close(fd); /* over max_connections: the client sees the end of the stream */
            continue;
        }
        if (slen > sizeof ss)
            slen = sizeof ss;
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            int one = 1;
            /* latency of small replies; a failure only costs speed */
            if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) < 0)
                errno = 0;
        }
        conn *c = NULL;
        if (conns_reserve(s, fd) < 0 || data_reserve(s, slen) < 0 ||
            !(c = calloc(1, sizeof *c))) {
            close(fd);
            pause_listeners(s);
            return;
        }
        c->fd = fd;
        if (++s->next_id == 0)
            s->next_id = 1;
        c->id = s->next_id;
        c->mask = EPOLLIN | EPOLLRDHUP;
        struct epoll_event ev = {.events = c->mask, .data.u64 = MAKE_TAG(TAG_CONN, fd)};
        if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            free(c);
            close(fd);
            continue;
        }
        s->conns[fd] = c;
        s->count++;
        idle_touch(s, c);
        memcpy(s->data + s->data_len, &ss, slen);
        if (emit(s, FIPC_EV_CONNECT, fd, c->id, (int64_t)s->data_len, slen) < 0) {
            conn_free(s, c);
            return;
        }
        s->data_len += slen;
    }
}

/* Keep the tail [p, end) of the batch as the connection's partial frame. */
static int keep_partial(conn *c, const char *p, size_t n)
{
    if (n == 0) {
        c->in_len = 0;
        if (c->in_cap > READ_CHUNK) {
            free(c->in);
            c->in = NULL;
            c->in_cap = 0;
        }
        return 0;
    }
    if (n > c->in_cap) {
        char *q = realloc(c->in, n);
        if (!q)
            return -ENOMEM;
        c->in = q;
        c->in_cap = n;
    }
    memmove(c->in, p, n);
    c->in_len = n;
    return 0;
}

/* Split the frames of batch[base, base + n): emit every whole one, keep the rest. */
static int split_frames(fipc_srv *s, conn *c, size_t base, size_t n)
{
    size_t pos = base, end = base + n;
    while (end - pos >= FIPC_FRAME_HEADER) {
        uint32_t len = fipc_frame_get((const unsigned char *)s->data + pos);
        if (len > s->max_msg)
            return FIPC_TOOBIG;
        if (end - pos - FIPC_FRAME_HEADER < len)
            break;
        if (emit_msg(s, c->fd, pos + FIPC_FRAME_HEADER, len) < 0)
            return -ENOMEM;
        pos += FIPC_FRAME_HEADER + (size_t)len;
    }
    int rc = keep_partial(c, s->data + pos, end - pos);
    s->data_len = pos; /* the partial tail lives on in c->in */
    return rc;
}

/* Read a connection once. Returns 0, or what ends it: -errno, FIPC_EOF or FIPC_TOOBIG. */
static int conn_read(fipc_srv *s, conn *c)
{
    if (s->framing == FIPC_SRV_LENGTH && c->in_len >= FIPC_FRAME_HEADER) {
        size_t frame = FIPC_FRAME_HEADER + (size_t)fipc_frame_get((const unsigned char *)c->in);
        if (frame - FIPC_FRAME_HEADER > s->max_msg)
            return FIPC_TOOBIG;
        if (frame > BIG_FRAME) {
            /* a big frame under way: read straight into its own buffer, no further than the
             * frame, growing the buffer with what arrives (not with what the peer announced) */
            size_t want = c->in_len < READ_CHUNK ? c->in_len + READ_CHUNK : 2 * c->in_len;
            if (want > frame)
                want = frame;
            if (reserve(&c->in, &c->in_cap, want) < 0)
                return -ENOMEM;
            size_t room = (c->in_cap < frame ? c->in_cap : frame) - c->in_len;
            ssize_t n = read(c->fd, c->in + c->in_len, room);
            if (n < 0)
                return errno == EAGAIN || errno == EINTR ? 0 : -errno;
            if (n == 0)
                return FIPC_EOF;
            c->in_len += (size_t)n;
            if (c->in_len < frame)
                return 0;
            if (data_reserve(s, frame) < 0)
                return -ENOMEM;
            size_t base = s->data_len;
            memcpy(s->data + base, c->in, frame);
            s->data_len += frame;
            c->in_len = 0;
            return split_frames(s, c, base, frame);
        }
    }
    size_t keep = c->in_len;
    if (data_reserve(s, keep + READ_CHUNK) < 0)
        return -ENOMEM;
    size_t base = s->data_len;
    if (keep)
        memcpy(s->data + base, c->in, keep);
    ssize_t n = read(c->fd, s->data + base + keep, READ_CHUNK);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -errno;
    if (n == 0)
        return FIPC_EOF; /* a partial frame is dropped with the connection */
    if (s->framing == FIPC_SRV_RAW) {
        if (emit_msg(s, c->fd, base, (size_t)n) < 0)
            return -ENOMEM;
        s->data_len = base + (size_t)n;
        return 0;
    }
    s->data_len = base + keep + (size_t)n;
    c->in_len = 0;
    return split_frames(s, c, base, keep + (size_t)n);
}

static void on_conn_event(fipc_srv *s, conn *c, uint32_t events)
{
    if (events & EPOLLOUT)
        conn_flush(s, c, 1);
    if (c->state != ST_OPEN || c->dead) {
        if (!c->dead && (events & (EPOLLHUP | EPOLLERR))) {
            c->dead = 1; /* a doomed connection draining its output lost its peer */
            update_mask(s, c);
        }
        return;
    }
    if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (c->paused)
            return;
        if (s->data_len > BATCH_LIMIT)
            return; /* level-triggered: it comes back next turn */
        int rc = conn_read(s, c);
        if (rc == 0) {
            idle_touch(s, c);
        } else if (rc == FIPC_EOF) {
            doom(s, c, 0, 1);
        } else if (rc == FIPC_TOOBIG) {
            doom(s, c, EMSGSIZE, 1);
        } else {
            c->dead = 1;
            c->out_start = c->out_end = 0;
            doom(s, c, -rc, 1);
        }
    }
}

/* ------------------------------------------------------------------ the loop */

int fipc_srv_new(fipc_srv **out, int framing, uint32_t max_message_size, size_t high_water,
                 int wake_r, int wake_w, double idle_timeout, int max_connections)
{
    *out = NULL;
    if ((framing != FIPC_SRV_RAW && framing != FIPC_SRV_LENGTH) || max_connections < 0)
        return -EINVAL;
    fipc_srv *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->framing = framing;
    s->max_msg = max_message_size;
    s->high_water = high_water ? high_water : 1;
    s->wake_r = wake_r;
    s->wake_w = wake_w;
    /* at least 1 ns, at most ~31 years: a positive timeout never means "none" */
    s->idle_ns = idle_timeout <= 0 ? 0 : idle_timeout > 1e9 ? (int64_t)1e18
               : idle_timeout * 1e9 < 1 ? 1 : (int64_t)(idle_timeout * 1e9);
    s->max_conns = max_connections;
    int rc = 0;
    s->ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = MAKE_TAG(TAG_WAKE, s->wake_r)};
    if (s->ep < 0 || epoll_ctl(s->ep, EPOLL_CTL_ADD, s->wake_r, &ev) < 0)
        rc = -errno;
    else
        rc = -pthread_mutex_init(&s->mu, NULL);
    if (rc < 0) {
        if (s->ep >= 0)
            close(s->ep);
        free(s);
        return rc;
    }
    *out = s;
    return 0;
}

void fipc_srv_free(fipc_srv *s)
{
    if (!s)
        return;
    for (size_t fd = 0; fd < s->conns_cap; fd++)
        if (s->conns[fd])
            conn_free(s, s->conns[fd]);
    close(s->ep);
    pthread_mutex_destroy(&s->mu);
    free(s->conns);
    free(s->dirty.v);
    free(s->reap.v);
    free(s->pend.v);
    free(s->pre.v);
    free(s->msg.v);
    free(s->post.v);
    free(s->data);
    free(s);
}

int fipc_srv_fd(fipc_srv *s)
{
    return s->ep;
}

int fipc_srv_listen(fipc_srv *s, int fd)
{
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    if (s->nlisteners == MAX_LISTENERS) {
        rc = -ENOSPC;
    } else {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = MAKE_TAG(TAG_LISTEN, fd)};
        if (!s->listen_paused && epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            rc = -errno;
        else
            s->listeners[s->nlisteners++] = fd;
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Flush the connections that got output during the last dispatch. */
static void flush_dirty(fipc_srv *s, int in_turn)
{
    for (size_t i = 0; i < s->dirty.n; i++) {
        int fd = s->dirty.v[i];
        conn *c = (size_t)fd < s->conns_cap ? s->conns[fd] : NULL;
        if (!c)
            continue;
        c->dirty = 0;
        conn_flush(s, c, in_turn);
    }
    s->dirty.n = 0;
    s->deferring = 0;
}

/* Close the doomed connections whose output is out (or can never go). */
static void reap(fipc_srv *s)
{
    size_t keep = 0;
    for (size_t i = 0; i < s->reap.n; i++) {
        int fd = s->reap.v[i];
        conn *c = (size_t)fd < s->conns_cap ? s->conns[fd] : NULL;
        if (!c)
            continue;
        if (c->dead || c->out_end == c->out_start) {
            conn_free(s, c);
            if (s->listen_paused)
                resume_listeners(s);
        } else {
            s->reap.v[keep++] = fd; /* still draining: EPOLLOUT brings it back */
        }
    }
    s->reap.n = keep;
}

/* Close the connections idle past idle_timeout (oldest first; one with output still queued
 * is not idle: it starts a new period). Returns the ns until the next one may expire, or
 * -1 if none can. */
static int64_t expire_idle(fipc_srv *s)
{
    if (!s->idle_ns)
        return -1;
    s->now = fipc_now_ns();
    conn *c;
    while ((c = s->oldest) && s->now - c->last >= s->idle_ns) {
        if (c->out_end > c->out_start) {
            idle_touch(s, c);
        } else {
            idle_unlink(s, c);
            doom(s, c, ETIMEDOUT, 1);
        }
    }
    return c ? c->last + s->idle_ns - s->now : -1;
}

/* The ns until the loop needs a turn without I/O (listeners resting, an idle deadline), or
 * -1 for never. */
static int64_t next_timer(fipc_srv *s, int64_t idle_left)
{
    int64_t t = idle_left;
    if (s->listen_paused) {
        int64_t left = s->paused_until - fipc_now_ns();
        if (left < 0)
            left = 0;
        if (t < 0 || left < t)
            t = left;
    }
    return t;
}

/* Queue output on a connection, as one frame with length framing. */
static int queue(fipc_srv *s, conn *c, const char *buf, size_t len)
{
    unsigned char h[FIPC_FRAME_HEADER];
    fipc_frame_put(h, (uint32_t)len);
    size_t hlen = s->framing == FIPC_SRV_LENGTH ? FIPC_FRAME_HEADER : 0;
    if (append(c, (const char *)h, hlen, buf, len) < 0)
        return -ENOMEM;
    if (!c->dirty && !c->want_out) {
        if (vec_push(&s->dirty, c->fd) < 0)
            return -ENOMEM;
        c->dirty = 1;
    }
    if (!c->paused && c->out_end - c->out_start > s->high_water) {
        c->paused = 1; /* back-pressure: stop reading until the peer takes its output */
        update_mask(s, c);
    }
    return 0;
}

/* The sends Python queued: keys[i] gets lens[i] bytes, taken from data in order. */
static int queue_many(fipc_srv *s, const uint64_t *keys, const uint64_t *lens, size_t n,
                      const char *data, size_t data_len)
{
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > data_len - off)
            return -EINVAL;
        if (s->framing == FIPC_SRV_LENGTH && lens[i] > UINT32_MAX)
            return -EMSGSIZE;
        conn *c = lookup(s, keys[i]);
        if (c && !c->dead && queue(s, c, data + off, (size_t)lens[i]) < 0)
            return -ENOMEM;
        off += (size_t)lens[i];
    }
    return 0;
}

int fipc_srv_poll(fipc_srv *s, double timeout, const uint64_t *keys, const uint64_t *lens,
                  size_t n, const char *data, size_t data_len, fipc_srv_batch *b)
{
    pthread_mutex_lock(&s->mu);
    s->pre.n = s->msg.n = s->post.n = 0;
    s->data_len = 0;
    s->phase = 0;
    if (s->data_cap > 4 * BATCH_LIMIT) {
        free(s->data);
        s->data = NULL;
        s->data_cap = 0;
    }
    int rc = queue_many(s, keys, lens, n, data, data_len);
    if (rc < 0) {
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    /* closes requested between turns come first, before any new use of their fds */
    for (size_t i = 0; i + 1 < s->pend.n; i += 2) {
        int fd = s->pend.v[i];
        conn *c = (size_t)fd < s->conns_cap ? s->conns[fd] : NULL;
        if (c && emit(s, FIPC_EV_CLOSE, fd, c->id, s->pend.v[i + 1], 0) < 0)
            break;
    }
    s->pend.n = 0;
    flush_dirty(s, 1);
    reap(s);
    if (s->listen_paused && fipc_now_ns() >= s->paused_until)
        resume_listeners(s);
    int64_t timer = next_timer(s, expire_idle(s));

    int ms;
    if (nevents(s) > 0 || timeout == 0) {
        ms = 0;
    } else if (timeout < 0) {
        ms = -1;
    } else if (timeout * 1000.0 >= MAX_WAIT_MS) {
        ms = MAX_WAIT_MS; /* the caller's loop waits again for the rest */
    } else {
        double m = timeout * 1000.0;
        ms = (int)m;
        if (ms < m)
            ms++; /* round up: never wake early and spin */
    }
    if (timer >= 0 && ms != 0) {
        int64_t left = (timer + 999999) / 1000000; /* round up: never wake early and spin */
        if (left > MAX_WAIT_MS)
            left = MAX_WAIT_MS;
        if (ms < 0 || left < ms)
            ms = (int)left;
    }
    s->sleeping = 1;
    pthread_mutex_unlock(&s->mu);
    int ready = epoll_wait(s->ep, s->evs, MAX_EVENTS, ms);
    int err = errno;
    pthread_mutex_lock(&s->mu);
    s->sleeping = 0;
    s->phase = 1;
    if (ready < 0) {
        if (nevents(s) == 0) {
            pthread_mutex_unlock(&s->mu);
            return -err;
        }
        ready = 0;
    }
    for (int i = 0; i < ready; i++) {
        uint64_t tag = s->evs[i].data.u64 >> 32;
        int fd = (int)(uint32_t)s->evs[i].data.u64;
        if (tag == TAG_WAKE) {
            char drain[256];
            while (read(fd, drain, sizeof drain) == (ssize_t)sizeof drain)
                ; /* until EAGAIN: stop() requests and signal numbers, all consumed */
        } else if (tag == TAG_LISTEN) {
            if (!s->listen_paused)
                do_accept(s, fd);
        } else if ((size_t)fd < s->conns_cap && s->conns[fd]) {
            on_conn_event(s, s->conns[fd], s->evs[i].events);
        }
    }
    size_t total = nevents(s);
    s->deferring = total > 0;
    timer = next_timer(s, !s->idle_ns ? -1 : !s->oldest ? -1
                       : s->oldest->last + s->idle_ns - fipc_now_ns());
    b->timer = timer < 0 ? -1.0 : (double)(timer > 0 ? timer : 0) * 1e-9;
    b->pre = s->pre.v;
    b->npre = s->pre.n / FIPC_EV_FIELDS;
    b->msg = s->msg.v;
    b->nmsg = s->msg.n / FIPC_MSG_FIELDS;
    b->post = s->post.v;
    b->npost = s->post.n / FIPC_EV_FIELDS;
    b->data = s->data;
    b->data_len = s->data_len;
    pthread_mutex_unlock(&s->mu);
    return total > INT32_MAX ? INT32_MAX : (int)total;
}

int fipc_srv_sendv(fipc_srv *s, const uint64_t *keys, const uint64_t *lens, size_t n,
                   const char *data, size_t data_len)
{
    pthread_mutex_lock(&s->mu);
    int rc = queue_many(s, keys, lens, n, data, data_len);
    flush_dirty(s, 0);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int fipc_srv_send(fipc_srv *s, uint64_t key, const char *buf, size_t len)
{
    size_t hlen = s->framing == FIPC_SRV_LENGTH ? FIPC_FRAME_HEADER : 0;
    if (hlen && len > UINT32_MAX)
        return -EMSGSIZE;
    unsigned char h[FIPC_FRAME_HEADER];
    fipc_frame_put(h, (uint32_t)len);
    pthread_mutex_lock(&s->mu);
    int rc = 0;
    conn *c = lookup(s, key);
    if (!c || c->dead) {
        rc = -EPIPE;
    } else if (!s->deferring && c->out_end == c->out_start) {
        /* nothing queued and no batch under way: write at once, queue the rest */
        struct iovec iov[2] = {{h, hlen}, {(void *)buf, len}};
        struct msghdr msg = {.msg_iov = hlen ? iov : iov + 1, .msg_iovlen = hlen ? 2 : 1};
        ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EINTR) {
            rc = -errno;
            c->dead = 1;
            doom(s, c, errno, 0);
            if (s->sleeping)
                wake(s);
        } else {
            size_t done = w < 0 ? 0 : (size_t)w;
            if (done == hlen + len)
                idle_touch(s, c); /* written out: as conn_write counts it */
            if (done < hlen + len) {
                size_t hd = done < hlen ? done : hlen;
                size_t bd = done - hd;
                if (append(c, (const char *)h + hd, hlen - hd, buf + bd, len - bd) < 0) {
                    rc = -ENOMEM;
                } else {
                    c->want_out = 1;
                    if (c->out_end - c->out_start > s->high_water)
                        c->paused = 1;
                    update_mask(s, c);
                }
            }
        }
    } else {
        rc = queue(s, c, buf, len);
        if (rc == 0 && !s->deferring)
            conn_flush(s, c, 0);
        else if (rc == 0 && !c->want_out && c->out_end - c->out_start >= s->high_water)
            conn_flush(s, c, 0); /* a handler producing a lot: do not hold it all */
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int fipc_srv_close(fipc_srv *s, uint64_t key)
{
    pthread_mutex_lock(&s->mu);
    conn *c = lookup(s, key);
    if (c && c->state == ST_OPEN) {
        doom(s, c, 0, 0);
        if (s->sleeping)
            wake(s);
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int64_t fipc_srv_pending(fipc_srv *s, uint64_t key)
{
    pthread_mutex_lock(&s->mu);
    conn *c = lookup(s, key);
    int64_t rc = c ? (int64_t)(c->out_end - c->out_start) : -EPIPE;
    pthread_mutex_unlock(&s->mu);
    return rc;
}
