"""Semaphore operations backed by ``csrc/sem.c``: one C call per user operation, the slow
path (EINTR, errors) in :func:`fastipc._core.retry`."""

from __future__ import annotations

import errno
import time
from typing import Any, Optional

from fastipc._backend.sem import SemaphoreBackend
from fastipc._core import Deadline, check, ffi, lib, retry

__all__ = ["Sem"]

_acquire = lib.fipc_sem_acquire
_release = lib.fipc_sem_release
_monotonic = time.monotonic


class Sem:
    """An open ``sem_t *`` and the flag that ends its waits (read by C between slices)."""

    __slots__ = ("_closing", "name", "sem")

    def __init__(self, name: str, create: bool, mode: int, value: int) -> None:
        self.name = name
        out = ffi.new("void **")
        check(lib.fipc_sem_open(name.encode(), int(create), mode, value, out), name)
        self.sem: Any = out[0]
        self._closing = ffi.new("int *")

    def acquire(self, timeout: float) -> None:
        start: Optional[float] = _monotonic() if timeout > 0 else None
        rc = _acquire(self.sem, timeout, self._closing)
        if rc:
            sem, closing = self.sem, self._closing
            retry(
                rc,
                lambda left: _acquire(sem, left, closing),
                Deadline(timeout, start),
                self.name,
            )

    def release(self) -> None:
        rc = _release(self.sem)
        if rc:
            check(rc, self.name)

    def value(self) -> int:
        return check(lib.fipc_sem_value(self.sem), self.name)

    def try_acquire(self) -> bool:
        rc = lib.fipc_sem_try(self.sem)
        if rc == 0:
            return True
        if rc == -errno.EAGAIN:
            return False
        check(rc, self.name)
        return False  # pragma: no cover - check raised

    def waiters(self, delta: int) -> tuple[int, int]:
        word = ffi.new("uint64_t *")
        value = check(lib.fipc_sem_waiters(self.sem, delta, word), self.name)
        return int(word[0]), value

    def pass_wake(self) -> None:
        lib.fipc_sem_pass(self.sem)

    def wake(self) -> None:
        self._closing[0] = 1

    def close(self) -> None:
        sem, self.sem = self.sem, ffi.NULL
        check(lib.fipc_sem_close(sem), self.name)

    @staticmethod
    def unlink(name: str) -> None:
        check(lib.fipc_sem_unlink(name.encode()), name)


_contract: type[SemaphoreBackend] = Sem
