"""Message-queue operations through ``posix_ipc.MessageQueue``, with the behaviour of
``csrc/mq.c``: posix_ipc's own exceptions become the builtin ``OSError`` subclasses.

posix_ipc runs the Python signal handlers when its blocking call sees EINTR, but replaces
an exception raised by a handler with its own SignalError, so a blocking posix_ipc call
cannot follow PEP 475. posix_ipc is therefore only asked to send or receive without
blocking (``block = False``: the descriptor is O_NONBLOCK). A call that has to wait sleeps,
as in C, in the kernel's own ``mq_timedsend`` / ``mq_timedreceive`` (through ctypes, which
releases the GIL and returns EINTR to :func:`fastipc._core.retry`), on a blocking
descriptor of the same queue reopened through ``/proc/self/fd``: the kernel hands each
message to one waiter in turn. Waits are cut into slices after each of which the closing
flag is looked at.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import math
import os
import time
from collections.abc import Callable
from typing import Any, NoReturn

import posix_ipc

from fastipc._backend.mq import MessagesBackend, closed, own_wake_after_fork
from fastipc._core import Deadline, raise_errno, retry
from fastipc._pure.sem import _libc, _Timespec

__all__ = ["Queue"]

_Busy = posix_ipc.BusyError
_SLICE = 0.1  # seconds a wait sleeps before it looks at the closing flag again (as mq.c)
_TIMEDOUT = -errno.ETIMEDOUT


def _rt_function(name: str) -> Any:
    """``name`` from the C library (glibc 2.34+), else from librt."""
    try:
        return getattr(_libc, name)
    except AttributeError:  # pragma: no cover - older C libraries
        rt = ctypes.CDLL(ctypes.util.find_library("rt") or "librt.so.1", use_errno=True)
        return getattr(rt, name)


_timedreceive = _rt_function("mq_timedreceive")
_timedreceive.restype = ctypes.c_ssize_t
_timedreceive.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                          ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(_Timespec)]
_timedsend = _rt_function("mq_timedsend")
_timedsend.restype = ctypes.c_int
_timedsend.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                       ctypes.POINTER(_Timespec)]


def _slice_end(deadline: Deadline) -> Any:
    """The CLOCK_REALTIME time (what the kernel's timed calls take) at which the next sleep
    ends: one slice from now, or the deadline if it comes first."""
    left = deadline.left()
    frac, whole = math.modf(time.time() + (_SLICE if left < 0 else min(left, _SLICE)))
    return ctypes.byref(_Timespec(int(whole), int(frac * 1e9)))


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
    """An open posix_ipc queue, the same queue again as a blocking descriptor (the waits'),
    and the pipe that wakes an event loop's waiters."""

    __slots__ = ("__weakref__", "_wake_w", "closing", "fd", "max_message_size", "name", "q",
                 "spin", "wait_fd", "wake_fd")

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
        try:  # the same open queue, blocking, whatever became of its name
            self.wait_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDWR)
        except OSError:
            self.q.close()
            raise
        self.max_message_size: int = self.q.max_message_size
        self.spin = 0.0  # kept for MessageQueue.spin; the pure backend does not spin
        self.closing = False
        self.wake_fd, self._wake_w = os.pipe()  # non-inheritable (PEP 446)
        own_wake_after_fork(self)

    def _failed(self, exc: Exception, timeout: float) -> None:
        """The end of a first attempt that raised ``exc``: returns if the queue was full
        (empty) and the call may wait, else raises."""
        if not isinstance(exc, _Busy):
            _reraise(exc, self.name, errno.EBADF, timeout)
        if timeout == 0:
            raise Deadline(timeout).error(self.name) from None

    def _wait(self, sleep: Callable[[Deadline], int], timeout: float) -> int:
        """``sleep``, the kernel's blocking call, a slice at a time until the deadline
        (after EINTR, once the handlers ran, with the time left): its result, >= 0."""

        def wait(left: float) -> int:
            deadline = Deadline(left)
            while not self.closing:
                rc = sleep(deadline)
                if rc != _TIMEDOUT or deadline.expired():
                    return rc
            raise closed()

        return retry(wait(timeout), wait, Deadline(timeout), self.name)

    def send(self, data: Any, priority: int, timeout: float) -> None:
        try:
            self.q.send(data, priority=priority)
            return
        except (posix_ipc.Error, ValueError) as exc:
            self._failed(exc, timeout)
        fd, whole = self.wait_fd, bytes(data)  # ctypes takes bytes, not a read-only view

        def sleep(deadline: Deadline) -> int:
            rc = _timedsend(fd, whole, len(whole), priority, _slice_end(deadline))
            return -ctypes.get_errno() if rc < 0 else 0

        self._wait(sleep, timeout)

    def receive(self, timeout: float) -> tuple[bytes, int]:
        try:
            data, priority = self.q.receive()
            return data, priority
        except (posix_ipc.Error, ValueError) as exc:
            self._failed(exc, timeout)
        fd, size = self.wait_fd, self.max_message_size
        buf, prio = ctypes.create_string_buffer(size), ctypes.c_uint()

        def sleep(deadline: Deadline) -> int:
            n = _timedreceive(fd, buf, size, ctypes.byref(prio), _slice_end(deadline))
            return -ctypes.get_errno() if n < 0 else int(n)

        n = self._wait(sleep, timeout)
        return buf.raw[:n], prio.value

    def attributes(self) -> tuple[int, int, int]:
        q = self.q
        return q.max_messages, q.max_message_size, q.current_messages

    def wake(self) -> None:
        self.closing = True
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
        os.close(self.wait_fd)
        self.q.close()

    @staticmethod
    def unlink(name: str) -> None:
        try:
            posix_ipc.unlink_message_queue(name)
        except posix_ipc.Error as exc:
            _reraise(exc, name, errno.ENOENT)


_contract: type[MessagesBackend] = Queue
