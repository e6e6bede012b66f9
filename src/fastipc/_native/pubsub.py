"""Fan-out operations backed by ``csrc/pubsub.c``: one C call per user operation.

The mapping belongs to Python (an ``mmap.mmap``); C gets its address through
``ffi.from_buffer``, which holds a buffer export until :meth:`close` releases it, so the
mapping cannot be closed under C's feet. The public classes (``_core.Handle``) call
``close`` only once no call is inside C.
"""

from __future__ import annotations

import errno
import functools
import mmap
import struct
import time
from typing import Any, Callable, Optional

from fastipc._backend import pubsub as layout
from fastipc._backend.pubsub import NEED, NOTREADY, NotReady, PublisherOps, SubscriberOps
from fastipc._backend.ring import Holds
from fastipc._core import FIPC_CORRUPT, Deadline, check, ffi, lib, retry
from fastipc._native.shm import _NO_HOLD, _new_bytes

__all__ = ["Publisher", "Subscriber"]

NEEDED = 1 << 62  # FIPC_PUB_NEED on its way through retry()
STAGE = 2048  # messages up to this size are copied out by the one C call of recv


def _buffer(data: Any) -> Any:
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str' (encode it first)")
    try:
        return ffi.from_buffer(data)
    except (TypeError, BufferError) as exc:
        raise TypeError(
            f"a contiguous bytes-like object is required, not {type(data).__name__!r}"
        ) from exc


@functools.lru_cache(maxsize=64)
def _uniform(count: int, size: int) -> struct.Struct:
    """The struct format of ``count`` messages of ``size`` bytes each."""
    return struct.Struct(f"{size}s" * count)


def _need(rc: int) -> int:
    """FIPC_PUB_NEED as a result, not an error (``retry`` raises for negative codes)."""
    return NEEDED if rc == NEED else rc


def _too_small(cap: int, n: int) -> ValueError:
    return ValueError(f"buffer of {cap} bytes is too small for the next message ({n} bytes);"
                      " it stays queued")


def _new_buffer(n: int) -> Any:
    """A buffer to assemble a message in: a bytes object filled in place where possible."""
    return _new_bytes(None, n) if _new_bytes is not None and n else bytearray(n)


class _Ops:
    def __init__(self, mm: mmap.mmap, name: str) -> None:
        self.name = name
        self._base = ffi.from_buffer(mm)
        self._addr = int(ffi.cast("uintptr_t", self._base))
        self._h = ffi.new("fipc_pub *")

    def stats(self) -> tuple[int, int]:
        return int(self._h.spins), int(self._h.sleeps)

    def wake(self) -> None:
        lib.fipc_pub_wake(self._h)

    def park(self) -> Optional[tuple[int, int]]:
        off, val = ffi.new("uint64_t *"), ffi.new("uint32_t *")
        rc = lib.fipc_pub_park(self._h, off, val)
        if rc == 1:
            return None
        check(rc, self.name)
        return self._addr + int(off[0]), int(val[0])

    def unpark(self) -> None:
        lib.fipc_pub_unpark(self._h)

    def close(self) -> None:
        """Mark this end closed in the segment and let go of the mapping, once no call of
        another thread is inside C on it (the fast paths are counted in C; closing wakes
        them: they end with EBADF). If one does not come out in time, the mapping is left
        to the garbage collector: never unmapped under a running call."""
        h = self._h
        lib.fipc_pub_wake(h)
        deadline = time.monotonic() + 5.0
        while lib.fipc_pub_busy(h) and time.monotonic() < deadline:
            time.sleep(0.0005)
        if not lib.fipc_pub_busy(h):
            lib.fipc_pub_close(h)
            ffi.release(self._base)
            mv = getattr(self, "_mv", None)
            if mv is not None:  # the subscriber's (views still exported keep the mapping)
                mv.release()


class Publisher(_Ops):
    def __init__(self, mm: mmap.mmap, size: int, fd: int, name: str, pid: int,
                 max_message: int, overflow: int, spin: float) -> None:
        super().__init__(mm, name)
        rc = lib.fipc_pub_init(self._h, self._base, size, fd, pid, max_message, overflow, spin)
        if rc < 0:
            ffi.release(self._base)
            check(rc, name)
        self._progress = ffi.addressof(self._h[0], "progress")  # fipc_pub_put's too
        self._sent = ffi.new("uint64_t *")
        self._max = max_message
        self._limit = max_message
        if overflow == layout.DROP_OLDEST:
            self._limit = min(max_message, layout.whole_limit(size - layout.HEADER))

    def send(self, data: Any, timeout: float) -> None:
        h, progress = self._h, self._progress
        try:  # (a handler that raises runs as the C call returns: inside the try)
            buf = data if type(data) is bytes else _buffer(data)
            rc = lib.fipc_pub_send(h, buf, len(buf), timeout, progress)
            if rc:
                self._fail(rc, len(buf), timeout,
                           lambda left: lib.fipc_pub_send(h, buf, len(buf), left, progress))
        except BaseException:
            progress[0] = 0  # a message cut short is abandoned; subscribers drop it
            raise

    def send_nowait(self, data: Any) -> bool:
        buf = data if type(data) is bytes else _buffer(data)
        rc = lib.fipc_pub_send(self._h, buf, len(buf), 0.0, self._progress)
        if rc == 0:
            return True
        if rc in (-errno.ETIMEDOUT, -errno.EINTR):
            return False  # a message streamed in part keeps its progress
        self._progress[0] = 0
        self._fail(rc, len(buf), 0.0, lambda left: rc)
        return False  # pragma: no cover - _fail raised

    def send_many_nowait(self, blob: Any, lens: list[int], first: int) -> int:
        count = len(lens) - first
        base = ffi.from_buffer(blob)
        clens = ffi.new("uint64_t[]", lens[first:])
        rc = lib.fipc_pub_send_many(self._h, base + sum(lens[:first]), clens, count, 0.0,
                                    self._sent)
        sent = int(self._sent[0])
        if rc and rc not in (-errno.ETIMEDOUT, -errno.EINTR):
            self._progress[0] = 0
            try:
                self._fail(rc, max(lens[first + sent:first + sent + 1] or [0]), 0.0,
                           lambda left: rc)
            except (OSError, ValueError) as exc:
                setattr(exc, "messages_sent", first + sent)  # noqa: B010
                raise
        return sent

    def abandon(self) -> None:
        self._progress[0] = 0

    def finish_send(self, data: bytes, rc: int) -> None:
        """What the fast path's first attempt (timeout None) left to do."""
        h, progress = self._h, self._progress
        try:
            self._fail(rc, len(data), -1.0,
                       lambda left: lib.fipc_pub_send(h, data, len(data), left, progress))
        except BaseException:
            progress[0] = 0
            raise

    def fast_send(self, general: Callable[[Any, Optional[float]], None],
                  finish: Callable[[bytes, int], None]) -> Optional[Callable[..., None]]:
        """``send`` in one C call for bytes and no timeout (the decorator's bookkeeping
        would cost as much as the C call: the busy count is kept in C instead); anything
        else goes to ``general``, a failed attempt to ``finish`` (both decorated)."""
        h, progress, put = self._h, self._progress, lib.fipc_pub_put

        def send(data: Any, timeout: Optional[float] = None) -> None:
            if timeout is None and type(data) is bytes:
                try:
                    rc = put(h, data, len(data))
                except BaseException:
                    progress[0] = 0
                    raise
                if rc:
                    finish(data, rc)
                return
            general(data, timeout)

        return send

    def _fail(self, rc: int, n: int, timeout: float, again: Any) -> None:
        t0 = time.monotonic()  # (a close enough start: the first attempt just returned)
        try:
            retry(rc, again, Deadline(timeout, t0), self.name)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE and n <= self._max:
                raise ValueError(f"a message of {n} bytes is larger than drop_oldest carries "
                                 f"({self._limit} bytes: a quarter of the ring)") from None
            raise

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        count = len(lens)
        clens = ffi.new("uint64_t[]", lens)
        sent = self._sent
        rc = lib.fipc_pub_send_many(self._h, blob, clens, count, timeout, sent)
        if rc == 0:
            return
        done = [int(sent[0])]
        base = ffi.from_buffer(blob)

        def again(left: float) -> int:
            offset = sum(lens[:done[0]])
            r = int(lib.fipc_pub_send_many(self._h, base + offset, clens + done[0], count - done[0],
                               left, sent))
            done[0] += int(sent[0])
            return r

        try:
            self._fail(rc, max(lens[done[0]:done[0] + 1] or [0]), timeout, again)
        except (OSError, ValueError) as exc:
            setattr(exc, "messages_sent", done[0])  # noqa: B010 (an attribute of our own)
            raise


class Subscriber(_Ops, Holds):
    def __init__(self, mm: mmap.mmap, size: int, fd: int, slot: int, name: str, pid: int,
                 max_message: int, spin: float) -> None:
        super().__init__(mm, name)
        rc = lib.fipc_sub_init(self._h, self._base, size, fd, slot, pid, max_message, spin)
        if rc < 0:
            ffi.release(self._base)
            if rc == NOTREADY:
                raise NotReady
            check(rc, name)
        self._ptr = ffi.new("char **")
        self._size = size
        self._mv = memoryview(mm)
        self._init_holds()
        self._stage = ffi.new("char[]", STAGE)
        self._h.stage, self._h.stage_cap = self._stage, STAGE  # for fipc_sub_next
        self._partial: Any = None  # the buffer of a streamed message being assembled
        self._drop = self._h.overflow == layout.DROP_OLDEST
        self._outbuf: Any = None
        self._out: Any = None
        self._lens: Any = None

    @property
    def missed(self) -> int:
        return int(self._h.missed)

    def _recv_at(self, dest: Any, cap: int, timeout: float) -> int:
        """One attempt in C, after handing back the space of views whose users have gone
        (while such views are exported, a wait returns -EINTR every few ms to come here)."""
        if self._stuck:
            self._unstick()
        return lib.fipc_sub_recv(self._h, dest, cap, timeout, self._ptr)  # type: ignore

    def recv(self, timeout: float) -> bytes:
        if self._stuck:
            self._unstick()
        if self._partial is None:
            try:  # (a handler that raises runs as the C call returns: inside the try)
                n = lib.fipc_sub_recv(self._h, self._stage, STAGE, timeout, self._ptr)
            except BaseException:
                self._keep(self._stage, STAGE)
                raise
            if n >= 0:
                return ffi.unpack(self._stage, n)  # type: ignore[no-any-return]
            return self.finish_recv(n, timeout)
        return self._large(timeout)

    def finish_recv(self, n: int, timeout: float) -> bytes:
        """What a first attempt into the staging buffer left to do (n < 0)."""
        stage, at = self._stage, self._recv_at
        if n != NEED:
            try:
                n = retry(n, lambda left: _need(at(stage, STAGE, left)),
                          Deadline(timeout, time.monotonic()), self.name)
            except BaseException:
                self._keep(stage, STAGE)
                raise
            if n != NEEDED:
                return ffi.unpack(stage, n)  # type: ignore[no-any-return]
        return self._large(timeout)

    def fast_recv(self, general: Callable[[Optional[float]], bytes],
                  finish: Callable[[int], bytes]) -> Optional[Callable[..., bytes]]:
        """``recv`` in one C call for no timeout (as :meth:`Publisher.fast_send`)."""
        h, stage, keep, stuck = self._h, self._stage, self._keep, self._stuck
        c_next, unpack = lib.fipc_sub_next, ffi.unpack

        def recv(timeout: Optional[float] = None) -> bytes:
            if timeout is None and self._partial is None and not stuck:
                try:
                    n = c_next(h)
                except BaseException:
                    keep(stage, STAGE)
                    raise
                if n >= 0:
                    return unpack(stage, n)  # type: ignore[no-any-return]
                return finish(n)
            return general(timeout)

        return recv

    def _keep(self, dest: Any, cap: int) -> None:
        """A call cut short in the middle of a streamed message that it was assembling in
        ``dest``: keep what came of it in a buffer of its own, where C resumes it at
        msg_done in the next call, whichever (C drops a message continued into any other
        buffer than msg_dest whole: an interruption before the commit below loses it whole,
        never delivers it with a stale beginning)."""
        h = self._h
        done, total = int(h.msg_done), int(h.msg_total)
        if total and h.msg_dest == dest:
            keep = _new_buffer(total)
            into = ffi.from_buffer(keep)
            ffi.memmove(into, dest, min(done, total, cap))
            self._partial = keep
            h.msg_dest = into  # the commit

    def _large(self, timeout: float) -> bytes:
        """A message larger than the stage: in place when stored whole (block), else
        assembled into a buffer of its own (kept across an interrupted call)."""
        h, ptr = self._h, self._ptr
        deadline = Deadline(timeout)
        while True:
            if self._partial is None:
                if not self._drop:
                    n = lib.fipc_sub_recv(h, ffi.NULL, 0, 0.0, ptr)
                    if n >= 0:
                        return ffi.unpack(ptr[0], n)  # type: ignore[no-any-return]
                    if n != NEED:
                        check(n, self.name)  # nothing there after all: cannot be
                self._partial = _new_buffer(int(h.last_len))
            buf = self._partial
            dest = ffi.from_buffer(buf, require_writable=type(buf) is not bytes)
            cap = len(dest)

            def again(left: float, d: Any = dest, c: int = cap) -> int:
                return _need(self._recv_at(d, c, left))

            try:
                n = retry(again(deadline.left()), again, deadline, self.name)
            except BaseException:
                if h.msg_total == 0:
                    self._partial = None
                raise
            self._partial = None
            if n == NEEDED:  # what was being assembled was given up for a larger one
                continue
            if n == len(buf) and type(buf) is bytes:
                return buf
            return bytes(memoryview(buf)[:n])

    def recv_into(self, buffer: Any, timeout: float) -> int:
        h, ptr = self._h, self._ptr
        try:
            dest = ffi.from_buffer(buffer, require_writable=True)
        except (TypeError, BufferError) as exc:
            raise TypeError("recv_into needs a writable contiguous bytes-like object, not "
                            f"{type(buffer).__name__!r}") from exc
        cap = len(dest)
        if self._stuck:
            self._unstick()
        if self._partial is not None:
            if cap < len(self._partial):
                raise _too_small(cap, len(self._partial))
            data = self._large(timeout)
            memoryview(buffer).cast("B")[:len(data)] = data
            return len(data)
        try:  # (a handler that raises runs as the C call returns: inside the try)
            n = lib.fipc_sub_recv(h, dest, cap, timeout, ptr)
            if n >= 0:
                return n  # type: ignore[no-any-return]
            n = retry(_need(n), lambda left: _need(self._recv_at(dest, cap, left)),
                      Deadline(timeout, time.monotonic()), self.name)
        except BaseException:  # a timeout, or a handler that raised
            self._keep(dest, cap)
            raise
        if n == NEEDED:
            raise _too_small(cap, int(h.last_len))
        return n

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        if self._drop or self._partial is not None:  # a copy: nothing held
            return memoryview(self.recv(timeout)), None
        at = self._recv_at
        n = retry(_need(at(ffi.NULL, 0, timeout)), lambda left: _need(at(ffi.NULL, 0, left)),
                  Deadline(timeout, time.monotonic()), self.name)
        if n == NEEDED:  # a streamed message: assembled, so a copy
            return memoryview(self._large(timeout)), None
        off = int(ffi.cast("uintptr_t", self._ptr[0])) - self._addr
        if not 0 <= off <= self._size - n:
            check(FIPC_CORRUPT, self.name)
        return self._export(off, n, int(self._h.last_pos))

    def set_hold(self, pos: Optional[int]) -> None:
        self._h.hold = _NO_HOLD if pos is None else pos
        lib.fipc_sub_release(self._h)

    def _recheck(self, flag: bool) -> None:
        self._h.recheck = int(flag)

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        if self._stuck:
            self._unstick()
        if self._partial is not None:
            return [self.recv(timeout)]
        if self._outbuf is None or len(self._lens) < max_messages:
            cap = max(1 << 20, min(max_messages * 128, 1 << 24))
            self._outbuf = bytearray(cap)
            self._out = ffi.from_buffer(self._outbuf, require_writable=True)
            self._lens = ffi.new("uint64_t[]", max_messages)
        h, out, lens, many = self._h, self._out, self._lens, lib.fipc_sub_recv_many
        n = many(h, out, len(out), lens, max_messages, timeout)
        if n < 0:
            def again(left: float) -> int:
                if self._stuck:
                    self._unstick()
                return _need(many(h, out, len(out), lens, max_messages, left))

            n = retry(_need(n), again,
                      Deadline(timeout, time.monotonic()), self.name)
            if n == NEEDED:  # NEED: the next message is not for a batch
                return [self.recv(timeout)]
        sizes = ffi.unpack(lens, n)
        if n and min(sizes) == max(sizes):  # the usual case: one cached format
            fmt = _uniform(n, sizes[0])
        else:
            fmt = struct.Struct("".join(f"{m}s" for m in sizes))
        return list(fmt.unpack_from(self._outbuf))  # every bytes object in one call


_check_pub: type[PublisherOps] = Publisher
_check_sub: type[SubscriberOps] = Subscriber
