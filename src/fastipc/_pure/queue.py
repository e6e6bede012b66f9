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
import struct
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable

from fastipc._backend import queue as L
from fastipc._backend.queue import FormatFn, QueueOps
from fastipc._core import FIPC_CORRUPT, Deadline, byte_view, check
from fastipc._pure.shm import _TSO, _fence, _futex_wait, _futex_wake

__all__ = ["Ops", "format"]

SLICE = 0.1  # sleep at most this long between looks at `closed`
LOCK_GRACE = 0.1  # a try-once call waits this long for a busy mutex
KIND_MAX = 15
_CLOCK_MONOTONIC = 1
_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1
_OWNER = 8  # glibc's pthread_mutex_t: int __lock, unsigned __count, int __owner (the tid)
_HDR = struct.Struct("<II")
_T, _H = L.OFF_TAIL // 8, L.OFF_HEAD // 8
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
    def __init__(self, mm: Any, size: int, spin: float) -> None:
        magic, version, capacity, _max, maxsize = struct.unpack_from("<IIQQQ", mm, 0)
        if (magic != L.MAGIC or version != L.VERSION or capacity != size - L.HEADER
                or not _capacity_ok(capacity)):
            raise OSError(errno.EBADMSG, "not a fastipc queue, or a corrupted header")
        self._cap: int = capacity
        self._mask: int = capacity - 1
        self._maxsize = maxsize
        self._spin = spin
        self._closed = False
        self._busy: list[None] = []  # calls using the mapping (list ops are atomic)
        self._last = (0, 0)
        self._w64: Any = (ctypes.c_uint64 * (L.HEADER // 8)).from_buffer(mm)
        self._w32: Any = (ctypes.c_uint32 * (L.HEADER // 4)).from_buffer(mm)
        self._i32: Any = (ctypes.c_int32 * (L.HEADER // 4)).from_buffer(mm)
        self._addr = ctypes.addressof(self._w64)
        self._data: Any = memoryview(mm)[L.HEADER:L.HEADER + capacity]

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

    def _wait(self, word: int, seen: int, seq_off: int, flag_off: int,
              deadline: Deadline) -> int:
        if deadline.timeout == 0:
            return -errno.ETIMEDOUT
        w64, w32 = self._w64, self._w32
        if self._spin > 0:
            stop = _monotonic() + self._spin
            while _monotonic() < stop:
                if w64[word] != seen:
                    return 0
        while True:
            if self._closed:
                return -errno.EBADF
            w32[flag_off // 4] = 1
            _fence()
            seq = w32[seq_off // 4]
            if w64[word] != seen:
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

    # ---- producers
    def put(self, data: Any, kind: int, timeout: float) -> int:
        return self.putv([data], kind, timeout)

    def put_ref(self, data: bytes, kind: int, timeout: float, committed: bytearray) -> int:
        rc, _ = self._put([memoryview(data)], [len(data)], kind, timeout, committed)
        return rc

    def put_fn(self) -> Callable[[bytes, int, int, float], int]:
        return lambda data, n, kind, timeout: self.putv([data], kind, timeout)

    def get_fn(self) -> Callable[[Any, int, float, int], int]:
        return self._get_hot

    def new_stage(self) -> tuple[Any, Any]:
        stage = mmap.mmap(-1, L.STAGE)  # anonymous: its slices are bytes
        return stage, stage

    def putv(self, parts: Sequence[Any], kind: int, timeout: float) -> int:
        views = [byte_view(p) for p in parts]
        rc, _ = self._put(views, [sum(len(v) for v in views)], kind, timeout)
        return rc

    def put_many(self, blob: bytes, lens: Sequence[int], kind: int,
                 timeout: float) -> tuple[int, int]:
        return self._put([memoryview(blob)], list(lens), kind, timeout)

    def _put(self, views: list[memoryview], lens: list[int], kind: int,
             timeout: float, committed: Any = None) -> tuple[int, int]:
        busy = self._busy
        busy.append(None)
        try:
            if self._closed:
                return -errno.EBADF, 0
            return self._put_busy(views, lens, kind, timeout, committed)
        finally:
            busy.pop()

    def _put_busy(self, views: list[memoryview], lens: list[int], kind: int,
                  timeout: float, committed: Any) -> tuple[int, int]:
        """Put len(lens) messages whose bytes are the concatenation of views."""
        if not 0 < kind <= KIND_MAX:
            return -errno.EINVAL, 0
        if any(_round8(L.FRAME + n) > self._cap // 2 or n > 0xFFFFFFFF for n in lens):
            return -errno.EMSGSIZE, 0
        source = views[0] if len(views) == 1 else None
        deadline = Deadline(timeout)
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
                while sent < len(lens):
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
            finally:
                self._release(L.OFF_PUT_LOCK)
            if sent > start:
                self._notify(L.OFF_DATA_SEQ, L.OFF_GET_WAITING)
            if sent < len(lens):
                rc = self._wait(_H, head, L.OFF_SPACE_SEQ, L.OFF_PUT_WAITING, deadline)
                if rc:
                    return rc, sent
        return 0, sent

    # ---- consumers
    def get(self, dest: Any, timeout: float) -> int:
        return self._get_hot(dest, 0, timeout, 0)

    def _get_hot(self, dest: Any, cap: int, timeout: float, want: int) -> int:
        n, lens, kinds = self.get_many(dest, 1, timeout)
        if n != 1:
            return n
        return lens[0] if kinds[0] == want else kinds[0] << 32 | lens[0]

    def get_many(self, dest: Any, max_messages: int,
                 timeout: float) -> tuple[int, list[int], list[int]]:
        busy = self._busy
        busy.append(None)
        try:
            if self._closed:
                return -errno.EBADF, [], []
            return self._get_busy(dest, max_messages, timeout)
        finally:
            busy.pop()

    def _get_busy(self, dest: Any, max_messages: int,
                  timeout: float) -> tuple[int, list[int], list[int]]:
        out = byte_view(dest)
        cap = len(out)
        deadline = Deadline(timeout)
        w64 = self._w64
        while True:
            if self._closed:
                return -errno.EBADF, [], []
            lens: list[int] = []
            kinds: list[int] = []
            result = 0
            try:
                rc = self._lock(L.OFF_GET_LOCK, deadline)
                if rc:
                    return rc, [], []
                head, tail = w64[_H], w64[_T]
                h, off = head, 0
                while len(lens) < max_messages:
                    used, count = self._span(h, tail)
                    if used < 0:
                        result = FIPC_CORRUPT
                        break
                    if count == 0:
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
                    w64[_H] = h  # the commit: one store
            finally:
                self._release(L.OFF_GET_LOCK)
            if lens:
                self._last = (lens[-1], kinds[-1])
                self._notify(L.OFF_SPACE_SEQ, L.OFF_PUT_WAITING)
                return len(lens), lens, kinds
            if result < 0:
                return result, [], []
            rc = self._wait(_T, tail, L.OFF_DATA_SEQ, L.OFF_GET_WAITING, deadline)
            if rc:
                return rc, [], []

    def last(self) -> tuple[int, int]:
        return self._last

    def _snapshot(self) -> tuple[int, int]:
        busy = self._busy
        busy.append(None)
        try:
            if self._closed:
                return -errno.EBADF, -errno.EBADF
            for _ in range(100):
                head = self._w64[_H]
                tail = self._w64[_T]
                if self._w64[_H] == head:
                    return self._span(head, tail)
            return 0, 0
        finally:
            busy.pop()

    def count(self) -> int:
        count = self._snapshot()[1]
        return count if count != -errno.EBADF else check(count)

    def used(self) -> int:
        used = self._snapshot()[0]
        return used if used != -errno.EBADF else check(used)

    def park(self, room: int) -> tuple[int, int, int]:
        flag, seq_off = ((L.OFF_GET_WAITING, L.OFF_DATA_SEQ) if room < 0
                         else (L.OFF_PUT_WAITING, L.OFF_SPACE_SEQ))
        busy = self._busy
        busy.append(None)
        try:
            if self._closed:
                return -errno.EBADF, 0, 0
            self._w32[flag // 4] = 1
            _fence()
            seq = self._w32[seq_off // 4]
        finally:
            busy.pop()
        used, count = self._snapshot()  # after the flag: a commit before it shows here
        if used < 0:
            return (-errno.EBADF if used == -errno.EBADF else FIPC_CORRUPT), 0, 0
        ready = count > 0 if room < 0 else (
            self._cap - used >= _round8(L.FRAME + room)
            and (not self._maxsize or count < self._maxsize))
        return int(ready), self._addr + seq_off, seq

    def wake(self) -> None:
        self._closed = True
        for off in (L.OFF_DATA_SEQ, L.OFF_SPACE_SEQ):
            self._w32[off // 4] = (self._w32[off // 4] + 1) & 0xFFFFFFFF
            _futex_wake(self._addr + off)

    def forked(self) -> None:
        self._busy.clear()

    def free(self) -> bool:
        self.wake()
        deadline = _monotonic() + 5.0
        while self._busy and _monotonic() < deadline:  # woken calls return at once
            time.sleep(0.0005)
        if self._busy:
            return False
        self._data.release()
        self._w64 = self._w32 = self._i32 = None
        return True


_ops: type[QueueOps] = Ops
_format: FormatFn = format
