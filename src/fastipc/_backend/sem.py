"""The semaphore backend contract: what :class:`fastipc.sem.Semaphore` asks of
``fastipc._native.sem.Sem`` and ``fastipc._pure.sem.Sem``, one method per user operation.

Timeouts arrive validated, in the C convention of :func:`fastipc._core.check_timeout`.
Failures raise: ``TimeoutError``, an ``OSError`` with the kernel's errno, or
``OSError(ECANCELED)`` from an acquire that :meth:`SemaphoreBackend.wake` ended."""

from __future__ import annotations

from typing import Protocol

__all__ = ["SemaphoreBackend"]


class SemaphoreBackend(Protocol):
    """One open handle (``sem_t *``) of one backend."""

    name: str

    def __init__(self, name: str, create: bool, mode: int, value: int) -> None: ...

    def acquire(self, timeout: float) -> None:
        """Decrement the value, waiting while it is 0."""

    def release(self) -> None:
        """Increment the value (OSError(EOVERFLOW) at SEM_VALUE_MAX)."""

    def value(self) -> int:
        """The current value (>= 0)."""
        ...

    def try_acquire(self) -> bool:
        """Decrement without waiting: False while the value is 0."""
        ...

    def waiters(self, delta: int) -> tuple[int, int]:
        """Count this process in (``delta`` 1) or out (-1) of the semaphore's waiters, as
        ``sem_wait`` does, so that ``sem_post`` wakes the futex word: ``(address of the
        futex word, the value then)``. OSError(ENOSYS) where the C library's ``sem_t``
        is not glibc's 64-bit layout."""
        ...

    def pass_wake(self) -> None:
        """Wake one sleeper if the value is > 0 and someone waits (a wake-up taken by an
        awaiting coroutine that then gave up goes on to another waiter)."""

    def wake(self) -> None:
        """Make every acquire waiting on this handle end with OSError(ECANCELED) within
        one slice of its sleep (a sleeping sem_wait cannot be woken from outside)."""

    def close(self) -> None:
        """sem_close the handle; runs once, when no call is using it."""

    @staticmethod
    def unlink(name: str) -> None:
        """Remove the semaphore ``name`` (FileNotFoundError if there is none)."""
