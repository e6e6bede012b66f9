/* fastipc csrc/py/pipe.c: the native handles of the stream ends (see handle.h): the pipe and
 * FIFO ends of fastipc.pipe and the socket clients of fastipc.client, which share one framed
 * stream (csrc/pipe.c, embedded in the handle).
 *
 * One struct, one base type (StreamHandle: _open), four types: the methods of a handle type
 * come first in the public class's MRO, so each type holds exactly the per-message names of
 * its class: PipeWriterHandle (write, send, send_many and the writing steps),
 * PipeReaderHandle (read, recv, recv_many and the reading steps), AsyncClientHandle (the
 * no-wait steps of both sides, which its coroutines call) and ClientHandle, a subtype of
 * AsyncClientHandle (send and recv, framed or raw as the client's framing says, and read).
 *
 * A call claims its side of the stream (reading or writing) for its whole duration, waits
 * included: a second thread in the same side gets OSError(EBUSY). What a read returns is
 * consumed only once it is a Python object and the signal handlers have run without raising
 * (fipc_pipe_took): an exception raised into the call leaves the message to the next one. */
#include "handle.h"

#include <errno.h>
#include <string.h>

#include "../pipe.h"

typedef struct {
    fipc_handle h;
    fipc_pipe p;
    uint32_t max_size;  /* the longest frame a reader accepts (max_message_size) */
    int framed;         /* a Client's send/recv carry frames (1) or raw bytes (0) */
    int ready;          /* p is set up (fipc_pipe_init succeeded) */
    PyObject *pending;  /* the bytes a large frame is being received into */
} StreamHandle;

static void stream_wake(fipc_handle *h)
{
    /* a failure (no fd for a forked copy's fresh eventfd) costs a blocked call its wake-up */
    (void)fipc_pipe_wake(&((StreamHandle *)h)->p);
}

static void stream_release(fipc_handle *h)
{
    StreamHandle *s = (StreamHandle *)h;
    if (s->ready) {
        fipc_pipe_fini(&s->p);
        s->ready = 0;
    }
    Py_CLEAR(s->pending);
}

static const fipc_handle_kind stream_kind = {stream_wake, stream_release};

/* _open(fd, reading, sock, max_message_size, framed): own the non-blocking fd (not on
 * failure) and open the handle. */
static PyObject *stream_open(StreamHandle *self, PyObject *args)
{
    int fd, reading, sock, framed;
    unsigned int max_size;
    if (!PyArg_ParseTuple(args, "ippIp:_open", &fd, &reading, &sock, &max_size, &framed))
        return NULL;
    if (fipc_h_unopened(&self->h, "stream") < 0)
        return NULL;
    int flags = (reading ? FIPC_PIPE_READ : 0) | (sock ? FIPC_PIPE_SOCK : 0);
    int rc = fipc_pipe_init(&self->p, fd, flags, FIPC_GUARD_CHECK);
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    self->ready = 1;
    self->max_size = max_size;
    self->framed = framed;
    self->h.kind = &stream_kind;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ arguments */

/* fastipc._core.check_int: an int (not a bool) within [low, high]. */
static int check_int(PyObject *obj, const char *what, long long low, long long high,
                     long long *out)
{
    if (!PyLong_Check(obj) || PyBool_Check(obj)) {
        PyObject *name = PyType_GetName(Py_TYPE(obj));
        PyErr_Format(PyExc_TypeError, "%s must be an int, not %U", what, name);
        Py_XDECREF(name);
        return -1;
    }
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (overflow || v < low || v > high) {
        PyErr_Format(PyExc_ValueError, "%s must be between %lld and %lld, not %S", what, low,
                     high, obj);
        return -1;
    }
    *out = v;
    return 0;
}

static int claim(StreamHandle *s, _Atomic int32_t *side)
{
    if (fipc_pipe_claim(side))
        return 0;
    fipc_h_raise(&s->h, -EBUSY, -1);
    return -1;
}

/* ------------------------------------------------------------------------ writing */

typedef struct {
    fipc_pipe *p;
    const char *buf;
    size_t len;
    size_t offset;  /* where the next attempt starts; after the call, how much went */
    int framed;
    int torn;       /* after the call: it failed with part of it written */
    int tries;
} put_ctx;

static int64_t put_attempt(void *ctx, double timeout)
{
    put_ctx *c = ctx;
    c->p->wait_mode = c->tries++ ? FIPC_WAIT_FIRST : FIPC_WAIT_NOW;
    int64_t rc = c->framed ? fipc_pipe_send(c->p, c->buf, c->len, c->offset, timeout)
                           : fipc_pipe_write(c->p, c->buf, c->len, c->offset, timeout);
    c->offset = c->p->written; /* a wait that follows resumes where this one stopped */
    return rc;
}

/* Write c->buf whole (framed: as one frame) from byte c->offset on (the caller entered the
 * handle): >= 0, or a status / FIPC_H_RAISED for put_failed. What the write left (how much
 * went, whether it tore a frame) is taken while the side is still ours. */
static int64_t put(StreamHandle *s, put_ctx *c, double timeout)
{
    c->p = &s->p;
    c->torn = 0;
    if (claim(s, &s->p.writing) < 0)
        return FIPC_H_RAISED;
    int64_t rc = fipc_h_wait(&s->h, put_attempt, c, timeout, -ETIMEDOUT);
    c->offset = s->p.written;
    c->torn = rc < 0 && s->p.torn;
    fipc_pipe_unclaim(&s->p.writing);
    return rc;
}

/* Raise what a failed write means, with `characters_written` (how much of it went), and
 * leave the call. `tear`: a frame cut short closes the object (after the call left, so that
 * the exception stays the write's): the peer sees the end of the stream, never half a
 * message. Returns NULL. */
static PyObject *put_failed(StreamHandle *s, put_ctx *c, int64_t rc, double timeout, int tear)
{
    if (rc != FIPC_H_RAISED) {
        fipc_h_raise(&s->h, rc, timeout);
        if (PyErr_ExceptionMatches(PyExc_OSError))
            fipc_h_note(PyExc_BaseException, "characters_written", c->offset);
    }
    int torn = tear && c->torn;
    fipc_h_fail(&s->h);
    if (torn) {
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        PyObject *r = PyObject_CallMethod((PyObject *)s, "close", NULL);
        if (r == NULL)
            PyErr_Clear(); /* the write's exception is the one to see */
        Py_XDECREF(r);
        PyErr_Restore(type, value, tb);
    }
    return NULL;
}

static const char *const put_names[] = {"data", "timeout", NULL};

/* write(data, timeout=None) / send(data, timeout=None); `result`: return the length (write)
 * or None. */
static PyObject *put_method(StreamHandle *self, const char *name, PyObject *const *args,
                            Py_ssize_t nargs, PyObject *kwnames, int framed, int result)
{
    PyObject *arg[2];
    double timeout;
    Py_buffer view;
    if (fipc_h_begin(&self->h, name, args, nargs, kwnames, put_names, 1, arg, 1, &timeout) < 0)
        return NULL;
    if (fipc_h_buffer(arg[0], &view, 0) < 0)
        return fipc_h_fail(&self->h);
    put_ctx c = {.buf = view.buf, .len = (size_t)view.len, .framed = framed};
    int64_t rc = put(self, &c, timeout);
    PyBuffer_Release(&view);
    if (rc < 0)
        return put_failed(self, &c, rc, timeout, framed);
    if (fipc_h_leave(&self->h) < 0)
        return NULL;
    if (result)
        return PyLong_FromSize_t(c.len);
    Py_RETURN_NONE;
}

static PyObject *w_write(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    return put_method(self, "write", args, nargs, kwnames, 0, 1);
}

static PyObject *w_send(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    return put_method(self, "send", args, nargs, kwnames, 1, 0);
}

/* Client.send: a frame or the raw bytes, as the client's framing says. */
static PyObject *c_send(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    return put_method(self, "send", args, nargs, kwnames, self->framed, 0);
}

static const char *const many_names[] = {"messages", "timeout", NULL};

/* How many of the `count` messages (their lengths in msgs[]) went whole in the first
 * `written` bytes of their frames: the ones the reader gets. */
static size_t frames_within(const struct iovec *msgs, size_t count, size_t written)
{
    size_t sent = 0, end = 0;
    while (sent < count && (end += FIPC_FRAME_HEADER + msgs[sent].iov_len) <= written)
        sent++;
    return sent;
}

static PyObject *w_send_many(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *arg[2];
    double timeout;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (fipc_h_args("send_many", args, nargs, kwnames, many_names, 1, arg) < 0)
        return fipc_h_fail(&self->h);
    PyObject *messages = arg[0];
    if (PyBytes_Check(messages) || PyByteArray_Check(messages) ||
        PyMemoryView_Check(messages) || PyUnicode_Check(messages)) {
        PyErr_SetString(PyExc_TypeError,
                        "send_many takes an iterable of messages, not one message");
        return fipc_h_fail(&self->h);
    }
    PyObject *batch = PySequence_List(messages); /* ours: no one resizes it under us */
    if (batch == NULL)
        return fipc_h_fail(&self->h);
    Py_ssize_t count = PyList_Size(batch), held = 0;
    if (fipc_h_timeout(arg[1], &timeout) < 0 || count == 0) {
        Py_DECREF(batch);
        if (PyErr_Occurred())
            return fipc_h_fail(&self->h);
        if (fipc_h_leave(&self->h) < 0)
            return NULL;
        Py_RETURN_NONE;
    }
    /* call buffers: the call may wait holding them (handle.h) */
    Py_buffer *views = fipc_h_buf_alloc(&self->h, (size_t)count * sizeof *views);
    struct iovec *msgs = fipc_h_buf_alloc(&self->h, (size_t)count * sizeof *msgs);
    char small[4096], *frames = NULL;
    put_ctx c = {.offset = 0};
    int64_t rc = FIPC_H_RAISED;
    int wrote = 0;
    if (views == NULL || msgs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < count; held++) {
        if (fipc_h_buffer(PyList_GetItem(batch, held), &views[held], 0) < 0)
            goto done;
        msgs[held].iov_base = views[held].buf;
        msgs[held].iov_len = (size_t)views[held].len;
    }
    c.len = fipc_pipe_frames_size(msgs, (size_t)count);
    if (c.len == 0) {
        fipc_h_raise(&self->h, -EMSGSIZE, -1);
        goto done;
    }
    frames = c.len <= sizeof small ? small : fipc_h_buf_alloc(&self->h, c.len);
    if (frames == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    fipc_pipe_frames(frames, msgs, (size_t)count);
    while (held > 0)
        PyBuffer_Release(&views[--held]);
    c.buf = frames;
    rc = put(self, &c, timeout);
    wrote = 1;
done:
    while (held > 0)
        PyBuffer_Release(&views[--held]);
    if (frames != small)
        fipc_h_buf_free(&self->h, frames);
    fipc_h_buf_free(&self->h, views);
    Py_DECREF(batch);
    if (rc < 0 && wrote) {
        put_failed(self, &c, rc, timeout, 1);
        fipc_h_note(PyExc_BaseException, "messages_sent",
                    frames_within(msgs, (size_t)count, c.offset));
    }
    fipc_h_buf_free(&self->h, msgs);
    if (rc < 0)
        return wrote ? NULL : fipc_h_fail(&self->h);
    if (fipc_h_leave(&self->h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static const char *const step_names[] = {"data", "offset", NULL};

/* _send_step(data, offset) / _write_step(data, offset): one try without waiting, from byte
 * `offset` on: None once all of it went, else how much has gone (the offset to resume
 * from). Never closes the object (the awaiting caller finishes a frame it began). */
static PyObject *put_step(StreamHandle *self, const char *name, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames, int framed)
{
    PyObject *arg[2];
    long long offset;
    Py_buffer view;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (fipc_h_args(name, args, nargs, kwnames, step_names, 2, arg) < 0 ||
        check_int(arg[1], "offset", 0, INT64_MAX, &offset) < 0 ||
        fipc_h_buffer(arg[0], &view, 0) < 0)
        return fipc_h_fail(&self->h);
    put_ctx c = {.buf = view.buf, .len = (size_t)view.len, .offset = (size_t)offset,
                 .framed = framed};
    int64_t rc = put(self, &c, 0.0);
    PyBuffer_Release(&view);
    if (rc == -ETIMEDOUT) {
        if (fipc_h_leave(&self->h) < 0)
            return NULL;
        return PyLong_FromSize_t(c.offset);
    }
    if (rc < 0)
        return put_failed(self, &c, rc, 0.0, 0);
    if (fipc_h_leave(&self->h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *s_send_step(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    return put_step(self, "_send_step", args, nargs, kwnames, 1);
}

static PyObject *s_write_step(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames)
{
    return put_step(self, "_write_step", args, nargs, kwnames, 0);
}

/* ------------------------------------------------------------------------ reading */

typedef struct {
    StreamHandle *s;
    char *data;
    size_t n;
    int tries;
} get_ctx;

/* How an attempt of a read starts (see FIPC_WAIT_*). */
static fipc_pipe *attempt_of(get_ctx *c)
{
    c->s->p.wait_mode = c->tries++ ? FIPC_WAIT_FIRST : FIPC_WAIT_NOW;
    return &c->s->p;
}

static int64_t frame_attempt(void *ctx, double timeout)
{
    get_ctx *c = ctx;
    return fipc_pipe_recv(attempt_of(c), c->s->max_size, timeout, &c->data);
}

static int64_t large_attempt(void *ctx, double timeout)
{
    get_ctx *c = ctx;
    return fipc_pipe_recv_into(attempt_of(c), c->data, c->n, timeout);
}

static int64_t read_attempt(void *ctx, double timeout)
{
    get_ctx *c = ctx;
    return fipc_pipe_read(attempt_of(c), c->n, timeout, &c->data);
}

/* The statuses of a read: the object, NULL with an exception set, or NOT_READY (a step that
 * would have to wait). */
static char not_ready;
#define NOT_READY ((PyObject *)&not_ready) /* never dereferenced */

static PyObject *get_failed(StreamHandle *s, int64_t rc, double timeout, int step)
{
    if (step && rc == -ETIMEDOUT)
        return NOT_READY;
    fipc_h_raise(&s->h, rc, timeout);
    return NULL;
}

/* The payload of a large frame (the caller saw FIPC_NEED), received straight into a bytes
 * object of its own, kept across timeouts and interruptions (C keeps how much arrived) and
 * handed out only once complete: a new reference. */
static PyObject *get_large(StreamHandle *s, double timeout, int64_t deadline, int step)
{
    size_t n = s->p.large;
    if (s->pending == NULL || (size_t)PyBytes_Size(s->pending) != n) {
        Py_CLEAR(s->pending);
        s->pending = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
        if (s->pending == NULL)
            return NULL;
    }
    get_ctx c = {s, PyBytes_AsString(s->pending), n, 0};
    int64_t rc = fipc_h_wait(&s->h, large_attempt, &c, fipc_h_left(deadline), -ETIMEDOUT);
    if (rc < 0)
        return get_failed(s, rc, timeout, step);
    Py_INCREF(s->pending);
    return s->pending;
}

/* The next frame's payload, not yet consumed (see took): a new reference, NULL, or
 * NOT_READY for a step. */
static PyObject *get_frame(StreamHandle *s, double timeout, int step)
{
    int64_t deadline = fipc_h_deadline(timeout);
    get_ctx c = {s, NULL, 0, 0};
    int64_t rc = fipc_h_wait(&s->h, frame_attempt, &c, timeout, -ETIMEDOUT);
    if (rc == FIPC_NEED)
        return get_large(s, timeout, deadline, step);
    if (rc < 0)
        return get_failed(s, rc, timeout, step);
    return PyBytes_FromStringAndSize(c.data, (Py_ssize_t)rc);
}

/* Hand `out` (what the read returned) over: the signal handlers run first, so that one that
 * raises leaves the message unread for the next call; then it is consumed. */
static PyObject *took(StreamHandle *s, PyObject *out)
{
    if (out == NULL || out == NOT_READY)
        return out;
    if (PyErr_CheckSignals() < 0) {
        Py_DECREF(out);
        return NULL;
    }
    if (out == s->pending) {
        fipc_pipe_took_large(&s->p);
        Py_CLEAR(s->pending);
    }
    else
        fipc_pipe_took(&s->p);
    return out;
}

static PyObject *get_raw(StreamHandle *s, size_t n, double timeout, int step)
{
    get_ctx c = {s, NULL, n, 0};
    int64_t rc = fipc_h_wait(&s->h, read_attempt, &c, timeout, -ETIMEDOUT);
    if (rc < 0)
        return get_failed(s, rc, timeout, step);
    return PyBytes_FromStringAndSize(c.data, (Py_ssize_t)rc);
}

/* Leave a read call with its result (claimed side released by the caller): a step that
 * would have to wait returns None. */
static PyObject *get_done(StreamHandle *s, PyObject *out)
{
    return fipc_h_done(&s->h, out == NOT_READY ? Py_NewRef(Py_None) : out);
}

/* The start of read(n, timeout) and recv_many(max_messages, timeout): enter, the arguments
 * in order (`what`, if given, an int within [low, INT32_MAX], else *count stays as it is;
 * then the timeout), and claim the reading side unless *count is 0. 0, or -1 with the call
 * failed and left. */
static int get_begin(StreamHandle *s, const char *func, PyObject *const *args,
                     Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                     long long low, long long *count, double *timeout)
{
    PyObject *arg[2];
    if (fipc_h_enter(&s->h) < 0)
        return -1;
    if (fipc_h_args(func, args, nargs, kwnames, names, 0, arg) < 0 ||
        (arg[0] != NULL && check_int(arg[0], names[0], low, INT32_MAX, count) < 0) ||
        fipc_h_timeout(arg[1], timeout) < 0 ||
        (*count != 0 && claim(s, &s->p.reading) < 0)) {
        fipc_h_fail(&s->h);
        return -1;
    }
    return 0;
}

static const char *const timeout_names[] = {"timeout", NULL};

/* recv(timeout=None), and a Client's recv: a frame, or up to 64 KiB raw; EOFError at the
 * end of the stream either way (a message call: read() is the one that returns b""). */
static PyObject *get_method(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames, int framed)
{
    PyObject *arg[1];
    double timeout;
    if (fipc_h_begin(&self->h, "recv", args, nargs, kwnames, timeout_names, 0, arg, 0,
                     &timeout) < 0)
        return NULL;
    if (claim(self, &self->p.reading) < 0)
        return fipc_h_fail(&self->h);
    PyObject *out = took(self, framed ? get_frame(self, timeout, 0)
                                      : get_raw(self, 65536, timeout, 0));
    fipc_pipe_unclaim(&self->p.reading);
    if (!framed && out != NULL && PyBytes_Size(out) == 0) {
        Py_DECREF(out);
        out = fipc_h_raise(&self->h, FIPC_EOF, -1);
    }
    return get_done(self, out);
}

static PyObject *r_recv(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    return get_method(self, args, nargs, kwnames, 1);
}

static PyObject *c_recv(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    return get_method(self, args, nargs, kwnames, self->framed);
}

static const char *const read_names[] = {"n", "timeout", NULL};

static PyObject *r_read(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    double timeout;
    long long n = 65536;
    if (get_begin(self, "read", args, nargs, kwnames, read_names, 0, &n, &timeout) < 0)
        return NULL;
    if (n == 0)
        return get_done(self, PyBytes_FromStringAndSize(NULL, 0));
    PyObject *out = took(self, get_raw(self, (size_t)n, timeout, 0));
    fipc_pipe_unclaim(&self->p.reading);
    return get_done(self, out);
}

static const char *const many_read_names[] = {"max_messages", "timeout", NULL};

static PyObject *r_recv_many(StreamHandle *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    double timeout;
    long long max = 1024;
    if (get_begin(self, "recv_many", args, nargs, kwnames, many_read_names, 1, &max,
                  &timeout) < 0)
        return NULL;
    PyObject *first = get_frame(self, timeout, 0), *out = NULL;
    if (first != NULL && (out = PyList_New(1)) == NULL)
        Py_DECREF(first);
    if (out != NULL) {
        PyList_SetItem(out, 0, first); /* steals it */
        if (first != self->pending) {
            /* then every further whole frame already read ahead, without waiting */
            char *msg;
            int64_t len;
            for (long long i = 1; i < max && (len = fipc_pipe_next(&self->p, self->max_size,
                                                                   &msg)) >= 0; i++) {
                PyObject *item = PyBytes_FromStringAndSize(msg, (Py_ssize_t)len);
                if (item == NULL || PyList_Append(out, item) < 0) {
                    Py_XDECREF(item);
                    Py_CLEAR(out);
                    break;
                }
                Py_DECREF(item);
            }
        }
        if (out != NULL && PyErr_CheckSignals() < 0)
            Py_CLEAR(out);
        if (out != NULL) {
            if (first == self->pending) {
                fipc_pipe_took_large(&self->p);
                Py_CLEAR(self->pending);
            }
            else
                fipc_pipe_took(&self->p);
        }
    }
    fipc_pipe_unclaim(&self->p.reading);
    return get_done(self, out);
}

/* _recv_step() / _read_step(n): one try without waiting: the message (the bytes), or None
 * if it would have to wait. */
static PyObject *s_recv_step(StreamHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (claim(self, &self->p.reading) < 0)
        return fipc_h_fail(&self->h);
    PyObject *out = took(self, get_frame(self, 0.0, 1));
    fipc_pipe_unclaim(&self->p.reading);
    return get_done(self, out);
}

static PyObject *s_read_step(StreamHandle *self, PyObject *arg)
{
    long long n;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (check_int(arg, "n", 1, INT32_MAX, &n) < 0 || claim(self, &self->p.reading) < 0)
        return fipc_h_fail(&self->h);
    PyObject *out = took(self, get_raw(self, (size_t)n, 0.0, 1));
    fipc_pipe_unclaim(&self->p.reading);
    return get_done(self, out);
}

/* _limit: max_message_size (validated by the public class). */
static PyObject *s_get_limit(StreamHandle *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLong(self->max_size);
}

static int s_set_limit(StreamHandle *self, PyObject *value, void *Py_UNUSED(closure))
{
    long long v;
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _limit");
        return -1;
    }
    if (check_int(value, "max_message_size", 0, UINT32_MAX, &v) < 0)
        return -1;
    self->max_size = (uint32_t)v;
    return 0;
}

/* ------------------------------------------------------------------------ the types */

#define SEND_STEP FIPC_H_FASTCALL("_send_step", s_send_step, NULL)
#define WRITE_STEP FIPC_H_FASTCALL("_write_step", s_write_step, NULL)
#define RECV_STEP FIPC_H_NOARGS("_recv_step", s_recv_step, NULL)
#define READ_STEP FIPC_H_O("_read_step", s_read_step, NULL)
#define READ_METHOD                                                                          \
    FIPC_H_FASTCALL("read", r_read,                                                          \
                    "read(n=65536, timeout=None)\n--\n\n"                                    \
                    "Up to ``n`` raw bytes, as soon as any are there; ``b\"\"`` at end of "  \
                    "stream.")

static PyMethodDef stream_methods[] = {
    FIPC_H_VARARGS("_open", stream_open, NULL),
    FIPC_H_END,
};

static PyMethodDef writer_methods[] = {
    SEND_STEP,
    WRITE_STEP,
    FIPC_H_FASTCALL("write", w_write,
                    "write(data, timeout=None)\n--\n\n"
                    "Write all of ``data`` (raw bytes, no framing) and return its length.\n\n"
                    "TimeoutError if the pipe stays full for ``timeout`` seconds; its "
                    "``characters_written`` says how much went. BrokenPipeError if no reader "
                    "is left."),
    FIPC_H_FASTCALL("send", w_send,
                    "send(data, timeout=None)\n--\n\n"
                    "Send ``data`` as one message: a 4-byte big-endian length, then the "
                    "bytes.\n\n"
                    "A message that was cut short (a timeout or an error after part of it was "
                    "written) would desynchronise the stream, so the writer then closes "
                    "itself: the reader sees the end of the stream, never half a message."),
    FIPC_H_FASTCALL("send_many", w_send_many,
                    "send_many(messages, timeout=None)\n--\n\n"
                    "Send each of ``messages`` as one message, all in one write (or as few as "
                    "the pipe allows): far cheaper per message than ``send`` for a stream of "
                    "small ones. Timeouts and errors as for :meth:`send`; the receiver may "
                    "take them with ``recv`` or ``recv_many``. A batch that stopped part way "
                    "(a timeout, an error, an exception raised into the call) raises with "
                    "``messages_sent``: how many of the messages went whole, which the reader "
                    "gets (a message cut short closes the writer, as for :meth:`send`)."),
    FIPC_H_END,
};

static PyMethodDef reader_methods[] = {
    RECV_STEP,
    READ_STEP,
    READ_METHOD,
    FIPC_H_FASTCALL("recv", r_recv,
                    "recv(timeout=None)\n--\n\n"
                    "The next whole message. EOFError at end of stream; a message cut short "
                    "by the writer's end is dropped, never returned. OSError(EMSGSIZE) for a "
                    "frame announcing more than ``max_message_size`` bytes."),
    FIPC_H_FASTCALL("recv_many", r_recv_many,
                    "recv_many(max_messages=1024, timeout=None)\n--\n\n"
                    "Wait like :meth:`recv` for the next message, then take every further "
                    "whole message already read ahead, up to ``max_messages`` in all, without "
                    "waiting again."),
    FIPC_H_END,
};

/* An AsyncClient's: the no-wait steps its coroutines call. A Client's type is a subtype of
 * it, adding the blocking calls: the steps are written (and declared) once. */
static PyMethodDef async_client_methods[] = {
    SEND_STEP, WRITE_STEP, RECV_STEP, READ_STEP, FIPC_H_END,
};

static PyMethodDef client_methods[] = {
    FIPC_H_FASTCALL("send", c_send,
                    "send(data, timeout=None)\n--\n\n"
                    "Send ``data`` (bytes-like) whole; TimeoutError if the server does not "
                    "take it within ``timeout`` seconds, BrokenPipeError / "
                    "ConnectionResetError once it is gone. A framed message cut short would "
                    "desynchronise the stream, so the client then closes itself."),
    FIPC_H_FASTCALL("recv", c_recv,
                    "recv(timeout=None)\n--\n\n"
                    "The next message (length framing; OSError(EMSGSIZE) for a frame over "
                    "``max_message_size``), or the bytes that arrived (raw framing). EOFError "
                    "at the end of the stream, whatever the framing."),
    READ_METHOD,
    FIPC_H_END,
};

static PyGetSetDef limit_getset[] = {
    {"_limit", (getter)s_get_limit, (setter)s_set_limit,
     "The longest message a receive accepts (max_message_size).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

FIPC_H_SPEC(stream_spec, "StreamHandle", StreamHandle,
            "The base of the stream ends' handles: one struct (a framed stream), one _open.",
            stream_methods, fipc_h_no_getset);
FIPC_H_SPEC(writer_spec, "PipeWriterHandle", StreamHandle,
            "The native handle of a pipe's or FIFO's write end.", writer_methods,
            fipc_h_no_getset);
FIPC_H_SPEC(reader_spec, "PipeReaderHandle", StreamHandle,
            "The native handle of a pipe's or FIFO's read end.", reader_methods, limit_getset);
FIPC_H_SPEC(async_client_spec, "AsyncClientHandle", StreamHandle,
            "The native handle of an awaiting socket client (its no-wait steps).",
            async_client_methods, limit_getset);
FIPC_H_SPEC(client_spec, "ClientHandle", StreamHandle,
            "The native handle of a blocking socket client: an AsyncClientHandle's steps and "
            "the blocking calls.",
            client_methods, fipc_h_no_getset);

/* Make the type of `spec` with the base `base` and add it to the module: the type (a
 * reference the module keeps), or NULL. fipc_h_add_type for a subtype of a handle type. */
static PyObject *add_subtype(PyObject *module, PyType_Spec *spec, PyObject *base)
{
    PyObject *type = PyType_FromSpecWithBases(spec, base);
    if (type != NULL && PyModule_AddObject(module, strrchr(spec->name, '.') + 1, type) < 0)
        Py_CLEAR(type);
    return type;
}

int fipc_py_pipe_init(PyObject *module)
{
    PyObject *stream, *async_client = NULL;
    if (fipc_h_add_type(module, &stream_spec, &stream) < 0)
        return -1;
    int ok = add_subtype(module, &writer_spec, stream) && add_subtype(module, &reader_spec, stream) &&
             (async_client = add_subtype(module, &async_client_spec, stream)) != NULL &&
             add_subtype(module, &client_spec, async_client);
    Py_DECREF(stream);
    return ok ? 0 : -1;
}
