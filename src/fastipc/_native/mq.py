"""Message-queue operations backed by ``csrc/mq.c``: one C call per user operation, the
slow path (EINTR, errors) in :func:`fastipc._core.retry`.

The open queue is a ``fipc_mq`` in memory owned by this object: sends and receives count
themselves busy in C, and the descriptors are closed only once no call is in C (see
csrc/mq.c), so the public class lets its hot ``send``/``receive`` (:meth:`Queue.hot_paths`)
skip Python's busy count."""

from __future__ import annotations

import errno
import time
from functools import partial
from typing import Any, Callable, Optional

from fastipc._backend.mq import MessageQueueBackend, Receive, Send, closed, own_wake_after_fork
from fastipc._core import Deadline, check, ffi, lib, retry

__all__ = ["Queue"]

_send = lib.fipc_mq_send
_receive = lib.fipc_mq_receive
_receive_wait = lib.fipc_mq_receive_wait
_from_buffer = ffi.from_buffer
_unpack = ffi.unpack
_monotonic = time.monotonic
_SHIFT = lib.FIPC_MQ_PRIO_BITS
_PRIO = (1 << _SHIFT) - 1
_CANCELED = -errno.ECANCELED


def _not_woken(rc: int) -> int:
    """``rc``, unless close() ended the call (-ECANCELED): then the closed object's error."""
    if rc == _CANCELED:
        raise closed()
    return rc


def _rx(h: Any, size: int) -> tuple[Any, Any]:
    """A receive's fipc_mq_rx, and its buffer as a char[] (what ffi.unpack reads)."""
    rx = ffi.new("fipc_mq_rx *", {"h": h, "buf": size})
    return rx, rx.buf


class Queue:
    """An open queue descriptor and the eventfd that wakes its waiters."""

    __slots__ = (
        "__weakref__",
        "_buffer",
        "_h",
        "_pool",
        "fd",
        "max_message_size",
        "name",
        "wake_fd",
    )

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
        # receives' (fipc_mq_rx, its buffer) pairs, reused: one per thread receiving at a
        # time (list.pop and list.append are atomic under the GIL), so no call shares its
        # buffer with another
        self._pool: list[tuple[Any, Any]] = []
        self._buffer: Callable[[], tuple[Any, Any]] = partial(_rx, h, self.max_message_size)
        own_wake_after_fork(self)

    @property
    def spin(self) -> float:
        return float(self._h.spin)

    @spin.setter
    def spin(self, value: float) -> None:
        self._h.spin = value

    def send(self, data: Any, priority: int, timeout: float) -> None:
        if type(data) is not bytes:
            data = _from_buffer(data)
        h, n = self._h, len(data)
        start: Optional[float] = _monotonic() if timeout > 0 else None
        rc = _send(h, data, n, priority, timeout)
        if rc:
            retry(
                _not_woken(rc),
                lambda left: _not_woken(_send(h, data, n, priority, left)),
                Deadline(timeout, start),
                self.name,
            )

    def receive(self, timeout: float) -> tuple[bytes, int]:
        pool = self._pool
        item = pool.pop() if pool else self._buffer()
        rx, buf = item
        start: Optional[float] = _monotonic() if timeout > 0 else None
        rc = _receive(rx, timeout)
        if rc < 0:
            try:
                rc = retry(
                    _not_woken(rc),
                    lambda left: _not_woken(_receive(rx, left)),
                    Deadline(timeout, start),
                    self.name,
                )
            except BaseException:
                pool.append(item)
                raise
        message = _unpack(buf, rc >> _SHIFT), rc & _PRIO
        pool.append(item)
        return message

    def hot_paths(self, send: Send, receive: Receive) -> tuple[Send, Receive]:
        """The public ``send``/``receive`` of a blocking call of bytes (the stream's): one C
        call, counted busy in C; anything else (other types, a timeout, a failed attempt:
        EINTR, closed, a bad priority or size) goes to ``send``/``receive``, the public
        class's whole path, which checks the arguments and tries again."""
        h, new = self._h, self._buffer
        pop, push = self._pool.pop, self._pool.append

        def hot_send(data: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
            if timeout is None and type(data) is bytes and type(priority) is int:
                try:
                    if not _send(h, data, len(data), priority, -1.0):
                        return
                except OverflowError:  # a priority beyond C's long long: the checks say so
                    pass
            send(data, priority, timeout)

        def hot_receive(timeout: Optional[float] = None) -> tuple[bytes, int]:
            if timeout is None:
                try:
                    item = pop()
                except IndexError:
                    item = new()
                rc = _receive_wait(item[0])
                if rc >= 0:
                    message = _unpack(item[1], rc >> _SHIFT), rc & _PRIO
                    push(item)
                    return message
                push(item)
            return receive(timeout)

        return hot_send, hot_receive

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
        lib.fipc_mq_release(self._h)

    @staticmethod
    def unlink(name: str) -> None:
        check(lib.fipc_mq_unlink(name.encode()), name)


_contract: type[MessageQueueBackend] = Queue
