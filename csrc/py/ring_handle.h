/* fastipc csrc/py/ring_handle.h: what the native handles of the two shared-memory rings
 * (csrc/py/shm.c: the channel's Writer and Reader; csrc/py/pubsub.c: the fan-out's
 * Publisher and Subscriber) write alike. Internal: static inline functions, so that each
 * file's hot paths stay as they were. */
#ifndef FASTIPC_PY_RING_HANDLE_H
#define FASTIPC_PY_RING_HANDLE_H

#include "handle.h"

#include <string.h>

/* The start of a ring end's _open: the handle never opened (fipc_h_unopened), and a writable
 * export of the mapping `mm` (an mmap.mmap) in *map, which the end holds until its release,
 * so that Python cannot unmap it under C. 0, or -1 with the exception set. */
static inline int fipc_ring_map(fipc_handle *h, const char *what, PyObject *mm, Py_buffer *map)
{
    if (fipc_h_unopened(h, what) < 0)
        return -1;
    return PyObject_GetBuffer(mm, map, PyBUF_WRITABLE);
}

/* recv_into's ValueError for a buffer of cap bytes and a message of n. Returns NULL. */
static inline PyObject *fipc_ring_too_small(uint64_t cap, uint64_t n)
{
    PyErr_Format(PyExc_ValueError, "buffer of %llu bytes is too small for the next message "
                 "(%llu bytes); it stays queued", (unsigned long long)cap,
                 (unsigned long long)n);
    return NULL;
}

/* The function `name` of the module `module` (fastipc._core...), looked up the first time
 * (*cache keeps it): for the rare paths whose errors the pure backend's Python words. A
 * borrowed reference, or NULL. */
static inline PyObject *fipc_ring_py(const char *module, const char *name, PyObject **cache)
{
    if (*cache == NULL) {
        PyObject *m = PyImport_ImportModule(module);
        *cache = m == NULL ? NULL : PyObject_GetAttrString(m, name);
        Py_XDECREF(m);
    }
    return *cache;
}

/* recv_many's max_messages (NULL: not given, 1024): an int within [1, 2**20]; anything else
 * gets the exception of fastipc._core.check_int, which says what is wrong. 0, or -1. */
static inline int fipc_ring_max_messages(PyObject *obj, long *out)
{
    static PyObject *check_int;
    *out = 1024;
    if (obj == NULL)
        return 0;
    if (PyLong_CheckExact(obj)) {
        long v = PyLong_AsLong(obj);
        if (v >= 1 && v <= (1L << 20)) {
            *out = v;
            return 0;
        }
        PyErr_Clear();
    }
    if (fipc_ring_py("fastipc._core", "check_int", &check_int) == NULL)
        return -1;
    PyObject *r = PyObject_CallFunction(check_int, "Osii", obj, "max_messages", 1, 1 << 20);
    if (r == NULL)
        return -1;
    *out = PyLong_AsLong(r);
    Py_DECREF(r);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

/* A batch's list of messages, starting with `first` (a reference it takes): the list, or
 * NULL with the exception set. */
static inline PyObject *fipc_ring_list(PyObject *first)
{
    PyObject *list = PyList_New(1);
    if (list == NULL)
        Py_DECREF(first);
    else
        PyList_SetItem(list, 0, first);
    return list;
}

/* x's buffer (PyObject_GetBuffer's `flags`), no copy: 0, or -1 with the TypeError that the
 * pure backend's rule (the function `rule` of `module`, cached in *cache) raises for it, or
 * `otherwise` if the rule takes it. */
static inline int fipc_ring_view_of(PyObject *x, Py_buffer *view, int flags, const char *module,
                                    const char *rule, PyObject **cache, const char *otherwise)
{
    if (!PyUnicode_Check(x) && PyObject_GetBuffer(x, view, flags) == 0)
        return 0;
    PyErr_Clear();
    if (fipc_ring_py(module, rule, cache) == NULL)
        return -1;
    PyObject *r = PyObject_CallFunctionObjArgs(*cache, x, NULL);
    if (r != NULL) {
        Py_DECREF(r);
        PyErr_SetString(PyExc_TypeError, otherwise);
    }
    return -1;
}

/* A message's buffer: the TypeError of _core.byte_view (the pure backends' message:
 * fipc_h_buffer words some cases differently). */
static inline int fipc_ring_buffer(PyObject *data, Py_buffer *view)
{
    static PyObject *byte_view;
    return fipc_ring_view_of(data, view, PyBUF_SIMPLE, "fastipc._core", "byte_view", &byte_view,
                             "a contiguous bytes-like object is required");
}

/* The messages of send_many: a list or tuple of bytes-like objects (anything else iterable
 * is made a list first), their buffers (no copy) and lengths, in one call buffer of the
 * handle `h` (the call may wait holding it). fipc_ring_batch_of: 0, or -1 with the pure
 * backends' TypeError; fipc_ring_batch_free releases them. */
typedef struct {
    fipc_handle *h;
    PyObject *seq;
    Py_buffer *views;
    uint64_t *lens;
    const char **bufs;
    Py_ssize_t n, got;
} fipc_ring_batch;

static inline void fipc_ring_batch_free(fipc_ring_batch *b)
{
    for (Py_ssize_t i = 0; i < b->got; i++)
        PyBuffer_Release(&b->views[i]);
    fipc_h_buf_free(b->h, b->views);
    Py_CLEAR(b->seq);
}

static inline int fipc_ring_batch_of(PyObject *messages, fipc_handle *h, fipc_ring_batch *b)
{
    memset(b, 0, sizeof *b);
    b->h = h;
    if (PyBytes_Check(messages) || PyByteArray_Check(messages) ||
        PyMemoryView_Check(messages) || PyUnicode_Check(messages)) {
        PyErr_SetString(PyExc_TypeError,
                        "send_many takes an iterable of messages, not one message");
        return -1;
    }
    if (PyList_CheckExact(messages) || PyTuple_CheckExact(messages)) {
        Py_INCREF(messages);
        b->seq = messages;
    }
    else if ((b->seq = PySequence_List(messages)) == NULL)
        return -1;
    b->n = PySequence_Size(b->seq);
    if (b->n < 0)
        goto fail;
    if (b->n == 0)
        return 0;
    size_t n = (size_t)b->n, each = sizeof *b->views + sizeof *b->lens + sizeof *b->bufs;
    if (n > SIZE_MAX / each) {
        PyErr_NoMemory();
        goto fail;
    }
    b->views = fipc_h_buf_alloc(h, n * each); /* views, then lens, then bufs: all aligned */
    if (b->views == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    b->lens = (uint64_t *)(b->views + n);
    b->bufs = (const char **)(b->lens + n);
    for (Py_ssize_t i = 0; i < b->n; i++) {
        PyObject *item = PySequence_GetItem(b->seq, i);
        if (item == NULL)
            goto fail;
        int rc = fipc_ring_buffer(item, &b->views[i]);
        Py_DECREF(item);
        if (rc < 0)
            goto fail;
        b->got = i + 1;
        b->bufs[i] = b->views[i].buf;
        b->lens[i] = (uint64_t)b->views[i].len;
    }
    return 0;
fail:
    fipc_ring_batch_free(b);
    return -1;
}

/* Say how many of a batch's messages went (`messages_sent`) on the exception being raised:
 * an OSError, or the ValueError of a message the ring refuses. */
static inline void fipc_ring_note_sent(uint64_t sent)
{
    fipc_h_note(PyExc_OSError, "messages_sent", sent);
    fipc_h_note(PyExc_ValueError, "messages_sent", sent);
}

/* The per-message methods of both rings take (x, timeout) or (timeout): a method is its
 * `body`, which gets the handle entered and the arguments (fipc_ring_args), and ends the call
 * (fipc_h_done/fipc_h_end/fipc_h_fail). `begin` enters the call and parses its arguments
 * against `names` (fipc_h_begin, or one whose messages are those of the pure backend's
 * method); the first `required` names are required, or, for FIPC_RING_MANY, x is
 * recv_many's max_messages (fipc_ring_max_messages, checked before the timeout, as the pure
 * backend does). `view`, if not NULL, makes x's buffer (held until the body has ended). */
enum { FIPC_RING_MANY = -1 };
typedef struct {
    PyObject *x;      /* the first argument, or NULL when not given */
    Py_buffer view;   /* its buffer (`view`) */
    long max;         /* recv_many's max_messages; 0 for the others */
    double timeout;   /* in the C convention */
} fipc_ring_args;
typedef int (*fipc_ring_begin)(fipc_handle *h, const char *func, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                               int required, PyObject **arg, int t, double *timeout);
typedef int (*fipc_ring_view)(PyObject *x, Py_buffer *view);
typedef PyObject *(*fipc_ring_body)(fipc_handle *h, fipc_ring_args *a);

/* The rest of a call (entered, a's arguments parsed): x's view, the body. Always inlined, as
 * fipc_ring_call: `view` and `body` are then direct calls, or inlined themselves. */
#define FIPC_RING_INLINE static inline __attribute__((always_inline))
FIPC_RING_INLINE PyObject *fipc_ring_run(fipc_handle *h, fipc_ring_args *a, fipc_ring_view view,
                                      fipc_ring_body body)
{
    if (view != NULL && view(a->x, &a->view) < 0)
        return fipc_h_fail(h);
    PyObject *out = body(h, a);
    if (view != NULL)
        PyBuffer_Release(&a->view);
    return out;
}

FIPC_RING_INLINE PyObject *fipc_ring_call(fipc_handle *h, const char *func, PyObject *const *args,
                                       Py_ssize_t nargs, PyObject *kwnames,
                                       const char *const *names, int required,
                                       fipc_ring_begin begin, fipc_ring_view view,
                                       fipc_ring_body body)
{
    PyObject *arg[2];
    fipc_ring_args a; /* (not zeroed: its view is made only for a body that has one) */
    a.max = 0;
    int t = names[1] == NULL ? 0 : 1; /* the timeout is the last parameter */
    int many = required == FIPC_RING_MANY;
    if (begin(h, func, args, nargs, kwnames, names, many ? 0 : required, arg, many ? -1 : t,
              &a.timeout) < 0)
        return NULL;
    if (many && (fipc_ring_max_messages(arg[0], &a.max) < 0 ||
                 fipc_h_timeout(arg[1], &a.timeout) < 0))
        return fipc_h_fail(h);
    a.x = t ? arg[0] : NULL;
    return fipc_ring_run(h, &a, view, body);
}

/* Define the method `fn` of handle type `type`, named `func`: fipc_ring_call. */
#define FIPC_RING_METHOD(fn, type, func, names, required, begin, view, body)                 \
    static PyObject *fn(type *self, PyObject *const *args, Py_ssize_t nargs,                \
                        PyObject *kwnames)                                                   \
    {                                                                                        \
        static const char *const names_[] = {FIPC_RING_UNPAREN names, NULL};               \
        return fipc_ring_call(&self->h, func, args, nargs, kwnames, names_, required, begin, \
                              view, body);                                                   \
    }
#define FIPC_RING_UNPAREN(...) __VA_ARGS__

/* Define the hook `fn` (METH_O: x) of handle type `type`, an attempt that cannot wait: the
 * body gets x (its view, if `view`) and the timeout 0. */
#define FIPC_RING_NOWAIT(fn, type, view, body)                                               \
    static PyObject *fn(type *self, PyObject *x)                                             \
    {                                                                                        \
        fipc_ring_args a = {.x = x, .timeout = 0.0};                                         \
        if (fipc_h_enter(&self->h) < 0)                                                      \
            return NULL;                                                                     \
        return fipc_ring_run(&self->h, &a, view, body);                                      \
    }

/* The entries of the per-message methods both rings have, in their types' method tables:
 * a writer's (send, send_many, and the awaitables' hook _send_nowait) and a reader's (recv,
 * recv_into, recv_many, and the hooks _recv_nowait and _recv_many_nowait), with one
 * docstring each; `waits` says what a full ring waits for, `writer` names the writing end. */
#define FIPC_RING_SEND_METHODS(send, send_many, send_nowait, waits)                          \
    FIPC_H_FASTCALL("send", send,                                                            \
                    "send(data, timeout=None)\n--\n\n"                                       \
                    "Send one message (any bytes-like object). Waits up to ``timeout`` "     \
                    "seconds for " waits " (TimeoutError; a message streamed in chunks "    \
                    "that was cut short is dropped by the receiving end, never delivered "  \
                    "in part)."),                                                            \
        FIPC_H_FASTCALL("send_many", send_many,                                              \
                        "send_many(messages, timeout=None)\n--\n\n"                          \
                        "Send several messages in one call. On an error after some went, "   \
                        "the exception's ``messages_sent`` says how many."),                 \
        FIPC_H_O("_send_nowait", send_nowait, NULL)
#define FIPC_RING_RECV_METHODS(recv, recv_into, recv_many, recv_nowait, recv_many_nowait,     \
                               writer)                                                       \
    FIPC_H_FASTCALL("recv", recv,                                                            \
                    "recv(timeout=None)\n--\n\n"                                             \
                    "The next message. EOFError once the " writer " has gone and all was "   \
                    "read."),                                                                \
        FIPC_H_FASTCALL("recv_into", recv_into,                                              \
                        "recv_into(buffer, timeout=None)\n--\n\n"                            \
                        "Copy the next message into ``buffer`` and return its length. "      \
                        "ValueError if it does not fit (the message stays queued)."),        \
        FIPC_H_FASTCALL("recv_many", recv_many,                                              \
                        "recv_many(max_messages=1024, timeout=None)\n--\n\n"                 \
                        "Up to ``max_messages`` messages in one call: waits up to "          \
                        "``timeout`` for the first, then takes what is queued without "      \
                        "waiting."),                                                         \
        FIPC_H_NOARGS("_recv_nowait", recv_nowait, NULL),                                    \
        FIPC_H_O("_recv_many_nowait", recv_many_nowait, NULL)

/* Add a ring's handle types to the module: its base (`base`, FIPC_H_SPEC: what both ends
 * have) and its writer's and reader's types, subtypes of it. 0, or -1. */
static inline int fipc_ring_add_types(PyObject *module, PyType_Spec *base, PyType_Spec *writer,
                                      PyType_Spec *reader)
{
    PyObject *type;
    if (fipc_h_add_type(module, base, &type) < 0)
        return -1;
    PyType_Spec *ends[] = {writer, reader};
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        PyObject *end = PyType_FromSpecWithBases(ends[i], type);
        rc = end == NULL ? -1
                         : PyModule_AddObjectRef(module, strrchr(ends[i]->name, '.') + 1, end);
        Py_XDECREF(end);
    }
    Py_DECREF(type);
    return rc;
}

#endif
