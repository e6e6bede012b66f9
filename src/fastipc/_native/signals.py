"""Signal operations backed by ``csrc/signals.c``."""

from __future__ import annotations

from typing import Optional

from fastipc._backend.signals import Received
from fastipc._core import Deadline, check, ffi, lib, retry

__all__ = ["notifier", "send", "wait"]


def send(pid: int, signum: int, value: Optional[int]) -> None:
    if value is None:
        check(lib.fipc_signal_send(pid, signum, 0, 0))
    else:
        check(lib.fipc_signal_send(pid, signum, 1, value))


def wait(signums: list[int], timeout: float) -> Received:
    info = ffi.new("fipc_siginfo *")  # owned by this call
    count = len(signums)
    deadline = Deadline(timeout)

    def attempt(left: float) -> int:
        return int(lib.fipc_signal_wait(signums, count, left, info))

    retry(attempt(timeout), attempt, deadline)
    return info.signo, info.pid, info.uid, (info.value if info.has_value else None)


def notifier(signums: list[int]) -> int:
    return check(lib.fipc_signal_fd(signums, len(signums)))
