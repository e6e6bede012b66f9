/* fastipc csrc/py/sem.c: the native handle of fastipc.sem.Semaphore (see handle.h). */
#include "handle.h"

#include <errno.h>

#include "../sem.h"

typedef struct {
    fipc_handle h;
    void *sem;    /* the sem_t * of fipc_sem_open */
    int closing;  /* set by close(): waits end with -ECANCELED within a slice */
} SemHandle;

static void sem_wake(fipc_handle *h)
{
    __atomic_store_n(&((SemHandle *)h)->closing, 1, __ATOMIC_RELEASE);
}

static void sem_release_c(fipc_handle *h)
{
    SemHandle *s = (SemHandle *)h;
    if (s->sem != NULL) {
        (void)fipc_sem_close(s->sem); /* sem_close fails only for an invalid handle */
        s->sem = NULL;
    }
}

static const fipc_handle_kind sem_kind = {sem_wake, sem_release_c};

/* _open(name: bytes, create: bool, mode: int, value: int): open the semaphore and the handle. */
static PyObject *sem_open_method(SemHandle *self, PyObject *args)
{
    const char *name;
    int create, mode;
    unsigned int value;
    if (!PyArg_ParseTuple(args, "ypiI:_open", &name, &create, &mode, &value))
        return NULL;
    if (fipc_h_unopened(&self->h, "semaphore") < 0)
        return NULL;
    void *sem = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = fipc_sem_open(name, create, mode, value, &sem);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        errno = -rc;
        return PyErr_SetFromErrnoWithFilename(PyExc_OSError, name);
    }
    self->sem = sem;
    self->h.kind = &sem_kind;
    Py_RETURN_NONE;
}

static int64_t acquire_attempt(void *ctx, double timeout)
{
    SemHandle *s = ctx;
    return fipc_sem_acquire(s->sem, timeout, &s->closing);
}

static const char *const acquire_names[] = {"timeout", NULL};

static PyObject *sem_acquire(SemHandle *self, PyObject *const *args, Py_ssize_t nargs,
                             PyObject *kwnames)
{
    PyObject *arg[1];
    double timeout;
    if (fipc_h_begin(&self->h, "Semaphore.acquire", args, nargs, kwnames, acquire_names, 0,
                     arg, 0, &timeout) < 0)
        return NULL;
    int64_t rc = fipc_h_wait(&self->h, acquire_attempt, self, timeout, -ETIMEDOUT);
    return fipc_h_end(&self->h, rc, timeout, rc < 0 ? NULL : Py_NewRef(Py_True));
}

static PyObject *sem_release_method(SemHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int rc = fipc_sem_release(self->sem);
    if (rc == -EOVERFLOW) /* _overflow raises the OSError */
        return fipc_h_done(&self->h, PyObject_CallMethod((PyObject *)self, "_overflow", NULL));
    return fipc_h_end(&self->h, rc, -1, rc < 0 ? NULL : Py_NewRef(Py_None));
}

static PyObject *sem_value(SemHandle *self, void *Py_UNUSED(closure))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int rc = fipc_sem_value(self->sem);
    return fipc_h_end(&self->h, rc, -1, rc < 0 ? NULL : PyLong_FromLong(rc));
}

/* _try(): decrement without waiting: True, or False while the value is 0 (for awaiting). */
static PyObject *sem_try(SemHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (fipc_h_enter(&self->h) < 0)
        return NULL;
    int rc = fipc_sem_try(self->sem);
    if (rc == -EAGAIN)
        return fipc_h_done(&self->h, Py_NewRef(Py_False));
    return fipc_h_end(&self->h, rc, -1, rc < 0 ? NULL : Py_NewRef(Py_True));
}

/* The await hooks below run inside acquire_async, which counts itself busy (_enter) for as
 * long as it awaits: the semaphore stays open until it leaves, closed or not, and a
 * coroutine woken by close() still counts itself out of the waiters. */
static int sem_usable(SemHandle *self)
{
    if (self->sem == NULL || atomic_load(&self->h.state) == FIPC_H_RELEASED) {
        PyErr_SetString(PyExc_ValueError, "I/O operation on closed Semaphore");
        return 0;
    }
    return 1;
}

/* _waiters(delta): (address of the futex word, value) - see fipc_sem_waiters. */
static PyObject *sem_waiters(SemHandle *self, PyObject *arg)
{
    long delta = PyLong_AsLong(arg);
    if ((delta == -1 && PyErr_Occurred()) || !sem_usable(self))
        return NULL;
    uint64_t word = 0;
    int64_t rc = fipc_sem_waiters(self->sem, (int32_t)delta, &word);
    if (rc < 0) {
        errno = (int)-rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(KL)", (unsigned long long)word, (long long)rc);
}

/* _pass_wake(): hand a wake-up an awaiting coroutine took and gave up to another waiter. */
static PyObject *sem_pass(SemHandle *self, PyObject *Py_UNUSED(ignored))
{
    if (!sem_usable(self))
        return NULL;
    fipc_sem_pass(self->sem);
    Py_RETURN_NONE;
}

static PyGetSetDef sem_getset[] = {
    {"value", (getter)sem_value, NULL,
     "The current value (a snapshot: other processes may change it at once).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

FIPC_H_TYPE(sem, "SemHandle", SemHandle, "The native handle of a POSIX named semaphore.",
            sem_getset, 0,
    FIPC_H_FASTCALL("acquire", sem_acquire,
                    "acquire(timeout=None)\n--\n\n"
                    "Decrement the value, waiting while it is 0: TimeoutError after "
                    "``timeout`` seconds (None: forever, 0: do not wait). Returns True (so "
                    "that code written for ``threading.Semaphore`` keeps working)."),
    FIPC_H_NOARGS("release", sem_release_method,
                  "release()\n--\n\n"
                  "Increment the value, waking one waiter. OSError(EOVERFLOW) past "
                  "SEM_VALUE_MAX."),
    FIPC_H_NOARGS("_try", sem_try, NULL),
    FIPC_H_O("_waiters", sem_waiters, NULL),
    FIPC_H_NOARGS("_pass_wake", sem_pass, NULL))
