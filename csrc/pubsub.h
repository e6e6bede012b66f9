/* fastipc pubsub.c: one publisher, many subscribers, over one ring in shared memory.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 * The binary layout is documented in docs/pubsub-layout.md; the enum below is the one C
 * statement of it, and src/fastipc/_backend/pubsub.py (the Python statement, used by the
 * pure backend) is tested against it.
 */
#ifndef FASTIPC_PUBSUB_H
#define FASTIPC_PUBSUB_H

#include "fastipc.h"

/* CDEF BEGIN */
enum {
    FIPC_PUB_MAGIC = 0x42555046,    /* "FPUB" little-endian */
    FIPC_PUB_VERSION = 1,
    /* header fields (byte offsets) */
    FIPC_PUB_OFF_MAGIC = 0,         /* u32, written last (release): 0 while setting up */
    FIPC_PUB_OFF_VERSION = 4,       /* u32 */
    FIPC_PUB_OFF_CAPACITY = 8,      /* u64 ring bytes: power of two, map size - HEADER */
    FIPC_PUB_OFF_DATA = 16,         /* u64 = FIPC_PUB_HEADER */
    FIPC_PUB_OFF_MAXMSG = 24,       /* u64 the publisher's max_message_size */
    FIPC_PUB_OFF_PID = 32,          /* u32 publisher pid (display only) */
    FIPC_PUB_OFF_STATE = 36,        /* u32 1 open, 2 closed */
    FIPC_PUB_OFF_OVERFLOW = 40,     /* u32 1 block, 2 drop_oldest */
    FIPC_PUB_OFF_NSLOTS = 44,       /* u32 = FIPC_PUB_SLOTS */
    FIPC_PUB_OFF_CHUNK = 48,        /* u64 chunk of a streamed message */
    FIPC_PUB_OFF_HEAD = 64,         /* u64 bytes published, ever */
    FIPC_PUB_OFF_COUNT = 72,        /* u64 messages published, ever (as of head) */
    FIPC_PUB_OFF_SNAP = 80,         /* u32 odd while count and head are being updated */
    FIPC_PUB_OFF_OLDEST = 128,      /* u64 drop_oldest: first frame not being overwritten */
    FIPC_PUB_OFF_DSEQ = 192,        /* u32 futex word subscribers sleep on */
    FIPC_PUB_OFF_SWAIT = 196,       /* u32 1: some subscriber sleeps (publisher clears) */
    FIPC_PUB_OFF_SSEQ = 200,        /* u32 futex word the publisher sleeps on */
    FIPC_PUB_OFF_PWAIT = 204,       /* u32 1: the publisher sleeps */
    FIPC_PUB_OFF_PWANT = 208,       /* u64 the cursor that wakes the sleeping publisher */
    FIPC_PUB_OFF_SLOTS = 256,       /* the subscriber slots */
    FIPC_PUB_SLOTS = 64,
    FIPC_PUB_SLOT_SIZE = 64,
    FIPC_PUB_SLOT_STATE = 0,        /* u32 0 free, 1 active */
    FIPC_PUB_SLOT_PID = 4,          /* u32 subscriber pid (display only) */
    FIPC_PUB_SLOT_CURSOR = 8,       /* u64 bytes this subscriber is done with */
    FIPC_PUB_HEADER = 4352,         /* OFF_SLOTS + SLOTS * SLOT_SIZE: the ring starts here */
    FIPC_PUB_MIN_CAPACITY = 4096,
    FIPC_PUB_WAKE_SHIFT = 3,        /* a publisher waiting for room is woken once a
                                       capacity >> WAKE_SHIFT slice of the ring is free */
    /* frames in the ring */
    FIPC_PUB_FR_WHOLE = 1, FIPC_PUB_FR_FIRST = 2, FIPC_PUB_FR_NEXT = 3, FIPC_PUB_FR_PAD = 4,
    FIPC_PUB_FR_HDR = 16,           /* u32 length, u32 kind, u64 message number */
    FIPC_PUB_FIRST_HDR = 32,        /* ... then u64 total length (FIRST), 8 reserved */
    FIPC_PUB_ALIGN = 16,            /* frames start at multiples of this */
    /* OFD locks (liveness): the publisher holds byte LOCK, subscriber slot i LOCK + 1 + i */
    FIPC_PUB_LOCK = 0x7fff0000,
    /* status codes */
    FIPC_PUB_NOTREADY = -1201,      /* subscribe: the publisher has not finished its header */
    FIPC_PUB_RECHECK = -1202        /* recv: views are still exported: the caller looks at
                                       them (Holds._unstick), then waits again */
};

typedef struct fipc_pub {
    char *base;             /* the mapping (owned by Python) */
    uint64_t map_size;      /* its real size (fstat) */
    uint64_t capacity;      /* ring bytes */
    uint64_t pos;           /* publisher: next head; subscriber: where the next frame starts */
    uint64_t peer;          /* publisher: lowest cursor seen; subscriber: last head seen */
    uint64_t oldest;        /* publisher (drop_oldest): first frame not overwritten */
    uint64_t seq;           /* publisher: next message number; subscriber: the expected one */
    uint64_t missed;        /* subscriber: messages lost to overruns */
    uint64_t release;       /* subscriber: cursor to publish */
    uint64_t published;     /* subscriber: cursor last stored */
    uint64_t hold;          /* subscriber: never release beyond this (a live view), or ~0 */
    uint64_t max_message;
    uint64_t chunk;
    uint64_t msg_total;     /* subscriber: streamed message being assembled */
    uint64_t msg_done;      /* bytes of it copied so far */
    char *msg_dest;         /* the buffer holding them (Python moves them, then stores the
                               new buffer here; another buffer drops the message whole) */
    uint64_t last_len;      /* subscriber: length of the last message looked at */
    uint64_t last_pos;      /* subscriber: where its frame starts */
    uint64_t spins, sleeps; /* statistics */
    fipc_spin spin;
    int32_t fd;             /* the segment's fd (OFD lock probes) */
    int32_t slot;           /* subscriber: its slot; publisher: -1 */
    int32_t role;           /* 1 publisher, 2 subscriber */
    int32_t overflow;       /* 1 block, 2 drop_oldest */
    int32_t closed;         /* set by fipc_pub_wake/close: waits return -EBADF */
    int32_t seq_known;      /* subscriber: seq holds the expected number */
    uint64_t progress;      /* publisher: bytes of a streamed message sent (resumed by the
                               next attempt of the same call, 0 once it is abandoned) */
    int32_t recheck;        /* subscriber: views still exported: a wait returns
                               FIPC_PUB_RECHECK after a tenth of its sleep slice, for Python
                               to look at them */
    uint64_t want;          /* publisher: room its last attempt lacked (a parked sender's) */
} fipc_pub;

int fipc_pub_init(fipc_pub *h, char *base, uint64_t map_size, int32_t fd, int32_t pid,
                  uint64_t max_message, int32_t overflow, double spin);
/* The caller holds the OFD lock of `slot`. FIPC_PUB_NOTREADY, FIPC_CORRUPT, -errno. */
int fipc_sub_init(fipc_pub *h, char *base, uint64_t map_size, int32_t fd, int32_t slot,
                  int32_t pid, uint64_t max_message, double spin);
/* Mark closed (publisher: the stream ends; subscriber: its slot is freed) and wake every
 * sleeper, our own blocked calls included. */
void fipc_pub_close(fipc_pub *h);
/* CDEF END */


/* The per-message calls, made by the native handles (csrc/py/pubsub.c), which keep the
 * object's closed flag and busy count: not part of the cffi interface. */

/* One message, from the handle's progress (bytes of it streamed already by an earlier
 * attempt of the same call); 0 once it went, and progress is back to 0. */
int64_t fipc_pub_send(fipc_pub *h, const char *buf, uint64_t len, double timeout);
/* count messages (bufs[i], lens[i]); *sent: how many went whole. A message streamed in part
 * keeps its progress in the handle, for the next attempt (starting at it) to resume. */
int64_t fipc_pub_send_vec(fipc_pub *h, const char *const *bufs, const uint64_t *lens,
                          uint64_t count, double timeout, uint64_t *sent);
/* The next message: copied to dest (cap bytes) or, dest NULL, in place (*ptr; valid until
 * the next call, block mode only). Length, FIPC_NEED (last_len says how much; it stays
 * queued), FIPC_EOF, FIPC_CORRUPT, FIPC_TOOBIG, FIPC_PUB_RECHECK, -ETIMEDOUT, -EINTR, -EBADF.
 * A streamed message continues into dest at msg_done: the caller passes the buffer holding
 * its start (msg_dest) until it is whole; another buffer drops it whole. more: a batch's
 * second message or later (never a streamed one, never one to report as an error: NEED). */
int64_t fipc_sub_recv(fipc_pub *h, char *dest, uint64_t cap, double timeout, char **ptr,
                      int more);
/* A batch: 1 if a frame is there to look at (without waiting), 0 if not, < 0 corrupt. */
int fipc_sub_more(fipc_pub *h);
/* After messages taken in place (dest NULL) were copied out: give their space back when
 * enough of it has gathered (or the publisher waits for it). */
void fipc_sub_done(fipc_pub *h);
/* Publish the cursor (up to hold). */
void fipc_sub_release(fipc_pub *h);
/* Make blocked calls of this handle return -EBADF, without touching the segment. */
void fipc_pub_wake(fipc_pub *h);
/* Awaiting (fastipc._aio): raise this end's waiting flag (a subscriber: after publishing its
 * cursor; the publisher: asking for the room its last attempt lacked) and look once more,
 * as a blocking wait does before it sleeps: 1 ready, 0 parked (*offset, *expected: the
 * futex word's offset in the mapping and its value), FIPC_EOF (a subscriber whose publisher
 * has gone, all read), -errno. */
int fipc_pub_park(fipc_pub *h, uint64_t *offset, uint32_t *expected);
/* The publisher lowers its flag after awaiting (a subscriber's is the publisher's to clear). */
void fipc_pub_unpark(fipc_pub *h);

#endif
