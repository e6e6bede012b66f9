"""The backend contract of :mod:`fastipc.pipe` and :mod:`fastipc.client`, at the grain of
one user operation: a byte stream over one fd (a pipe end, a FIFO end, a connected socket)
with raw and framed I/O. ``fastipc._native.pipe`` (C, ``csrc/pipe.c``) and
``fastipc._pure.pipe`` implement :class:`Module`; the pure one also :class:`PureModule`
(natively the streams are the public objects' handles, ``csrc/py/pipe.c``); mypy --strict
checks both against it.

Timeouts are validated already, in the convention of :func:`fastipc._core.check_timeout`
(``-1.0`` forever, ``0.0`` try once, ``> 0`` seconds). Errors are raised as exceptions:
``TimeoutError`` (with ``characters_written`` for writes), ``EOFError``, ``BrokenPipeError``,
``ValueError`` (naming the object) once :meth:`Stream.wake` or :meth:`Stream.free` was
called. EINTR is retried with the time left after the signal handlers ran.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

FRAME_HEADER = 4  # the big-endian length before each payload


def frames_within(sizes: Iterable[int], written: int) -> int:
    """How many messages of these payload ``sizes``, framed back to back, went whole in the
    first ``written`` bytes: the ``messages_sent`` of a batch that stopped part way (the
    reader gets those; a frame cut short after them is dropped, never delivered)."""
    sent = end = 0
    for size in sizes:
        end += FRAME_HEADER + size
        if end > written:
            break
        sent += 1
    return sent


class Stream(Protocol):
    """One end of a byte stream of the pure backend; it owns the fd. Reading operations need
    ``reading=True`` at construction (the read-ahead buffer). (The native backend has no
    Python stream: the public object is its handle, whose C methods are the operations:
    csrc/py/pipe.c.) The caller counts the calls (:class:`fastipc._core.Handle`) and calls
    :meth:`free` only once none runs."""

    max_message_size: int

    @property
    def torn(self) -> bool:
        """Whether the last write stopped part-way, for whatever reason (an error, a
        timeout, an exception raised into it by a signal handler): a frame was cut short."""

    def write(self, data: Any, timeout: float, offset: int = 0) -> int:
        """All of ``data`` from byte ``offset`` on, raw; returns its length."""

    def send(self, data: Any, timeout: float, offset: int = 0) -> None:
        """One frame (4-byte big-endian length, payload), from byte ``offset`` of the frame
        (an earlier try wrote that much: see ``characters_written`` of its TimeoutError)."""

    def send_many(self, messages: list[Any], timeout: float) -> None:
        """Several frames in one write (or as few as the pipe allows). Stopped part way
        (whatever the exception), the exception's ``messages_sent`` says how many of the
        messages went whole (:func:`frames_within`)."""

    def read(self, n: int, timeout: float) -> bytes:
        """Up to ``n`` raw bytes as soon as any are there; ``b""`` at end of stream."""

    def recv(self, timeout: float) -> bytes:
        """The next whole frame's payload. A try that times out or is interrupted midway
        keeps what it read for the next call: no frame is ever lost or delivered in part."""

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        """Like :meth:`recv`, then every further whole frame already read ahead."""

    def wake(self) -> None:
        """Make every call blocked on this object return now (OSError ECANCELED); safe
        from any thread. Later waits return at once too."""

    def free(self) -> None:
        """Close the fd and release the object's resources (no call may run)."""


class Module(Protocol):
    """The module-level operations of a pipe backend."""

    def open_pipe(self, size: int) -> tuple[int, int]:
        """A new non-blocking, close-on-exec pipe ``(read fd, write fd)``."""

    def set_size(self, fd: int, size: int) -> int:
        """F_SETPIPE_SZ; returns the size the kernel chose."""

    def get_size(self, fd: int) -> int:
        """F_GETPIPE_SZ."""

    def writer_present(self, fd: int) -> bool:
        """Whether the FIFO opened for reading as ``fd`` has a writer (or data waiting)."""


class PureModule(Module, Protocol):
    """The pure backend also makes the streams themselves."""

    def stream(self, fd: int, *, reading: bool, sock: bool, max_message_size: int,
               what: str) -> Stream:
        """A :class:`Stream` owning the non-blocking ``fd`` (not on failure); ``what``
        names the object in the ValueError of a closed one."""
