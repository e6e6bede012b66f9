"""Message-queue operations through ``posix_ipc.MessageQueue``, with the behaviour of
``csrc/mq.c``: posix_ipc's own exceptions become the builtin ``OSError`` subclasses.

posix_ipc runs the Python signal handlers when its blocking call sees EINTR, but replaces
an exception raised by a handler with its own SignalError, so a blocking posix_ipc call
cannot follow PEP 475. posix_ipc is therefore only asked to send or receive without
blocking (``block = False``: the descriptor is O_NONBLOCK), and the waits happen in
``select.poll`` (which follows PEP 475 itself), on the queue and the object's wake-up pipe.
"""

from __future__ import annotations

import errno
import os
import select
from typing import Any, Callable, NoReturn, TypeVar

import posix_ipc

from fastipc._backend.mq import MessageQueueBackend, closed, own_wake_after_fork
from fastipc._core import Deadline, raise_errno

__all__ = ["Queue"]

_T = TypeVar("_T")
_Busy = posix_ipc.BusyError


def _reraise(exc: BaseException, name: str, missing: int, timeout: float = -1.0) -> NoReturn:
    """posix_ipc's exceptions carry no errno: raise the builtin for the one the kernel
    returned (ETIMEDOUT for BusyError, ``missing`` for ExistentialError)."""
    if isinstance(exc, _Busy):
        code = errno.ETIMEDOUT
    elif isinstance(exc, posix_ipc.ExistentialError):
        code = missing
    elif isinstance(exc, posix_ipc.PermissionsError):
        code = errno.EACCES
    elif isinstance(exc, ValueError):
        code = errno.EINVAL
    elif isinstance(exc, OSError):  # posix_ipc raises some refusals without an errno
        code = exc.errno or _guess_errno(str(exc))
    else:
        raise exc
    try:
        raise_errno(code, name, None if timeout < 0 else timeout)
    except OSError as new:
        new.__suppress_context__ = True
        raise


def _guess_errno(message: str) -> int:
    message = message.lower()
    if "maximum number of files" in message:
        return errno.EMFILE
    if "system" in message and "files" in message:
        return errno.ENFILE
    if "space" in message or "queues" in message:
        return errno.ENOSPC
    if "memory" in message:
        return errno.ENOMEM
    return errno.EIO


class Queue:
    """An open posix_ipc queue and the pipe that wakes its waiters."""

    __slots__ = ("__weakref__", "_wake_w", "fd", "max_message_size", "name", "q", "spin", "wake_fd")

    def __init__(
        self, name: str, create: bool, mode: int, max_messages: int, max_message_size: int
    ) -> None:
        self.name = name
        try:
            if create:
                self.q = posix_ipc.MessageQueue(
                    name, posix_ipc.O_CREX, mode, max_messages, max_message_size
                )
            else:
                self.q = posix_ipc.MessageQueue(name)
        except (posix_ipc.Error, ValueError, OSError) as exc:
            _reraise(exc, name, errno.EEXIST if create else errno.ENOENT)
        self.q.block = False
        self.fd: int = self.q.mqd
        os.set_inheritable(self.fd, False)
        self.max_message_size: int = self.q.max_message_size
        self.spin = 0.0  # kept for MessageQueue.spin; posix_ipc is only asked not to block
        self.wake_fd, self._wake_w = os.pipe()  # non-inheritable (PEP 446)
        own_wake_after_fork(self)

    def _call(self, op: Callable[[], _T], events: int, timeout: float) -> _T:
        """``op()`` without blocking, waiting while the queue is full or empty (BusyError)
        for readiness or the wake-up, until the deadline."""
        deadline = None
        while True:
            try:
                return op()
            except _Busy:
                pass
            except (posix_ipc.Error, ValueError) as exc:
                _reraise(exc, self.name, errno.EBADF, timeout)
            if deadline is None:
                deadline = Deadline(timeout)
            if deadline.expired():
                raise deadline.error(self.name)
            poller = select.poll()  # one per wait: a poll object serves one thread at a time
            poller.register(self.fd, events)
            poller.register(self.wake_fd, select.POLLIN)
            left = deadline.left()
            # a day at most: poll() takes no more than a C int of milliseconds; the loop
            # waits again until the deadline
            ready = poller.poll(None if left < 0 else min(left, 86400.0) * 1000)
            if any(fd == self.wake_fd for fd, _ in ready):
                raise closed()

    def send(self, data: Any, priority: int, timeout: float) -> None:
        q = self.q
        self._call(lambda: q.send(data, priority=priority), select.POLLOUT, timeout)

    def receive(self, timeout: float) -> tuple[bytes, int]:
        data, priority = self._call(self.q.receive, select.POLLIN, timeout)
        return data, priority

    def attributes(self) -> tuple[int, int, int]:
        q = self.q
        return q.max_messages, q.max_message_size, q.current_messages

    def wake(self) -> None:
        os.write(self._wake_w, b"!")

    def renew_wake(self) -> None:
        if self.wake_fd >= 0:
            os.close(self.wake_fd)
            os.close(self._wake_w)
            self.wake_fd, self._wake_w = os.pipe()

    def close(self) -> None:
        wake_fd, self.wake_fd = self.wake_fd, -1
        os.close(wake_fd)
        os.close(self._wake_w)
        self.q.close()

    @staticmethod
    def unlink(name: str) -> None:
        try:
            posix_ipc.unlink_message_queue(name)
        except posix_ipc.Error as exc:
            _reraise(exc, name, errno.ENOENT)


_contract: type[MessageQueueBackend] = Queue
