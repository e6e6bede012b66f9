"""Channel operations backed by ``csrc/shm.c``: one C call per user operation.

The mapping belongs to Python (an ``mmap.mmap``); C gets its address through
``ffi.from_buffer``, which holds a buffer export, so the mapping cannot be closed under C's
feet. ``close()`` releases that export.
"""

from __future__ import annotations

import ctypes
import errno
import struct
import time
from typing import Any, Optional

from fastipc._core import FIPC_CORRUPT, check, check_timeout, ffi, lib, raise_errno

__all__ = ["NEED", "NOT_READY", "Need", "ReaderOps", "WriterOps", "pid_dead"]

NEED = -1100
NOT_READY = -1101
_EINTR = -errno.EINTR
_monotonic = time.monotonic
_send = lib.fipc_shm_send
_send_many = lib.fipc_shm_send_many
_recv = lib.fipc_shm_recv
_recv_many = lib.fipc_shm_recv_many
_unpack = ffi.unpack
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_NO_HOLD = 2**64 - 1
STAGE = 2048  # messages up to this size are copied out of the ring by the one C call

try:  # a bytes object to fill in place: one copy less for streamed messages
    _new_bytes: Any = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
except (AttributeError, TypeError):  # not CPython
    _new_bytes = None


class Need(Exception):
    """The next message is streamed (or larger than the buffer): it needs ``length`` bytes."""

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


class NotReady(Exception):
    """The segment exists but its writer has not finished setting it up."""


def pid_dead(pid: int) -> bool:
    return bool(lib.fipc_shm_pid_dead(pid))


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


def _buffer(data: Any) -> tuple[Any, int]:
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str' (encode it first)")
    try:
        buf = _from_buffer(data)
    except (TypeError, BufferError) as exc:
        raise TypeError(
            f"a contiguous bytes-like object is required, not {type(data).__name__!r}"
        ) from exc
    return buf, len(buf)


class _Ops:
    __slots__ = ("_base", "_h", "name")

    def __init__(self, mm: Any, size: int, name: str) -> None:
        self.name = name
        self._base = _from_buffer(mm)
        self._h = ffi.new("fipc_shm *")

    def _error(self, rc: int, timeout: float) -> Any:
        if rc == -errno.EBADF:  # closed by another thread during the call
            raise ValueError(f"I/O operation on closed channel end {self.name!r}")
        check(rc, self.name, None if timeout < 0 else timeout)

    @property
    def spin(self) -> float:
        return float(self._h.spin_max_ns) / 1e9

    @spin.setter
    def spin(self, value: float) -> None:
        self._h.spin_max_ns = self._h.spin_ns = int(value * 1e9)

    def stats(self) -> tuple[int, int]:
        """(waits that ended while spinning, waits that slept)"""
        return int(self._h.spins), int(self._h.sleeps)

    def close(self) -> None:
        """Mark this end closed and let go of the mapping, once no call of another thread is
        still inside C on it (closing wakes such a call: it ends with EBADF). If one does
        not come out in time, the mapping is left to the garbage collector, which unmaps it
        when the last reference goes: never under a running call."""
        busy = lib.fipc_shm_close(self._h)
        deadline = _monotonic() + 5.0
        while busy and _monotonic() < deadline:
            time.sleep(0.0005)
            busy = lib.fipc_shm_busy(self._h)
        if not busy:
            ffi.release(self._base)

    def detach(self) -> None:
        """Let go of the mapping without telling the peer anything."""
        ffi.release(self._base)


class WriterOps(_Ops):
    __slots__ = ("_progress", "_sent")

    def __init__(self, mm: Any, size: int, name: str, pid: int, max_message: int,
                 spin: float) -> None:
        super().__init__(mm, size, name)
        check(lib.fipc_shm_writer_init(self._h, self._base, size, pid, max_message, spin), name)
        self._progress = ffi.new("uint64_t *")
        self._sent = ffi.new("uint64_t *")

    def make_send(self) -> Any:
        """The hot ``send(data, timeout=None)``: validates the timeout, one C call."""
        h, progress, retry = self._h, self._progress, self._retry

        def send(data: Any, timeout: Optional[float] = None) -> None:
            if timeout is None:
                t, t0 = -1.0, 0.0
            else:
                t = check_timeout(timeout)
                t0 = _monotonic() if t > 0 else 0.0
            if type(data) is bytes:
                rc = _send(h, data, len(data), t, progress)
                if rc:
                    retry(data, len(data), rc, t, t0)
                return
            buf, n = _buffer(data)
            rc = _send(h, buf, n, t, progress)
            if rc:
                retry(buf, n, rc, t, t0)

        return send

    def _retry(self, buf: Any, n: int, rc: int, timeout: float, t0: float) -> None:
        while rc == _EINTR:  # signal handlers have run; resume where the message stopped
            rc = _send(self._h, buf, n, _left(timeout, t0), self._progress)
        if rc:
            self._progress[0] = 0  # a message cut short is abandoned; the reader drops it
            self._error(rc, timeout)

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        count = len(lens)
        clens = ffi.new("uint64_t[]", lens)
        sent = self._sent
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _send_many(self._h, blob, clens, count, timeout, sent)
        if rc == 0:
            return
        done = int(sent[0])
        base = _from_buffer(blob)
        while rc == _EINTR:
            offset = sum(lens[:done])
            rc = _send_many(self._h, base + offset, clens + done, count - done,
                            _left(timeout, t0), sent)
            done += int(sent[0])
        if rc:
            try:
                self._error(rc, timeout)
            except OSError as exc:
                exc.messages_sent = done  # type: ignore[attr-defined]
                raise


class ReaderOps(_Ops):
    __slots__ = ("_fmt", "_lens", "_out", "_outbuf", "_ptr", "_size", "_stage")

    def __init__(self, mm: Any, size: int, name: str, pid: int, max_message: int,
                 spin: float) -> None:
        super().__init__(mm, size, name)
        rc = lib.fipc_shm_reader_init(self._h, self._base, size, pid, max_message, spin)
        if rc == NOT_READY:
            ffi.release(self._base)
            raise NotReady
        if rc < 0:
            ffi.release(self._base)
            check(rc, name)
        self._ptr = ffi.new("char **")
        self._size = size
        self._stage = ffi.new("char[]", STAGE)
        self._out: Any = None
        self._outbuf: Any = None
        self._lens: Any = None
        self._fmt: Any = None

    def make_recv(self, slow: Any) -> Any:
        """The hot ``recv(timeout=None)``: a message that fits the staging buffer is copied
        there and returned by one C call; anything else goes to ``slow(rc, t, t0,
        timeout)``, which ends in :meth:`finish`."""
        h, ptr, stage = self._h, self._ptr, self._stage

        def recv(timeout: Optional[float] = None) -> bytes:
            if timeout is None:
                n = _recv(h, stage, STAGE, -1.0, ptr)
                if n >= 0:
                    return _unpack(stage, n)  # type: ignore[no-any-return]
                return slow(n, -1.0, 0.0)  # type: ignore[no-any-return]
            t = check_timeout(timeout)
            t0 = _monotonic() if t > 0 else 0.0
            n = _recv(h, stage, STAGE, t, ptr)
            if n >= 0:
                return _unpack(stage, n)  # type: ignore[no-any-return]
            return slow(n, t, t0)  # type: ignore[no-any-return]

        return recv

    def finish(self, n: int, timeout: float, t0: float) -> bytes:
        """What the hot recv could not do: retry after EINTR, return a message larger than
        the staging buffer in place, raise Need for a streamed one, or raise the error."""
        h, ptr, stage = self._h, self._ptr, self._stage
        while n == _EINTR:
            n = _recv(h, stage, STAGE, _left(timeout, t0), ptr)
        if n >= 0:
            return _unpack(stage, n)  # type: ignore[no-any-return]
        if n == NEED:  # it is there: in place if stored whole, else Need
            n = _recv(h, _NULL, 0, 0.0, ptr)
            if n >= 0:
                return _unpack(ptr[0], n)  # type: ignore[no-any-return]
        return self._fail(n, timeout)  # type: ignore[no-any-return]

    def recv(self, timeout: float) -> bytes:
        t0 = _monotonic() if timeout > 0 else 0.0
        return self.finish(_recv(self._h, self._stage, STAGE, timeout, self._ptr), timeout, t0)

    def _fail(self, n: int, timeout: float) -> Any:
        if n == NEED:
            raise Need(int(self._h.last_len))
        self._error(n, timeout)

    def recv_into(self, buffer: Any, timeout: float) -> int:
        """Copy the next message into ``buffer`` (Need if it does not fit; it stays queued).
        A streamed message interrupted by a timeout continues into the same buffer."""
        dest = _from_buffer(buffer, require_writable=type(buffer) is not bytes)
        n = _recv(self._h, dest, len(dest), timeout, self._ptr)
        t0 = _monotonic()
        while n == _EINTR:
            n = _recv(self._h, dest, len(dest), _left(timeout, t0), self._ptr)
        if n >= 0:
            return n  # type: ignore[no-any-return]
        return self._fail(n, timeout)  # type: ignore[no-any-return]

    def in_progress(self) -> tuple[int, int]:
        """(bytes copied, total) of a streamed message being assembled; (0, 0): none."""
        h = self._h
        return (int(h.msg_done), int(h.msg_total)) if h.msg_total else (0, 0)

    def view(self, timeout: float) -> tuple[int, int, int]:
        """The next message in place: (offset in the mapping, length, its ring position)."""
        n = self.recv_ptr(timeout)
        off = int(ffi.cast("uintptr_t", self._ptr[0])) - int(ffi.cast("uintptr_t", self._base))
        if not 0 <= off <= self._size - n:
            raise_errno(FIPC_CORRUPT, self.name)
        return off, n, int(self._h.last_pos)

    def recv_ptr(self, timeout: float) -> int:
        n = _recv(self._h, _NULL, 0, timeout, self._ptr)
        t0 = _monotonic()
        while n == _EINTR:
            n = _recv(self._h, _NULL, 0, _left(timeout, t0), self._ptr)
        if n < 0:
            self._fail(n, timeout)
        return n  # type: ignore[no-any-return]

    def set_hold(self, pos: Optional[int]) -> None:
        self._h.hold = _NO_HOLD if pos is None else pos
        if pos is None:
            lib.fipc_shm_release(self._h)

    def new_buffer(self, n: int) -> Any:
        return _new_bytes(None, n) if _new_bytes is not None and n else bytearray(n)

    @staticmethod
    def finish_buffer(buf: Any, n: int) -> bytes:
        if type(buf) is bytes and len(buf) == n:
            return buf
        return bytes(memoryview(buf)[:n])

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        if self._outbuf is None or len(self._lens) < max_messages:
            cap = max(1 << 20, min(max_messages * 128, 1 << 24))
            self._outbuf = bytearray(cap)
            self._out = _from_buffer(self._outbuf, require_writable=True)
            self._lens = ffi.new("uint64_t[]", max_messages)
            self._fmt = ffi.new("char[]", max_messages * 22 + 1)
        out = self._out
        cap = len(out)
        fmt_cap = max_messages * 22 + 1
        n = _recv_many(self._h, out, cap, self._lens, max_messages, self._fmt, fmt_cap, timeout)
        t0 = _monotonic()
        while n == _EINTR:
            n = _recv_many(self._h, out, cap, self._lens, max_messages, self._fmt, fmt_cap,
                           _left(timeout, t0))
        if n > 0:
            return list(struct.unpack_from(ffi.string(self._fmt), self._outbuf))
        if n == 0:
            return []
        return self._fail(n, timeout)  # type: ignore[no-any-return]
