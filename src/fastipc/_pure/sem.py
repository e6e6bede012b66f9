"""Semaphore operations in Python, calling the C library's ``sem_*`` through ctypes, with
the behaviour of ``csrc/sem.c``.

Not posix_ipc: when a signal interrupts ``posix_ipc.Semaphore.acquire``, posix_ipc runs the
Python handlers but replaces an exception raised by a handler with its own SignalError, so
Ctrl-C could not stop a wait and PEP 475 could not be followed. ctypes releases the GIL
around each call as cffi does and returns EINTR to Python, where :func:`fastipc._core.retry`
runs the handlers (a handler that raises ends the wait) and waits again until the same
deadline.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import platform
import sys
import time
from typing import Any

from fastipc._aio import _SYS_FUTEX, _syscall
from fastipc._backend.sem import SemaphoreBackend
from fastipc._core import Deadline, raise_errno, retry

__all__ = ["Sem"]


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
_post = _libc.sem_post
_get_errno = ctypes.get_errno
_monotonic = time.monotonic
_CLOCK_MONOTONIC = time.CLOCK_MONOTONIC
_SLICE = 0.02  # seconds a wait sleeps before it looks at the closing flag again (as sem.c)
# glibc's sem_t on 64-bit little-endian machines: a 64-bit word, the value in its low half
# (the futex word), the number of waiters in its high half (see fipc_sem_waiters in sem.c).
# The waiters are counted with FUTEX_WAKE_OP, whose atomic add on a second word wakes
# nobody when asked to wake none: the atomic read-modify-write Python lacks.
_NEW_SEM = (platform.libc_ver()[0] == "glibc" and sys.maxsize > 2**32
            and sys.byteorder == "little")
_FUTEX_WAKE, _FUTEX_WAKE_OP = 1, 5
_FUTEX_OP_ADD = 1 << 28


def _fail(name: str) -> Any:
    raise_errno(_get_errno(), name)


def _sleep_until(sem: Any, until: float) -> int:
    """One sleep until the time.monotonic() time ``until``: 0 or -errno."""
    if _clockwait is not None:
        frac, whole = math.modf(until)
        rc = _clockwait(sem, _CLOCK_MONOTONIC, ctypes.byref(_Timespec(int(whole), int(frac * 1e9))))
    else:  # sem_timedwait: CLOCK_REALTIME, converted at the last moment
        frac, whole = math.modf(time.time() + max(0.0, until - _monotonic()))
        rc = _libc.sem_timedwait(sem, ctypes.byref(_Timespec(int(whole), int(frac * 1e9))))
    return -_get_errno() if rc else 0


class Sem:
    """An open ``sem_t *`` (through ctypes) and the flag that ends its waits."""

    __slots__ = ("closing", "name", "sem")

    def __init__(self, name: str, create: bool, mode: int, value: int) -> None:
        self.name = name
        flags = os.O_CREAT | os.O_EXCL if create else 0
        sem = _libc.sem_open(name.encode(), flags, mode, value)
        if not sem:
            _fail(name)
        self.sem: Any = sem
        self.closing = False

    def _attempt(self, timeout: float) -> int:
        """One wait of up to ``timeout`` seconds (C convention), in slices: 0, -ETIMEDOUT,
        -EINTR, -ECANCELED once closing, or -errno (the shape of fipc_sem_acquire)."""
        sem = self.sem
        if _trywait(sem) == 0:
            return 0
        err = _get_errno()
        if err != errno.EAGAIN:
            return -err
        deadline = Deadline(timeout)
        while not deadline.expired():
            if self.closing:
                return -errno.ECANCELED
            left = deadline.left()
            rc = _sleep_until(sem, _monotonic() + (_SLICE if left < 0 else min(left, _SLICE)))
            if rc != -errno.ETIMEDOUT:
                return rc
        return -errno.ETIMEDOUT

    def acquire(self, timeout: float) -> None:
        deadline = Deadline(timeout)
        retry(self._attempt(timeout), self._attempt, deadline, self.name)

    def release(self) -> None:
        if _post(self.sem) < 0:
            _fail(self.name)

    def value(self) -> int:
        v = ctypes.c_int()
        if _libc.sem_getvalue(self.sem, ctypes.byref(v)) < 0:
            _fail(self.name)
        return max(0, v.value)

    def try_acquire(self) -> bool:
        if _trywait(self.sem) == 0:
            return True
        err = _get_errno()
        if err != errno.EAGAIN:
            raise_errno(err, self.name)
        return False

    def waiters(self, delta: int) -> tuple[int, int]:
        if not _NEW_SEM:
            raise_errno(errno.ENOSYS, self.name)
        sem = int(self.sem)
        high = ctypes.c_void_p(sem + 4)  # the waiters: an atomic add the kernel makes for us
        if _syscall()(_SYS_FUTEX, high, _FUTEX_WAKE_OP, 0, None, high,
                      _FUTEX_OP_ADD | ((delta & 0xFFF) << 12)) < 0:
            _fail(self.name)
        return sem, ctypes.c_uint32.from_address(sem).value

    def pass_wake(self) -> None:
        if _NEW_SEM:
            data = ctypes.c_uint64.from_address(int(self.sem)).value
            if data & 0xFFFFFFFF and data >> 32:
                _syscall()(_SYS_FUTEX, ctypes.c_void_p(self.sem), _FUTEX_WAKE, 1, None, None, 0)

    def wake(self) -> None:
        self.closing = True

    def close(self) -> None:
        sem, self.sem = self.sem, None
        if _libc.sem_close(sem) < 0:
            _fail(self.name)

    @staticmethod
    def unlink(name: str) -> None:
        if _libc.sem_unlink(name.encode()) < 0:
            _fail(name)


_contract: type[SemaphoreBackend] = Sem
