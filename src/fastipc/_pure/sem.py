"""Semaphore operations in Python, calling the C library's ``sem_*`` through ctypes, with
the behaviour of ``csrc/sem.c``.

Not posix_ipc: when a signal interrupts ``posix_ipc.Semaphore.acquire``, posix_ipc runs the
Python handlers but replaces an exception raised by a handler with its own SignalError, so
Ctrl-C could not stop a wait and PEP 475 could not be followed. ctypes releases the GIL
around each call as cffi does, returns EINTR to Python, and the loop below runs the handlers
(a handler that raises ends the wait) and waits again until the same deadline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import time
from typing import Any

from fastipc._core import raise_errno

__all__ = ["Sem", "unlink"]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_sem_p = ctypes.c_void_p
_libc.sem_open.restype = _sem_p
_libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
for _fn in ("sem_close", "sem_trywait", "sem_wait", "sem_post"):
    getattr(_libc, _fn).restype = ctypes.c_int
    getattr(_libc, _fn).argtypes = [_sem_p]
_libc.sem_getvalue.restype = ctypes.c_int
_libc.sem_getvalue.argtypes = [_sem_p, ctypes.POINTER(ctypes.c_int)]
_libc.sem_unlink.restype = ctypes.c_int
_libc.sem_unlink.argtypes = [ctypes.c_char_p]
_libc.sem_timedwait.restype = ctypes.c_int
_libc.sem_timedwait.argtypes = [_sem_p, ctypes.POINTER(_Timespec)]
# sem_clockwait (glibc 2.30+) waits on CLOCK_MONOTONIC, which time.monotonic reads
try:
    _clockwait: Any = _libc.sem_clockwait
    _clockwait.restype = ctypes.c_int
    _clockwait.argtypes = [_sem_p, ctypes.c_int, ctypes.POINTER(_Timespec)]
except AttributeError:  # pragma: no cover - older C libraries
    _clockwait = None

_trywait = _libc.sem_trywait
_wait = _libc.sem_wait
_post = _libc.sem_post
_get_errno = ctypes.get_errno
_monotonic = time.monotonic
_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC


def _fail(name: str, timeout: float = -1.0) -> Any:
    raise_errno(_get_errno(), name, timeout)


def unlink(name: str) -> None:
    if _libc.sem_unlink(name.encode()) < 0:
        _fail(name)


def _abs_time(timeout: float, clock: float) -> _Timespec:
    frac, whole = math.modf(clock + timeout)
    return _Timespec(int(whole), int(frac * 1e9))


class Sem:
    __slots__ = ("name", "sem")

    def __init__(self, name: str, create: bool, mode: int, value: int) -> None:
        self.name = name
        flags = os.O_CREAT | os.O_EXCL if create else 0
        sem = _libc.sem_open(name.encode(), flags, mode, value)
        if not sem:
            _fail(name)
        self.sem: Any = sem

    def acquire(self, timeout: float) -> None:
        sem = self.sem
        if _trywait(sem) == 0:
            return
        err = _get_errno()
        if err != errno.EAGAIN:
            raise_errno(err, self.name)
        if timeout == 0:
            raise_errno(errno.ETIMEDOUT, self.name, timeout)
        ts = None
        if 0 < timeout <= 1e9:  # beyond ~31 years: forever
            if _clockwait is not None:
                ts = _abs_time(timeout, _monotonic())
            else:
                ts = _abs_time(timeout, time.time())
        while True:
            if ts is None:
                rc = _wait(sem)
            elif _clockwait is not None:
                rc = _clockwait(sem, _CLOCK_MONOTONIC, ctypes.byref(ts))
            else:
                rc = _libc.sem_timedwait(sem, ctypes.byref(ts))
            if rc == 0:
                return
            err = _get_errno()
            if err != errno.EINTR:
                raise_errno(err, self.name, timeout)
            # EINTR: the loop's next turn runs the signal handlers (a handler that raises
            # ends the wait); then wait again until the same deadline (PEP 475)

    def release(self) -> None:
        if _post(self.sem) < 0:
            _fail(self.name)

    def value(self) -> int:
        v = ctypes.c_int()
        if _libc.sem_getvalue(self.sem, ctypes.byref(v)) < 0:
            _fail(self.name)
        return max(0, v.value)

    def close(self) -> None:
        sem, self.sem = self.sem, None
        if _libc.sem_close(sem) < 0:
            _fail(self.name)
