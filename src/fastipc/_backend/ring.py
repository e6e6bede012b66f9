"""What the backends of both shared-memory rings share (the shm channel's reader and the
fan-out's subscriber): zero-copy views of a message in the ring whose space stays held for
as long as anything made from the view lives."""

from __future__ import annotations

import ctypes
import weakref
from collections.abc import Callable
from typing import Any, Optional

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
    """What the readers of both rings share about views into the ring (``recv_view``): the
    shm channel's reader and the fan-out's subscriber, on both backends.

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

    def _init_holds(self) -> None:
        self._holds = []
        self._owners = {}
        self._stuck = []

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
