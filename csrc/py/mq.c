/* fastipc csrc/py/mq.c: the native handle of fastipc.mq.MessageQueue (see handle.h).
 *
 * The open queue (a fipc_mq of csrc/mq.h) is made by fastipc._native.mq.Queue in memory
 * that a cffi object owns; the handle keeps its address and a reference to that owner until
 * it is released. send and receive are one C call each: the attempt that does not wait
 * runs holding the GIL, a wait sleeps in the kernel's mq_timedsend/mq_timedreceive with the
 * GIL released (fipc_h_wait), and close() ends it within a slice (fipc_mq_wake).
 *
 * A message taken from the queue is not lost to an exception raised as the receive returns
 * it (a signal handler: Python runs handlers as calls into C return, before the caller
 * has the result): receive remembers the message it returned last and the thread it
 * returned it to, and the public receive (fastipc.mq) catches such an exception and calls
 * _keep_last(), which keeps that message for the next receive of this object. Receives of
 * several threads return at once: that pair changes under a lock, and each receive
 * releases the message it replaces (none stays referenced but the last). */
#include "handle.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "../mq.h"

typedef struct {
    fipc_handle h;
    fipc_mq *q;       /* the open queue, in memory that `owner` owns */
    PyObject *owner;  /* the cffi object owning *q */
    char *buf;        /* max_message_size bytes, for a receive's attempt holding the GIL */
    PyObject *kept;   /* list of (bytes, priority) kept by interrupted receives, or NULL */
    atomic_flag last_lock;     /* guards the pair below (receives return in any thread) */
    PyObject *last;   /* the message receive returned last (for _keep_last), or NULL */
    unsigned long last_thread; /* the thread it was returned to */
} MqHandle;

static long prio_max;   /* MQ_PRIO_MAX: priorities are below it */
static PyObject *zero;  /* send's default priority */

/* Put `msg` (a new reference, or NULL) as the message receive returned last to this thread:
 * if `any` or the last one is this thread's; what it replaces, which the caller releases
 * (a new reference, or NULL). */
static PyObject *swap_last(MqHandle *self, PyObject *msg, int any)
{
    unsigned long thread = PyThread_get_thread_ident();
    fipc_h_lock(&self->last_lock);
    PyObject *old = msg; /* not put: given back */
    if (any || self->last_thread == thread) {
        old = self->last;
        self->last = msg;
        self->last_thread = thread;
    }
    fipc_h_unlock(&self->last_lock);
    return old;
}

static void mq_wake(fipc_handle *h)
{
    MqHandle *m = (MqHandle *)h;
    /* it fails only to write the wake-up eventfd, which cannot be full: the waits in C end
     * within a slice (by the flag it sets first) whatever it returns */
    if (m->q != NULL)
        (void)fipc_mq_wake(m->q);
}

static void mq_release(fipc_handle *h)
{
    MqHandle *m = (MqHandle *)h;
    if (m->q != NULL) {
        fipc_mq_close(m->q);
        m->q = NULL;
    }
    free(m->buf);
    m->buf = NULL;
    Py_CLEAR(m->kept);
    Py_XDECREF(swap_last(m, NULL, 1));
    Py_CLEAR(m->owner);
}

static const fipc_handle_kind mq_kind = {mq_wake, mq_release};

/* _open(address: int, owner): the handle of the fipc_mq at `address`, which `owner` keeps. */
static PyObject *mq_open_method(MqHandle *self, PyObject *args)
{
    PyObject *address, *owner;
    if (!PyArg_ParseTuple(args, "O!O:_open", &PyLong_Type, &address, &owner))
        return NULL;
    if (fipc_h_unopened(&self->h, "message queue") < 0)
        return NULL;
    fipc_mq *q = PyLong_AsVoidPtr(address);
    if (q == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "no message queue at address 0");
        return NULL;
    }
    Py_INCREF(owner);
    self->owner = owner;
    self->q = q;
    self->h.kind = &mq_kind;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ send */

typedef struct {
    fipc_mq *q;
    const char *buf;
    size_t len;
    long long priority;
} send_ctx;

static int64_t send_attempt(void *ctx, double timeout)
{
    send_ctx *c = ctx;
    return fipc_mq_send(c->q, c->buf, c->len, c->priority, timeout);
}

static const char *const send_names[] = {"data", "priority", "timeout", NULL};

/* The rare arguments (not a buffer, a priority that is not a plain int in range, a message
 * too long): the Python checks (MessageQueue._check_send), in their order, with their
 * messages. The priority they allow, or -1 with an exception set. */
static long check_send(MqHandle *self, PyObject **arg)
{
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_check_send", "OOO", arg[0],
                                      arg[1] != NULL ? arg[1] : zero,
                                      arg[2] != NULL ? arg[2] : Py_None);
    if (r == NULL)
        return -1;
    PyObject *priority = PyTuple_Check(r) && PyTuple_Size(r) == 3 ? PyTuple_GetItem(r, 1) : NULL;
    long p = priority != NULL ? PyLong_AsLong(priority) : -1;
    Py_DECREF(r);
    if (p < 0 && !PyErr_Occurred())
        PyErr_SetString(PyExc_SystemError, "MessageQueue._check_send returned no priority");
    return p;
}

/* check_send for arguments that it must refuse: -1 with its exception set. */
static int refuse_send(MqHandle *self, PyObject **arg, PyObject *type, const char *message)
{
    if (check_send(self, arg) >= 0)
        PyErr_SetString(type, message);
    return -1;
}

static PyObject *mq_send(MqHandle *self, PyObject *const *args, Py_ssize_t nargs,
                         PyObject *kwnames)
{
    PyObject *arg[3];
    Py_buffer view;
    double timeout;
    long priority = 0;
    /* the timeout is checked after the data and the priority, as _check_send does */
    if (fipc_h_begin(&self->h, "MessageQueue.send", args, nargs, kwnames, send_names, 1, arg,
                     -1, NULL) < 0)
        return NULL;
    if (fipc_h_buffer(arg[0], &view, 0) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) {
            PyErr_Clear();
            refuse_send(self, arg, PyExc_TypeError, "a bytes-like object is required");
        }
        return fipc_h_fail(&self->h);
    }
    if (arg[1] != NULL) {
        int overflow = 0;
        priority = PyLong_CheckExact(arg[1]) ? PyLong_AsLongAndOverflow(arg[1], &overflow) : -1;
        if (overflow || priority < 0 || priority >= prio_max) {
            PyErr_Clear();
            priority = check_send(self, arg);
            if (priority < 0)
                goto fail;
        }
    }
    if (fipc_h_timeout(arg[2], &timeout) < 0)
        goto fail;
    if (view.len > self->q->max_message_size) {
        refuse_send(self, arg, PyExc_ValueError, "message longer than max_message_size");
        goto fail;
    }
    send_ctx c = {self->q, view.buf, (size_t)view.len, priority};
    int64_t rc = fipc_h_wait(&self->h, send_attempt, &c, timeout, -ETIMEDOUT);
    PyBuffer_Release(&view);
    return fipc_h_end(&self->h, rc, timeout, rc < 0 ? NULL : Py_NewRef(Py_None));
fail:
    PyBuffer_Release(&view);
    return fipc_h_fail(&self->h);
}

/* ------------------------------------------------------------------------ receive */

typedef struct {
    MqHandle *m;
    char *buf;   /* where the message is: the handle's buffer, or `own` */
    char *own;   /* this call's buffer (a call buffer), made for its first attempt without
                    the GIL */
    int first;   /* the next attempt is the first: fipc_h_wait holds the GIL for it */
} receive_ctx;

static int64_t receive_attempt(void *ctx, double timeout)
{
    receive_ctx *c = ctx;
    if (c->first)
        c->first = 0;
    else if (c->own == NULL) { /* other threads may use the handle's buffer meanwhile */
        c->own = fipc_h_buf_alloc(&c->m->h, (size_t)c->m->q->max_message_size);
        if (c->own == NULL)
            return -ENOMEM;
        c->buf = c->own;
    }
    return fipc_mq_receive(c->m->q, c->buf, timeout);
}

/* (bytes, priority) of a message received into buf, as fipc_mq_receive said. */
static PyObject *message(const char *buf, int64_t rc)
{
    /* bytes first: it is not tracked by the garbage collector, so making it runs no Python
     * code that could receive into the handle's buffer before it is copied */
    PyObject *data = PyBytes_FromStringAndSize(buf, (Py_ssize_t)(rc >> FIPC_MQ_PRIO_BITS));
    if (data == NULL)
        return NULL;
    PyObject *priority = PyLong_FromLong((long)(rc & ((1 << FIPC_MQ_PRIO_BITS) - 1)));
    PyObject *t = priority == NULL ? NULL : PyTuple_New(2);
    if (t == NULL) {
        Py_DECREF(data);
        Py_XDECREF(priority);
        return NULL;
    }
    PyTuple_SetItem(t, 0, data); /* steal: cannot fail on a new tuple of 2 */
    PyTuple_SetItem(t, 1, priority);
    return t;
}

static const char *const receive_names[] = {"timeout", NULL};

static PyObject *mq_receive(MqHandle *self, PyObject *const *args, Py_ssize_t nargs,
                            PyObject *kwnames)
{
    PyObject *arg[1], *msg;
    double timeout;
    /* the last message this thread had is the caller's: an exception now is not its */
    Py_XDECREF(swap_last(self, NULL, 0));
    if (fipc_h_begin(&self->h, "MessageQueue.receive", args, nargs, kwnames, receive_names, 0,
                     arg, 0, &timeout) < 0)
        return NULL;
    if (self->kept != NULL && PyList_Size(self->kept) > 0) {
        msg = PyList_GetItem(self->kept, 0);
        Py_INCREF(msg);
        if (PyList_SetSlice(self->kept, 0, 1, NULL) < 0) {
            Py_DECREF(msg);
            return fipc_h_fail(&self->h);
        }
    }
    else {
        if (self->buf == NULL) {
            self->buf = malloc((size_t)self->q->max_message_size);
            if (self->buf == NULL) {
                PyErr_NoMemory();
                return fipc_h_fail(&self->h);
            }
        }
        receive_ctx c = {self, self->buf, NULL, 1};
        int64_t rc = fipc_h_wait(&self->h, receive_attempt, &c, timeout, -ETIMEDOUT);
        msg = rc < 0 ? NULL : message(c.buf, rc);
        fipc_h_buf_free(&self->h, c.own);
        if (rc < 0)
            fipc_h_raise(&self->h, rc, timeout);
        if (msg == NULL)
            return fipc_h_fail(&self->h);
    }
    Py_XDECREF(swap_last(self, Py_NewRef(msg), 1));
    return fipc_h_done(&self->h, msg);
}

/* _keep_last(): called by the public receive when an exception was raised into it after
 * this handle's receive returned (a signal handler's, as the C call returned): the message
 * that receive returned in this thread goes back, first of those the next receive returns. */
static PyObject *mq_keep_last(MqHandle *self, PyObject *Py_UNUSED(ignored))
{
    /* counted busy, so that the handle is not released meanwhile, but not refused when
     * closed (the exception being raised is the one to see): a closed queue keeps nothing */
    atomic_fetch_add(&self->h.busy, 1);
    PyObject *msg = fipc_h_closed(&self->h) ? NULL : swap_last(self, NULL, 0);
    int rc = 0;
    if (msg != NULL) {
        if (self->kept == NULL)
            self->kept = PyList_New(0);
        rc = self->kept == NULL ? -1 : PyList_Insert(self->kept, 0, msg);
        Py_DECREF(msg);
    }
    if (fipc_h_leave(&self->h) < 0 || rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* The module's constants, once (fipc_py_mq_init): 0, or -1 with an exception set. */
static int mq_setup(void)
{
    prio_max = sysconf(_SC_MQ_PRIO_MAX);
    if (prio_max <= 0 || prio_max > 1 << FIPC_MQ_PRIO_BITS)
        prio_max = 1 << FIPC_MQ_PRIO_BITS >> 1; /* Linux's 32768 */
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL)
        return -1;
    return 0;
}

FIPC_H_TYPE(mq, "MqHandle", MqHandle, "The native handle of a POSIX message queue.",
            fipc_h_no_getset, mq_setup(),
    FIPC_H_FASTCALL("send", mq_send,
                    "send(data, priority=0, timeout=None)\n--\n\n"
                    "Send ``data`` (bytes-like) as one message with ``priority`` (0 to "
                    "``MQ_PRIO_MAX - 1``, higher first). Waits while the queue is full: "
                    "TimeoutError after ``timeout`` seconds (None: forever, 0: do not wait). A "
                    "message longer than :attr:`max_message_size` raises ValueError before "
                    "anything is sent."),
    FIPC_H_FASTCALL("receive", mq_receive,
                    "receive(timeout=None)\n--\n\n"
                    "The oldest message of the highest priority waiting, as ``(bytes, "
                    "priority)``: exactly the bytes that were sent. Waits while the queue is "
                    "empty: TimeoutError after ``timeout`` seconds (None: forever, 0: do not "
                    "wait)."),
    FIPC_H_NOARGS("_keep_last", mq_keep_last, NULL))
