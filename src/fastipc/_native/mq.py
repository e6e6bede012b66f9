"""Message-queue operations backed by ``csrc/mq.c``: one C call per user operation, the
slow path (EINTR, errors) in :func:`fastipc._core.retry`.

The open queue is a ``fipc_mq`` in memory owned by this object: sends and receives count
themselves busy in C, and the descriptors are closed only once no call is in C (see
csrc/mq.c), so the public class lets its hot ``send``/``receive`` (:meth:`Queue.hot_paths`)
skip Python's busy count."""

from __future__ import annotations

import errno
import time
from collections import deque
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
_INVALID = -errno.EINVAL  # what C says of a priority out of range...
_TOO_LONG = -errno.EMSGSIZE  # ...and of a message over max_message_size: nothing was sent
_NUMBERS = (float, int)  # timeouts taken as they are (not bool: it is refused)


def _not_woken(rc: int) -> int:
    """``rc``, unless close() ended the call (-ECANCELED): then the closed object's error."""
    if rc == _CANCELED:
        raise closed()
    return rc


def _checked(*args: Any, **kwargs: Any) -> Any:
    """The fallback of a receive whose arguments were checked already: never called."""
    raise AssertionError("unreachable")


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
        "_kept",
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
        # messages taken from the queue by a receive into which an exception was then raised
        # (a signal handler runs as the C call returns), the next receives' first: each a
        # (bytes, priority), or a receive's (fipc_mq_rx, buffer) holding it (see hot_paths)
        self._kept: deque[tuple[Any, Any]] = deque()
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
        n = len(data)
        start = _monotonic() if timeout > 0 else 0.0
        rc = _send(self._h, data, n, priority, timeout)
        if rc:
            self._sent(rc, data, n, priority, timeout, start)

    def _sent(
        self, rc: int, data: Any, n: int, priority: int, timeout: float, start: float
    ) -> None:
        """The end of a send whose first attempt (begun at ``start``) returned ``rc``:
        attempts again with the time left while it is EINTR, then raises."""
        h = self._h
        retry(
            _not_woken(rc),
            lambda left: _not_woken(_send(h, data, n, priority, left)),
            Deadline(timeout, start),
            self.name,
        )

    def receive(self, timeout: float) -> tuple[bytes, int]:
        # the rare path (a subclass of MessageQueue with a send or receive of its own): the
        # hot receive, made for this call (kept on self, it would be a reference cycle)
        return self.hot_paths(_checked, _checked)[1](None if timeout < 0 else timeout)

    def _received(
        self, item: tuple[Any, Any], rc: int, timeout: float, start: float
    ) -> tuple[bytes, int]:
        """The message of a receive into ``item`` whose first attempt (begun at ``start``)
        returned ``rc``, attempting again with the time left while it is EINTR."""
        if rc < 0:
            rx = item[0]
            rc = retry(
                _not_woken(rc),
                lambda left: _not_woken(_receive(rx, left)),
                Deadline(timeout, start),
                self.name,
            )
        return _unpack(item[1], rc >> _SHIFT), rc & _PRIO

    def _unkeep(self) -> tuple[bytes, int]:
        """The oldest message kept by an interrupted receive (see hot_paths); kept still if
        an exception is raised as it leaves the deque."""
        kept = self._kept
        entry = kept[0]
        if type(entry[0]) is bytes:
            message = entry
        else:  # a receive's (fipc_mq_rx, buffer) that C left a message in
            rc = entry[0].held
            message = _unpack(entry[1], rc >> _SHIFT), rc & _PRIO
        try:
            kept.popleft()
        except BaseException:
            kept.appendleft(entry)
            raise
        return message

    def hot_paths(self, send: Send, receive: Receive) -> tuple[Send, Receive]:
        """The public ``send``/``receive`` for bytes, a priority and a timeout that are
        plainly valid (None or a number >= 0): one C call, counted busy in C (a receive
        without a timeout: the one-argument call). Anything else, and a send that C refused
        (a priority out of range, a message over max_message_size), goes to
        ``send``/``receive``: the public class's whole path, whose checks raise."""
        h, new, sent, received = self._h, self._buffer, self._sent, self._received
        unkeep, kept, pool = self._unkeep, self._kept, self._pool
        pop, push = pool.pop, pool.append

        def hot_send(data: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
            if type(data) is bytes and type(priority) is int:
                if timeout is None:
                    t = -1.0
                elif type(timeout) in _NUMBERS and timeout >= 0:
                    t = timeout
                else:
                    return send(data, priority, timeout)
                start = _monotonic() if t > 0 else 0.0
                try:
                    rc = _send(h, data, len(data), priority, t)
                except OverflowError:  # a priority beyond C's long long
                    rc = _INVALID
                if not rc:
                    return None
                if rc != _INVALID and rc != _TOO_LONG:
                    return sent(rc, data, len(data), priority, t, start)
            return send(data, priority, timeout)

        def hot_receive(timeout: Optional[float] = None) -> tuple[bytes, int]:
            if kept:
                return unkeep()
            if timeout is None:
                t, start = -1.0, 0.0
            elif type(timeout) in _NUMBERS and timeout >= 0:
                t = timeout
                start = _monotonic() if t > 0 else 0.0
            else:
                return receive(timeout)
            try:
                item = pop()
            except IndexError:
                item = new()
            try:
                rc = _receive_wait(item[0]) if t < 0 else _receive(item[0], t)
                if rc >= 0:
                    message = _unpack(item[1], rc >> _SHIFT), rc & _PRIO
                else:
                    message = received(item, rc, t, start)
                push(item)
            except BaseException:
                # A signal handler raised as a call returned (Python runs them after each
                # call into C, and at the start of a Python function): the message taken,
                # if any, is kept for the next receive. Only C calls here, each done before
                # an exception can be raised after it, so none is raised half-way.
                if item in pool:  # made, its buffer back in the pool
                    kept.append(message)
                elif item[0].held >= 0:  # C took it: the buffer holds it
                    kept.append(item)
                else:
                    push(item)
                raise
            return message

        return hot_send, hot_receive

    def attributes(self) -> tuple[int, int, int]:
        attr = ffi.new("fipc_mq_attr *")
        check(lib.fipc_mq_getattr(self._h, attr), self.name)
        return attr.max_messages, attr.max_message_size, attr.current_messages

    def wake(self) -> None:
        self._kept.clear()  # a receive taken before close() raises, kept messages or not
        check(lib.fipc_mq_wake(self._h), self.name)

    def renew_wake(self) -> None:
        check(lib.fipc_mq_renew_wake(self._h), self.name)
        self.wake_fd = self._h.wakefd

    def close(self) -> None:
        lib.fipc_mq_release(self._h)

    def __del__(self) -> None:
        # the last reference gone (the public object and its hot send/receive): no call is
        # in C, so this closes the descriptors now (idempotent after close())
        h = getattr(self, "_h", None)
        if h is not None:
            lib.fipc_mq_release(h)

    @staticmethod
    def unlink(name: str) -> None:
        check(lib.fipc_mq_unlink(name.encode()), name)


_contract: type[MessageQueueBackend] = Queue
