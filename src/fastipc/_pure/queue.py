"""Queue operations in pure Python over the same binary layout as ``csrc/queue.c``.

The two robust process-shared mutexes are glibc's own, called through ``ctypes`` on the
same memory (``pthread_mutex_trylock`` / ``clocklock`` / ``consistent`` / ``unlock``), so
native and pure participants exclude each other. The head and tail words are aligned
64-bit words read and written whole through a ``ctypes`` array over the mapping; the ring
is copied through ``memoryview`` slices. Ordering: each commit happens under a mutex and is
followed by its unlock, a locked instruction (a full barrier on x86-64); on other CPUs a
futex-wake barrier (``fastipc._pure.shm._fence``) is added. A sleeper raises its waiting
flag, fences, then looks again (the protocol of ``docs/queue-layout.md``); this backend
never clears a flag raised by others (it cannot exchange atomically): it wakes sleepers
while the flag is up, and a native participant clears it.

A locked section that an exception (Ctrl-C) cuts short is unlocked by ``finally``, which
asks the mutex whether this thread owns it, so the lock is never kept by a live thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any

from fastipc._backend import queue as L
from fastipc._backend.queue import FormatFn, QueueOps
from fastipc._core import FIPC_CORRUPT, Deadline, byte_view, check
from fastipc._pure.shm import _TSO, _fence, _futex_wait, _futex_wake

__all__ = ["Ops", "format"]

SLICE = 0.1  # sleep at most this long between looks at `closed`
LOCK_GRACE = 0.1  # a try-once call waits this long for a busy mutex
SPILL_GRACE = 0.01  # a put that may wait and finds the ring full waits this long, then spills
KIND_MAX = 15
_CLOCK_MONOTONIC = 1
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1
_OWNER = 8  # glibc's pthread_mutex_t: int __lock, unsigned __count, int __owner (the tid)
_HDR = struct.Struct("<II")
_T, _H = L.OFF_TAIL // 8, L.OFF_HEAD // 8
_SW, _SR = L.OFF_SPILL_W // 8, L.OFF_SPILL_R // 8  # the spill's cursors
_SPUT, _SGOT = L.OFF_SPILL_PUT // 8, L.OFF_SPILL_GOT // 8
_SPILLING = L.OFF_SPILLING // 4
_SPILL_HEAD = struct.Struct("<8sQ")
_END = bytes(L.FRAME)
_monotonic = time.monotonic
_tid = threading.get_native_id


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _libc_fn(libc: Any, name: str, *args: Any) -> Any:
    fn = getattr(libc, name)
    fn.argtypes = args
    fn.restype = ctypes.c_int
    return fn


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_vp = ctypes.c_void_p
_trylock = _libc_fn(_libc, "pthread_mutex_trylock", _vp)
_clocklock = _libc_fn(_libc, "pthread_mutex_clocklock", _vp, ctypes.c_int,
                      ctypes.POINTER(_Timespec))
_consistent = _libc_fn(_libc, "pthread_mutex_consistent", _vp)
_unlock = _libc_fn(_libc, "pthread_mutex_unlock", _vp)
_mutex_init = _libc_fn(_libc, "pthread_mutex_init", _vp, _vp)
_attr_init = _libc_fn(_libc, "pthread_mutexattr_init", _vp)
_attr_destroy = _libc_fn(_libc, "pthread_mutexattr_destroy", _vp)
_attr_pshared = _libc_fn(_libc, "pthread_mutexattr_setpshared", _vp, ctypes.c_int)
_attr_robust = _libc_fn(_libc, "pthread_mutexattr_setrobust", _vp, ctypes.c_int)


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _advance(word: int, nbytes: int, n: int) -> int:
    units = ((word >> 32) + nbytes // 8) & 0xFFFFFFFF
    return units << 32 | ((word + n) & 0xFFFFFFFF)


def _pwrite_all(fd: int, views: list[memoryview], off: int) -> None:
    while views:
        n = os.pwritev(fd, views, off)
        off += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views = views[1:]
        if views and n:
            views = [views[0][n:], *views[1:]]


def _pread_all(fd: int, n: int, off: int) -> bytes:
    """n bytes at off; ValueError if the file is shorter (its cursor said otherwise)."""
    data = os.pread(fd, n, off)
    while len(data) < n:
        more = os.pread(fd, n - len(data), off + len(data))
        if not more:
            raise ValueError("spill file shorter than its cursor")
        data += more
    return data


def _capacity_ok(capacity: int) -> bool:
    return L.MIN_CAPACITY <= capacity <= 1 << 32 and capacity & (capacity - 1) == 0


def format(mm: Any, size: int, max_message: int, maxsize: int, pid: int) -> int:
    capacity = size - L.HEADER
    if not _capacity_ok(capacity):
        return -errno.EINVAL
    base = (ctypes.c_char * L.HEADER).from_buffer(mm)
    try:
        addr = ctypes.addressof(base)
        attr = ctypes.create_string_buffer(64)
        rc = (_attr_init(attr) or _attr_pshared(attr, _PTHREAD_PROCESS_SHARED)
              or _attr_robust(attr, _PTHREAD_MUTEX_ROBUST)
              or _mutex_init(addr + L.OFF_PUT_LOCK, attr)
              or _mutex_init(addr + L.OFF_GET_LOCK, attr))
        _attr_destroy(attr)
    finally:
        del base
    if rc:
        return -int(rc)
    struct.pack_into("<IQQQi", mm, L.OFF_VERSION, L.VERSION, capacity, max_message, maxsize, pid)
    struct.pack_into("<I", mm, L.OFF_MAGIC, L.MAGIC)  # last: the queue is ready
    return 0


class Ops:
    def __init__(self, mm: Any, size: int, spin: float, spill: str, mode: int) -> None:
        magic, version, capacity, _max, maxsize = struct.unpack_from("<IIQQQ", mm, 0)
        if (magic != L.MAGIC or version != L.VERSION or capacity != size - L.HEADER
                or not _capacity_ok(capacity)):
            raise OSError(errno.EBADMSG, "not a fastipc queue, or a corrupted header")
        self._cap: int = capacity
        self._mask: int = capacity - 1
        self._maxsize = maxsize
        self._spin = spin
        self._closed = False
        self._stalled = (-1, -1)  # put: (head, spill read word) when a grace last ran out
        self._last = (0, 0)
        self._w64: Any = (ctypes.c_uint64 * (L.HEADER // 8)).from_buffer(mm)
        self._w32: Any = (ctypes.c_uint32 * (L.HEADER // 4)).from_buffer(mm)
        self._i32: Any = (ctypes.c_int32 * (L.HEADER // 4)).from_buffer(mm)
        self._addr = ctypes.addressof(self._w64)
        self._data: Any = memoryview(mm)[L.HEADER:L.HEADER + capacity]
        if len(spill.encode()) + 12 > L.PATH_MAX:
            raise OSError(errno.ENAMETOOLONG, "queue name too long for its spill files")
        self._spill = spill
        self._spill_mode = mode
        self._wfd = self._rfd = -1  # spill files kept open: (fd, seq), under each side's lock
        self._wseq = self._rseq = 0

    # ---- shared pieces
    def _span(self, head: int, tail: int) -> tuple[int, int]:
        """(bytes, messages) between head and tail; (-1, -1) if inconsistent."""
        used = (((tail >> 32) - (head >> 32)) & 0xFFFFFFFF) * 8
        count = (tail - head) & 0xFFFFFFFF
        if used > self._cap or count > used // L.FRAME or (count == 0) != (used == 0):
            return -1, -1
        return used, count

    def _lock(self, off: int, deadline: Deadline) -> int:
        m = self._addr + off
        rc: int = _trylock(m)
        if rc == errno.EBUSY:
            end = _monotonic() + LOCK_GRACE if deadline.timeout == 0 else deadline.end
            while rc == errno.EBUSY:
                if self._closed:
                    return -errno.EBADF
                now = _monotonic()
                if end > 0 and now >= end:
                    return -errno.ETIMEDOUT
                until = min(end, now + SLICE) if end > 0 else now + SLICE
                ts = _Timespec(int(until), int((until % 1) * 1e9))
                rc = _clocklock(m, _CLOCK_MONOTONIC, ctypes.byref(ts))
                if rc == errno.ETIMEDOUT:
                    rc = errno.EBUSY
        if rc == errno.EOWNERDEAD:  # its holder died: the state is consistent as it is
            rc = _consistent(m)
        return -int(rc)

    def _release(self, off: int) -> None:
        if self._i32[(off + _OWNER) // 4] == _tid():
            _unlock(self._addr + off)

    def _notify(self, seq_off: int, flag_off: int) -> None:
        if not _TSO:
            _fence()
        if self._w32[flag_off // 4]:
            self._w32[seq_off // 4] = (self._w32[seq_off // 4] + 1) & 0xFFFFFFFF
            _futex_wake(self._addr + seq_off)

    def _wait(self, word: int, seen: int, word2: int, seen2: int, seq_off: int, flag_off: int,
              deadline: Deadline) -> int:
        """Wait until w64[word] differs from seen or w64[word2] from seen2 (the ring's line
        and the spill's cursor of the other side)."""
        if deadline.timeout == 0:
            return -errno.ETIMEDOUT
        w64, w32 = self._w64, self._w32
        if self._spin > 0:
            stop = _monotonic() + self._spin
            while _monotonic() < stop:
                if w64[word] != seen or w64[word2] != seen2:
                    return 0
        while True:
            if self._closed:
                return -errno.EBADF
            w32[flag_off // 4] = 1
            _fence()
            seq = w32[seq_off // 4]
            if w64[word] != seen or w64[word2] != seen2:
                return 0
            left = deadline.left()
            if left == 0.0:
                return -errno.ETIMEDOUT
            rc = _futex_wait(self._addr + seq_off, seq, SLICE if left < 0 else min(left, SLICE))
            if rc < 0:
                return rc

    def _write(self, off: int, view: memoryview) -> int:
        n = len(view)
        first = self._cap - off
        if n <= first:
            self._data[off:off + n] = view
        else:
            self._data[off:] = view[:first]
            self._data[:n - first] = view[first:]
        return (off + n) & self._mask

    def _read(self, off: int, dest: memoryview) -> None:
        n = len(dest)
        first = self._cap - off
        if n <= first:
            dest[:] = self._data[off:off + n]
        else:
            dest[:first] = self._data[off:]
            dest[first:] = self._data[:n - first]

    # ---- the spill (csrc/queue.c, "the spill", and docs/queue-layout.md)
    def _spill_count(self) -> int:
        n = (self._w64[_SPUT] - self._w64[_SGOT]) & 0xFFFFFFFFFFFFFFFF
        return 0 if n > 1 << 62 else n

    def _spill_fd(self, seq: int, create: bool, side: str) -> int:
        fd, fd_seq = (self._wfd, self._wseq) if side == "w" else (self._rfd, self._rseq)
        if fd >= 0 and fd_seq == seq:
            return fd
        flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
        new = os.open(f"{self._spill}{seq}", flags, self._spill_mode)
        if fd >= 0:
            os.close(fd)
        if side == "w":
            self._wfd, self._wseq = new, seq
        else:
            self._rfd, self._rseq = new, seq
        return new

    def _spill_unlink(self, seq: int) -> None:
        if self._rfd >= 0 and self._rseq == seq:
            os.close(self._rfd)
            self._rfd = -1
        try:
            os.unlink(f"{self._spill}{seq}")
        except FileNotFoundError:
            pass

    def _spill_append(self, w: int, parts: list[memoryview], total: int, kind: int) -> int:
        """Under put_lock: append one frame at the (uncommitted) cursor w; the new cursor."""
        seq, off = w >> 32, w & 0xFFFFFFFF
        frame = _round8(L.FRAME + total)
        if off and off + frame > L.SPILL_FILE:  # end this file, go on in the next
            _pwrite_all(self._spill_fd(seq, False, "w"), [memoryview(_END)], off)
            seq, off = (seq + 1) & 0xFFFFFFFF, 0
        fd = self._spill_fd(seq, off == 0, "w")
        views = [memoryview(_HDR.pack(total, kind)), *parts]
        if off == 0:  # a new file (or one a killed producer left: written over)
            views.insert(0, memoryview(_SPILL_HEAD.pack(L.SPILL_MAGIC, seq)))
        _pwrite_all(fd, views, off)
        return seq << 32 | ((off or L.SPILL_HEAD) + frame)

    def _spill_end(self, w: int) -> None:
        """Under put_lock, the spill drained up to w: end its file (END frame), remove it,
        move the cursor to the next file (best effort, as csrc/queue.c spill_end)."""
        seq, off = w >> 32, w & 0xFFFFFFFF
        if not off:
            return
        try:
            _pwrite_all(self._spill_fd(seq, False, "w"), [memoryview(_END)], off)
            self._spill_unlink(seq)
        except OSError:
            return
        self._w64[_SW] = ((seq + 1) & 0xFFFFFFFF) << 32

    def _spill_commit(self, w: int, added: int) -> None:
        self._w64[_SPUT] = (self._w64[_SPUT] + added) & 0xFFFFFFFFFFFFFFFF
        self._w64[_SW] = w  # the commit: one store (after the frames were written)

    def _spill_route(self, frame: int, may_wait: bool) -> tuple[int, int, int, int]:
        """Under put_lock, past the ring: (route, head, spill read cursor, ring count):
        route 1 = to the spill, 0 = to the ring (the spill drained), 2 = wait for room,
        3 = wait for room for SPILL_GRACE, then spill (csrc/queue.c spill_grace)."""
        w64, w32 = self._w64, self._w32
        spill_r = w64[_SR]  # before deciding: the wait watches it
        head, tail = w64[_H], w64[_T]
        used, count = self._span(head, tail)
        if used < 0:
            return 2, head, spill_r, -1
        if w32[_SPILLING]:
            if spill_r != w64[_SW]:
                if self._maxsize and count + self._spill_count() >= self._maxsize:
                    return 2, head, spill_r, count
                # consumers moved since this handle's last grace ran out: one more, so that
                # the spill drains and the stream comes back to the ring (csrc/queue.c)
                moved = may_wait and (head, spill_r) != self._stalled
                return (3 if moved else 1), head, spill_r, count
            w32[_SPILLING] = 0  # drained: back to the ring
            self._spill_end(spill_r)
        if self._cap - used >= frame and not (self._maxsize and count >= self._maxsize):
            return 0, head, spill_r, count
        if self._maxsize and count >= self._maxsize:
            return 2, head, spill_r, count
        if may_wait:
            return 3, head, spill_r, count
        w32[_SPILLING] = 1
        return 1, head, spill_r, count

    def _spill_take(self, w: int, out: memoryview, off: int, lens: list[int],
                    kinds: list[int], max_messages: int, mark: Any, single: bool) -> int:
        """Under get_lock, the ring empty: take spilled frames up to the write cursor w into
        out (from off), as the ring's; commit them, each commit followed by the mark with no
        call in between (see :meth:`_get_busy`). Returns an error only if none was
        taken."""
        w64 = self._w64
        r = w64[_SR]
        taken = 0
        got = len(lens)
        rc = 0
        while len(lens) < max_messages and r != w:
            seq, at = r >> 32, r & 0xFFFFFFFF
            wseq, end = w >> 32, w & 0xFFFFFFFF
            if (wseq - seq) & 0x80000000 or (seq == wseq and at >= end):
                rc = FIPC_CORRUPT
                break
            try:
                fd = self._spill_fd(seq, False, "r")
                at = at or L.SPILL_HEAD
                n, kind = _HDR.unpack(_pread_all(fd, L.FRAME, at))
            except FileNotFoundError:
                if seq == wseq:
                    rc = -errno.ENOENT
                    break
                n = kind = 0  # ended and removed by a producer
            except OSError as exc:
                rc = -(exc.errno or errno.EIO)
                break
            except ValueError:
                rc = FIPC_CORRUPT
                break
            if n == 0 and kind == 0 and seq != wseq:  # END: on to the next file
                r = ((seq + 1) & 0xFFFFFFFF) << 32
                w64[_SGOT] = (w64[_SGOT] + taken) & 0xFFFFFFFFFFFFFFFF
                w64[_SR] = r  # before the file goes
                if taken:
                    mark[0] = kinds[0] << 32 | lens[0] if single else got
                taken = 0
                self._spill_unlink(seq)
                continue
            frame = _round8(L.FRAME + n)
            if not 0 < kind <= KIND_MAX or frame > self._cap // 2 or (
                    seq == wseq and at + frame > end):
                rc = FIPC_CORRUPT
                break
            if n > len(out) - off:
                if not lens:
                    self._last = (n, kind)
                    rc = L.NEED
                break
            try:
                out[off:off + n] = _pread_all(fd, n, at + L.FRAME)
            except (OSError, ValueError):
                rc = FIPC_CORRUPT
                break
            lens.append(n)
            kinds.append(kind)
            off += n
            taken += 1
            got += 1
            r = seq << 32 | (at + frame)
        if taken:
            w64[_SGOT] = (w64[_SGOT] + taken) & 0xFFFFFFFFFFFFFFFF
            w64[_SR] = r  # the commit: one store, then the mark
            mark[0] = kinds[0] << 32 | lens[0] if single else got
            if r == w:
                self._spill_drained(r)
        return rc if not lens else 0

    def _trylock(self, off: int) -> int:
        """Take the lock at ``off`` if it is free (its dead holder's state is consistent as
        it is): 0, or the errno of a lock someone holds."""
        m = self._addr + off
        rc = int(_trylock(m))
        return int(_consistent(m)) if rc == errno.EOWNERDEAD else rc

    def _spill_drained(self, r: int) -> None:
        """Under get_lock, the spill read up to its write cursor r: if no producer holds
        put_lock, remove the drained file and start both cursors at the next one."""
        if self._trylock(L.OFF_PUT_LOCK):
            return
        try:
            seq = r >> 32
            if self._w64[_SW] == r and r & 0xFFFFFFFF:
                self._spill_unlink(seq)
                nxt = ((seq + 1) & 0xFFFFFFFF) << 32
                self._w64[_SW] = nxt
                self._w64[_SR] = nxt
                self._w32[_SPILLING] = 0
        finally:
            self._release(L.OFF_PUT_LOCK)

    def _tidy_spill(self) -> None:
        """At close: a spill read to its end whose removal an exception cut short (a signal
        handler's, raised into _spill_drained between the read cursor's commit and the
        unlink) goes now, if no other consumer or producer holds its lock."""
        w64 = self._w64
        if w64 is None or self._closed:
            return
        r = w64[_SR]
        if r != w64[_SW] or not r & 0xFFFFFFFF:
            return
        if self._trylock(L.OFF_GET_LOCK):
            return
        try:
            if w64[_SR] == r:
                self._spill_drained(r)
        finally:
            self._release(L.OFF_GET_LOCK)

    def release(self) -> None:
        for fd in (self._wfd, self._rfd):
            if fd >= 0:
                os.close(fd)
        self._wfd = self._rfd = -1

    # ---- producers
    def put(self, data: Any, kind: int, timeout: float) -> int:
        return self.putv([data], kind, timeout)

    def put_ref(self, data: bytes, kind: int, timeout: float, committed: bytearray) -> int:
        rc, _ = self._put([memoryview(data)], [len(data)], kind, timeout, committed)
        return rc

    def get_staged(self, stage: Any, cap: int, timeout: float, want: int) -> int:
        return self._get_hot(stage, cap, timeout, want)

    def address(self) -> int:
        return 0

    def new_stage(self) -> tuple[Any, Any, Any]:
        stage = mmap.mmap(-1, L.STAGE + L.MARK)  # anonymous: its slices are bytes
        return stage, stage, memoryview(stage)[L.STAGE:].cast("Q")

    def putv(self, parts: Sequence[Any], kind: int, timeout: float) -> int:
        views = [byte_view(p) for p in parts]
        rc, _ = self._put(views, [sum(len(v) for v in views)], kind, timeout)
        return rc

    def put_many(self, blob: bytes, lens: Sequence[int], kind: int,
                 timeout: float) -> tuple[int, int]:
        return self._put([memoryview(blob)], list(lens), kind, timeout)

    def _put(self, views: list[memoryview], lens: list[int], kind: int,
             timeout: float, committed: Any = None) -> tuple[int, int]:
        if self._closed:
            return -errno.EBADF, 0
        return self._put_busy(views, lens, kind, timeout, committed)

    def _put_busy(self, views: list[memoryview], lens: list[int], kind: int,
                  timeout: float, committed: Any) -> tuple[int, int]:
        """Put len(lens) messages whose bytes are the concatenation of views."""
        if not 0 < kind <= KIND_MAX:
            return -errno.EINVAL, 0
        if any(_round8(L.FRAME + n) > self._cap // 2 or n > 0xFFFFFFFF for n in lens):
            return -errno.EMSGSIZE, 0
        source = views[0] if len(views) == 1 else None
        deadline = Deadline(timeout)
        grace_end = 0.0  # 0: not started, -1: spent (spill_grace)
        sent = 0
        pos = 0  # bytes of the source consumed (single-view case)
        w64 = self._w64
        while sent < len(lens):
            if self._closed:
                return -errno.EBADF, sent
            start = sent
            try:
                rc = self._lock(L.OFF_PUT_LOCK, deadline)
                if rc:
                    return rc, sent
                tail, head = w64[_T], w64[_H]
                used, count = self._span(head, tail)
                if used < 0:
                    return FIPC_CORRUPT, sent
                w = tail
                spill_r = w64[_SR]
                again = False
                route = 0
                while sent < len(lens) and not self._w32[_SPILLING]:
                    n = lens[sent]
                    frame = _round8(L.FRAME + n)
                    if self._cap - used < frame or (self._maxsize and count >= self._maxsize):
                        break
                    off = ((w >> 32) * 8) & self._mask
                    _HDR.pack_into(self._data, off, n, kind)
                    off = (off + L.FRAME) & self._mask
                    if source is not None:
                        self._write(off, source[pos:pos + n])
                        pos += n
                    else:
                        for v in views:
                            off = self._write(off, v)
                    w = _advance(w, frame, 1)
                    used += frame
                    count += 1
                    sent += 1
                if sent > start:
                    w64[_T] = w  # the commit: one store
                    if committed is not None:  # no call in between: no signal handler
                        committed[0] = 1
                ring_sent = sent
                if sent < len(lens):  # the rest to the spill, if it may go there
                    route, head, spill_r, count = self._spill_route(
                        _round8(L.FRAME + lens[sent]), timeout != 0 and grace_end >= 0)
                    if count < 0:
                        return FIPC_CORRUPT, sent
                    again = route == 0
                    if route == 1:
                        sw = w64[_SW]
                        queued = count + self._spill_count()
                        try:
                            while True:
                                if sent >= len(lens) or (self._maxsize
                                                         and queued >= self._maxsize):
                                    break
                                n = lens[sent]
                                if source is not None:
                                    parts = [source[pos:pos + n]]
                                    pos += n
                                else:
                                    parts = views
                                sw = self._spill_append(sw, parts, n, kind)
                                queued += 1
                                sent += 1
                        except OSError as exc:
                            rc = -(exc.errno or errno.EIO)
                        else:
                            rc = 0
                        if sent > ring_sent:
                            self._spill_commit(sw, sent - ring_sent)
                            if committed is not None:
                                committed[0] = 1
                        if rc:
                            return rc, sent
            finally:
                self._release(L.OFF_PUT_LOCK)
            if sent > start:
                self._notify(L.OFF_DATA_SEQ, L.OFF_GET_WAITING)
            if sent < len(lens) and not again and route == 3:  # wait a while, then spill
                now = _monotonic()
                grace_end = grace_end or now + SPILL_GRACE
                end = grace_end if deadline.end <= 0 else min(grace_end, deadline.end)
                rc = (self._wait(_H, head, _SR, spill_r, L.OFF_SPACE_SEQ, L.OFF_PUT_WAITING,
                                 Deadline(end - now)) if end > now else -errno.ETIMEDOUT)
                if rc == -errno.ETIMEDOUT:  # spent: no grace again until consumers move
                    grace_end = -1.0
                    self._stalled = (head, spill_r)
                elif rc:
                    return rc, sent
            elif sent < len(lens) and not again:
                rc = self._wait(_H, head, _SR, spill_r, L.OFF_SPACE_SEQ, L.OFF_PUT_WAITING,
                                deadline)
                if rc:
                    return rc, sent
        return 0, sent

    # ---- consumers
    def get(self, dest: Any, timeout: float) -> int:
        return self._get_hot(dest, 0, timeout, 0)

    def _get_hot(self, dest: Any, cap: int, timeout: float, want: int) -> int:
        lens: list[int] = []
        kinds: list[int] = []
        n = self._get(dest, (lens, kinds), 1, timeout, True)
        if n != 1:
            return n
        return lens[0] if kinds[0] == want else kinds[0] << 32 | lens[0]

    def new_batch(self, max_messages: int) -> Any:
        return [], []

    def batch(self, batch: Any, n: int) -> tuple[list[int], list[int]]:
        return batch[0][:n], batch[1][:n]

    def get_many(self, dest: Any, batch: Any, max_messages: int, timeout: float) -> int:
        return self._get(dest, batch, max_messages, timeout, False)

    def _get(self, dest: Any, batch: Any, max_messages: int, timeout: float,
             single: bool) -> int:
        if self._closed:
            return -errno.EBADF
        return self._get_busy(dest, batch, max_messages, timeout, single)

    def _get_busy(self, dest: Any, batch: Any, max_messages: int, timeout: float,
                  single: bool) -> int:
        """Take up to max_messages into dest (all but its last MARK bytes), their lengths
        and kinds into batch. Every commit (the store of head or of the spill's read
        cursor) is followed by the mark, with no call in between: an exception raised into
        this thread (a signal handler's) runs only at a call's return, a function's entry
        or a backward jump, so it comes before the commit or after the mark."""
        out = byte_view(dest)
        cap = len(out) - L.MARK
        mark = out[cap:cap + L.MARK].cast("Q")
        mark[0] = 0  # a mark read after the call is this call's
        out = out[:cap]
        deadline = Deadline(timeout)
        w64 = self._w64
        lens, kinds = batch
        while True:
            if self._closed:
                return -errno.EBADF
            del lens[:], kinds[:]
            result = 0
            try:
                rc = self._lock(L.OFF_GET_LOCK, deadline)
                if rc:
                    return rc
                head, tail = w64[_H], w64[_T]
                h, off = head, 0
                spill_w = w64[_SW]
                ring_empty = False
                while len(lens) < max_messages:
                    used, count = self._span(h, tail)
                    if used < 0:
                        result = FIPC_CORRUPT
                        break
                    if count == 0:
                        # the spill's cursor first, then the ring empty at a later look:
                        # the frames spilled up to it are older than any the ring will hold
                        spill_w = w64[_SW]
                        now = w64[_T]
                        if now != tail:
                            tail = now
                            continue
                        ring_empty = True
                        break
                    at = ((h >> 32) * 8) & self._mask
                    n, kind = _HDR.unpack_from(self._data, at)
                    frame = _round8(L.FRAME + n)
                    if frame > used or frame > self._cap // 2 or not 0 < kind <= KIND_MAX:
                        result = FIPC_CORRUPT
                        break
                    self._last = (n, kind)
                    if n > cap - off:
                        result = L.NEED
                        break
                    self._read((at + L.FRAME) & self._mask, out[off:off + n])
                    lens.append(n)
                    kinds.append(kind)
                    off += n
                    h = _advance(h, frame, 1)
                if lens:
                    got = kinds[0] << 32 | lens[0] if single else len(lens)
                    w64[_H] = h  # the commit: one store, then the mark
                    mark[0] = got
                if ring_empty and spill_w != w64[_SR]:
                    rc = self._spill_take(spill_w, out, off, lens, kinds, max_messages, mark,
                                          single)
                    if rc < 0:
                        result = rc
            finally:
                self._release(L.OFF_GET_LOCK)
            if lens:
                self._last = (lens[-1], kinds[-1])
                self._notify(L.OFF_SPACE_SEQ, L.OFF_PUT_WAITING)
                return len(lens)
            if result < 0:
                return result
            rc = self._wait(_T, tail, _SW, spill_w, L.OFF_DATA_SEQ, L.OFF_GET_WAITING, deadline)
            if rc:
                return rc

    def last(self) -> tuple[int, int]:
        return self._last

    def _snapshot(self) -> tuple[int, int]:
        if self._closed:
            return -errno.EBADF, -errno.EBADF
        for _ in range(100):
            head = self._w64[_H]
            tail = self._w64[_T]
            if self._w64[_H] == head:
                return self._span(head, tail)
        return 0, 0

    def count(self) -> int:
        count = self._snapshot()[1]
        return count + self._spill_count() if count != -errno.EBADF else check(count)

    def used(self) -> int:
        used = self._snapshot()[0]
        return used if used != -errno.EBADF else check(used)

    def park(self, room: int) -> tuple[int, int, int]:
        flag, seq_off = ((L.OFF_GET_WAITING, L.OFF_DATA_SEQ) if room < 0
                         else (L.OFF_PUT_WAITING, L.OFF_SPACE_SEQ))
        if self._closed:
            return -errno.EBADF, 0, 0
        self._w32[flag // 4] = 1
        _fence()
        seq = self._w32[seq_off // 4]
        used, count = self._snapshot()  # after the flag: a commit before it shows here
        if used < 0:
            return (-errno.EBADF if used == -errno.EBADF else FIPC_CORRUPT), 0, 0
        # a producer's message that does not fit the ring goes to the spill
        ready = (count > 0 or self._w64[_SW] != self._w64[_SR]) if room < 0 else (
            not self._maxsize or count + self._spill_count() < self._maxsize)
        return int(ready), self._addr + seq_off, seq

    def wake(self) -> None:
        self._closed = True
        for off in (L.OFF_DATA_SEQ, L.OFF_SPACE_SEQ):
            self._w32[off // 4] = (self._w32[off // 4] + 1) & 0xFFFFFFFF
            _futex_wake(self._addr + off)

    def free(self) -> bool:
        # the public class calls this once no call of it is busy (fastipc._core.Handle)
        self._tidy_spill()
        self.wake()
        self.release()
        self._data.release()
        self._w64 = self._w32 = self._i32 = None
        return True


_ops: type[QueueOps] = Ops
_format: FormatFn = format
