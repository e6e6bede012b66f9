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

#endif
