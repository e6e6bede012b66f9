"""Message-queue operations through ``posix_ipc.MessageQueue``, with the behaviour of
``csrc/mq.c``: posix_ipc's own exceptions become the builtin ``OSError`` subclasses."""

from __future__ import annotations

import errno
import os
import select
from typing import Any, NoReturn, Optional

import posix_ipc

from fastipc._core import raise_errno
from fastipc._pure.pipe import _deadline, _wait

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

PRIO_BITS = 16
PRIO_MASK = 0xFFFF

_Busy = posix_ipc.BusyError


def _reraise(
    exc: BaseException, name: str, missing: int = errno.ENOENT, timeout: Optional[float] = None
) -> NoReturn:
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
    else:
        raise exc
    try:
        raise_errno(code, name, timeout)
    except OSError as new:
        new.__suppress_context__ = True
        raise


def _guess_errno(message: str) -> int:
    """posix_ipc raises some kernel refusals as a bare OSError(message), without errno."""
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


def unlink(name: str) -> None:
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.Error as exc:
        _reraise(exc, name)


# posix_ipc runs the Python signal handlers when its blocking call sees EINTR, but replaces
# an exception raised by a handler with its own SignalError, so a blocking posix_ipc call
# cannot follow PEP 475. The waits happen in select.poll instead (which does), and posix_ipc
# is only asked to send or receive without blocking (O_NONBLOCK).


def SEND(q: Any, data: Any, n: int, priority: int, timeout: float, spin: float) -> int:
    """Send one message; 0, or raise (never returns an error code). ``spin`` is ignored."""
    deadline: Optional[float] = None
    fd = q.mqd
    while True:
        try:
            q.send(data, priority=priority)
            return 0
        except _Busy:
            pass
        except (posix_ipc.Error, ValueError) as exc:
            _reraise(exc, q.name, errno.EBADF, timeout)
        if timeout == 0:
            raise_errno(errno.ETIMEDOUT, q.name, timeout)
        if deadline is None:
            deadline = _deadline(timeout)
        _wait(fd, select.POLLOUT, deadline, timeout)


def as_buffer(data: Any) -> Any:
    return data


def RECEIVE(q: Any, buf: list[bytes], size: int, timeout: float, spin: float) -> int:
    """Receive one message into ``buf`` (a one-slot list from new_buffer: the bytes
    themselves, which posix_ipc returns); ``length << PRIO_BITS | priority``, or raise.
    ``spin`` is ignored."""
    deadline: Optional[float] = None
    while True:
        try:
            data, priority = q.receive()
            buf[0] = data
            return len(data) << PRIO_BITS | priority  # type: ignore[no-any-return]
        except _Busy:
            pass
        except (posix_ipc.Error, ValueError) as exc:
            _reraise(exc, q.name, errno.EBADF, timeout)
        if timeout == 0:
            raise_errno(errno.ETIMEDOUT, q.name, timeout)
        if deadline is None:
            deadline = _deadline(timeout)
        _wait(q.mqd, select.POLLIN, deadline, timeout)


def new_buffer(size: int) -> list[bytes]:
    return [b""]


def unpack(buf: list[bytes], n: int) -> bytes:
    return buf[0]


def retry_send(*args: Any) -> None:  # pragma: no cover - SEND raises instead of failing
    raise AssertionError("unreachable")


def retry_receive(*args: Any) -> int:  # pragma: no cover - RECEIVE raises instead of failing
    raise AssertionError("unreachable")


class Queue:
    """An open posix_ipc queue; ``h`` is what SEND and RECEIVE take: the queue object."""

    __slots__ = ("fd", "h", "max_message_size", "name", "q")

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
        except (posix_ipc.Error, ValueError) as exc:
            _reraise(exc, name, errno.EEXIST if create else errno.ENOENT)
        except OSError as exc:
            code = exc.errno or _guess_errno(str(exc))
            raise OSError(code, os.strerror(code), name) from None
        self.q.block = False  # posix_ipc's calls only try; the waits are _wait's
        self.h = self.q
        self.fd: int = self.q.mqd
        self.max_message_size: int = self.q.max_message_size

    def attributes(self) -> tuple[int, int, int]:
        q = self.q
        return q.max_messages, q.max_message_size, q.current_messages

    def close(self) -> None:
        self.q.close()
