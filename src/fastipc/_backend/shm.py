"""The shm channel's backend contract: what ``fastipc.shm`` asks of ``fastipc._native.shm``
and ``fastipc._pure.shm``, at the grain of one user operation.

Each backend module provides ``WriterOps`` and ``ReaderOps`` classes for a mapping the
public class owns; mypy checks them against these Protocols (``_check_*`` at the end of each
backend module). On the native backend the per-message calls are methods of the end's
native handle (``csrc/py/shm.c``), which the public class subclasses there; the pure
backend's are the ``Pure*`` Protocols' methods, called by the public class's methods of the
same names. Everything about the binary layout, the reassembly of streamed messages and the
waits lives below this line; the public classes above it validate arguments, own the life
cycle (``_core.Handle``) and never read the mapping.

Conventions: ``timeout`` is the C convention of ``_core.check_timeout`` (-1.0 forever, 0 try
once); errors are raised as the exceptions of ``_core.raise_errno``; a call of an end closed
by another thread raises ``ValueError``. Async attempts (``*_nowait``) never wait: they
return ``None`` / ``False`` when they would have to.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any, Optional, Protocol

from fastipc import _shm_layout as L
from fastipc._core import Deadline, closed_error, retry


class EndOps(Protocol):
    """What both backends provide for both ends (the native backend's per-message calls are
    methods of the end's native handle, csrc/py/shm.c; the pure backend's are below)."""

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

    def close(self) -> None:
        """Tell the peer this end closed, and let go of the mapping (once no call is in it)."""


class WriterOps(EndOps, Protocol):
    def flushed(self) -> bool:
        """Whether the reader has taken everything sent; BrokenPipeError if it has gone."""

    def flush_park(self) -> Optional[tuple[int, int]]:
        """``park`` for an awaiting flush: raise the writer's sleeping flag (the reader's
        release of space then bumps the futex word) and return (address of the futex word,
        value it holds), or None if :meth:`flushed` already. BrokenPipeError if the reader
        has gone."""

    def reader_attached(self) -> bool: ...


class ReaderOps(EndOps, Protocol):
    def release_view(self, view: memoryview, pos: Optional[int]) -> None:
        """Release a view of ``recv_view``. Still exported, or with a memoryview made from
        it alive (a slice, ``numpy.frombuffer``), its space stays held until the last of
        them goes, which the reader's calls look at."""

    def _unstick(self) -> None:
        """Hand back the space of views released since, whose exporters have gone."""

    def drop_taken(self) -> None:
        """This end closes: forget the views of it still exported."""


class PureEnd(EndOps, Protocol):
    """What the pure backend's ends provide besides (the native handle does these in C)."""

    def wake(self) -> None:
        """Make calls of this end blocked in other threads return (they raise ValueError)."""

    def detach(self) -> None:
        """Let go of the mapping without telling the peer (a copy inherited through fork)."""


class PureWriterOps(WriterOps, PureEnd, Protocol):
    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """One message (the public ``send``'s timeout: None forever)."""

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        """Messages stored back to back in ``blob``; the error's ``messages_sent`` says how
        many went."""

    def send_nowait(self, data: Any) -> bool:
        """One attempt at sending ``data`` whole: True once it is all in the ring. False if
        the ring is full; a streamed message keeps its progress for the next attempt with
        the same data, until :meth:`abandon`."""

    def abandon(self) -> None:
        """Give up a message that ``send_nowait`` left half-streamed (the reader drops it)."""


class PureReaderOps(ReaderOps, PureEnd, Protocol):
    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message (the public ``recv``'s timeout: None forever)."""

    def recv_into(self, buffer: Any, timeout: float) -> int:
        """The next message into ``buffer``; ValueError if it does not fit (it stays
        queued)."""

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        """The next message as a read-only view, and the ring position it holds until
        :meth:`release_view` (None: the view is a copy, nothing is held)."""

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]: ...

    def recv_nowait(self) -> Optional[bytes]:
        """The next message if one is whole in the ring, else None (nothing consumed)."""

    def recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]: ...


class Retrying:
    """What both backends' ends share: the slow path of every call."""

    name: str
    _what = "channel end"

    def _run(self, rc: int, attempt: Callable[[float], int], deadline: Deadline) -> int:
        """The slow path after a first attempt returned ``rc``: ``_core.retry`` (EINTR
        retried with the time left, statuses mapped to exceptions), with EBADF (this end
        closed by another thread) as ValueError."""
        try:
            return retry(rc, attempt, deadline, self.name)
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise closed_error(self._what) from None
            raise


class NowaitSend(Retrying):
    """What both writers share about ``send_nowait``: the progress of a streamed message
    kept between attempts (``_nowait[0]``, bytes sent), and what a status means."""

    _nowait: Any

    def _nowait_sent(self, rc: int) -> bool:
        """True: sent whole; False: the ring is full (progress kept); else raise."""
        if rc == 0:
            return True
        if rc in (-errno.ETIMEDOUT, -errno.EINTR):
            return False
        self._nowait[0] = 0
        self._run(rc, _no_retry, Deadline(0.0))
        return False

    def abandon(self) -> None:
        self._nowait[0] = 0


class FlushPark:
    """What both writers share about ``flush_park``, on the header's 32-bit words
    (``_header_words``: an indexable view of them and their address)."""

    def flushed(self) -> bool:
        raise NotImplementedError

    def _header_words(self) -> tuple[Any, int]:
        raise NotImplementedError

    def flush_park(self) -> Optional[tuple[int, int]]:
        u32, addr = self._header_words()
        wait = L.OFF_WWAIT // 4
        seq = int(u32[L.OFF_SSEQ // 4])
        u32[wait] = 1
        try:
            done = self.flushed()  # publishes the head: a full fence, then reads the tail
        except BaseException:
            u32[wait] = 0
            raise
        if done:
            u32[wait] = 0
            return None
        return addr + L.OFF_SSEQ, seq


def _no_retry(left: float) -> int:
    return -errno.EAGAIN  # never called: _run is given a status that is not EINTR

