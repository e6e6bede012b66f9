"""Anonymous pipes and named pipes (FIFOs), with raw and framed I/O, blocking or awaited.

>>> from fastipc import pipe
>>> r, w = pipe.pipe()
>>> w.send(b"hello")            # one whole message (4-byte big-endian length + payload)
>>> r.recv(timeout=1.0)
b'hello'

Writing to a pipe whose reader has gone raises :class:`BrokenPipeError`; it never kills the
process with SIGPIPE, whatever the process's SIGPIPE disposition (see the README).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import struct
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union, cast

from fastipc import _core
from fastipc._backend.pipe import Module, PureModule, Stream, frames_within
from fastipc._core import (
    Deadline,
    check_create_mode,
    check_int,
    check_timeout,
    uses_handle,
    uses_handle_async,
)

if TYPE_CHECKING:  # mypy checks both backend modules against the contract
    from fastipc._native import pipe as _native_pipe
    from fastipc._pure import pipe as _pure_pipe

    _NATIVE: Module = _native_pipe
    _PURE: PureModule = _pure_pipe

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "FIFO", "PipeReader", "PipeWriter", "pipe"]

DEFAULT_MAX_MESSAGE_SIZE = 64 << 20
MAX_FRAME = 0xFFFFFFFF  # the 4-byte length prefix
PathLike = Union[str, "os.PathLike[str]"]
_E = TypeVar("_E", bound="StreamEnd")
_T = TypeVar("_T")
_HEADER = struct.Struct(">I")
_PEER_POLL = 0.02  # longest pause between two looks for a FIFO's peer


def _impl(backend: Optional[str]) -> Module:
    return cast(Module, _core.ops("pipe", backend))


def _pure() -> PureModule:
    return cast(PureModule, _core.ops("pipe", "pure"))


def _check_fd(fd: Any) -> int:
    number = check_int(fd, "fd", 0, 2**31 - 1)
    os.fstat(number)  # EBADF now rather than at the first read
    return number


def _pipe_max_size() -> Optional[int]:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def _set_size(impl: Module, fd: int, size: int) -> int:
    try:
        return impl.set_size(fd, size)
    except PermissionError as exc:
        raise PermissionError(
            errno.EPERM,
            f"pipe size {size} exceeds /proc/sys/fs/pipe-max-size ({_pipe_max_size()}); "
            "raise it with `sysctl fs.pipe-max-size=N` or ask for less",
        ) from exc


# ---------------------------------------------------------------------------- awaiting


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Awaiter(_core.Handle):
    """A :class:`~fastipc._core.Handle` whose awaitables wait on the running loop
    (``loop.add_reader`` / ``add_writer``, never a thread, never a busy poll), and whose
    ``close()`` ends those waits, from any thread."""

    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]

    def _open_handle(self, backend: str, fd: int = -1) -> None:
        self._waiters = []
        super()._open_handle(backend, fd)

    def _wake(self) -> None:
        for loop, fut in list(self._waiters):
            try:
                loop.call_soon_threadsafe(_done, fut)
            except RuntimeError:  # that loop is closed: nothing waits there any more
                pass

    async def _ready(self, events: str, deadline: Deadline, pause: float = -1.0) -> None:
        """Wait until the fd is readable (``events="r"``) or writable (``"w"``), at most
        until the deadline or for ``pause`` seconds (>= 0); no fd (``""``): only sleep.
        ValueError once the object is closed; the caller tries its operation again."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fd = self._fd
        if events == "r":
            loop.add_reader(fd, _done, fut)
        elif events == "w":
            loop.add_writer(fd, _done, fut)
        left = deadline.left()
        if pause >= 0:
            left = pause if left < 0 else min(left, pause)
        timer = loop.call_later(left, _done, fut) if left >= 0 else None
        entry = (loop, fut)
        self._waiters.append(entry)
        try:
            if self._closed:
                raise self._closed_error()
            await fut
        finally:
            self._waiters.remove(entry)
            if timer is not None:
                timer.cancel()
            if events == "r":
                loop.remove_reader(fd)
            elif events == "w":
                loop.remove_writer(fd)
        if self._closed:
            raise self._closed_error()


class StreamEnd(Awaiter):
    """What every stream end shares (pipe ends here, socket clients in fastipc.client): the
    fd and its life cycle. The fd is made non-blocking: every wait is a poll that also
    watches the stream's wake-up fd, so that ``close()`` from another thread ends it.

    Natively the end is its handle (``_handle_type``, csrc/py/pipe.c), which embeds the C
    stream: the per-message methods and the no-wait steps below are the handle's C methods,
    the calls are counted in C. On the pure backend ``_stream`` is the Python stream and the
    methods of these classes count themselves busy (:func:`~fastipc._core.uses_handle`)."""

    _what = "stream"
    _tears = True  # a framed write cut short closes the object (see _leave)
    _stream: Optional[Stream] = None  # the pure backend's stream (None: native)
    _tail: Optional[asyncio.Future[None]] = None  # the rest of a frame a cancelled send owes

    def _open_stream(self, fd: int, backend: str, *, reading: bool, sock: bool = False,
                     max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        os.set_blocking(fd, False)
        if backend == "native":
            self._open(fd, reading, sock, max_message_size, self._tears)  # type: ignore[attr-defined]
        else:
            self._stream = _pure().stream(fd, reading=reading, sock=sock,
                                          max_message_size=max_message_size, what=self._what)
        self._open_handle(backend, fd)

    def _wake(self) -> None:
        if self._stream is not None:  # natively, the handle woke its C waits
            self._stream.wake()
        super()._wake()

    def _free(self) -> None:
        if self._stream is not None:  # natively, the handle closed the fds in C
            self._stream.free()

    def _leave(self) -> None:
        """(Pure backend.) After a framed write failed or was interrupted: if part of the
        frame went, the stream is out of step, so the object closes itself once the call
        left (its exception stays the write's): the peer sees the end of the stream, never
        half a message. The native handle does the same in C."""
        super()._leave()
        stream = self._stream
        if self._tears and stream is not None and stream.torn and not self._closed:
            self.close()

    # The limit a receive checks: the native handle's own, or the pure stream's.
    @property
    def _limit(self) -> int:
        return self._stream.max_message_size  # type: ignore[union-attr]

    @_limit.setter
    def _limit(self, value: int) -> None:
        self._stream.max_message_size = value  # type: ignore[union-attr]

    # The no-wait steps of the awaitables: the native handle's C methods, or these.
    def _send_step(self, data: Any, offset: int) -> Optional[int]:
        """One framed write from byte ``offset`` without waiting: None once the whole frame
        went, else how much of it has gone."""
        return self._put_step(self._stream.send, data, offset)  # type: ignore[union-attr]

    def _write_step(self, data: Any, offset: int) -> Optional[int]:
        """:meth:`_send_step` for raw bytes."""
        return self._put_step(self._stream.write, data, offset)  # type: ignore[union-attr]

    @staticmethod
    def _put_step(put: Callable[[Any, float, int], Any], data: Any,
                  offset: int) -> Optional[int]:
        try:
            put(data, 0.0, offset)
            return None
        except TimeoutError as exc:
            return getattr(exc, "characters_written", offset)

    def _recv_step(self) -> Optional[bytes]:
        """The next frame without waiting, or None."""
        try:
            return self._stream.recv(0.0)  # type: ignore[union-attr]
        except TimeoutError:
            return None

    def _read_step(self, n: int) -> Optional[bytes]:
        """Up to ``n`` raw bytes without waiting (``b""`` at the end), or None."""
        try:
            return self._stream.read(n, 0.0)  # type: ignore[union-attr]
        except TimeoutError:
            return None

    async def _send_async(self, data: Any, timeout: Optional[float],
                          step: Optional[Callable[[Any, int], Optional[int]]] = None,
                          went: Optional[list[int]] = None) -> None:
        """Awaited send of ``data`` (a frame, or raw bytes for an end that does not tear;
        ``step`` if given: ready-made frames, sent as one),
        tried without waiting and resumed where it stopped each time the fd is writable
        again.

        Cancelled before any byte went, it sent nothing. Once part of the message went, it
        is finished whatever happens: a cancellation then is absorbed and the call returns
        normally once the message is whole (so that the caller knows it went; within the
        call's timeout, else the object closes, as for any cut-short frame). Sends wait
        for such a finishing send before they start. ``went[0]``, if given, follows how
        many bytes of ``data`` went.

        A frame cut short closes the object, and the call raises its own exception (as the
        blocking ``send`` does), not the ValueError of a closed object."""
        if step is None:
            step = self._send_step if self._tears else self._write_step
        deadline = Deadline.of(timeout)
        await self._after_tail()
        offset = step(data, 0)
        if offset is None:
            return
        while True:
            if offset:
                break
            if deadline.expired():
                raise deadline.error()
            await self._ready("w", deadline)
            offset = step(data, 0)
            if offset is None:
                return
        if went is not None:
            went[0] = offset
        tail: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail = tail
        try:
            while True:
                if deadline.expired():
                    raise deadline.error()
                try:
                    await self._ready("w", deadline)
                except asyncio.CancelledError:
                    continue  # absorbed: the rest of the message goes first
                offset = step(data, offset)
                if offset is None:
                    return
                if went is not None:
                    went[0] = offset
        except BaseException as exc:
            if self._tears:  # part of a frame went: the peer must see the end, not half
                self._close_raising(exc)
            raise
        finally:
            self._tail = None
            tail.set_result(None)

    async def _after_tail(self) -> None:
        """Wait until no cancelled send still owes the rest of its frame."""
        while True:
            if self._tail is None:
                break
            await asyncio.shield(self._tail)

    async def _write_async(self, data: Any, timeout: Optional[float]) -> int:
        """Awaited raw write of all of ``data``: its length. Not finished (a timeout, an
        error, a cancellation), the exception's ``characters_written`` says how much went."""
        size = len(_core.byte_view(data))
        deadline = Deadline.of(timeout)
        await self._after_tail()
        offset = 0
        while True:
            went = self._write_step(data, offset)
            if went is None:
                return size
            offset = went
            try:
                if deadline.expired():
                    raise deadline.error()
                await self._ready("w", deadline)
            except (TimeoutError, asyncio.CancelledError) as exc:
                exc.characters_written = offset  # type: ignore[union-attr]
                raise

    async def _recv_async(self, timeout: Optional[float],
                          step: Optional[Callable[[], Optional[_T]]] = None) -> _T:
        """Awaited receive (a frame; what ``step`` returns if given), tried without waiting
        each time the fd is readable."""
        deadline = Deadline.of(timeout)
        if step is None:
            step = cast("Callable[[], Optional[_T]]", self._recv_step)
        while True:
            out = step()
            if out is not None:
                return out
            if deadline.expired():
                raise deadline.error() from None
            await self._ready("r", deadline)


class PipeWriter(StreamEnd):
    """The write end of a pipe or FIFO. Takes ownership of ``fd``."""

    _what = "PipeWriter"
    _handle_type = "PipeWriterHandle"  # csrc/py/pipe.c: write, send, send_many

    def __init__(self, fd: int, *, backend: Optional[str] = None) -> None:
        self._open_stream(_check_fd(fd), _core.resolve_backend(backend), reading=False)

    @property
    def pipe_size(self) -> int:
        """The kernel's buffer for this pipe in bytes (F_GETPIPE_SZ); settable."""
        return _impl(self._backend).get_size(self.fileno())

    @pipe_size.setter
    def pipe_size(self, size: int) -> None:
        _set_size(_impl(self._backend), self.fileno(), check_int(size, "size", 1, 2**31 - 1))

    # The per-message operations below are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/pipe.c) come first and do the same in C.
    @uses_handle
    def write(self, data: Any, timeout: Optional[float] = None) -> int:
        """Write all of ``data`` (raw bytes, no framing) and return its length.

        TimeoutError if the pipe stays full for ``timeout`` seconds; its
        ``characters_written`` says how much went. BrokenPipeError if no reader is left.
        """
        return self._stream.write(data, check_timeout(timeout), 0)  # type: ignore[union-attr]

    @uses_handle
    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send ``data`` as one message: a 4-byte big-endian length, then the bytes.

        A message that was cut short (a timeout or an error after part of it was written)
        would desynchronise the stream, so the writer then closes itself: the reader sees the
        end of the stream, never half a message.
        """
        self._stream.send(data, check_timeout(timeout))  # type: ignore[union-attr]

    @uses_handle
    def send_many(self, messages: Iterable[Any], timeout: Optional[float] = None) -> None:
        """Send each of ``messages`` as one message, all in one write (or as few as the pipe
        allows): far cheaper per message than ``send`` for a stream of small ones. Timeouts
        and errors as for :meth:`send`; the receiver may take them with ``recv`` or
        ``recv_many``. A batch that stopped part way (a timeout, an error, an exception
        raised into the call) raises with ``messages_sent``: how many of the messages went
        whole, which the reader gets (a message cut short closes the writer, as for
        :meth:`send`)."""
        if isinstance(messages, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes an iterable of messages, not one message")
        batch = list(messages)
        t = check_timeout(timeout)
        if batch:
            self._stream.send_many(batch, t)  # type: ignore[union-attr]

    @uses_handle_async
    async def send_async(self, data: Any, timeout: Optional[float] = None) -> None:
        """Awaitable :meth:`send` on the running loop. Cancelled before any byte of the
        message went, it sent nothing; once part went, the rest is still sent (the frame is
        never torn) and a later ``send_async`` waits for it."""
        await self._send_async(data, timeout)

    @uses_handle_async
    async def write_async(self, data: Any, timeout: Optional[float] = None) -> int:
        """Awaitable :meth:`write` on the running loop: all of ``data``, its length.
        Raw bytes need no whole frame: a timeout, an error or a cancellation ends it where
        it is, and the exception's ``characters_written`` (``CancelledError``'s too) says
        how much went."""
        return await self._write_async(data, timeout)

    @uses_handle_async
    async def send_many_async(self, messages: Iterable[Any],
                              timeout: Optional[float] = None) -> None:
        """Awaitable :meth:`send_many` on the running loop: the messages go as one batch,
        cancelled before any byte went it sent none of them, once part went the rest is still
        sent (as :meth:`send_async` finishes a frame it began). Stopped part way, the
        exception's ``messages_sent`` says how many went whole, as for :meth:`send_many`."""
        if isinstance(messages, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes an iterable of messages, not one message")
        batch = list(messages)
        check_timeout(timeout)
        if not batch:
            return
        frames, sizes = _frames(batch)
        went = [0]
        try:
            await self._send_async(frames, timeout, self._write_step, went)
        except BaseException as exc:
            exc.messages_sent = frames_within(sizes, went[0])  # type: ignore[attr-defined]
            raise


def _frames(messages: list[Any]) -> tuple[bytes, list[int]]:
    """``messages`` framed (length prefix, payload) in one buffer, and their sizes."""
    parts: list[Any] = []
    sizes: list[int] = []
    for m in messages:
        view = _core.byte_view(m)
        if len(view) > MAX_FRAME:
            raise OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE))
        parts += (_HEADER.pack(len(view)), view)
        sizes.append(len(view))
    return b"".join(parts), sizes


class PipeReader(StreamEnd):
    """The read end of a pipe or FIFO. Takes ownership of ``fd``.

    ``max_message_size`` bounds the length a frame may announce (checked before anything is
    allocated).
    """

    _what = "PipeReader"
    _handle_type = "PipeReaderHandle"  # csrc/py/pipe.c: read, recv, recv_many

    def __init__(
        self,
        fd: int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        backend: Optional[str] = None,
    ) -> None:
        max_message_size = check_int(max_message_size, "max_message_size", 0, MAX_FRAME)
        self._open_stream(_check_fd(fd), _core.resolve_backend(backend), reading=True,
                          max_message_size=max_message_size)

    pipe_size = PipeWriter.pipe_size

    @property
    def max_message_size(self) -> int:
        self._check_open()
        return self._limit

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._check_open()
        self._limit = check_int(value, "max_message_size", 0, MAX_FRAME)

    # The per-message operations below are the pure backend's (see PipeWriter).
    @uses_handle
    def read(self, n: int = 65536, timeout: Optional[float] = None) -> bytes:
        """Up to ``n`` raw bytes, as soon as any are there; ``b""`` at end of stream."""
        n = check_int(n, "n", 0, 2**31 - 1)
        t = check_timeout(timeout)
        return self._stream.read(n, t) if n else b""  # type: ignore[union-attr]

    @uses_handle
    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next whole message. EOFError at end of stream; a message cut short by the
        writer's end is dropped, never returned. OSError(EMSGSIZE) for a frame announcing more
        than ``max_message_size`` bytes."""
        return self._stream.recv(check_timeout(timeout))  # type: ignore[union-attr]

    @uses_handle
    def recv_many(self, max_messages: int = 1024, timeout: Optional[float] = None) -> list[bytes]:
        """Wait like :meth:`recv` for the next message, then take every further whole message
        already read ahead, up to ``max_messages`` in all, without waiting again."""
        n = check_int(max_messages, "max_messages", 1, 2**31 - 1)
        return self._stream.recv_many(n, check_timeout(timeout))  # type: ignore[union-attr]

    @uses_handle_async
    async def recv_async(self, timeout: Optional[float] = None) -> bytes:
        """Awaitable :meth:`recv` on the running loop. Cancelled, it leaves the message (and
        any part of it read ahead) for the next call."""
        return await self._recv_async(timeout)

    @uses_handle_async
    async def read_async(self, n: int = 65536, timeout: Optional[float] = None) -> bytes:
        """Awaitable :meth:`read` on the running loop. Cancelled, it took nothing."""
        n = check_int(n, "n", 0, 2**31 - 1)
        if not n:
            check_timeout(timeout)
            return b""
        return await self._recv_async(timeout, partial(self._read_step, n))

    @uses_handle_async
    async def recv_many_async(self, max_messages: int = 1024,
                              timeout: Optional[float] = None) -> list[bytes]:
        """Awaitable :meth:`recv_many` on the running loop. Cancelled, it took nothing."""
        n = check_int(max_messages, "max_messages", 1, 2**31 - 1)
        return await self._recv_async(timeout, partial(self._recv_many_step, n))

    def _recv_many_step(self, n: int) -> Optional[list[bytes]]:
        """:meth:`recv_many` without waiting, or None."""
        try:
            return self.recv_many(n, 0.0)
        except TimeoutError:
            return None

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the writer closes."""
        return _core.messages(self)


def pipe(
    size: Optional[int] = None,
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    backend: Optional[str] = None,
) -> tuple[PipeReader, PipeWriter]:
    """A new anonymous pipe: ``(reader, writer)``.

    ``size`` sets the kernel buffer (F_SETPIPE_SZ; the kernel rounds it up to a power-of-two
    number of pages and caps it at /proc/sys/fs/pipe-max-size for unprivileged users). A
    larger buffer lets bulk transfers run with fewer wake-ups.
    """
    impl = _impl(backend)
    if size is not None:
        size = check_int(size, "size", 1, 2**31 - 1)
    r, w = impl.open_pipe(0)
    try:
        if size is not None:
            _set_size(impl, w, size)
        reader = PipeReader(r, max_message_size=max_message_size, backend=backend)
    except BaseException:
        os.close(r)
        os.close(w)
        raise
    try:
        return reader, PipeWriter(w, backend=backend)
    except BaseException:
        reader.close()
        os.close(w)
        raise


class FIFO(Awaiter):
    """A named pipe at ``path``.

    ``create=False`` (the default) attaches to an existing one (``FileNotFoundError`` if
    absent, ``ValueError`` if the path is not a FIFO); ``create=True`` makes it
    (``FileExistsError`` if the path exists). ``open_reader()`` and ``open_writer()`` each
    wait, up to ``timeout`` seconds, for the other end to be opened by someone, without
    blocking in the kernel, so no thread or fd is left behind by a timeout; ``close()`` from
    another thread ends such a wait with ValueError. ``close()`` does not remove the FIFO;
    ``unlink()`` does.
    """

    _what = "FIFO"

    def __init__(
        self,
        path: PathLike,
        create: bool = False,
        mode: int = 0o600,
        *,
        backend: Optional[str] = None,
    ) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, not {type(path).__name__}")
        self._path = os.fspath(path)
        if not isinstance(self._path, str):
            raise TypeError("path must be a str path")
        if "\0" in self._path:
            raise ValueError("path must not contain NUL characters")
        mode = check_create_mode(create, mode)
        which = _core.resolve_backend(backend)
        self._impl = _impl(which)
        if create:
            os.mkfifo(self._path, mode)
        else:
            st = os.stat(self._path)
            if not stat.S_ISFIFO(st.st_mode):
                raise ValueError(f"{self._path!r} exists but is not a FIFO")
        self._woken = threading.Event()
        self._open_handle(which)

    path = _core.Fixed[str]("_path", "The FIFO's path.")

    def _describe(self) -> str:
        return repr(self._path)

    def _wake(self) -> None:
        self._woken.set()
        super()._wake()

    def _open(self, flags: int) -> int:
        fd = os.open(self._path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{self._path!r} is no longer a FIFO")
        return fd

    def _try_writer(self) -> int:
        """The write end's fd, or -1 while no reader has the FIFO open."""
        try:
            return self._open(os.O_WRONLY)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
            return -1

    def _pause(self, deadline: Deadline, delay: float) -> float:
        """Wait ``delay`` (less if the deadline comes first) before looking for the peer
        again: TimeoutError once it passed, ValueError once closed. The next delay."""
        if deadline.expired():
            raise deadline.error(self._path)
        left = deadline.left()
        self._woken.wait(delay if left < 0 else min(delay, left))
        if self._closed:
            raise self._closed_error()
        return min(delay * 2, _PEER_POLL)

    async def _pause_async(self, deadline: Deadline, delay: float) -> float:
        if deadline.expired():
            raise deadline.error(self._path)
        await self._ready("", deadline, delay)
        return min(delay * 2, _PEER_POLL)

    def _find_peer(self, reading: bool) -> Generator[int, None, None]:
        """Look for the peer end: yields -1 each time the caller should pause before looking
        again, then the fd of our end once the peer is there (closed if the caller gives
        up meanwhile: the generator is closed)."""
        if not reading:
            while True:
                if (fd := self._try_writer()) >= 0:
                    break
                yield -1
            yield fd
            return
        fd = self._open(os.O_RDONLY)
        try:
            while True:
                if self._impl.writer_present(fd):
                    break
                yield -1
        except BaseException:
            os.close(fd)
            raise
        yield fd

    def _open_end(self, reading: bool, timeout: Optional[float], kw: dict[str, Any]) -> Any:
        deadline, delay = Deadline.of(timeout), 0.001
        with contextlib.closing(self._find_peer(reading)) as steps:
            for fd in steps:
                if fd >= 0:
                    return self._end(fd, PipeReader if reading else PipeWriter, kw)
                delay = self._pause(deadline, delay)
        raise AssertionError("unreachable: _find_peer ends with an fd")

    async def _open_end_async(self, reading: bool, timeout: Optional[float],
                              kw: dict[str, Any]) -> Any:
        deadline, delay = Deadline.of(timeout), 0.001
        with contextlib.closing(self._find_peer(reading)) as steps:
            for fd in steps:
                if fd >= 0:
                    return self._end(fd, PipeReader if reading else PipeWriter, kw)
                delay = await self._pause_async(deadline, delay)
        raise AssertionError("unreachable: _find_peer ends with an fd")

    @uses_handle
    def open_writer(self, timeout: Optional[float] = None) -> PipeWriter:
        """Open the write end once a reader has the FIFO open; TimeoutError otherwise."""
        return cast(PipeWriter, self._open_end(False, timeout, {}))

    @uses_handle
    def open_reader(
        self, timeout: Optional[float] = None, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> PipeReader:
        """Open the read end once a writer has the FIFO open; TimeoutError otherwise."""
        return cast(PipeReader,
                    self._open_end(True, timeout, {"max_message_size": max_message_size}))

    @uses_handle_async
    async def open_writer_async(self, timeout: Optional[float] = None) -> PipeWriter:
        """Awaitable :meth:`open_writer` (it looks for the reader every few milliseconds:
        the kernel announces no reader's arrival on any fd)."""
        return cast(PipeWriter, await self._open_end_async(False, timeout, {}))

    @uses_handle_async
    async def open_reader_async(
        self, timeout: Optional[float] = None, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> PipeReader:
        """Awaitable :meth:`open_reader` (it looks for the writer every few milliseconds)."""
        return cast(PipeReader, await self._open_end_async(
            True, timeout, {"max_message_size": max_message_size}))

    def _end(self, fd: int, kind: Callable[..., _E], kw: dict[str, Any]) -> _E:
        try:
            return kind(fd, backend=self._backend, **kw)
        except BaseException:
            os.close(fd)
            raise

    def unlink(self) -> None:
        """Remove the FIFO from the file system, whether this object is open or closed:
        FileNotFoundError once the path is gone. Ends already opened stay usable."""
        os.unlink(self._path)

    def close(self) -> None:
        """Forget the FIFO (ends already opened stay open; waits for a peer end with
        ValueError). Idempotent."""
        super().close()
