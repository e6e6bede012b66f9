/* fastipc csrc/py/pubsub.c: the native handles of fastipc.pubsub.Publisher and Subscriber
 * (see handle.h).
 *
 * The mapping belongs to Python (an mmap.mmap); the handle holds a buffer export of it (so
 * it cannot be unmapped under C) from _open until its release. The C core (csrc/pubsub.c)
 * is embedded. A recv builds its bytes object at the message's length and copies the
 * message once into it: in place from the ring under "block", through the seqlock check
 * of the core under "drop_oldest". A streamed message is assembled in a bytes object that
 * the handle keeps (`partial`) when a call is cut short, so that the next call resumes it. */
#include "ring_handle.h"

#include <errno.h>
#include <string.h>

#include "../pubsub.h"

#define TAKE_ANY 0   /* fipc_sub_recv's `more`: any message, streamed too */
#define TAKE_MORE 2  /* a batch's second message or later */

typedef struct {
    fipc_handle h;
    fipc_pub core;
    Py_buffer map;      /* the export of the mapping (valid while `mapped`) */
    int mapped;
    PyObject *partial;  /* subscriber: the bytes object a streamed message is assembled in */
} PubHandle;

static PyObject *core_raise_errno; /* fastipc._core.raise_errno(code, name) */

static void pub_wake(fipc_handle *h)
{
    fipc_pub_wake(&((PubHandle *)h)->core);
}

/* What C holds, without telling the segment anything. */
static void let_go(PubHandle *p)
{
    if (p->mapped) {
        p->mapped = 0;
        PyBuffer_Release(&p->map);
    }
    Py_CLEAR(p->partial);
}

static void pub_release(fipc_handle *h)
{
    PubHandle *p = (PubHandle *)h;
    if (p->mapped)
        fipc_pub_close(&p->core); /* the stream ends, or the slot is freed */
    let_go(p);
}

static const fipc_handle_kind pub_kind = {pub_wake, pub_release};

static int take_map(PubHandle *self, PyObject *mm, unsigned long long size)
{
    if (fipc_ring_map(&self->h, "fan-out", mm, &self->map) < 0)
        return -1;
    if ((unsigned long long)self->map.len != size) {
        PyBuffer_Release(&self->map);
        PyErr_SetString(PyExc_ValueError, "the mapping's size is not the segment's");
        return -1;
    }
    self->mapped = 1;
    return 0;
}

/* Set-up failed with status rc: raised as _core.raise_errno says (the handle is not open,
 * so fipc_h_raise would call it closed). */
static PyObject *init_failed(PubHandle *self, int rc)
{
    PyBuffer_Release(&self->map);
    self->mapped = 0;
    PyObject *name = PyObject_GetAttrString((PyObject *)self, "_name");
    if (name == NULL)
        return NULL;
    PyObject *r = PyObject_CallFunction(core_raise_errno, "iO",
                                        rc <= FIPC_EOF ? rc : -rc, name);
    Py_XDECREF(r);
    Py_DECREF(name);
    return NULL;
}

/* _open(mm, size, fd, pid, max_message, overflow, spin): set up the segment's header. */
static PyObject *pub_open(PubHandle *self, PyObject *args)
{
    PyObject *mm;
    unsigned long long size, max_message;
    int fd, pid, overflow;
    double spin;
    if (!PyArg_ParseTuple(args, "OKiiKid:_open", &mm, &size, &fd, &pid, &max_message,
                          &overflow, &spin) ||
        take_map(self, mm, size) < 0)
        return NULL;
    int rc = fipc_pub_init(&self->core, self->map.buf, size, fd, pid, max_message, overflow,
                           spin);
    if (rc < 0)
        return init_failed(self, rc);
    self->h.kind = &pub_kind;
    Py_RETURN_NONE;
}

/* _open(mm, size, fd, slot, pid, max_message, spin): join the stream; the mapping's address,
 * or None while the publisher has not finished its header. */
static PyObject *sub_open(PubHandle *self, PyObject *args)
{
    PyObject *mm;
    unsigned long long size, max_message;
    int fd, slot, pid;
    double spin;
    if (!PyArg_ParseTuple(args, "OKiiiKd:_open", &mm, &size, &fd, &slot, &pid, &max_message,
                          &spin) ||
        take_map(self, mm, size) < 0)
        return NULL;
    int rc = fipc_sub_init(&self->core, self->map.buf, size, fd, slot, pid, max_message, spin);
    if (rc == FIPC_PUB_NOTREADY) {
        PyBuffer_Release(&self->map);
        self->mapped = 0;
        Py_RETURN_NONE;
    }
    if (rc < 0)
        return init_failed(self, rc);
    self->h.kind = &pub_kind;
    return PyLong_FromVoidPtr(self->map.buf);
}

/* _forsake(): a forked child's copy, or one whose set-up failed: closed from now on, and
 * C lets go of the mapping without telling the segment anything (it is not ours). */
static PyObject *pub_forsake(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    int32_t state = atomic_exchange(&self->h.state, FIPC_H_RELEASED);
    if (state != FIPC_H_RELEASED)
        let_go(self);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ shared */

static PyObject *call_hook(PubHandle *self, const char *name)
{
    return PyObject_CallMethod((PyObject *)self, name, NULL);
}

/* Parse a method's arguments (fipc_h_args); what it refuses is raised by the Python method
 * of the same name (_bad_call), so that the TypeError says what Python says for the pure
 * backend's method. 0, or -1 with the exception set. */
static int parse(PubHandle *self, const char *func, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, const char *const *names, int required, PyObject **out)
{
    if (fipc_h_args(func, args, nargs, kwnames, names, required, out) == 0)
        return 0;
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyObject *pos = PyTuple_New(nargs), *kw = PyDict_New();
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_Size(kwnames);
    int ok = pos != NULL && kw != NULL;
    for (Py_ssize_t i = 0; ok && i < nargs; i++) {
        Py_INCREF(args[i]);
        PyTuple_SetItem(pos, i, args[i]);
    }
    for (Py_ssize_t k = 0; ok && k < nkw; k++)
        ok = PyDict_SetItem(kw, PyTuple_GetItem(kwnames, k), args[nargs + k]) == 0;
    PyObject *r = ok ? PyObject_CallMethod((PyObject *)self, "_bad_call", "sOO", func, pos, kw)
                     : NULL;
    Py_XDECREF(pos);
    Py_XDECREF(kw);
    if (r != NULL) { /* (it always raises) */
        Py_DECREF(r);
        PyErr_Restore(type, value, tb);
    }
    else {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
    }
    return -1;
}

/* The start of a method taking arguments: enter (ValueError if closed), parse them, and the
 * timeout arg[t] (t < 0: none). 0, or -1 with the call failed and left. */
static int begin(fipc_handle *h, const char *func, PyObject *const *args, Py_ssize_t nargs,
                 PyObject *kwnames, const char *const *names, int required, PyObject **arg,
                 int t, double *timeout)
{
    if (fipc_h_enter(h) < 0)
        return -1;
    if (parse((PubHandle *)h, func, args, nargs, kwnames, names, required, arg) < 0 ||
        (t >= 0 && fipc_h_timeout(arg[t], timeout) < 0)) {
        fipc_h_fail(h);
        return -1;
    }
    return 0;
}

/* _park(): None if ready, else (address of the futex word, its value): see fipc_pub_park. */
static PyObject *pub_park(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    uint64_t off = 0;
    uint32_t val = 0;
    int rc = fipc_pub_park(&self->core, &off, &val);
    if (rc < 0) {
        fipc_h_raise(&self->h, rc, -1);
        return fipc_h_fail(&self->h);
    }
    if (fipc_h_leave(&self->h) < 0)
        return NULL;
    if (rc == 1)
        Py_RETURN_NONE;
    if (off >= self->core.map_size) {
        PyErr_SetString(PyExc_SystemError, "futex word outside the mapping");
        return NULL;
    }
    return Py_BuildValue("(KI)", (unsigned long long)(uintptr_t)(self->map.buf) + off,
                         (unsigned int)val);
}

/* The await hooks below run inside an awaitable counted busy: the mapping stays until it
 * leaves, closed or not, so these may run after close() (then they do nothing). */
static int still_mapped(PubHandle *self)
{
    return self->mapped && atomic_load(&self->h.state) != FIPC_H_RELEASED;
}

static PyObject *pub_unpark(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (still_mapped(self))
        fipc_pub_unpark(&self->core);
    Py_RETURN_NONE;
}

static PyObject *pub_stats(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    PyObject *r = Py_BuildValue("(KK)", (unsigned long long)self->core.spins,
                                (unsigned long long)self->core.sleeps);
    if (fipc_h_leave(&self->h) < 0) {
        Py_XDECREF(r);
        return NULL;
    }
    return r;
}

/* ------------------------------------------------------------------------ publisher */

typedef struct {
    PubHandle *p;
    const char *const *bufs;
    const uint64_t *lens;
    uint64_t count;
    uint64_t done;
} send_ctx;

static int64_t send_attempt(void *ctx, double timeout)
{
    send_ctx *c = ctx;
    if (c->count == 1) { /* (one message: no batch to count) */
        int64_t rc = fipc_pub_send(&c->p->core, c->bufs[0], c->lens[0], timeout);
        c->done = rc == 0;
        return rc;
    }
    uint64_t sent = 0;
    int64_t rc = fipc_pub_send_vec(&c->p->core, c->bufs + c->done, c->lens + c->done,
                                   c->count - c->done, timeout, &sent);
    c->done += sent;
    return rc;
}

static int send_messages(PubHandle *self, send_ctx *c, double timeout, int nowait,
                         int many);

/* A send that failed with status rc: the message cut short is abandoned (subscribers drop
 * what was streamed of it), and the exception raised. n: the length of the message that
 * failed (a message the ring refuses under drop_oldest is a ValueError). */
static void send_failed(PubHandle *self, int64_t rc, uint64_t n, double timeout)
{
    self->core.progress = 0;
    if (rc == FIPC_H_RAISED)
        return;
    if (rc == FIPC_TOOBIG && n <= self->core.max_message && !fipc_h_closed(&self->h)) {
        PyObject *r = PyObject_CallMethod((PyObject *)self, "_too_large", "K",
                                          (unsigned long long)n);
        Py_XDECREF(r);
        return;
    }
    fipc_h_raise(&self->h, rc, timeout);
}

/* One message (view), sent as send_messages says (its return value). */
static int send_one(PubHandle *self, Py_buffer *view, double timeout, int nowait)
{
    const char *buf = view->buf;
    uint64_t len = (uint64_t)view->len;
    send_ctx c = {self, &buf, &len, 1, 0};
    return send_messages(self, &c, timeout, nowait, 0);
}

static PyObject *send_body(fipc_handle *h, fipc_ring_args *a)
{
    int rc = send_one((PubHandle *)h, &a->view, a->timeout, 0);
    return fipc_h_done(h, rc < 0 ? NULL : Py_NewRef(Py_None));
}
FIPC_RING_METHOD(pub_send, PubHandle, "send", ("data", "timeout"), 1, begin, fipc_ring_buffer,
                 send_body)

/* _send_nowait(data): True if it went, False if it has to wait (a message streamed in part
 * keeps its progress, for the next attempt to resume). */
static PyObject *send_nowait_body(fipc_handle *h, fipc_ring_args *a)
{
    int rc = send_one((PubHandle *)h, &a->view, 0.0, 1);
    return fipc_h_done(h, rc < 0 ? NULL : PyBool_FromLong(rc));
}
FIPC_RING_NOWAIT(pub_send_nowait, PubHandle, fipc_ring_buffer, send_nowait_body)

/* _give_up(): an awaited send ended early: what was streamed of its message is abandoned. */
static PyObject *pub_give_up(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (still_mapped(self))
        self->core.progress = 0;
    Py_RETURN_NONE;
}

/* Send c's messages from c->done on, waiting up to timeout (nowait: one attempt that
 * cannot wait). 1 all went, 0 (nowait) some have to wait (a message streamed in part keeps
 * its progress for the next attempt), -1 raised (many: saying how many went). */
static int send_messages(PubHandle *self, send_ctx *c, double timeout, int nowait, int many)
{
    int64_t rc = 0;
    if (c->done < c->count)
        rc = nowait ? send_attempt(c, 0.0)
                    : fipc_h_wait(&self->h, send_attempt, c, timeout, -ETIMEDOUT);
    if (rc >= 0)
        return 1;
    if (nowait && (rc == -ETIMEDOUT || rc == -EINTR))
        return 0;
    /* FIPC_TOOBIG may come from the check of the whole rest of a batch: the error is the
     * largest message's, not the next one's */
    uint64_t largest = 0;
    for (uint64_t i = c->done; i < c->count; i++)
        largest = c->lens[i] > largest ? c->lens[i] : largest;
    send_failed(self, rc, largest, timeout);
    if (many)
        fipc_ring_note_sent(c->done);
    return -1;
}

/* messages[first:], sent as send_messages says (its return value); *sent: how many went. */
static int send_batch(PubHandle *self, PyObject *messages, Py_ssize_t first, double timeout,
                      int nowait, uint64_t *sent)
{
    fipc_ring_batch b;
    if (fipc_ring_batch_of(messages, &self->h, &b) < 0)
        return -1;
    if (first < 0 || first > b.n) {
        fipc_ring_batch_free(&b);
        PyErr_SetString(PyExc_ValueError, "first is out of range");
        return -1;
    }
    send_ctx c = {self, b.bufs, b.lens, (uint64_t)b.n, (uint64_t)first};
    int rc = send_messages(self, &c, timeout, nowait, 1);
    fipc_ring_batch_free(&b);
    *sent = c.done - (uint64_t)first;
    return rc;
}

static PyObject *send_many_body(fipc_handle *h, fipc_ring_args *a)
{
    uint64_t sent;
    int rc = send_batch((PubHandle *)h, a->x, 0, a->timeout, 0, &sent);
    return fipc_h_done(h, rc < 0 ? NULL : Py_NewRef(Py_None));
}
FIPC_RING_METHOD(pub_send_many, PubHandle, "send_many", ("messages", "timeout"), 1, begin, NULL,
                 send_many_body)

/* _send_many_nowait(messages, first): how many of messages[first:] went without waiting. */
static PyObject *pub_send_many_nowait(PubHandle *self, PyObject *args)
{
    PyObject *messages;
    Py_ssize_t first;
    uint64_t sent;
    if (!PyArg_ParseTuple(args, "On:_send_many_nowait", &messages, &first))
        return NULL;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int rc = send_batch(self, messages, first, 0.0, 1, &sent);
    return fipc_h_done(&self->h, rc < 0 ? NULL : PyLong_FromUnsignedLongLong(sent));
}

/* ------------------------------------------------------------------------ subscriber */

typedef struct {
    PubHandle *p;
    char *dest;
    uint64_t cap;
    char *ptr;
    int more;
} recv_ctx;

static int64_t recv_attempt(void *ctx, double timeout)
{
    recv_ctx *c = ctx;
    return fipc_sub_recv(&c->p->core, c->dest, c->cap, timeout, &c->ptr, c->more);
}

/* Hand back the space of views whose users have gone (Holds._unstick), as every call of a
 * subscriber does while views are stuck. */
static int unstick(PubHandle *self)
{
    if (!self->core.recheck)
        return 0;
    PyObject *r = call_hook(self, "_unstick");
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* One wait of a receive, until deadline (ns, < 0: none; first: the call's own timeout, for
 * the first wait), looking at stuck views each time the core asks for it. */
static int64_t recv_wait(PubHandle *self, recv_ctx *c, double timeout, int64_t deadline,
                         int first)
{
    for (;;) {
        double t = first ? timeout : fipc_h_left(deadline);
        int64_t rc = fipc_h_wait(&self->h, recv_attempt, c, t, -ETIMEDOUT);
        if (rc != FIPC_PUB_RECHECK)
            return rc;
        if (unstick(self) < 0)
            return FIPC_H_RAISED;
        first = 0;
    }
}

/* The status a receive ended with, raised: at the end of the stream, the name of a
 * publisher that died without removing it goes first (_ended). */
static void recv_failed(PubHandle *self, int64_t rc, double timeout)
{
    if (rc == FIPC_H_RAISED)
        return;
    if (rc == FIPC_EOF && !fipc_h_closed(&self->h)) {
        PyObject *r = call_hook(self, "_ended");
        if (r == NULL)
            return;
        Py_DECREF(r);
    }
    fipc_h_raise(&self->h, rc, timeout);
}

/* Assemble the streamed message in `partial` (or a new one of last_len bytes), waiting as
 * the call may: the bytes object once whole, else NULL with *status (or an exception). A
 * call cut short keeps `partial` for the next call if the message is under way. */
static PyObject *assemble(PubHandle *self, double timeout, int64_t deadline, int first,
                          int64_t *status)
{
    for (;;) {
        if (self->partial == NULL) {
            self->partial = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)self->core.last_len);
            if (self->partial == NULL) {
                *status = FIPC_H_RAISED;
                return NULL;
            }
        }
        PyObject *buf = self->partial;
        recv_ctx c = {self, PyBytes_AsString(buf), (uint64_t)PyBytes_Size(buf), NULL, TAKE_ANY};
        int64_t n = recv_wait(self, &c, timeout, deadline, first);
        first = 0;
        if (n < 0 && n != FIPC_NEED) {
            if (self->core.msg_total == 0)
                Py_CLEAR(self->partial);
            *status = n;
            return NULL;
        }
        self->partial = NULL; /* ours now */
        if (n == FIPC_NEED) { /* given up for a larger one */
            Py_DECREF(buf);
            continue;
        }
        if ((uint64_t)n == c.cap)
            return buf;
        PyObject *r = PyBytes_FromStringAndSize(c.dest, (Py_ssize_t)n);
        Py_DECREF(buf);
        if (r == NULL)
            *status = FIPC_H_RAISED;
        return r;
    }
}

/* The next message as a new bytes object (copied once), or NULL with *status: a C status,
 * or FIPC_H_RAISED with an exception set. more: a batch's next message (never waits; a
 * message the batch does not take is FIPC_NEED). */
static PyObject *take(PubHandle *self, double timeout, int more, int64_t *status)
{
    int64_t deadline = fipc_h_deadline(timeout);
    if (self->partial != NULL)
        return assemble(self, timeout, deadline, 1, status);
    recv_ctx c = {self, NULL, 0, NULL, more ? TAKE_MORE : TAKE_ANY};
    int64_t n = more ? recv_attempt(&c, 0.0) : recv_wait(self, &c, timeout, deadline, 1);
    if (n >= 0) { /* in place (block): copy it out, then its room may go back */
        PyObject *r = PyBytes_FromStringAndSize(c.ptr, (Py_ssize_t)n);
        fipc_sub_done(&self->core);
        if (r == NULL)
            *status = FIPC_H_RAISED;
        return r;
    }
    if (n != FIPC_NEED) {
        *status = n;
        return NULL;
    }
    if (self->core.overflow == 1) { /* block: a streamed message, or one a batch leaves */
        if (more) {
            *status = n;
            return NULL;
        }
        return assemble(self, timeout, deadline, 0, status);
    }
    /* drop_oldest: copied out through the seqlock check, into a buffer of its length */
    for (;;) {
        PyObject *buf = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)self->core.last_len);
        if (buf == NULL) {
            *status = FIPC_H_RAISED;
            return NULL;
        }
        c.dest = PyBytes_AsString(buf);
        c.cap = (uint64_t)PyBytes_Size(buf);
        n = more ? recv_attempt(&c, 0.0) : recv_wait(self, &c, timeout, deadline, 0);
        if (n >= 0 && (uint64_t)n == c.cap)
            return buf;
        if (n >= 0) { /* overrun meanwhile: a shorter message came instead */
            PyObject *r = PyBytes_FromStringAndSize(c.dest, (Py_ssize_t)n);
            Py_DECREF(buf);
            if (r == NULL)
                *status = FIPC_H_RAISED;
            return r;
        }
        Py_DECREF(buf);
        if (n != FIPC_NEED || more) {
            *status = n;
            return NULL;
        }
    }
}

/* The end of a receiving call: its result r, or (NULL) the exception of status. */
static PyObject *recv_done(PubHandle *self, PyObject *r, int64_t status, double timeout)
{
    if (r == NULL) {
        recv_failed(self, status, timeout);
        return fipc_h_fail(&self->h);
    }
    if (fipc_h_leave(&self->h) < 0) {
        Py_DECREF(r);
        return NULL;
    }
    return r;
}

static PyObject *many(PubHandle *self, double timeout, long max, int64_t *status);

/* recv(timeout=None); recv_many(max_messages=1024, timeout=None): max > 0. */
FIPC_RING_INLINE PyObject *recv_body(fipc_handle *h, fipc_ring_args *a)
{
    PubHandle *self = (PubHandle *)h;
    if (unstick(self) < 0)
        return fipc_h_fail(h);
    int64_t status = 0;
    PyObject *r = a->max ? many(self, a->timeout, a->max, &status)
                         : take(self, a->timeout, 0, &status);
    return recv_done(self, r, status, a->timeout);
}
FIPC_RING_METHOD(sub_recv, PubHandle, "recv", ("timeout"), 0, begin, NULL, recv_body)

/* _recv_nowait(): the next message, or None if there is none yet (for awaiting). */
static PyObject *sub_recv_nowait(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (unstick(self) < 0)
        return fipc_h_fail(&self->h);
    int64_t status = 0;
    PyObject *r = take(self, 0.0, 0, &status);
    if (r == NULL && status == -ETIMEDOUT) {
        r = Py_None;
        Py_INCREF(r);
    }
    return recv_done(self, r, status, 0.0);
}

static int writable_buffer(PyObject *buffer, Py_buffer *view)
{
    if (!PyUnicode_Check(buffer) && PyObject_GetBuffer(buffer, view, PyBUF_WRITABLE) == 0)
        return 0;
    PyErr_Clear();
    Py_buffer any;
    if (!PyUnicode_Check(buffer) && PyObject_GetBuffer(buffer, &any, PyBUF_FULL_RO) == 0) {
        PyBuffer_Release(&any);
        PyErr_SetString(PyExc_TypeError, "recv_into needs a writable contiguous bytes-like "
                        "object");
        return -1;
    }
    PyErr_Clear();
    PyObject *name = PyType_GetName(Py_TYPE(buffer));
    PyErr_Format(PyExc_TypeError, "recv_into needs a writable contiguous bytes-like object, "
                 "not %R", name);
    Py_XDECREF(name);
    return -1;
}

static PyObject *recv_into_body(fipc_handle *h, fipc_ring_args *a)
{
    PubHandle *self = (PubHandle *)h;
    double timeout = a->timeout;
    if (unstick(self) < 0)
        return fipc_h_fail(h);
    uint64_t cap = (uint64_t)a->view.len;
    int64_t n;
    if (self->partial != NULL) { /* a streamed message under way: finished in its buffer */
        if (cap < (uint64_t)PyBytes_Size(self->partial)) {
            fipc_ring_too_small(cap, (uint64_t)PyBytes_Size(self->partial));
            return fipc_h_fail(&self->h);
        }
        int64_t status = 0;
        PyObject *r = take(self, timeout, 0, &status);
        if (r == NULL) {
            recv_failed(self, status, timeout);
            return fipc_h_fail(&self->h);
        }
        n = PyBytes_Size(r);
        memcpy(a->view.buf, PyBytes_AsString(r), (size_t)n);
        Py_DECREF(r);
    }
    else {
        recv_ctx c = {self, a->view.buf, cap, NULL, TAKE_ANY};
        int64_t deadline = fipc_h_deadline(timeout);
        n = recv_wait(self, &c, timeout, deadline, 1);
        fipc_pub *core = &self->core;
        if (n < 0 && n != FIPC_NEED && core->msg_total && core->msg_dest == c.dest) {
            /* cut short in a streamed message: what came of it goes to a buffer of our
             * own, where the next call resumes it (the commit is msg_dest) */
            PyObject *keep = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)core->msg_total);
            if (keep != NULL) {
                uint64_t done = core->msg_done < core->msg_total ? core->msg_done
                                                                 : core->msg_total;
                memcpy(PyBytes_AsString(keep), c.dest, done < cap ? done : cap);
                self->partial = keep;
                core->msg_dest = PyBytes_AsString(keep);
            }
            else
                PyErr_Clear(); /* the message is dropped whole */
        }
        if (n == FIPC_NEED) {
            fipc_ring_too_small(cap, core->last_len);
            return fipc_h_fail(&self->h);
        }
        if (n < 0) {
            recv_failed(self, n, timeout);
            return fipc_h_fail(&self->h);
        }
    }
    return fipc_h_done(h, PyLong_FromLongLong(n));
}
FIPC_RING_METHOD(sub_recv_into, PubHandle, "recv_into", ("buffer", "timeout"), 1, begin,
                 writable_buffer, recv_into_body)

/* Up to max messages: the first as recv takes it (waiting), then those already there that
 * a batch takes, without waiting. */
static PyObject *many(PubHandle *self, double timeout, long max, int64_t *status)
{
    PyObject *first = take(self, timeout, 0, status);
    if (first == NULL)
        return NULL;
    PyObject *list = fipc_ring_list(first);
    if (list == NULL) {
        *status = FIPC_H_RAISED;
        return NULL;
    }
    for (long count = 1; count < max && self->partial == NULL; count++) {
        if (fipc_sub_more(&self->core) <= 0)
            break; /* nothing more there (an error is left for the next call) */
        int64_t st = 0;
        PyObject *next = take(self, 0.0, 1, &st);
        if (next == NULL) {
            if (st == FIPC_H_RAISED || st == FIPC_CORRUPT) {
                Py_DECREF(list);
                *status = st;
                return NULL;
            }
            break; /* left for the next call (to report, if it is an error) */
        }
        int rc = PyList_Append(list, next);
        Py_DECREF(next);
        if (rc < 0) {
            Py_DECREF(list);
            *status = FIPC_H_RAISED;
            return NULL;
        }
    }
    return list;
}

FIPC_RING_METHOD(sub_recv_many, PubHandle, "recv_many", ("max_messages", "timeout"),
                 FIPC_RING_MANY, begin, NULL, recv_body)

/* _recv_many_nowait(max_messages): recv_many without waiting, or None (for awaiting). */
static PyObject *sub_recv_many_nowait(PubHandle *self, PyObject *arg)
{
    long max;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (fipc_ring_max_messages(arg, &max) < 0 || unstick(self) < 0)
        return fipc_h_fail(&self->h);
    int64_t status = 0;
    PyObject *r = many(self, 0.0, max, &status);
    if (r == NULL && status == -ETIMEDOUT) {
        r = Py_None;
        Py_INCREF(r);
    }
    return recv_done(self, r, status, 0.0);
}

/* _view(timeout): the next message for recv_view (timeout: checked already, in the C
 * convention: < 0 forever): (memoryview, ring position) of an exporter of its own
 * (Holds._export) under "block", else (memoryview of a copy, None). */
static PyObject *sub_view(PubHandle *self, PyObject *arg)
{
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred())
        return NULL;
    if (timeout < 0)
        timeout = -1.0;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (unstick(self) < 0)
        return fipc_h_fail(&self->h);
    int64_t status = 0;
    PyObject *copy = NULL, *r = NULL;
    if (self->core.overflow != 1 || self->partial != NULL)
        copy = take(self, timeout, 0, &status);
    else {
        recv_ctx c = {self, NULL, 0, NULL, TAKE_ANY};
        int64_t deadline = fipc_h_deadline(timeout);
        int64_t n = recv_wait(self, &c, timeout, deadline, 1);
        if (n == FIPC_NEED) /* a streamed message: assembled, so a copy */
            copy = assemble(self, timeout, deadline, 0, &status);
        else if (n < 0)
            status = n;
        else {
            uint64_t off = (uint64_t)(c.ptr - (char *)self->map.buf);
            if (c.ptr < (char *)self->map.buf || off > self->core.map_size - (uint64_t)n)
                status = FIPC_CORRUPT;
            else
                r = PyObject_CallMethod((PyObject *)self, "_export", "KLK",
                                        (unsigned long long)off, (long long)n,
                                        (unsigned long long)self->core.last_pos);
            if (r == NULL && status == 0)
                status = FIPC_H_RAISED;
        }
    }
    if (copy != NULL) {
        PyObject *mv = PyMemoryView_FromObject(copy);
        Py_DECREF(copy);
        r = mv == NULL ? NULL : Py_BuildValue("(NO)", mv, Py_None);
        if (r == NULL)
            status = FIPC_H_RAISED;
    }
    return recv_done(self, r, status, timeout);
}

/* Holds' hooks: set_hold(pos) (None: no hold) and _recheck(flag). */
static PyObject *sub_set_hold(PubHandle *self, PyObject *pos)
{
    uint64_t hold = UINT64_MAX;
    if (pos != Py_None) {
        hold = PyLong_AsUnsignedLongLong(pos);
        if (hold == (uint64_t)-1 && PyErr_Occurred())
            return NULL;
    }
    if (!still_mapped(self) || fipc_h_closed(&self->h))
        Py_RETURN_NONE; /* the holds went with the close */
    self->core.hold = hold;
    fipc_sub_release(&self->core);
    Py_RETURN_NONE;
}

static PyObject *sub_recheck(PubHandle *self, PyObject *flag)
{
    int on = PyObject_IsTrue(flag);
    if (on < 0)
        return NULL;
    if (still_mapped(self))
        self->core.recheck = on;
    Py_RETURN_NONE;
}

static PyObject *sub_missed(PubHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    unsigned long long missed = self->core.missed;
    if (fipc_h_leave(&self->h) < 0)
        return NULL;
    return PyLong_FromUnsignedLongLong(missed);
}

/* ------------------------------------------------------------------------ the types */

/* (the hooks without a docstring: two a line) */
static PyMethodDef fan_out_methods[] = {
    FIPC_H_NOARGS("_forsake", pub_forsake, NULL), FIPC_H_NOARGS("_park", pub_park, NULL),
    FIPC_H_NOARGS("_unpark", pub_unpark, NULL), FIPC_H_NOARGS("_stats", pub_stats, NULL),
    FIPC_H_END,
};

static PyMethodDef pub_methods[] = {
    FIPC_H_VARARGS("_open", pub_open, NULL),
    FIPC_RING_SEND_METHODS(pub_send, pub_send_many, pub_send_nowait,
                           "the slowest subscriber under ``\"block\"``"),
    FIPC_H_VARARGS("_send_many_nowait", pub_send_many_nowait, NULL),
    FIPC_H_NOARGS("_give_up", pub_give_up, NULL), FIPC_H_END,
};

static PyMethodDef sub_methods[] = {
    FIPC_H_VARARGS("_open", sub_open, NULL),
    FIPC_RING_RECV_METHODS(sub_recv, sub_recv_into, sub_recv_many, sub_recv_nowait,
                           sub_recv_many_nowait, "publisher"),
    FIPC_H_O("_view", sub_view, NULL),
    FIPC_H_O("set_hold", sub_set_hold, NULL), FIPC_H_O("_recheck", sub_recheck, NULL),
    FIPC_H_NOARGS("_missed", sub_missed, NULL), FIPC_H_END,
};

FIPC_H_SPEC(fan_out_spec, "FanOutHandle", PubHandle,
            "The base of a fan-out's ends' handles: the await hooks and counters.",
            fan_out_methods, fipc_h_no_getset);
FIPC_H_SPEC(pub_spec, "PublisherHandle", PubHandle, "The native handle of a fan-out publisher.",
            pub_methods, fipc_h_no_getset);
FIPC_H_SPEC(sub_spec, "SubscriberHandle", PubHandle, "The native handle of a fan-out subscriber.",
            sub_methods, fipc_h_no_getset);

int fipc_py_pubsub_init(PyObject *module)
{
    PyObject *core = PyImport_ImportModule("fastipc._core");
    if (core == NULL)
        return -1;
    core_raise_errno = PyObject_GetAttrString(core, "raise_errno");
    Py_DECREF(core);
    if (core_raise_errno == NULL)
        return -1;
    return fipc_ring_add_types(module, &fan_out_spec, &pub_spec, &sub_spec);
}
