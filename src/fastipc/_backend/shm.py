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

import ctypes
import errno
import weakref
from collections.abc import Awaitable
from typing import Any, Callable, Optional, Protocol

from fastipc._core import Deadline, closed_error, retry

Send = Callable[..., None]  # send(data, timeout=None): the hot path, one C call
Recv = Callable[..., bytes]  # recv(timeout=None): the hot path, one C call
Awaited = Callable[..., Awaitable[Any]]  # send_async(data, timeout=None), recv_async(timeout=None)


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

    def fast_async(self, wait: Awaited) -> Awaited:
        """The awaitable ``send_async`` / ``recv_async`` of this end, as a coroutine function
        whose call is one attempt in one C call when it needs no wait (the message fits, or
        is there), and otherwise awaits ``wait`` with the same arguments: the public class's
        general path, which makes its own first attempt. A backend without such a path
        returns ``wait`` itself."""

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
        """The next message as a read-only view, and the ring position it holds until
        :meth:`release_view` (None: the view is a copy, nothing is held)."""

    def release_view(self, view: memoryview, pos: Optional[int]) -> None:
        """Release a view of :meth:`recv_view`. Still exported, or with a memoryview made
        from it alive (a slice, ``numpy.frombuffer``), its space stays held until the last
        of them goes, which the reader's calls look at."""

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]: ...

    def recv_nowait(self) -> Optional[bytes]:
        """The next message if one is whole in the ring, else None (nothing consumed)."""

    def recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]: ...

    def drop_taken(self) -> None:
        """This end closes: forget the messages it took from the ring and has not returned
        yet, and the views of it still exported."""


class Retrying:
    """What both backends' ends share: the slow path of every call."""

    name: str
    _what = "channel end"

    def fast_async(self, wait: Awaited) -> Awaited:
        return wait

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


_SPANS: dict[int, type] = {}


def _span_type(n: int) -> Any:
    """A ctypes byte array type of at least ``n`` bytes: powers of two, so that few types
    are ever made (ctypes keeps every array type it makes)."""
    size = 1 << max(n - 1, 0).bit_length()
    t = _SPANS.get(size)
    if t is None:
        t = _SPANS[size] = type(f"_Span{size}", (ctypes.c_char * size,), {})
    return t


class Holds:
    """What both readers share about views into the ring (``recv_view``).

    Each view is a memoryview of an exporter of its own (:meth:`_export`): every memoryview
    made from it (its slices, the one ``numpy.frombuffer`` makes) keeps that exporter
    alive, and the exporter keeps the mapping, so the space of a message is held, and its
    bytes stay as they are, until the view is released *and* nothing made from it lives.
    A view still exported when its ``with`` block ends (``struct.iter_unpack``) cannot be
    released then; it is retried (:meth:`_unstick`) with the exporters still alive by every
    call of the reader, and by a wait every few ms, until the space can go back. The
    backend provides ``_mv`` (a memoryview of the mapping), ``_addr`` (its address),
    ``set_hold(pos)`` (pos None: no hold) and ``_recheck(flag)`` (while set, a wait looks
    up every few ms: -EINTR)."""

    _mv: memoryview
    _addr: int
    _holds: list[int]
    _owners: dict[int, Callable[[], Any]]  # ring position -> weak reference to its exporter
    _stuck: list[tuple[Optional[memoryview], Callable[[], Any], int]]

    def set_hold(self, pos: Optional[int]) -> None:
        raise NotImplementedError

    def drop_taken(self) -> None:
        """The reader closes: forget the views still exported (their space goes back with
        the close; their memory stays mapped for as long as they live)."""
        self._stuck.clear()
        self._owners.clear()
        self._holds.clear()

    def _recheck(self, flag: bool) -> None:
        raise NotImplementedError

    def _export(self, off: int, n: int, pos: int) -> tuple[memoryview, int]:
        """A read-only view of the ``n`` bytes at ``off`` in the mapping, the message at
        ring position ``pos``, which stays held until :meth:`release_view`."""
        span = _span_type(n).from_address(self._addr + off)
        span.pin = self._mv[off:off + n]  # an export of the mapping: never unmapped under it
        whole = memoryview(span)
        view = whole.cast("B")[:n].toreadonly()
        whole.release()
        self._holds.append(pos)
        self._owners[pos] = weakref.ref(span)
        if len(self._holds) == 1:
            self.set_hold(pos)
        return view, pos

    def release_view(self, view: memoryview, pos: Optional[int]) -> None:
        if pos is None:  # a copy: nothing held
            try:
                view.release()
            except BufferError:  # exported: the copy lives as long as its users
                pass
            return
        owner = self._owners.pop(pos)
        try:
            view.release()
        except BufferError:
            self._stuck.append((view, owner, pos))
            self._recheck(True)
            return
        if owner() is not None:  # a slice or an array made from the view still lives
            self._stuck.append((None, owner, pos))
            self._recheck(True)
            return
        self._unhold(pos)

    def _unhold(self, pos: int) -> None:
        self._holds.remove(pos)
        self.set_hold(min(self._holds) if self._holds else None)

    def _unstick(self) -> None:
        """Hand back the space of views released since, whose exporters have gone."""
        stuck = self._stuck
        for i, (view, owner, pos) in enumerate(stuck):
            if view is not None:
                try:
                    view.release()
                except BufferError:
                    continue
                stuck[i] = (None, owner, pos)
        for item in [item for item in stuck if item[1]() is None]:
            stuck.remove(item)
            self._unhold(item[2])
        if not stuck:
            self._recheck(False)


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


def _no_retry(left: float) -> int:
    return -errno.EAGAIN  # never called: _run is given a status that is not EINTR

