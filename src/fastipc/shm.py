"""POSIX shared memory, and a fast message channel over it.

>>> from fastipc import shm
>>> with shm.Writer("demo") as w, shm.Reader("demo", timeout=1) as r:
...     w.send(b"hello")
...     r.recv(timeout=1)
b'hello'

:class:`SharedMemory` is a named segment (``/dev/shm/<name>``) mapped into this process, like
``multiprocessing.shared_memory`` without its resource tracker. :class:`Writer` creates a
segment holding a single-producer single-consumer ring; :class:`Reader` attaches to it.
Messages of any size up to ``max_message_size`` go through, in order, whole and once;
those larger than a quarter of the ring are streamed through it in chunks. The binary
layout, shared by the native and the pure backend, is documented in ``docs/shm-layout.md``.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Optional

from fastipc import _aio, _core
from fastipc import _shm_layout as _layout
from fastipc._backend import shm as _contract
from fastipc._core import Deadline, Handle, check_int, check_timeout, uses_handle
from fastipc._segment import (
    ReceivingEnd,
    SegmentEnd,
    View,
    check_bool,
    check_owner,
    check_spin,
    check_writable,
    create_segment,
    joined_messages,
    listed_messages,
    map_segment,
    open_segment,
    owner_uid,
    same_file,
    segment_path,
    wait_for,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Publisher",
    "Queue",
    "Reader",
    "SharedMemory",
    "Subscriber",
    "Writer",
    "unlink",
]

HEADER = _layout.HEADER
DEFAULT_CAPACITY = 1 << 20
MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 32
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
MAX_MESSAGE_LIMIT = (1 << 63) - 1
def unlink(name: str) -> None:
    """Remove the segment ``name`` from /dev/shm (FileNotFoundError if absent)."""
    os.unlink(segment_path(name)[1])


def _attach(name: str, size: int, backend: str) -> SharedMemory:
    """Unpickle a SharedMemory: attach by name (never create)."""
    return SharedMemory(name, False, size, backend=backend)


def _new_name() -> str:
    """A fresh name for ``SharedMemory(create=True)`` without one, as the stdlib makes them
    (``psm_`` and 8 hex digits; no slash)."""
    return "psm_" + secrets.token_hex(4)


class SharedMemory(Handle):
    """A named POSIX shared memory segment, mapped read-write, with the signature and the
    behaviour of :class:`multiprocessing.shared_memory.SharedMemory`.

    ``create=True`` creates it exclusively with ``size`` bytes (``FileExistsError`` if the
    name is taken; ``size <= 0`` is a ``ValueError``); without a ``name`` it makes a new one
    (``psm_`` and 8 hex digits). ``create=False`` attaches to an existing one
    (``FileNotFoundError`` if absent; ``name=None`` is a ``ValueError``) and maps its real
    size, whatever smaller ``size`` is given (a larger ``size`` than the segment is a
    ``ValueError``: attaching never resizes). Attaching refuses a segment owned by another
    uid (``PermissionError``) unless ``owner`` is that uid (``None``: this process's
    effective uid); creating ignores ``owner``. ``name`` is the name as given (with or
    without the leading slash, which name the same segment). Nothing is registered with
    ``multiprocessing``'s resource tracker: ``close()`` unmaps, only ``unlink()`` removes
    the name. A SharedMemory pickles as its name: unpickled in another process it attaches
    (``create=False``; ``FileNotFoundError`` if the name has gone).
    """

    _what = "SharedMemory"

    def __init__(self, name: Optional[str] = None, create: bool = False, size: int = 0, *,
                 mode: int = 0o600, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        create = check_bool(create, "create")
        size = check_int(size, "size", 0, 2**63 - 1)
        mode = check_int(mode, "mode", 0, 0o777)
        uid = owner_uid(owner)
        which = _core.resolve_backend(backend)
        if create and size == 0:
            raise ValueError("size must be > 0 to create a segment")
        if name is None:
            if not create:
                raise ValueError("name can only be None if create=True")
            while True:  # a made-up name: try another if it is taken
                name = _new_name()
                path = segment_path(name)[1]
                try:
                    fd = create_segment(path, size, mode)
                except FileExistsError:
                    continue
                break
        else:
            path = segment_path(name)[1]
            fd = create_segment(path, size, mode) if create else open_segment(path, 0)
        self._name, self._path = name, path
        try:
            st = os.fstat(fd)
            if not create:
                check_owner(st, uid, path)
                if st.st_size == 0:
                    raise ValueError(f"shared memory segment {name!r} is empty")
                if size > st.st_size:
                    raise ValueError(
                        f"size {size} exceeds the segment {name!r} ({st.st_size} bytes)")
                size = st.st_size
            self._mmap = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            if create:
                os.unlink(path)
            raise
        self._size = size
        self._buf: Optional[memoryview] = memoryview(self._mmap)
        self._open_handle(which, fd)

    name = _core.Fixed[str]("_name", "The segment's name as given (also once closed: "
                            "unlink() needs it).")
    size = _core.Fixed[int]("_size", "Bytes mapped: the segment's size.", open_only=True)

    @property
    def buf(self) -> memoryview:
        """The mapped bytes (zero copy)."""
        self._check_open()
        assert self._buf is not None
        return self._buf

    def close(self) -> None:
        """Unmap and close. Idempotent. BufferError while views of ``buf`` are alive (the
        segment then stays open)."""
        if self._closed:
            return
        buf, self._buf = self._buf, None
        if buf is not None:
            buf.release()
        try:
            self._mmap.close()
        except BufferError:  # a user still holds a slice of buf
            self._buf = memoryview(self._mmap)
            raise
        super().close()

    def unlink(self) -> None:
        """Remove the name from /dev/shm (before or after close); mappings stay valid until
        closed."""
        os.unlink(self._path)

    def __reduce__(self) -> tuple[Callable[..., SharedMemory], tuple[str, int, str]]:
        self._check_open()
        return _attach, (self._name, self._size, self._backend)

    def _describe(self) -> str:
        return f"{self._name!r} size={self._size}"


# ---------------------------------------------------------------------------- the channel

class _End(SegmentEnd):
    """What Writer and Reader share: the segment, its mapping, the backend's ops and the
    liveness lock.

    The segment's fd (``fileno()``) holds this end's OFD lock (docs/shm-layout.md,
    "Liveness"); the mapping is made through another open file description (:func:`_map`).
    On the native backend the per-message calls (``send``, ``recv``...) are the methods of
    the end's native handle (``csrc/py/shm.c``), which come first in the native class: C
    keeps the closed flag and busy count, holds a buffer export of the mapping and releases
    it once no call is busy, then runs :meth:`_free`. The methods of the same names below are
    the pure backend's. What is not per-message goes through ``_ops`` on both backends."""

    _what = "channel end"
    _mmap: Optional[mmap.mmap] = None
    _size = 0

    def _setup(self, name: Any, backend: Optional[str]) -> None:
        self._set_name(name)
        self._which = _core.resolve_backend(backend)
        self._impl = _core.ops("shm", self._which)
        self._spin_async = _aio.Spin()

    def _make_ops(self, mm: mmap.mmap, fd: int, max_message: int, spin: float) -> Any:
        """This end of the channel in ``mm``: the native handle's C end (``_open``) and the
        ops on it, or the pure backend's ops. The writer writes the header, the reader checks
        it."""
        cls = self._impl.WriterOps if isinstance(self, Writer) else self._impl.ReaderOps
        if self._which == "native":
            _core.check(self._open(mm, fd, os.getpid(), max_message, spin),  # type: ignore[attr-defined]
                        self._name)
            extra = (mm,) if isinstance(self, Reader) else ()
            return cls(self._core, self._name, *extra)  # type: ignore[attr-defined]
        return cls(mm, self._size, fd, self._name, os.getpid(), max_message, spin)

    def _undo_ops(self, ops: Any) -> None:
        """Let go of the mapping of an end whose set-up failed (nobody is told)."""
        if self._which == "native":
            self._detach()  # type: ignore[attr-defined]
        else:
            ops.detach()

    def _start(self, fd: int, ops: Any) -> None:
        self._ops = ops
        self._open_handle(self._which, fd)
        self._track()

    max_message_size = _core.Fixed[int]("_max", "The largest message taken, in bytes.",
                                        open_only=True)

    @property
    def capacity(self) -> int:
        """Bytes in the ring."""
        self._check_open()
        return self._size - HEADER

    @property
    def spin(self) -> float:
        """Longest spin, in seconds, before a wait sleeps on the futex (0: sleep at once)."""
        self._check_open()
        return float(self._ops.spin)

    @spin.setter
    def spin(self, value: float) -> None:
        self._check_open()
        self._ops.spin = check_spin(value)

    @uses_handle
    def stats(self) -> dict[str, int]:
        """How waits ended: ``{"spins": n, "sleeps": m}`` since this end was opened."""
        spins, sleeps = self._ops.stats()
        return {"spins": spins, "sleeps": sleeps}

    def _map_segment(self, fd: int) -> None:
        self._size = os.fstat(fd).st_size
        self._mmap = map_segment(fd, self._size)

    def _unmap(self) -> None:
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # an export outlived the end: the GC unmaps it later
                pass

    def _wake(self) -> None:
        if self._which == "pure":  # the native handle's C woke its calls already
            self._ops.wake()

    def _free(self) -> None:
        self._ops.close()
        self._ops_freed()
        self._unmap()
        os.close(self._fd)

    def _ops_freed(self) -> None:
        """What the end does once closed, before its fd goes (the writer unlinks)."""

    def _let_go(self) -> None:
        self._detach()  # type: ignore[attr-defined]  # (the native handle's)

    def _describe(self) -> str:
        return f"{self._name!r} capacity={self._size - HEADER}"


class Writer(_End):
    """The sending end of a channel: creates ``/dev/shm/<name>`` and removes it on close.

    ``capacity`` is the ring's size in bytes (rounded up to a power of two, at least 4096).
    ``max_message_size`` bounds one message. ``spin`` is how long a full ring is polled
    before sleeping (default 50 µs on more than one CPU, 0 on one). ``BrokenPipeError``
    once the reader has closed or died. The segment appears under its name only once it is
    whole (built under a temporary name, then linked into place).
    """

    _what = "Writer"
    _handle_type = "ShmWriterHandle"  # csrc/py/shm.c: send, send_many and the await hooks
    # the pure backend's ops (the native backend's do only what is not per-message)
    _ops: _contract.PureWriterOps

    def __init__(self, name: str, capacity: int = DEFAULT_CAPACITY, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, mode: int = 0o600,
                 spin: Optional[float] = None, backend: Optional[str] = None) -> None:
        self._setup(name, backend)
        capacity = check_int(capacity, "capacity", 1, MAX_CAPACITY)
        capacity = max(MIN_CAPACITY, 1 << (capacity - 1).bit_length())
        max_message_size = check_int(max_message_size, "max_message_size", 0,
                                     MAX_MESSAGE_LIMIT)
        mode = check_int(mode, "mode", 0, 0o777)
        spin = check_spin(spin)
        self._size = HEADER + capacity

        def build(fd: int, mm: mmap.mmap) -> Any:
            return self._make_ops(mm, fd, max_message_size, spin)

        fd, self._mmap, ops = self._publish(self._size, mode, build, self._undo_ops)
        self._max = max_message_size
        self._start(fd, ops)

    # The per-message operations below are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/shm.c) come first and do the same in C.
    @uses_handle
    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send one message (any bytes-like object). Waits up to ``timeout`` seconds for
        room; TimeoutError if the ring stays full (a message streamed in chunks that was
        cut short is dropped by the reader, never delivered in part)."""
        self._ops.send(data, timeout)

    @uses_handle
    def send_many(self, messages: Iterable[Any], timeout: Optional[float] = None) -> None:
        """Send several messages in one call. On an error after some went, the exception's
        ``messages_sent`` says how many."""
        t = check_timeout(timeout)
        blob, lens = joined_messages(messages)
        if lens:
            self._ops.send_many(blob, lens, t)

    @uses_handle
    def _send_nowait(self, data: Any) -> bool:
        return self._ops.send_nowait(data)

    def _abandon(self) -> None:
        self._ops.abandon()

    async def send_async(self, data: Any, timeout: Optional[float] = None) -> None:
        """:meth:`send` on the running event loop: waits without blocking the loop.
        Cancelled (or timed out), it has sent the whole message or nothing: a message
        streamed in part is abandoned and the reader drops it."""
        if self._closed:
            raise self._closed_error()
        if timeout is not None:
            check_timeout(timeout)
        try:
            if self._send_nowait(data):  # no wait: none of the machinery
                return
        except BaseException:
            self._abandon()
            raise

        def attempt() -> Any:
            return True if self._send_nowait(data) else _aio.NOT_READY

        await self._awaited(attempt, timeout, self._abandon)

    async def send_many_async(self, messages: Iterable[Any],
                              timeout: Optional[float] = None) -> None:
        """:meth:`send_many` on the running event loop: waits for room without blocking the
        loop. Whatever ends it early (an error, a timeout, a cancellation, a close), the
        exception's ``messages_sent`` says how many went, each whole; a message streamed in
        part is abandoned (the reader drops it, never delivers it in part)."""
        self._check_open()
        check_timeout(timeout)
        listed = listed_messages(messages)
        done = [0]
        alone = [False]  # the next message goes by itself (it may be streamed in chunks)

        def attempt() -> Any:
            while done[0] < len(listed):
                if alone[0]:
                    if not self._send_nowait(listed[done[0]]):
                        return _aio.NOT_READY
                    alone[0] = False
                    done[0] += 1
                    continue
                try:
                    self.send_many(listed[done[0]:] if done[0] else listed, 0.0)
                except BaseException as exc:
                    sent = getattr(exc, "messages_sent", 0)
                    done[0] += sent
                    if not isinstance(exc, TimeoutError):
                        raise
                    if sent:
                        return _aio.NOT_READY
                    alone[0] = True  # not one fitted: keep the progress of the next
                    continue
                done[0] = len(listed)
            return True

        try:
            await self._awaited(attempt, timeout, self._abandon)
        except BaseException as exc:
            exc.messages_sent = done[0]  # type: ignore[attr-defined]
            raise

    async def flush_async(self, timeout: Optional[float] = None) -> None:
        """:meth:`flush` on the running event loop: woken by the reader as it takes the
        messages out of the ring (no polling). TimeoutError, BrokenPipeError as
        :meth:`flush`."""
        self._check_open()
        check_timeout(timeout)
        flushed = self._ops.flushed

        def attempt() -> Any:
            if self._closed:  # (the pure backend's flushed() does not look)
                raise self._closed_error()
            return True if flushed() else _aio.NOT_READY

        await self._awaited(attempt, timeout, park=self._ops.flush_park)

    @property
    def reader_attached(self) -> bool:
        """Whether a reader has attached (it may have closed since)."""
        self._check_open()
        return bool(self._ops.reader_attached())

    @uses_handle
    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until the reader has taken every message sent so far out of the ring (it has
        read them, or is waiting for more). TimeoutError after ``timeout`` seconds (also
        while no reader has attached); BrokenPipeError if the reader closes or dies first."""
        flushed = self._ops.flushed

        def done() -> Optional[bool]:
            if flushed():
                return True
            if self._closed:
                raise self._closed_error()
            return None

        wait_for(done, Deadline.of(timeout), self._name, 0.0002, 0.01)

    def _ops_freed(self) -> None:
        if same_file(self._fd, self._path):
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass


class _View(View):
    """A zero-copy view of one received message; released when its ``with`` block ends.

    While it lives, its ring space is held (the writer cannot reuse it) and it counts as a
    call of its reader (the mapping stays). If anything made from the memoryview still
    lives when the block ends (``numpy.frombuffer(view)``, a slice, ``struct.iter_unpack``),
    the hold lasts until the last of them goes, whatever still names the memoryview; the
    reader's next call then hands the space back (``_backend.ring.Holds``)."""

    __slots__ = ()
    _end: Reader

    def _hold(self) -> None:
        self._end._enter()  # a live view is a call in progress: the mapping stays
        self._end._views.add(self)

    def _let_go_of(self, mv: memoryview) -> None:
        reader = self._end
        if self.pos is None:  # a copy: nothing held
            reader._ops.release_view(mv, None)
            return
        try:
            reader._ops.release_view(mv, self.pos)
        finally:
            reader._leave()


class Reader(_End, ReceivingEnd):
    """The receiving end of a channel: attaches to the segment a :class:`Writer` created.

    Waits up to ``timeout`` seconds for the writer to appear (TimeoutError). A second reader
    of one channel gets ``OSError(EBUSY)``. A segment owned by another user is refused with
    PermissionError unless ``owner`` names that user's uid. ``EOFError`` once the writer has
    closed or died and every whole message has been read; a reader that finds its writer
    dead removes the orphaned ``/dev/shm`` entry when it closes.
    """

    _what = "Reader"
    _handle_type = "ShmReaderHandle"  # csrc/py/shm.c: recv, recv_into, recv_many, hooks
    # the pure backend's ops (the native backend's do only what is not per-message)
    _ops: _contract.PureReaderOps

    def __init__(self, name: str, timeout: Optional[float] = None, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 spin: Optional[float] = None, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        self._setup(name, backend)
        deadline = Deadline.of(timeout)
        max_message_size = check_int(max_message_size, "max_message_size", 0,
                                     MAX_MESSAGE_LIMIT)
        spin = check_spin(spin)
        uid = owner_uid(owner)
        self._views: weakref.WeakSet[_View] = weakref.WeakSet()
        got = wait_for(lambda: self._attach(max_message_size, spin, uid), deadline, self._name)
        self._max = max_message_size
        self._start(got[0], got[1])

    def _attach(self, max_message_size: int, spin: float, uid: int) -> Optional[tuple[int, Any]]:
        got = self._open_attached(uid)
        if got is None:
            return None
        fd = got[0]
        ops: Any = None
        try:
            if not _layout.hold_lock(fd, _layout.LOCK_READER):
                raise OSError(errno.EBUSY, "the channel already has a reader", self._name)
            self._map_segment(fd)
            assert self._mmap is not None
            ops = self._make_ops(self._mmap, fd, max_message_size, spin)
        except BaseException:
            if ops is not None:
                self._undo_ops(ops)
            self._unmap()
            os.close(fd)
            raise
        return fd, ops

    # The per-message operations below are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/shm.c) come first and do the same in C.
    @uses_handle
    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message. EOFError once the writer has gone and all was read."""
        return self._ops.recv(timeout)

    @uses_handle
    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Copy the next message into ``buffer`` and return its length. ValueError if it does
        not fit (the message stays queued)."""
        t = check_timeout(timeout)
        check_writable(buffer)
        return self._ops.recv_into(buffer, t)

    @uses_handle
    def recv_many(self, max_messages: int = 1024, timeout: Optional[float] = None
                  ) -> list[bytes]:
        """Up to ``max_messages`` messages in one call: waits up to ``timeout`` for the first,
        then takes what is queued without waiting."""
        max_messages = check_int(max_messages, "max_messages", 1, 1 << 20)
        return self._ops.recv_many(max_messages, check_timeout(timeout))

    @uses_handle
    def _recv_nowait(self) -> Optional[bytes]:
        return self._ops.recv_nowait()

    @uses_handle
    def _recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]:
        return self._ops.recv_many_nowait(max_messages)

    @uses_handle
    def _take_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        return self._ops.recv_view(timeout)

    def _unstick_views(self) -> None:
        """(Called by the native handle while views are stuck.)"""
        self._ops._unstick()

    @uses_handle
    def recv_view(self, timeout: Optional[float] = None) -> _View:
        """The next message as a read-only memoryview into the ring, without a copy, for use
        in a ``with`` block; its space is handed back to the writer when the block ends (or,
        if anything made from the view still lives then, once the last of it has gone)."""
        mv, pos = self._take_view(check_timeout(timeout))
        return _View(self, mv, pos)

    async def recv_async(self, timeout: Optional[float] = None) -> bytes:
        """:meth:`recv` on the running event loop. Cancelled, it leaves the message queued."""
        if self._closed:
            raise self._closed_error()
        if timeout is not None:
            check_timeout(timeout)
        msg = self._recv_nowait()  # there already: none of the machinery
        if msg is not None:
            return msg

        def attempt() -> Any:
            msg = self._recv_nowait()
            return _aio.NOT_READY if msg is None else msg

        return await self._awaited(attempt, timeout)  # type: ignore[no-any-return]

    async def recv_many_async(self, max_messages: int = 1024,
                              timeout: Optional[float] = None) -> list[bytes]:
        """:meth:`recv_many` on the running event loop."""
        self._check_open()
        max_messages = check_int(max_messages, "max_messages", 1, 1 << 20)
        check_timeout(timeout)
        got = self._recv_many_nowait(max_messages)
        if got is not None:
            return got

        def attempt() -> Any:
            out = self._recv_many_nowait(max_messages)
            return _aio.NOT_READY if out is None else out

        return await self._awaited(attempt, timeout)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the writer closes."""
        return _core.messages(self)

    def _wake(self) -> None:
        """close() with views alive (they count as calls): release them (their space goes
        back with the close), and wake the calls blocked in other threads."""
        for view in list(self._views):
            view.release()
        super()._wake()

    def _free(self) -> None:
        self._ops.drop_taken()
        super()._free()

    def _ops_freed(self) -> None:
        """The writer has gone without removing the segment (it died): remove it, if the
        name still refers to it."""
        self._remove_orphan()


# Fan-out (one writer, many readers) and the many-worker queue live in modules of their own;
# their classes belong to this namespace too (GUIDE §3b).
from fastipc.pubsub import Publisher, Subscriber  # noqa: E402
from fastipc.queue import NamedQueue as Queue  # noqa: E402
