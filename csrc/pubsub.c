/* Fan-out in shared memory: one publisher writes each message once into a ring; every
 * subscriber reads it with its own cursor. Layout and protocol: docs/pubsub-layout.md.
 *
 * Ordering: the publisher copies a frame, then stores head (release) and, after a full
 * fence, looks whether a subscriber sleeps. A subscriber loads head (acquire) before it
 * reads frames. Under "block" each subscriber publishes its cursor (release) and the
 * publisher never writes more than a ring ahead of the lowest active cursor. Under
 * "drop_oldest" the publisher never waits: before it overwrites a region it stores `oldest`
 * (the first frame past that region) and fences; a subscriber copies a frame, fences, and
 * re-reads `oldest`: if it has passed the frame, the copy may be torn and is thrown away
 * (seqlock). Every frame carries its message number, so the count of lost messages is exact.
 *
 * Liveness: each participant holds an OFD lock on its own byte of the segment file
 * (FIPC_PUB_LOCK + ...). The kernel drops it when the last reference to the open file
 * description goes (process death included); F_OFD_SETLK by another description tells.
 *
 * Nothing read from the mapping is trusted: counters, cursors and frames are checked
 * against the capacity derived from the mapping's real size (FIPC_CORRUPT otherwise). */
#include "pubsub.h"

#define FIPC_RING_T fipc_pub
#define FIPC_RING_LAYOUT FIPC_PUB_
#define FIPC_RING_ALIGN 16u
#include "ring.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#define HDR ((uint64_t)FIPC_PUB_HEADER)
#define BLOCK 1
#define DROP 2

#define SLOT(i, field) (FIPC_PUB_OFF_SLOTS + (size_t)(i) * FIPC_PUB_SLOT_SIZE + (field))

/* ---------------------------------------------------------------- liveness (OFD locks) */

/* Try to take (F_WRLCK) or drop (F_UNLCK) the lock on one byte: 0, -EAGAIN if another
 * description holds it, -errno. */
static int ofd_lock(int fd, int64_t byte, short type)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
        return errno == EACCES ? -EAGAIN : -errno;
    return 0;
}

/* 1 if another open file description holds the lock on `byte` (its owner lives). */
static int ofd_held(int fd, int64_t byte)
{
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return 1; /* cannot tell: assume alive (never declare a live peer dead) */
    return fl.l_type != F_UNLCK;
}

/* ---------------------------------------------------------------- set-up */

int fipc_pub_init(fipc_pub *h, char *base, uint64_t map_size, int32_t fd, int32_t pid,
                  uint64_t max_message, int32_t overflow, double spin)
{
    if (base == NULL || !fipc_ring_fits(map_size, HDR, FIPC_PUB_MIN_CAPACITY) || pid <= 0 ||
        (overflow != BLOCK && overflow != DROP))
        return -EINVAL;
    ring_setup(h, base, map_size, fd, FIPC_RING_WRITER, max_message, spin);
    h->overflow = overflow;
    h->slot = -1;
    ring_write_header(h, FIPC_PUB_VERSION);
    fipc_wr32(base + FIPC_PUB_OFF_PID, (uint32_t)pid);
    fipc_wr32(base + FIPC_PUB_OFF_STATE, ST_OPEN);
    fipc_wr32(base + FIPC_PUB_OFF_OVERFLOW, (uint32_t)overflow);
    fipc_wr32(base + FIPC_PUB_OFF_NSLOTS, FIPC_PUB_SLOTS);
    fipc_wr64(base + FIPC_PUB_OFF_CHUNK, h->chunk);
    STORE(A32(h, FIPC_PUB_OFF_MAGIC), (uint32_t)FIPC_PUB_MAGIC, release); /* last */
    return 0;
}

int fipc_sub_init(fipc_pub *h, char *base, uint64_t map_size, int32_t fd, int32_t slot,
                  int32_t pid, uint64_t max_message, double spin)
{
    if (base == NULL || pid <= 0 || slot < 0 || slot >= FIPC_PUB_SLOTS)
        return -EINVAL;
    memset(h, 0, sizeof *h);
    h->base = base;
    h->map_size = map_size;
    if (map_size < sizeof(uint32_t))
        return FIPC_PUB_NOTREADY;
    uint32_t magic = LOAD(A32(h, FIPC_PUB_OFF_MAGIC), acquire);
    if (magic == 0)
        return FIPC_PUB_NOTREADY;
    if (magic != (uint32_t)FIPC_PUB_MAGIC || !fipc_ring_fits(map_size, HDR, FIPC_PUB_MIN_CAPACITY))
        return FIPC_CORRUPT;
    ring_setup(h, base, map_size, fd, FIPC_RING_READER, max_message, spin);
    uint64_t cap = h->capacity;
    uint32_t overflow = fipc_rd32(base + FIPC_PUB_OFF_OVERFLOW);
    if (!ring_header_ok(h, FIPC_PUB_VERSION) ||
        fipc_rd32(base + FIPC_PUB_OFF_NSLOTS) != FIPC_PUB_SLOTS ||
        (overflow != BLOCK && overflow != DROP))
        return FIPC_CORRUPT;
    uint32_t state = LOAD(A32(h, FIPC_PUB_OFF_STATE), acquire);
    if (state != ST_OPEN && state != ST_CLOSED)
        return FIPC_CORRUPT;
    h->overflow = (int32_t)overflow;
    h->slot = slot;
    /* Join at the head: store a cursor no later than any the publisher can still be
     * reserving against, then read head again (both seq_cst: the publisher stores head and
     * then loads the cursors, so a reservation that missed our cursor started at or before
     * the head we read the second time; docs/pubsub-layout.md). The second read takes
     * head with its message count, consistent under the `snap` sequence word. */
    uint64_t head = LOAD(A64(h, FIPC_PUB_OFF_HEAD), seq_cst);
    STORE(A32(h, SLOT(slot, FIPC_PUB_SLOT_PID)), (uint32_t)pid, relaxed);
    STORE(A64(h, SLOT(slot, FIPC_PUB_SLOT_CURSOR)), head, seq_cst);
    STORE(A32(h, SLOT(slot, FIPC_PUB_SLOT_STATE)), 1u, seq_cst);
    uint64_t again = 0, count = 0;
    for (int tries = 0; tries < 1000000; tries++) {
        uint32_t v1 = LOAD(A32(h, FIPC_PUB_OFF_SNAP), seq_cst);
        again = LOAD(A64(h, FIPC_PUB_OFF_HEAD), seq_cst);
        count = LOAD(A64(h, FIPC_PUB_OFF_COUNT), seq_cst);
        if (!(v1 & 1u) && LOAD(A32(h, FIPC_PUB_OFF_SNAP), seq_cst) == v1) {
            h->seq = count;
            h->seq_known = 1;
            break;
        }
        fipc_cpu_relax(); /* (a publisher that died half-way: the count stays unknown) */
    }
    /* head never goes back; under "block" it stays within a ring of our first cursor,
     * under "drop_oldest" it may have lapped it any number of times meanwhile */
    uint64_t gap = overflow == BLOCK ? cap : UINT64_MAX >> 1;
    if ((head & 15u) || (again & 15u) || again - head > gap)
        return FIPC_CORRUPT;
    STORE(A64(h, SLOT(slot, FIPC_PUB_SLOT_CURSOR)), again, seq_cst);
    h->pos = h->peer = h->release = h->published = again;
    /* a subscriber that overran the publisher after waking may be waiting on our slot */
    atomic_fetch_add_explicit(A32(h, FIPC_PUB_OFF_SSEQ), 1u, memory_order_seq_cst);
    fipc_futex_wake(A32(h, FIPC_PUB_OFF_SSEQ));
    return 0;
}

/* ---------------------------------------------------------------- counters and wake-ups */

/* Bump a futex word and wake its sleepers. */
static inline void ring_bell(fipc_pub *h, size_t seq_off)
{
    atomic_fetch_add_explicit(A32(h, seq_off), 1u, memory_order_seq_cst);
    fipc_futex_wake(A32(h, seq_off));
}

static inline void publish_head(fipc_pub *h)
{
    /* head and the count of messages before it, as one snapshot for joining subscribers */
    _Atomic uint32_t *snap = A32(h, FIPC_PUB_OFF_SNAP);
    uint32_t v = LOAD(snap, relaxed);
    STORE(snap, v | 1u, relaxed);
    atomic_thread_fence(memory_order_release);
    STORE(A64(h, FIPC_PUB_OFF_COUNT), h->seq, relaxed);
    STORE(A64(h, FIPC_PUB_OFF_HEAD), h->pos, release);
    STORE(snap, (v | 1u) + 1u, release);
    atomic_thread_fence(memory_order_seq_cst);
    /* the publisher clears the flag: every subscriber that set it before this look is
     * woken (its futex word changed after it read it); one that sets it later reads head
     * after our store (docs/pubsub-layout.md, "Waiting") */
    if (LOAD(A32(h, FIPC_PUB_OFF_SWAIT), relaxed)) {
        STORE(A32(h, FIPC_PUB_OFF_SWAIT), 0u, relaxed);
        ring_bell(h, FIPC_PUB_OFF_DSEQ);
    }
}

static void release_cursor(fipc_pub *h)
{
    uint64_t t = h->release < h->hold ? h->release : h->hold;
    if (h->overflow != BLOCK || t == h->published || t - h->published > h->capacity)
        return;
    uint64_t before = h->published;
    h->published = t;
    STORE(A64(h, SLOT(h->slot, FIPC_PUB_SLOT_CURSOR)), t, release);
    atomic_thread_fence(memory_order_seq_cst);
    /* wake a sleeping publisher when our cursor passes the one it waits for: once, not at
     * every release (if it set its flag after our look, it sees our cursor; if it sleeps,
     * the subscriber that passes last wakes it: docs/pubsub-layout.md, "Waiting") */
    if (LOAD(A32(h, FIPC_PUB_OFF_PWAIT), acquire)) {
        uint64_t want = LOAD(A64(h, FIPC_PUB_OFF_PWANT), relaxed);
        if (t - want <= (UINT64_MAX >> 1) && want - before - 1 <= (UINT64_MAX >> 1))
            ring_bell(h, FIPC_PUB_OFF_SSEQ); /* before < want <= t */
    }
}

static inline void give_back(fipc_pub *h)
{
    release_cursor(h);
}

static inline void lazy_release(fipc_pub *h)
{
    if (h->overflow == BLOCK && (h->release - h->published >= (h->capacity >> 4) ||
                                 LOAD(A32(h, FIPC_PUB_OFF_PWAIT), relaxed)))
        release_cursor(h);
}

/* Publisher, block mode: the lowest cursor of the active subscribers (pos if none). */
static int load_tail(fipc_pub *h)
{
    uint64_t low = h->pos;
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < FIPC_PUB_SLOTS; i++) {
        if (LOAD(A32(h, SLOT(i, FIPC_PUB_SLOT_STATE)), acquire) != 1u)
            continue;
        uint64_t c = LOAD(A64(h, SLOT(i, FIPC_PUB_SLOT_CURSOR)), acquire);
        if (h->pos - c > h->capacity)
            return FIPC_CORRUPT; /* a cursor ahead of head or a lap behind */
        if (h->pos - c > h->pos - low)
            low = c;
    }
    h->peer = low;
    return 0;
}

/* Publisher: free the slots whose subscriber has gone (its lock is free: we take it, so
 * that no subscriber can claim the slot meanwhile, clear the slot, and let go). */
static void reclaim_dead(fipc_pub *h)
{
    for (int i = 0; i < FIPC_PUB_SLOTS; i++) {
        if (LOAD(A32(h, SLOT(i, FIPC_PUB_SLOT_STATE)), acquire) == 0)
            continue;
        if (ofd_lock(h->fd, (int64_t)FIPC_PUB_LOCK + 1 + i, F_WRLCK) != 0)
            continue; /* held: alive (or we cannot tell) */
        STORE(A32(h, SLOT(i, FIPC_PUB_SLOT_STATE)), 0u, seq_cst);
        (void)ofd_lock(h->fd, (int64_t)FIPC_PUB_LOCK + 1 + i, F_UNLCK);
    }
}

/* Subscriber: refresh the cached head. */
static int load_head(fipc_pub *h)
{
    uint64_t head = LOAD(A64(h, FIPC_PUB_OFF_HEAD), acquire);
    if (head & 15u)
        return FIPC_CORRUPT;
    if (h->overflow == BLOCK && (head - h->pos > h->capacity || head - h->peer > h->capacity))
        return FIPC_CORRUPT;
    if (head - h->peer > (UINT64_MAX >> 1))
        return FIPC_CORRUPT; /* head went backwards */
    h->peer = head;
    return 0;
}

/* Publisher, block mode, out of room: how much room the subscribers free before they wake
 * it (a slice of the ring, or more if one frame needs more): waking it for every message
 * they read would make it write one message per wake-up. It still writes as soon as it
 * finds `need` bytes free (each time it wakes, at the latest every sleep slice). */
static inline uint64_t wake_room(fipc_pub *h, uint64_t need)
{
    uint64_t slice = h->capacity >> FIPC_PUB_WAKE_SHIFT;
    return need > slice ? need : slice;
}

/* Subscriber: has the stream ended (closed, or the publisher died)? check_lock: also ask
 * the kernel whether the publisher's lock is still held. */
static int pub_gone(fipc_pub *h, int check_lock)
{
    if (LOAD(A32(h, FIPC_PUB_OFF_STATE), acquire) == ST_CLOSED)
        return 1;
    return check_lock && !ofd_held(h->fd, FIPC_PUB_LOCK);
}

static inline int spin_check(fipc_pub *h)
{
    return h->role == FIPC_RING_READER && pub_gone(h, 0);
}

/* Raise this end's waiting flag and look once more, as the step before every sleep
 * (docs/pubsub-layout.md, "Waiting"): > 0 ready, 0 not (*seq: the futex word's value read
 * before the flag went up), < 0 an error or FIPC_EOF. deep: also ask the kernel whether
 * the publisher lives (a subscriber) or free the slots of dead subscribers (the publisher).
 * The publisher's flag is lowered again when it is ready (a subscriber's is the
 * publisher's to clear). */
static int raise_and_look(fipc_pub *h, uint64_t need, int deep, uint32_t *seq)
{
    int sub = h->role == FIPC_RING_READER;
    size_t wait_off = sub ? FIPC_PUB_OFF_SWAIT : FIPC_PUB_OFF_PWAIT;
    *seq = LOAD(A32(h, sub ? FIPC_PUB_OFF_DSEQ : FIPC_PUB_OFF_SSEQ), acquire);
    atomic_exchange_explicit(A32(h, wait_off), 1u, memory_order_seq_cst);
    int rc = ready(h, need);
    if (rc == 0 && sub && pub_gone(h, deep)) {
        rc = ready(h, need); /* the last head comes before the closed state */
        if (rc == 0)
            rc = FIPC_EOF;
    }
    if (rc == 0 && !sub && deep) {
        reclaim_dead(h); /* a dead subscriber no longer holds us back */
        rc = ready(h, need);
    }
    if (rc != 0 && !sub)
        STORE(A32(h, wait_off), 0u, relaxed);
    return rc;
}

/* Publisher: subscribers wake us once they have freed a slice of the ring, not at once. */
static inline void want_room(fipc_pub *h, uint64_t need)
{
    STORE(A64(h, FIPC_PUB_OFF_PWANT), h->pos + wake_room(h, need) - h->capacity, relaxed);
}

/* Wait until ready(need): spin for the adaptive budget, then sleep on the futex word in
 * slices, checking liveness between them. */
static int wait_ring(fipc_pub *h, uint64_t need, double timeout, int64_t *deadline)
{
    int rc;
    int sub = h->role == FIPC_RING_READER;
    int64_t start = 0;
    fipc_deadline_lazy(deadline, timeout);
    if (sub)
        release_cursor(h); /* never sleep on space we could give back */
    int64_t end = fipc_spin_until(&h->spin, timeout, *deadline, &start);
    if (end && (rc = ring_spin(h, need, end)) != 0)
        return rc < 0 ? rc : 0;
    if (!sub)
        want_room(h, need);
    size_t wait_off = sub ? FIPC_PUB_OFF_SWAIT : FIPC_PUB_OFF_PWAIT;
    size_t seq_off = sub ? FIPC_PUB_OFF_DSEQ : FIPC_PUB_OFF_SSEQ;
    int slept = 0;
    for (;;) {
        if (fipc_is_closed(&h->closed))
            return -EBADF;
        uint32_t seq;
        rc = raise_and_look(h, need, slept || timeout == 0, &seq);
        int64_t left = 0;
        if ((rc = ring_looked(h, rc, *deadline, slept, start, &left)) != 1) {
            if (!sub)
                STORE(A32(h, wait_off), 0u, relaxed);
            return rc;
        }
        rc = ring_nap(h, seq_off, seq, left);
        if (!sub)
            STORE(A32(h, wait_off), 0u, relaxed);
        slept = 1;
        if (rc < 0)
            return rc;
        if (sub && h->recheck)
            return FIPC_PUB_RECHECK; /* Python looks at its exported views, waits again */
    }
}

static int pub_park(fipc_pub *h, uint64_t *offset, uint32_t *expected)
{
    int sub = h->role == FIPC_RING_READER;
    uint64_t need = sub ? 0 : h->want;
    if (sub) {
        release_cursor(h); /* never park on space we could give back */
    } else {
        publish_head(h); /* what we batched must be visible before we wait */
        want_room(h, need);
    }
    *offset = sub ? FIPC_PUB_OFF_DSEQ : FIPC_PUB_OFF_SSEQ;
    int rc = raise_and_look(h, need, 1, expected);
    return rc < 0 ? rc : rc > 0 ? 1 : 0;
}

/* ---------------------------------------------------------------- publisher */

/* drop_oldest: move `oldest` past every frame that the bytes below `target` overlap, and
 * make that visible before the caller overwrites them. */
static int advance_oldest(fipc_pub *h, uint64_t target)
{
    uint64_t o = h->oldest;
    if (o >= target)
        return 0;
    while (o < target) {
        if (o == h->pos) { /* nothing older: the whole ring is ours */
            o = target;
            break;
        }
        uint64_t room = h->capacity - (o & (h->capacity - 1));
        char *p = ring(h, o);
        uint32_t kind = fipc_rd32(p + 4);
        uint64_t size = (kind == FIPC_FR_FIRST ? FIPC_RING_FIRST_HDR : FIPC_RING_FR_HDR) +
                        fipc_round_up(fipc_rd32(p), FIPC_RING_ALIGN);
        if (kind < FIPC_FR_WHOLE || kind > FIPC_FR_PAD || size > room ||
            size > h->pos - o)
            return FIPC_CORRUPT; /* our own frames, changed by someone else */
        o += size;
    }
    h->oldest = o;
    if (LOAD(A64(h, FIPC_PUB_OFF_HEAD), relaxed) - o > (UINT64_MAX >> 1))
        publish_head(h); /* (in a batch) subscribers never see oldest beyond head */
    STORE(A64(h, FIPC_PUB_OFF_OLDEST), o, relaxed);
    atomic_thread_fence(memory_order_seq_cst); /* oldest before the overwrite (seqlock) */
    return 0;
}

/* The publisher's parts of the ring (ring.h): drop_oldest never waits, it moves `oldest`
 * past what it is about to overwrite; every frame carries its message number. */
static inline int make_room(fipc_pub *h, uint64_t need, double timeout, int64_t *deadline)
{
    if (h->overflow != DROP) {
        int rc = ring_room(h, need, timeout, deadline);
        if (rc < 0)
            h->want = need; /* what a parked async sender waits for */
        return rc;
    }
    return h->pos + need > h->capacity ? advance_oldest(h, h->pos + need - h->capacity) : 0;
}

static inline void stamp(fipc_pub *h, char *p)
{
    fipc_wr64(p + 8, h->seq);
}

static inline void sent_one(fipc_pub *h)
{
    h->seq++;
}

/* drop_oldest never streams: its publisher would overwrite the start of a message that a
 * subscriber is still assembling. */
static inline int streams(fipc_pub *h)
{
    return h->overflow != DROP;
}

static inline int refuse(fipc_pub *h)
{
    (void)h;
    return 0; /* a subscriber that has gone is no reason not to publish */
}

/* ---------------------------------------------------------------- subscriber */

/* The frame at pos, checked, with its message number. */
static inline int frame_at(fipc_pub *h, uint32_t *kind, uint64_t *len, uint64_t *total,
                           uint64_t *seq, char **data, uint64_t *size)
{
    int rc = ring_frame_at(h, kind, len, total, data, size);
    if (rc == 0)
        *seq = fipc_rd64(ring(h, h->pos) + 8);
    return rc;
}

/* drop_oldest: 1 if the publisher has started overwriting the frame at pos (or past it). */
static inline int lapped(fipc_pub *h)
{
    if (h->overflow != DROP)
        return 0;
    atomic_thread_fence(memory_order_seq_cst); /* our reads of the frame before the look */
    uint64_t o = LOAD(A64(h, FIPC_PUB_OFF_OLDEST), relaxed);
    return o - h->pos - 1 < (UINT64_MAX >> 1); /* o > pos, wrap-safe */
}

/* drop_oldest: carry on from the oldest frame still intact. */
static int resync(fipc_pub *h)
{
    uint64_t o = LOAD(A64(h, FIPC_PUB_OFF_OLDEST), acquire);
    int rc = load_head(h); /* after oldest: head is at least as far (the publisher
                              publishes head before it stores an oldest beyond it) */
    if (rc < 0)
        return rc;
    if ((o & 15u) || o - h->pos > (UINT64_MAX >> 1) || h->peer - o > (UINT64_MAX >> 1))
        return FIPC_CORRUPT; /* not between us and head (if we are lapped again by now,
                                the next frame_at/lapped() says so) */
    h->pos = h->release = o;
    return 0;
}

/* Count the messages a frame's number says were skipped. */
static int account(fipc_pub *h, uint64_t seq)
{
    if (h->overflow != DROP)
        return 0; /* nothing is lost under block */
    if (h->seq_known) {
        if (seq - h->seq > (UINT64_MAX >> 1))
            return FIPC_CORRUPT; /* a number from the past */
        h->missed += seq - h->seq;
    }
    h->seq = seq + 1;
    h->seq_known = 1;
    return 0;
}

/* Wait for a frame to be published (or the end of the stream). */
static int next_frame(fipc_pub *h, double timeout, int64_t *deadline)
{
    if (h->peer != h->pos)
        return 0;
    int rc = ready(h, 0);
    if (rc == 0)
        rc = wait_ring(h, 0, timeout, deadline);
    return rc < 0 ? rc : 0;
}

/* What sub_recv may take: anything, or (a batch) no streamed message, and after the first
 * message of a batch no message that it would have to report as an error. */
#define TAKE_ANY 0
#define TAKE_FIRST 1
#define TAKE_MORE 2

static int64_t sub_recv(fipc_pub *h, char *dest, uint64_t cap, double timeout, char **ptr,
                        int take)
{
    int64_t deadline = FIPC_DEADLINE_UNSET;
    int rc;
    lazy_release(h);
    for (;;) {
        if ((rc = next_frame(h, timeout, &deadline)) < 0) {
            if (rc == FIPC_EOF)
                h->msg_total = h->msg_done = 0; /* a message cut short is dropped */
            return rc;
        }
        uint32_t kind;
        uint64_t len, total, seq, size;
        char *data;
        rc = frame_at(h, &kind, &len, &total, &seq, &data, &size);
        if (lapped(h)) { /* drop_oldest: what we read of the header may be torn */
            if ((rc = resync(h)) < 0)
                return rc;
            continue;
        }
        if (rc < 0)
            return rc;
        int64_t n;
        if (ring_continued(h, kind, dest, cap, len, data, size, &n)) {
            if (n > 0 && (rc = account(h, seq)) < 0)
                return rc;
            if (n != 0)
                return n;
            continue;
        }
        h->msg_total = h->msg_done = 0; /* a new message: one being assembled was abandoned */
        if (total > h->max_message) {
            if (take == TAKE_MORE)
                return FIPC_NEED; /* for the next call to report */
            h->last_len = total;
            consume(h, size);
            if (kind == FIPC_FR_WHOLE && (rc = account(h, seq)) < 0)
                return rc;
            return FIPC_TOOBIG;
        }
        if (kind == FIPC_FR_WHOLE) {
            h->last_len = len;
            h->last_pos = h->pos;
            if (dest == NULL) {
                if (h->overflow == DROP)
                    return FIPC_NEED; /* never in place: the publisher may overwrite it */
                *ptr = data;
            } else if (cap < len) {
                return FIPC_NEED;
            } else {
                memcpy(dest, data, len);
                if (lapped(h)) { /* the copy may be torn: throw it away */
                    if ((rc = resync(h)) < 0)
                        return rc;
                    continue;
                }
            }
            if ((rc = account(h, seq)) < 0)
                return rc;
            consume(h, size);
            if (dest != NULL)
                lazy_release(h);
            return (int64_t)len;
        }
        /* FIRST (block mode only: drop_oldest never streams) */
        h->last_len = total;
        if (h->overflow == DROP)
            return FIPC_CORRUPT;
        if (dest == NULL || cap < total || take != TAKE_ANY)
            return FIPC_NEED;
        n = ring_first(h, dest, len, total, data, size);
        release_cursor(h);
        if (n > 0 && (rc = account(h, seq)) < 0)
            return rc;
        if (n > 0)
            return n;
    }
}

/* ---------------------------------------------------------------- entry points
 *
 * Called by the native handle (csrc/py/pubsub.c), which counts the call busy and refuses
 * a closed object: `closed` here only ends waits (fipc_pub_wake). */

int64_t fipc_pub_send(fipc_pub *h, const char *buf, uint64_t len, double timeout)
{
    if (h->role != FIPC_RING_WRITER)
        return -EBADF;
    return ring_send(h, buf, len, timeout, &h->progress);
}

int64_t fipc_pub_send_vec(fipc_pub *h, const char *const *bufs, const uint64_t *lens,
                          uint64_t count, double timeout, uint64_t *sent)
{
    return ring_send_many(h, bufs, lens, count, timeout, sent, &h->progress);
}

int64_t fipc_sub_recv(fipc_pub *h, char *dest, uint64_t cap, double timeout, char **ptr,
                      int more)
{
    if (h->role != FIPC_RING_READER)
        return -EBADF;
    return sub_recv(h, dest, cap, timeout, ptr, more ? TAKE_MORE : TAKE_ANY);
}

int fipc_sub_more(fipc_pub *h)
{
    return ready(h, 0);
}

void fipc_sub_done(fipc_pub *h)
{
    lazy_release(h);
}

void fipc_sub_release(fipc_pub *h)
{
    if (h->role == FIPC_RING_READER)
        release_cursor(h);
}

int fipc_pub_park(fipc_pub *h, uint64_t *offset, uint32_t *expected)
{
    return pub_park(h, offset, expected);
}

void fipc_pub_unpark(fipc_pub *h)
{
    if (h->role == FIPC_RING_WRITER)
        STORE(A32(h, FIPC_PUB_OFF_PWAIT), 0u, relaxed);
}

/* ---------------------------------------------------------------- close */

void fipc_pub_wake(fipc_pub *h)
{
    atomic_store_explicit((_Atomic int32_t *)&h->closed, 1, memory_order_seq_cst);
    ring_bell(h, h->role == FIPC_RING_READER ? FIPC_PUB_OFF_DSEQ : FIPC_PUB_OFF_SSEQ);
}

void fipc_pub_close(fipc_pub *h)
{
    atomic_store_explicit((_Atomic int32_t *)&h->closed, 1, memory_order_seq_cst);
    if (h->role == FIPC_RING_WRITER) {
        STORE(A32(h, FIPC_PUB_OFF_STATE), ST_CLOSED, seq_cst);
        ring_bell(h, FIPC_PUB_OFF_DSEQ);
    } else if (h->role == FIPC_RING_READER) {
        STORE(A32(h, SLOT(h->slot, FIPC_PUB_SLOT_STATE)), 0u, seq_cst);
        ring_bell(h, FIPC_PUB_OFF_SSEQ); /* we may have been the slowest */
    }
}
