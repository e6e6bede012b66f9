"""Pipe operations backed by ``csrc/pipe.c``: one C call per user operation."""

from __future__ import annotations

import errno
import time
from typing import Any

from fastipc._core import FIPC_LARGE, check, ffi, lib, raise_errno

__all__ = ["Reader", "Writer", "get_size", "open_pipe", "set_size", "writer_present"]

_EINTR = -errno.EINTR
_ETIMEDOUT = -errno.ETIMEDOUT
_monotonic = time.monotonic
_write = lib.fipc_pipe_write
_send = lib.fipc_pipe_send
_read = lib.fipc_pipe_read
_recv = lib.fipc_pipe_recv
_recv_into = lib.fipc_pipe_recv_into
_recv_many = lib.fipc_pipe_recv_many
_send_many = lib.fipc_pipe_send_many
_unpack = ffi.unpack

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


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


class Writer:
    __slots__ = ("_written", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._written = ffi.new("size_t *")

    def write(self, data: Any, timeout: float) -> int:
        buf, n = (data, len(data)) if type(data) is bytes else as_buffer(data)
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _write(self.fd, buf, n, 0, timeout, GUARD, self._written)
        if rc < 0:
            self._slow(
                lambda off, t: _write(self.fd, buf, n, off, t, GUARD, self._written),
                rc,
                timeout,
                t0,
            )
        return n

    def send(self, data: Any, timeout: float) -> None:
        buf, n = (data, len(data)) if type(data) is bytes else as_buffer(data)
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _send(self.fd, buf, n, 0, timeout, GUARD, self._written)
        if rc < 0:
            self._slow(
                lambda off, t: _send(self.fd, buf, n, off, t, GUARD, self._written), rc, timeout, t0
            )

    def send_many(self, messages: list[Any], timeout: float) -> None:
        lens = ffi.new(
            "uint32_t[]", [len(m) if type(m) is bytes else as_buffer(m)[1] for m in messages]
        )
        payload = b"".join(messages)
        count = len(messages)
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _send_many(
            self.fd, payload, len(payload), lens, count, 0, timeout, GUARD, self._written
        )
        if rc < 0:
            self._slow(
                lambda off, t: _send_many(
                    self.fd, payload, len(payload), lens, count, off, t, GUARD, self._written
                ),
                rc,
                timeout,
                t0,
            )

    def _slow(self, attempt: Any, rc: int, timeout: float, t0: float) -> None:
        # EINTR: signal handlers run here (a handler that raises ends the call), then the
        # write resumes where it stopped with the time that is left (PEP 475).
        while rc == _EINTR:
            rc = attempt(self._written[0], _left(timeout, t0))
        if rc < 0:
            try:
                raise_errno(-rc, timeout=timeout)
            except OSError as exc:
                exc.characters_written = self._written[0]  # type: ignore[attr-defined]
                raise

    def close(self) -> None:
        pass


class Reader:
    __slots__ = ("_got", "_msg", "_pending", "_rb", "_spans", "fd", "max_message_size")

    def __init__(self, fd: int, max_message_size: int) -> None:
        self.fd = fd
        self.max_message_size = max_message_size
        rb = lib.fipc_rbuf_new()
        if rb == ffi.NULL:
            raise MemoryError("cannot allocate the pipe's read buffer")
        self._rb = ffi.gc(rb, lib.fipc_rbuf_free)
        self._msg = ffi.new("char **")
        self._got = ffi.new("size_t *")
        self._spans = ffi.new("uint32_t[]", 2 * 1024)
        self._pending: Any = None  # a large message being received, kept across timeouts

    def recv(self, timeout: float) -> bytes:
        t0 = _monotonic() if timeout > 0 else 0.0
        if self._pending is None:
            n = _recv(self.fd, self._rb, self.max_message_size, timeout, self._msg)
            while n == _EINTR:
                n = _recv(self.fd, self._rb, self.max_message_size, _left(timeout, t0), self._msg)
            if n >= 0:
                return _unpack(self._msg[0], n)  # type: ignore[no-any-return]
            self._begin_large(n, timeout)
        return self._recv_large(timeout, t0)

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        t0 = _monotonic() if timeout > 0 else 0.0
        if self._pending is None:
            spans = self._spans
            if max_messages > len(spans) // 2:
                spans = ffi.new("uint32_t[]", 2 * max_messages)
            mms = self.max_message_size
            n = _recv_many(self.fd, self._rb, mms, timeout, spans, max_messages)
            while n == _EINTR:
                n = _recv_many(self.fd, self._rb, mms, _left(timeout, t0), spans, max_messages)
            if n >= 0:
                s = _unpack(spans, 2 * n)
                mem = ffi.buffer(self._rb.data, self._rb.cap)
                return [mem[s[i] : s[i + 1]] for i in range(0, 2 * n, 2)]
            self._begin_large(n, timeout)
        return [self._recv_large(timeout, t0)]

    def _begin_large(self, rc: int, timeout: float) -> None:
        if rc != FIPC_LARGE:
            check(rc, timeout=timeout)
        # bytes(n) is zero pages the kernel maps lazily; the payload is read straight into
        # this fresh, unshared object before anyone else can see it.
        self._pending = bytes(self._rb.large)
        self._got[0] = 0

    def _recv_large(self, timeout: float, t0: float) -> bytes:
        out = self._pending
        buf = ffi.from_buffer(out)
        rc = _recv_into(self.fd, self._rb, buf, len(out), self._got, timeout)
        while rc == _EINTR:
            rc = _recv_into(self.fd, self._rb, buf, len(out), self._got, _left(timeout, t0))
        if rc < 0:
            if rc != _ETIMEDOUT:  # after a timeout the next recv goes on with this message
                self._pending = None
            check(rc, timeout=timeout)
        self._pending = None
        return out  # type: ignore[no-any-return]

    def read(self, size: int, timeout: float) -> bytes:
        t0 = _monotonic() if timeout > 0 else 0.0
        n = _read(self.fd, self._rb, size, timeout, self._msg)
        while n == _EINTR:
            n = _read(self.fd, self._rb, size, _left(timeout, t0), self._msg)
        if n < 0:
            check(n, timeout=timeout)
        return _unpack(self._msg[0], n) if n else b""

    def close(self) -> None:
        self._pending = None
        ffi.release(self._rb)
