/* The many-producer many-consumer queue: a byte ring in a POSIX shm segment, laid out as
 * docs/queue-layout.md describes.
 *
 * Producers serialise on one robust process-shared mutex, consumers on another; between the
 * two sides the ring is single-producer single-consumer. Each side commits an operation by
 * ONE release store of its 64-bit word (tail: bytes/8 << 32 | messages put; head: the same
 * for gets), so a participant killed half-way has changed nothing visible: the next locker
 * gets EOWNERDEAD, marks the mutex consistent and goes on, with no repair to make. Nobody
 * waits while holding a mutex: a producer that finds no room (or maxsize messages queued)
 * unlocks, then waits for the head word to change; a consumer that finds the ring empty
 * waits for the tail word. Waits spin for a bounded, adaptive time (yielding the CPU now and
 * then, so that oversubscribed cores make progress), then sleep on a futex word: the sleeper
 * raises its side's waiting flag, the other side checks it after a full fence and, if set,
 * clears it, bumps the futex word and wakes every sleeper (an event count: no lost wake-up
 * with any number of sleepers). Sleeps and lock waits are cut into slices so that close()
 * from another thread is seen.
 *
 * Nothing read from the mapping is trusted: the words and frame headers are checked
 * against the capacity derived from the mapping's real size (FIPC_CORRUPT otherwise). */
#include "queue.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define HDR ((uint64_t)FIPC_Q_HEADER)
#define FRAME ((uint64_t)FIPC_Q_FRAME)
#define KIND_MAX 15u
#define SLICE_NS FIPC_SLICE_NS   /* sleep at most this long between looks at `closed` */
#define LOCK_GRACE_NS 100000000LL /* a try-once call waits this long for a busy mutex */
/* The deadline of an attempt that never waits (the native handle's, which holds the GIL):
 * a busy mutex, a spill, a grace or a full ring make it return -EAGAIN having done nothing. */
#define TRY_DEADLINE (INT64_MIN + 1)

_Static_assert(sizeof(pthread_mutex_t) <= FIPC_Q_LOCK_SIZE, "pthread_mutex_t too large");
_Static_assert(sizeof(((fipc_queue *)0)->spill_path) == FIPC_Q_PATH_MAX, "spill_path size");

static const char SPILL_MAGIC[8] = {'F', 'P', 'C', 'Q', 'S', 'P', 'I', 'L'};

#define A32(q, off) ((_Atomic uint32_t *)(void *)((q)->base + (off)))
#define A64(q, off) ((_Atomic uint64_t *)(void *)((q)->base + (off)))
#define LOAD(p, mo) atomic_load_explicit((p), memory_order_##mo)
#define STORE(p, v, mo) atomic_store_explicit((p), (v), memory_order_##mo)
#define MUTEX(q, off) ((pthread_mutex_t *)(void *)((q)->base + (off)))

static inline uint64_t round8(uint64_t n)
{
    return (n + 7u) & ~(uint64_t)7u;
}

/* The two halves of a head/tail word. Both wrap: differences are taken in 32 bits. */
static inline uint32_t units(uint64_t w)
{
    return (uint32_t)(w >> 32);
}

static inline uint32_t msgs(uint64_t w)
{
    return (uint32_t)w;
}

static inline uint64_t advance(uint64_t w, uint64_t bytes, uint32_t n)
{
    return (uint64_t)(uint32_t)(units(w) + (uint32_t)(bytes / 8)) << 32 | (uint32_t)(msgs(w) + n);
}

static inline uint64_t offset_of(fipc_queue *q, uint64_t w)
{
    return ((uint64_t)units(w) * 8) & (q->capacity - 1);
}

/* Bytes and messages between head and tail, checked: 0, or FIPC_CORRUPT. */
static int span(fipc_queue *q, uint64_t head, uint64_t tail, uint64_t *used, uint64_t *count)
{
    *used = (uint64_t)(uint32_t)(units(tail) - units(head)) * 8;
    *count = (uint32_t)(msgs(tail) - msgs(head));
    if (*used > q->capacity || *count > *used / FRAME || (*count == 0) != (*used == 0))
        return FIPC_CORRUPT;
    return 0;
}

/* Copy n bytes into the ring at offset off (wrapping at its end), and out of it. */
static void ring_write(fipc_queue *q, uint64_t off, const char *src, uint64_t n)
{
    char *data = q->base + HDR;
    uint64_t first = q->capacity - off;
    if (n <= first) {
        memcpy(data + off, src, n);
    } else {
        memcpy(data + off, src, first);
        memcpy(data, src + first, n - first);
    }
}

static void ring_read(fipc_queue *q, uint64_t off, char *dest, uint64_t n)
{
    const char *data = q->base + HDR;
    uint64_t first = q->capacity - off;
    if (n <= first) {
        memcpy(dest, data + off, n);
    } else {
        memcpy(dest, data + off, first);
        memcpy(dest + first, data, n - first);
    }
}

static inline int is_closed(fipc_queue *q)
{
    return __atomic_load_n(&q->closed, __ATOMIC_RELAXED);
}

/* ---------------------------------------------------------------- set-up */

int fipc_queue_format(char *base, uint64_t map_size, uint64_t max_message, uint64_t maxsize,
                      int32_t owner_pid)
{
    if (map_size < HDR + FIPC_Q_MIN_CAPACITY)
        return -EINVAL;
    uint64_t capacity = map_size - HDR;
    if (capacity & (capacity - 1) || capacity > ((uint64_t)1 << 32))
        return -EINVAL;
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc)
        return -rc;
    if ((rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)) == 0 &&
        (rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)) == 0 &&
        (rc = pthread_mutex_init((pthread_mutex_t *)(void *)(base + FIPC_Q_OFF_PUT_LOCK),
                                 &attr)) == 0)
        rc = pthread_mutex_init((pthread_mutex_t *)(void *)(base + FIPC_Q_OFF_GET_LOCK), &attr);
    (void)pthread_mutexattr_destroy(&attr); /* cannot fail on an initialised attr */
    if (rc)
        return -rc;
    memcpy(base + FIPC_Q_OFF_VERSION, &(uint32_t){FIPC_Q_VERSION}, 4);
    memcpy(base + FIPC_Q_OFF_CAPACITY, &capacity, 8);
    memcpy(base + FIPC_Q_OFF_MAX_MESSAGE, &max_message, 8);
    memcpy(base + FIPC_Q_OFF_MAXSIZE, &maxsize, 8);
    memcpy(base + FIPC_Q_OFF_OWNER_PID, &owner_pid, 4);
    atomic_store_explicit((_Atomic uint32_t *)(void *)(base + FIPC_Q_OFF_MAGIC),
                          (uint32_t)FIPC_Q_MAGIC_LO, memory_order_release);
    return 0;
}

int fipc_queue_attach(fipc_queue *q, char *base, uint64_t map_size, double spin)
{
    memset(q, 0, sizeof *q);
    if (map_size < HDR + FIPC_Q_MIN_CAPACITY)
        return FIPC_CORRUPT;
    uint32_t magic = atomic_load_explicit((_Atomic uint32_t *)(void *)(base + FIPC_Q_OFF_MAGIC),
                                          memory_order_acquire);
    uint32_t version;
    uint64_t capacity, maxsize;
    memcpy(&version, base + FIPC_Q_OFF_VERSION, 4);
    memcpy(&capacity, base + FIPC_Q_OFF_CAPACITY, 8);
    memcpy(&maxsize, base + FIPC_Q_OFF_MAXSIZE, 8);
    if (magic != (uint32_t)FIPC_Q_MAGIC_LO || version != FIPC_Q_VERSION ||
        capacity != map_size - HDR || capacity & (capacity - 1) || capacity > ((uint64_t)1 << 32))
        return FIPC_CORRUPT;
    q->base = base;
    q->map_size = map_size;
    q->capacity = capacity;
    q->maxsize = maxsize;
    q->spill_wfd = q->spill_rfd = -1;
    fipc_spin_set(&q->spin, spin);
    return 0;
}

int fipc_queue_set_spill(fipc_queue *q, const char *prefix, uint32_t mode)
{
    size_t n = strlen(prefix);
    if (n + 12 > sizeof q->spill_path) /* room for the seq's digits and the NUL */
        return -ENAMETOOLONG;
    memcpy(q->spill_path, prefix, n + 1);
    q->spill_mode = mode;
    return 0;
}

void fipc_queue_release(fipc_queue *q)
{
    if (q->spill_wfd >= 0)
        (void)close(q->spill_wfd); /* nothing to do about a failed close of a read-only use */
    if (q->spill_rfd >= 0)
        (void)close(q->spill_rfd);
    q->spill_wfd = q->spill_rfd = -1;
}

/* ---------------------------------------------------------------- locks and waits */

/* The deadline a put or get starts with (see lock): a try_only call waits for nothing, not
 * even a busy mutex (timeout 0, TRY_DEADLINE); any other computes it when it first waits. */
static int64_t first_deadline(int try_only, double *timeout)
{
    if (!try_only)
        return FIPC_DEADLINE_UNSET;
    *timeout = 0;
    return TRY_DEADLINE;
}

/* Take a robust mutex (-EBADF once this handle is closed). A dead owner's mutex comes back as EOWNERDEAD: the state it guards
 * changes only by single committing stores, so it is consistent as it is. */
static int lock(fipc_queue *q, size_t off, double timeout, int64_t *deadline)
{
    pthread_mutex_t *m = MUTEX(q, off);
    if (is_closed(q))
        return -EBADF;
    int rc = pthread_mutex_trylock(m);
    if (rc == 0)
        return 0;
    if (rc == EBUSY && *deadline == TRY_DEADLINE)
        return -EAGAIN;
    int64_t end = fipc_deadline_lazy(deadline, timeout);
    if (timeout == 0)
        end = fipc_now_ns() + LOCK_GRACE_NS;
    while (rc == EBUSY) {
        if (is_closed(q))
            return -EBADF;
        int64_t now = fipc_now_ns();
        if (end >= 0 && now >= end)
            return -ETIMEDOUT;
        int64_t until = end >= 0 && end - now < SLICE_NS ? end : now + SLICE_NS;
        struct timespec ts = {.tv_sec = until / 1000000000LL, .tv_nsec = until % 1000000000LL};
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
        if (rc == ETIMEDOUT)
            rc = EBUSY;
    }
    if (rc == EOWNERDEAD)
        rc = pthread_mutex_consistent(m);
    return -rc;
}

static void unlock(fipc_queue *q, size_t off)
{
    /* Only fails for a mutex we do not own, which lock() above rules out. */
    (void)pthread_mutex_unlock(MUTEX(q, off));
}

/* After a commit: wake the other side's sleepers, if any. */
static inline void notify(fipc_queue *q, size_t seq_off, size_t flag_off)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (LOAD(A32(q, flag_off), relaxed) &&
        atomic_exchange_explicit(A32(q, flag_off), 0u, memory_order_seq_cst)) {
        atomic_fetch_add_explicit(A32(q, seq_off), 1u, memory_order_seq_cst);
        fipc_futex_wake(A32(q, seq_off));
    }
}

/* Wait until the word at word_off differs from seen, or the one at word2_off from seen2 (the
 * ring's line and the spill's cursor of the other side): spin, then sleep on seq_off. */
static inline int changed(fipc_queue *q, size_t word_off, uint64_t seen, size_t word2_off,
                          uint64_t seen2)
{
    return atomic_load_explicit(A64(q, word_off), memory_order_seq_cst) != seen ||
           atomic_load_explicit(A64(q, word2_off), memory_order_seq_cst) != seen2;
}

static int wait_change(fipc_queue *q, size_t word_off, uint64_t seen, size_t word2_off,
                       uint64_t seen2, size_t seq_off, size_t flag_off, double timeout,
                       int64_t *deadline)
{
    if (timeout == 0)
        return -ETIMEDOUT;
    int64_t end = fipc_deadline_lazy(deadline, timeout);
    int64_t start = 0;
    if (q->spin.ns > 0) {
        start = fipc_now_ns();
        int64_t stop = start + q->spin.ns;
        if (end >= 0 && stop > end)
            stop = end;
        for (unsigned i = 1;; i++) {
            if (changed(q, word_off, seen, word2_off, seen2)) {
                fipc_spin_caught(&q->spin);
                return 0;
            }
            if ((i & 63u) == 0) {
                if (is_closed(q))
                    return -EBADF;
                if (fipc_now_ns() >= stop)
                    break;
                if ((i & 1023u) == 0)
                    sched_yield(); /* let a descheduled peer run on an oversubscribed CPU */
            }
            fipc_cpu_relax();
        }
    }
    for (int slept = 0;; slept = 1) {
        if (is_closed(q))
            return -EBADF;
        atomic_exchange_explicit(A32(q, flag_off), 1u, memory_order_seq_cst);
        uint32_t seq = LOAD(A32(q, seq_off), seq_cst);
        if (changed(q, word_off, seen, word2_off, seen2)) {
            if (slept && start)
                fipc_spin_slept(&q->spin, fipc_now_ns() - start);
            return 0;
        }
        int64_t left = SLICE_NS;
        if (end >= 0) {
            left = end - fipc_now_ns();
            if (left <= 0)
                return -ETIMEDOUT;
        }
        if (slept && fipc_runs_signal_handlers())
            return FIPC_SLEPT_A_SLICE;
        int rc = fipc_futex_wait(A32(q, seq_off), seq, left < SLICE_NS ? left : SLICE_NS);
        if (rc < 0)
            return rc;
    }
}

static int wait_space(fipc_queue *q, uint64_t head, uint64_t spill_r, double timeout,
                      int64_t *deadline)
{
    return wait_change(q, FIPC_Q_OFF_HEAD, head, FIPC_Q_OFF_SPILL_R, spill_r,
                       FIPC_Q_OFF_SPACE_SEQ, FIPC_Q_OFF_PUT_WAITING, timeout, deadline);
}

static int wait_data(fipc_queue *q, uint64_t tail, uint64_t spill_w, double timeout,
                     int64_t *deadline)
{
    return wait_change(q, FIPC_Q_OFF_TAIL, tail, FIPC_Q_OFF_SPILL_W, spill_w,
                       FIPC_Q_OFF_DATA_SEQ, FIPC_Q_OFF_GET_WAITING, timeout, deadline);
}

/* ---------------------------------------------------------------- the spill
 *
 * What does not fit the ring (maxsize 0, or fewer than maxsize messages queued) is appended
 * to spill files beside it, <name>.s<seq>: "FPCQSPIL", u64 seq, then frames as in the ring,
 * each at a multiple of 8, up to FIPC_Q_SPILL_FILE bytes a file (a larger frame takes a
 * file alone); a file ends with an END frame (length 0, kind 0), written before the write
 * cursor moves to the next file. The write cursor (seq << 32 | offset) moves under
 * put_lock, by one release store after the frames are written; the read cursor under
 * get_lock. Producers put into the ring only while `spilling` is 0; a producer sets it
 * before it spills and clears it once it sees the spill empty (read == write cursor), so
 * every ring message is older than every spilled one: consumers take from the ring first,
 * and from the spill (up to the write cursor read before they found the ring empty) only
 * when the ring is empty. Nothing read from a spill file is trusted. */

static inline uint64_t spill_count(fipc_queue *q)
{
    uint64_t got = LOAD(A64(q, FIPC_Q_OFF_SPILL_GOT), acquire);
    uint64_t put = LOAD(A64(q, FIPC_Q_OFF_SPILL_PUT), acquire);
    return put - got > ((uint64_t)1 << 62) ? 0 : put - got; /* a torn snapshot: 0 */
}

/* The fd of spill file seq, kept open in *fd (one per side of this handle). */
static int spill_open(fipc_queue *q, uint32_t seq, int create, int32_t *fd, uint32_t *fd_seq)
{
    if (*fd >= 0 && *fd_seq == seq)
        return *fd;
    if (q->spill_path[0] == 0)
        return -ENOSPC;
    char path[FIPC_Q_PATH_MAX];
    int n = snprintf(path, sizeof path, "%s%u", q->spill_path, seq);
    if (n < 0 || (size_t)n >= sizeof path)
        return -ENAMETOOLONG;
    int f = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | (create ? O_CREAT : 0),
                 (mode_t)q->spill_mode);
    if (f < 0)
        return -errno;
    if (*fd >= 0)
        (void)close(*fd);
    *fd = f;
    *fd_seq = seq;
    return f;
}

static int spill_unlink(fipc_queue *q, uint32_t seq)
{
    char path[FIPC_Q_PATH_MAX];
    int n = snprintf(path, sizeof path, "%s%u", q->spill_path, seq);
    if (n < 0 || (size_t)n >= sizeof path)
        return -ENAMETOOLONG;
    if (q->spill_rfd >= 0 && q->spill_rseq == seq) {
        (void)close(q->spill_rfd);
        q->spill_rfd = -1;
    }
    return unlink(path) < 0 && errno != ENOENT ? -errno : 0;
}

static int write_all(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwritev(fd, iov, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        off += (uint64_t)w;
        while (n > 0 && (size_t)w >= iov->iov_len) {
            w -= (ssize_t)iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + w;
            iov->iov_len -= (size_t)w;
        }
    }
    return 0;
}

static int read_all(int fd, char *dest, uint64_t n, uint64_t off)
{
    while (n > 0) {
        ssize_t r = pread(fd, dest, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return -errno;
        if (r == 0)
            return FIPC_CORRUPT; /* shorter than the cursor says */
        dest += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

#define SPILL_IOV 16

/* Under put_lock: append one frame at the (uncommitted) write cursor *w. */
static int spill_append(fipc_queue *q, uint64_t *w, const char *const *parts,
                        const uint64_t *lens, uint32_t n, uint64_t total, uint32_t kind)
{
    uint32_t seq = (uint32_t)(*w >> 32);
    uint64_t off = (uint32_t)*w;
    uint64_t frame = round8(FRAME + total);
    int fd, rc;
    if (n + 2 > SPILL_IOV)
        return -EINVAL;
    if (off != 0 && off + frame > FIPC_Q_SPILL_FILE) { /* end this file, go on in the next */
        uint32_t end[2] = {0, 0};
        struct iovec iov = {.iov_base = end, .iov_len = sizeof end};
        if ((fd = spill_open(q, seq, 0, &q->spill_wfd, &q->spill_wseq)) < 0 ||
            (rc = write_all(fd, &iov, 1, off)) < 0)
            return fd < 0 ? fd : rc;
        seq++;
        off = 0;
    }
    if ((fd = spill_open(q, seq, off == 0, &q->spill_wfd, &q->spill_wseq)) < 0)
        return fd;
    struct iovec iov[SPILL_IOV];
    int k = 0;
    uint64_t head[2] = {0, 0};
    if (off == 0) { /* a new file (or one a killed producer left: written over) */
        memcpy(head, SPILL_MAGIC, 8);
        head[1] = seq;
        iov[k++] = (struct iovec){.iov_base = head, .iov_len = sizeof head};
    }
    uint32_t hdr[2] = {(uint32_t)total, kind};
    iov[k++] = (struct iovec){.iov_base = hdr, .iov_len = sizeof hdr};
    for (uint32_t i = 0; i < n; i++)
        iov[k++] = (struct iovec){.iov_base = (void *)(uintptr_t)parts[i], .iov_len = lens[i]};
    if ((rc = write_all(fd, iov, k, off)) < 0)
        return rc;
    if (off == 0)
        off = FIPC_Q_SPILL_HEAD;
    *w = (uint64_t)seq << 32 | (off + frame);
    return 0;
}

/* Under put_lock, the spill drained up to its write cursor w: end the file there (the END
 * frame, for a consumer that has it open), remove it, and move the cursor to the next file,
 * so that a drained spill leaves no file behind. Best effort: on failure the file stays and
 * the next spill appends to it. */
static void spill_end(fipc_queue *q, uint64_t w)
{
    uint32_t seq = (uint32_t)(w >> 32), end[2] = {0, 0};
    struct iovec iov = {.iov_base = end, .iov_len = sizeof end};
    int fd;
    if ((uint32_t)w == 0 || (fd = spill_open(q, seq, 0, &q->spill_wfd, &q->spill_wseq)) < 0 ||
        write_all(fd, &iov, 1, (uint32_t)w) < 0 || spill_unlink(q, seq) < 0)
        return;
    STORE(A64(q, FIPC_Q_OFF_SPILL_W), (uint64_t)(seq + 1) << 32, release);
}

/* Under put_lock: commit what spill_append wrote (one release store of the cursor). */
static void spill_commit(fipc_queue *q, uint64_t w, uint64_t added)
{
    STORE(A64(q, FIPC_Q_OFF_SPILL_PUT), LOAD(A64(q, FIPC_Q_OFF_SPILL_PUT), relaxed) + added,
          relaxed);
    STORE(A64(q, FIPC_Q_OFF_SPILL_W), w, release);
}

static int room(fipc_queue *q, uint64_t frame, uint64_t *tail, uint64_t *head, int *fits);

/* Under put_lock, past the hot check: whether this put goes to the spill (1), to the ring
 * (0: room there, the spill empty), or must wait for room (2: maxsize messages queued). */
static int spill_route(fipc_queue *q, uint64_t frame, uint64_t *tail, uint64_t *head,
                       uint64_t *spill_r, int *rc, int may_wait)
{
    int fits;
    *spill_r = LOAD(A64(q, FIPC_Q_OFF_SPILL_R), acquire); /* before deciding: wait_space */
    if (LOAD(A32(q, FIPC_Q_OFF_SPILLING), relaxed)) {
        if (*spill_r != LOAD(A64(q, FIPC_Q_OFF_SPILL_W), relaxed)) {
            uint64_t used, count;
            *tail = LOAD(A64(q, FIPC_Q_OFF_TAIL), relaxed);
            *head = LOAD(A64(q, FIPC_Q_OFF_HEAD), acquire);
            if ((*rc = span(q, *head, *tail, &used, &count)) < 0)
                return 2;
            if (q->maxsize && count + spill_count(q) >= q->maxsize)
                return 2;
            /* consumers moved since this handle's last grace ran out: give them one more,
             * so that the spill drains and the stream comes back to the ring (a producer
             * faster than its consumers would otherwise keep it in the slower spill) */
            return may_wait && (*spill_r != __atomic_load_n(&q->stalled_r, __ATOMIC_RELAXED) ||
                                *head != __atomic_load_n(&q->stalled_head, __ATOMIC_RELAXED))
                       ? 3
                       : 1;
        }
        STORE(A32(q, FIPC_Q_OFF_SPILLING), 0u, relaxed); /* drained: back to the ring */
        spill_end(q, *spill_r);
    }
    *rc = room(q, frame, tail, head, &fits);
    if (*rc < 0 || fits)
        return *rc < 0 ? 2 : 0;
    uint64_t used, count;
    (void)span(q, *head, *tail, &used, &count); /* checked by room() */
    if ((q->maxsize && count >= q->maxsize) || q->spill_path[0] == 0)
        return 2;
    if (may_wait)
        return 3;
    STORE(A32(q, FIPC_Q_OFF_SPILLING), 1u, relaxed);
    return 1;
}

/* A put that may wait and finds the ring full (the spill empty, or the spill being drained by
 * consumers that moved since the last grace ran out) first waits up to this long for room: a
 * consumer that keeps up (descheduled for a moment) keeps the messages in the ring, and the
 * spill, slower, takes them only when consumers fall behind for longer. */
#define SPILL_GRACE_NS 10000000LL

/* After spill_route said 3: wait for room until the grace (or the deadline) ends. 0: look
 * again (*grace_end < 0 once the grace is spent: spill then), or -errno. */
static int spill_grace(fipc_queue *q, uint64_t head, uint64_t spill_r, double timeout,
                       int64_t *deadline, int64_t *grace_end)
{
    int64_t now = fipc_now_ns(), end = fipc_deadline_lazy(deadline, timeout);
    if (*grace_end == 0)
        *grace_end = now + SPILL_GRACE_NS;
    if (end < 0 || end > *grace_end)
        end = *grace_end;
    int rc = -ETIMEDOUT;
    if (end > now) {
        int64_t until = FIPC_DEADLINE_UNSET;
        rc = wait_space(q, head, spill_r, (double)(end - now) / 1e9, &until);
    }
    if (rc == -ETIMEDOUT) { /* spent: spill, and no grace again until consumers move */
        *grace_end = -1;
        __atomic_store_n(&q->stalled_head, head, __ATOMIC_RELAXED);
        __atomic_store_n(&q->stalled_r, spill_r, __ATOMIC_RELAXED);
        return 0;
    }
    return rc;
}

/* ---------------------------------------------------------------- producers */

/* The clock of the freshness checks below: CLOCK_MONOTONIC_COARSE (the kernel's last tick,
 * a few ms coarse) costs a few ns where a precise reading costs 20-30 ns, and a bound of
 * 100 ms needs no more. */
static inline int64_t coarse_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Whether a word read at *when (coarse_now_ns) may still serve as a bound. The 32-bit halves
 * of the words wrap after 32 GiB or 2^32 messages; a value read within the last 100 ms (plus
 * the coarse clock's tick) cannot be that far behind (the ring cannot move 32 GiB in that
 * time), so the modular arithmetic on it is sound. Older ones are read again. */
static inline int fresh(const int64_t *when)
{
    return coarse_now_ns() - *when < 100000000LL;
}

/* Under the put lock: the tail, a head, and whether a frame of `frame` bytes fits. The head
 * last seen is tried first: head only grows, so it under-states the room and over-states
 * the count, and the shared head word (the consumers' cache line) is read only when it says
 * no. It is refreshed at least once per capacity bytes put (the span check fails then). */
static int room(fipc_queue *q, uint64_t frame, uint64_t *tail, uint64_t *head, int *fits)
{
    uint64_t used, count;
    *tail = LOAD(A64(q, FIPC_Q_OFF_TAIL), relaxed);
    *head = q->head_seen;
    if (fresh(&q->head_seen_ns) && span(q, *head, *tail, &used, &count) == 0 &&
        q->capacity - used >= frame &&
        (q->maxsize == 0 || count < q->maxsize)) {
        *fits = 1;
        return 0;
    }
    *head = q->head_seen = LOAD(A64(q, FIPC_Q_OFF_HEAD), acquire);
    q->head_seen_ns = coarse_now_ns();
    int rc = span(q, *head, *tail, &used, &count);
    *fits = rc == 0 && q->capacity - used >= frame && (q->maxsize == 0 || count < q->maxsize);
    return rc;
}

static void write_frame(fipc_queue *q, uint64_t tail, const char *const *parts,
                        const uint64_t *lens, uint32_t n, uint64_t total, uint32_t kind)
{
    uint64_t off = offset_of(q, tail);
    uint32_t hdr[2] = {(uint32_t)total, kind};
    memcpy(q->base + HDR + off, hdr, sizeof hdr); /* 8-aligned: never split */
    off = (off + FRAME) & (q->capacity - 1);
    for (uint32_t i = 0; i < n; i++) {
        ring_write(q, off, parts[i], lens[i]);
        off = (off + lens[i]) & (q->capacity - 1);
    }
}

static int put_parts(fipc_queue *q, const char *const *parts, const uint64_t *lens, uint32_t n,
                     uint32_t kind, double timeout, char *committed, int try_only)
{
    uint64_t total = 0;
    for (uint32_t i = 0; i < n; i++)
        total += lens[i];
    uint64_t frame = round8(FRAME + total);
    if (frame > q->capacity / 2 || total > UINT32_MAX || kind == 0 || kind > KIND_MAX)
        return -EMSGSIZE;
    int64_t deadline = first_deadline(try_only, &timeout), grace_end = 0;
    for (;;) {
        int rc = lock(q, FIPC_Q_OFF_PUT_LOCK, timeout, &deadline);
        if (rc < 0)
            return rc;
        uint64_t tail, head, spill_r = 0;
        int fits = 0, route;
        if (LOAD(A32(q, FIPC_Q_OFF_SPILLING), relaxed) == 0) /* the hot path's spill check */
            rc = room(q, frame, &tail, &head, &fits);
        if (try_only && (rc < 0 || !fits)) {
            unlock(q, FIPC_Q_OFF_PUT_LOCK);
            return -EAGAIN;
        }
        route = fits ? 0 : spill_route(q, frame, &tail, &head, &spill_r, &rc,
                                       timeout != 0 && grace_end >= 0);
        if (route == 0) {
            write_frame(q, tail, parts, lens, n, total, kind);
            STORE(A64(q, FIPC_Q_OFF_TAIL), advance(tail, frame, 1), release);
            if (committed)
                *committed = 1;
        } else if (route == 1) {
            uint64_t w = LOAD(A64(q, FIPC_Q_OFF_SPILL_W), relaxed);
            rc = spill_append(q, &w, parts, lens, n, total, kind);
            if (rc == 0) {
                spill_commit(q, w, 1);
                if (committed)
                    *committed = 1;
            }
        }
        unlock(q, FIPC_Q_OFF_PUT_LOCK);
        if (rc < 0)
            return rc;
        if (route < 2) {
            notify(q, FIPC_Q_OFF_DATA_SEQ, FIPC_Q_OFF_GET_WAITING);
            return 0;
        }
        if (route == 3)
            rc = spill_grace(q, head, spill_r, timeout, &deadline, &grace_end);
        else
            rc = wait_space(q, head, spill_r, timeout, &deadline);
        if (rc < 0)
            return rc;
    }
}

static int put_many(fipc_queue *q, const char *buf, const uint64_t *lens, uint64_t count,
                        uint32_t kind, double timeout, uint64_t *sent, int try_only)
{
    *sent = 0;
    if (kind == 0 || kind > KIND_MAX)
        return -EINVAL;
    for (uint64_t i = 0; i < count; i++)
        if (round8(FRAME + lens[i]) > q->capacity / 2 || lens[i] > UINT32_MAX)
            return -EMSGSIZE;
    int64_t deadline = first_deadline(try_only, &timeout), grace_end = 0;
    while (*sent < count) {
        int rc = lock(q, FIPC_Q_OFF_PUT_LOCK, timeout, &deadline);
        if (rc < 0)
            return rc;
        uint64_t tail, head, used, queued, start = *sent, spill_r = 0;
        int again = 0, grace = 0;
        rc = span(q, head = LOAD(A64(q, FIPC_Q_OFF_HEAD), acquire),
                  tail = LOAD(A64(q, FIPC_Q_OFF_TAIL), relaxed), &used, &queued);
        uint64_t w = tail;
        int spilling = LOAD(A32(q, FIPC_Q_OFF_SPILLING), relaxed) != 0;
        while (rc == 0 && *sent < count && !spilling) {
            uint64_t len = lens[*sent], frame = round8(FRAME + len);
            if (q->capacity - used < frame || (q->maxsize && queued >= q->maxsize))
                break;
            write_frame(q, w, &buf, &len, 1, len, kind);
            buf += len;
            w = advance(w, frame, 1);
            used += frame;
            queued++;
            (*sent)++;
        }
        if (*sent > start)
            STORE(A64(q, FIPC_Q_OFF_TAIL), w, release);
        uint64_t ring_sent = *sent;
        if (try_only && rc == 0 && *sent < count) { /* the rest may have to wait: not here */
            unlock(q, FIPC_Q_OFF_PUT_LOCK);
            if (*sent > start)
                notify(q, FIPC_Q_OFF_DATA_SEQ, FIPC_Q_OFF_GET_WAITING);
            return -EAGAIN;
        }
        if (rc == 0 && *sent < count) { /* the rest to the spill, if it may go there */
            int route = spill_route(q, round8(FRAME + lens[*sent]), &tail, &head, &spill_r,
                                    &rc, timeout != 0 && grace_end >= 0);
            again = route == 0; /* the spill was drained: the ring again, at once */
            grace = route == 3;
            if (route == 1) {
                uint64_t sw = LOAD(A64(q, FIPC_Q_OFF_SPILL_W), relaxed);
                uint64_t queued_all = queued + spill_count(q);
                while (*sent < count && rc == 0 &&
                       (q->maxsize == 0 || queued_all < q->maxsize)) {
                    uint64_t len = lens[*sent];
                    if ((rc = spill_append(q, &sw, &buf, &len, 1, len, kind)) < 0)
                        break;
                    buf += len;
                    queued_all++;
                    (*sent)++;
                }
                if (*sent > ring_sent)
                    spill_commit(q, sw, *sent - ring_sent);
            }
        }
        unlock(q, FIPC_Q_OFF_PUT_LOCK);
        if (*sent > start)
            notify(q, FIPC_Q_OFF_DATA_SEQ, FIPC_Q_OFF_GET_WAITING);
        if (rc < 0)
            return rc;
        if (*sent < count && !again &&
            (rc = grace ? spill_grace(q, head, spill_r, timeout, &deadline, &grace_end)
                        : wait_space(q, head, spill_r, timeout, &deadline)) < 0)
            return rc;
    }
    return 0;
}

/* ---------------------------------------------------------------- consumers */

/* Under the get lock: the frame at head (length, kind, frame bytes), checked. 1 if there is
 * one, 0 if the ring is empty, FIPC_CORRUPT. */
static int peek(fipc_queue *q, uint64_t head, uint64_t tail, uint64_t *len, uint32_t *kind,
                uint64_t *frame)
{
    uint64_t used, count;
    int rc = span(q, head, tail, &used, &count);
    if (rc < 0)
        return rc;
    if (count == 0)
        return 0;
    uint32_t hdr[2];
    memcpy(hdr, q->base + HDR + offset_of(q, head), sizeof hdr);
    *len = hdr[0];
    *kind = hdr[1];
    *frame = round8(FRAME + *len);
    if (*frame > used || *frame > q->capacity / 2 || *kind == 0 || *kind > KIND_MAX)
        return FIPC_CORRUPT;
    return 1;
}

/* Under get_lock, the spill just read up to its write cursor r: if no producer holds
 * put_lock, remove the drained file and start both cursors at the next one (its file made by
 * the next spill), back to the ring. A producer busy now leaves it for a later drain. */
static void spill_drained(fipc_queue *q, uint64_t r)
{
    pthread_mutex_t *m = MUTEX(q, FIPC_Q_OFF_PUT_LOCK);
    int rc = pthread_mutex_trylock(m);
    if (rc == EOWNERDEAD)
        rc = pthread_mutex_consistent(m);
    if (rc != 0)
        return;
    if (LOAD(A64(q, FIPC_Q_OFF_SPILL_W), relaxed) == r && (uint32_t)r != 0 &&
        spill_unlink(q, (uint32_t)(r >> 32)) == 0) {
        uint64_t next = (uint64_t)((uint32_t)(r >> 32) + 1) << 32;
        STORE(A64(q, FIPC_Q_OFF_SPILL_W), next, release);
        STORE(A64(q, FIPC_Q_OFF_SPILL_R), next, release);
        STORE(A32(q, FIPC_Q_OFF_SPILLING), 0u, relaxed);
    }
    unlock(q, FIPC_Q_OFF_PUT_LOCK);
}

/* Under get_lock, the ring empty: take spilled frames up to the write cursor w into dest
 * (from *off), as get_many takes ring frames; commits them (and passes each file's END, which
 * it then removes). Returns the new count of frames taken; an error only when none was. */
static uint64_t spill_take(fipc_queue *q, uint64_t w, char *dest, uint64_t cap, uint64_t *off,
                           uint64_t *lens, uint32_t *kinds, uint64_t got, uint64_t max,
                           int64_t *result)
{
    uint64_t r = LOAD(A64(q, FIPC_Q_OFF_SPILL_R), relaxed), taken = 0;
    int rc = 0;
    while (got < max && r != w) {
        uint32_t seq = (uint32_t)(r >> 32), wseq = (uint32_t)(w >> 32);
        uint64_t at = (uint32_t)r, end = (uint32_t)w;
        if ((int32_t)(wseq - seq) < 0 || (seq == wseq && at >= end)) {
            rc = FIPC_CORRUPT;
            break;
        }
        int fd = spill_open(q, seq, 0, &q->spill_rfd, &q->spill_rseq);
        uint32_t hdr[2] = {1, 1};
        if (fd == -ENOENT && seq != wseq) { /* ended and removed by a producer */
            hdr[0] = hdr[1] = 0;
        } else if (fd < 0) {
            rc = fd;
            break;
        } else {
            if (at == 0)
                at = FIPC_Q_SPILL_HEAD;
            if ((rc = read_all(fd, (char *)hdr, sizeof hdr, at)) < 0)
                break;
        }
        if (hdr[0] == 0 && hdr[1] == 0 && seq != wseq) { /* END: on to the next file */
            r = (uint64_t)(seq + 1) << 32;
            STORE(A64(q, FIPC_Q_OFF_SPILL_GOT), LOAD(A64(q, FIPC_Q_OFF_SPILL_GOT), relaxed) +
                  taken, relaxed);
            STORE(A64(q, FIPC_Q_OFF_SPILL_R), r, release); /* before the file goes */
            taken = 0;
            if ((rc = spill_unlink(q, seq)) < 0)
                break;
            continue;
        }
        uint64_t len = hdr[0], frame = round8(FRAME + len);
        if (hdr[1] == 0 || hdr[1] > KIND_MAX || frame > q->capacity / 2 ||
            (seq == wseq && at + frame > end)) {
            rc = FIPC_CORRUPT;
            break;
        }
        if (len > cap - *off) {
            if (got == 0) {
                q->last_len = len;
                q->last_kind = hdr[1];
                rc = FIPC_NEED;
            }
            break;
        }
        if ((rc = read_all(fd, dest + *off, len, at + FRAME)) < 0)
            break;
        lens[got] = len;
        kinds[got] = hdr[1];
        q->last_len = len;
        q->last_kind = hdr[1];
        *off += len;
        got++;
        taken++;
        r = (uint64_t)seq << 32 | (at + frame);
    }
    if (taken) {
        STORE(A64(q, FIPC_Q_OFF_SPILL_GOT), LOAD(A64(q, FIPC_Q_OFF_SPILL_GOT), relaxed) + taken,
              relaxed);
        STORE(A64(q, FIPC_Q_OFF_SPILL_R), r, release);
        if (r == w)
            spill_drained(q, r);
    }
    if (rc < 0 && got == 0)
        *result = rc;
    return got;
}

static int64_t get_many(fipc_queue *q, char *dest, uint64_t cap, uint64_t *lens,
                        uint32_t *kinds, uint64_t max, double timeout, int try_only, int mark)
{
    int64_t deadline = first_deadline(try_only, &timeout);
    for (;;) {
        int rc = lock(q, FIPC_Q_OFF_GET_LOCK, timeout, &deadline);
        if (rc < 0)
            return rc;
        uint64_t head = LOAD(A64(q, FIPC_Q_OFF_HEAD), relaxed);
        /* The tail last seen is a lower bound of tail: frames up to it are committed. The
         * producers' line is read only when it shows nothing to take (or head passed it). */
        uint64_t tail = q->tail_seen, used, count;
        if (!fresh(&q->tail_seen_ns) || span(q, head, tail, &used, &count) < 0 || count == 0) {
            tail = q->tail_seen = LOAD(A64(q, FIPC_Q_OFF_TAIL), acquire);
            q->tail_seen_ns = coarse_now_ns();
        }
        uint64_t h = head, got = 0, off = 0, spill_w = 0;
        int64_t result = 0;
        int ring_empty = 0;
        while (got < max) {
            uint64_t len, frame;
            uint32_t kind;
            rc = peek(q, h, tail, &len, &kind, &frame);
            if (rc == 0) {
                /* The spill's cursor first, then the ring empty at a later look: the frames
                 * spilled up to that cursor are older than any the ring will hold. */
                spill_w = LOAD(A64(q, FIPC_Q_OFF_SPILL_W), acquire);
                uint64_t t = q->tail_seen = LOAD(A64(q, FIPC_Q_OFF_TAIL), acquire);
                q->tail_seen_ns = coarse_now_ns();
                if (t != tail) {
                    tail = t;
                    continue;
                }
                ring_empty = 1;
            }
            if (rc <= 0) {
                if (rc < 0 && got == 0)
                    result = rc;
                break;
            }
            if (len > cap - off) {
                if (got == 0) {
                    q->last_len = len;
                    q->last_kind = kind;
                    result = FIPC_NEED;
                }
                break;
            }
            ring_read(q, (offset_of(q, h) + FRAME) & (q->capacity - 1), dest + off, len);
            lens[got] = len;
            kinds[got] = kind;
            q->last_len = len;
            q->last_kind = kind;
            off += len;
            h = advance(h, frame, 1);
            got++;
        }
        if (got)
            STORE(A64(q, FIPC_Q_OFF_HEAD), h, release);
        if (ring_empty && got < max && spill_w != LOAD(A64(q, FIPC_Q_OFF_SPILL_R), relaxed))
            got = spill_take(q, spill_w, dest, cap, &off, lens, kinds, got, max, &result);
        unlock(q, FIPC_Q_OFF_GET_LOCK);
        if (got) {
            /* the mark: what this call took, beside it, before Python sees the call return */
            if (mark)
                memcpy(dest + cap, &got, sizeof got);
            notify(q, FIPC_Q_OFF_SPACE_SEQ, FIPC_Q_OFF_PUT_WAITING);
            return (int64_t)got;
        }
        if (result < 0)
            return result;
        if ((rc = wait_data(q, tail, spill_w, timeout, &deadline)) < 0)
            return rc;
    }
}

/* ---------------------------------------------------------------- entry points */

/* A call on a closed handle returns -EBADF; the waits inside look at `closed` too. The
 * calls in progress are counted by the caller (the native handle's busy count, or the pure
 * backend's), which frees the mapping only once none is. */
static inline int enter(fipc_queue *q)
{
    return is_closed(q) ? -EBADF : 0;
}

int fipc_queue_put(fipc_queue *q, const char *const *parts, const uint64_t *lens, uint32_t n,
                   uint32_t kind, double timeout)
{
    int rc = enter(q);
    return rc ? rc : put_parts(q, parts, lens, n, kind, timeout, NULL, 0);
}

int fipc_queue_put_ref(fipc_queue *q, const char *data, uint64_t len, uint32_t kind,
                       double timeout, char *committed)
{
    int rc = enter(q);
    return rc ? rc : put_parts(q, &data, &len, 1, kind, timeout, committed, 0);
}

int fipc_queue_put1(fipc_queue *q, const char *data, uint64_t len, uint32_t kind,
                    double timeout)
{
    return fipc_queue_put(q, &data, &len, 1, kind, timeout);
}

int fipc_queue_put_many(fipc_queue *q, const char *buf, const uint64_t *lens, uint64_t count,
                        uint32_t kind, double timeout, uint64_t *sent)
{
    *sent = 0;
    int rc = enter(q);
    return rc ? rc : put_many(q, buf, lens, count, kind, timeout, sent, 0);
}

int64_t fipc_queue_get_many(fipc_queue *q, char *dest, uint64_t cap, uint64_t *lens,
                            uint32_t *kinds, uint64_t max, double timeout)
{
    memset(dest + cap, 0, FIPC_Q_MARK); /* first: a mark seen after the call is this call's */
    int64_t rc = enter(q);
    return rc ? rc : get_many(q, dest, cap, lens, kinds, max, timeout, 0, 1);
}

int64_t fipc_queue_get(fipc_queue *q, char *dest, uint64_t cap, double timeout,
                       uint32_t want)
{
    uint64_t len;
    uint32_t kind;
    int64_t rc = fipc_queue_get_many(q, dest, cap, &len, &kind, 1, timeout);
    if (rc != 1)
        return rc;
    uint64_t mark = (uint64_t)kind << 32 | len;
    memcpy(dest + cap, &mark, sizeof mark);
    return kind == want ? (int64_t)len : (int64_t)kind << 32 | (int64_t)len;
}

int fipc_queue_put_h(fipc_queue *q, const char *data, uint64_t len, uint32_t kind,
                     double timeout, int try_only)
{
    int rc = enter(q);
    return rc ? rc : put_parts(q, &data, &len, 1, kind, timeout, NULL, try_only);
}

int fipc_queue_put_many_h(fipc_queue *q, const char *buf, const uint64_t *lens, uint64_t count,
                          uint32_t kind, double timeout, int try_only, uint64_t *sent)
{
    *sent = 0;
    int rc = enter(q);
    return rc ? rc : put_many(q, buf, lens, count, kind, timeout, sent, try_only);
}

int64_t fipc_queue_get_many_h(fipc_queue *q, char *dest, uint64_t cap, uint64_t *lens,
                              uint32_t *kinds, uint64_t max, double timeout, int try_only)
{
    int64_t rc = enter(q);
    return rc ? rc : get_many(q, dest, cap, lens, kinds, max, timeout, try_only, 0);
}

/* ---------------------------------------------------------------- state */

/* head then tail, retried until head did not move meanwhile: one consistent snapshot */
static int snapshot(fipc_queue *q, uint64_t *used, uint64_t *count)
{
    for (int i = 0; i < 100; i++) {
        uint64_t head = LOAD(A64(q, FIPC_Q_OFF_HEAD), acquire);
        uint64_t tail = LOAD(A64(q, FIPC_Q_OFF_TAIL), acquire);
        if (LOAD(A64(q, FIPC_Q_OFF_HEAD), acquire) == head)
            return span(q, head, tail, used, count);
    }
    return FIPC_CORRUPT;
}

/* A snapshot's message count (want_count) or bytes in use; 0 if inconsistent. */
static int64_t state(fipc_queue *q, int want_count)
{
    uint64_t used, count;
    int64_t rc = enter(q);
    if (rc == 0)
        rc = snapshot(q, &used, &count) < 0 ? 0
             : (int64_t)(want_count ? count + spill_count(q) : used);
    return rc;
}

int64_t fipc_queue_count(fipc_queue *q)
{
    return state(q, 1);
}

int64_t fipc_queue_used(fipc_queue *q)
{
    return state(q, 0);
}

void fipc_queue_close(fipc_queue *q)
{
    __atomic_store_n(&q->closed, 1, __ATOMIC_SEQ_CST);
    if (q->base == NULL)
        return;
    /* bump both futex words so that a sleeper between its check and its sleep wakes too */
    atomic_fetch_add_explicit(A32(q, FIPC_Q_OFF_DATA_SEQ), 1u, memory_order_seq_cst);
    atomic_fetch_add_explicit(A32(q, FIPC_Q_OFF_SPACE_SEQ), 1u, memory_order_seq_cst);
    fipc_futex_wake(A32(q, FIPC_Q_OFF_DATA_SEQ));
    fipc_futex_wake(A32(q, FIPC_Q_OFF_SPACE_SEQ));
}

int fipc_queue_park(fipc_queue *q, int64_t room, uint64_t *seq_off, uint32_t *seq)
{
    int rc = enter(q);
    if (rc < 0)
        return rc;
    size_t s = room < 0 ? FIPC_Q_OFF_DATA_SEQ : FIPC_Q_OFF_SPACE_SEQ;
    atomic_exchange_explicit(A32(q, room < 0 ? FIPC_Q_OFF_GET_WAITING : FIPC_Q_OFF_PUT_WAITING),
                             1u, memory_order_seq_cst);
    *seq_off = s;
    *seq = LOAD(A32(q, s), seq_cst);
    uint64_t used, count;
    rc = snapshot(q, &used, &count); /* after the flag: a commit before it shows here */
    if (rc == 0) {
        uint64_t queued = count + spill_count(q);
        if (room < 0)
            rc = count > 0 || LOAD(A64(q, FIPC_Q_OFF_SPILL_W), acquire) !=
                                  LOAD(A64(q, FIPC_Q_OFF_SPILL_R), acquire);
        else if (q->spill_path[0]) /* what does not fit the ring goes to the spill */
            rc = q->maxsize == 0 || queued < q->maxsize;
        else
            rc = (uint64_t)room <= q->capacity &&
                 q->capacity - used >= round8(FRAME + (uint64_t)room) &&
                 (q->maxsize == 0 || count < q->maxsize);
    }
    return rc;
}
