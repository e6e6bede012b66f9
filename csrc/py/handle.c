/* fastipc csrc/py/handle.c: the handle base type and what every handle type shares (see
 * handle.h): life cycle, argument parsing, the wait loop, error mapping, and the install. */
#include "handle.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

PyObject *fipc_h_base;
static PyObject *core_raise_errno;    /* fastipc._core.raise_errno(code, name, timeout) */
static PyObject *core_check_timeout;  /* fastipc._core.check_timeout(obj) */

static PyObject *closed_error(fipc_handle *h)
{
    PyObject *exc = PyObject_CallMethod((PyObject *)h, "_closed_error", NULL);
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ call buffers */

void *fipc_h_buf_alloc(fipc_handle *h, size_t n)
{
    fipc_h_buf *b = atomic_exchange(&h->spare, NULL);
    if (b != NULL && (b->size < n || b->size / 2 > n)) { /* not this call's size: left */
        free(atomic_exchange(&h->spare, b));
        b = NULL;
    }
    if (b == NULL) {
        if (n > SIZE_MAX - sizeof *b || (b = malloc(sizeof *b + n)) == NULL)
            return NULL;
        b->size = n;
    }
    b->thread = pthread_self();
    b->prev = NULL;
    fipc_h_lock(&h->bufs_lock);
    b->next = h->bufs;
    if (b->next != NULL)
        b->next->prev = b;
    h->bufs = b;
    fipc_h_unlock(&h->bufs_lock);
    return b + 1;
}

/* Take `b` off the handle's list (its lock held). */
static void unlink_locked(fipc_handle *h, fipc_h_buf *b)
{
    if (b->prev != NULL)
        b->prev->next = b->next;
    else
        h->bufs = b->next;
    if (b->next != NULL)
        b->next->prev = b->prev;
}

/* Take buffer `p` off the handle's list: its header. */
static fipc_h_buf *buf_unlink(fipc_handle *h, void *p)
{
    fipc_h_buf *b = (fipc_h_buf *)p - 1;
    fipc_h_lock(&h->bufs_lock);
    unlink_locked(h, b);
    fipc_h_unlock(&h->bufs_lock);
    return b;
}

void fipc_h_buf_free(fipc_handle *h, void *p)
{
    if (p != NULL)
        free(buf_unlink(h, p));
}

void fipc_h_buf_keep(fipc_handle *h, void *p)
{
    if (p != NULL)
        free(atomic_exchange(&h->spare, buf_unlink(h, p)));
}

/* Free the call buffers of other threads' calls, which no thread of this process will
 * touch: in a fork child, the parent's other threads'; at release, none (no call is busy).
 * This thread's stay: a call of its own that ran Python code, and forked there, goes on
 * using them. Only where the list is whole: if a thread held its lock when the process
 * forked, the child leaves the list as it was (lost, not freed wrongly) and starts anew. */
static void free_call_buffers(fipc_handle *h)
{
    if (atomic_flag_test_and_set(&h->bufs_lock)) {
        h->bufs = NULL;
        fipc_h_unlock(&h->bufs_lock);
        return;
    }
    pthread_t me = pthread_self();
    for (fipc_h_buf *b = h->bufs, *next; b != NULL; b = next) {
        next = b->next;
        if (pthread_equal(b->thread, me))
            continue; /* a call of this thread's that runs Python code (and forked there) */
        unlink_locked(h, b);
        free(b);
    }
    fipc_h_unlock(&h->bufs_lock);
}

/* What the base frees when it releases a handle: the call buffers left (none, but in a fork
 * child that did not run _forget_calls) and the spare. */
static void release_buffers(fipc_handle *h)
{
    free_call_buffers(h);
    free(atomic_exchange(&h->spare, NULL));
}

/* ------------------------------------------------------------------------ life cycle */

/* Release once: C's part, then the object's _free (Python). -1 if _free raised. */
int fipc_h_release(fipc_handle *h)
{
    int32_t closed = FIPC_H_CLOSED;
    if (!atomic_compare_exchange_strong(&h->state, &closed, FIPC_H_RELEASED))
        return 0;
    if (h->kind != NULL && h->kind->release != NULL)
        h->kind->release(h);
    release_buffers(h);
    PyObject *r = PyObject_CallMethod((PyObject *)h, "_free", NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

int fipc_h_refuse(fipc_handle *h)
{
    closed_error(h);
    return -1;
}

PyObject *fipc_h_fail(fipc_handle *h)
{
    if (fipc_h_closed(h) && (PyErr_ExceptionMatches(PyExc_OSError) ||
                             PyErr_ExceptionMatches(PyExc_EOFError))) {
        PyErr_Clear();
        closed_error(h);
    }
    /* The last call to leave a closed object releases it, running the object's _free: with
     * the call's exception set aside, or _free would fail and leak what it frees. */
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (fipc_h_leave(h) < 0)
        PyErr_Clear(); /* _free raised: the call's own exception is the one to see */
    PyErr_Restore(type, value, tb);
    return NULL;
}

void fipc_h_note(PyObject *type, const char *attr, uint64_t n)
{
    if (!PyErr_ExceptionMatches(type))
        return;
    PyObject *exc, *value, *tb;
    PyErr_Fetch(&exc, &value, &tb);
    PyErr_NormalizeException(&exc, &value, &tb);
    PyObject *v = PyLong_FromUnsignedLongLong(n);
    if (v == NULL || value == NULL || PyObject_SetAttrString(value, attr, v) < 0)
        PyErr_Clear();
    Py_XDECREF(v);
    PyErr_Restore(exc, value, tb);
}

int fipc_h_unopened(fipc_handle *h, const char *what)
{
    if (h->kind == NULL && atomic_load(&h->state) == FIPC_H_UNOPENED)
        return 0;
    PyErr_Format(PyExc_ValueError, "the %s handle is open already", what);
    return -1;
}

static PyObject *h_close(fipc_handle *h, PyObject *Py_UNUSED(ignored))
{
    int32_t open = FIPC_H_OPEN;
    atomic_fetch_add(&h->busy, 1); /* busy while waking: a woken call cannot release under us */
    if (!atomic_compare_exchange_strong(&h->state, &open, FIPC_H_CLOSED)) {
        atomic_fetch_sub(&h->busy, 1);
        Py_RETURN_NONE; /* closed already, or never opened */
    }
    int failed = 0;
    if (atomic_load(&h->busy) > 1) {
        if (h->kind != NULL && h->kind->wake != NULL)
            h->kind->wake(h);
        PyObject *r = PyObject_CallMethod((PyObject *)h, "_wake", NULL);
        if (r == NULL)
            failed = 1;
        Py_XDECREF(r);
    }
    if (atomic_fetch_sub(&h->busy, 1) == 1) {
        if (failed) {
            PyObject *type, *value, *tb;
            PyErr_Fetch(&type, &value, &tb);
            fipc_h_release(h);
            PyErr_Restore(type, value, tb);
        }
        else if (fipc_h_release(h) < 0)
            return NULL;
    }
    if (failed)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *h_enter_method(fipc_handle *h, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *h_leave_method(fipc_handle *h, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_leave(h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* _forget_calls(): in a child made by fork(), the calls counted busy are the parent's
 * threads', which the child does not have: forgotten, so that close() releases at once (and
 * releases now if the object was closed already), and their call buffers freed. */
static PyObject *h_forget_calls(fipc_handle *h, PyObject *Py_UNUSED(ignored))
{
    free_call_buffers(h);
    atomic_store(&h->busy, 1);
    if (fipc_h_leave(h) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *h_get_closed(fipc_handle *h, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(fipc_h_closed(h));
}

/* `_closed = False` opens a handle that was never opened (Handle._open_handle); `True` is
 * close() without waking or releasing: refused, as it would leak. */
static int h_set_closed(fipc_handle *h, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == Py_False) {
        int32_t unopened = FIPC_H_UNOPENED;
        if (atomic_compare_exchange_strong(&h->state, &unopened, FIPC_H_OPEN))
            return 0;
        if (atomic_load(&h->state) == FIPC_H_OPEN)
            return 0;
    }
    PyErr_SetString(PyExc_AttributeError, "_closed of a native handle changes only by close()");
    return -1;
}

static PyObject *h_get_busy(fipc_handle *h, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(atomic_load(&h->busy));
}

static void h_dealloc(PyObject *self)
{
    fipc_handle *h = (fipc_handle *)self;
    PyTypeObject *tp = Py_TYPE(self);
    /* dropped without close() (a failed __init__): release C's part, without Python */
    int32_t state = atomic_exchange(&h->state, FIPC_H_RELEASED);
    if (state != FIPC_H_RELEASED) {
        if (h->kind != NULL && h->kind->release != NULL)
            h->kind->release(h);
        release_buffers(h);
    }
    freefunc tp_free = (freefunc)PyType_GetSlot(tp, Py_tp_free);
    tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef h_methods[] = {
    FIPC_H_NOARGS("close", h_close,
                  "Close the object; calls blocked in other threads end with ValueError. "
                  "Idempotent."),
    FIPC_H_NOARGS("_enter", h_enter_method, "Count a call busy (ValueError if closed)."),
    FIPC_H_NOARGS("_leave", h_leave_method,
                  "End a call counted by _enter; releases if it was the last of a closed "
                  "object."),
    FIPC_H_NOARGS("_forget_calls", h_forget_calls,
                  "In a child made by fork(): count no call busy (the parent's threads' "
                  "calls are not the child's); releases now if the object is closed."),
    FIPC_H_END,
};

PyGetSetDef fipc_h_no_getset[] = {{NULL, NULL, NULL, NULL, NULL}};

static PyGetSetDef h_getset[] = {
    {"_closed", (getter)h_get_closed, (setter)h_set_closed, "Whether close() was called.", NULL},
    {"_busy", (getter)h_get_busy, NULL, "Calls of this handle running now.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot h_slots[] = {
    {Py_tp_doc, "The native handle: the closed flag and busy count of one fastipc object."},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_dealloc, h_dealloc},
    {Py_tp_methods, h_methods},
    {Py_tp_getset, h_getset},
    {0, NULL},
};

static PyType_Spec h_spec = {
    .name = "fastipc._fastipc.Handle",
    .basicsize = sizeof(fipc_handle),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .slots = h_slots,
};

/* ------------------------------------------------------------------------ arguments */

int fipc_h_timeout(PyObject *obj, double *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = -1.0;
        return 0;
    }
    if (PyFloat_CheckExact(obj)) {
        double t = PyFloat_AsDouble(obj);
        if (t >= 0 && t < INFINITY) { /* NaN fails both */
            *out = t;
            return 0;
        }
    }
    else if (PyLong_CheckExact(obj)) {
        double t = PyLong_AsDouble(obj);
        if (t >= 0 && t < INFINITY) {
            *out = t;
            return 0;
        }
        PyErr_Clear();
    }
    /* anything else: the Python rules and their messages */
    PyObject *r = PyObject_CallFunctionObjArgs(core_check_timeout, obj, NULL);
    if (r == NULL)
        return -1;
    *out = PyFloat_AsDouble(r);
    Py_DECREF(r);
    return (*out == -1.0 && PyErr_Occurred()) ? -1 : 0;
}

int fipc_h_args_kw(const char *func, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames, const char *const *names, int required, int positional,
                   PyObject **out)
{
    /* the messages are CPython's for a Python method with these parameters (self counted) */
    int n = 0;
    while (names[n] != NULL)
        out[n++] = NULL;
    if (positional < 0 || positional > n)
        positional = n;
    if (nargs > positional) {
        if (required == positional)
            PyErr_Format(PyExc_TypeError, "%s() takes %d positional arguments but %zd were "
                         "given", func, positional + 1, nargs + 1);
        else
            PyErr_Format(PyExc_TypeError, "%s() takes from %d to %d positional arguments but "
                         "%zd were given", func, required + 1, positional + 1, nargs + 1);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_Size(kwnames);
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GetItem(kwnames, k);
        int i = 0;
        while (i < n && PyUnicode_CompareWithASCIIString(key, names[i]) != 0)
            i++;
        if (i == n) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", func,
                         key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", func,
                         names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    for (int i = 0; i < required; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing 1 required positional argument: '%s'",
                         func, names[i]);
            return -1;
        }
    }
    return 0;
}

int fipc_h_buffer(PyObject *data, Py_buffer *view, int writable)
{
    if (PyUnicode_Check(data)) {
        PyErr_SetString(PyExc_TypeError,
                        "a bytes-like object is required, not 'str' (encode it first)");
        return -1;
    }
    if (PyObject_GetBuffer(data, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) == 0)
        return 0;
    /* the messages of fastipc._core.byte_view: not a buffer at all, or not a flat one */
    int not_a_buffer = PyErr_ExceptionMatches(PyExc_TypeError);
    if (not_a_buffer || PyErr_ExceptionMatches(PyExc_BufferError)) {
        PyErr_Clear();
        PyObject *name = PyType_GetName(Py_TYPE(data));
        if (name == NULL)
            return -1;
        if (writable)
            PyErr_Format(PyExc_TypeError, "a writable contiguous bytes-like object is "
                         "required, not %R", name);
        else if (not_a_buffer)
            PyErr_Format(PyExc_TypeError, "a bytes-like object is required, not %R", name);
        else
            PyErr_Format(PyExc_TypeError, "a contiguous bytes-like object is required, not %R",
                         name);
        Py_DECREF(name);
    }
    return -1;
}

/* ------------------------------------------------------------------------ waiting */

int64_t fipc_h_wait(fipc_handle *h, int64_t (*attempt)(void *ctx, double timeout), void *ctx,
                    double timeout, int64_t nowait)
{
    int64_t rc = attempt(ctx, 0.0); /* cannot wait: the GIL stays held */
    if (rc != nowait && rc != -EINTR)
        return rc;
    if (rc == nowait && timeout == 0.0)
        return rc;
    int64_t deadline = timeout < 0 ? -1 : fipc_deadline(timeout);
    for (;;) {
        if (rc == -EINTR && PyErr_CheckSignals() < 0)
            return FIPC_H_RAISED;
        if (fipc_h_closed(h)) {
            closed_error(h);
            return FIPC_H_RAISED;
        }
        double left = -1.0;
        if (deadline >= 0) {
            int64_t ns = deadline - fipc_now_ns();
            left = ns > 0 ? (double)ns / 1e9 : 0.0;
        }
        Py_BEGIN_ALLOW_THREADS
        rc = attempt(ctx, left);
        Py_END_ALLOW_THREADS
        if (rc != -EINTR)
            break;
    }
    if (rc < 0 && fipc_h_closed(h)) {
        closed_error(h);
        return FIPC_H_RAISED;
    }
    return rc;
}

PyObject *fipc_h_raise(fipc_handle *h, int64_t rc, double timeout)
{
    if (rc == FIPC_H_RAISED)
        return NULL;
    if (fipc_h_closed(h))
        return closed_error(h);
    long code = rc <= FIPC_EOF ? (long)rc : (long)-rc;
    PyObject *name = PyObject_GetAttrString((PyObject *)h, "_name");
    if (name == NULL) {
        PyErr_Clear();
        name = Py_None;
        Py_INCREF(name);
    }
    PyObject *pycode = PyLong_FromLong(code);
    PyObject *pytimeout = timeout < 0 ? (Py_INCREF(Py_None), Py_None) : PyFloat_FromDouble(timeout);
    if (pycode != NULL && pytimeout != NULL) {
        PyObject *r = PyObject_CallFunctionObjArgs(core_raise_errno, pycode, name, pytimeout, NULL);
        Py_XDECREF(r); /* raise_errno always raises */
    }
    Py_XDECREF(pycode);
    Py_XDECREF(pytimeout);
    Py_DECREF(name);
    return NULL;
}

/* ------------------------------------------------------------------------ install */

int fipc_h_add_type(PyObject *module, PyType_Spec *spec, PyObject **out)
{
    PyObject *type = PyType_FromSpecWithBases(spec, fipc_h_base);
    if (type == NULL)
        return -1;
    const char *dot = strrchr(spec->name, '.');
    if (PyObject_SetAttrString(module, dot ? dot + 1 : spec->name, type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    if (out != NULL)
        *out = type; /* the module's reference keeps it; this one is the caller's */
    else
        Py_DECREF(type);
    return 0;
}

static int install(void)
{
    if (fipc_h_base != NULL)
        return 0;
    PyObject *module = PyImport_ImportModule("fastipc._fastipc");
    PyObject *core = module ? PyImport_ImportModule("fastipc._core") : NULL;
    if (core == NULL)
        goto fail;
    core_raise_errno = PyObject_GetAttrString(core, "raise_errno");
    core_check_timeout = PyObject_GetAttrString(core, "check_timeout");
    if (core_raise_errno == NULL || core_check_timeout == NULL)
        goto fail;
    fipc_h_base = PyType_FromSpec(&h_spec);
    if (fipc_h_base == NULL || PyObject_SetAttrString(module, "Handle", fipc_h_base) < 0)
        goto fail;
#define FIPC_PY_INIT(m) \
    if (fipc_py_##m##_init != NULL && fipc_py_##m##_init(module) < 0) \
        goto fail;
    FIPC_PY_MECHANISMS(FIPC_PY_INIT)
#undef FIPC_PY_INIT
    Py_DECREF(core);
    Py_DECREF(module);
    return 0;
fail:
    Py_XDECREF(core);
    Py_XDECREF(module);
    Py_CLEAR(fipc_h_base);
    return -1;
}

int fipc_py_install(void)
{
    /* called through cffi, which released the GIL */
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = install();
    if (rc < 0)
        PyErr_Print();
    PyGILState_Release(gil);
    return rc;
}
