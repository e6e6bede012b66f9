"""Byte streams in pure Python, with the behaviour of ``csrc/pipe.c`` (the contract is
:class:`fastipc._backend.pipe.Stream`)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import importlib
import os
import select
import signal
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any, Optional

from fastipc._backend.pipe import Stream, frames_within
from fastipc._core import FIPC_EOF, FIPC_TOOBIG, Deadline, byte_view, closed_error, raise_errno

__all__ = ["PureStream", "as_view", "get_size", "open_pipe", "set_size", "stream",
           "writer_present"]

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_F_NONBLOCK = 2
PIPE_BUF = select.PIPE_BUF
_SLICE_MS = 100  # a wait's longest sleep between two looks (as pipe.c)
RBUF = 64 * 1024
_HEADER = struct.Struct(">I")
_SIGPIPE = {signal.SIGPIPE}
_ALL_SIGNALS = signal.valid_signals()
# signal.pthread_sigmask turns the mask it returns into enums (100 us for a full one); the
# function of the C module it wraps returns ints
_sigmask: Callable[[int, Iterable[int]], set[int]] = getattr(
    importlib.import_module("_signal"), "pthread_sigmask", signal.pthread_sigmask)
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0) | getattr(socket, "MSG_DONTWAIT", 0)


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


def _advance(parts: list[Any], n: int) -> list[Any]:
    """``parts`` without their first ``n`` bytes."""
    while parts and n >= len(parts[0]):
        n -= len(parts[0])
        parts = parts[1:]
    if parts and n:
        parts = [memoryview(parts[0])[n:], *parts[1:]]
    return parts


class PureStream:
    """The fd, a wake-up pipe polled with it, and a read-ahead buffer that splits 4-byte
    big-endian length frames; a frame larger than the buffer is received straight into its
    own bytearray (as the C reader does)."""

    __slots__ = ("_buf", "_end", "_got", "_pending", "_pid", "_poll", "_reading", "_sock",
                 "_start", "_wake_r", "_wake_w", "_what", "_woken", "_writing", "fd",
                 "max_message_size", "torn")

    def __init__(self, fd: int, reading: bool, sock: bool, max_message_size: int,
                 what: str = "stream") -> None:
        self.fd = fd
        self._what = what
        self.max_message_size = max_message_size
        self._sock = socket.socket(fileno=fd) if sock else None  # borrowed: detached in free()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._pid = os.getpid()
        self._woken = False
        self._reading = self._writing = False  # a thread is in a read / a write
        self._poll = select.poll()
        self._poll.register(self._wake_r, select.POLLIN)
        self._buf = bytearray(RBUF if reading else 0)
        self._start = self._end = 0
        self._pending: Optional[bytearray] = None
        self._got = 0
        self.torn = False

    def _wait(self, event: int, deadline: Deadline) -> None:
        """Wait for ``event`` on the fd: TimeoutError past the deadline, ValueError once
        woken. (poll retries EINTR itself with the time left, after the handlers ran; it
        sleeps a slice at a time, so that a signal another thread took still has its
        handler run here within one.)"""
        self._poll.register(self.fd, event)
        try:
            while True:
                left = deadline.left()
                ms = _SLICE_MS if left < 0 else min(_SLICE_MS, int(left * 1000 + 0.999))
                ready = self._poll.poll(ms)
                if any(fd == self._wake_r for fd, _ in ready):
                    if self._woken:
                        raise closed_error(self._what)
                    self._renew_wake()  # a forked copy's wake-up: not ours
                    continue
                if ready:
                    return
                if deadline.expired():
                    raise deadline.error()
        finally:
            self._poll.unregister(self.fd)

    # ---- writing
    def write(self, data: Any, timeout: float, offset: int = 0) -> int:
        view = as_view(data)
        try:
            self._write_all([view], timeout, offset)
        finally:
            self.torn = False  # raw bytes: there is no frame to cut short
        return len(view)

    def send(self, data: Any, timeout: float, offset: int = 0) -> None:
        view = as_view(data)
        n = len(view)
        if n > 0xFFFFFFFF:
            raise_errno(errno.EMSGSIZE)
        if n + 4 <= PIPE_BUF:  # one atomic write, like the C writer
            self._write_all([_HEADER.pack(n) + view], timeout, offset)
        else:
            self._write_all([memoryview(_HEADER.pack(n)), view], timeout, offset)

    def send_many(self, messages: list[Any], timeout: float) -> None:
        frames: list[Any] = []
        sizes: list[int] = []
        for m in messages:
            view = as_view(m)
            frames.append(_HEADER.pack(len(view)))
            frames.append(view)
            sizes.append(len(view))
        went = [0]
        try:
            self._write_all([b"".join(frames)], timeout, 0, went)
        except BaseException as exc:
            exc.messages_sent = frames_within(sizes, went[0])  # type: ignore[attr-defined]
            raise

    def _write_all(self, parts: list[Any], timeout: float, offset: int,
                   went: Optional[list[int]] = None) -> None:
        if self._writing:  # (no thread switch between this test and the store below)
            raise_errno(errno.EBUSY)
        self._writing = True
        try:
            self._write_parts(parts, timeout, offset, [offset] if went is None else went)
        finally:
            self._writing = False

    def _write_parts(self, parts: list[Any], timeout: float, offset: int,
                     went: list[int]) -> None:
        """Write ``parts`` from byte ``offset`` on; ``went[0]`` follows how much went."""
        deadline: Optional[Deadline] = None  # made when the write first has to wait
        done, sock = offset, self._sock
        if offset:
            parts = _advance(parts, offset)
        guard = sock is None and signal.getsignal(signal.SIGPIPE) is not signal.SIG_IGN
        mask = _sigmask(signal.SIG_BLOCK, _SIGPIPE) if guard else None
        try:
            while True:
                if not parts:
                    break
                # `torn` is set before each write and corrected after its bookkeeping: a
                # signal handler that raises in between finds it set, and the writer closes
                # rather than risk a frame cut short (a write that went whole included).
                self.torn = True
                try:
                    n = (sock.sendmsg(parts, [], _NOSIGNAL) if sock is not None
                         else os.writev(self.fd, parts))
                except BlockingIOError:
                    self.torn = done > 0
                    deadline = deadline or Deadline(timeout)
                    self._wait(select.POLLOUT, deadline)
                    continue
                done += n
                went[0] = done
                parts = _advance(parts, n)
                self.torn = bool(parts)
        except BrokenPipeError as exc:
            if mask is not None and signal.SIGPIPE not in mask:
                signal.sigtimedwait(_SIGPIPE, 0)  # consume the SIGPIPE the write raised
            self.torn = done > 0
            exc.characters_written = done  # type: ignore[attr-defined]
            raise
        except OSError as exc:
            self.torn = done > 0
            exc.characters_written = done  # type: ignore[attr-defined]
            raise
        finally:
            if mask is not None:
                _sigmask(signal.SIG_SETMASK, mask)

    # ---- reading
    def _read_into(self, view: memoryview, deadline: Deadline, count: str) -> int:
        """One read into ``view``, at once when data is there, else after waiting; the count
        is added to the attribute ``count`` before any signal handler may run (all signals
        are blocked from the read to that store), so that no byte read is ever lost."""
        mask = _sigmask(signal.SIG_BLOCK, ())
        while True:
            _sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
            try:
                n = os.readv(self.fd, [view])
                setattr(self, count, getattr(self, count) + n)
                return n
            except BlockingIOError:
                pass
            finally:
                _sigmask(signal.SIG_SETMASK, mask)
            if deadline.timeout == 0:
                raise deadline.error()
            self._wait(select.POLLIN, deadline)

    def _fill(self, deadline: Deadline) -> int:
        """Read once into the free end of the buffer: the byte count, 0 at end of stream."""
        buf, start, end = self._buf, self._start, self._end
        if start == end:
            self._start = self._end = start = end = 0
        elif end == len(buf):
            buf[: end - start] = buf[start:end]
            self._start, self._end = start, end = 0, end - start
        with memoryview(buf) as view:
            return self._read_into(view[end:], deadline, "_end")

    # A message is consumed (``_start`` moves on, or ``_pending`` is dropped) only once it is
    # a Python object, by a store with no call after it: an exception raised into the call
    # by a signal handler (which runs after a call returns) leaves the message unread.
    def _frame(self, timeout: float) -> tuple[bytes, int]:
        """The next frame's payload and where the frame after it starts, consumed only by
        the caller storing that in ``_start``."""
        deadline: Optional[Deadline] = None  # made when the call first has to read
        while self._pending is None:
            start, avail = self._start, self._end - self._start
            if avail >= 4:
                (n,) = _HEADER.unpack_from(self._buf, start)
                if n > self.max_message_size:
                    raise_errno(FIPC_TOOBIG)
                if avail >= 4 + n:
                    with memoryview(self._buf) as view:
                        return bytes(view[start + 4 : start + 4 + n]), start + 4 + n
                if 4 + n > len(self._buf):
                    # one statement: no signal handler can run between the stores
                    self._pending, self._got, self._start = bytearray(n), 0, start + 4
                    break
                if len(self._buf) - start < 4 + n:
                    self._buf[:avail] = self._buf[start : self._end]
                    self._start, self._end = 0, avail
            deadline = deadline or Deadline(timeout)
            if self._fill(deadline) == 0:
                raise_errno(FIPC_EOF)
        return self._recv_large(deadline or Deadline(timeout)), self._start

    def _claim_read(self) -> None:
        """One thread reads at a time, as natively: another one gets OSError(EBUSY)."""
        if self._reading:  # (no thread switch between this test and the store)
            raise_errno(errno.EBUSY)
        self._reading = True

    def recv(self, timeout: float) -> bytes:
        self._claim_read()
        try:
            out, self._start = self._frame(timeout)
            return out
        finally:
            self._reading = False

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        self._claim_read()
        try:
            return self._recv_many(max_messages, timeout)
        finally:
            self._reading = False

    def _recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        first, start = self._frame(timeout)
        out = [first]
        with memoryview(self._buf) as view:
            while True:
                if len(out) >= max_messages or self._end - start < 4:
                    break
                (n,) = _HEADER.unpack_from(self._buf, start)
                if n > self.max_message_size or self._end - start < 4 + n:
                    break  # an oversized frame is reported by the next call
                out.append(bytes(view[start + 4 : start + 4 + n]))
                start += 4 + n
        self._start = start
        return out

    def _recv_large(self, deadline: Deadline) -> bytes:
        out = self._pending
        assert out is not None
        take = min(self._end - self._start, len(out) - self._got)
        if take:
            out[self._got : self._got + take] = self._buf[self._start : self._start + take]
            self._start, self._got = self._start + take, self._got + take
        with memoryview(out) as view:
            while True:
                if self._got >= len(out):
                    break
                if self._read_into(view[self._got :], deadline, "_got") == 0:
                    raise_errno(FIPC_EOF)
        data = bytes(out)
        self._pending = None
        return data

    def read(self, n: int, timeout: float) -> bytes:
        self._claim_read()
        try:
            return self._read(n, timeout)
        finally:
            self._reading = False

    def _read(self, n: int, timeout: float) -> bytes:
        if self._start == self._end and self._fill(Deadline(timeout)) == 0:
            return b""
        start = self._start
        take = min(n, self._end - start)
        out = bytes(self._buf[start : start + take])
        self._start = start + take
        return out

    # ---- life cycle
    def _renew_wake(self) -> None:
        """After fork() both processes hold the same wake-up pipe: put a pipe of this
        process's own in its place before waking (or after a wake-up not asked for here)."""
        r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.dup2(r, self._wake_r, inheritable=False)
        os.dup2(w, self._wake_w, inheritable=False)
        os.close(r)
        os.close(w)
        self._pid = os.getpid()

    def wake(self) -> None:
        self._woken = True
        if self._pid != os.getpid():
            self._renew_wake()
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # full: readable already

    def free(self) -> None:
        self._pending = None
        if self._sock is not None:
            self._sock.detach()
        os.close(self._wake_r)
        os.close(self._wake_w)
        os.close(self.fd)


def stream(fd: int, *, reading: bool, sock: bool, max_message_size: int,
           what: str) -> Stream:
    return PureStream(fd, reading, sock, max_message_size, what)
