/* The shared-memory channel: a single-producer single-consumer byte ring in a POSIX shm
 * segment, laid out as docs/shm-layout.md describes.
 *
 * Ordering: the writer copies a frame, then publishes the new head with a release store;
 * the reader loads head with acquire before reading frames, and publishes its tail with a
 * release store once it is done with them. Waits spin for a bounded, adaptive time, then
 * sleep on a futex word; a sleeper first raises its "waiting" flag and the other side
 * checks that flag after a full fence (Dekker), so the fast path never makes a syscall and
 * a wake-up is never lost. Sleeps are cut into slices so that a dead peer is noticed.
 *
 * Nothing read from the mapping is trusted: head, tail, frame lengths and kinds are checked
 * against the capacity derived from the mapping's real size (FIPC_CORRUPT otherwise). */
#include "shm.h"

#define FIPC_RING_T fipc_shm
#define FIPC_RING_LAYOUT FIPC_SHM_
#define FIPC_RING_ALIGN 8u
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sys/mman.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAGIC ((uint32_t)FIPC_SHM_MAGIC) /* "FSHM" little-endian */
#define VERSION ((uint32_t)FIPC_SHM_VERSION)
#define HDR ((uint64_t)FIPC_SHM_HEADER)
#define MIN_CAPACITY ((uint64_t)FIPC_SHM_MIN_CAPACITY)

#define OFF_MAGIC FIPC_SHM_OFF_MAGIC
#define OFF_WPID FIPC_SHM_OFF_WPID
#define OFF_WSTATE FIPC_SHM_OFF_WSTATE
#define OFF_RPID FIPC_SHM_OFF_RPID
#define OFF_RSTATE FIPC_SHM_OFF_RSTATE
#define OFF_HEAD FIPC_SHM_OFF_HEAD
#define OFF_TAIL FIPC_SHM_OFF_TAIL
#define OFF_DSEQ FIPC_SHM_OFF_DSEQ
#define OFF_RWAIT FIPC_SHM_OFF_RWAIT
#define OFF_SSEQ FIPC_SHM_OFF_SSEQ
#define OFF_WWAIT FIPC_SHM_OFF_WWAIT



_Static_assert(FIPC_SHM_ST_OPEN == ST_OPEN && FIPC_SHM_ST_CLOSED == ST_CLOSED &&
                   FIPC_SHM_MAX_CHUNK == MAX_CHUNK, "as ring.h has them");
#define PROBE_NS 10000000LL  /* a try-once call probes the peer's lock at most this often */


/* ---------------------------------------------------------------- peers */

/* Liveness: each open end holds an OFD write lock on its own byte of the segment file
 * (taken in Python, src/fastipc/_shm_layout.py). The kernel drops it with the last reference
 * to that open file description, so it proves the end alive across pid reuse and pid
 * namespaces, where kill(pid, 0) cannot. */
int fipc_shm_lock_held(int fd, int64_t byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    return fl.l_type != F_UNLCK;
}

/* ---------------------------------------------------------------- SIGBUS */

/* A peer that truncates the segment makes our next access to the lost pages raise SIGBUS.
 * Every live mapping is registered here; the handler (installed once, chaining to the
 * previous one for faults elsewhere) marks the handle whose mapping holds the address broken
 * and maps an anonymous zero page over the lost one, so the access completes (it reads zeros,
 * its writes go nowhere) instead of killing the process. Every entry point checks `broken`
 * when it ends and returns FIPC_CORRUPT instead of whatever it made of those zeros: the hot
 * path pays one load of a field it has in cache, no setjmp. Waits also stop on `broken`. */
#define BUS_SLOTS 256
static struct {
    _Atomic uintptr_t base;
    uint64_t size;
    fipc_shm *h;
} bus_slots[BUS_SLOTS];
static struct sigaction bus_previous;
static long bus_page;
static pthread_once_t bus_once = PTHREAD_ONCE_INIT;

static void on_sigbus(int sig, siginfo_t *info, void *ctx)
{
    uintptr_t a = (uintptr_t)info->si_addr;
    for (int i = 0; i < BUS_SLOTS; i++) {
        uintptr_t b = atomic_load_explicit(&bus_slots[i].base, memory_order_acquire);
        if (b <= 1 || a - b >= bus_slots[i].size)
            continue;
        atomic_store_explicit((_Atomic int32_t *)&bus_slots[i].h->broken, 1,
                              memory_order_relaxed);
        void *page = (void *)(a & ~(uintptr_t)(bus_page - 1));
        if (mmap(page, (size_t)bus_page, PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) != MAP_FAILED)
            return; /* the access is made again, on the zero page */
        break;
    }
    if (bus_previous.sa_flags & SA_SIGINFO) {
        bus_previous.sa_sigaction(sig, info, ctx);
    } else if (bus_previous.sa_handler != SIG_IGN && bus_previous.sa_handler != SIG_DFL) {
        bus_previous.sa_handler(sig);
    } else { /* not ours: die of it as we would have without this handler */
        (void)sigaction(SIGBUS, &bus_previous, NULL);
    }
}

static void install_sigbus(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    bus_page = sysconf(_SC_PAGESIZE);
    if (bus_page <= 0 || sigaction(SIGBUS, &sa, &bus_previous) < 0)
        bus_previous.sa_handler = SIG_DFL; /* unguarded: a truncation kills, as before */
}

/* Claim a free slot (0 -> 1), fill it, then publish its base. More than BUS_SLOTS live
 * mappings in one process: the others are unguarded. */
static void bus_register(fipc_shm *h)
{
    (void)pthread_once(&bus_once, install_sigbus);
    for (int i = 0; i < BUS_SLOTS; i++) {
        uintptr_t free_slot = 0;
        if (!atomic_compare_exchange_strong(&bus_slots[i].base, &free_slot, (uintptr_t)1))
            continue;
        bus_slots[i].size = h->map_size;
        bus_slots[i].h = h;
        atomic_store_explicit(&bus_slots[i].base, (uintptr_t)h->base, memory_order_release);
        return;
    }
}

void fipc_shm_forget(fipc_shm *h)
{
    for (int i = 0; i < BUS_SLOTS; i++) {
        uintptr_t mine = (uintptr_t)h->base;
        if (bus_slots[i].h == h &&
            atomic_compare_exchange_strong(&bus_slots[i].base, &mine, (uintptr_t)0))
            return;
    }
}

static inline int is_broken(fipc_shm *h)
{
    return atomic_load_explicit((_Atomic int32_t *)&h->broken, memory_order_relaxed);
}

/* ---------------------------------------------------------------- set-up */

int fipc_shm_writer_init(fipc_shm *h, char *base, uint64_t map_size, int32_t fd, int32_t pid,
                         uint64_t max_message, double spin)
{
    if (base == NULL || !fipc_ring_fits(map_size, HDR, MIN_CAPACITY) || pid <= 0)
        return -EINVAL;
    ring_setup(h, base, map_size, fd, FIPC_RING_WRITER, max_message, spin);
    ring_write_header(h, VERSION);
    STORE(A32(h, OFF_WPID), (uint32_t)pid, relaxed);
    STORE(A32(h, OFF_WSTATE), ST_OPEN, relaxed);
    STORE(A32(h, OFF_MAGIC), MAGIC, release); /* last: the header is complete */
    bus_register(h);
    return 0;
}

int fipc_shm_reader_init(fipc_shm *h, char *base, uint64_t map_size, int32_t fd, int32_t pid,
                         uint64_t max_message, double spin)
{
    if (base == NULL || pid <= 0)
        return -EINVAL;
    if (!fipc_ring_fits(map_size, HDR, MIN_CAPACITY))
        return FIPC_CORRUPT;
    ring_setup(h, base, map_size, fd, FIPC_RING_READER, max_message, spin);
    if (LOAD(A32(h, OFF_MAGIC), acquire) != MAGIC || !ring_header_ok(h, VERSION))
        return FIPC_CORRUPT;
    uint64_t cap = h->capacity;
    int32_t wpid = (int32_t)LOAD(A32(h, OFF_WPID), relaxed);
    uint32_t wstate = LOAD(A32(h, OFF_WSTATE), acquire);
    if (wpid <= 0 || (wstate != ST_OPEN && wstate != ST_CLOSED))
        return FIPC_CORRUPT;
    if (LOAD(A32(h, OFF_RSTATE), acquire) != 0)
        return -EBUSY; /* a reader attached before us */
    uint64_t tail = LOAD(A64(h, OFF_TAIL), acquire);
    uint64_t head = LOAD(A64(h, OFF_HEAD), acquire);
    if ((tail & 7u) || (head & 7u) || head - tail > cap)
        return FIPC_CORRUPT;

    h->pos = h->release = h->published = tail;
    h->peer = head;
    STORE(A32(h, OFF_RPID), (uint32_t)pid, relaxed);
    STORE(A32(h, OFF_RSTATE), ST_OPEN, release);
    bus_register(h);
    return 0;
}

/* ---------------------------------------------------------------- counters */

/* Reader: refresh the cached head. */
static int load_head(fipc_shm *h)
{
    uint64_t head = LOAD(A64(h, OFF_HEAD), acquire);
    if ((head & 7u) || head - h->pos > h->capacity || head - h->peer > h->capacity)
        return FIPC_CORRUPT;
    h->peer = head;
    return 0;
}

/* Writer: refresh the cached tail. */
static int load_tail(fipc_shm *h)
{
    uint64_t tail = LOAD(A64(h, OFF_TAIL), acquire);
    if ((tail & 7u) || h->pos - tail > h->capacity || tail - h->peer > h->capacity)
        return FIPC_CORRUPT;
    h->peer = tail;
    return 0;
}

/* Store a counter the peer waits on, then wake it if (and only if) it sleeps. */
static inline void publish(fipc_shm *h, size_t off, uint64_t value, size_t wait_off,
                           size_t seq_off)
{
    STORE(A64(h, off), value, release);
    atomic_thread_fence(memory_order_seq_cst);
    if (LOAD(A32(h, wait_off), relaxed)) {
        atomic_fetch_add_explicit(A32(h, seq_off), 1u, memory_order_release);
        fipc_futex_wake(A32(h, seq_off));
    }
}

static inline void publish_head(fipc_shm *h)
{
    publish(h, OFF_HEAD, h->pos, OFF_RWAIT, OFF_DSEQ);
}

/* Publish the tail up to what was read, short of a hold. A hold dropped in another thread
 * (a recv_view whose buffer export went there) may release while a call runs here, so the
 * tail only ever moves forward (compare-and-swap), whichever thread stores it. */
static int release_tail(fipc_shm *h)
{
    if (h->role != FIPC_RING_READER)
        return 0;
    uint64_t hold = atomic_load_explicit((_Atomic uint64_t *)&h->hold, memory_order_acquire);
    uint64_t t = h->release < hold ? h->release : hold;
    if (t == h->published || t - h->published > h->capacity)
        return 0;
    uint64_t cur = LOAD(A64(h, OFF_TAIL), relaxed);
    do {
        if (t == cur || t - cur > h->capacity)
            return 0;
    } while (!atomic_compare_exchange_weak_explicit(A64(h, OFF_TAIL), &cur, t,
                                                    memory_order_release, memory_order_relaxed));
    h->published = t;
    atomic_thread_fence(memory_order_seq_cst);
    if (LOAD(A32(h, OFF_WWAIT), relaxed)) {
        atomic_fetch_add_explicit(A32(h, OFF_SSEQ), 1u, memory_order_release);
        fipc_futex_wake(A32(h, OFF_SSEQ));
    }
    return 0;
}

static inline void give_back(fipc_shm *h)
{
    release_tail(h);
}

/* Hand consumed space back in batches of a sixteenth of the ring (or at once when the
 * writer waits for it): the tail's cache line then crosses cores rarely. Every wait
 * releases everything first, so the writer never waits for space we hold. */
static inline void lazy_release(fipc_shm *h)
{
    if (h->release - h->published >= (h->capacity >> 4) || LOAD(A32(h, OFF_WWAIT), relaxed))
        release_tail(h);
}

/* ---------------------------------------------------------------- waiting */

/* The peer's end: 1 closed or dead, 0 running. probe: also look at its liveness lock (a
 * syscall: only between sleeps, and at most every PROBE_NS for calls that try once). A
 * reader whose writer never held its lock (no writer at all) finds it dead. */
static int peer_gone(fipc_shm *h, int probe)
{
    int reader = h->role == FIPC_RING_READER;
    if (LOAD(A32(h, reader ? OFF_WSTATE : OFF_RSTATE), acquire) == ST_CLOSED)
        return 1;
    if (!probe)
        return 0;
    if (!reader && LOAD(A32(h, OFF_RSTATE), acquire) == 0)
        return 0; /* no reader yet: nothing to be dead */
    int64_t now = fipc_now_ns();
    if (probe == 2 && now - h->probed_ns < PROBE_NS)
        return 0;
    h->probed_ns = now;
    int held = fipc_shm_lock_held(h->fd, reader ? FIPC_SHM_LOCK_WRITER : FIPC_SHM_LOCK_READER);
    return held == 0; /* an error (a bad fd): assume alive, the states still end the wait */
}

/* What a wait ends with when the peer has gone: the reader's end of stream, the writer's
 * broken pipe. */
static int gone_code(fipc_shm *h)
{
    return h->role == FIPC_RING_READER ? FIPC_EOF : -EPIPE;
}

static inline int spin_check(fipc_shm *h)
{
    if (is_broken(h))
        return FIPC_CORRUPT;
    return peer_gone(h, 0);
}

/* Wait until ready(h, need): spin first (adaptively), then sleep on the futex. */
static int wait_ring(fipc_shm *h, uint64_t need, double timeout, int64_t *deadline)
{
    int rc;
    int64_t start = 0;
    if (h->role == FIPC_RING_READER)
        release_tail(h); /* never sleep on space we could give back */
    if (timeout == 0) {
        /* One look, no sleep: no flag to raise (a raised flag would make the peer's every
         * publish a futex wake while it is up) and no clock to read. The peer's lock is
         * probed, rate-limited, so that a dead peer is still noticed. */
        rc = ready(h, need);
        if (rc == 0 && peer_gone(h, 2)) {
            rc = ready(h, need); /* the writer publishes its last head before it closes */
            if (rc == 0)
                rc = gone_code(h);
        }
        return rc > 0 ? 0 : rc == 0 ? -ETIMEDOUT : rc;
    }
    fipc_deadline_lazy(deadline, timeout);
    int64_t end = fipc_spin_until(&h->spin, timeout, *deadline, &start);
    if (end && (rc = ring_spin(h, need, end)) != 0)
        return rc < 0 ? rc : 0;
    size_t wait_off = h->role == FIPC_RING_READER ? OFF_RWAIT : OFF_WWAIT;
    size_t seq_off = h->role == FIPC_RING_READER ? OFF_DSEQ : OFF_SSEQ;
    int slept = 0;
    for (;;) {
        if (fipc_is_closed(&h->closed))
            return -EBADF; /* closed by another thread while we waited */
        if (is_broken(h))
            return FIPC_CORRUPT;
        uint32_t seq = LOAD(A32(h, seq_off), acquire);
        atomic_exchange_explicit(A32(h, wait_off), 1u, memory_order_seq_cst);
        rc = ready(h, need);
        if (h->role == FIPC_RING_READER)
            release_tail(h); /* a hold dropped by another thread meanwhile */
        if (rc == 0 && peer_gone(h, slept)) {
            /* the writer publishes its last head before it says closed: look once more */
            rc = ready(h, need);
            if (rc == 0)
                rc = gone_code(h);
        }
        int64_t left = 0;
        if ((rc = ring_looked(h, rc, *deadline, slept, start, &left)) != 1) {
            STORE(A32(h, wait_off), 0u, relaxed);
            return rc;
        }
        rc = ring_nap(h, seq_off, seq, left);
        STORE(A32(h, wait_off), 0u, relaxed);
        slept = 1;
        if (rc < 0)
            return rc;
        if (h->recheck)
            return -EINTR; /* Python looks at its exported views, then waits again */
    }
}

/* ---------------------------------------------------------------- writer */

/* The writer's parts of the ring (ring.h): room waited for, remembered for a parked async
 * sender; nothing is sent to a reader that has gone. */
static inline int make_room(fipc_shm *h, uint64_t need, double timeout, int64_t *deadline)
{
    int rc = ring_room(h, need, timeout, deadline);
    if (rc < 0)
        h->want = need; /* what a parked async sender waits for */
    return rc;
}

static inline void stamp(fipc_shm *h, char *p)
{
    (void)h;
    (void)p;
}

static inline void sent_one(fipc_shm *h)
{
    (void)h;
}

static inline int streams(fipc_shm *h)
{
    (void)h;
    return 1;
}

static inline int refuse(fipc_shm *h)
{
    return peer_gone(h, 0) ? -EPIPE : 0;
}

/* ---------------------------------------------------------------- reader */

/* The next frame, after waiting for one (may_wait) when none is published: 1 (its fields
 * filled in as by frame_at), 0 none and no wait, or < 0. */
static inline int next_frame(fipc_shm *h, int may_wait, double timeout, int64_t *deadline,
                             uint32_t *kind, uint64_t *len, uint64_t *total, char **data,
                             uint64_t *size)
{
    int rc;
    if (h->peer == h->pos) {
        rc = ready(h, 0);
        if (rc == 0) {
            if (!may_wait)
                return 0;
            rc = wait_ring(h, 0, timeout, deadline);
        }
        if (rc < 0)
            return rc;
    }
    rc = ring_frame_at(h, kind, len, total, data, size);
    return rc < 0 ? rc : 1;
}

static int64_t shm_recv(fipc_shm *h, char *dest, uint64_t cap, double timeout, char **ptr)
{
    if (h->role != FIPC_RING_READER)
        return -EBADF;
    int64_t deadline = FIPC_DEADLINE_UNSET;
    int rc;
    lazy_release(h);
    for (;;) {
        uint32_t kind;
        uint64_t len, total, size;
        char *data;
        rc = next_frame(h, 1, timeout, &deadline, &kind, &len, &total, &data, &size);
        if (rc < 0) {
            if (rc == FIPC_EOF)
                h->msg_total = h->msg_done = 0; /* a message cut short is dropped */
            return rc;
        }
        int64_t n;
        if (ring_continued(h, kind, dest, cap, len, data, size, &n)) {
            if (n != 0)
                return n;
            continue;
        }
        /* a new message: one that was being assembled was abandoned by its writer */
        h->msg_total = h->msg_done = 0;
        if (total > h->max_message) { /* dropped (a streamed one's NEXT frames are
                                           skipped as abandoned): later messages flow */
            h->last_len = total;
            consume(h, size);
            release_tail(h);
            return FIPC_TOOBIG;
        }
        if (kind == FIPC_FR_WHOLE) {
            h->last_len = len;
            h->last_pos = h->pos;
            if (dest == NULL) {
                *ptr = data;
                consume(h, size); /* released by the next call */
                return (int64_t)len;
            }
            if (cap < len)
                return FIPC_NEED;
            memcpy(dest, data, len);
            consume(h, size);
            lazy_release(h);
            return (int64_t)len;
        }
        /* FIPC_FR_FIRST */
        h->last_len = total;
        if (dest == NULL || cap < total)
            return FIPC_NEED;
        n = ring_first(h, dest, len, total, data, size);
        release_tail(h);
        if (n > 0)
            return n;
    }
}

/* The next message if it is whole in the ring already, in place (see shm.h). */
static int64_t shm_recv_next(fipc_shm *h, char **ptr)
{
    if (h->role != FIPC_RING_READER || h->msg_total)
        return h->role != FIPC_RING_READER ? -EBADF : FIPC_NEED;
    for (;;) {
        uint32_t kind;
        uint64_t len, total, size = 0; /* set whenever next_frame returns 1 (gcc -O1 cannot see it) */
        char *data;
        int rc = next_frame(h, 0, 0.0, NULL, &kind, &len, &total, &data, &size);
        if (rc <= 0)
            return rc == 0 ? -EAGAIN : rc;
        if (kind == FIPC_FR_PAD || kind == FIPC_FR_NEXT) {
            consume(h, size); /* a NEXT here belongs to an abandoned message */
            continue;
        }
        if (kind != FIPC_FR_WHOLE || total > h->max_message)
            return FIPC_NEED;
        h->last_len = len;
        h->last_pos = h->pos;
        *ptr = data;
        consume(h, size); /* released by a later call */
        return (int64_t)len;
    }
}

/* ---------------------------------------------------------------- close */

void fipc_shm_wake(fipc_shm *h)
{
    atomic_store_explicit((_Atomic int32_t *)&h->closed, 1, memory_order_seq_cst);
    /* our own calls blocked in other threads see `closed` when they wake */
    atomic_fetch_add_explicit(A32(h, OFF_DSEQ), 1u, memory_order_seq_cst);
    atomic_fetch_add_explicit(A32(h, OFF_SSEQ), 1u, memory_order_seq_cst);
    fipc_futex_wake(A32(h, OFF_DSEQ));
    fipc_futex_wake(A32(h, OFF_SSEQ));
}

void fipc_shm_close(fipc_shm *h)
{
    atomic_store_explicit((_Atomic int32_t *)&h->closed, 1, memory_order_seq_cst);
    if (is_broken(h)) {
        /* the header may be gone: nothing to tell */
    } else if (h->role == FIPC_RING_WRITER) {
        STORE(A32(h, OFF_WSTATE), ST_CLOSED, release);
    } else if (h->role == FIPC_RING_READER) {
        h->hold = UINT64_MAX; /* no call is in progress: these fields are ours */
        release_tail(h);
        STORE(A32(h, OFF_RSTATE), ST_CLOSED, release);
    }
    fipc_shm_wake(h); /* the peer, and our own calls blocked in other threads */
}

int fipc_shm_broken(fipc_shm *h)
{
    return is_broken(h);
}

/* ---------------------------------------------------------------- entry points */

/* Every entry point: refused once closed or broken, and FIPC_CORRUPT if a page was lost
 * under it (see on_sigbus). The mapping stays while a call runs: the native handle that
 * makes the calls (csrc/py/shm.c) counts them busy and releases only once none is. */
#define GUARDED(h, type, call)                                                              \
    do {                                                                                    \
        if (fipc_is_closed(&(h)->closed))                                                   \
            return -EBADF;                                                                  \
        if (is_broken(h))                                                                   \
            return FIPC_CORRUPT;                                                            \
        type rc_ = call;                                                                    \
        if (is_broken(h)) /* a page was lost under the call (see on_sigbus) */              \
            rc_ = FIPC_CORRUPT;                                                             \
        return rc_;                                                                         \
    } while (0)

int fipc_shm_set_hold(fipc_shm *h, uint64_t hold)
{
    atomic_store_explicit((_Atomic uint64_t *)&h->hold, hold, memory_order_release);
    GUARDED(h, int, release_tail(h));
}

int64_t fipc_shm_send(fipc_shm *h, const char *buf, uint64_t len, double timeout,
                      uint64_t *progress)
{
    GUARDED(h, int64_t, ring_send(h, buf, len, timeout, progress));
}

int64_t fipc_shm_send_many(fipc_shm *h, const char *const *bufs, const uint64_t *lens,
                           uint64_t count, double timeout, uint64_t *sent, uint64_t *progress)
{
    *sent = 0;
    GUARDED(h, int64_t, ring_send_many(h, bufs, lens, count, timeout, sent, progress));
}

int64_t fipc_shm_recv(fipc_shm *h, char *dest, uint64_t cap, double timeout, char **ptr)
{
    GUARDED(h, int64_t, shm_recv(h, dest, cap, timeout, ptr));
}

int64_t fipc_shm_recv_next(fipc_shm *h, char **ptr)
{
    GUARDED(h, int64_t, shm_recv_next(h, ptr));
}

void fipc_shm_consumed(fipc_shm *h)
{
    if (h->role == FIPC_RING_READER && !fipc_is_closed(&h->closed) && !is_broken(h))
        lazy_release(h);
}

/* ---------------------------------------------------------------- async */

static int shm_park(fipc_shm *h, uint64_t *offset, uint32_t *expected)
{
    int reader = h->role == FIPC_RING_READER;
    size_t wait_off = reader ? OFF_RWAIT : OFF_WWAIT;
    size_t seq_off = reader ? OFF_DSEQ : OFF_SSEQ;
    uint64_t need = reader ? 0 : h->want;
    if (reader)
        release_tail(h); /* never park on space we could give back */
    else
        publish_head(h);
    *offset = seq_off;
    *expected = LOAD(A32(h, seq_off), acquire);
    atomic_exchange_explicit(A32(h, wait_off), 1u, memory_order_seq_cst);
    int rc = ready(h, need);
    if (rc == 0 && peer_gone(h, 1)) {
        rc = ready(h, need);
        if (rc == 0)
            rc = gone_code(h);
    }
    if (rc != 0)
        STORE(A32(h, wait_off), 0u, relaxed);
    return rc < 0 ? rc : rc > 0 ? 1 : 0;
}

int fipc_shm_park(fipc_shm *h, uint64_t *offset, uint32_t *expected)
{
    GUARDED(h, int, shm_park(h, offset, expected));
}

static int shm_unpark(fipc_shm *h)
{
    STORE(A32(h, h->role == FIPC_RING_READER ? OFF_RWAIT : OFF_WWAIT), 0u, relaxed);
    return 0;
}

void fipc_shm_unpark(fipc_shm *h)
{
    if (!fipc_is_closed(&h->closed) && !is_broken(h))
        shm_unpark(h);
}

/* ---------------------------------------------------------------- writer's view of its reader */

static int shm_flushed(fipc_shm *h)
{
    if (h->role != FIPC_RING_WRITER)
        return -EBADF;
    publish_head(h);
    if (LOAD(A64(h, OFF_TAIL), acquire) == h->pos)
        return 1;
    return peer_gone(h, 1) ? -EPIPE : 0;
}

int fipc_shm_flushed(fipc_shm *h)
{
    GUARDED(h, int, shm_flushed(h));
}

static int shm_reader_attached(fipc_shm *h)
{
    return LOAD(A32(h, OFF_RSTATE), acquire) != 0;
}

int fipc_shm_reader_attached(fipc_shm *h)
{
    GUARDED(h, int, shm_reader_attached(h));
}
