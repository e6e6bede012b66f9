/* fastipc queue.c: a many-producer many-consumer message queue in shared memory.
 *
 * Conventions (return values, timeouts, EINTR) are those of fastipc.h. The part between the
 * CDEF markers is part of the cffi cdef (src/fastipc/_build.py reads every csrc header).
 * The binary layout is documented in docs/queue-layout.md; the offsets below are the one
 * definition in C, and src/fastipc/_pure/queue.py names the same offsets (a test holds the
 * two together).
 */
#ifndef FASTIPC_QUEUE_H
#define FASTIPC_QUEUE_H

#include "fastipc.h"

/* CDEF BEGIN */
enum {
    FIPC_Q_MAGIC_LO = 0x51435046,  /* "FPCQ" little-endian: the low half of the magic */
    FIPC_Q_VERSION = 2,
    FIPC_Q_HEADER = 512,           /* bytes before the ring's data */
    FIPC_Q_OFF_MAGIC = 0,          /* u32, stored last by the creator (release) */
    FIPC_Q_OFF_VERSION = 4,        /* u32 */
    FIPC_Q_OFF_CAPACITY = 8,       /* u64 ring bytes, a power of two */
    FIPC_Q_OFF_MAX_MESSAGE = 16,   /* u64 largest message (informative) */
    FIPC_Q_OFF_MAXSIZE = 24,       /* u64 most messages queued at once, 0: no limit */
    FIPC_Q_OFF_OWNER_PID = 32,     /* i32 creator's pid (display only) */
    FIPC_Q_OFF_PUT_LOCK = 64,      /* robust process-shared pthread mutex of producers */
    FIPC_Q_OFF_GET_LOCK = 128,     /* ... of consumers */
    FIPC_Q_LOCK_SIZE = 64,         /* room for a pthread_mutex_t */
    FIPC_Q_OFF_TAIL = 192,         /* u64 tail word: (bytes put / 8) << 32 | messages put */
    FIPC_Q_OFF_DATA_SEQ = 200,     /* u32 futex word consumers sleep on */
    FIPC_Q_OFF_GET_WAITING = 204,  /* u32 1: a consumer sleeps or is about to */
    FIPC_Q_OFF_SPILLING = 208,     /* u32 1: puts go to the spill (under put_lock) */
    FIPC_Q_OFF_SPILL_W = 216,      /* u64 spill write cursor: file seq << 32 | offset */
    FIPC_Q_OFF_SPILL_PUT = 224,    /* u64 messages ever appended to the spill */
    FIPC_Q_OFF_HEAD = 256,         /* u64 head word: (bytes got / 8) << 32 | messages got */
    FIPC_Q_OFF_SPACE_SEQ = 264,    /* u32 futex word producers sleep on */
    FIPC_Q_OFF_PUT_WAITING = 268,  /* u32 1: a producer sleeps or is about to */
    FIPC_Q_OFF_SPILL_R = 272,      /* u64 spill read cursor: file seq << 32 | offset */
    FIPC_Q_OFF_SPILL_GOT = 280,    /* u64 messages ever taken from the spill */
    FIPC_Q_SPILL_HEAD = 16,        /* a spill file: "FPCQSPIL", u64 seq, then frames */
    FIPC_Q_SPILL_FILE = 1048576,   /* a spill file takes frames up to this size, then ends */
    FIPC_Q_PATH_MAX = 288,         /* room for the spill files' path prefix */
    FIPC_Q_FRAME = 8,              /* frame header: u32 length, u32 kind */
    FIPC_Q_MIN_CAPACITY = 4096,
    FIPC_Q_MARK = 8                /* get: bytes after dest's cap for the mark (see below) */
};

typedef struct fipc_queue {
    char *base;             /* the mapping (owned by Python) */
    uint64_t map_size;      /* its real size (fstat) */
    uint64_t capacity;      /* ring bytes: map_size - FIPC_Q_HEADER */
    uint64_t maxsize;       /* messages, 0: no limit */
    uint64_t last_len;      /* get: length of the message returned or needed */
    uint32_t last_kind;     /* get: its kind */
    uint64_t head_seen;     /* put: the head word last read (a lower bound of head) */
    uint64_t tail_seen;     /* get: the tail word last read (a lower bound of tail) */
    int64_t head_seen_ns;   /* when head_seen was read (CLOCK_MONOTONIC_COARSE ns; 0: never) */
    int64_t tail_seen_ns;   /* when tail_seen was read */
    uint64_t stalled_head;  /* put: head and the spill's read word when a grace last ran out */
    uint64_t stalled_r;     /*   with consumers still behind: no grace until either moves */
    int32_t closed;         /* set by fipc_queue_close: calls return -EBADF */
    fipc_spin spin;         /* adaptive spin before sleeping */
    int32_t spill_wfd;      /* the spill file open for appending (under put_lock), or -1 */
    int32_t spill_rfd;      /* the spill file open for reading (under get_lock), or -1 */
    uint32_t spill_wseq;    /* their sequence numbers */
    uint32_t spill_rseq;
    uint32_t spill_mode;    /* mode of the spill files made */
    char spill_path[288];   /* "/dev/shm/<name>.s": the spill files' prefix ("": none) */
} fipc_queue;

/* Format a fresh segment (all zero): header, both robust mutexes, magic last. */
int fipc_queue_format(char *base, uint64_t map_size, uint64_t max_message, uint64_t maxsize,
                      int32_t owner_pid);
/* Attach: checks the header against map_size; FIPC_CORRUPT if it is not a queue. */
int fipc_queue_attach(fipc_queue *q, char *base, uint64_t map_size, double spin);
/* Where the spill files go: path prefix (the file seq is appended) and mode. -ENAMETOOLONG.
 * Without it, a put that finds no room waits (the version 1 behaviour). */
int fipc_queue_set_spill(fipc_queue *q, const char *prefix, uint32_t mode);
/* Close the spill files this handle keeps open (once no call is in progress). */
void fipc_queue_release(fipc_queue *q);
/* Put one message made of n parts (gathered into one frame of `kind`): 0, -ETIMEDOUT (full
 * until the deadline), -EINTR, -EBADF (closed), -EMSGSIZE (frame over half the ring),
 * FIPC_CORRUPT. */
int fipc_queue_put(fipc_queue *q, const char *const *parts, const uint64_t *lens, uint32_t n,
                   uint32_t kind, double timeout);
/* The one-part put of the hot path. */
int fipc_queue_put1(fipc_queue *q, const char *data, uint64_t len, uint32_t kind,
                    double timeout);
/* fipc_queue_put1 that also sets *committed to 1 as it commits the message (before it
 * returns), so that a caller interrupted right after the call knows the message is queued. */
int fipc_queue_put_ref(fipc_queue *q, const char *data, uint64_t len, uint32_t kind,
                       double timeout, char *committed);
/* Put count messages stored back to back in buf; *sent says how many went. */
int fipc_queue_put_many(fipc_queue *q, const char *buf, const uint64_t *lens, uint64_t count,
                        uint32_t kind, double timeout, uint64_t *sent);
/* The mark (FIPC_Q_MARK bytes at dest + cap, so dest holds cap + FIPC_Q_MARK bytes): a get
 * that took a message stores kind << 32 | length there, a get_many the count it took, in
 * the call that commits head, so that a caller into which an exception is raised after the
 * call knows what it holds (the caller clears it as it delivers the message). Every get also
 * clears it first, whatever it then returns.
 * Take the next message into dest (cap bytes): its length alone if its kind is `want`, else
 * kind << 32 | length (kinds are >= 1: always above any length; want 0 asks for the second
 * form always). One return value, so that the hot path reads no struct field and, for the
 * kind it expects, does no arithmetic. Or FIPC_NEED (length in last_len; it stays
 * queued), -ETIMEDOUT, -EINTR, -EBADF, FIPC_CORRUPT. */
int64_t fipc_queue_get(fipc_queue *q, char *dest, uint64_t cap, double timeout,
                       uint32_t want);
/* Take up to max messages that fit in dest back to back (lengths and kinds filled in; the
 * count stored in the mark at dest + cap),
 * waiting up to timeout for the first only: the count, or as fipc_queue_get. */
int64_t fipc_queue_get_many(fipc_queue *q, char *dest, uint64_t cap, uint64_t *lens,
                            uint32_t *kinds, uint64_t max, double timeout);
/* Messages queued now (a snapshot), or FIPC_CORRUPT. */
int64_t fipc_queue_count(fipc_queue *q);
/* Bytes of the ring in use now (a snapshot). */
int64_t fipc_queue_used(fipc_queue *q);
/* Mark this handle closed and wake every sleeper of the queue (ours return -EBADF at once).
 * The caller counts its calls in progress and unmaps only once none is. */
void fipc_queue_close(fipc_queue *q);
/* Awaiting (fastipc._aio): raise the waiting flag of a consumer (room < 0) or of a producer
 * that needs room for a payload of `room` bytes, exactly as a blocking sleeper does, then
 * look again: 1 = ready now, 0 = wait while the futex word at base + *seq_off holds *seq
 * (the other side's ordinary wake-up bumps it), -EBADF (closed), FIPC_CORRUPT. The flag is
 * shared by every sleeper of that side, so it is never lowered here: the next commit does. */
int fipc_queue_park(fipc_queue *q, int64_t room, uint64_t *seq_off, uint32_t *seq);
/* CDEF END */

/* The native handle's calls (csrc/py/queue.c): fipc_queue_put1, fipc_queue_put_many and
 * fipc_queue_get_many (without the mark), plus `try_only`: an attempt that never waits, not
 * even for a busy mutex (made with the GIL held): -EAGAIN when it would have to, or when a
 * put would go to the spill (a blocking put gives consumers a grace first), with nothing
 * done (put_many: *sent went). The timeout is then ignored (0); a get finding the queue
 * empty returns -ETIMEDOUT. */
int fipc_queue_put_h(fipc_queue *q, const char *data, uint64_t len, uint32_t kind,
                     double timeout, int try_only);
int fipc_queue_put_many_h(fipc_queue *q, const char *buf, const uint64_t *lens, uint64_t count,
                          uint32_t kind, double timeout, int try_only, uint64_t *sent);
int64_t fipc_queue_get_many_h(fipc_queue *q, char *dest, uint64_t cap, uint64_t *lens,
                              uint32_t *kinds, uint64_t max, double timeout, int try_only);

#endif
