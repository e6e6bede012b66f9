/* fastipc csrc/py/queue.c: the native handle of fastipc.queue.Queue (see handle.h).
 *
 * put/get/put_bytes/get_bytes/get_many and put_many's batches are methods of this type: one
 * C call from the object (pickled with pickle.dumps/loads called from here) to the ring and
 * back. What is rare stays in Python and is called from here: objects with out-of-band
 * buffers, messages too large for the ring (their own segments), the messages a get took and
 * has not delivered (Queue._pending), the spill's files. Each call is one attempt that
 * cannot wait, with the GIL held (csrc/queue.c's try_only: not even a busy mutex), and only
 * if that attempt cannot finish, the blocking call with the GIL released (fipc_h_wait).
 *
 * Nothing is lost to an exception: a message taken from the ring is in C's hands until it
 * is returned, except while pickle.loads runs (which runs Python code, signal handlers
 * included): if that raises, the message is first kept in Queue._pending, then Queue._kept
 * decides (a signal handler's exception keeps it for the next get; the message's own
 * error consumes it). */
#include "handle.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../queue.h"

/* The frame kinds of fastipc/_backend/queue.py (KIND_*) */
enum { KIND_BYTES = 1, KIND_PICKLE = 2 };
#define DECODED (-1)     /* fastipc/queue.py _DECODED: a Queue._pending entry's decoded object */
#define STAGE 8192       /* a get's first buffer, on the stack; larger messages get their own */
#define BATCH_STACK 128  /* get_many's lengths and kinds on the stack up to this many */
#define MAX_BATCH (1 << 20)
/* A blocking attempt waits at most this long, then comes back to fipc_h_wait as if a signal
 * had interrupted it: a signal that arrives between two of the C core's sleeps (not during
 * one: no EINTR) has its Python handler run within this time, not at the timeout. */
#define WAIT_SLICE 0.05

typedef struct {
    fipc_handle h;
    fipc_queue *q;       /* the cffi-owned struct of the Ops object `owner` */
    PyObject *owner;     /* keeps *q and the mapping's export alive */
    PyObject *pending;   /* Queue._pending (a list) */
    uint64_t hot_max;    /* payloads up to this travel through the ring */
    uint64_t max_message;
    uint64_t out_size;   /* get_many's buffer (a call buffer the handle keeps as its spare) */
} QueueHandle;

/* Module-wide, set by the first _open (fastipc.queue is loaded by then). */
static PyObject *dumps, *loads, *in_band_kw, *protocol5, *buffered, *remember_buffered;
static PyObject *full_error, *empty_error;

static void queue_wake(fipc_handle *h)
{
    QueueHandle *s = (QueueHandle *)h;
    if (s->q != NULL)
        fipc_queue_close(s->q);
}

static void queue_release_c(fipc_handle *h)
{
    QueueHandle *s = (QueueHandle *)h;
    if (s->q != NULL) {
        fipc_queue_close(s->q);
        fipc_queue_release(s->q);
        s->q = NULL;
    }
    Py_CLEAR(s->owner);
    Py_CLEAR(s->pending);
}

static const fipc_handle_kind queue_kind = {queue_wake, queue_release_c};

static int setup_module(void)
{
    if (empty_error != NULL)
        return 0;
    PyObject *pickle = PyImport_ImportModule("pickle");
    PyObject *mod = pickle ? PyImport_ImportModule("fastipc.queue") : NULL;
    int rc = -1;
    if (mod == NULL)
        goto done;
    PyObject *cb = PyObject_GetAttrString(mod, "_in_band_only");
    in_band_kw = cb ? Py_BuildValue("{sO}", "buffer_callback", cb) : NULL;
    Py_XDECREF(cb);
    dumps = PyObject_GetAttrString(pickle, "dumps");
    loads = PyObject_GetAttrString(pickle, "loads");
    protocol5 = PyLong_FromLong(5);
    buffered = PyObject_GetAttrString(mod, "_buffered");
    remember_buffered = PyObject_GetAttrString(mod, "_remember_buffered");
    full_error = PyObject_GetAttrString(mod, "Full");
    empty_error = in_band_kw && dumps && loads && protocol5 && buffered && remember_buffered &&
                  full_error ? PyObject_GetAttrString(mod, "Empty") : NULL;
    rc = empty_error ? 0 : -1;
done:
    Py_XDECREF(pickle);
    Py_XDECREF(mod);
    return rc;
}

/* _open(owner, address, pending, hot_max, max_message, out_size) */
static PyObject *queue_open_method(QueueHandle *self, PyObject *args)
{
    PyObject *owner, *pending;
    unsigned long long address, hot_max, max_message, out_size;
    if (!PyArg_ParseTuple(args, "OKO!KKK:_open", &owner, &address, &PyList_Type, &pending,
                          &hot_max, &max_message, &out_size))
        return NULL;
    if (fipc_h_unopened(&self->h, "queue") < 0)
        return NULL;
    if (setup_module() < 0)
        return NULL;
    Py_INCREF(owner);
    Py_INCREF(pending);
    self->owner = owner;
    self->pending = pending;
    self->q = (fipc_queue *)(uintptr_t)address;
    self->hot_max = hot_max;
    self->max_message = max_message;
    self->out_size = out_size;
    self->h.kind = &queue_kind;
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------------ helpers */

/* `block` and `timeout` of a put/get: block false tries once, whatever timeout says. */
static int block_timeout(PyObject *block, PyObject *timeout, double *out)
{
    if (block != NULL && block != Py_True) {
        int b = PyObject_IsTrue(block);
        if (b < 0)
            return -1;
        if (!b) {
            *out = 0.0;
            return 0;
        }
    }
    return fipc_h_timeout(timeout, out);
}

/* The start of a put or get: enter, parse the arguments (`obj`/`data`/`held` required, the
 * first `positional` by position), and the block and timeout arg[b], arg[t] (t < 0: none).
 * 0, or -1 with the call failed. */
static int begin(QueueHandle *self, const char *func, const char *const *names, int positional,
                 PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject **arg,
                 int b, int t, double *timeout)
{
    if (fipc_h_begin_kw(&self->h, func, args, nargs, kwnames, names, 1, positional, arg, -1,
                        NULL) < 0)
        return -1;
    if (t >= 0 && block_timeout(arg[b], arg[t], timeout) < 0) {
        fipc_h_fail(&self->h);
        return -1;
    }
    return 0;
}

/* Raise queue.Full / queue.Empty (a timeout), or what the status means. Returns NULL. */
static PyObject *raise_status(QueueHandle *self, int64_t rc, double timeout, int put)
{
    if (rc == -ETIMEDOUT && !fipc_h_closed(&self->h)) {
        PyObject *cls = put ? full_error : empty_error;
        PyObject *exc = PyObject_CallFunction(cls, "is", ETIMEDOUT,
                                              put ? "the queue is full" : "the queue is empty");
        if (exc != NULL) {
            PyErr_SetObject(cls, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    return fipc_h_raise(&self->h, rc, timeout);
}

/* ------------------------------------------------------------------------ put */

typedef struct {
    QueueHandle *self;
    const char *data;
    const uint64_t *lens;
    uint64_t len, count, sent;
    uint32_t kind;
    fipc_h_slicer sl;
} put_ctx;

/* The first attempt (GIL held) never waits, the others wait a slice at most (fipc_h_slice). */
static int64_t put_attempt(void *arg, double timeout)
{
    put_ctx *c = arg;
    timeout = fipc_h_slice(&c->sl, timeout, WAIT_SLICE);
    int rc;
    if (c->lens == NULL) {
        rc = fipc_queue_put_h(c->self->q, c->data, c->len, c->kind, timeout, c->sl.first);
    } else {
        uint64_t sent = 0, off = 0;
        for (uint64_t i = 0; i < c->sent; i++)
            off += c->lens[i];
        rc = fipc_queue_put_many_h(c->self->q, c->data + off, c->lens + c->sent,
                                   c->count - c->sent, c->kind, timeout, c->sl.first, &sent);
        c->sent += sent;
    }
    return fipc_h_sliced(&c->sl, rc);
}

/* Put `len` bytes at `data` as one frame: 0, or -1 with an exception set. */
static int put_frame(QueueHandle *self, const char *data, uint64_t len, uint32_t kind,
                     double timeout)
{
    put_ctx c = {.self = self, .data = data, .len = len, .kind = kind};
    int64_t rc = fipc_h_wait(&self->h, put_attempt, &c, timeout, -ETIMEDOUT);
    if (rc < 0) {
        raise_status(self, rc, timeout, 1);
        return -1;
    }
    return 0;
}

static const char *const put_names[] = {"obj", "block", "timeout", NULL};

static PyObject *queue_put(QueueHandle *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    PyObject *arg[3];
    double timeout;
    if (begin(self, "Queue.put", put_names, 3, args, nargs, kwnames, arg, 1, 2, &timeout) < 0)
        return NULL;
    PyObject *obj = arg[0];
    if (PySet_Size(buffered) > 0) {
        int known = PySet_Contains(buffered, (PyObject *)Py_TYPE(obj));
        if (known < 0)
            return fipc_h_fail(&self->h);
        if (known)
            return fipc_h_done(&self->h, PyObject_CallMethod((PyObject *)self, "_put_encoded", "(Od)", obj, timeout));
    }
    PyObject *pargs = PyTuple_Pack(2, obj, protocol5);
    PyObject *data = pargs ? PyObject_Call(dumps, pargs, in_band_kw) : NULL;
    Py_XDECREF(pargs);
    if (data == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            return fipc_h_fail(&self->h);
        /* out-of-band buffers or a memoryview (or not picklable): the full path */
        PyErr_Clear();
        PyObject *r = PyObject_CallFunctionObjArgs(remember_buffered,
                                                   (PyObject *)Py_TYPE(obj), NULL);
        if (r == NULL)
            return fipc_h_fail(&self->h);
        Py_DECREF(r);
        return fipc_h_done(&self->h, PyObject_CallMethod((PyObject *)self, "_put_encoded", "(Od)", obj, timeout));
    }
    char *buf;
    Py_ssize_t n;
    if (PyBytes_AsStringAndSize(data, &buf, &n) < 0) {
        Py_DECREF(data);
        return fipc_h_fail(&self->h);
    }
    PyObject *r;
    if ((uint64_t)n <= self->hot_max) {
        r = put_frame(self, buf, (uint64_t)n, KIND_PICKLE, timeout) < 0 ? NULL
                                                                        : Py_NewRef(Py_None);
    } else {
        r = PyObject_CallMethod((PyObject *)self, "_put_pickled", "(Od)", data, timeout);
    }
    Py_DECREF(data);
    return fipc_h_done(&self->h, r);
}

static const char *const put_bytes_names[] = {"data", "timeout", "block", NULL};

static PyObject *queue_put_bytes(QueueHandle *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    PyObject *arg[3];
    double timeout;
    if (begin(self, "Queue.put_bytes", put_bytes_names, 2, args, nargs, kwnames, arg, 2, 1,
              &timeout) < 0)
        return NULL;
    Py_buffer view;
    if (fipc_h_buffer(arg[0], &view, 0) < 0)
        return fipc_h_fail(&self->h);
    PyObject *r;
    if ((uint64_t)view.len <= self->hot_max) {
        r = put_frame(self, view.buf, (uint64_t)view.len, KIND_BYTES, timeout) < 0
                ? NULL : Py_NewRef(Py_None);
        PyBuffer_Release(&view);
    } else {
        PyBuffer_Release(&view);
        r = PyObject_CallMethod((PyObject *)self, "_put_bytes_large", "(Od)", arg[0], timeout);
    }
    return fipc_h_done(&self->h, r);
}

/* _put_batch(batch: list[bytes], timeout) -> how many went (all, or queue.Full with
 * messages_sent): pickles of put_many, each within the ring's hot size. */
static PyObject *queue_put_batch(QueueHandle *self, PyObject *args)
{
    PyObject *batch;
    double timeout;
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    if (!PyArg_ParseTuple(args, "O!d:_put_batch", &PyList_Type, &batch, &timeout))
        return fipc_h_fail(&self->h);
    Py_ssize_t count = PyList_Size(batch);
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *b = PyList_GetItem(batch, i);
        if (b == NULL || !PyBytes_Check(b)) {
            PyErr_SetString(PyExc_TypeError, "_put_batch takes a list of bytes");
            return fipc_h_fail(&self->h);
        }
        total += (uint64_t)PyBytes_Size(b);
    }
    if (count == 0)
        return fipc_h_done(&self->h, PyLong_FromLong(0));
    /* one call buffer: the lengths, then the pickles one after the other */
    uint64_t *lens = fipc_h_buf_alloc(&self->h, sizeof *lens * (size_t)count + total);
    if (lens == NULL) {
        PyErr_NoMemory();
        return fipc_h_fail(&self->h);
    }
    char *blob = (char *)(lens + count);
    uint64_t off = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *b = PyList_GetItem(batch, i);
        lens[i] = (uint64_t)PyBytes_Size(b);
        memcpy(blob + off, PyBytes_AsString(b), lens[i]);
        off += lens[i];
    }
    put_ctx c = {.self = self, .data = blob, .lens = lens, .count = (uint64_t)count,
                 .kind = KIND_PICKLE};
    int64_t rc = fipc_h_wait(&self->h, put_attempt, &c, timeout, -ETIMEDOUT);
    fipc_h_buf_free(&self->h, lens);
    if (rc < 0) {
        raise_status(self, rc, timeout, 1);
        if (rc == -ETIMEDOUT) { /* the contract's name, and the older one the queues keep */
            fipc_h_note(full_error, "messages_sent", c.sent);
            fipc_h_note(full_error, "messages_put", c.sent);
        }
        return fipc_h_fail(&self->h);
    }
    return fipc_h_done(&self->h, PyLong_FromUnsignedLongLong(c.sent));
}

/* ------------------------------------------------------------------------ get */

/* `held` (a list of one item) of a get: what it delivers is stored there too, before the call
 * returns (see Queue.get). */
static int check_held(PyObject *held)
{
    if (!PyList_Check(held) || PyList_Size(held) != 1) {
        PyErr_SetString(PyExc_TypeError, "held must be a list of one item");
        return -1;
    }
    return 0;
}

static PyObject *hold(PyObject *held, PyObject *result)
{
    if (result != NULL) {
        Py_INCREF(result);
        PyList_SetItem(held, 0, result); /* steals; the old item is freed */
    }
    return result;
}

typedef struct {
    QueueHandle *self;
    char *dest;
    uint64_t cap, max;
    uint64_t *lens;
    uint32_t *kinds;
    fipc_h_slicer sl;
} get_ctx;

static int64_t get_attempt(void *arg, double timeout)
{
    get_ctx *c = arg;
    timeout = fipc_h_slice(&c->sl, timeout, WAIT_SLICE);
    return fipc_h_sliced(&c->sl, fipc_queue_get_many_h(c->self->q, c->dest, c->cap, c->lens,
                                                       c->kinds, c->max, timeout, c->sl.first));
}

/* A message taken failed to decode (the exception set) and is kept in _pending as `entry`:
 * Queue._kept decides (it removes it if the error is the message's own). The exception
 * stays set, unless another one was raised into _kept (the message then stays kept). */
static void decide_failed(QueueHandle *self, PyObject *entry)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL)
        PyException_SetTraceback(value, tb);
    PyObject *r = PyObject_CallMethod((PyObject *)self, "_kept", "(OO)", value ? value : Py_None, entry);
    if (r == NULL) {
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(tb);
        return;
    }
    Py_DECREF(r);
    PyErr_Restore(type, value, tb);
}

/* Keep `entry` in _pending (first: no Python code runs before it is there), then decide. */
static void keep_failed(QueueHandle *self, PyObject *entry)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    int rc = PyList_Append(self->pending, entry);
    if (rc < 0) {
        PyErr_Clear();
    }
    PyErr_Restore(type, value, tb);
    if (rc == 0)
        decide_failed(self, entry);
}

/* Deliver from _pending (Python decodes what is not a plain pickle or bytes): the first
 * message, or NULL with an exception; *none set when _pending had nothing to deliver. */
static PyObject *from_pending(QueueHandle *self, Py_ssize_t max, int as_bytes, int one,
                              int *none)
{
    PyObject *got = PyObject_CallMethod((PyObject *)self, "_many_from_pending", "(nO)", max,
                                as_bytes ? Py_True : Py_False);
    if (got == NULL || !one)
        return got;
    if (PyList_Size(got) == 0) {
        Py_DECREF(got);
        *none = 1;
        return NULL;
    }
    PyObject *first = PyList_GetItem(got, 0);
    Py_XINCREF(first);
    Py_DECREF(got);
    return first;
}

/* A payload of `kind` as Python delivers it: bytes for bytes and pickles, else a bytearray
 * (out-of-band buffers unpickle as writable views of it). */
static PyObject *payload(const char *buf, uint64_t len, uint32_t kind)
{
    if (kind == KIND_BYTES || kind == KIND_PICKLE)
        return PyBytes_FromStringAndSize(buf, (Py_ssize_t)len);
    return PyByteArray_FromStringAndSize(buf, (Py_ssize_t)len);
}

/* The object of one message taken: loads/bytes here, else through _pending. */
static PyObject *deliver(QueueHandle *self, PyObject *data, uint32_t kind, int as_bytes)
{
    if (kind == KIND_BYTES) {
        Py_INCREF(data);
        return data;
    }
    if (kind == KIND_PICKLE && !as_bytes) {
        PyObject *obj = PyObject_CallFunctionObjArgs(loads, data, NULL);
        if (obj == NULL) {
            PyObject *entry = Py_BuildValue("(OI)", data, kind);
            if (entry != NULL) {
                keep_failed(self, entry);
                Py_DECREF(entry);
            }
        }
        return obj;
    }
    PyObject *entry = Py_BuildValue("(OI)", data, kind);
    if (entry == NULL || PyList_Append(self->pending, entry) < 0) {
        Py_XDECREF(entry);
        return NULL;
    }
    Py_DECREF(entry);
    int none = 0;
    PyObject *obj = from_pending(self, 1, as_bytes, 1, &none);
    if (none)
        PyErr_SetString(PyExc_RuntimeError, "a message taken was not kept");
    return obj;
}

/* Take one message and deliver it (the call is entered). */
static PyObject *get_one(QueueHandle *self, double timeout, int as_bytes)
{
    if (PyList_Size(self->pending) > 0) {
        int none = 0;
        PyObject *obj = from_pending(self, 1, as_bytes, 1, &none);
        if (!none)
            return obj;
    }
    char stage[STAGE];
    uint64_t len = 0;
    uint32_t kind = 0;
    get_ctx c = {.self = self, .dest = stage, .cap = STAGE, .max = 1, .lens = &len,
                 .kinds = &kind};
    int64_t deadline = fipc_h_deadline(timeout);
    PyObject *big = NULL; /* a message larger than the stage: its own buffer */
    for (;;) {
        double left = fipc_h_left(deadline);
        c.sl.tried = 0;
        int64_t rc = fipc_h_wait(&self->h, get_attempt, &c, left, -ETIMEDOUT);
        if (rc == FIPC_NEED) {
            /* it stays queued; its length (from the shared struct: checked again below) */
            uint64_t need = self->q->last_len;
            uint32_t need_kind = self->q->last_kind;
            Py_XDECREF(big);
            big = need_kind == KIND_BYTES || need_kind == KIND_PICKLE
                      ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)need)
                      : PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)need);
            if (big == NULL)
                return NULL;
            c.dest = PyBytes_Check(big) ? PyBytes_AsString(big) : PyByteArray_AsString(big);
            c.cap = need;
            continue;
        }
        if (rc < 0) {
            Py_XDECREF(big);
            return raise_status(self, rc, left, 0);
        }
        break;
    }
    PyObject *data;
    if (big == NULL) {
        data = payload(stage, len, kind);
    } else if (len == c.cap && (PyBytes_Check(big) == (kind == KIND_BYTES ||
                                                        kind == KIND_PICKLE))) {
        data = big; /* the message it was made for */
        big = NULL;
    } else { /* another consumer took that one: this one is in it, smaller */
        data = payload(c.dest, len, kind);
    }
    Py_XDECREF(big);
    if (data == NULL)
        return NULL;
    PyObject *obj = deliver(self, data, kind, as_bytes);
    Py_DECREF(data);
    return obj;
}

/* _get(held, block=True, timeout=None) or _get_bytes(held, timeout=None, block=True):
 * `names` in the order of the parameters, `positional` of them by position. */
static PyObject *get_call(QueueHandle *self, const char *func, const char *const *names,
                          Py_ssize_t positional, int as_bytes, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *arg[3];
    double timeout;
    if (begin(self, func, names, positional, args, nargs, kwnames, arg, as_bytes ? 2 : 1,
              as_bytes ? 1 : 2, &timeout) < 0)
        return NULL;
    if (check_held(arg[0]) < 0)
        return fipc_h_fail(&self->h);
    return fipc_h_done(&self->h, hold(arg[0], get_one(self, timeout, as_bytes)));
}

static const char *const get_names[] = {"held", "block", "timeout", NULL};

static PyObject *queue_get(QueueHandle *self, PyObject *const *args, Py_ssize_t nargs,
                           PyObject *kwnames)
{
    return get_call(self, "Queue._get", get_names, 3, 0, args, nargs, kwnames);
}

static const char *const get_bytes_names[] = {"held", "timeout", "block", NULL};

static PyObject *queue_get_bytes(QueueHandle *self, PyObject *const *args, Py_ssize_t nargs,
                                 PyObject *kwnames)
{
    return get_call(self, "Queue._get_bytes", get_bytes_names, 3, 1, args, nargs, kwnames);
}

/* The messages of a batch from `from` on, kept in _pending in order: those decoded as
 * (obj, DECODED), the others as (payload, kind). */
static int keep_batch(QueueHandle *self, PyObject *result, const char *buf,
                      const uint64_t *lens, const uint32_t *kinds, uint64_t from, uint64_t n,
                      uint64_t pos, PyObject **failed_entry)
{
    Py_ssize_t decoded = PyList_Size(result);
    for (Py_ssize_t i = 0; i < decoded; i++) {
        PyObject *e = Py_BuildValue("(Oi)", PyList_GetItem(result, i), DECODED);
        if (e == NULL || PyList_Append(self->pending, e) < 0) {
            Py_XDECREF(e);
            return -1;
        }
        Py_DECREF(e);
    }
    for (uint64_t i = from; i < n; i++) {
        PyObject *data = payload(buf + pos, lens[i], kinds[i]);
        PyObject *e = data ? Py_BuildValue("(OI)", data, kinds[i]) : NULL;
        Py_XDECREF(data);
        if (e == NULL || PyList_Append(self->pending, e) < 0) {
            Py_XDECREF(e);
            return -1;
        }
        if (i == from && failed_entry != NULL)
            *failed_entry = e; /* borrowed: _pending holds it */
        Py_DECREF(e);
        pos += lens[i];
    }
    return 0;
}

static const char *const get_many_names[] = {"held", "max_messages", "timeout", "block", NULL};

static PyObject *get_many_held(QueueHandle *self, PyObject *const *arg);

static PyObject *queue_get_many(QueueHandle *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames)
{
    PyObject *arg[4];
    if (begin(self, "Queue._get_many", get_many_names, 4, args, nargs, kwnames, arg, -1, -1,
              NULL) < 0)
        return NULL;
    if (check_held(arg[0]) < 0)
        return fipc_h_fail(&self->h);
    return fipc_h_done(&self->h, hold(arg[0], get_many_held(self, arg + 1)));
}

/* get_many's work (entered): arg is max_messages, timeout, block. */
static PyObject *get_many_held(QueueHandle *self, PyObject *const *arg)
{
    double timeout;
    long max = 1024;
    if (arg[0] != NULL) {
        max = PyLong_CheckExact(arg[0]) ? PyLong_AsLong(arg[0]) : -1;
        if (max < 1 || max > MAX_BATCH) { /* the Python rules and their messages */
            PyErr_Clear();
            PyObject *r = PyObject_CallMethod((PyObject *)self, "_check_max_messages", "(O)", arg[0]);
            max = r == NULL ? -1 : PyLong_AsLong(r);
            Py_XDECREF(r);
            if (max < 1 || max > MAX_BATCH) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_ValueError, "max_messages is out of range");
                return NULL;
            }
        }
    }
    if (block_timeout(arg[2], arg[1], &timeout) < 0)
        return NULL;
    if (PyList_Size(self->pending) > 0) {
        PyObject *got = from_pending(self, max, 0, 0, NULL);
        if (got == NULL || PyList_Size(got) > 0)
            return got;
        Py_DECREF(got);
    }
    uint64_t lens_s[BATCH_STACK];
    uint32_t kinds_s[BATCH_STACK];
    uint64_t *lens = lens_s;
    uint32_t *kinds = kinds_s;
    /* call buffers: the messages (the handle's spare, kept for the next call), and the
     * lengths then the kinds of more than fit on the stack */
    char *out = fipc_h_buf_alloc(&self->h, self->out_size);
    if (max > BATCH_STACK) {
        lens = fipc_h_buf_alloc(&self->h, (sizeof *lens + sizeof *kinds) * (size_t)max);
        kinds = lens == NULL ? NULL : (uint32_t *)(lens + max);
    }
    PyObject *result = NULL;
    if (out == NULL || lens == NULL || kinds == NULL) {
        PyErr_NoMemory();
        goto end;
    }
    get_ctx c = {.self = self, .dest = out, .cap = self->out_size, .max = (uint64_t)max,
                 .lens = lens, .kinds = kinds};
    int64_t deadline = fipc_h_deadline(timeout);
    int64_t n = fipc_h_wait(&self->h, get_attempt, &c, timeout, -ETIMEDOUT);
    if (n == FIPC_NEED) { /* the first message is large: take it alone */
        PyObject *obj = get_one(self, fipc_h_left(deadline), 0);
        result = obj ? PyList_New(1) : NULL;
        if (result != NULL)
            PyList_SetItem(result, 0, obj);
        else
            Py_XDECREF(obj);
        goto end;
    }
    if (n < 0) {
        raise_status(self, n, timeout, 0);
        goto end;
    }
    result = PyList_New(0);
    uint64_t pos = 0;
    for (int64_t i = 0; result != NULL && i < n; pos += lens[i], i++) {
        uint32_t kind = kinds[i];
        if (kind != KIND_PICKLE && kind != KIND_BYTES) {
            /* a large message or out-of-band buffers: the rest delivered through _pending */
            if (keep_batch(self, result, out, lens, kinds, (uint64_t)i, (uint64_t)n, pos,
                           NULL) < 0) {
                Py_CLEAR(result);
                break;
            }
            Py_DECREF(result);
            result = from_pending(self, max, 0, 0, NULL);
            break;
        }
        PyObject *obj = PyBytes_FromStringAndSize(out + pos, (Py_ssize_t)lens[i]);
        if (obj != NULL && kind == KIND_PICKLE) {
            PyObject *data = obj;
            obj = PyObject_CallFunctionObjArgs(loads, data, NULL);
            Py_DECREF(data);
        }
        if (obj == NULL || PyList_Append(result, obj) < 0) {
            /* what is not delivered stays, in order; a message's own error consumes it */
            PyObject *type, *value, *tb, *failed = NULL;
            int own = obj == NULL && kind == KIND_PICKLE;
            Py_XDECREF(obj);
            PyErr_Fetch(&type, &value, &tb);
            int kept = keep_batch(self, result, out, lens, kinds, (uint64_t)i, (uint64_t)n,
                                  pos, &failed);
            PyErr_Restore(type, value, tb);
            if (kept == 0 && own && failed != NULL)
                decide_failed(self, failed);
            Py_CLEAR(result);
            break;
        }
        Py_DECREF(obj);
    }
end:
    if (lens != lens_s)
        fipc_h_buf_free(&self->h, lens);
    fipc_h_buf_keep(&self->h, out);
    return result;
}

FIPC_H_TYPE(queue, "QueueHandle", QueueHandle, "The native handle of a fastipc Queue.",
            fipc_h_no_getset, 0,
    FIPC_H_FASTCALL("put", queue_put,
                    "put($self, obj, block=True, timeout=None)\n--\n\n"
                    "Put ``obj`` (pickled, protocol 5, buffers out of band). ``queue.Full`` "
                    "(also a TimeoutError) if the queue stays full until the timeout "
                    "(``block=False``: at once). An object that cannot be pickled raises here "
                    "and leaves the queue as it was."),
    FIPC_H_FASTCALL("put_bytes", queue_put_bytes,
                    "put_bytes($self, data, timeout=None, *, block=True)\n--\n\n"
                    "Put raw bytes (any contiguous bytes-like object), no pickling; "
                    "``get_bytes`` (or ``get``) returns them as ``bytes``. ``block=False``: try "
                    "once (timeout ignored)."),
    FIPC_H_VARARGS("_put_batch", queue_put_batch, NULL),
    FIPC_H_FASTCALL("_get", queue_get,
                    "_get($self, held, block=True, timeout=None)\n--\n\n"
                    "The taking call of get (see Queue.get): the object, also stored in "
                    "held[0]."),
    FIPC_H_FASTCALL("_get_bytes", queue_get_bytes,
                    "_get_bytes($self, held, timeout=None, block=True)\n--\n\n"
                    "The taking call of get_bytes: the bytes, also stored in held[0]."),
    FIPC_H_FASTCALL("_get_many", queue_get_many,
                    "_get_many($self, held, max_messages=1024, timeout=None, "
                    "block=True)\n--\n\n"
                    "The taking call of get_many: the list, also stored in held[0]."))
