"""Pipe operations in pure Python, with the same behaviour as ``csrc/pipe.c``."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import select
import signal
import struct
import time
from typing import Any, Optional

from fastipc._core import FIPC_EOF, FIPC_TOOBIG, byte_view, raise_errno, timeout_error

__all__ = ["Reader", "Writer", "get_size", "open_pipe", "set_size", "writer_present"]

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_F_NONBLOCK = 2
PIPE_BUF = select.PIPE_BUF
_HEADER = struct.Struct(">I")
_SIGPIPE = {signal.SIGPIPE}


def open_pipe(size: int) -> tuple[int, int]:
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    if size > 0:
        try:
            set_size(w, size)
        except BaseException:
            os.close(r)
            os.close(w)
            raise
    return r, w


def set_size(fd: int, size: int) -> int:
    return fcntl.fcntl(fd, F_SETPIPE_SZ, size)


def get_size(fd: int) -> int:
    return fcntl.fcntl(fd, F_GETPIPE_SZ)


_libc: Optional[ctypes.CDLL] = None


def writer_present(fd: int) -> bool:
    """tee() on an empty FIFO answers without consuming: EAGAIN while a writer holds it."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        _libc.tee.restype = ctypes.c_ssize_t
        _libc.tee.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_size_t, ctypes.c_uint]
    r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        n = _libc.tee(fd, w, 1, SPLICE_F_NONBLOCK)
        err = ctypes.get_errno()
    finally:
        os.close(r)
        os.close(w)
    if n >= 0:
        return bool(n > 0)
    if err == errno.EAGAIN:
        return True
    raise OSError(err, os.strerror(err))


as_view = byte_view


def _deadline(timeout: float) -> float:
    return time.monotonic() + timeout if timeout > 0 else timeout


def _wait(fd: int, event: int, deadline: float, timeout: float) -> None:
    """Wait for ``event`` on fd until the deadline (-1: forever); TimeoutError after it."""
    poller = select.poll()
    poller.register(fd, event)
    while True:
        if deadline < 0:
            ms = None
        else:
            left = deadline - time.monotonic() if deadline > 0 else 0.0
            ms = max(0, int(left * 1000 + 0.999))  # round up: never wake early and spin
        if poller.poll(ms):
            return
        if ms is not None and (deadline == 0 or time.monotonic() >= deadline):
            raise timeout_error(timeout)


def _read_wait(fd: int, view: memoryview, deadline: float, timeout: float) -> int:
    """One read into ``view``, as csrc/pipe.c's read_wait: with no timeout (deadline -1) the
    blocking read itself waits; with one, poll first so that the read never blocks past it."""
    while True:
        if deadline >= 0:
            _wait(fd, select.POLLIN, deadline, timeout)
        try:
            return os.readv(fd, [view])
        except BlockingIOError:  # someone made the fd non-blocking
            if deadline < 0:
                _wait(fd, select.POLLIN, -1, timeout)


class Writer:
    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, data: Any, timeout: float) -> int:
        view = as_view(data)
        self._write_all([view], timeout)
        return len(view)

    def send(self, data: Any, timeout: float) -> None:
        view = as_view(data)
        n = len(view)
        if n > 0xFFFFFFFF:
            raise_errno(errno.EMSGSIZE)
        if n + 4 <= PIPE_BUF:  # one atomic write, like the C writev
            self._write_all([_HEADER.pack(n) + view], timeout)
        else:
            self._write_all([memoryview(_HEADER.pack(n)), view], timeout)

    def send_many(self, messages: list[Any], timeout: float) -> None:
        frames: list[Any] = []
        for m in messages:
            view = as_view(m)
            frames.append(_HEADER.pack(len(view)))
            frames.append(view)
        self._write_all([b"".join(frames)], timeout)

    def _write_all(self, parts: list[Any], timeout: float) -> None:
        deadline = _deadline(timeout)
        done = 0
        guard = signal.getsignal(signal.SIGPIPE) is not signal.SIG_IGN
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGPIPE) if guard else None
        try:
            while parts:
                try:
                    n = os.writev(self.fd, parts)
                except BlockingIOError:
                    _wait(self.fd, select.POLLOUT, deadline, timeout)
                    continue
                done += n
                while parts and n >= len(parts[0]):
                    n -= len(parts[0])
                    parts.pop(0)
                if parts and n:
                    parts[0] = memoryview(parts[0])[n:]
        except BrokenPipeError:
            if old is not None and signal.SIGPIPE not in old:
                signal.sigtimedwait(_SIGPIPE, 0)  # consume the SIGPIPE the write raised
            raise
        except OSError as exc:
            exc.characters_written = done  # type: ignore[attr-defined]
            raise
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        pass


class Reader:
    """Reads ahead into a fixed buffer and splits 4-byte big-endian length frames; a frame
    larger than the buffer is received straight into its own bytearray (as the C reader)."""

    __slots__ = ("_buf", "_end", "_got", "_pending", "_start", "fd", "max_message_size")

    def __init__(self, fd: int, max_message_size: int) -> None:
        self.fd = fd
        self.max_message_size = max_message_size
        self._buf = bytearray(65536)
        self._start = self._end = 0
        self._pending: Optional[bytearray] = None
        self._got = 0

    def _fill(self, deadline: float, timeout: float) -> int:
        """Read once into the free end of the buffer: the byte count, 0 at end of stream."""
        buf, start, end = self._buf, self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        elif end == len(buf):
            buf[: end - start] = buf[start:end]
            self._start, self._end = start, end = 0, end - start
        with memoryview(buf) as view:
            n = _read_wait(self.fd, view[end:], deadline, timeout)
        self._end = end + n
        return n

    def recv(self, timeout: float) -> bytes:
        deadline = _deadline(timeout)
        while self._pending is None:
            start, avail = self._start, self._end - self._start
            if avail >= 4:
                (n,) = _HEADER.unpack_from(self._buf, start)
                if n > self.max_message_size:
                    raise_errno(FIPC_TOOBIG)
                if avail >= 4 + n:
                    self._start = start + 4 + n
                    with memoryview(self._buf) as view:
                        return bytes(view[start + 4 : start + 4 + n])
                if 4 + n > len(self._buf):
                    self._start = start + 4
                    self._pending, self._got = bytearray(n), 0
                    break
                if len(self._buf) - start < 4 + n:
                    self._buf[:avail] = self._buf[start : self._end]
                    self._start, self._end = 0, avail
            if self._fill(deadline, timeout) == 0:
                raise_errno(FIPC_EOF)
        return self._recv_large(deadline, timeout)

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        first = self.recv(timeout)
        out = [first]
        with memoryview(self._buf) as view:
            while len(out) < max_messages and self._end - self._start >= 4:
                start = self._start
                (n,) = _HEADER.unpack_from(self._buf, start)
                if n > self.max_message_size or self._end - start < 4 + n:
                    break  # an oversized frame is reported by the next call
                out.append(bytes(view[start + 4 : start + 4 + n]))
                self._start = start + 4 + n
        return out

    def _recv_large(self, deadline: float, timeout: float) -> bytes:
        out = self._pending
        assert out is not None
        take = min(self._end - self._start, len(out) - self._got)
        out[self._got : self._got + take] = self._buf[self._start : self._start + take]
        self._start += take
        self._got += take
        with memoryview(out) as view:
            while self._got < len(out):
                n = _read_wait(self.fd, view[self._got :], deadline, timeout)  # keeps _pending
                if n == 0:
                    self._pending = None
                    raise_errno(FIPC_EOF)
                self._got += n
        self._pending = None
        return bytes(out)

    def read(self, size: int, timeout: float) -> bytes:
        if self._start == self._end and self._fill(_deadline(timeout), timeout) == 0:
            return b""
        start = self._start
        take = min(size, self._end - start)
        self._start = start + take
        return bytes(self._buf[start : start + take])

    def close(self) -> None:
        self._pending = None
