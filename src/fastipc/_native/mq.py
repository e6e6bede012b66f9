"""Message-queue operations backed by ``csrc/mq.c``: one C call per user operation.

:class:`fastipc.mq.MessageQueue` calls ``SEND`` and ``RECEIVE`` (the C functions
themselves, no Python frame in between) and hands any non-zero / negative result to
``retry_send`` / ``retry_receive``, which retry after EINTR and raise the rest.
``RECEIVE`` writes into a buffer from ``new_buffer`` and returns
``length << PRIO_BITS | priority``; ``unpack`` turns the buffer into ``bytes``.
"""

from __future__ import annotations

import errno
import time
from typing import Any

from fastipc._core import check, ffi, lib

__all__ = [
    "PRIO_BITS",
    "PRIO_MASK",
    "RECEIVE",
    "SEND",
    "Queue",
    "as_buffer",
    "new_buffer",
    "retry_receive",
    "retry_send",
    "unlink",
    "unpack",
]

_EINTR = -errno.EINTR
_monotonic = time.monotonic

PRIO_BITS: int = lib.FIPC_MQ_PRIO_BITS
PRIO_MASK: int = lib.FIPC_MQ_PRIO_MASK
SEND = lib.fipc_mq_send  # (fd, data, n, priority, timeout, spin) -> 0 or -errno
RECEIVE = lib.fipc_mq_receive  # (fd, buf, size, timeout, spin) -> packed or -errno
as_buffer = ffi.from_buffer
unpack = ffi.unpack


def new_buffer(size: int) -> Any:
    return ffi.new("char[]", size)


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def unlink(name: str) -> None:
    check(lib.fipc_mq_unlink(name.encode()), name)


def retry_send(
    fd: int,
    data: Any,
    n: int,
    priority: int,
    timeout: float,
    spin: float,
    t0: float,
    rc: int,
    name: str,
) -> None:
    """After SEND returned rc != 0: EINTR means the signal handlers have run (one that
    raises ends the call), so retry with the time that is left (PEP 475); else raise."""
    while rc == _EINTR:
        rc = SEND(fd, data, n, priority, _left(timeout, t0), spin)
    check(rc, name, timeout)


def retry_receive(
    fd: int, buf: Any, size: int, timeout: float, spin: float, t0: float, rc: int, name: str
) -> int:
    """After RECEIVE returned rc < 0: as retry_send; the packed result once it succeeds."""
    while rc == _EINTR:
        rc = RECEIVE(fd, buf, size, _left(timeout, t0), spin)
    return check(rc, name, timeout)


class Queue:
    """An open queue descriptor. ``create`` makes it exclusively with the given attributes.
    ``h`` is what SEND and RECEIVE take: the descriptor."""

    __slots__ = ("h", "max_message_size", "name")
    h: int

    def __init__(
        self, name: str, create: bool, mode: int, max_messages: int, max_message_size: int
    ) -> None:
        self.name = name
        self.h = check(
            lib.fipc_mq_open(name.encode(), int(create), mode, max_messages, max_message_size),
            name,
        )
        try:
            self.max_message_size = self.attributes()[1]
        except BaseException:
            lib.fipc_mq_close(self.h)
            raise

    @property
    def fd(self) -> int:
        return self.h

    def attributes(self) -> tuple[int, int, int]:
        attr = ffi.new("fipc_mq_attr *")
        check(lib.fipc_mq_getattr(self.h, attr), self.name)
        return attr.max_messages, attr.max_message_size, attr.current_messages

    def close(self) -> None:
        check(lib.fipc_mq_close(self.h), self.name)
