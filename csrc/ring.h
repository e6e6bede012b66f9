/* Pieces shared by the two shared-memory rings (shm.c: the SPSC channel, pubsub.c: the
 * fan-out): unaligned field access, ring positions, the busy count of the one-call fast
 * paths, and the bookkeeping at the end of a wait. Internal: static inline, so that the hot
 * paths stay as they were; no CDEF block (nothing here is part of the cffi interface). */
#ifndef FASTIPC_RING_H
#define FASTIPC_RING_H

#include "fastipc.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- fields */

/* Atomic access to the mapping of a handle h (any with a `base`), for the rings' .c files. */
#define A32(h, off) ((_Atomic uint32_t *)(void *)((h)->base + (off)))
#define A64(h, off) ((_Atomic uint64_t *)(void *)((h)->base + (off)))
#define LOAD(p, mo) atomic_load_explicit((p), memory_order_##mo)
#define STORE(p, v, mo) atomic_store_explicit((p), (v), memory_order_##mo)

/* A handle's role: the ring's one writer (the publisher) or a reader (a subscriber). */
#define FIPC_RING_WRITER 1
#define FIPC_RING_READER 2

static inline uint32_t fipc_rd32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline uint64_t fipc_rd64(const char *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void fipc_wr32(char *p, uint32_t v)
{
    memcpy(p, &v, sizeof v);
}

static inline void fipc_wr64(char *p, uint64_t v)
{
    memcpy(p, &v, sizeof v);
}

/* n rounded up to a multiple of align (a power of two). */
static inline uint64_t fipc_round_up(uint64_t n, uint64_t align)
{
    return (n + (align - 1u)) & ~(align - 1u);
}

/* A mapping of map_size bytes holds a header of hdr bytes and a ring whose capacity is a
 * power of two, at least min. */
static inline int fipc_ring_fits(uint64_t map_size, uint64_t hdr, uint64_t min)
{
    uint64_t cap = map_size - hdr;
    return map_size > hdr && cap >= min && (cap & (cap - 1)) == 0;
}

/* Where position pos lies in a ring of capacity bytes (a power of two) starting at data. */
static inline char *fipc_ring_at(char *data, uint64_t capacity, uint64_t pos)
{
    return data + (pos & (capacity - 1));
}

/* ---------------------------------------------------------------- frames */

/* Both rings frame messages alike: a header of FR_HDR bytes starting with a u32 payload
 * length and a u32 kind (shm.h and pubsub.h give the kinds these values), a FIRST frame's
 * header followed by the u64 total length of a streamed message (FIRST_HDR bytes in all),
 * the payload padded to the ring's alignment; a PAD frame fills the room up to the ring's
 * end. */
#define FIPC_FR_WHOLE 1u
#define FIPC_FR_FIRST 2u
#define FIPC_FR_NEXT 3u
#define FIPC_FR_PAD 4u

/* Write a frame header's length and kind. */
static inline void fipc_frame_head(char *p, uint32_t len, uint32_t kind)
{
    fipc_wr32(p, len);
    fipc_wr32(p + 4, kind);
}

/* The frame at p, checked against the room before the ring's end and the bytes published
 * (avail, at least fr_hdr): its kind, payload length, total length, payload and size in
 * the ring; FIPC_CORRUPT if it cannot be a frame there. */
static inline int fipc_frame_at(char *p, uint64_t room, uint64_t avail, uint64_t fr_hdr,
                                uint64_t first_hdr, uint64_t align, uint32_t *kind,
                                uint64_t *len, uint64_t *total, char **data, uint64_t *size)
{
    uint64_t n = fipc_rd32(p);
    uint32_t k = fipc_rd32(p + 4);
    uint64_t hdr = k == FIPC_FR_FIRST ? first_hdr : fr_hdr;
    uint64_t sz = hdr + fipc_round_up(n, align);
    if (k < FIPC_FR_WHOLE || k > FIPC_FR_PAD || sz > room || sz > avail)
        return FIPC_CORRUPT;
    if (k == FIPC_FR_PAD && sz != room)
        return FIPC_CORRUPT;
    *kind = k;
    *len = n;
    *total = k == FIPC_FR_FIRST ? fipc_rd64(p + fr_hdr) : n;
    *data = p + hdr;
    *size = sz;
    if (k == FIPC_FR_FIRST && (*total < n || *total == 0))
        return FIPC_CORRUPT;
    return 0;
}

/* ---------------------------------------------------------------- busy count */

/* Another thread may close a handle while a call is in progress: close() sets `closed`,
 * wakes the call, and Python unmaps only once `busy` is back to 0. enter counts the call,
 * then looks at `closed`; close sets `closed`, then waits for the count: one of the two
 * sees the other. */
static inline int fipc_is_closed(int32_t *closed)
{
    return atomic_load_explicit((_Atomic int32_t *)closed, memory_order_seq_cst);
}

static inline int fipc_enter(int32_t *busy, int32_t *closed)
{
    atomic_fetch_add_explicit((_Atomic int32_t *)busy, 1, memory_order_seq_cst);
    if (fipc_is_closed(closed)) {
        atomic_fetch_sub_explicit((_Atomic int32_t *)busy, 1, memory_order_release);
        return -EBADF;
    }
    return 0;
}

static inline void fipc_leave(int32_t *busy)
{
    atomic_fetch_sub_explicit((_Atomic int32_t *)busy, 1, memory_order_release);
}

static inline int fipc_busy_count(int32_t *busy)
{
    return atomic_load_explicit((_Atomic int32_t *)busy, memory_order_acquire);
}

/* ---------------------------------------------------------------- waits */

/* How long the next sleep of a wait may last (deadline < 0: forever, one slice): 0 with
 * *left set, or -ETIMEDOUT once the deadline has passed. */
static inline int fipc_wait_left(int64_t deadline, int64_t slice, int64_t *left)
{
    if (deadline < 0) {
        *left = slice;
        return 0;
    }
    *left = deadline - fipc_now_ns();
    return *left <= 0 ? -ETIMEDOUT : 0;
}

/* The spin phase of a wait: 0 if it has none (a call that tries once, or spinning is off),
 * else when it ends (the spin budget, cut at the deadline) with *start set to now. */
static inline int64_t fipc_spin_until(const fipc_spin *spin, double timeout, int64_t deadline,
                                      int64_t *start)
{
    if (timeout == 0 || spin->ns <= 0)
        return 0;
    *start = fipc_now_ns();
    int64_t end = *start + spin->ns;
    return deadline >= 0 && end > deadline ? deadline : end;
}

/* A wait found what it waited for: count it as caught by the spin or after a sleep, and
 * tell the adaptive spin (start: when the spin began, 0 if there was none). */
static inline void fipc_wait_done(fipc_spin *spin, uint64_t *spins, uint64_t *sleeps,
                                  int slept, int64_t start)
{
    if (slept) {
        (*sleeps)++;
        if (start)
            fipc_spin_slept(spin, fipc_now_ns() - start);
    } else {
        (*spins)++;
    }
}

#endif /* FIPC_RING_H */

/* ---------------------------------------------------------------- one ring's code
 *
 * Written once for both rings' handles: the file that includes this header first defines
 * FIPC_RING_T (its handle type, with the fields named below), FIPC_RING_LAYOUT (the prefix of
 * its layout's constants: HEADER, where the ring starts in the mapping, FR_HDR and FIRST_HDR,
 * its frame headers' sizes, the frame kinds and the header's first fields) and
 * FIPC_RING_ALIGN (frames start at multiples of it), and defines the functions declared
 * here, which say what differs: the SPSC channel's peer and SIGBUS checks, the fan-out's
 * message numbers and drop_oldest. Each .c file includes this once, so these are its own
 * static functions and inline as if written there. */
#if defined(FIPC_RING_T) && !defined(FIPC_RING_CODE)
#define FIPC_RING_CODE

typedef FIPC_RING_T fipc_ring_h;

/* The ring's layout constants, FIPC_RING_LAYOUT (FIPC_SHM_, FIPC_PUB_) + their name. */
#define FIPC_RING_CAT_(a, b) a##b
#define FIPC_RING_CAT(a, b) FIPC_RING_CAT_(a, b)
#define LAYOUT(name) FIPC_RING_CAT(FIPC_RING_LAYOUT, name)
#define FIPC_RING_DATA ((uint64_t)LAYOUT(HEADER))
#define FIPC_RING_FR_HDR ((uint64_t)LAYOUT(FR_HDR))
#define FIPC_RING_FIRST_HDR ((uint64_t)LAYOUT(FIRST_HDR))

/* What both rings' files share: a wait sleeps at most a slice at a time (and looks at the
 * peer between slices), a streamed message goes in chunks of at most MAX_CHUNK bytes, and
 * an end's state in the header is open or closed. */
#define SLICE_NS FIPC_SLICE_NS
#define MAX_CHUNK ((uint64_t)256u << 10)
#define ST_OPEN 1u
#define ST_CLOSED 2u

/* Both headers start alike: u32 magic (written last), u32 version, u64 capacity, u64 where
 * the ring starts, u64 the writer's max_message_size. */
#define RING_OFF_MAGIC 0
#define RING_OFF_VERSION 4
#define RING_OFF_CAPACITY 8
#define RING_OFF_DATA 16
#define RING_OFF_MAXMSG 24
_Static_assert(LAYOUT(OFF_VERSION) == RING_OFF_VERSION && LAYOUT(OFF_CAPACITY) == RING_OFF_CAPACITY &&
                   LAYOUT(OFF_DATA) == RING_OFF_DATA && LAYOUT(OFF_MAXMSG) == RING_OFF_MAXMSG &&
                   LAYOUT(FR_WHOLE) == FIPC_FR_WHOLE && LAYOUT(FR_FIRST) == FIPC_FR_FIRST &&
                   LAYOUT(FR_NEXT) == FIPC_FR_NEXT && LAYOUT(FR_PAD) == FIPC_FR_PAD,
               "the layout as this code reads and writes it");

/* Refresh the cached position of the other side (peer): a reader's head, the writer's tail
 * (the lowest reader's cursor): 0, or FIPC_CORRUPT. */
static int load_head(fipc_ring_h *h);
static int load_tail(fipc_ring_h *h);
/* Writer: make head visible to the readers, and wake the sleeping ones. */
static inline void publish_head(fipc_ring_h *h);
/* Wait until ready(h, need): 0, or < 0. */
static int wait_ring(fipc_ring_h *h, uint64_t need, double timeout, int64_t *deadline);
/* Writer: room for `need` more bytes at pos (waiting as the ring's policy says): 0, < 0. */
static inline int make_room(fipc_ring_h *h, uint64_t need, double timeout, int64_t *deadline);
/* Writer: complete a frame header just written at p (the fan-out adds the message number). */
static inline void stamp(fipc_ring_h *h, char *p);
/* Writer: a whole message went into the ring. */
static inline void sent_one(fipc_ring_h *h);
/* Writer: 1 if a message too large to be stored whole may be streamed in chunks. */
static inline int streams(fipc_ring_h *h);
/* Writer: 0 if messages may be sent now (their sizes are checked already), else why not. */
static inline int refuse(fipc_ring_h *h);
/* In the spin of a wait, every 256 turns: 0 go on, 1 stop spinning (sleep), < 0 end. */
static inline int spin_check(fipc_ring_h *h);

/* Reader: give the space of the frames consumed back to the writer. */
static inline void give_back(fipc_ring_h *h);

/* An end of the ring in the mapping base (map_size bytes, checked to fit a ring already):
 * the fields both rings set alike. */
static void ring_setup(fipc_ring_h *h, char *base, uint64_t map_size, int32_t fd, int32_t role,
                       uint64_t max_message, double spin)
{
    memset(h, 0, sizeof *h);
    h->base = base;
    h->map_size = map_size;
    h->capacity = map_size - FIPC_RING_DATA;
    h->fd = fd;
    h->role = role;
    h->max_message = max_message;
    h->hold = UINT64_MAX;
    h->chunk = h->capacity / 16 < MAX_CHUNK ? h->capacity / 16 : MAX_CHUNK;
    fipc_spin_set(&h->spin, spin);
}

/* Writer: the start of the header (zeros elsewhere), without its magic. */
static void ring_write_header(fipc_ring_h *h, uint32_t version)
{
    memset(h->base, 0, FIPC_RING_DATA);
    fipc_wr32(h->base + RING_OFF_VERSION, version);
    fipc_wr64(h->base + RING_OFF_CAPACITY, h->capacity);
    fipc_wr64(h->base + RING_OFF_DATA, FIPC_RING_DATA);
    fipc_wr64(h->base + RING_OFF_MAXMSG, h->max_message);
}

/* Reader: 1 if the start of the header (its magic read already, the mapping checked to fit a
 * ring) is a ring of this kind that fills the mapping. */
static int ring_header_ok(fipc_ring_h *h, uint32_t version)
{
    return fipc_rd32(h->base + RING_OFF_VERSION) == version &&
           fipc_rd64(h->base + RING_OFF_CAPACITY) == h->map_size - FIPC_RING_DATA &&
           fipc_rd64(h->base + RING_OFF_DATA) == FIPC_RING_DATA;
}

/* The end of one look of a wait, which found rc (ready(): > 0 ready, 0 not, < 0 an error):
 * 1 to sleep (*left: at most how long), else what the wait returns (0 ready, counted).
 * After a sleep that found nothing (a slice passed, the peer alive) a wait in the main
 * thread returns -EINTR (FIPC_SLEPT_A_SLICE, fastipc.h) instead of sleeping again. */
static inline int ring_looked(fipc_ring_h *h, int rc, int64_t deadline, int slept,
                              int64_t start, int64_t *left)
{
    if (rc == 0)
        rc = fipc_wait_left(deadline, SLICE_NS, left);
    if (rc == 0)
        return slept && fipc_runs_signal_handlers() ? FIPC_SLEPT_A_SLICE : 1;
    if (rc > 0)
        fipc_wait_done(&h->spin, &h->spins, &h->sleeps, slept, start);
    return rc > 0 ? 0 : rc;
}

/* One sleep of a wait on the futex word at seq_off (its value seq), at most `left` ns and a
 * slice (a tenth while views are stuck, for Python to look at them): fipc_futex_wait's. */
static inline int ring_nap(fipc_ring_h *h, size_t seq_off, uint32_t seq, int64_t left)
{
    int64_t slice = h->recheck ? SLICE_NS / 10 : SLICE_NS;
    return fipc_futex_wait(A32(h, seq_off), seq, left < slice ? left : slice);
}

/* Is what a wait waits for there (a reader: a frame past pos; the writer: `need` free
 * bytes)? 1 yes, 0 no, < 0 corrupt. */
static int ready(fipc_ring_h *h, uint64_t need)
{
    int rc;
    if (h->role == FIPC_RING_READER) {
        if (h->peer != h->pos)
            return 1;
        rc = load_head(h);
        return rc < 0 ? rc : h->peer != h->pos;
    }
    if (h->capacity - (h->pos - h->peer) >= need)
        return 1;
    rc = load_tail(h);
    return rc < 0 ? rc : h->capacity - (h->pos - h->peer) >= need;
}

static inline char *ring(fipc_ring_h *h, uint64_t pos)
{
    return fipc_ring_at(h->base + FIPC_RING_DATA, h->capacity, pos);
}

/* The ring frame of a payload of len bytes. */
static inline uint64_t ring_frame(uint64_t len)
{
    return FIPC_RING_FR_HDR + fipc_round_up(len, FIPC_RING_ALIGN);
}

/* A message stored whole (a quarter of the ring at most), not streamed in chunks. */
static inline int ring_whole(fipc_ring_h *h, uint64_t len)
{
    return ring_frame(len) <= h->capacity / 4;
}

/* The spin phase of a wait, until `end`: 1 ready (counted as a spin), 0 not (go and sleep),
 * < 0 an error. */
static inline int ring_spin(fipc_ring_h *h, uint64_t need, int64_t end)
{
    int rc;
    for (unsigned i = 1;; i++) {
        if ((rc = ready(h, need)) != 0) {
            if (rc > 0) {
                h->spins++;
                fipc_spin_caught(&h->spin);
            }
            return rc;
        }
        if ((i & 255u) == 0) {
            if (fipc_is_closed(&h->closed))
                return -EBADF;
            if ((rc = spin_check(h)) != 0)
                return rc < 0 ? rc : 0;
            if (fipc_now_ns() >= end)
                return 0;
        }
        fipc_cpu_relax();
    }
}

/* Writer, waiting for its slowest reader: room for `need` bytes at pos. */
static inline int ring_room(fipc_ring_h *h, uint64_t need, double timeout, int64_t *deadline)
{
    if (h->capacity - (h->pos - h->peer) >= need)
        return 0;
    int rc = ready(h, need);
    if (rc != 0)
        return rc < 0 ? rc : 0;
    publish_head(h); /* what we batched must be visible before we wait */
    return wait_ring(h, need, timeout, deadline);
}

/* Make room for a frame of `frame` bytes at pos (a PAD to the ring's end first if it would
 * not fit before it) and say where it goes. */
static int ring_reserve(fipc_ring_h *h, uint64_t frame, double timeout, int64_t *deadline,
                        char **at)
{
    uint64_t room = h->capacity - (h->pos & (h->capacity - 1));
    int rc = make_room(h, frame > room ? room + frame : frame, timeout, deadline);
    if (rc < 0)
        return rc;
    if (frame > room) {
        char *p = ring(h, h->pos);
        fipc_frame_head(p, (uint32_t)(room - FIPC_RING_FR_HDR), FIPC_FR_PAD);
        stamp(h, p);
        h->pos += room;
    }
    *at = ring(h, h->pos);
    return 0;
}

/* Write one message without publishing head (the caller does): whole, or streamed in
 * chunks, each published at once so that readers copy one while we fill the next
 * (*progress: bytes of it streamed already, to resume an interrupted call). */
static int64_t ring_put(fipc_ring_h *h, const char *buf, uint64_t len, double timeout,
                        int64_t *deadline, uint64_t *progress)
{
    char *p;
    int rc;
    if (ring_whole(h, len)) {
        uint64_t frame = ring_frame(len);
        if ((rc = ring_reserve(h, frame, timeout, deadline, &p)) < 0)
            return rc;
        fipc_frame_head(p, (uint32_t)len, FIPC_FR_WHOLE);
        stamp(h, p);
        memcpy(p + FIPC_RING_FR_HDR, buf, len);
        h->pos += frame;
        sent_one(h);
        return 0;
    }
    if (!streams(h))
        return FIPC_TOOBIG;
    uint64_t done = *progress;
    while (done < len) {
        uint64_t hdr = done == 0 ? FIPC_RING_FIRST_HDR : FIPC_RING_FR_HDR;
        uint64_t want = len - done < h->chunk ? len - done : h->chunk;
        uint64_t frame = hdr + fipc_round_up(want, FIPC_RING_ALIGN);
        if ((rc = ring_reserve(h, frame, timeout, deadline, &p)) < 0)
            return rc;
        fipc_frame_head(p, (uint32_t)want, done == 0 ? FIPC_FR_FIRST : FIPC_FR_NEXT);
        stamp(h, p);
        if (done == 0)
            fipc_wr64(p + FIPC_RING_FR_HDR, len);
        memcpy(p + hdr, buf + done, want);
        h->pos += frame;
        publish_head(h);
        done += want;
        *progress = done;
    }
    sent_one(h);
    return 0;
}

/* 0 if these messages may be sent now, else why not: not the writer, one too large, refuse. */
static inline int ring_refuse(fipc_ring_h *h, const uint64_t *lens, uint64_t count)
{
    if (h->role != FIPC_RING_WRITER)
        return -EBADF;
    for (uint64_t i = 0; i < count; i++)
        if (lens[i] > h->max_message)
            return FIPC_TOOBIG;
    return refuse(h);
}

static int64_t ring_send(fipc_ring_h *h, const char *buf, uint64_t len, double timeout,
                         uint64_t *progress)
{
    int64_t deadline = FIPC_DEADLINE_UNSET;
    int64_t rc = ring_refuse(h, &len, 1);
    if (rc == 0)
        rc = ring_put(h, buf, len, timeout, &deadline, progress);
    if (rc < 0)
        return rc;
    publish_head(h);
    *progress = 0;
    return 0;
}

/* count messages (bufs[i], lens[i]); *sent: how many went whole. A message streamed in part
 * when the call ended keeps its progress (*progress, 0 once it went) for the next call,
 * which starts at it, to resume. */
static int64_t ring_send_many(fipc_ring_h *h, const char *const *bufs, const uint64_t *lens,
                              uint64_t count, double timeout, uint64_t *sent,
                              uint64_t *progress)
{
    int64_t deadline = FIPC_DEADLINE_UNSET;
    *sent = 0;
    int64_t rc = ring_refuse(h, lens, count);
    if (rc < 0)
        return rc;
    uint64_t i = 0;
    for (; i < count; i++) {
        rc = ring_put(h, bufs[i], lens[i], timeout, &deadline, progress);
        if (rc < 0)
            break;
        *progress = 0;
    }
    publish_head(h);
    *sent = i;
    return rc < 0 ? rc : 0;
}

/* Reader: the frame at pos, checked against the ring and against what head has published
 * (peer). */
static inline int ring_frame_at(fipc_ring_h *h, uint32_t *kind, uint64_t *len,
                                uint64_t *total, char **data, uint64_t *size)
{
    if (h->pos & (FIPC_RING_ALIGN - 1))
        return FIPC_CORRUPT;
    uint64_t room = h->capacity - (h->pos & (h->capacity - 1));
    uint64_t avail = h->peer - h->pos;
    if (avail < FIPC_RING_FR_HDR || avail > h->capacity)
        return FIPC_CORRUPT;
    return fipc_frame_at(ring(h, h->pos), room, avail, FIPC_RING_FR_HDR, FIPC_RING_FIRST_HDR,
                         FIPC_RING_ALIGN, kind, len, total, data, size);
}

/* Reader: done with the frame at pos; its space goes back with the next release. */
static inline void consume(fipc_ring_h *h, uint64_t size)
{
    h->pos += size;
    h->release = h->pos;
}

/* Reader: a frame that does not start a message (its kind, ...): 0 if it does; else 1 with
 * *n: 0 consumed (a PAD, a chunk: go on), the message's length once whole, or < 0. */
static inline int ring_continued(fipc_ring_h *h, uint32_t kind, char *dest, uint64_t cap,
                                 uint64_t len, const char *data, uint64_t size, int64_t *n);

/* Reader, a streamed message: assembled chunk by chunk in the caller's buffer, each chunk
 * at the offset reached (msg_done), and only in the buffer that holds its start (msg_dest):
 * a call cut short leaves it there, and the caller moves what came to a buffer of its own
 * and stores that buffer in msg_dest before it goes on; continued into any other buffer,
 * the message is dropped whole. Never a message with a stale beginning. The caller gives
 * the space consumed back (its release) when these return >= 0. */

/* The FIRST frame (len bytes at data) of a message of `total` bytes, into dest (which can
 * hold `total`): its length if that was the whole of it, else 0 (its NEXT frames follow). */
static inline int64_t ring_first(fipc_ring_h *h, char *dest, uint64_t len, uint64_t total,
                                 const char *data, uint64_t size)
{
    memcpy(dest, data, len);
    consume(h, size);
    if (len == total)
        return (int64_t)total;
    h->msg_total = total;
    h->msg_done = len;
    h->msg_dest = dest;
    return 0;
}

/* A NEXT frame: the message's length once whole; 0 if consumed and not whole yet (a chunk
 * copied, or the rest of a message dropped here or abandoned by its writer); `need` if dest
 * cannot hold it (NULL, or fewer than cap bytes: nothing consumed, last_len says how many
 * it takes); FIPC_CORRUPT. */
static inline int64_t ring_next(fipc_ring_h *h, char *dest, uint64_t cap, uint64_t len,
                                const char *data, uint64_t size, int64_t need)
{
    if (h->msg_total && dest != NULL && dest != h->msg_dest)
        h->msg_total = h->msg_done = 0; /* not where its start is: dropped whole */
    if (h->msg_total == 0) {
        consume(h, size);
        return 0;
    }
    if (dest == NULL || cap < h->msg_total) {
        h->last_len = h->msg_total;
        return need;
    }
    if (len > h->msg_total - h->msg_done)
        return FIPC_CORRUPT;
    memcpy(dest + h->msg_done, data, len);
    h->msg_done += len;
    consume(h, size);
    if (h->msg_done < h->msg_total)
        return 0;
    int64_t n = (int64_t)h->msg_total;
    h->msg_total = h->msg_done = 0;
    return n;
}

static inline int ring_continued(fipc_ring_h *h, uint32_t kind, char *dest, uint64_t cap,
                                 uint64_t len, const char *data, uint64_t size, int64_t *n)
{
    *n = 0;
    if (kind == FIPC_FR_PAD)
        consume(h, size);
    else if (kind != FIPC_FR_NEXT)
        return 0;
    else if ((*n = ring_next(h, dest, cap, len, data, size, FIPC_NEED)) >= 0)
        give_back(h);
    return 1;
}

#endif /* FIPC_RING_T */
