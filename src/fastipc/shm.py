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
import fcntl
import mmap
import os
import stat
import time
from collections.abc import Iterable, Iterator
from types import ModuleType, TracebackType
from typing import Any, Optional

from fastipc import _core
from fastipc._core import check_int, check_timeout, closed_error

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Reader",
    "SharedMemory",
    "Writer",
    "unlink",
]

SHM_DIR = "/dev/shm"
HEADER = 256
DEFAULT_CAPACITY = 1 << 20
MIN_CAPACITY = 4096
MAX_CAPACITY = 1 << 32
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
MAX_MESSAGE_LIMIT = (1 << 63) - 1
MAX_SPIN = 1.0
DEFAULT_SPIN = 50e-6


def _default_spin() -> float:
    """Spin before sleeping only where the peer can run meanwhile: on a machine with more
    than one CPU (this process's own affinity does not matter: the peer may be pinned to
    another CPU)."""
    return DEFAULT_SPIN if (os.cpu_count() or 1) > 1 else 0.0


def _path(name: Any) -> tuple[str, str]:
    """(name without the slash, path under /dev/shm) for a user-supplied name."""
    bare = _core.shm_name(name)[1:]
    return bare, f"{SHM_DIR}/{bare}"


def _check_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {type(value).__name__}")
    return value


def _check_spin(spin: Optional[float]) -> float:
    if spin is None:
        return _default_spin()
    if isinstance(spin, bool) or not isinstance(spin, (int, float)):
        raise TypeError(f"spin must be a number of seconds or None, not {type(spin).__name__}")
    if not 0 <= spin <= MAX_SPIN:
        raise ValueError(f"spin must be between 0 and {MAX_SPIN} seconds, not {spin!r}")
    return float(spin)


def _open(path: str, flags: int, mode: int = 0o600) -> int:
    return os.open(path, flags | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, mode)


def _create(path: str, size: int, mode: int) -> int:
    """Create the segment exclusively and back every page of it now, so that a full /dev/shm
    is an OSError here rather than a SIGBUS at the first write."""
    fd = _open(path, os.O_CREAT | os.O_EXCL, mode)
    try:
        os.ftruncate(fd, size)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise OSError(
                    exc.errno,
                    f"cannot back {size} bytes of shared memory: {SHM_DIR} is too small "
                    f"(see `df {SHM_DIR}`; remount it with a larger size=, or run docker "
                    "with --shm-size)",
                    path,
                ) from None
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def unlink(name: str) -> None:
    """Remove the segment ``name`` from /dev/shm (FileNotFoundError if absent)."""
    os.unlink(_path(name)[1])


class SharedMemory:
    """A named POSIX shared memory segment, mapped read-write.

    ``create=True`` creates it exclusively with ``size`` bytes (``FileExistsError`` if the
    name is taken); ``create=False`` attaches to an existing one (``FileNotFoundError`` if
    absent) and maps its real size, or the first ``size`` bytes when ``size`` is given (a
    larger ``size`` than the segment is a ``ValueError``: attaching never resizes). Nothing
    is registered with ``multiprocessing``'s resource tracker: ``close()`` unmaps, only
    ``unlink()`` removes the name.
    """

    def __init__(self, name: str, size: int = 0, create: bool = False, mode: int = 0o600, *,
                 backend: Optional[str] = None) -> None:
        self._fd = -1
        self._name, self._path = _path(name)
        size = check_int(size, "size", 0, 2**63 - 1)
        create = _check_bool(create, "create")
        mode = check_int(mode, "mode", 0, 0o777)
        self._backend = _core.resolve_backend(backend)
        if create:
            if size == 0:
                raise ValueError("size must be > 0 to create a segment")
            fd = _create(self._path, size, mode)
        else:
            fd = _open(self._path, 0)
        try:
            real = os.fstat(fd).st_size
            if not create:
                if real == 0:
                    raise ValueError(f"shared memory segment {self._name!r} is empty")
                if size > real:
                    raise ValueError(
                        f"size {size} exceeds the segment {self._name!r} ({real} bytes)")
                size = size or real
            self._mmap = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            if create:
                os.unlink(self._path)
            raise
        self._fd = fd
        self._size = size
        self._buf: Optional[memoryview] = memoryview(self._mmap)

    @property
    def name(self) -> str:
        return self._name

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def size(self) -> int:
        """Bytes mapped (the segment's size from fstat unless a smaller size was asked)."""
        self._check()
        return self._size

    @property
    def buf(self) -> memoryview:
        """The mapped bytes (zero copy)."""
        self._check()
        assert self._buf is not None
        return self._buf

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def _check(self) -> None:
        if self._fd < 0:
            raise closed_error("SharedMemory")

    def fileno(self) -> int:
        self._check()
        return self._fd

    def close(self) -> None:
        """Unmap and close. Idempotent. BufferError while views of ``buf`` are alive."""
        if self._fd < 0:
            return
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        self._mmap.close()  # BufferError if a user still holds a slice of buf
        fd, self._fd = self._fd, -1
        os.close(fd)

    def unlink(self) -> None:
        """Remove the name from /dev/shm; mappings stay valid until closed."""
        os.unlink(self._path)

    def __enter__(self) -> SharedMemory:
        self._check()
        return self

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            try:
                self.close()
            except BufferError:
                pass

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"size={self._size}"
        return f"<SharedMemory {self._name!r} {state}>"


# ---------------------------------------------------------------------------- the channel


class _End:
    """What Writer and Reader share: the segment, its mapping and the backend's ops."""

    _what = "channel end"
    _ops: Any = None
    _fd = -1
    _mmap: Any = None
    _size = 0

    def _setup(self, name: Any, backend: Optional[str]) -> None:
        self._pid = os.getpid()
        self._name, self._path = _path(name)
        self._backend = _core.resolve_backend(backend)
        self._impl: ModuleType = _core.ops("shm", self._backend)

    @property
    def name(self) -> str:
        return self._name

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def closed(self) -> bool:
        return self._ops is None

    @property
    def capacity(self) -> int:
        """Bytes in the ring."""
        self._live()
        return self._size - HEADER

    @property
    def spin(self) -> float:
        """Longest spin, in seconds, before a wait sleeps on the futex (0: sleep at once)."""
        return float(self._live().spin)

    @spin.setter
    def spin(self, value: float) -> None:
        self._live().spin = _check_spin(value)

    def stats(self) -> dict[str, int]:
        """How waits ended: ``{"spins": n, "sleeps": m}`` since this end was opened."""
        spins, sleeps = self._live().stats()
        return {"spins": spins, "sleeps": sleeps}

    def fileno(self) -> int:
        """The shm segment's fd (non-inheritable)."""
        self._live()
        return self._fd

    def _live(self) -> Any:
        ops = self._ops
        if ops is None:
            raise closed_error(self._what)
        return ops

    def _map(self, fd: int) -> None:
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._mmap = mmap.mmap(fd, self._size) if self._size else None

    def _unmap(self) -> None:
        mm, self._mmap = self._mmap, None
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view escaped its with block: the GC unmaps later
                pass
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Any:
        self._live()
        return self

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        if getattr(self, "_ops", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._ops is None else f"capacity={self._size - HEADER}"
        return f"<{type(self).__name__} {self._name!r} {state} backend={self._backend}>"


class Writer(_End):
    """The sending end of a channel: creates ``/dev/shm/<name>`` and removes it on close.

    ``capacity`` is the ring's size in bytes (rounded up to a power of two, at least 4096).
    ``max_message_size`` bounds one message. ``spin`` is how long a full ring is polled
    before sleeping (default 50 µs on more than one CPU, 0 on one). ``BrokenPipeError``
    once the reader has closed or died.
    """

    _what = "Writer"

    def __init__(self, name: str, capacity: int = DEFAULT_CAPACITY, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, mode: int = 0o600,
                 spin: Optional[float] = None, backend: Optional[str] = None) -> None:
        self._setup(name, backend)
        capacity = check_int(capacity, "capacity", 1, MAX_CAPACITY)
        capacity = max(MIN_CAPACITY, 1 << (capacity - 1).bit_length())
        max_message_size = check_int(max_message_size, "max_message_size", 0,
                                     MAX_MESSAGE_LIMIT)
        mode = check_int(mode, "mode", 0, 0o777)
        spin = _check_spin(spin)
        fd = _create(self._path, HEADER + capacity, mode)
        try:
            self._map(fd)
            self._ops = self._impl.WriterOps(self._mmap, self._size, self._name, os.getpid(),
                                             max_message_size, spin)
            self.send = self._ops.make_send()  # type: ignore[method-assign]
            self.send.__doc__ = Writer.send.__doc__
        except BaseException:
            self._unmap()
            os.unlink(self._path)
            raise
        self._max = max_message_size

    @property
    def max_message_size(self) -> int:
        self._live()
        return self._max

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send one message (any bytes-like object). Waits up to ``timeout`` seconds for
        room; TimeoutError if the ring stays full (a message streamed in chunks that was
        cut short is dropped by the reader, never delivered in part)."""
        # (while open, the instance's own `send`, the backend's one-call fast path, shadows
        # this method; it is reached through the class, e.g. Writer.send(w, data))
        self._live()
        self.__dict__["send"](data, timeout)

    def send_many(self, messages: Iterable[Any], timeout: Optional[float] = None) -> None:
        """Send several messages in one call (one C call on the native backend). On an
        error after some went, the exception's ``messages_sent`` says how many."""
        ops = self._live()
        t = -1.0 if timeout is None else check_timeout(timeout)
        if not isinstance(messages, (list, tuple)):
            if isinstance(messages, (bytes, bytearray, memoryview, str)):
                raise TypeError("send_many takes an iterable of messages, not one message")
            messages = list(messages)
        if not messages:
            return
        try:
            blob = b"".join(messages)
        except TypeError:
            for m in messages:
                if isinstance(m, str) or not _is_buffer(m):
                    raise TypeError("messages must be bytes-like objects, not "
                                    f"{type(m).__name__!r}") from None
            raise
        lens = [len(m) for m in messages]
        if sum(lens) != len(blob):  # memoryviews of items wider than a byte
            lens = [memoryview(m).nbytes for m in messages]
        ops.send_many(blob, lens, t)

    @property
    def reader_attached(self) -> bool:
        """Whether a reader has attached (it may have closed since)."""
        self._live()
        return _u32(self._mmap, 44) != 0

    def flush(self, timeout: Optional[float] = None) -> None:
        """Wait until the reader has taken every message sent so far (it has read them, or
        is waiting for more). TimeoutError after ``timeout`` seconds (also while no reader
        has attached); BrokenPipeError if the reader closes or dies first."""
        self._live()
        t = check_timeout(timeout)
        deadline = time.monotonic() + t
        delay = 0.0002
        mm = self._mmap
        while True:
            state = _u32(mm, 44)
            if _u64(mm, 128) == _u64(mm, 64):  # tail caught up with head
                return
            rpid = _u32(mm, 40)
            if state == 2 or (0 < rpid < 2**31 and self._impl.pid_dead(rpid)):
                raise BrokenPipeError(errno.EPIPE, "the reader has gone", self._name)
            if t >= 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _core.timeout_error(timeout, self._name)
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def close(self) -> None:
        """Tell the reader the stream ended (it reads what is queued, then EOFError), unmap
        and remove the name. Idempotent. (In a child that inherited this writer through fork,
        close() only unmaps: the stream and the name stay the parent's.)"""
        ops, self._ops = self._ops, None
        if ops is None:
            return
        self.send = _closed_call(self._what)  # type: ignore[method-assign]
        if os.getpid() != self._pid:  # a copy inherited through fork: the channel is not ours
            ops.detach()
            self._unmap()
            return
        ops.close()
        try:
            if _same_file(self._fd, self._path):
                os.unlink(self._path)
        finally:
            self._unmap()


def _closed_call(what: str) -> Any:
    def closed(*args: Any) -> Any:
        raise closed_error(what)

    return closed


def _is_buffer(obj: Any) -> bool:
    try:
        memoryview(obj)
    except TypeError:
        return False
    return True


class _View:
    """A zero-copy view of one received message; released when its ``with`` block ends."""

    __slots__ = ("_mv", "_reader", "pos")

    def __init__(self, reader: Reader, mv: memoryview, pos: Optional[int]) -> None:
        self._reader = reader
        self._mv: Optional[memoryview] = mv
        self.pos = pos

    def __enter__(self) -> memoryview:
        if self._mv is None:
            raise ValueError("this view has been released")
        return self._mv

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.release()

    def release(self) -> None:
        mv, self._mv = self._mv, None
        if mv is not None:
            mv.release()
            self._reader._unview(self)


class Reader(_End):
    """The receiving end of a channel: attaches to the segment a :class:`Writer` created.

    Waits up to ``timeout`` seconds for the writer to appear (TimeoutError). A second reader
    of one channel gets ``OSError(EBUSY)``. ``EOFError`` once the writer has closed or died
    and every whole message has been read; a reader that finds its writer dead removes the
    orphaned ``/dev/shm`` entry.
    """

    _what = "Reader"

    def __init__(self, name: str, timeout: Optional[float] = None, *,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 spin: Optional[float] = None, backend: Optional[str] = None) -> None:
        self._setup(name, backend)
        t = check_timeout(timeout)
        max_message_size = check_int(max_message_size, "max_message_size", 0,
                                     MAX_MESSAGE_LIMIT)
        spin = _check_spin(spin)
        self._views: list[_View] = []
        self._partial: Any = None  # a streamed message being assembled: (buffer, length)
        self._complete: Any = None  # a whole message recv_into could not take: (buffer, n)
        deadline = time.monotonic() + t
        delay = 0.0005
        while True:
            ops = self._attach(max_message_size, spin)
            if ops is not None:
                break
            if t >= 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _core.timeout_error(timeout, self._name)
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        self._ops = ops
        self._max = max_message_size
        self._fast_recv: Any = ops.make_recv(self._recv_slow)
        self._fast_recv.__doc__ = Reader.recv.__doc__
        self._general_recv: Any = self.recv
        self._sync()

    def _attach(self, max_message_size: int, spin: float) -> Any:
        try:
            fd = _open(self._path, 0)
        except FileNotFoundError:
            return None
        self._fd = fd
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ValueError(f"{self._path!r} is not a shared memory segment")
            try:  # one reader per channel; the lock goes with this process
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OSError(errno.EBUSY, "the channel already has a reader",
                              self._name) from None
            self._map(fd)
            if self._mmap is None:
                self._unmap()
                return None
            try:
                return self._impl.ReaderOps(self._mmap, self._size, self._name, os.getpid(),
                                            max_message_size, spin)
            except self._impl.NotReady:
                self._unmap()
                return None
        except BaseException:
            self._unmap()
            raise

    @property
    def max_message_size(self) -> int:
        self._live()
        return self._max

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message. EOFError once the writer has gone and all was read.

        (While the reader is open and no streamed message is half assembled, this method is
        shadowed by the backend's one-call fast path, which ends here for anything else.)
        """
        try:
            return self._recv_general(timeout)
        finally:
            self._sync()

    def _sync(self) -> None:
        """Point ``self.recv`` at the fast path when it applies, else at this class."""
        if self._ops is None:
            self.recv = _closed_call(self._what)  # type: ignore[method-assign]
        elif self._partial is None and self._complete is None:
            self.recv = self._fast_recv  # type: ignore[method-assign]
        else:
            self.recv = self._general_recv  # type: ignore[method-assign]

    def _recv_slow(self, rc: int, t: float, t0: float) -> bytes:
        """Called by the fast path for anything but a small message."""
        ops = self._live()  # closed by another thread meanwhile: ValueError
        try:
            return ops.finish(rc, t, t0)  # type: ignore[no-any-return]
        except self._impl.Need as need:
            self._partial = (ops.new_buffer(need.length), need.length)
        except EOFError:
            self._orphan()
            raise
        try:
            buf, n = self._assemble(_left(t, t0))
            return ops.finish_buffer(buf, n)  # type: ignore[no-any-return]
        finally:
            self._sync()

    def _recv_general(self, timeout: Optional[float]) -> bytes:
        ops = self._live()
        t = -1.0 if timeout is None else check_timeout(timeout)
        if self._partial is None and self._complete is None:
            t0 = time.monotonic() if t > 0 else 0.0
            try:
                return ops.recv(t)  # type: ignore[no-any-return]
            except self._impl.Need as need:
                self._partial = (ops.new_buffer(need.length), need.length)
            except EOFError:
                self._orphan()
                raise
            t = _left(t, t0)
        if self._complete is not None:
            (buf, n), self._complete = self._complete, None
        else:
            buf, n = self._assemble(t)
        return ops.finish_buffer(buf, n)  # type: ignore[no-any-return]

    def _fill(self, buf: Any, total: int, t: float) -> int:
        """Assemble a streamed message into buf; on a timeout it stays for the next call."""
        ops = self._live()
        while True:
            self._partial = (buf, total)
            try:
                n = ops.recv_into(buf, t)
            except self._impl.Need as need:  # its writer gave it up for a larger message
                buf, total = ops.new_buffer(need.length), need.length
                continue
            except EOFError:
                self._partial = None
                self._orphan()
                raise
            except BaseException:
                if ops.in_progress()[0] == 0:
                    self._partial = None
                raise
            self._partial = None
            return int(n)

    def recv_into(self, buffer: Any, timeout: Optional[float] = None) -> int:
        """Copy the next message into ``buffer`` and return its length. ValueError if it does
        not fit (the message stays queued)."""
        try:
            return self._recv_into(buffer, timeout)
        finally:
            self._sync()

    def _recv_into(self, buffer: Any, timeout: Optional[float]) -> int:
        ops = self._live()
        t = -1.0 if timeout is None else check_timeout(timeout)
        try:
            mv = memoryview(buffer)
        except TypeError:
            raise TypeError("recv_into needs a writable bytes-like object, not "
                            f"{type(buffer).__name__!r}") from None
        with mv:
            if mv.readonly:
                raise TypeError("recv_into needs a writable buffer")
            if not mv.c_contiguous:
                raise TypeError("recv_into needs a contiguous buffer")
            cap = mv.nbytes
        if self._partial is not None or self._complete is not None:
            buf, n = self._complete if self._complete is not None else self._assemble(t)
            if n > cap:
                self._complete = (buf, n)
                raise ValueError(f"buffer of {cap} bytes is too small for the next message "
                                 f"({n} bytes); it stays queued")
            self._complete = None
            memoryview(buffer).cast("B")[:n] = memoryview(buf)[:n]
            return n
        try:
            return ops.recv_into(buffer, t)  # type: ignore[no-any-return]
        except self._impl.Need as need:
            raise ValueError(f"buffer of {cap} bytes is too small for the next message "
                             f"({need.length} bytes); it stays queued") from None
        except EOFError:
            self._orphan()
            raise
        except (TimeoutError, InterruptedError):
            done, total = ops.in_progress()
            if done:  # keep what came of a streamed message for the next call
                keep = ops.new_buffer(total)
                memoryview(keep).cast("B")[:done] = memoryview(buffer).cast("B")[:done]
                self._partial = (keep, total)
            raise

    def _assemble(self, t: float) -> tuple[Any, int]:
        buf, total = self._partial
        return buf, self._fill(buf, total, t)

    def recv_view(self, timeout: Optional[float] = None) -> _View:
        """The next message as a read-only memoryview into the ring, without a copy, for use
        in a ``with`` block; its space is handed back to the writer when the block ends."""
        ops = self._live()
        t = -1.0 if timeout is None else check_timeout(timeout)
        if self._partial is None and self._complete is None:
            try:
                off, n, pos = ops.view(t)
            except self._impl.Need:
                return _View(self, memoryview(self.recv(timeout)), None)
            except EOFError:
                self._orphan()
                raise
            view = _View(self, memoryview(self._mmap)[off:off + n].toreadonly(), pos)
            if not self._views:
                ops.set_hold(pos)
            self._views.append(view)
            return view
        return _View(self, memoryview(self.recv(timeout)), None)

    def _unview(self, view: _View) -> None:
        if view.pos is None:
            return
        try:
            self._views.remove(view)
        except ValueError:
            return
        if self._ops is not None:
            self._ops.set_hold(self._views[0].pos if self._views else None)

    def recv_many(self, max_messages: int = 1024, timeout: Optional[float] = None
                  ) -> list[bytes]:
        """Up to ``max_messages`` messages in one call: waits up to ``timeout`` for the first,
        then takes what is queued without waiting."""
        ops = self._live()
        max_messages = check_int(max_messages, "max_messages", 1, 1 << 20)
        t = -1.0 if timeout is None else check_timeout(timeout)
        if self._partial is None and self._complete is None:
            try:
                return ops.recv_many(max_messages, t)  # type: ignore[no-any-return]
            except self._impl.Need:
                pass
            except EOFError:
                self._orphan()
                raise
        return [self.recv(timeout)]

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the writer closes."""
        while True:
            try:
                yield self.recv()
            except EOFError:
                return

    def _orphan(self) -> None:
        """The writer has gone: if it died without removing the segment, remove it."""
        if self._fd >= 0 and _same_file(self._fd, self._path):
            pid = _writer_pid(self._mmap)
            if pid and self._impl.pid_dead(pid):
                try:
                    os.unlink(self._path)
                except FileNotFoundError:
                    pass

    def close(self) -> None:
        """Detach: the writer gets BrokenPipeError from then on. Idempotent. (In a child that
        inherited this reader through fork, close() only unmaps: the parent's reader stays.)"""
        ops, self._ops = self._ops, None
        if ops is None:
            return
        for view in self._views:
            if view._mv is not None:
                view._mv.release()
                view._mv = None
        self._views.clear()
        self._partial = self._complete = None
        self._sync()
        self._fast_recv = self._general_recv = None
        if os.getpid() != self._pid:  # a copy inherited through fork: leave the channel be
            ops.detach()
        else:
            ops.close()
        self._unmap()


def _left(t: float, t0: float) -> float:
    return max(0.0, t0 + t - time.monotonic()) if t > 0 else t


def _u32(mm: Any, off: int) -> int:
    return int.from_bytes(mm[off:off + 4], "little")


def _u64(mm: Any, off: int) -> int:
    return int.from_bytes(mm[off:off + 8], "little")


def _writer_pid(mm: Any) -> int:
    return int.from_bytes(mm[32:36], "little", signed=True)


class ChannelInfo:
    """What the header of a channel segment says (for ``fastipc ls``)."""

    __slots__ = ("capacity", "head", "reader_pid", "reader_state", "tail", "writer_pid",
                 "writer_state")

    def __init__(self, header: bytes) -> None:
        self.capacity = int.from_bytes(header[8:16], "little")
        self.writer_pid = int.from_bytes(header[32:36], "little", signed=True)
        self.writer_state = int.from_bytes(header[36:40], "little")
        self.reader_pid = int.from_bytes(header[40:44], "little", signed=True)
        self.reader_state = int.from_bytes(header[44:48], "little")
        self.head = int.from_bytes(header[64:72], "little")
        self.tail = int.from_bytes(header[128:136], "little")


def channel_info(path: str) -> Optional[ChannelInfo]:
    """The header of the channel segment at ``path``, or None if it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        header = os.pread(fd, HEADER, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(header) < HEADER or header[:4] != b"FSHM":
        return None
    return ChannelInfo(header)
