"""Channel operations backed by ``csrc/shm.c``: one C call per user operation.

The mapping belongs to Python (an ``mmap.mmap``); C gets its address through
``ffi.from_buffer``, which holds a buffer export, so the mapping cannot be closed under C's
feet; ``close()`` releases that export only once no call is in C. Python itself never reads
the mapping here except through the views of ``recv_view``, which the public class counts as
busy calls until they are released.

Streamed messages are reassembled in one place: C copies each chunk at the offset it has
reached (``msg_done``) into the buffer it is given, and this module keeps that buffer
(``_pending``) across calls, so that a call interrupted half-way (timeout, a signal handler
that raises) leaves the message whole for the next call of any kind.
"""

from __future__ import annotations

import ctypes
import errno
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Optional

from fastipc._backend import shm as contract
from fastipc._backend.ring import Holds
from fastipc._core import (
    FIPC_CORRUPT,
    Deadline,
    _monotonic,
    check,
    check_timeout,
    ffi,
    lib,
    raise_errno,
)

__all__ = ["ReaderOps", "WriterOps"]

NEED = lib.FIPC_SHM_NEED
_EINTR = -errno.EINTR
_EBADF = -errno.EBADF
_EAGAIN = -errno.ETIMEDOUT  # what a try-once call that would wait returns
_send = lib.fipc_shm_send
_send_many = lib.fipc_shm_send_many
_recv = lib.fipc_shm_recv
_recv_many = lib.fipc_shm_recv_many
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL
_NO_HOLD = 2**64 - 1
STAGE = 2048  # messages up to this size are copied out of the ring by the one C call
BATCH = 64  # recv_async takes up to this many messages per C call...
BATCH_BYTES = 1 << 16  # ...of this many bytes in all
_BATCH_FMT = BATCH * 22 + 1
_string = ffi.string
_ONE = (None,)
_unpack_from = struct.unpack_from

try:  # a bytes object to fill in place: one copy less for large messages
    _new_bytes: Any = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
except (AttributeError, TypeError):  # not CPython
    _new_bytes = None


def _new_buffer(n: int) -> Any:
    """A buffer C fills, delivered as is once whole (never seen by anyone before)."""
    return _new_bytes(None, n) if _new_bytes is not None and n else bytearray(n)


def _as_bytes(buf: Any, n: int) -> bytes:
    if type(buf) is bytes and len(buf) == n:
        return buf
    return bytes(memoryview(buf)[:n])


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


class _Ops(contract.Retrying):
    _what = "channel end"
    _c_init: Any  # fipc_shm_writer_init or fipc_shm_reader_init

    def __init__(self, mm: Any, size: int, fd: int, name: str, pid: int, max_message: int,
                 spin: float) -> None:
        """This end of the channel in ``mm`` (``size`` bytes, from fstat of ``fd``): C writes
        the header (writer) or checks it (reader), then the end sets up its own state."""
        self.name = name
        self._size = size
        self._fd = fd
        self._base = _from_buffer(mm)
        self._addr = int(ffi.cast("uintptr_t", self._base))
        self._h = ffi.new("fipc_shm *")
        rc = self._c_init(self._h, self._base, size, fd, pid, max_message, spin)
        if rc < 0:
            ffi.release(self._base)
            check(rc, self.name)
        self._setup(mm)

    def _setup(self, mm: Any) -> None:
        """What this end keeps besides C's handle."""

    @property
    def spin(self) -> float:
        return float(self._h.spin.max_ns) / 1e9

    @spin.setter
    def spin(self, value: float) -> None:
        self._h.spin.max_ns = self._h.spin.ns = int(min(value, 1.0) * 1e9)

    def stats(self) -> tuple[int, int]:
        return int(self._h.spins), int(self._h.sleeps)

    def park(self) -> Optional[tuple[int, int]]:
        off = ffi.new("uint64_t *")
        val = ffi.new("uint32_t *")
        rc = lib.fipc_shm_park(self._h, off, val)
        if rc == 1:
            return None
        if rc < 0:
            self._run(rc, _no_retry, Deadline(0.0))
        return self._addr + int(off[0]), int(val[0])

    def unpark(self) -> None:
        lib.fipc_shm_unpark(self._h)

    def wake(self) -> None:
        lib.fipc_shm_wake(self._h)

    def close(self) -> None:
        """Tell the peer, then let go of the mapping once no call of another thread is in
        C (closing wakes such a call: it returns at once). The fast paths keep their busy
        count in C, so this waits for it; should one not come out in time, the mapping is
        left to the garbage collector (never unmapped under a running call)."""
        busy = lib.fipc_shm_close(self._h)
        end = _monotonic() + 5.0
        while busy and _monotonic() < end:
            _sleep(0.0005)
            busy = lib.fipc_shm_busy(self._h)
        if not busy:
            self.detach()

    def detach(self) -> None:
        lib.fipc_shm_forget(self._h)
        ffi.release(self._base)
        mv = getattr(self, "_mv", None)
        if mv is not None:
            mv.release()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _no_retry(left: float) -> int:
    return -errno.EAGAIN  # never called: _run is given a status that is not EINTR


# ---------------------------------------------------------------------------- writer


class WriterOps(_Ops, contract.NowaitSend):
    _what = "Writer"
    _c_init = lib.fipc_shm_writer_init

    def _setup(self, mm: Any) -> None:
        self._progress = ffi.new("uint64_t *")
        self._sent = ffi.new("uint64_t *")
        self._nowait = ffi.new("uint64_t *")

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        self.fast_call()(data, timeout)  # (the public class keeps the function)

    def fast_call(self) -> contract.Send:
        """The hot ``send(data, timeout=None)``: one C call; busy counted in C."""
        h, progress, slow = self._h, self._progress, self._send_slow

        def send(data: Any, timeout: Optional[float] = None) -> None:
            if timeout is None:
                t = -1.0
                start = 0.0
            else:  # a finite wait: when it began, for the time left after EINTR
                t = check_timeout(timeout)
                start = _monotonic()
            if type(data) is bytes:
                rc = _send(h, data, len(data), t, progress)
                if rc:
                    slow(data, len(data), rc, t, start)
                return
            buf, n = _buffer(data)
            rc = _send(h, buf, n, t, progress)
            if rc:
                slow(buf, n, rc, t, start)

        return send

    def fast_async(self, wait: contract.Awaited) -> contract.Awaited:
        """``send_async``: a bytes message that fits goes in one C call, as ``send`` does;
        anything else (a full ring, another type, which cffi refuses) is ``wait``'s."""
        h, nowait, sent = self._h, self._nowait, self._nowait_sent

        async def send_async(data: Any, timeout: Optional[float] = None) -> None:
            if timeout is not None:
                check_timeout(timeout)
            try:  # cffi takes bytes for a char *, and refuses anything else
                rc = _send(h, data, len(data), 0.0, nowait)
            except TypeError:
                rc = _EAGAIN
            else:
                if not rc:
                    return
                sent(rc)  # raises what is not "the ring is full" (progress is kept)
            await wait(data, timeout)

        return send_async

    def _send_slow(self, buf: Any, n: int, rc: int, timeout: float, start: float) -> None:
        h, progress = self._h, self._progress
        try:  # signal handlers run; a resumed call goes on where the message stopped
            self._run(rc, lambda left: _send(h, buf, n, left, progress),
                      Deadline(timeout, start))
        except BaseException:
            progress[0] = 0  # a message cut short is abandoned; the reader drops it
            raise

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        count = len(lens)
        clens = ffi.new("uint64_t[]", lens)
        sent = self._sent
        start = _monotonic()
        rc = _send_many(self._h, blob, clens, count, timeout, sent)
        if rc == 0:
            return
        done = int(sent[0])
        base = _from_buffer(blob)
        deadline = Deadline(timeout, start)
        while rc == _EINTR:
            offset = sum(lens[:done])
            rc = _send_many(self._h, base + offset, clens + done, count - done,
                            deadline.left(), sent)
            done += int(sent[0])
        if rc:
            try:
                self._run(rc, _no_retry, deadline)
            except OSError as exc:
                exc.messages_sent = done  # type: ignore[attr-defined]
                raise

    def send_nowait(self, data: Any) -> bool:
        if type(data) is bytes:
            rc = _send(self._h, data, len(data), 0.0, self._nowait)
        else:
            buf, n = _buffer(data)
            rc = _send(self._h, buf, n, 0.0, self._nowait)
        return self._nowait_sent(rc)

    def flushed(self) -> bool:
        rc = lib.fipc_shm_flushed(self._h)
        if rc < 0:
            self._run(rc, _no_retry, Deadline(0.0))
        return bool(rc == 1)

    def reader_attached(self) -> bool:
        return bool(lib.fipc_shm_reader_attached(self._h))


# ---------------------------------------------------------------------------- reader


class ReaderOps(_Ops, Holds):
    _what = "Reader"
    _c_init = lib.fipc_shm_reader_init

    def _setup(self, mm: Any) -> None:
        self._mv = memoryview(mm)
        self._ptr = ffi.new("char **")
        self._stage = ffi.new("char[]", STAGE)
        self._staged = ffi.buffer(self._stage)  # staged[:n]: its first n bytes, as bytes
        self._init_holds()
        self._part: list[Any] = []  # the buffer of a streamed message being assembled, if any
        # messages a batch took from the ring that no call has returned yet: every call
        # returns these first (see fast_async)
        self._taken: deque[bytes] = deque()
        # not empty while a call may have to look at _taken, _part or _stuck first: the
        # one thing the hot recv looks at (emptied by the first call that finds none)
        self._detour: list[None] = []
        self._batch = bytearray(BATCH_BYTES)
        self._batch_out = _from_buffer(self._batch, require_writable=True)
        self._batch_lens = ffi.new("uint64_t[]", BATCH)
        self._batch_fmt = ffi.new("char[]", _BATCH_FMT)
        self._msg: Any = None  # what the last attempt delivered
        self._outbuf: Any = None
        self._out: Any = None
        self._lens: Any = None
        self._fmt: Any = None

    @property
    def _pending(self) -> Any:
        """The buffer a streamed message larger than STAGE is assembled in (None: none is):
        C continues it only into that buffer, so while one is there no call may pass the
        stage (the hot paths look at the list ``_part`` holding it)."""
        return self._part[0] if self._part else None

    @_pending.setter
    def _pending(self, buf: Any) -> None:
        if buf is None:
            self._part.clear()
        else:
            self._detour[:] = _ONE
            self._part[:] = (buf,)

    def fast_call(self) -> contract.Recv:
        """The hot ``recv(timeout=None)``: a message up to STAGE bytes is copied out and
        returned by one C call (busy counted in C); anything else takes the slow path."""
        h, ptr, stage, staged, slow = self._h, self._ptr, self._stage, self._staged, self._recv_slow
        detour, around = self._detour, self.recv

        def recv(timeout: Optional[float] = None) -> bytes:
            if detour:
                return around(timeout)
            if timeout is None:
                n = _recv(h, stage, STAGE, -1.0, ptr)
                if n >= 0:
                    return staged[:n]  # type: ignore[no-any-return]
                return slow(n, -1.0, 0.0)
            t = check_timeout(timeout)
            start = _monotonic()  # a finite wait: when it began, for the time left after EINTR
            n = _recv(h, stage, STAGE, t, ptr)
            if n >= 0:
                return staged[:n]  # type: ignore[no-any-return]
            return slow(n, t, start)

        return recv

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The general path, which the hot one (:meth:`fast_call`) takes while ``_detour``
        is set: the messages a batch took come first, then the views whose space may go
        back (``_stuck``) and a streamed message half-way into its own buffer."""
        t = -1.0 if timeout is None else check_timeout(timeout)
        if self._taken:
            return self._taken.popleft()
        if not (self._part or self._stuck):
            self._detour.clear()  # none of these any more: back to the straight path
        return self._recv_slow(NEED, t, _monotonic())  # (_attempt looks at _stuck first)

    def fast_async(self, wait: contract.Awaited) -> contract.Awaited:
        """``recv_async``: the messages there already (up to BATCH, BATCH_BYTES in all) come
        out of the ring in one C call; the first is returned, the others are kept in
        ``_taken``, which this and every other call of the reader return first. None there
        yet, or a larger one (a streamed message): ``wait``'s.

        An exception raised into the call (a signal handler) after C took a batch and
        before it was kept: the batch is still in ``_batch``, and the format C wrote says
        so until it is kept (cleared just before), so the handler keeps it."""
        h, part, fail, keep = self._h, self._part, self._fail, self._keep_batch
        taken, detour, stuck, unstick = self._taken, self._detour, self._stuck, self._unstick
        popleft = taken.popleft
        out, lens, fmt, batch = self._batch_out, self._batch_lens, self._batch_fmt, self._batch
        batched = ffi.buffer(out)

        async def recv_async(timeout: Optional[float] = None) -> Any:
            if timeout is not None:
                check_timeout(timeout)
            if taken:
                return popleft()
            if stuck:
                unstick()
            if not part:
                try:
                    n = _recv_many(h, out, BATCH_BYTES, lens, BATCH, fmt, _BATCH_FMT, 0.0)
                    if n == 1:  # the one message there: none to keep
                        msg = batched[:lens[0]]
                        fmt[0] = b"\0"
                        return msg
                    if n > 0:
                        got = _unpack_from(_string(fmt), batch)
                        detour[:] = _ONE
                        fmt[0] = b"\0"  # kept (no signal handler runs before the next call)
                        taken.extend(got)
                        return popleft()
                except BaseException:
                    keep()
                    raise
                if n != _EAGAIN and n != _EINTR and n != NEED and n != 0:
                    fail(n)
            return await wait(timeout)

        return recv_async

    def _keep_batch(self) -> None:
        """Keep the messages of a batch that C took but its call did not keep."""
        fmt = self._batch_fmt
        if fmt[0] != b"\0":
            got = _unpack_from(_string(fmt), self._batch)
            self._detour[:] = _ONE
            fmt[0] = b"\0"
            self._taken.extend(got)

    def drop_taken(self) -> None:
        self._taken.clear()
        super().drop_taken()

    def _fail(self, rc: int) -> None:
        """Raise the exception of status ``rc`` (a call that does not wait)."""
        self._run(rc, _no_retry, Deadline(0.0))

    def _attempt(self, t: float) -> int:
        """One try at the next message, into ``_msg``: its length or a negative status.
        Larger than STAGE: a buffer of its own (``_pending``), kept until it is whole."""
        h = self._h
        if self._stuck:
            self._unstick()
        while True:
            pend = self._pending
            if pend is None:
                n = _recv(h, self._stage, STAGE, t, self._ptr)
                if n >= 0:
                    self._msg = self._staged[:n]
                    return n  # type: ignore[no-any-return]
                if n != NEED:
                    return n  # type: ignore[no-any-return]
                pend = self._pending = _new_buffer(int(h.last_len))
            n = _recv(h, _from_buffer(pend), len(pend), t, self._ptr)
            if n >= 0:
                self._pending = None
                self._msg = _as_bytes(pend, n)
                return n  # type: ignore[no-any-return]
            if n == NEED:  # its writer gave it up for another message: start again
                self._pending = None
                continue
            if not h.msg_total:  # nothing of it came yet, or it was dropped (EOF)
                self._pending = None
            return n  # type: ignore[no-any-return]

    def _recv_slow(self, n: int, timeout: float, start: float) -> bytes:
        if n == NEED:  # larger than STAGE, or streamed: not a wait, go on at once
            n = self._attempt(timeout)
        if n < 0:
            self._run(n, self._attempt, Deadline(timeout, start))
        msg, self._msg = self._msg, None
        return msg  # type: ignore[no-any-return]

    def recv_into(self, buffer: Any, timeout: float) -> int:
        dest = _from_buffer(buffer, require_writable=True)
        cap = len(dest)
        h = self._h

        def attempt(t: float) -> int:
            if self._taken:
                msg = self._taken[0]
                if len(msg) > cap:
                    self._too_small(cap, len(msg))
                ffi.memmove(dest, msg, len(msg))
                self._taken.popleft()
                return len(msg)
            if self._stuck:
                self._unstick()
            started = int(h.msg_total)  # a streamed message is half-way into the stage or
            if started:  # a buffer of its own, which C continues it into: finish it there
                if started > cap:
                    self._too_small(cap, started)
                n = self._attempt(t)
                if n >= 0:
                    ffi.memmove(dest, self._msg, n)
                    self._msg = None
                return n
            n = _recv(h, dest, cap, t, self._ptr)
            if n == NEED:
                self._too_small(cap, int(h.last_len))
            if n < 0 and h.msg_total:  # cut short: keep what came for the next call
                keep = _new_buffer(int(h.msg_total))
                into = _from_buffer(keep)
                ffi.memmove(into, dest, int(h.msg_done))
                self._pending = keep
                h.msg_dest = into  # the commit: an interruption before it drops the message
            return n  # type: ignore[no-any-return]

        start = _monotonic()
        n = attempt(timeout)
        return n if n >= 0 else self._run(n, attempt, Deadline(timeout, start))

    @staticmethod
    def _too_small(cap: int, n: int) -> None:
        raise ValueError(f"buffer of {cap} bytes is too small for the next message "
                         f"({n} bytes); it stays queued")

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        if self._taken:  # out of the ring already: a view of its copy, nothing held
            return memoryview(self._taken.popleft()), None
        h, ptr = self._h, self._ptr
        if self._pending is None:

            def attempt(t: float) -> int:
                if self._stuck:
                    self._unstick()
                return _recv(h, _NULL, 0, t, ptr)  # type: ignore[no-any-return]

            start = _monotonic()
            rc = attempt(timeout)
            if rc < 0 and rc != NEED:
                rc = self._run(rc, attempt, Deadline(timeout, start))
            if rc >= 0:
                off = int(ffi.cast("uintptr_t", ptr[0])) - self._addr
                if not 0 <= off <= self._size - rc:
                    raise_errno(FIPC_CORRUPT, self.name)
                return self._export(off, rc, int(h.last_pos))
        return memoryview(self._recv_slow(NEED, timeout, _monotonic())), None

    def set_hold(self, pos: Optional[int]) -> None:
        lib.fipc_shm_set_hold(self._h, _NO_HOLD if pos is None else pos)

    def _recheck(self, flag: bool) -> None:
        self._h.recheck = int(flag)
        if flag:  # the hot paths look at _stuck first (recv)
            self._detour[:] = _ONE

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        out = self._many(max_messages, timeout)
        if out is None:
            return [self._recv_slow(NEED, timeout, _monotonic())]
        return out

    def _many(self, max_messages: int, timeout: float) -> Optional[list[bytes]]:
        taken = self._taken
        if taken:
            return [taken.popleft() for _ in range(min(max_messages, len(taken)))]
        if self._part:
            return None
        if self._outbuf is None or len(self._lens) < max_messages:
            cap = max(1 << 20, min(max_messages * 128, 1 << 24))
            self._outbuf = bytearray(cap)
            self._out = _from_buffer(self._outbuf, require_writable=True)
            self._lens = ffi.new("uint64_t[]", max_messages)
            self._fmt = ffi.new("char[]", max_messages * 22 + 1)
        out, lens, fmt = self._out, self._lens, self._fmt
        cap, fmt_cap = len(out), max_messages * 22 + 1
        h = self._h
        if self._stuck:
            self._unstick()
        start = _monotonic() if timeout > 0 else 0.0
        n = _recv_many(h, out, cap, lens, max_messages, fmt, fmt_cap, timeout)
        if n > 0:
            return list(struct.unpack_from(ffi.string(fmt), self._outbuf))
        if n == 0:
            return []
        if n == NEED:
            return None

        def attempt(t: float) -> int:
            if self._stuck:
                self._unstick()
            return _recv_many(h, out, cap, lens, max_messages, fmt, fmt_cap, t)  # type: ignore

        n = self._run(n, attempt, Deadline(timeout, start or _monotonic()))
        return list(struct.unpack_from(ffi.string(fmt), self._outbuf)) if n else []

    def recv_nowait(self) -> Optional[bytes]:
        if self._taken:
            return self._taken.popleft()
        if not self._part and not self._stuck:  # the common case: one C call
            n = _recv(self._h, self._stage, STAGE, 0.0, self._ptr)
            if n >= 0:
                return self._staged[:n]  # type: ignore[no-any-return]
            if n in (_EAGAIN, _EINTR):
                return None
            if n != NEED:
                self._fail(n)
        n = self._attempt(0.0)
        if n >= 0:
            msg, self._msg = self._msg, None
            return msg  # type: ignore[no-any-return]
        if n not in (_EAGAIN, _EINTR):
            self._fail(n)
        return None

    def recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]:
        try:
            out = self._many(max_messages, 0.0)
        except TimeoutError:
            return None
        if out is None:
            msg = self.recv_nowait()
            return None if msg is None else [msg]
        return out or None


if TYPE_CHECKING:
    _check_writer: type[contract.WriterOps] = WriterOps
    _check_reader: type[contract.ReaderOps] = ReaderOps
