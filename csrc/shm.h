/* fastipc shm.c: shared memory and the ring channel.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_SHM_H
#define FASTIPC_SHM_H

#include "fastipc.h"

/* CDEF BEGIN */
/* The binary layout (docs/shm-layout.md), exported so that tests hold src/fastipc/_shm_layout.py
 * against it. One fipc_shm per endpoint, owned by Python (ffi.new); base is the start of a
 * mapping Python owns (mmap), map_size its real size from fstat. Every field read from the
 * shared header is checked against map_size. */
enum {
    FIPC_SHM_HEADER = 256,      /* bytes before the ring's data */
    FIPC_SHM_MAGIC = 0x4D485346,
    FIPC_SHM_VERSION = 2,
    FIPC_SHM_MIN_CAPACITY = 4096,
    FIPC_SHM_OFF_MAGIC = 0, FIPC_SHM_OFF_VERSION = 4, FIPC_SHM_OFF_CAPACITY = 8,
    FIPC_SHM_OFF_DATA = 16, FIPC_SHM_OFF_MAXMSG = 24, FIPC_SHM_OFF_WPID = 32,
    FIPC_SHM_OFF_WSTATE = 36, FIPC_SHM_OFF_RPID = 40, FIPC_SHM_OFF_RSTATE = 44,
    FIPC_SHM_OFF_HEAD = 64, FIPC_SHM_OFF_TAIL = 128, FIPC_SHM_OFF_DSEQ = 192,
    FIPC_SHM_OFF_RWAIT = 196, FIPC_SHM_OFF_SSEQ = 200, FIPC_SHM_OFF_WWAIT = 204,
    FIPC_SHM_ST_NONE = 0, FIPC_SHM_ST_OPEN = 1, FIPC_SHM_ST_CLOSED = 2,
    FIPC_SHM_FR_WHOLE = 1, FIPC_SHM_FR_FIRST = 2, FIPC_SHM_FR_NEXT = 3, FIPC_SHM_FR_PAD = 4,
    FIPC_SHM_FR_HDR = 8, FIPC_SHM_FIRST_HDR = 16, FIPC_SHM_MAX_CHUNK = 262144,
    FIPC_SHM_LOCK_WRITER = 0, FIPC_SHM_LOCK_READER = 1
};

typedef struct fipc_shm {
    char *base;             /* the mapping */
    uint64_t map_size;      /* its real size */
    uint64_t capacity;      /* ring bytes: map_size - FIPC_SHM_HEADER, a power of two */
    uint64_t pos;           /* writer: next head; reader: where the next frame starts */
    uint64_t peer;          /* writer: last tail seen; reader: last head seen */
    uint64_t release;       /* reader: tail to publish (frames read but not yet released) */
    uint64_t hold;          /* reader: never release beyond this (a live recv_view); or ~0 */
    uint64_t max_message;   /* largest message accepted (reader) or sent (writer) */
    uint64_t msg_total;     /* reader: length of the streamed message being assembled */
    uint64_t msg_done;      /* reader: bytes of it copied so far */
    char *msg_dest;         /* reader: the buffer holding them (Python moves them, then
                               stores the new buffer here; another buffer drops it) */
    uint64_t chunk;         /* writer: largest chunk of a streamed message */
    uint64_t last_len;      /* reader: length of the message the last recv looked at */
    uint64_t last_pos;      /* reader: where that frame starts (for a hold) */
    uint64_t published;     /* reader: the tail last stored in the header */
    uint64_t want;          /* writer: free bytes the last send that found the ring full
                               needed (what a parked async sender waits for) */
    int64_t probed_ns;      /* when the peer's liveness lock was last probed */
    fipc_spin spin;         /* the adaptive spin of waits */
    int32_t fd;             /* an fd of the segment: the peer's liveness lock is probed on it */
    int32_t role;           /* 1 writer, 2 reader */
    uint64_t spins, sleeps; /* statistics: waits satisfied by spinning / by sleeping */
    int32_t closed;         /* set by fipc_shm_wake/close: calls return -EBADF */
    int32_t recheck;        /* reader: views still exported: a wait returns -EINTR after
                               each sleep of at most 10 ms, for Python to look at them */
    int32_t broken;         /* a page of the mapping was lost (truncated by a peer): every
                               call returns FIPC_CORRUPT */
} fipc_shm;

int fipc_shm_writer_init(fipc_shm *h, char *base, uint64_t map_size, int32_t fd, int32_t pid,
                         uint64_t max_message, double spin);
/* Attach a reader: checks the header against map_size; FIPC_CORRUPT when it cannot be a
 * channel, -EBUSY if it already has a reader. */
int fipc_shm_reader_init(fipc_shm *h, char *base, uint64_t map_size, int32_t fd, int32_t pid,
                         uint64_t max_message, double spin);
/* Send one message; *progress holds the bytes of it already streamed (0 on the first call,
 * the value left by an interrupted call to resume it). 0, -ETIMEDOUT, -EPIPE, -EINTR. */
int64_t fipc_shm_send(fipc_shm *h, const char *buf, uint64_t len, double timeout,
                      uint64_t *progress);
/* Send count messages (bufs[i], lens[i]); *sent says how many went whole (all of them when
 * it returns 0). A message streamed in part keeps its progress in *progress, as in
 * fipc_shm_send, for the next call (starting at it) to resume. */
int64_t fipc_shm_send_many(fipc_shm *h, const char *const *bufs, const uint64_t *lens,
                           uint64_t count, double timeout, uint64_t *sent, uint64_t *progress);
/* Receive the next message. dest NULL: a message stored whole is returned in place (*ptr into
 * the ring, valid until the next call); a streamed one returns FIPC_NEED. dest given: the
 * message is copied there (FIPC_NEED if cap is too small; it stays queued). A streamed
 * message continues into dest at msg_done: the caller passes the same buffer (or one holding
 * the same first msg_done bytes, stored in msg_dest) until it is whole; another buffer drops it
 * whole. Returns the length, FIPC_EOF,
 * FIPC_CORRUPT, FIPC_TOOBIG, -ETIMEDOUT, -EINTR. */
int64_t fipc_shm_recv(fipc_shm *h, char *dest, uint64_t cap, double timeout, char **ptr);
/* The next message if it is whole in the ring already, in place (*ptr, valid until the next
 * call), without waiting and without looking at the writer: its length, -EAGAIN if none is
 * published, FIPC_NEED (nothing consumed) if the next is streamed or larger than
 * max_message (fipc_shm_recv then says what to do with it), or FIPC_CORRUPT. For the
 * messages after the first of a batch. */
int64_t fipc_shm_recv_next(fipc_shm *h, char **ptr);
/* The messages returned in place (recv with dest NULL, recv_next) have been copied out:
 * hand their space back to the writer if it waits for it (or a sixteenth of the ring is
 * due). Not after a recv_view's message, which set_hold holds. */
void fipc_shm_consumed(fipc_shm *h);
/* Set the hold (never release beyond it; UINT64_MAX: none) and release every frame read so
 * far up to it. */
int fipc_shm_set_hold(fipc_shm *h, uint64_t hold);
/* Async waits: set this end's sleeping flag, look once more, and give the futex word to wait
 * on: 0 parked (*offset, *expected: the word's offset in the mapping and its value), 1 ready
 * now (the flag is cleared), or FIPC_EOF / -EPIPE / FIPC_CORRUPT / -EBADF. */
int fipc_shm_park(fipc_shm *h, uint64_t *offset, uint32_t *expected);
void fipc_shm_unpark(fipc_shm *h);
/* Writer: 1 once the reader has taken everything sent so far, 0 not yet, -EPIPE if it has
 * closed or died. */
int fipc_shm_flushed(fipc_shm *h);
/* Writer: 1 once a reader has attached (it may have closed since). */
int fipc_shm_reader_attached(fipc_shm *h);
/* Make calls of this end blocked in other threads return -EBADF now (close() from another
 * thread); the peer is not told. */
void fipc_shm_wake(fipc_shm *h);
/* Mark this end closed in the header and wake the peer, and any call of ours blocked in
 * another thread (it returns -EBADF). Called once no call of this end is in progress (the
 * native handle's count, csrc/py/shm.c, says when); the mapping may go after it. */
void fipc_shm_close(fipc_shm *h);
/* 1 if a page of the mapping was lost (see on_sigbus): what was read since is zeros. */
int fipc_shm_broken(fipc_shm *h);
/* Forget the mapping (before Python unmaps it): its SIGBUS guard ends. */
void fipc_shm_forget(fipc_shm *h);
/* 1 if another open file description holds the liveness lock `byte` of the segment fd (the
 * end that took it is alive), 0 if not, -errno. */
int fipc_shm_lock_held(int fd, int64_t byte);
/* CDEF END */

#endif
