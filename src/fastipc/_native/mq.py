"""Message-queue operations backed by ``csrc/mq.c``: one C call per user operation.

``SEND`` is the C function itself, which :class:`fastipc.mq.MessageQueue` calls directly
(no Python frame between the public method and C); ``retry_send`` handles what it returns
when that is not 0. ``Queue.receive`` needs a receive buffer, so it is a Python method.
"""

from __future__ import annotations

import errno
import time
from typing import Any

from fastipc._core import check, ffi, lib

__all__ = ["SEND", "Queue", "as_buffer", "retry_send", "unlink"]

_EINTR = -errno.EINTR
_monotonic = time.monotonic
_receive = lib.fipc_mq_receive
_unpack = ffi.unpack
_new = ffi.new

_PRIO_BITS = lib.FIPC_MQ_PRIO_BITS
_PRIO_MASK = lib.FIPC_MQ_PRIO_MASK

SEND = lib.fipc_mq_send  # (fd, data, n, priority, timeout, spin) -> 0 or -errno
as_buffer = ffi.from_buffer


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def unlink(name: str) -> None:
    check(lib.fipc_mq_unlink(name.encode()), name)


def retry_send(fd: int, data: Any, n: int, priority: int, timeout: float, spin: float,
               t0: float, rc: int, name: str) -> None:
    """After SEND returned rc != 0: EINTR means the signal handlers have run (one that
    raises ends the call), so retry with the time that is left (PEP 475); else raise."""
    while rc == _EINTR:
        rc = SEND(fd, data, n, priority, _left(timeout, t0), spin)
    check(rc, name, timeout)


class Queue:
    """An open queue descriptor. ``create`` makes it exclusively with the given attributes."""

    __slots__ = ("_pool", "h", "max_message_size", "name", "spin")
    h: int

    def __init__(self, name: str, create: bool, mode: int, max_messages: int,
                 max_message_size: int) -> None:
        self.name = name
        self.spin = 0.0
        self.h = check(
            lib.fipc_mq_open(name.encode(), int(create), mode, max_messages, max_message_size),
            name,
        )
        # receive buffers: one per thread receiving at the same time
        self._pool: list[Any] = []
        try:
            self.max_message_size = self.attributes()[1]
        except BaseException:
            lib.fipc_mq_close(self.h)
            raise

    @property
    def fd(self) -> int:
        return self.h

    def attributes(self) -> tuple[int, int, int]:
        attr = _new("fipc_mq_attr *")
        check(lib.fipc_mq_getattr(self.h, attr), self.name)
        return attr.max_messages, attr.max_message_size, attr.current_messages

    def receive(self, timeout: float) -> tuple[bytes, int]:
        pool = self._pool
        try:
            buf = pool.pop()
        except IndexError:
            buf = _new("char[]", self.max_message_size)
        t0 = _monotonic() if timeout > 0 else 0.0
        n = _receive(self.h, buf, self.max_message_size, timeout, self.spin)
        if n < 0:
            try:
                while n == _EINTR:  # PEP 475, as in retry_send
                    n = _receive(self.h, buf, self.max_message_size, _left(timeout, t0),
                                 self.spin)
                check(n, self.name, timeout)
            except BaseException:
                pool.append(buf)
                raise
        data = _unpack(buf, n >> _PRIO_BITS)
        pool.append(buf)
        return data, n & _PRIO_MASK

    def close(self) -> None:
        self._pool.clear()
        check(lib.fipc_mq_close(self.h), self.name)
