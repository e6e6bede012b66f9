"""Fan-out in shared memory: one :class:`Publisher`, many :class:`Subscriber` s.

>>> from fastipc import pubsub
>>> with pubsub.Publisher("news") as pub, pubsub.Subscriber("news", timeout=1) as sub:
...     pub.send(b"hello")
...     sub.recv(timeout=1)
b'hello'

The publisher writes each message once into a ring in ``/dev/shm/<name>``; every subscriber
reads it with its own cursor and sees every message published after it attached. With
``overflow="block"`` (the default) the publisher waits for the slowest subscriber (with its
timeout); with ``overflow="drop_oldest"`` it never waits, and a subscriber that was overrun
skips to the oldest message still there and counts what it lost in :attr:`Subscriber.missed`.
Up to 64 subscribers at a time. Peers' liveness is an OFD lock on the segment file: a dead
subscriber stops holding the publisher back and a dead publisher ends its subscribers'
streams (EOFError after the last whole message) within a second. The binary layout, shared
by both backends, is in ``docs/pubsub-layout.md``.
"""

from __future__ import annotations

import errno
import inspect
import mmap
import os
import stat
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn, Optional, TypeVar

from fastipc import _aio, _core
from fastipc._backend import pubsub as _layout
from fastipc._backend.pubsub import NotReady, SubscriberOps
from fastipc._backend.ring import Holds
from fastipc._core import Deadline, check_int, check_timeout, uses_handle
from fastipc._segment import (
    ReceivingEnd,
    SegmentEnd,
    View,
    check_spin,
    joined_messages,
    listed_messages,
    map_segment,
    open_to_inspect,
    owner_uid,
    same_file,
    wait_for,
)

__all__ = ["DEFAULT_CAPACITY", "MAX_SUBSCRIBERS", "Publisher", "PublisherInfo", "Subscriber",
           "describe"]

SHM_DIR = "/dev/shm"
DEFAULT_CAPACITY = 1 << 22
MAX_CAPACITY = 1 << 32
MAX_SUBSCRIBERS = _layout.SLOTS
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
MAX_MESSAGE_LIMIT = (1 << 63) - 1
_T = TypeVar("_T")

class _Endpoint(SegmentEnd):
    """What Publisher and Subscriber share: the segment's fd and mapping.

    On the native backend the object is its native handle too (``_handle_type``, in
    ``csrc/py/pubsub.c``): the per-message methods and the await hooks (``_park``,
    ``_unpark``, ``_stats``...) are the handle's C methods, and ``_ops`` is None. On the
    pure backend ``_ops`` is the backend's object, and the methods of the same names below
    call it."""

    _mm: Optional[mmap.mmap] = None
    _path = ""

    @property
    def capacity(self) -> int:
        """Bytes in the ring."""
        self._check_open()
        assert self._mm is not None
        return len(self._mm) - _layout.HEADER

    def stats(self) -> dict[str, int]:
        """How waits ended: ``{"spins": n, "sleeps": m}`` since this end was opened."""
        self._check_open()
        spins, sleeps = self._stats()
        return {"spins": spins, "sleeps": sleeps}

    def _bad_call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> NoReturn:
        """The TypeError of a call whose arguments the native handle refused: the one the
        Python method of that name (the pure backend's) raises, in Python's words."""
        func = next(vars(c)[method] for c in type(self).__mro__
                    if inspect.isfunction(vars(c).get(method)))
        try:
            inspect.signature(func).bind(self, *args, **kwargs)
        except TypeError:
            func(self, *args, **kwargs)  # fails binding them, as the pure backend's call
        raise TypeError(f"{method}(): bad arguments")

    # The pure backend's await hooks and counters (the native handle's are C methods).
    def _stats(self) -> tuple[int, int]:
        return self._ops.stats()  # type: ignore[no-any-return]

    def _wake(self) -> None:
        if self._ops is not None:  # (the native handle's waits are woken in C)
            self._ops.wake()

    def _describe(self) -> str:
        return f"{self._name!r} fd={self._fd}"

    def _unmap(self) -> None:
        mm, self._mm = self._mm, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view escaped its with block: the GC unmaps later
                pass
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    _creator_lock = _layout.LOCK  # the publisher's

    def _let_go(self) -> None:
        self._forsake()  # type: ignore[attr-defined]  # (the native handle's)


class Publisher(_Endpoint):
    """Creates ``/dev/shm/<name>`` and publishes messages to every subscriber; unlinks the
    name on close (subscribers then get EOFError once they have read everything).

    ``capacity``: ring bytes (rounded up to a power of two, at least 4096). ``overflow``:
    ``"block"`` waits for the slowest subscriber; ``"drop_oldest"`` never waits (messages
    are then limited to a quarter of the ring, ValueError beyond). ``max_message_size``
    bounds one message (``OSError(EMSGSIZE)`` beyond); under ``"block"`` messages larger
    than a quarter of the ring are streamed through it. The segment appears under its name
    only once complete (built under a temporary name, then linked), with ``mode``.
    """

    _what = "Publisher"
    _handle_type = "PublisherHandle"  # csrc/py/pubsub.c: send, send_many, the await hooks

    def __init__(self, name: str, capacity: int = DEFAULT_CAPACITY, *,
                 overflow: str = "block", max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 mode: int = 0o600, spin: Optional[float] = None,
                 backend: Optional[str] = None) -> None:
        self._set_name(name)
        capacity = check_int(capacity, "capacity", 1, MAX_CAPACITY)
        capacity = max(_layout.MIN_CAPACITY, 1 << (capacity - 1).bit_length())
        if not isinstance(overflow, str):
            raise TypeError(f"overflow must be a str, not {type(overflow).__name__}")
        if overflow not in _layout.OVERFLOW:
            raise ValueError(f"overflow must be 'block' or 'drop_oldest', not {overflow!r}")
        max_message_size = check_int(max_message_size, "max_message_size", 0,
                                     MAX_MESSAGE_LIMIT)
        mode = check_int(mode, "mode", 0, 0o777)
        spin = check_spin(spin)
        which = _core.resolve_backend(backend)
        impl = _core.ops("pubsub", which)
        size = _layout.HEADER + capacity

        def build(fd: int, mm: mmap.mmap) -> Any:
            args = (size, fd, os.getpid(), max_message_size, _layout.OVERFLOW[overflow], spin)
            if which == "native":
                self._open(mm, *args)  # type: ignore[attr-defined]
                return None
            return impl.Publisher(mm, size, fd, self._name, *args[2:])

        fd, self._mm, self._ops = self._publish(size, mode, build, self._undo)
        self._overflow = overflow
        self._max = max_message_size
        self._pid = os.getpid()
        self._open_handle(which, fd)
        self._track()

    # _ops: the pure backend's PublisherOps (None: native)

    def _undo(self, ops: Any) -> None:
        """Let go of the end built in a segment that could not be published."""
        if ops is None:
            self._forsake()  # type: ignore[attr-defined]  # (the native handle's)
        else:
            ops.close()

    overflow = _core.Fixed[str]("_overflow", '``"block"`` or ``"drop_oldest"``.')
    max_message_size = _core.Fixed[int]("_max", "The largest message taken, in bytes.")

    @property
    def subscribers(self) -> int:
        """How many subscribers are attached and alive now."""
        self._check_open()
        info = _layout.read_info(self._fd)
        return 0 if info is None else info.subscribers

    @uses_handle
    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Publish one message (any bytes-like object). Under ``"block"``, waits up to
        ``timeout`` seconds for the slowest subscriber (TimeoutError; a message streamed in
        part is then dropped by the subscribers, never delivered in part)."""
        self._ops.send(data, check_timeout(timeout))

    # The per-message operations here are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/pubsub.c) come first and do the same in C.
    @uses_handle
    def send_many(self, messages: Iterable[Any], timeout: Optional[float] = None) -> None:
        """Publish several messages in one call. On an error after some went, the
        exception's ``messages_sent`` says how many."""
        t = check_timeout(timeout)
        blob, lens = joined_messages(messages)
        if lens:
            self._ops.send_many(blob, lens, t)

    def _too_large(self, n: int) -> NoReturn:
        """A message that drop_oldest cannot carry (the native handle's error)."""
        limit = min(self._max, _layout.whole_limit(self.capacity))
        raise ValueError(f"a message of {n} bytes is larger than drop_oldest carries "
                         f"({limit} bytes: a quarter of the ring)")

    # The await hooks: the native handle's C methods, or these.
    def _send_nowait(self, data: Any) -> bool:
        return self._ops.send_nowait(data)  # type: ignore[no-any-return]

    def _send_many_nowait(self, messages: list[Any] | tuple[Any, ...], first: int) -> int:
        blob, lens = joined_messages(messages)
        return self._ops.send_many_nowait(blob, lens, first)  # type: ignore[no-any-return]

    def _give_up(self) -> None:
        self._ops.abandon()

    async def send_async(self, data: Any, timeout: Optional[float] = None) -> None:
        """:meth:`send` on the running event loop (asyncio, uvloop): waits for room without
        blocking the loop, woken by the subscribers. Cancelled (or timed out), it has sent
        the whole message or nothing (a message streamed in part is dropped by the
        subscribers, never delivered in part)."""
        self._check_open()
        check_timeout(timeout)
        view = data if type(data) is bytes else _core.byte_view(data)
        send = self._send_nowait

        def attempt() -> Any:
            return True if send(view) else _aio.NOT_READY

        await self._awaited(attempt, timeout, self._give_up)

    async def send_many_async(self, messages: Iterable[Any],
                              timeout: Optional[float] = None) -> None:
        """:meth:`send_many` on the running event loop. Whatever ends it early (an error, a
        timeout, a cancellation), the exception's ``messages_sent`` says how many went,
        each whole."""
        self._check_open()
        check_timeout(timeout)
        listed = listed_messages(messages)
        if not listed:
            return
        send = self._send_many_nowait
        done = [0]

        def attempt() -> Any:
            done[0] += send(listed, done[0])
            return True if done[0] == len(listed) else _aio.NOT_READY

        try:
            await self._awaited(attempt, timeout, self._give_up)
        except BaseException as exc:
            if not hasattr(exc, "messages_sent"):
                exc.messages_sent = done[0]  # type: ignore[attr-defined]
            raise

    def _free(self) -> None:
        self._untrack()
        if self._ops is not None:  # (the native handle closed its end in C)
            self._ops.close()
        try:
            if os.getpid() == self._pid and same_file(self._fd, self._path):
                os.unlink(self._path)
        finally:
            self._unmap()


class _View(View):
    """A zero-copy view of one received message; released when its ``with`` block ends.

    While it lives, its ring space is held: under ``"block"`` the publisher cannot reuse
    it. If anything made from the memoryview still lives when the block ends
    (``numpy.frombuffer(view)``, a slice, ``struct.iter_unpack``), the hold lasts until the
    last of them goes; the subscriber's next call then hands the space back
    (``_backend.ring.Holds``)."""

    __slots__ = ()
    _end: Subscriber

    def _hold(self) -> None:
        self._end._views.add(self)

    def _let_go_of(self, mv: memoryview) -> None:
        sub = self._end
        sub._views.discard(self)
        if self.pos is None or sub._closed:  # a copy, or the hold went with the close
            try:
                mv.release()
            except BufferError:  # exported further: those exports outlive the block
                pass
            return
        sub._holds_of().release_view(mv, self.pos)


class Subscriber(_Endpoint, ReceivingEnd, Holds):
    """Attaches to the publisher ``name`` and receives every message published from then on.

    Waits up to ``timeout`` seconds for the publisher to appear (TimeoutError). A segment
    owned by another user is refused with PermissionError unless ``owner`` names that
    user's uid (``None``: this process's effective uid); the 65th subscriber gets
    ``OSError(EBUSY)``. ``EOFError`` once the publisher has closed or died and every whole
    message was read; a subscriber that finds its publisher dead removes the orphaned
    ``/dev/shm`` entry.
    """

    _what = "Subscriber"
    _handle_type = "SubscriberHandle"  # csrc/py/pubsub.c: recv, recv_into, recv_many...
    # _ops: the pure backend's SubscriberOps (None: native)

    def __init__(self, name: str, timeout: Optional[float] = None, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 spin: Optional[float] = None, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        self._set_name(name)
        deadline = Deadline.of(timeout)
        max_message_size = check_int(max_message_size, "max_message_size", 0,
                                     MAX_MESSAGE_LIMIT)
        spin = check_spin(spin)
        uid = owner_uid(owner)
        which = _core.resolve_backend(backend)
        impl = _core.ops("pubsub", which)
        self._views: weakref.WeakSet[_View] = weakref.WeakSet()
        wait_for(lambda: self._attach(impl, which, max_message_size, spin, uid), deadline,
                 self._name)
        self._pid = os.getpid()
        self._open_handle(which, self._fd)
        self._track()

    def _attach(self, impl: Any, which: str, max_message_size: int, spin: float, uid: int
                ) -> Optional[bool]:
        got = self._open_attached(uid)
        if got is None:
            return None
        fd, st = got
        try:
            if st.st_size <= _layout.HEADER:
                raise OSError(errno.EBADMSG, "not a publisher segment (too small)",
                              self._name)
            mm = map_segment(fd, st.st_size)
        except BaseException:
            os.close(fd)
            raise
        lock_fd = fd  # (the mapping has a description of its own: the lock is fd's alone)
        try:
            slot = _layout.claim_slot(lock_fd)
            if slot < 0:
                raise OSError(errno.EBUSY, f"all {MAX_SUBSCRIBERS} subscriber slots are "
                              "taken", self._name)
            if which == "native":  # the handle joins; the views it exports are Holds'
                addr = self._open(mm, st.st_size, lock_fd, slot,  # type: ignore[attr-defined]
                                  os.getpid(), max_message_size, spin)
                if addr is None:
                    raise NotReady
                self._mv, self._addr = memoryview(mm), addr
                self._init_holds()
            else:
                self._ops = impl.Subscriber(mm, st.st_size, lock_fd, slot, self._name,
                                            os.getpid(), max_message_size, spin)
        except BaseException as exc:
            mm.close()
            os.close(lock_fd)
            if isinstance(exc, NotReady):
                return None
            raise
        self._fd, self._mm = lock_fd, mm
        return True

    @property
    def missed(self) -> int:
        """Messages lost because the publisher overran this subscriber (drop_oldest)."""
        self._check_open()
        return self._missed()

    # The per-message operations here are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/pubsub.c) come first and do the same in C.
    @uses_handle
    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message. EOFError once the publisher has gone and all was read."""
        return self._to_end(self._ops.recv, check_timeout(timeout))  # type: ignore[no-any-return]

    @uses_handle
    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Copy the next message into ``buffer`` and return its length. ValueError if it
        does not fit (the message stays queued)."""
        return self._to_end(self._ops.recv_into, buffer,  # type: ignore[no-any-return]
                            check_timeout(timeout))

    @uses_handle
    def recv_many(self, max_messages: int = 1024, timeout: Optional[float] = None
                  ) -> list[bytes]:
        """Up to ``max_messages`` messages: waits up to ``timeout`` for the first, then
        takes what is there without waiting."""
        max_messages = check_int(max_messages, "max_messages", 1, 1 << 20)
        return self._to_end(self._ops.recv_many,
                            max_messages, check_timeout(timeout))

    async def recv_async(self, timeout: Optional[float] = None) -> bytes:
        """:meth:`recv` on the running event loop (asyncio, uvloop): waits without blocking
        the loop, woken by the publisher. Cancelled (or timed out), it has taken nothing:
        the message stays for the next call. EOFError as :meth:`recv`."""
        return await self._recv_async(self._recv_nowait, timeout)  # type: ignore[no-any-return]

    async def recv_many_async(self, max_messages: int = 1024,
                              timeout: Optional[float] = None) -> list[bytes]:
        """:meth:`recv_many` on the running event loop."""
        max_messages = check_int(max_messages, "max_messages", 1, 1 << 20)
        return await self._recv_async(  # type: ignore[no-any-return]
            lambda: self._recv_many_nowait(max_messages), timeout)

    async def _recv_async(self, take: Callable[[], Any], timeout: Optional[float] = None
                          ) -> Any:
        self._check_open()
        check_timeout(timeout)

        def attempt() -> Any:
            got = take()
            return _aio.NOT_READY if got is None else got

        return await self._awaited(attempt, timeout)

    # The hooks of the awaitables and of recv_view: the native handle's C methods, or these.
    def _recv_nowait(self) -> Optional[bytes]:
        try:
            return self._ops.recv(0.0)  # type: ignore[no-any-return]
        except TimeoutError:
            return None

    def _recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]:
        try:
            return self._ops.recv_many(max_messages, 0.0)  # type: ignore[no-any-return]
        except TimeoutError:
            return None

    def _view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        return self._to_end(self._ops.recv_view, timeout)  # type: ignore[no-any-return]

    def _missed(self) -> int:
        return self._ops.missed  # type: ignore[no-any-return]

    def _holds_of(self) -> SubscriberOps | Holds:
        """Who keeps the holds of this subscriber's views: the pure backend's object, or
        (native) the subscriber itself, whose handle moves its cursor (``set_hold``)."""
        return self._ops if self._ops is not None else self

    def _ended(self) -> None:
        """The stream ended (EOFError follows): remove the name of a publisher that died
        without removing it."""
        self._remove_orphan()

    @uses_handle
    def recv_view(self, timeout: Optional[float] = None) -> _View:
        """The next message as a read-only memoryview, for a ``with`` block. Under
        ``"block"`` it points into the ring (no copy) and the publisher does not reuse that
        space until the block ends (or, if anything made from the view still lives then,
        until the last of it has gone); under ``"drop_oldest"`` (where the publisher never
        waits) and for streamed messages it is a view of a copy."""
        mv, pos = self._view(check_timeout(timeout))
        return _View(self, mv, pos)

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the publisher closes."""
        return _core.messages(self)

    def _to_end(self, call: Callable[..., _T], *args: Any) -> _T:
        """call(*args); when it says the stream ended (EOFError), first remove the name of a
        publisher that died without removing it."""
        try:
            return call(*args)
        except EOFError:
            self._ended()
            raise

    def _free(self) -> None:
        """Detach (the publisher stops waiting for this subscriber); views still in
        ``with`` blocks are released (their memory stays mapped while they live)."""
        for view in list(self._views):
            view.release()
        self._holds_of().drop_taken()
        self._untrack()
        if self._ops is not None:
            self._ops.close()
        else:  # (the native handle freed its slot in C)
            self._mv.release()
        self._unmap()


# ---------------------------------------------------------------------------- fastipc ls


@dataclass
class PublisherInfo:
    """A publisher segment as ``fastipc ls`` shows it."""

    kind: str
    name: str
    size: int
    owner: int  # the publisher's pid (display only: it may be another namespace's)
    alive: bool  # its liveness lock is held (closed publishers are not alive)
    detail: str


def describe(path: str) -> Optional[PublisherInfo]:
    """What the file at ``path`` is if it is a publisher segment, else None."""
    fd = open_to_inspect(path)
    if fd is None:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        info = _layout.read_info(fd)
        if info is None:
            return None
        size = os.fstat(fd).st_size
        alive = info.state == _layout.ST_OPEN and _layout.lock_held(fd, _layout.LOCK)
    except OSError:
        return None
    finally:
        os.close(fd)
    state = "open" if info.state == _layout.ST_OPEN else "closed"
    if info.state == _layout.ST_OPEN and not alive:
        state = "dead"
    detail = (f"publisher {state}, {info.subscribers} subscriber"
              f"{'' if info.subscribers == 1 else 's'}, {info.overflow}, "
              f"{info.messages} messages, capacity {info.capacity}")
    return PublisherInfo("publisher", os.path.basename(path), size, info.pid, alive, detail)
