"""Semaphore operations backed by ``csrc/sem.c``: one C call per user operation."""

from __future__ import annotations

import errno
import time
from typing import Any

from fastipc._core import check, ffi, lib

__all__ = ["Sem", "unlink"]

_EINTR = -errno.EINTR
_monotonic = time.monotonic
_acquire = lib.fipc_sem_acquire
_release = lib.fipc_sem_release


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def unlink(name: str) -> None:
    check(lib.fipc_sem_unlink(name.encode()), name)


class Sem:
    __slots__ = ("name", "sem")

    def __init__(self, name: str, create: bool, mode: int, value: int) -> None:
        self.name = name
        out = ffi.new("void **")
        check(lib.fipc_sem_open(name.encode(), int(create), mode, value, out), name)
        self.sem: Any = out[0]

    def acquire(self, timeout: float) -> None:
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _acquire(self.sem, timeout)
        if rc:
            # EINTR: the signal handlers have run (a handler that raises ends the call);
            # retry with the time that is left (PEP 475)
            while rc == _EINTR:
                rc = _acquire(self.sem, _left(timeout, t0))
            check(rc, self.name, timeout)

    def release(self) -> None:
        rc = _release(self.sem)
        if rc:
            check(rc, self.name)

    def value(self) -> int:
        return check(lib.fipc_sem_value(self.sem), self.name)

    def close(self) -> None:
        sem, self.sem = self.sem, ffi.NULL
        check(lib.fipc_sem_close(sem), self.name)
