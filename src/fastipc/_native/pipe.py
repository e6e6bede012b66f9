"""Byte streams backed by ``csrc/pipe.c``: one C call per user operation (the contract is
:class:`fastipc._backend.pipe.Stream`)."""

from __future__ import annotations

import errno
import time
from typing import Any, Callable, Optional

from fastipc._backend.pipe import Stream
from fastipc._core import Deadline, check, closed_error, ffi, lib, retry

__all__ = ["NativeStream", "as_buffer", "get_size", "open_pipe", "set_size", "stream",
           "writer_present"]

_monotonic = time.monotonic
_write = lib.fipc_pipe_write
_send = lib.fipc_pipe_send
_send_many = lib.fipc_pipe_send_many
_read = lib.fipc_pipe_read
_recv = lib.fipc_pipe_recv
_recv_into = lib.fipc_pipe_recv_into
_recv_many = lib.fipc_pipe_recv_many
_unpack = ffi.unpack
_NULL = ffi.NULL

# SIGPIPE guard of csrc/pipe.c: 1 = ask the kernel for the disposition on every write and
# block SIGPIPE around the write unless it is ignored.
GUARD = 1


def open_pipe(size: int) -> tuple[int, int]:
    fds = ffi.new("int[2]")
    check(lib.fipc_pipe_open(fds, size))
    return fds[0], fds[1]


def set_size(fd: int, size: int) -> int:
    return check(lib.fipc_pipe_set_size(fd, size))


def get_size(fd: int) -> int:
    return check(lib.fipc_pipe_get_size(fd))


def writer_present(fd: int) -> bool:
    return bool(check(lib.fipc_fifo_writer_present(fd)))


def as_buffer(data: Any) -> tuple[Any, int]:
    """bytes pass to C as they are; other bytes-like objects without a copy."""
    if type(data) is bytes:
        return data, len(data)
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str' (encode it first)")
    try:
        buf = ffi.from_buffer(data)
    except (TypeError, BufferError) as exc:
        raise TypeError(
            f"a contiguous bytes-like object is required, not {type(data).__name__!r}"
        ) from exc
    return buf, len(buf)


class NativeStream:
    """A ``fipc_pipe``: the fd, its wake-up eventfd, the write progress, the read-ahead, and
    the count of calls running in C (so the public class's hot calls are one C call with no
    Python busy count: the decorator would cost more than the call itself)."""

    __slots__ = ("_msg", "_p", "_pending", "_spans", "_took", "_what", "max_message_size")
    counts_calls = True

    def __init__(self, fd: int, reading: bool, sock: bool, max_message_size: int,
                 what: str) -> None:
        flags = (lib.FIPC_PIPE_READ if reading else 0) | (lib.FIPC_PIPE_SOCK if sock else 0)
        p = lib.fipc_pipe_new(fd, flags, GUARD)
        if p == _NULL:
            err = ffi.errno
            raise OSError(err, f"cannot set up the stream: {errno.errorcode.get(err, err)}")
        self._p = ffi.gc(p, lib.fipc_pipe_free)
        self._what = what
        self.max_message_size = max_message_size
        self._msg = ffi.new("char **")
        self._spans = ffi.new("uint32_t[]", 2 * 1024)
        self._pending: Any = None  # the bytes a large frame is being received into
        self._took = 0

    def _slow(self, rc: int, again: Callable[[float], int], timeout: float,
              start: Optional[float], writing: bool = False) -> int:
        """The slow path of every call: EINTR tries again with the time left (a write
        resumes where it stopped); ECANCELED (closed) is ValueError; a write's error says
        how much went (``characters_written``)."""
        try:
            return retry(rc, again, Deadline(timeout, start))
        except OSError as exc:
            if exc.errno == errno.ECANCELED:
                raise closed_error(self._what) from None
            if writing:
                exc.characters_written = self._p.written  # type: ignore[attr-defined]
            raise

    @property
    def torn(self) -> bool:
        return bool(self._p.torn)

    # ---- writing
    def write(self, data: Any, timeout: float, offset: int = 0) -> int:
        buf, n = as_buffer(data)
        p = self._p
        start = _monotonic() if timeout > 0 else None  # for a Deadline on the slow path
        rc = _write(p, buf, n, offset, timeout)
        if rc < 0:
            self._slow(rc, lambda left: _write(p, buf, n, p.written, left), timeout, start, True)
        return n

    def send(self, data: Any, timeout: float, offset: int = 0) -> None:
        buf, n = (data, len(data)) if type(data) is bytes else as_buffer(data)
        p = self._p
        start = _monotonic() if timeout > 0 else None  # for a Deadline on the slow path
        rc = _send(p, buf, n, offset, timeout)
        if rc < 0:
            self._slow(rc, lambda left: _send(p, buf, n, p.written, left), timeout, start, True)

    def send_many(self, messages: list[Any], timeout: float) -> None:
        lens = ffi.new(
            "uint32_t[]", [len(m) if type(m) is bytes else as_buffer(m)[1] for m in messages]
        )
        payload = b"".join(messages)
        count, size = len(messages), len(payload)
        p = self._p
        start = _monotonic() if timeout > 0 else None  # for a Deadline on the slow path
        rc = _send_many(p, payload, size, lens, count, 0, timeout)
        if rc < 0:
            self._slow(
                rc, lambda left: _send_many(p, payload, size, lens, count, p.written, left),
                timeout, start, True,
            )

    # ---- reading
    # Each read returns what it found without consuming it: the next read consumes it first
    # if `_took` says the payload became a Python object. `_took` is cleared before each C
    # call and set only after the copy, with no call in between (a signal handler runs
    # after a call returns), so that an exception raised into recv leaves the message unread.
    def recv(self, timeout: float) -> bytes:
        p, msg, mms = self._p, self._msg, self.max_message_size
        start = _monotonic() if timeout > 0 else None  # for a Deadline on the slow path
        took, self._took = self._took, 0
        n = _recv(p, mms, timeout, msg, took)
        if n < 0:
            n = self._slow(n, lambda left: _recv(p, mms, left, msg, 0), timeout, start)
        data = msg[0]
        if data:
            out: bytes = _unpack(data, n)
            self._took = 1
            return out
        return self._recv_large(n, timeout, start)

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        p, mms = self._p, self.max_message_size
        spans = self._spans
        if max_messages > len(spans) // 2:
            spans = ffi.new("uint32_t[]", 2 * max_messages)
        start = _monotonic() if timeout > 0 else None  # for a Deadline on the slow path
        took, self._took = self._took, 0
        n = _recv_many(p, mms, timeout, spans, max_messages, took)
        if n < 0:
            n = self._slow(n, lambda left: _recv_many(p, mms, left, spans, max_messages, 0),
                           timeout, start)
        if n == 0:  # a frame too large for the read-ahead comes first
            return [self._recv_large(p.large, timeout, start)]
        s = _unpack(spans, 2 * n)
        mem = ffi.buffer(p.data, p.cap)
        out = [mem[s[i] : s[i + 1]] for i in range(0, 2 * n, 2)]
        self._took = 1
        return out

    def _recv_large(self, n: int, timeout: float, start: Optional[float]) -> bytes:
        # bytes(n) is zero pages the kernel maps lazily; the payload is read straight into
        # this fresh, unshared object, kept across timeouts and interruptions (C keeps how
        # much arrived) and handed out only once complete.
        out = self._pending
        if out is None or len(out) != n:
            out = self._pending = bytes(n)
        p, buf = self._p, ffi.from_buffer(out)
        rc = _recv_into(p, buf, n, timeout)
        if rc < 0:
            self._slow(rc, lambda left: _recv_into(p, buf, n, left), timeout, start)
        self._pending = None
        p.large = 0
        return out  # type: ignore[no-any-return]

    def read(self, n: int, timeout: float) -> bytes:
        p, msg = self._p, self._msg
        start = _monotonic() if timeout > 0 else None  # for a Deadline on the slow path
        took, self._took = self._took, 0
        got = _read(p, n, timeout, msg, took)
        if got < 0:
            got = self._slow(got, lambda left: _read(p, n, left, msg, 0), timeout, start)
        if not got:
            return b""
        out: bytes = _unpack(msg[0], got)
        self._took = 1
        return out

    # ---- life cycle
    def wake(self) -> None:
        check(lib.fipc_pipe_wake(self._p))

    def free(self) -> None:
        # closes the fds now, or when the last call still in C leaves; the memory goes
        # with this object (ffi.gc), when no call can reach it any more
        lib.fipc_pipe_close(self._p)
        self._pending = None


def stream(fd: int, *, reading: bool, sock: bool, max_message_size: int,
           what: str) -> Stream:
    return NativeStream(fd, reading, sock, max_message_size, what)
