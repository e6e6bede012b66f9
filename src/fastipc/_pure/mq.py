"""Message-queue operations through ``posix_ipc.MessageQueue``, with the behaviour of
``csrc/mq.c``: posix_ipc's own exceptions become the builtin ``OSError`` subclasses."""

from __future__ import annotations

import errno
import os
import time
from typing import Any, NoReturn, Optional

import posix_ipc

from fastipc._core import raise_errno

__all__ = ["Queue", "unlink"]

_monotonic = time.monotonic
_Busy = posix_ipc.BusyError
_Signal = posix_ipc.SignalError


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def _reraise(exc: BaseException, name: str, missing: int = errno.ENOENT,
             timeout: Optional[float] = None) -> NoReturn:
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


def unlink(name: str) -> None:
    try:
        posix_ipc.unlink_message_queue(name)
    except posix_ipc.Error as exc:
        _reraise(exc, name)


class Queue:
    __slots__ = ("fd", "max_message_size", "name", "q")

    def __init__(self, name: str, create: bool, mode: int, max_messages: int,
                 max_message_size: int) -> None:
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
            raise OSError(exc.errno, os.strerror(exc.errno or 0), name) from None
        self.fd: int = self.q.mqd
        self.max_message_size: int = self.q.max_message_size

    def attributes(self) -> tuple[int, int, int]:
        q = self.q
        return q.max_messages, q.max_message_size, q.current_messages

    def send(self, data: Any, n: int, priority: int, timeout: float) -> None:
        t0 = _monotonic() if timeout > 0 else 0.0
        wait = timeout
        while True:
            try:
                self.q.send(data, None if wait < 0 else wait, priority)
                return
            except _Signal:
                # posix_ipc saw EINTR: the handlers run here (one that raises ends the call);
                # retry with the time that is left (PEP 475)
                wait = _left(timeout, t0)
            except (posix_ipc.Error, ValueError) as exc:
                _reraise(exc, self.name, errno.EBADF, timeout)

    def receive(self, timeout: float) -> tuple[bytes, int]:
        t0 = _monotonic() if timeout > 0 else 0.0
        wait = timeout
        while True:
            try:
                return self.q.receive(None if wait < 0 else wait)  # type: ignore[no-any-return]
            except _Signal:
                wait = _left(timeout, t0)
            except (posix_ipc.Error, ValueError) as exc:
                _reraise(exc, self.name, errno.EBADF, timeout)

    def close(self) -> None:
        self.q.close()
