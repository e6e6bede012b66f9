/* fastipc csrc/py/shm.c: the native handles of fastipc.shm.Writer and fastipc.shm.Reader
 * (see handle.h). Each embeds the C core's end of the channel (fipc_shm, csrc/shm.c) and
 * holds a buffer export of the mapping, which Python owns (an mmap.mmap): the mapping cannot
 * be closed while the handle may touch it, and the export is released only once no call is
 * busy (the kind's release). What is not per-message (create, attach, spin, stats, park,
 * the views' holds) stays in Python, through cffi on the same fipc_shm (`_core`). */
#include "ring_handle.h"

#include <errno.h>
#include <string.h>

#include "../shm.h"

typedef struct {
    fipc_handle h;
    fipc_shm core;      /* this end of the channel */
    Py_buffer map;      /* the mapping, exported while `mapped` */
    int mapped;
    uint64_t progress;  /* send: bytes of a streamed message in the ring already */
    uint64_t nowait;    /* _send_nowait: the same, kept between attempts until _abandon */
    PyObject *pending;  /* reader: the bytes a streamed message is assembled in (C writes
                           into it until it is whole; nobody else sees it before), or NULL */
} ShmHandle;

/* A wait that ends after a sleep slice because views are stuck (fipc_shm.recheck): Python
 * looks at them (_unstick_views), then the wait goes on for the time left. */
enum { RECHECK = -1200 };

static void shm_wake(fipc_handle *h)
{
    fipc_shm_wake(&((ShmHandle *)h)->core);
}

static void forget(ShmHandle *s)
{
    fipc_shm_forget(&s->core);
    Py_CLEAR(s->pending);
    PyBuffer_Release(&s->map);
    s->mapped = 0;
}

static void shm_release(fipc_handle *h)
{
    ShmHandle *s = (ShmHandle *)h;
    if (!s->mapped)
        return;
    fipc_shm_close(&s->core); /* the peer is told; no call of ours is in progress */
    forget(s);
}

static const fipc_handle_kind shm_kind = {shm_wake, shm_release};

/* ------------------------------------------------------------------------ life cycle */

/* _open(mm, fd, pid, max_message, spin): this end of the channel in the mapping `mm`: the
 * writer writes the header, the reader checks it. Returns the C status (0, or < 0 for
 * fastipc._core.check), the handle not open yet (Handle._open_handle opens it). */
static PyObject *shm_open(ShmHandle *self, PyObject *args, int writer)
{
    PyObject *mm;
    int fd, pid;
    unsigned long long max_message;
    double spin;
    if (!PyArg_ParseTuple(args, "OiiKd:_open", &mm, &fd, &pid, &max_message, &spin))
        return NULL;
    if (fipc_ring_map(&self->h, "channel", mm, &self->map) < 0)
        return NULL;
    int rc = (writer ? fipc_shm_writer_init : fipc_shm_reader_init)(
        &self->core, self->map.buf, (uint64_t)self->map.len, fd, pid, max_message, spin);
    if (rc < 0) {
        PyBuffer_Release(&self->map);
        return PyLong_FromLong(rc);
    }
    self->mapped = 1;
    self->h.kind = &shm_kind;
    return PyLong_FromLong(0);
}

static PyObject *writer_open(ShmHandle *self, PyObject *args)
{
    return shm_open(self, args, 1);
}

static PyObject *reader_open(ShmHandle *self, PyObject *args)
{
    return shm_open(self, args, 0);
}

/* _detach(): let go of the mapping without a word to the peer: a copy inherited through
 * fork() (closed from then on), or an end whose set-up failed (it may be opened again). */
static PyObject *shm_detach(ShmHandle *self, PyObject *Py_UNUSED(ignored))
{
    int32_t open = FIPC_H_OPEN;
    atomic_compare_exchange_strong(&self->h.state, &open, FIPC_H_RELEASED);
    if (self->mapped)
        forget(self);
    if (atomic_load(&self->h.state) == FIPC_H_UNOPENED)
        self->h.kind = NULL; /* never opened: _open may set it up again (fipc_h_unopened) */
    Py_RETURN_NONE;
}

static PyObject *shm_get_core(ShmHandle *self, void *Py_UNUSED(closure))
{
    if (!self->mapped) {
        PyErr_SetString(PyExc_ValueError, "the channel handle is not open");
        return NULL;
    }
    return PyLong_FromVoidPtr(&self->core);
}

/* ------------------------------------------------------------------------ helpers */

/* A message's bytes, copied once out of the ring; FIPC_CORRUPT if a page was lost under
 * the copy (the SIGBUS guard of csrc/shm.c gave it zeros). */
static int64_t copy_out(ShmHandle *s, const char *ptr, int64_t n, PyObject **out)
{
    PyObject *b = PyBytes_FromStringAndSize(ptr, (Py_ssize_t)n);
    if (b == NULL)
        return FIPC_H_RAISED;
    if (fipc_shm_broken(&s->core)) {
        Py_DECREF(b);
        return FIPC_CORRUPT;
    }
    *out = b;
    return n;
}


/* ------------------------------------------------------------------------ writer */

typedef struct {
    ShmHandle *s;
    const char *buf;
    uint64_t len;
    uint64_t *progress;
} send_ctx;

static int64_t send_attempt(void *ctx, double timeout)
{
    send_ctx *x = ctx;
    return fipc_shm_send(&x->s->core, x->buf, x->len, timeout, x->progress);
}

static PyObject *send_body(fipc_handle *h, fipc_ring_args *a)
{
    ShmHandle *self = (ShmHandle *)h;
    send_ctx x = {self, a->view.buf, (uint64_t)a->view.len, &self->progress};
    self->progress = 0;
    int64_t rc = fipc_h_wait(h, send_attempt, &x, a->timeout, -ETIMEDOUT);
    if (rc < 0)
        self->progress = 0; /* a message cut short is abandoned: the reader drops it */
    return fipc_h_end(h, rc, a->timeout, rc < 0 ? NULL : Py_NewRef(Py_None));
}
FIPC_RING_METHOD(writer_send, ShmHandle, "send", ("data", "timeout"), 1, fipc_h_begin,
                 fipc_ring_buffer, send_body)

typedef struct {
    ShmHandle *s;
    const char *const *bufs;
    const uint64_t *lens;
    uint64_t count, done;
} many_ctx;

static int64_t many_attempt(void *ctx, double timeout)
{
    many_ctx *x = ctx;
    uint64_t sent = 0;
    int64_t rc = fipc_shm_send_many(&x->s->core, x->bufs + x->done, x->lens + x->done,
                                    x->count - x->done, timeout, &sent, &x->s->progress);
    x->done += sent;
    return rc;
}

static PyObject *send_many_body(fipc_handle *h, fipc_ring_args *a)
{
    ShmHandle *self = (ShmHandle *)h;
    double timeout = a->timeout;
    fipc_ring_batch b;
    if (fipc_ring_batch_of(a->x, h, &b) < 0)
        return fipc_h_fail(h);
    many_ctx x = {self, b.bufs, b.lens, (uint64_t)b.n, 0};
    int64_t rc = 0;
    self->progress = 0;
    if (b.n > 0)
        rc = fipc_h_wait(h, many_attempt, &x, timeout, -ETIMEDOUT);
    fipc_ring_batch_free(&b);
    if (rc < 0) {
        self->progress = 0; /* a message cut short is abandoned: the reader drops it */
        fipc_h_raise(h, rc, timeout);
        fipc_ring_note_sent(x.done);
        return fipc_h_fail(h);
    }
    return fipc_h_done(h, Py_NewRef(Py_None));
}
FIPC_RING_METHOD(writer_send_many, ShmHandle, "send_many", ("messages", "timeout"), 1,
                 fipc_h_begin, NULL, send_many_body)

/* _send_nowait(data): one attempt at sending data whole, without waiting: True once it is
 * all in the ring, False while the ring is full (a streamed message keeps its progress for
 * the next attempt with the same data, until _abandon). For send_async. */
static PyObject *send_nowait_body(fipc_handle *h, fipc_ring_args *a)
{
    ShmHandle *self = (ShmHandle *)h;
    int64_t rc = fipc_shm_send(&self->core, a->view.buf, (uint64_t)a->view.len, 0.0,
                               &self->nowait);
    if (rc < 0 && rc != -ETIMEDOUT && rc != -EINTR) {
        self->nowait = 0;
        return fipc_h_end(h, rc, 0.0, NULL);
    }
    return fipc_h_done(h, PyBool_FromLong(rc == 0));
}
FIPC_RING_NOWAIT(writer_send_nowait, ShmHandle, fipc_ring_buffer, send_nowait_body)

/* _abandon(): give up a message _send_nowait left half-streamed (the reader drops it). */
static PyObject *writer_abandon(ShmHandle *self, PyObject *Py_UNUSED(ignored))
{
    self->nowait = 0;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ reader */

typedef struct {
    ShmHandle *s;
    char *dest;   /* NULL: the message in place (ptr) */
    uint64_t cap;
    char *ptr;
} recv_ctx;

static int64_t recv_attempt(void *ctx, double timeout)
{
    recv_ctx *x = ctx;
    int64_t rc = fipc_shm_recv(&x->s->core, x->dest, x->cap, timeout, &x->ptr);
    if (rc == -EINTR && x->s->core.recheck)
        return RECHECK;
    return rc;
}

/* Views released with exports alive hold ring space: let Python look at them again. */
static int unstick(ShmHandle *s)
{
    PyObject *r = PyObject_CallMethod((PyObject *)s, "_unstick_views", NULL);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* The wait of every receiving call: fipc_h_wait, and between its waits the views' recheck.
 * timeout: this wait's; deadline: the call's (fipc_h_deadline), for the time left after a
 * recheck. */
static int64_t recv_wait(ShmHandle *s, recv_ctx *x, double timeout, int64_t deadline,
                         int may_wait)
{
    double left = timeout;
    for (;;) {
        if (s->core.recheck && unstick(s) < 0)
            return FIPC_H_RAISED;
        int64_t rc = may_wait ? fipc_h_wait(&s->h, recv_attempt, x, left, -ETIMEDOUT)
                              : recv_attempt(x, 0.0);
        if (rc != RECHECK)
            return rc;
        if (!may_wait)
            return -ETIMEDOUT;
        if (PyErr_CheckSignals() < 0)
            return FIPC_H_RAISED;
        left = fipc_h_left(deadline);
    }
}

/* The next message as a new bytes object (*out): its length, or a status < 0 (FIPC_H_RAISED
 * with an exception set). A message stored whole is copied once, from the ring into the
 * bytes; a streamed one is assembled in a bytes of its own (`pending`), which stays across
 * calls until it is whole, so that a call cut short leaves it for the next call of any kind.
 * may_wait 0: one attempt with the GIL held (-ETIMEDOUT: none yet). */
static int64_t recv_message(ShmHandle *s, double timeout, int may_wait, PyObject **out)
{
    int64_t deadline = fipc_h_deadline(may_wait ? timeout : 0.0);
    double left = timeout;
    for (;;) {
        recv_ctx x = {s, NULL, 0, NULL};
        if (s->pending != NULL) {
            x.dest = PyBytes_AsString(s->pending);
            x.cap = (uint64_t)PyBytes_Size(s->pending);
        }
        int64_t rc = recv_wait(s, &x, left, deadline, may_wait);
        if (rc >= 0) {
            if (x.dest == NULL) {
                rc = copy_out(s, x.ptr, rc, out);
                fipc_shm_consumed(&s->core);
                return rc;
            }
            PyObject *whole = s->pending;
            s->pending = NULL;
            if ((uint64_t)rc != x.cap) { /* its writer gave it up for a shorter one */
                rc = copy_out(s, x.dest, rc, out);
                Py_DECREF(whole);
                return rc;
            }
            *out = whole;
            return rc;
        }
        if (rc != FIPC_NEED) {
            if (s->pending != NULL && !s->core.msg_total)
                Py_CLEAR(s->pending); /* nothing of it came yet, or it was dropped (EOF) */
            return rc;
        }
        /* streamed (not a wait: go on at once): a buffer of its own; or its writer gave it
         * up for another message: start again */
        Py_CLEAR(s->pending);
        if (x.dest == NULL) {
            s->pending = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)s->core.last_len);
            if (s->pending == NULL)
                return FIPC_H_RAISED;
        }
        if (may_wait)
            left = fipc_h_left(deadline);
    }
}

static PyObject *more(ShmHandle *s, PyObject *first, long max);

/* recv(timeout=None); recv_many(max_messages=1024, timeout=None): max > 0. */
FIPC_RING_INLINE PyObject *recv_body(fipc_handle *h, fipc_ring_args *a)
{
    ShmHandle *self = (ShmHandle *)h;
    PyObject *msg = NULL;
    int64_t rc = recv_message(self, a->timeout, 1, &msg);
    if (rc < 0)
        return fipc_h_end(h, rc, a->timeout, NULL);
    return fipc_h_done(h, a->max ? more(self, msg, a->max) : msg);
}
FIPC_RING_METHOD(reader_recv, ShmHandle, "recv", ("timeout"), 0, fipc_h_begin, NULL, recv_body)

/* The next message copied into dest (cap bytes): its length, or a status. */
static int64_t recv_into(ShmHandle *s, char *dest, uint64_t cap, double timeout)
{
    if (s->pending != NULL) { /* a streamed message half-way in its own buffer: finish it */
        uint64_t n = (uint64_t)PyBytes_Size(s->pending);
        if (n > cap) {
            fipc_ring_too_small(cap, n);
            return FIPC_H_RAISED;
        }
        PyObject *msg = NULL;
        int64_t rc = recv_message(s, timeout, 1, &msg);
        if (rc >= 0) {
            memcpy(dest, PyBytes_AsString(msg), (size_t)rc);
            Py_DECREF(msg);
        }
        return rc;
    }
    recv_ctx x = {s, dest, cap, NULL};
    int64_t rc = recv_wait(s, &x, timeout, fipc_h_deadline(timeout), 1);
    if (rc == FIPC_NEED) {
        fipc_ring_too_small(cap, s->core.last_len);
        return FIPC_H_RAISED;
    }
    if (rc < 0 && s->core.msg_total) {
        /* cut short half-way into dest: what came goes on in a buffer of its own, which the
         * next call finishes */
        s->pending = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)s->core.msg_total);
        if (s->pending == NULL) {
            s->core.msg_total = s->core.msg_done = 0; /* dropped */
            return FIPC_H_RAISED;
        }
        char *into = PyBytes_AsString(s->pending);
        memcpy(into, dest, (size_t)s->core.msg_done);
        s->core.msg_dest = into;
    }
    return rc;
}

/* recv_into's buffer: writable and contiguous, else the TypeError of the pure backend's rule
 * (fastipc._segment.check_writable). */
static int writable_buffer(PyObject *buffer, Py_buffer *view)
{
    static PyObject *check;
    return fipc_ring_view_of(buffer, view, PyBUF_WRITABLE, "fastipc._segment", "check_writable",
                             &check, "recv_into needs a writable contiguous buffer");
}

static PyObject *recv_into_body(fipc_handle *h, fipc_ring_args *a)
{
    int64_t rc = recv_into((ShmHandle *)h, a->view.buf, (uint64_t)a->view.len, a->timeout);
    return fipc_h_end(h, rc, a->timeout, rc < 0 ? NULL : PyLong_FromLongLong(rc));
}
FIPC_RING_METHOD(reader_recv_into, ShmHandle, "recv_into", ("buffer", "timeout"), 1, fipc_h_begin,
                 writable_buffer, recv_into_body)

/* `first` and what else is queued whole, up to max messages, without waiting, as a list;
 * anything else (a streamed message, an error) is left for the next call. */
static PyObject *more(ShmHandle *s, PyObject *first, long max)
{
    PyObject *out = fipc_ring_list(first);
    if (out == NULL)
        return NULL;
    for (long i = 1; i < max && s->pending == NULL; i++) {
        char *ptr;
        int64_t n = fipc_shm_recv_next(&s->core, &ptr);
        if (n < 0)
            break;
        PyObject *msg = NULL;
        n = copy_out(s, ptr, n, &msg);
        if (n < 0 || PyList_Append(out, msg) < 0) {
            Py_XDECREF(msg);
            Py_DECREF(out);
            if (n != FIPC_H_RAISED)
                fipc_h_raise(&s->h, n, -1.0);
            return NULL;
        }
        Py_DECREF(msg);
    }
    fipc_shm_consumed(&s->core);
    return out;
}

FIPC_RING_METHOD(reader_recv_many, ShmHandle, "recv_many", ("max_messages", "timeout"),
                 FIPC_RING_MANY, fipc_h_begin, NULL, recv_body)

/* _recv_nowait(): the next message if one is there, else None (nothing consumed). */
static PyObject *reader_recv_nowait(ShmHandle *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *msg = NULL;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int64_t rc = recv_message(self, 0.0, 0, &msg);
    if (rc < 0 && rc != -ETIMEDOUT && rc != -EINTR)
        return fipc_h_end(&self->h, rc, 0.0, NULL);
    return fipc_h_done(&self->h, rc < 0 ? Py_NewRef(Py_None) : msg);
}

/* _recv_many_nowait(max_messages): up to max messages if one is there, else None. */
static PyObject *reader_recv_many_nowait(ShmHandle *self, PyObject *arg)
{
    PyObject *msg = NULL;
    long max = PyLong_AsLong(arg);
    if (max == -1 && PyErr_Occurred())
        return NULL;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int64_t rc = recv_message(self, 0.0, 0, &msg);
    if (rc < 0 && rc != -ETIMEDOUT && rc != -EINTR)
        return fipc_h_end(&self->h, rc, 0.0, NULL);
    return fipc_h_done(&self->h, rc < 0 ? Py_NewRef(Py_None) : more(self, msg, max));
}

/* _take_view(timeout): the next message for recv_view: (a read-only memoryview of it in the
 * ring, its position, held until the view is released: see _backend.ring.Holds), or
 * (memoryview of a copy, None) for a streamed message, assembled. `timeout` in the C
 * convention. */
static PyObject *reader_take_view(ShmHandle *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    PyObject *msg = NULL, *out = NULL;
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int64_t rc = FIPC_NEED;
    recv_ctx x = {self, NULL, 0, NULL};
    if (self->pending == NULL)
        rc = recv_wait(self, &x, timeout, fipc_h_deadline(timeout), 1);
    if (rc >= 0) {
        uint64_t off = (uint64_t)(x.ptr - (char *)self->map.buf);
        if (x.ptr < (char *)self->map.buf || off > (uint64_t)self->map.len - (uint64_t)rc)
            return fipc_h_end(&self->h, FIPC_CORRUPT, timeout, NULL);
        PyObject *ops = PyObject_GetAttrString((PyObject *)self, "_ops");
        if (ops != NULL) {
            out = PyObject_CallMethod(ops, "_export", "KLK", (unsigned long long)off,
                                      (long long)rc, (unsigned long long)self->core.last_pos);
            Py_DECREF(ops);
        }
    }
    else if (rc == FIPC_NEED) {
        rc = recv_message(self, timeout, 1, &msg);
        if (rc >= 0) {
            PyObject *mv = PyMemoryView_FromObject(msg);
            Py_DECREF(msg);
            if (mv != NULL) {
                out = PyTuple_Pack(2, mv, Py_None);
                Py_DECREF(mv);
            }
        }
    }
    if (rc < 0)
        return fipc_h_end(&self->h, rc, timeout, NULL);
    return fipc_h_done(&self->h, out);
}

/* ------------------------------------------------------------------------ types */

/* (the hooks without a docstring: two a line) */
static PyMethodDef channel_methods[] = {
    FIPC_H_NOARGS("_detach", shm_detach, NULL), FIPC_H_END,
};

static PyMethodDef writer_methods[] = {
    FIPC_H_VARARGS("_open", writer_open, NULL),
    FIPC_RING_SEND_METHODS(writer_send, writer_send_many, writer_send_nowait, "room"),
    FIPC_H_NOARGS("_abandon", writer_abandon, NULL), FIPC_H_END,
};

static PyMethodDef reader_methods[] = {
    FIPC_H_VARARGS("_open", reader_open, NULL),
    FIPC_RING_RECV_METHODS(reader_recv, reader_recv_into, reader_recv_many, reader_recv_nowait,
                           reader_recv_many_nowait, "writer"),
    FIPC_H_O("_take_view", reader_take_view, NULL), FIPC_H_END,
};

static PyGetSetDef channel_getset[] = {
    {"_core", (getter)shm_get_core, NULL, "The address of this end's fipc_shm (for cffi).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

FIPC_H_SPEC(channel_spec, "ChannelHandle", ShmHandle,
            "The base of a channel's ends' handles: its fipc_shm, _detach.", channel_methods,
            channel_getset);
FIPC_H_SPEC(writer_spec, "ShmWriterHandle", ShmHandle, "The native handle of a channel's Writer.",
            writer_methods, fipc_h_no_getset);
FIPC_H_SPEC(reader_spec, "ShmReaderHandle", ShmHandle, "The native handle of a channel's Reader.",
            reader_methods, fipc_h_no_getset);

int fipc_py_shm_init(PyObject *module)
{
    return fipc_ring_add_types(module, &channel_spec, &writer_spec, &reader_spec);
}
