"""The message-queue backend contract: what :class:`fastipc.mq.MessageQueue` asks of
``fastipc._native.mq.Queue`` and ``fastipc._pure.mq.Queue``, one method per user operation.

Timeouts arrive validated, in the C convention of :func:`fastipc._core.check_timeout`
(``-1.0`` forever, ``0.0`` try once, ``> 0`` seconds). Failures raise: ``TimeoutError``
when the queue stays full or empty, an ``OSError`` with the kernel's errno otherwise, and
``ValueError`` (:func:`closed`) from a call that :meth:`MessageQueueBackend.wake` ended: the
object was closed."""

from __future__ import annotations

import os
import weakref
from typing import Any, Protocol

from fastipc._core import closed_error

__all__ = ["MessageQueueBackend", "MessagesBackend", "closed", "own_wake_after_fork"]


def closed() -> ValueError:
    """What a send or receive that close() ended raises: the error of a closed object."""
    return closed_error("MessageQueue")


class MessageQueueBackend(Protocol):
    """One open queue descriptor of one backend. Its sends and receives are the native
    handle's (``csrc/py/mq.c``) on the native backend, :class:`MessagesBackend`'s on the
    pure one."""

    name: str  # with its leading "/"
    fd: int  # the queue descriptor (close-on-exec, non-blocking), pollable
    wake_fd: int  # readable once wake() was called: asyncio waits on it too
    max_message_size: int
    spin: float  # seconds a send or receive that has to wait polls before it sleeps

    def __init__(
        self, name: str, create: bool, mode: int, max_messages: int, max_message_size: int
    ) -> None: ...

    def attributes(self) -> tuple[int, int, int]:
        """``(max_messages, max_message_size, current_messages)``, read now."""
        ...

    def wake(self) -> None:
        """Make every send and receive waiting on this object end with :func:`closed`, now
        and from now on (called by close())."""

    def renew_wake(self) -> None:
        """In a forked child: replace the inherited wake-up descriptor with one of its own
        (see :func:`own_wake_after_fork`)."""

    def close(self) -> None:
        """Release the descriptors; runs once, when no call is using them."""

    @staticmethod
    def unlink(name: str) -> None:
        """Remove the queue ``name`` (FileNotFoundError if there is none)."""


class MessagesBackend(MessageQueueBackend, Protocol):
    """A queue whose sends and receives are made in Python: the pure backend's."""

    def send(self, data: Any, priority: int, timeout: float) -> None:
        """Send ``data`` (bytes, or a contiguous byte memoryview of at most
        max_message_size bytes) as one message."""

    def receive(self, timeout: float) -> tuple[bytes, int]:
        """The next message and its priority."""
        ...


_live: weakref.WeakSet[Any] = weakref.WeakSet()


def _renew_all() -> None:
    for q in list(_live):
        q.renew_wake()


def own_wake_after_fork(q: MessageQueueBackend) -> None:
    """A forked child inherits the object, and with it the wake-up descriptor, which is then
    shared: a close() in one process would end the waits of the other. Each backend object
    calls this once: in every forked child, it gets a wake-up descriptor of its own."""
    _live.add(q)


os.register_at_fork(after_in_child=_renew_all)
