"""Message-queue operations backed by ``csrc/mq.c``: opening, attributes, waking, closing.

The open queue is a ``fipc_mq`` in memory owned by this object. Sends and receives are the
methods of the public object's native handle (``csrc/py/mq.c``), which this object gives
the queue's address (:meth:`Queue.handle_args`); the handle counts its calls busy and
closes the descriptors once none is using them."""

from __future__ import annotations

from typing import Any

from fastipc._backend.mq import MessageQueueBackend, own_wake_after_fork
from fastipc._core import check, ffi, lib

__all__ = ["Queue"]


class Queue:
    """An open queue (twice: non-blocking, and blocking for the waits) and the eventfd that
    wakes its waiters."""

    __slots__ = ("__weakref__", "_h", "fd", "max_message_size", "name", "wake_fd")

    def __init__(
        self, name: str, create: bool, mode: int, max_messages: int, max_message_size: int
    ) -> None:
        self.name = name
        h = ffi.new("fipc_mq *")
        check(
            lib.fipc_mq_open(h, name.encode(), int(create), mode, max_messages, max_message_size),
            name,
        )
        self._h = h
        self.fd: int = h.fd
        self.wake_fd: int = h.wakefd
        self.max_message_size: int = h.max_message_size
        own_wake_after_fork(self)

    def handle_args(self) -> tuple[int, Any]:
        """What the native handle's ``_open`` takes: the queue's address, and the object that
        owns that memory (the handle keeps it until it is released)."""
        return int(ffi.cast("uintptr_t", self._h)), self._h

    @property
    def spin(self) -> float:
        return float(self._h.spin)

    @spin.setter
    def spin(self, value: float) -> None:
        self._h.spin = value

    def attributes(self) -> tuple[int, int, int]:
        attr = ffi.new("fipc_mq_attr *")
        check(lib.fipc_mq_getattr(self._h, attr), self.name)
        return attr.max_messages, attr.max_message_size, attr.current_messages

    def wake(self) -> None:
        check(lib.fipc_mq_wake(self._h), self.name)

    def renew_wake(self) -> None:
        check(lib.fipc_mq_renew_wake(self._h), self.name)
        self.wake_fd = self._h.wakefd

    def close(self) -> None:
        lib.fipc_mq_close(self._h)

    def __del__(self) -> None:
        # a queue never given to a handle (its object's __init__ failed), or already closed
        # by it: fipc_mq_close closes once
        h = getattr(self, "_h", None)
        if h is not None:
            lib.fipc_mq_close(h)

    @staticmethod
    def unlink(name: str) -> None:
        check(lib.fipc_mq_unlink(name.encode()), name)


_contract: type[MessageQueueBackend] = Queue
