"""Anonymous pipes and named pipes (FIFOs), with raw and framed I/O.

>>> from fastipc import pipe
>>> r, w = pipe.pipe()
>>> w.send(b"hello")            # one whole message (4-byte big-endian length + payload)
>>> r.recv(timeout=1.0)
b'hello'

Writing to a pipe whose reader has gone raises :class:`BrokenPipeError`; it never kills the
process with SIGPIPE, whatever the process's SIGPIPE disposition (see the README).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterable, Iterator
from types import ModuleType, TracebackType
from typing import Any, Optional, Union

from fastipc import _core
from fastipc._core import check_int, check_timeout, closed_error

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "FIFO", "PipeReader", "PipeWriter", "pipe"]

DEFAULT_MAX_MESSAGE_SIZE = 64 << 20
MAX_FRAME = 0xFFFFFFFF  # the 4-byte length prefix
PathLike = Union[str, "os.PathLike[str]"]


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


def _set_size(impl: ModuleType, fd: int, size: int) -> int:
    try:
        return int(impl.set_size(fd, size))
    except PermissionError as exc:
        raise PermissionError(
            errno.EPERM,
            f"pipe size {size} exceeds /proc/sys/fs/pipe-max-size ({_pipe_max_size()}); "
            "raise it with `sysctl fs.pipe-max-size=N` or ask for less",
        ) from exc


class _End(_core.FdOwner):
    """What both ends share: the fd, its life cycle, the backend and the pipe's size."""

    _what = "pipe end"

    def __init__(self, fd: int, impl: ModuleType, blocking: bool) -> None:
        self._fd = fd
        self._impl = impl
        # The writer is non-blocking: its waits are ours (ppoll with a deadline). The reader is
        # blocking: with no timeout, a read that sleeps in the kernel is the cheapest wait;
        # with one, the backends poll first, so that no read blocks past its deadline.
        os.set_blocking(fd, blocking)

    @property
    def pipe_size(self) -> int:
        """The kernel's buffer for this pipe in bytes (F_GETPIPE_SZ); settable."""
        return int(self._impl.get_size(self.fileno()))

    @pipe_size.setter
    def pipe_size(self, size: int) -> None:
        _set_size(self._impl, self.fileno(), check_int(size, "size", 1, 2**31 - 1))


class PipeWriter(_End):
    """The write end of a pipe or FIFO. Takes ownership of ``fd``."""

    _what = "PipeWriter"

    def __init__(self, fd: int, *, backend: Optional[str] = None) -> None:
        impl = _core.ops("pipe", backend)
        super().__init__(_check_fd(fd), impl, blocking=False)
        self._core = impl.Writer(self._fd)

    def write(self, data: Any, timeout: Optional[float] = None) -> int:
        """Write all of ``data`` (raw bytes, no framing) and return its length.

        TimeoutError if the pipe stays full for ``timeout`` seconds; its
        ``characters_written`` says how much went. BrokenPipeError if no reader is left.
        """
        if self._fd < 0:
            raise closed_error(self._what)
        return self._core.write(data, check_timeout(timeout))  # type: ignore[no-any-return]

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send ``data`` as one message: a 4-byte big-endian length, then the bytes.

        A message that was cut short (a timeout or an error after part of it was written)
        would desynchronise the stream, so the writer then closes itself: the reader sees the
        end of the stream, never half a message.
        """
        if self._fd < 0:
            raise closed_error(self._what)
        try:  # inline rather than through _framed: this is the hot path
            self._core.send(data, -1.0 if timeout is None else check_timeout(timeout))
        except OSError as exc:
            if getattr(exc, "characters_written", 0):
                self.close()
            raise
        except OverflowError:
            raise ValueError(f"a message is limited to {MAX_FRAME} bytes") from None

    def send_many(self, messages: Iterable[Any], timeout: Optional[float] = None) -> None:
        """Send each of ``messages`` as one message, all in one write (or as few as the pipe
        allows): far cheaper per message than ``send`` for a stream of small ones. Timeouts
        and errors as for :meth:`send`; the receiver may take them with ``recv`` or
        ``recv_many``."""
        if self._fd < 0:
            raise closed_error(self._what)
        if isinstance(messages, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes an iterable of messages, not one message")
        batch = list(messages)
        if batch:
            self._framed(self._core.send_many, batch, timeout)

    def _framed(self, call: Any, data: Any, timeout: Optional[float]) -> None:
        try:
            call(data, -1.0 if timeout is None else check_timeout(timeout))
        except OSError as exc:
            if getattr(exc, "characters_written", 0):
                self.close()
            raise
        except OverflowError:
            raise ValueError(f"a message is limited to {MAX_FRAME} bytes") from None


class PipeReader(_End):
    """The read end of a pipe or FIFO. Takes ownership of ``fd``.

    ``max_message_size`` bounds the length a frame may announce (checked before anything is
    allocated).
    """

    _what = "PipeReader"

    def __init__(
        self,
        fd: int,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        backend: Optional[str] = None,
    ) -> None:
        impl = _core.ops("pipe", backend)
        max_message_size = check_int(max_message_size, "max_message_size", 0, MAX_FRAME)
        super().__init__(_check_fd(fd), impl, blocking=True)
        self._core = impl.Reader(self._fd, max_message_size)

    @property
    def max_message_size(self) -> int:
        return int(self._core.max_message_size)

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._core.max_message_size = check_int(value, "max_message_size", 0, MAX_FRAME)

    def read(self, n: int = 65536, timeout: Optional[float] = None) -> bytes:
        """Up to ``n`` raw bytes, as soon as any are there; ``b""`` at end of stream."""
        if self._fd < 0:
            raise closed_error(self._what)
        n = check_int(n, "n", 0, 2**31 - 1)
        t = check_timeout(timeout)
        if n == 0:
            return b""
        return self._core.read(n, t)  # type: ignore[no-any-return]

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next whole message. EOFError at end of stream; a message cut short by the
        writer's end is dropped, never returned. OSError(EMSGSIZE) for a frame announcing more
        than ``max_message_size`` bytes."""
        if self._fd < 0:
            raise closed_error(self._what)
        return self._core.recv(  # type: ignore[no-any-return]
            -1.0 if timeout is None else check_timeout(timeout)
        )

    def recv_many(self, max_messages: int = 1024, timeout: Optional[float] = None) -> list[bytes]:
        """Wait like :meth:`recv` for the next message, then take every further whole message
        already read ahead, up to ``max_messages`` in all, without waiting again."""
        if self._fd < 0:
            raise closed_error(self._what)
        n = check_int(max_messages, "max_messages", 1, 2**31 - 1)
        return self._core.recv_many(  # type: ignore[no-any-return]
            n, -1.0 if timeout is None else check_timeout(timeout)
        )

    def __iter__(self) -> Iterator[bytes]:
        """Messages until the writer closes."""
        while True:
            try:
                yield self.recv()
            except EOFError:
                return


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
    impl = _core.ops("pipe", backend)
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
    return reader, PipeWriter(w, backend=backend)


class FIFO:
    """A named pipe at ``path``.

    ``create=True`` makes it (``FileExistsError`` if the path exists), ``create=False`` opens
    an existing one (``FileNotFoundError`` if absent). ``open_reader()`` and ``open_writer()``
    each wait, up to ``timeout`` seconds, for the other end to be opened by someone, without
    blocking in the kernel, so no thread or fd is left behind by a timeout. ``close()`` does
    not remove the FIFO; ``unlink()`` does.
    """

    def __init__(
        self,
        path: PathLike,
        create: bool = True,
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
        if not isinstance(create, bool):
            raise TypeError(f"create must be a bool, not {type(create).__name__}")
        mode = check_int(mode, "mode", 0, 0o777)
        self._backend = _core.resolve_backend(backend)
        self._impl = _core.ops("pipe", self._backend)
        if create:
            os.mkfifo(self._path, mode)
        else:
            st = os.stat(self._path)
            if not stat.S_ISFIFO(st.st_mode):
                raise ValueError(f"{self._path!r} exists but is not a FIFO")
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._closed

    def _check(self) -> None:
        if self._closed:
            raise closed_error("FIFO")

    def _open(self, flags: int) -> int:
        fd = os.open(self._path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{self._path!r} is no longer a FIFO")
        return fd

    def open_writer(self, timeout: Optional[float] = None) -> PipeWriter:
        """Open the write end once a reader has the FIFO open; TimeoutError otherwise."""
        self._check()
        t = check_timeout(timeout)
        deadline = time.monotonic() + t
        delay = 0.001
        while True:
            try:
                fd = self._open(os.O_WRONLY)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            delay = _pause(deadline, t, delay, timeout)
        return PipeWriter(fd, backend=self._backend)

    def open_reader(
        self, timeout: Optional[float] = None, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    ) -> PipeReader:
        """Open the read end once a writer has the FIFO open; TimeoutError otherwise."""
        self._check()
        t = check_timeout(timeout)
        deadline = time.monotonic() + t
        fd = self._open(os.O_RDONLY)
        try:
            delay = 0.001
            while not self._impl.writer_present(fd):
                delay = _pause(deadline, t, delay, timeout)
            return PipeReader(fd, max_message_size=max_message_size, backend=self._backend)
        except BaseException:
            os.close(fd)
            raise

    def unlink(self) -> None:
        """Remove the FIFO from the file system."""
        os.unlink(self._path)

    def close(self) -> None:
        """Forget the FIFO (ends already opened stay open). Idempotent."""
        self._closed = True

    def __enter__(self) -> FIFO:
        self._check()
        return self

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FIFO {self._path!r}{' closed' if self._closed else ''}>"


def _pause(deadline: float, t: float, delay: float, timeout: Optional[float]) -> float:
    """Sleep before trying again to find the peer; raise TimeoutError past the deadline."""
    if t >= 0:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _core.timeout_error(timeout)
        delay = min(delay, left)
    time.sleep(delay)
    return min(delay * 2, 0.02)
