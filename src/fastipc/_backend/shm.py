"""The shm channel's backend contract: what ``fastipc.shm`` asks of ``fastipc._native.shm``
and ``fastipc._pure.shm``, at the grain of one user operation.

Each backend module provides ``WriterOps`` and ``ReaderOps`` classes built from a mapping
the public class owns; both are checked against these Protocols by mypy (``_check_*`` at the
end of each backend module). Everything about the binary layout, the reassembly of streamed
messages and the waits lives below this line; the public classes above it validate
arguments, own the life cycle (``_core.Handle``) and never read the mapping.

Conventions: ``timeout`` is the C convention of ``_core.check_timeout`` (-1.0 forever, 0 try
once); errors are raised as the exceptions of ``_core.raise_errno``; a call of an end closed
by another thread raises ``ValueError``. Async attempts (``*_nowait``) never wait: they
return ``None`` / ``False`` when they would have to.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

Send = Callable[..., None]  # send(data, timeout=None): the hot path, one C call
Recv = Callable[..., bytes]  # recv(timeout=None): the hot path, one C call


class EndOps(Protocol):
    """What both ends provide."""

    name: str

    @property
    def spin(self) -> float: ...

    @spin.setter
    def spin(self, value: float) -> None: ...

    def stats(self) -> tuple[int, int]:
        """(waits that ended while spinning, waits that slept)"""

    def park(self) -> Optional[tuple[int, int]]:
        """Async waits: raise this end's sleeping flag (the peer's ordinary wake-up path then
        bumps the futex word) and return (address of the futex word, value it holds), or
        None if what we wait for is there already. EOFError / BrokenPipeError if the peer
        has gone."""

    def unpark(self) -> None:
        """Lower the sleeping flag again."""

    def wake(self) -> None:
        """Make calls of this end blocked in other threads return (they raise ValueError)."""

    def close(self) -> None:
        """Tell the peer this end closed, and let go of the mapping once no call is in it."""

    def detach(self) -> None:
        """Let go of the mapping without telling the peer (a copy inherited through fork)."""


class WriterOps(EndOps, Protocol):
    send: Send

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        """Messages stored back to back in ``blob``; the error's ``messages_sent`` says how
        many went."""

    def send_nowait(self, data: Any) -> bool:
        """One attempt at sending ``data`` whole: True once it is all in the ring. False if
        the ring is full; a streamed message keeps its progress for the next attempt with
        the same data, until :meth:`abandon`."""

    def abandon(self) -> None:
        """Give up a message that ``send_nowait`` left half-streamed (the reader drops it)."""

    def flushed(self) -> bool:
        """Whether the reader has taken everything sent; BrokenPipeError if it has gone."""

    def reader_attached(self) -> bool: ...


class ReaderOps(EndOps, Protocol):
    recv: Recv

    def recv_into(self, buffer: Any, timeout: float) -> int:
        """The next message into ``buffer``; ValueError if it does not fit (it stays
        queued)."""

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        """The next message as a read-only view, and the ring position to hold until the
        view goes (None: the view is a copy, nothing to hold)."""

    def set_hold(self, pos: Optional[int]) -> None:
        """Never hand space from ``pos`` on back to the writer (None: release everything)."""

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]: ...

    def recv_nowait(self) -> Optional[bytes]:
        """The next message if one is whole in the ring, else None (nothing consumed)."""

    def recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]: ...
