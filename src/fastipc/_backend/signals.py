"""The signals backend contract: what :mod:`fastipc.signals` asks of
``fastipc._native.signals`` and ``fastipc._pure.signals``, one function per user operation
(modules, not classes: signals have no object to hold)."""

from __future__ import annotations

from typing import Optional, Protocol

__all__ = ["SignalsBackend"]

Received = tuple[int, int, int, Optional[int]]
"""(signo, pid, uid, value): value is None when the signal carried none."""


class SignalsBackend(Protocol):
    def send(self, pid: int, signum: int, value: Optional[int]) -> None:
        """kill(), or sigqueue() with ``value``; OSError with the kernel's errno."""

    def wait(self, signums: list[int], timeout: float) -> Received:
        """Take one pending signal of ``signums`` (blocked in this thread) within
        ``timeout`` (C convention); TimeoutError if none came. A signal handled meanwhile
        runs its Python handler (one that raises ends the wait) and the wait goes on."""
        ...

    def notifier(self, signums: list[int]) -> int:
        """A new fd (signalfd, non-blocking, non-inheritable) that turns readable while one
        of ``signums`` is pending: what an event loop watches; the caller closes it."""
        ...
