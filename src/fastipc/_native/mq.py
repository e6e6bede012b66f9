"""Message-queue operations backed by ``csrc/mq.c``: one C call per user operation, the
slow path (EINTR, errors) in :func:`fastipc._core.retry`."""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from fastipc._backend.mq import MessageQueueBackend, own_wake_after_fork
from fastipc._core import Deadline, check, ffi, lib, retry

__all__ = ["Queue"]

_send = lib.fipc_mq_send
_receive = lib.fipc_mq_receive
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack
_monotonic = time.monotonic


class Queue:
    """An open queue descriptor and the eventfd that wakes its waiters."""

    __slots__ = ("__weakref__", "_pool", "fd", "max_message_size", "name", "wake_fd")

    def __init__(
        self, name: str, create: bool, mode: int, max_messages: int, max_message_size: int
    ) -> None:
        self.name = name
        self.fd = -1
        self.wake_fd = check(lib.fipc_mq_wake_open(), name)
        try:
            self.fd = check(
                lib.fipc_mq_open(name.encode(), int(create), mode, max_messages, max_message_size),
                name,
            )
            self.max_message_size: int = self.attributes()[1]
        except BaseException:
            self.close()
            raise
        # (buffer, priority) pairs for receive, reused: one per thread receiving at a time
        # (list.pop and list.append are atomic under the GIL), so no call shares its out
        # parameters with another
        self._pool: list[tuple[Any, Any]] = []
        own_wake_after_fork(self)

    def send(self, data: Any, priority: int, timeout: float, spin: float) -> None:
        if type(data) is not bytes:
            data = _from_buffer(data)
        start: Optional[float] = _monotonic() if timeout > 0 else None
        rc = _send(self.fd, self.wake_fd, data, len(data), priority, timeout, spin)
        if rc:
            fd, wake_fd = self.fd, self.wake_fd
            retry(
                rc,
                lambda left: _send(fd, wake_fd, data, len(data), priority, left, spin),
                Deadline(timeout, start),
                self.name,
            )

    def receive(self, timeout: float, spin: float) -> tuple[bytes, int]:
        pool = self._pool
        buf, prio = pool.pop() if pool else self._out()
        start: Optional[float] = _monotonic() if timeout > 0 else None
        size = self.max_message_size
        n = _receive(self.fd, self.wake_fd, buf, size, prio, timeout, spin)
        if n < 0:
            fd, wake_fd = self.fd, self.wake_fd
            try:
                n = retry(
                    n,
                    lambda left: _receive(fd, wake_fd, buf, size, prio, left, spin),
                    Deadline(timeout, start),
                    self.name,
                )
            except BaseException:
                pool.append((buf, prio))
                raise
        message = _unpack(buf, n), prio[0]
        pool.append((buf, prio))
        return message

    def _out(self) -> tuple[Any, Any]:
        """Out parameters for one receive: the message buffer and the priority."""
        return ffi.new("char[]", self.max_message_size), ffi.new("unsigned int *")

    def attributes(self) -> tuple[int, int, int]:
        attr = ffi.new("fipc_mq_attr *")
        check(lib.fipc_mq_getattr(self.fd, attr), self.name)
        return attr.max_messages, attr.max_message_size, attr.current_messages

    def wake(self) -> None:
        check(lib.fipc_mq_wake(self.wake_fd), self.name)

    def renew_wake(self) -> None:
        if self.wake_fd >= 0:
            os.close(self.wake_fd)
            self.wake_fd = check(lib.fipc_mq_wake_open(), self.name)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        wake_fd, self.wake_fd = self.wake_fd, -1
        if wake_fd >= 0:
            os.close(wake_fd)
        if fd >= 0:
            check(lib.fipc_mq_close(fd), self.name)

    @staticmethod
    def unlink(name: str) -> None:
        check(lib.fipc_mq_unlink(name.encode()), name)


_contract: type[MessageQueueBackend] = Queue
