/* fastipc csrc/py/shm.c: the native handles of fastipc.shm.Writer and fastipc.shm.Reader
 * (see handle.h). Each embeds the C core's end of the channel (fipc_shm, csrc/shm.c) and
 * holds a buffer export of the mapping, which Python owns (an mmap.mmap): the mapping cannot
 * be closed while the handle may touch it, and the export is released only once no call is
 * busy (the kind's release). What is not per-message (create, attach, spin, stats, park,
 * the views' holds) stays in Python, through cffi on the same fipc_shm (`_core`). */
#include "ring_handle.h"

#include <errno.h>
#include <stdlib.h>
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
    if (self->mapped || atomic_load(&self->h.state) != FIPC_H_UNOPENED) {
        PyErr_SetString(PyExc_ValueError, "the channel handle is open already");
        return NULL;
    }
    if (PyObject_GetBuffer(mm, &self->map, PyBUF_WRITABLE) < 0)
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

/* Seconds left of `timeout` (C convention) for a call that began at *deadline's making:
 * the deadline is made the first time this is asked. */
static double time_left(double timeout, int64_t *deadline)
{
    if (timeout <= 0)
        return timeout;
    if (*deadline == 0)
        *deadline = fipc_deadline(timeout);
    int64_t ns = *deadline - fipc_now_ns();
    return ns > 0 ? (double)ns / 1e9 : 0.0;
}

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


/* The end of a call that failed with status rc (< 0). */
static PyObject *failed(ShmHandle *self, int64_t rc, double timeout)
{
    fipc_h_raise(&self->h, rc, timeout);
    return fipc_h_fail(&self->h);
}

static int check_count(PyObject *obj, const char *what, long low, long high, long *out)
{
    if (obj == NULL)
        return 0;
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyObject *name = PyType_GetName(Py_TYPE(obj));
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %U", what, name);
        Py_XDECREF(name);
        return -1;
    }
    int overflow = 0;
    long v = PyLong_AsLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < low || v > high) {
        PyErr_Format(PyExc_ValueError, "%s must be between %ld and %ld, not %S", what, low,
                     high, obj);
        return -1;
    }
    *out = v;
    return 0;
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

static const char *const send_names[] = {"data", "timeout", NULL};

static PyObject *writer_send(ShmHandle *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *arg[2];
    double timeout;
    Py_buffer v;
    if (fipc_h_begin(&self->h, "send", args, nargs, kwnames, send_names, 1, arg, 1, &timeout) < 0)
        return NULL;
    if (fipc_h_buffer(arg[0], &v, 0) < 0)
        return fipc_h_fail(&self->h);
    send_ctx x = {self, v.buf, (uint64_t)v.len, &self->progress};
    self->progress = 0;
    int64_t rc = fipc_h_wait(&self->h, send_attempt, &x, timeout, -ETIMEDOUT);
    PyBuffer_Release(&v);
    if (rc < 0) {
        self->progress = 0; /* a message cut short is abandoned: the reader drops it */
        return failed(self, rc, timeout);
    }
    return fipc_h_done(&self->h, Py_NewRef(Py_None));
}

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

/* The messages of send_many back to back in one buffer (*blob, malloc'd) and their lengths
 * (*lens, malloc'd): a list or tuple of bytes here; anything else through the Python rules
 * (Writer._join), which raise the errors the pure backend raises. Returns the count, or -1
 * with an exception set. */
static Py_ssize_t join_messages(ShmHandle *self, PyObject *messages, char **blob,
                                uint64_t **lens)
{
    PyObject *joined = NULL, *seq = messages, *lenlist = NULL;
    int list = PyList_CheckExact(messages), tuple = PyTuple_CheckExact(messages);
    Py_ssize_t count = list ? PyList_Size(messages) : tuple ? PyTuple_Size(messages) : -1;
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *m = list ? PyList_GetItem(seq, i) : PyTuple_GetItem(seq, i);
        if (!PyBytes_CheckExact(m)) {
            count = -1; /* not only bytes: the general rules */
            break;
        }
        total += (uint64_t)PyBytes_Size(m);
    }
    if (count < 0) {
        joined = PyObject_CallMethod((PyObject *)self, "_join", "(O)", messages);
        if (joined == NULL)
            return -1;
        PyObject *b = PyTuple_GetItem(joined, 0);
        lenlist = PyTuple_GetItem(joined, 1);
        if (b == NULL || lenlist == NULL || !PyBytes_Check(b) || !PyList_Check(lenlist)) {
            Py_DECREF(joined);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "_join must return (bytes, list)");
            return -1;
        }
        count = PyList_Size(lenlist);
        total = (uint64_t)PyBytes_Size(b);
        seq = b;
    }
    *blob = malloc(total ? total : 1);
    *lens = malloc(sizeof(uint64_t) * (size_t)(count ? count : 1));
    if (*blob == NULL || *lens == NULL) {
        free(*blob);
        free(*lens);
        Py_XDECREF(joined);
        PyErr_NoMemory();
        return -1;
    }
    if (joined != NULL) {
        memcpy(*blob, PyBytes_AsString(seq), total);
        for (Py_ssize_t i = 0; i < count; i++) {
            (*lens)[i] = (uint64_t)PyLong_AsUnsignedLongLong(PyList_GetItem(lenlist, i));
        }
        Py_DECREF(joined);
        if (PyErr_Occurred()) {
            free(*blob);
            free(*lens);
            return -1;
        }
        return count;
    }
    uint64_t off = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *m = list ? PyList_GetItem(messages, i) : PyTuple_GetItem(messages, i);
        uint64_t n = (uint64_t)PyBytes_Size(m);
        memcpy(*blob + off, PyBytes_AsString(m), n);
        (*lens)[i] = n;
        off += n;
    }
    return count;
}

static PyObject *writer_send_many(ShmHandle *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"messages", "timeout", NULL};
    PyObject *arg[2];
    double timeout;
    char *blob;
    uint64_t *lens;
    if (fipc_h_begin(&self->h, "send_many", args, nargs, kwnames, names, 1, arg, 1, &timeout) < 0)
        return NULL;
    Py_ssize_t count = join_messages(self, arg[0], &blob, &lens);
    if (count < 0)
        return fipc_h_fail(&self->h);
    int64_t rc = 0;
    const char **bufs = malloc(sizeof(char *) * (size_t)(count ? count : 1));
    if (bufs == NULL) {
        free(blob);
        free(lens);
        PyErr_NoMemory();
        return fipc_h_fail(&self->h);
    }
    for (Py_ssize_t i = 0, off = 0; i < count; off += (Py_ssize_t)lens[i++])
        bufs[i] = blob + off;
    many_ctx x = {self, bufs, lens, (uint64_t)count, 0};
    self->progress = 0;
    if (count > 0)
        rc = fipc_h_wait(&self->h, many_attempt, &x, timeout, -ETIMEDOUT);
    free(bufs);
    free(blob);
    free(lens);
    if (rc < 0) {
        self->progress = 0; /* a message cut short is abandoned: the reader drops it */
        fipc_h_raise(&self->h, rc, timeout);
        if (PyErr_ExceptionMatches(PyExc_OSError)) { /* how many went */
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            PyErr_NormalizeException(&type, &value, &tb);
            PyObject *sent = PyLong_FromUnsignedLongLong(x.done);
            if (sent == NULL || PyObject_SetAttrString(value, "messages_sent", sent) < 0)
                PyErr_Clear();
            Py_XDECREF(sent);
            PyErr_Restore(type, value, tb);
        }
        return fipc_h_fail(&self->h);
    }
    return fipc_h_done(&self->h, Py_NewRef(Py_None));
}

/* _send_nowait(data): one attempt at sending data whole, without waiting: True once it is
 * all in the ring, False while the ring is full (a streamed message keeps its progress for
 * the next attempt with the same data, until _abandon). For send_async. */
static PyObject *writer_send_nowait(ShmHandle *self, PyObject *data)
{
    Py_buffer v;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (fipc_h_buffer(data, &v, 0) < 0)
        return fipc_h_fail(&self->h);
    int64_t rc = fipc_shm_send(&self->core, v.buf, (uint64_t)v.len, 0.0, &self->nowait);
    PyBuffer_Release(&v);
    if (rc < 0 && rc != -ETIMEDOUT && rc != -EINTR) {
        self->nowait = 0;
        return failed(self, rc, 0.0);
    }
    return fipc_h_done(&self->h, PyBool_FromLong(rc == 0));
}

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

/* The wait of every receiving call: fipc_h_wait, and between its waits the views' recheck. */
static int64_t recv_wait(ShmHandle *s, recv_ctx *x, double timeout, int may_wait)
{
    int64_t deadline = 0;
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
        left = time_left(timeout, &deadline);
    }
}

/* The next message as a new bytes object (*out): its length, or a status < 0 (FIPC_H_RAISED
 * with an exception set). A message stored whole is copied once, from the ring into the
 * bytes; a streamed one is assembled in a bytes of its own (`pending`), which stays across
 * calls until it is whole, so that a call cut short leaves it for the next call of any kind.
 * may_wait 0: one attempt with the GIL held (-ETIMEDOUT: none yet). */
static int64_t recv_message(ShmHandle *s, double timeout, int may_wait, PyObject **out)
{
    int64_t deadline = 0;
    double left = timeout;
    for (;;) {
        recv_ctx x = {s, NULL, 0, NULL};
        if (s->pending != NULL) {
            x.dest = PyBytes_AsString(s->pending);
            x.cap = (uint64_t)PyBytes_Size(s->pending);
        }
        int64_t rc = recv_wait(s, &x, left, may_wait);
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
            left = time_left(timeout, &deadline);
    }
}

static PyObject *reader_recv(ShmHandle *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    static const char *const names[] = {"timeout", NULL};
    PyObject *arg[1], *msg = NULL;
    double timeout;
    if (fipc_h_begin(&self->h, "recv", args, nargs, kwnames, names, 0, arg, 0, &timeout) < 0)
        return NULL;
    int64_t rc = recv_message(self, timeout, 1, &msg);
    if (rc < 0)
        return failed(self, rc, timeout);
    return fipc_h_done(&self->h, msg);
}

static void too_small(uint64_t cap, uint64_t n)
{
    PyErr_Format(PyExc_ValueError,
                 "buffer of %llu bytes is too small for the next message (%llu bytes); it "
                 "stays queued", (unsigned long long)cap, (unsigned long long)n);
}

/* The next message copied into dest (cap bytes): its length, or a status. */
static int64_t recv_into(ShmHandle *s, char *dest, uint64_t cap, double timeout)
{
    if (s->pending != NULL) { /* a streamed message half-way in its own buffer: finish it */
        uint64_t n = (uint64_t)PyBytes_Size(s->pending);
        if (n > cap) {
            too_small(cap, n);
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
    int64_t rc = recv_wait(s, &x, timeout, 1);
    if (rc == FIPC_NEED) {
        too_small(cap, s->core.last_len);
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

static PyObject *reader_recv_into(ShmHandle *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"buffer", "timeout", NULL};
    PyObject *arg[2];
    double timeout;
    Py_buffer v;
    if (fipc_h_begin(&self->h, "recv_into", args, nargs, kwnames, names, 1, arg, 1, &timeout) < 0)
        return NULL;
    if (PyUnicode_Check(arg[0]) || PyObject_GetBuffer(arg[0], &v, PyBUF_WRITABLE) < 0) {
        /* the Python rules say what is wrong with it */
        PyErr_Clear();
        PyObject *r = PyObject_CallMethod((PyObject *)self, "_writable", "(O)", arg[0]);
        if (r != NULL) {
            Py_DECREF(r);
            PyErr_SetString(PyExc_TypeError, "recv_into needs a writable contiguous buffer");
        }
        return fipc_h_fail(&self->h);
    }
    int64_t rc = recv_into(self, v.buf, (uint64_t)v.len, timeout);
    PyBuffer_Release(&v);
    if (rc < 0)
        return failed(self, rc, timeout);
    return fipc_h_done(&self->h, PyLong_FromLongLong(rc));
}

/* `first` and what else is queued whole, up to max messages, without waiting, as a list;
 * anything else (a streamed message, an error) is left for the next call. */
static PyObject *more(ShmHandle *s, PyObject *first, long max)
{
    PyObject *out = PyList_New(1);
    if (out == NULL) {
        Py_DECREF(first);
        return NULL;
    }
    PyList_SetItem(out, 0, first);
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

static PyObject *reader_recv_many(ShmHandle *self, PyObject *const *args, Py_ssize_t nargs,
                                  PyObject *kwnames)
{
    static const char *const names[] = {"max_messages", "timeout", NULL};
    PyObject *arg[2], *msg = NULL;
    double timeout;
    long max = 1024;
    if (fipc_h_begin(&self->h, "recv_many", args, nargs, kwnames, names, 0, arg, -1, NULL) < 0)
        return NULL;
    if (check_count(arg[0], "max_messages", 1, 1L << 20, &max) < 0 ||
        fipc_h_timeout(arg[1], &timeout) < 0)
        return fipc_h_fail(&self->h);
    int64_t rc = recv_message(self, timeout, 1, &msg);
    if (rc < 0)
        return failed(self, rc, timeout);
    return fipc_h_done(&self->h, more(self, msg, max));
}

/* _recv_nowait(): the next message if one is there, else None (nothing consumed). */
static PyObject *reader_recv_nowait(ShmHandle *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *msg = NULL;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int64_t rc = recv_message(self, 0.0, 0, &msg);
    if (rc < 0 && rc != -ETIMEDOUT && rc != -EINTR)
        return failed(self, rc, 0.0);
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
        return failed(self, rc, 0.0);
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
        rc = recv_wait(self, &x, timeout, 1);
    if (rc >= 0) {
        uint64_t off = (uint64_t)(x.ptr - (char *)self->map.buf);
        if (x.ptr < (char *)self->map.buf || off > (uint64_t)self->map.len - (uint64_t)rc)
            return failed(self, FIPC_CORRUPT, timeout);
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
        return failed(self, rc, timeout);
    return fipc_h_done(&self->h, out);
}

/* ------------------------------------------------------------------------ types */

#define SHM_COMMON_METHODS \
    {"_detach", (PyCFunction)shm_detach, METH_NOARGS, NULL}

static PyMethodDef writer_methods[] = {
    {"_open", (PyCFunction)writer_open, METH_VARARGS, NULL},
    SHM_COMMON_METHODS,
    {"send", (PyCFunction)(void (*)(void))writer_send, METH_FASTCALL | METH_KEYWORDS,
     "send(data, timeout=None)\n--\n\n"
     "Send one message (any bytes-like object). Waits up to ``timeout`` seconds for room; "
     "TimeoutError if the ring stays full (a message streamed in chunks that was cut short "
     "is dropped by the reader, never delivered in part)."},
    {"send_many", (PyCFunction)(void (*)(void))writer_send_many, METH_FASTCALL | METH_KEYWORDS,
     "send_many(messages, timeout=None)\n--\n\n"
     "Send several messages in one call. On an error after some went, the exception's "
     "``messages_sent`` says how many."},
    {"_send_nowait", (PyCFunction)writer_send_nowait, METH_O, NULL},
    {"_abandon", (PyCFunction)writer_abandon, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef reader_methods[] = {
    {"_open", (PyCFunction)reader_open, METH_VARARGS, NULL},
    SHM_COMMON_METHODS,
    {"recv", (PyCFunction)(void (*)(void))reader_recv, METH_FASTCALL | METH_KEYWORDS,
     "recv(timeout=None)\n--\n\n"
     "The next message. EOFError once the writer has gone and all was read."},
    {"recv_into", (PyCFunction)(void (*)(void))reader_recv_into, METH_FASTCALL | METH_KEYWORDS,
     "recv_into(buffer, timeout=None)\n--\n\n"
     "Copy the next message into ``buffer`` and return its length. ValueError if it does "
     "not fit (the message stays queued)."},
    {"recv_many", (PyCFunction)(void (*)(void))reader_recv_many, METH_FASTCALL | METH_KEYWORDS,
     "recv_many(max_messages=1024, timeout=None)\n--\n\n"
     "Up to ``max_messages`` messages in one call: waits up to ``timeout`` for the first, "
     "then takes what is queued without waiting."},
    {"_recv_nowait", (PyCFunction)reader_recv_nowait, METH_NOARGS, NULL},
    {"_recv_many_nowait", (PyCFunction)reader_recv_many_nowait, METH_O, NULL},
    {"_take_view", (PyCFunction)reader_take_view, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef shm_getset[] = {
    {"_core", (getter)shm_get_core, NULL, "The address of this end's fipc_shm (for cffi).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

FIPC_RING_HANDLE_TYPE(writer, "fastipc._fastipc.ShmWriterHandle", ShmHandle,
                      {Py_tp_doc, "The native handle of a channel's Writer."},
                      {Py_tp_methods, writer_methods}, {Py_tp_getset, shm_getset});

FIPC_RING_HANDLE_TYPE(reader, "fastipc._fastipc.ShmReaderHandle", ShmHandle,
                      {Py_tp_doc, "The native handle of a channel's Reader."},
                      {Py_tp_methods, reader_methods}, {Py_tp_getset, shm_getset});

int fipc_py_shm_init(PyObject *module)
{
    return fipc_ring_add_types(module, &writer_spec, &reader_spec);
}
