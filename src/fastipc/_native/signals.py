"""Signal operations backed by ``csrc/signals.c``."""

from __future__ import annotations

from fastipc._core import check, ffi, lib

__all__ = ["send", "wait"]


def send(pid: int, signum: int, value: int | None) -> None:
    if value is None:
        check(lib.fipc_signal_send(pid, signum, 0, 0))
    else:
        check(lib.fipc_signal_send(pid, signum, 1, value))


def wait(signums: list[int], timeout: float) -> tuple[int, int, int, int | None] | int:
    """One signal from ``signums`` as (signo, pid, uid, value), or -errno (EINTR, ETIMEDOUT)."""
    info = ffi.new("fipc_siginfo *")
    rc = lib.fipc_signal_wait(signums, len(signums), timeout, info)
    if rc < 0:
        return int(rc)
    return info.signo, info.pid, info.uid, (info.value if info.has_value else None)
