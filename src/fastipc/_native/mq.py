"""Message-queue operations backed by ``csrc/mq.c``: one C call per user operation."""

from __future__ import annotations

import errno
import time
from typing import Any

from fastipc._core import check, ffi, lib

__all__ = ["Queue", "unlink"]

_EINTR = -errno.EINTR
_monotonic = time.monotonic
_send = lib.fipc_mq_send
_receive = lib.fipc_mq_receive
_unpack = ffi.unpack
_new = ffi.new
_from_buffer = ffi.from_buffer


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def unlink(name: str) -> None:
    check(lib.fipc_mq_unlink(name.encode()), name)


class Queue:
    """An open queue descriptor. ``create`` makes it exclusively with the given attributes."""

    __slots__ = ("_pool", "fd", "max_message_size", "name")

    def __init__(self, name: str, create: bool, mode: int, max_messages: int,
                 max_message_size: int) -> None:
        self.name = name
        self.fd = check(
            lib.fipc_mq_open(name.encode(), int(create), mode, max_messages, max_message_size),
            name,
        )
        self.max_message_size = 0
        self._pool: list[Any] = []  # receive buffers: one per thread receiving at a time
        try:
            self.max_message_size = self.attributes()[1]
        except BaseException:
            lib.fipc_mq_close(self.fd)
            raise

    def attributes(self) -> tuple[int, int, int]:
        attr = _new("fipc_mq_attr *")
        check(lib.fipc_mq_getattr(self.fd, attr), self.name)
        return attr.max_messages, attr.max_message_size, attr.current_messages

    def send(self, data: Any, n: int, priority: int, timeout: float) -> None:
        """data: bytes, or a contiguous byte memoryview of n bytes."""
        if type(data) is not bytes:
            data = _from_buffer(data)
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _send(self.fd, data, n, priority, timeout)
        if rc:
            # EINTR: the signal handlers have run (a handler that raises ends the call);
            # retry with the time that is left (PEP 475)
            while rc == _EINTR:
                rc = _send(self.fd, data, n, priority, _left(timeout, t0))
            check(rc, self.name, timeout)

    def receive(self, timeout: float) -> tuple[bytes, int]:
        pool = self._pool
        try:
            buf, prio = pool.pop()
        except IndexError:
            buf, prio = _new("char[]", self.max_message_size), _new("unsigned int *")
        try:
            size = self.max_message_size
            t0 = _monotonic() if timeout > 0 else 0.0
            n = _receive(self.fd, buf, size, timeout, prio)
            if n < 0:
                while n == _EINTR:
                    n = _receive(self.fd, buf, size, _left(timeout, t0), prio)
                check(n, self.name, timeout)
            return _unpack(buf, n), prio[0]
        finally:
            pool.append((buf, prio))

    def close(self) -> None:
        self._pool.clear()
        check(lib.fipc_mq_close(self.fd), self.name)
