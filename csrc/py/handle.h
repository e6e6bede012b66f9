/* fastipc csrc/py/handle.h: the native handles, the per-message path of the native backend.
 *
 * Every object that moves messages (Semaphore, MessageQueue, pipe ends, shm Writer/Reader,
 * Publisher/Subscriber, Queue, clients) owns one handle: an instance of a type written
 * against CPython's limited C API (abi3), whose methods are the per-message operations. The
 * public class of the native backend subclasses it (fastipc._core.concrete), so that
 * `obj.send(data)` is one C method: no Python frame, nothing stored in the instance.
 *
 * These files are the only C of fastipc that includes Python.h. They are compiled into the
 * same extension module as the C core (csrc/<mechanism>.c), call its functions, and share its
 * process-wide state: nothing here exists twice. fipc_py_install() (called once by
 * fastipc._core) adds the types to fastipc._fastipc.
 *
 * What the handle owns, once for every mechanism (struct fipc_handle, handle.c):
 * - the closed flag and the busy count (C11 atomics: correct without the GIL);
 * - close(): marks the handle closed, wakes the calls blocked in C (the kind's wake) and the
 *   Python-level waiters (the object's _wake), and releases once no call is busy: C's part
 *   (the kind's release), then the object's _free. The last call to leave releases when close
 *   found calls busy, so no memory is freed while C may still touch it;
 * - the one wait loop (fipc_h_wait): the GIL is released only around a real wait, EINTR runs
 *   the signal handlers (a handler that raises ends the call) and waits again for the time
 *   left (PEP 475), a closed handle ends the wait with ValueError;
 * - fork: `_forget_calls()` (a method of the base) forgets, in a child made by fork(), the
 *   calls counted busy by the parent's threads, and frees their call buffers;
 * - the call buffers (fipc_h_buf_alloc): the heap memory a call holds while it waits, on a
 *   list of the handle, so that a fork() child, which has none of the threads that were in
 *   those calls, frees it (see "Call buffers" below).
 *
 * A method of a kind is shaped: fipc_h_begin (or fipc_h_enter), the kind's attempt through
 * fipc_h_wait, then fipc_h_end (a status), fipc_h_done (a result) or fipc_h_fail (an
 * exception). Its type is FIPC_H_SPEC over a method table of FIPC_H_FASTCALL/... entries.
 */
#ifndef FASTIPC_PY_HANDLE_H
#define FASTIPC_PY_HANDLE_H

#define Py_LIMITED_API 0x030B0000
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "../fastipc.h"

typedef struct fipc_handle fipc_handle;

/* What a mechanism tells the base: how to wake its C waits, and what to release. */
typedef struct fipc_handle_kind {
    /* Make the calls of this handle blocked in C return soon (any thread, GIL held; the
     * handle is closed already). NULL: nothing to do. */
    void (*wake)(fipc_handle *h);
    /* Release what C uses (GIL held, no call busy). Runs at most once; NULL: nothing. */
    void (*release)(fipc_handle *h);
} fipc_handle_kind;

enum {
    FIPC_H_UNOPENED = 0,  /* made, not yet opened: counts as closed */
    FIPC_H_OPEN = 1,
    FIPC_H_CLOSED = 2,    /* closed; released once no call is busy */
    FIPC_H_RELEASED = 3
};

/* The header in front of each call buffer (fipc_h_buf_alloc): its links in the handle's list,
 * its size and its thread; as aligned as malloc's memory, so the buffer after it is too. */
typedef struct fipc_h_buf {
    _Alignas(max_align_t) struct fipc_h_buf *prev;
    struct fipc_h_buf *next;
    size_t size;
    pthread_t thread;  /* the thread whose call holds it */
} fipc_h_buf;

struct fipc_handle {
    PyObject_HEAD
    _Atomic int32_t state;
    _Atomic int32_t busy;    /* calls of this handle running (in C, or awaiting in Python) */
    const fipc_handle_kind *kind;
    atomic_flag bufs_lock;   /* guards `bufs` (taken without the GIL) */
    fipc_h_buf *bufs;        /* the call buffers in use: a doubly linked list */
    fipc_h_buf *_Atomic spare; /* one buffer a call kept for the next (fipc_h_buf_keep) */
};

/* The per-message functions below marked `static inline` are defined at the end of this file:
 * a call's enter, parse and leave cost no function call on the path that does not fail. */

/* Enter a call: 0, or -1 with ValueError set if the handle is closed. */
static inline int fipc_h_enter(fipc_handle *h);
/* Leave a call; releases if the handle was closed meanwhile and this was the last call.
 * 0, or -1 with an exception set (a _free that raised), which the caller returns. */
static inline int fipc_h_leave(fipc_handle *h);
/* The rare ends of those two: refuse a call to a closed handle (its ValueError: -1), and
 * release a closed handle that its last call left (0, or -1 if the object's _free raised). */
int fipc_h_refuse(fipc_handle *h);
int fipc_h_release(fipc_handle *h);
/* The start of a method taking arguments: enter (ValueError if closed), parse them against
 * `names` into arg[] (fipc_h_args), and the timeout arg[t] (t < 0: none). 0, or -1 with the
 * call failed and left. */
static inline int fipc_h_begin(fipc_handle *h, const char *func, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                               int required, PyObject **arg, int t, double *timeout);
/* fipc_h_begin for parameters of which only the first `positional` may be given by position
 * (fipc_h_args_kw). */
static inline int fipc_h_begin_kw(fipc_handle *h, const char *func, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames,
                                  const char *const *names, int required, int positional,
                                  PyObject **arg, int t, double *timeout);
/* The end of a call that made `out` (a new reference, or NULL: the call failed): leave, and
 * return what the method returns. */
static inline PyObject *fipc_h_done(fipc_handle *h, PyObject *out);
/* Leave a call that failed with an exception set: if the handle was closed during the call,
 * the exception becomes the closed object's ValueError. Returns NULL. */
PyObject *fipc_h_fail(fipc_handle *h);
static inline int fipc_h_closed(fipc_handle *h)
{
    return atomic_load_explicit(&h->state, memory_order_acquire) != FIPC_H_OPEN;
}

/* A `timeout` argument in the C convention: None -> -1.0 (forever), else seconds >= 0
 * (inf -> -1.0). 0, or -1 with the TypeError/ValueError of fastipc._core.check_timeout. */
int fipc_h_timeout(PyObject *obj, double *out);

/* `data` as one contiguous buffer of bytes (writable: for receiving into it), no copy: 0, or
 * -1 with fastipc's TypeError for str and non-buffers. The caller releases it with
 * PyBuffer_Release (until then a bytearray cannot be resized: the GIL may be released). */
int fipc_h_buffer(PyObject *data, Py_buffer *view, int writable);

/* Parse a vectorcall argument list against `names` (NULL-terminated; the first `required`
 * are required): out[i] gets a borrowed reference, or NULL if not given. 0, or -1 with
 * TypeError set. */
static inline int fipc_h_args(const char *func, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, const char *const *names, int required,
                              PyObject **out);
/* fipc_h_args for a method whose parameters after the first `positional` are keyword-only
 * (`def f(self, data, timeout=None, *, block=True)`: positional 2); -1: none is. The
 * messages are CPython's for such a Python method. */
int fipc_h_args_kw(const char *func, PyObject *const *args, Py_ssize_t nargs,
                   PyObject *kwnames, const char *const *names, int required, int positional,
                   PyObject **out);

/* The one wait loop of every blocking call. `attempt(ctx, timeout)` is a C core call that
 * returns >= 0 when done or a -errno/FIPC status: it runs once with the GIL held and
 * timeout 0 (an attempt that cannot wait), then, while it says -EAGAIN/-ETIMEDOUT with time
 * left, with the GIL released and the time left. EINTR runs the signal handlers and tries
 * again. Returns the call's result (>= 0), or the status it ended with (< 0), or
 * FIPC_H_RAISED with an exception set (a signal handler raised, or the handle was closed:
 * ValueError). `nowait` is the status that means "would have to wait" (-EAGAIN, or
 * -ETIMEDOUT for calls that say so). The caller maps a status with fipc_h_raise. */
enum { FIPC_H_RAISED = -2000 };
int64_t fipc_h_wait(fipc_handle *h, int64_t (*attempt)(void *ctx, double timeout), void *ctx,
                    double timeout, int64_t nowait);

/* Raise what a C status means (fastipc._core.raise_errno: -errno or FIPC_*), naming the
 * object (its _name) and the timeout (seconds, < 0: none). A closed handle raises its
 * ValueError instead. Returns NULL. */
PyObject *fipc_h_raise(fipc_handle *h, int64_t rc, double timeout);

/* The end of a call whose C status is `rc`: rc < 0 raises what it means (fipc_h_raise, with
 * `timeout`) and fails the call (fipc_h_fail); else fipc_h_done(h, out). `out` is a new
 * reference, or NULL (rc < 0, or making it failed with an exception set). */
static inline PyObject *fipc_h_end(fipc_handle *h, int64_t rc, double timeout,
                                   PyObject *out);

/* If the exception being raised is a `type` (a class or a tuple of them), set its attribute
 * `attr` to `n` (how much of a call's work was done before it failed: messages_sent,
 * characters_written...). The exception stays the one raised. */
void fipc_h_note(PyObject *type, const char *attr, uint64_t n);

/* For a call that waits more than once (fipc_h_wait per step): the deadline of `timeout`
 * (< 0: none, -1; 0: 0, no clock read), and the time left of it in the C convention
 * (-1.0: forever, else seconds >= 0). */
static inline int64_t fipc_h_deadline(double timeout)
{
    return timeout > 0 ? fipc_deadline(timeout) : timeout < 0 ? -1 : 0;
}
static inline double fipc_h_left(int64_t deadline)
{
    if (deadline <= 0)
        return deadline < 0 ? -1.0 : 0.0;
    int64_t ns = deadline - fipc_now_ns();
    return ns > 0 ? (double)ns / 1e9 : 0.0;
}

/* For an attempt whose C call sleeps in steps and so may wait long without EINTR: its first
 * run (GIL held, fipc_h_wait's) never waits, and the later ones wait at most `slice`
 * seconds, then come back to fipc_h_wait as if a signal had interrupted them, so that a
 * signal that arrives between two sleeps has its Python handler run within `slice`, not at
 * the timeout. Zero it before the fipc_h_wait; in the attempt:
 *     timeout = fipc_h_slice(&c->sl, timeout, SLICE);
 *     return fipc_h_sliced(&c->sl, core_call(..., timeout, c->sl.first));
 * (first: the core call must not wait, not even for a busy lock; -EAGAIN: it would have). */
typedef struct fipc_h_slicer {
    int tried, first, sliced;
} fipc_h_slicer;
static inline double fipc_h_slice(fipc_h_slicer *s, double timeout, double slice)
{
    s->first = !s->tried;
    s->tried = 1;
    s->sliced = !s->first && (timeout < 0 || timeout > slice);
    return s->sliced ? slice : timeout;
}
static inline int64_t fipc_h_sliced(const fipc_h_slicer *s, int64_t rc)
{
    return (s->first && rc == -EAGAIN) || (s->sliced && rc == -ETIMEDOUT) ? -EINTR : rc;
}

/* ------------------------------------------------------------------------ call buffers */

/* Heap memory that a call holds while it may wait with the GIL released (a batch, a
 * receive's own buffer): allocate it with fipc_h_buf_alloc and give it back with
 * fipc_h_buf_free (or fipc_h_buf_keep), never with malloc/free. The handle lists the
 * buffers in use, so that in a child made by fork(), which has none of the parent's other
 * threads and so none of the calls they were in, `_forget_calls()` frees them (else each
 * would be lost: valgrind's "definitely lost" in every such child). The buffers of the
 * thread that forked stay (its call may be running Python code, the fork among it, and goes
 * on using them). What the handle owns for its whole life (freed by the kind's release) is
 * not a call buffer; nor is a Python object a call holds across a wait (the interpreter
 * loses those of the vanished threads' frames alike). Every buffer a blocking call mallocs
 * is one: mq receive's own buffer and Queue.get_many's and _put_batch's use them; shm
 * send_many's blob and the fan-out's batch are to.
 *
 * All three take any thread, with or without the GIL, and cost O(1): a short lock of the
 * handle around two pointer moves, and malloc/free themselves. A buffer is as aligned as
 * malloc's. Usage, in an attempt or around fipc_h_wait:
 *     char *out = fipc_h_buf_alloc(&self->h, n);   (NULL: no memory, no exception set)
 *     ... wait and fill it ...
 *     fipc_h_buf_free(&self->h, out);              (or fipc_h_buf_keep: reused next call)
 */
void *fipc_h_buf_alloc(fipc_handle *h, size_t n);
/* Free a buffer of fipc_h_buf_alloc of this handle (NULL: nothing). */
void fipc_h_buf_free(fipc_handle *h, void *p);
/* Done with a buffer of fipc_h_buf_alloc, and keep it as the handle's spare: the next
 * fipc_h_buf_alloc of its size (at most, and more than half) takes it instead of calling
 * malloc (one spare per handle: an older one is freed; the base frees the spare at
 * release). For a buffer a hot call needs each time (Queue.get_many's). NULL: nothing. */
void fipc_h_buf_keep(fipc_handle *h, void *p);

/* A lock held for a few pointer moves by any thread, with or without the GIL (so it never
 * waits in the kernel): it spins, and yields the CPU once its holder seems preempted. */
static inline void fipc_h_lock(atomic_flag *lock)
{
    for (unsigned spins = 0; atomic_flag_test_and_set_explicit(lock, memory_order_acquire);)
        if (++spins < 100)
            fipc_cpu_relax();
        else
            sched_yield();
}
static inline void fipc_h_unlock(atomic_flag *lock)
{
    atomic_flag_clear_explicit(lock, memory_order_release);
}

/* ------------------------------------------------------------------------ opening */

/* The start of a kind's `_open`: 0 if the handle was never opened, else -1 with
 * ValueError("the <what> handle is open already"). */
int fipc_h_unopened(fipc_handle *h, const char *what);

/* ------------------------------------------------------------------------ types */

/* The entries of a handle type's method table, one macro per calling convention (the cast
 * is the one CPython's method tables need), and its end. A public method's `doc` starts
 * with "name(args)\n--\n\n" so that inspect.signature reads it. */
#define FIPC_H_FASTCALL(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))(fn), METH_FASTCALL | METH_KEYWORDS, doc}
#define FIPC_H_NOARGS(name, fn, doc) {name, (PyCFunction)(void (*)(void))(fn), METH_NOARGS, doc}
#define FIPC_H_O(name, fn, doc) {name, (PyCFunction)(void (*)(void))(fn), METH_O, doc}
#define FIPC_H_VARARGS(name, fn, doc) \
    {name, (PyCFunction)(void (*)(void))(fn), METH_VARARGS, doc}
#define FIPC_H_END {NULL, NULL, 0, NULL}

/* A getset table with nothing in it, for types that have no properties. */
extern PyGetSetDef fipc_h_no_getset[];

/* Define `static PyType_Spec var`: the handle type fastipc._fastipc.<pyname> (a string
 * literal), whose struct is `type` (starting with fipc_handle), with its docstring, method
 * table and getset table (fipc_h_no_getset: none). fipc_h_add_type makes it. */
#define FIPC_H_SPEC(var, pyname, type, doc, methods, getset)                             \
    static PyType_Slot var##_slots[] = {                                                 \
        {Py_tp_doc, (void *)(doc)}, {Py_tp_methods, methods}, {Py_tp_getset, getset},    \
        {0, NULL}};                                                                      \
    static PyType_Spec var = {                                                           \
        .name = "fastipc._fastipc." pyname,                                              \
        .basicsize = sizeof(type),                                                       \
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,                               \
        .slots = var##_slots,                                                            \
    }

/* Make a type from a spec whose base is the handle type, and add it to fastipc._fastipc. */
int fipc_h_add_type(PyObject *module, PyType_Spec *spec, PyObject **out);

/* Define the one handle type of mechanism `m` (csrc/py/<m>.c) and its init: the method
 * table m##_methods, whose first entry is the type's `_open` (the function m##_open_method,
 * METH_VARARGS: opening is not per-message) and the others the entries given (FIPC_H_...),
 * the spec m##_spec (FIPC_H_SPEC: fastipc._fastipc.<pyname>, struct `type`, its docstring
 * and getset table), and fipc_py_<m>_init, which evaluates `setup` (an int: 0, or -1 with
 * an exception set; 0 if there is nothing to set up) and adds the type. */
#define FIPC_H_TYPE(m, pyname, type, doc, getset, setup, ...)                             \
    static PyMethodDef m##_methods[] = {                                                 \
        FIPC_H_VARARGS("_open", m##_open_method, NULL), __VA_ARGS__, FIPC_H_END};        \
    FIPC_H_SPEC(m##_spec, pyname, type, doc, m##_methods, getset);                       \
    int fipc_py_##m##_init(PyObject *module)                                             \
    {                                                                                    \
        return (setup) < 0 ? -1 : fipc_h_add_type(module, &m##_spec, NULL);              \
    }

/* The handle base type (fastipc._fastipc.Handle): close, _enter, _leave, _closed. Each
 * mechanism's type lists it as its base and puts FIPC_HANDLE_SLOTS... in its own slots. */
extern PyObject *fipc_h_base;

/* Each mechanism's init (csrc/py/<mechanism>.c): adds its types to `module`, 0 or -1.
 * Weak, so that fipc_py_install runs those that are compiled in. */
/* ------------------------------------------------------------------------ inline */

static inline int fipc_h_enter(fipc_handle *h)
{
    atomic_fetch_add(&h->busy, 1);
    if (atomic_load(&h->state) != FIPC_H_OPEN) {
        atomic_fetch_sub(&h->busy, 1);
        return fipc_h_refuse(h);
    }
    return 0;
}

static inline int fipc_h_leave(fipc_handle *h)
{
    /* close() sets the state before it looks at the count; we drop the count before we look
     * at the state: one of the two sees the other (both seq_cst). */
    if (atomic_fetch_sub(&h->busy, 1) == 1 && atomic_load(&h->state) == FIPC_H_CLOSED)
        return fipc_h_release(h);
    return 0;
}

/* The common call, its arguments by position only and as many as allowed: 0 with out[]
 * filled as fipc_h_args_kw fills it; else 1 (fipc_h_args_kw then parses them, or raises).
 * Inlined with the caller's static `names`, the loop is a few moves. */
static inline int fipc_h_args_fast(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                                   const char *const *names, int required, int positional,
                                   PyObject **out)
{
    if (kwnames != NULL || nargs < required)
        return 1;
    int n = 0;
    for (; names[n] != NULL; n++)
        out[n] = n < nargs ? args[n] : NULL;
    return nargs > (positional < 0 || positional > n ? n : positional);
}

static inline int fipc_h_args(const char *func, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames, const char *const *names, int required,
                              PyObject **out)
{
    if (fipc_h_args_fast(args, nargs, kwnames, names, required, -1, out) == 0)
        return 0;
    return fipc_h_args_kw(func, args, nargs, kwnames, names, required, -1, out);
}

static inline int fipc_h_begin_kw(fipc_handle *h, const char *func, PyObject *const *args,
                                  Py_ssize_t nargs, PyObject *kwnames,
                                  const char *const *names, int required, int positional,
                                  PyObject **arg, int t, double *timeout)
{
    if (fipc_h_enter(h) < 0)
        return -1;
    if ((fipc_h_args_fast(args, nargs, kwnames, names, required, positional, arg) != 0 &&
         fipc_h_args_kw(func, args, nargs, kwnames, names, required, positional, arg) < 0) ||
        (t >= 0 && (arg[t] == NULL || arg[t] == Py_None ? (*timeout = -1.0, 0)
                                                         : fipc_h_timeout(arg[t], timeout)) < 0)) {
        fipc_h_fail(h);
        return -1;
    }
    return 0;
}

static inline int fipc_h_begin(fipc_handle *h, const char *func, PyObject *const *args,
                               Py_ssize_t nargs, PyObject *kwnames, const char *const *names,
                               int required, PyObject **arg, int t, double *timeout)
{
    return fipc_h_begin_kw(h, func, args, nargs, kwnames, names, required, -1, arg, t, timeout);
}

static inline PyObject *fipc_h_done(fipc_handle *h, PyObject *out)
{
    if (out == NULL)
        return fipc_h_fail(h);
    if (fipc_h_leave(h) < 0) {
        Py_DECREF(out);
        return NULL;
    }
    return out;
}

static inline PyObject *fipc_h_end(fipc_handle *h, int64_t rc, double timeout, PyObject *out)
{
    if (rc < 0) {
        Py_XDECREF(out);
        fipc_h_raise(h, rc, timeout);
        return fipc_h_fail(h);
    }
    return fipc_h_done(h, out);
}

#define FIPC_PY_MECHANISMS(X) X(sem) X(mq) X(pipe) X(shm) X(pubsub) X(queue) X(client)
#define FIPC_PY_DECLARE(m) int fipc_py_##m##_init(PyObject *module) __attribute__((weak));
FIPC_PY_MECHANISMS(FIPC_PY_DECLARE)
#undef FIPC_PY_DECLARE

#endif
