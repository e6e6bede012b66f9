"""Semaphore operations through ``posix_ipc.Semaphore``, with the behaviour of
``csrc/sem.c``: posix_ipc's own exceptions become the builtin ``OSError`` subclasses."""

from __future__ import annotations

import errno
import os
import time

import posix_ipc

from fastipc._core import raise_errno
from fastipc._pure.mq import _reraise

__all__ = ["Sem", "unlink"]

_monotonic = time.monotonic
_Busy = posix_ipc.BusyError
_Signal = posix_ipc.SignalError


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def unlink(name: str) -> None:
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.Error as exc:
        _reraise(exc, name)


class Sem:
    __slots__ = ("name", "s")

    def __init__(self, name: str, create: bool, mode: int, value: int) -> None:
        self.name = name
        try:
            if create:
                self.s = posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode, value)
            else:
                self.s = posix_ipc.Semaphore(name)
        except (posix_ipc.Error, ValueError) as exc:
            _reraise(exc, name, errno.EEXIST if create else errno.ENOENT)
        except OSError as exc:
            raise OSError(exc.errno, os.strerror(exc.errno or 0), name) from None

    def acquire(self, timeout: float) -> None:
        s = self.s
        t0 = _monotonic() if timeout > 0 else 0.0
        wait = timeout
        while True:
            try:
                s.acquire(None if wait < 0 else wait)
                return
            except _Busy:
                raise_errno(errno.ETIMEDOUT, self.name, timeout)
            except _Signal:
                # posix_ipc saw EINTR: the handlers run here (one that raises ends the call);
                # retry with the time that is left (PEP 475)
                wait = _left(timeout, t0)

    def release(self) -> None:
        try:
            self.s.release()
        except OSError as exc:
            raise OSError(exc.errno, os.strerror(exc.errno or 0), self.name) from None

    def value(self) -> int:
        return int(self.s.value)

    def close(self) -> None:
        self.s.close()
