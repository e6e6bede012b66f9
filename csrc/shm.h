/* fastipc shm.c: shared memory and the ring channel.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 */
#ifndef FASTIPC_SHM_H
#define FASTIPC_SHM_H

#include "fastipc.h"

/* CDEF BEGIN */
/* The binary layout is documented in docs/shm-layout.md. One fipc_shm per endpoint, owned by
 * Python (ffi.new); base is the start of a mapping Python owns (mmap), map_size its real size
 * from fstat. Every field read from the shared header is checked against map_size. */
enum {
    FIPC_SHM_HEADER = 256,      /* bytes before the ring's data */
    FIPC_SHM_NEED = -1100,      /* recv: the next message is larger than the buffer given;
                                   its length is in msg_total and it stays queued */
    FIPC_SHM_NOTREADY = -1101   /* attach: the writer has not finished its header yet */
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
    uint64_t msg_total;     /* reader: length of the chunked message being assembled */
    uint64_t msg_done;      /* reader: bytes of it copied so far */
    uint64_t chunk;         /* writer: largest chunk of a streamed message */
    uint64_t last_len;      /* reader: length of the frame returned by the last recv */
    uint64_t last_pos;      /* reader: where that frame starts (for a hold) */
    uint64_t published;     /* reader: the tail last stored in the header */
    int64_t spin_max_ns;    /* longest spin before sleeping (0: never spin) */
    int64_t spin_ns;        /* current adaptive spin budget */
    int32_t peer_pid;       /* the other end's pid, 0 while unknown */
    int32_t role;           /* 1 writer, 2 reader */
    uint64_t spins, sleeps; /* statistics: waits satisfied by spinning / by sleeping */
    int32_t busy;           /* calls in progress on this handle (any thread) */
    int32_t closed;         /* set by fipc_shm_close: calls return -EBADF */
} fipc_shm;

int fipc_shm_writer_init(fipc_shm *h, char *base, uint64_t map_size, int32_t pid,
                         uint64_t max_message, double spin);
/* Attach a reader: checks the header against map_size; FIPC_SHM_NOTREADY while the writer
 * is still writing it, FIPC_CORRUPT when it cannot be a channel, -EPIPE once closed. */
int fipc_shm_reader_init(fipc_shm *h, char *base, uint64_t map_size, int32_t pid,
                         uint64_t max_message, double spin);
/* Send one message; *progress holds the bytes of it already streamed (0 on the first call,
 * the value left by an interrupted call to resume it). 0, -ETIMEDOUT, -EPIPE, -EINTR. */
int64_t fipc_shm_send(fipc_shm *h, const char *buf, uint64_t len, double timeout,
                      uint64_t *progress);
/* Send count messages stored back to back in buf with their lengths in lens; *sent says
 * how many went (all of them when it returns 0). */
int64_t fipc_shm_send_many(fipc_shm *h, const char *buf, const uint64_t *lens, uint64_t count,
                           double timeout, uint64_t *sent);
/* Receive the next message. dest NULL: a message stored whole is returned in place (*ptr into
 * the ring, valid until the next call); a streamed one returns FIPC_SHM_NEED. dest given: the
 * message is copied there (FIPC_SHM_NEED if cap is too small; it stays queued). Returns the
 * length, FIPC_EOF, FIPC_CORRUPT, -ETIMEDOUT, -EINTR. */
int64_t fipc_shm_recv(fipc_shm *h, char *dest, uint64_t cap, double timeout, char **ptr);
/* Up to max messages copied into dest (cap bytes), lengths into lens; fmt gets a Python
 * struct format ("64s8s...") of them, NUL-terminated, fmt_cap bytes at most. Waits up to
 * timeout for the first message only. Returns the count, or an error as fipc_shm_recv. */
int64_t fipc_shm_recv_many(fipc_shm *h, char *dest, uint64_t cap, uint64_t *lens, uint64_t max,
                           char *fmt, uint64_t fmt_cap, double timeout);
/* Release every frame read so far (up to hold) and publish it to the writer. */
int fipc_shm_release(fipc_shm *h);
/* Mark this end closed in the header and wake the peer, and any call of ours blocked in
 * another thread (it returns -EBADF). Returns how many calls are still in progress: the
 * mapping must not be unmapped before fipc_shm_busy() says 0. */
int fipc_shm_close(fipc_shm *h);
int fipc_shm_busy(fipc_shm *h);
/* 1 if the process is gone (or a zombie), 0 if it runs. */
int fipc_shm_pid_dead(int32_t pid);
/* CDEF END */

#endif
