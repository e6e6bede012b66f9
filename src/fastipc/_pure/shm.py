"""Channel operations in pure Python over the same binary layout as ``csrc/shm.c``.

The ring is read and written through ``memoryview`` casts of the mapping. Ordering: on
x86-64 the hardware keeps stores in order and loads in order (TSO), which is all the
copy-then-publish protocol needs; the one reordering it allows (a store followed by a load
of another word) and every reordering weaker CPUs allow are closed by a full barrier: a
``FUTEX_WAKE`` on a private word, whose kernel path runs ``smp_mb()``. It is issued after
publishing a counter and before checking whether the peer sleeps, and, on CPUs other than
x86, also between loading a counter and touching the data it covers. Waits use ``futex``
through ``ctypes`` (the syscall number per architecture below) with the same words as the
native backend, so native and pure ends wake each other; without it they poll with
back-off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import time
from typing import Any, Optional

from fastipc._core import (
    FIPC_CORRUPT,
    FIPC_EOF,
    FIPC_TOOBIG,
    check_timeout,
    raise_errno,
)

__all__ = ["NEED", "NOT_READY", "Need", "NotReady", "ReaderOps", "WriterOps", "pid_dead"]

NEED = -1100
NOT_READY = -1101

HDR = 256
MAGIC = 0x4D485346
VERSION = 1
MIN_CAPACITY = 4096
OFF_MAGIC, OFF_VERSION, OFF_CAPACITY, OFF_DATA, OFF_MAXMSG = 0, 4, 8, 16, 24
OFF_WPID, OFF_WSTATE, OFF_RPID, OFF_RSTATE = 32, 36, 40, 44
OFF_HEAD, OFF_TAIL = 64, 128
OFF_DSEQ, OFF_RWAIT, OFF_SSEQ, OFF_WWAIT = 192, 196, 200, 204
ST_OPEN, ST_CLOSED = 1, 2
FR_WHOLE, FR_FIRST, FR_NEXT, FR_PAD = 1, 2, 3, 4
FR_HDR, FIRST_HDR = 8, 16
MAX_CHUNK = 256 << 10
SLICE = 0.1
_NO_HOLD = 2**64 - 1

_FRAME = struct.Struct("<II")
_TOTAL = struct.Struct("<Q")
_monotonic = time.monotonic

# ---------------------------------------------------------------------------- futex

_SYS_FUTEX = {
    "x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98,
    "i386": 240, "i686": 240, "armv7l": 240, "armv6l": 240, "ppc64le": 221, "ppc64": 221,
    "s390x": 238,
}.get(platform.machine().lower())
_FUTEX_WAIT, _FUTEX_WAKE, _FUTEX_PRIVATE = 0, 1, 128
_TSO = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _load_libc() -> Any:
    if _SYS_FUTEX is None:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.syscall
        fn.restype = ctypes.c_long
        return fn
    except (OSError, AttributeError):
        return None


_syscall = _load_libc()
_fence_word = ctypes.c_uint32(0)
_fence_addr = ctypes.addressof(_fence_word)


def _fence() -> None:
    """A full memory barrier: the kernel's futex_wake path runs smp_mb()."""
    if _syscall is not None:
        _syscall(_SYS_FUTEX, ctypes.c_void_p(_fence_addr), _FUTEX_WAKE | _FUTEX_PRIVATE, 1,
                 None, None, 0)


def _futex_wait(addr: int, value: int, seconds: float) -> int:
    """Sleep while *addr == value, at most `seconds`: 0, or -EINTR."""
    if _syscall is None:
        time.sleep(min(seconds, 0.001))
        return 0
    ts = _Timespec(int(seconds), int((seconds % 1) * 1e9))
    rc = _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAIT, ctypes.c_uint32(value),
                  ctypes.byref(ts), None, 0)
    if rc < 0:
        err = ctypes.get_errno()
        if err == errno.EINTR:
            return -errno.EINTR
    return 0


def _futex_wake(addr: int) -> None:
    if _syscall is not None:
        _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


def pid_dead(pid: int) -> bool:
    """True if the process is gone or a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    end = stat.rfind(b")")
    return end >= 0 and stat[end + 2:end + 3] in (b"Z", b"X")


class Need(Exception):
    """The next message is streamed (or larger than the buffer): it needs ``length`` bytes."""

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length


class NotReady(Exception):
    """The segment exists but its writer has not finished setting it up."""


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


class _Code(Exception):
    """An internal status (a negative errno or FIPC_* code) on its way to the caller."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


# ---------------------------------------------------------------------------- both ends


class _Ops:
    role = 0
    last_len = 0

    def release(self) -> None:
        """Reader: hand consumed space back to the writer (nothing to do for a writer)."""

    def __init__(self, mm: Any, size: int, name: str) -> None:
        self.name = name
        self._mm = mm
        self._mv = memoryview(mm)
        self._u32 = self._mv[:HDR].cast("I")
        self._u64 = self._mv[:HDR].cast("Q")
        self._size = size
        self.capacity = size - HDR
        self._words = (ctypes.c_uint32 * (HDR // 4)).from_buffer(mm)
        self._addr = ctypes.addressof(self._words)
        self.spin_max = 0.0
        self.spin_cur = 0.0
        self.spins = self.sleeps = 0
        self.pos = 0
        self.peer = 0
        self.peer_pid = 0

    def _wake_all(self) -> None:
        """Wake the peer, and a call of ours blocked in another thread (which then finds
        the views released: ValueError)."""
        u32 = self._u32
        for off in (OFF_DSEQ, OFF_SSEQ):
            u32[off // 4] = (u32[off // 4] + 1) & 0xFFFFFFFF
        _fence()
        _futex_wake(self._addr + OFF_DSEQ)
        _futex_wake(self._addr + OFF_SSEQ)

    def detach(self) -> None:
        """Let go of the mapping without telling the peer anything."""
        self._release_views()

    def _release_views(self) -> None:
        self._u32.release()
        self._u64.release()
        self._mv.release()
        del self._words

    @property
    def spin(self) -> float:
        return self.spin_max

    @spin.setter
    def spin(self, value: float) -> None:
        self.spin_max = self.spin_cur = min(float(value), 1.0)

    def stats(self) -> tuple[int, int]:
        return self.spins, self.sleeps

    def _error(self, code: int, timeout: float) -> Any:
        if code == NEED:
            raise Need(self.last_len)
        raise_errno(code if code <= FIPC_EOF else -code, self.name,
                    None if timeout < 0 else timeout)

    # -- waiting: the protocol of wait_ring() in csrc/shm.c

    def _ready(self, need: int) -> bool:
        raise NotImplementedError

    def _gone(self, check_pid: bool) -> bool:
        raise NotImplementedError

    def _wait(self, need: int, timeout: float, deadline: Optional[float]) -> None:
        """Until _ready(need); raises _Code for EOF / EPIPE / timeout / EINTR."""
        if self.role == 2:
            self.release()
        start = 0.0
        if timeout != 0 and self.spin_cur > 0:
            start = _monotonic()
            end = start + self.spin_cur
            if deadline is not None:
                end = min(end, deadline)
            while True:
                if self._ready(need):
                    self.spins += 1
                    self.spin_cur = min(self.spin_max, self.spin_cur * 2)
                    return
                if self._gone(False) or _monotonic() >= end:
                    break
        u32 = self._u32
        wait_i, seq_i = (OFF_RWAIT // 4, OFF_DSEQ // 4) if self.role == 2 else \
            (OFF_WWAIT // 4, OFF_SSEQ // 4)
        slept = False
        while True:
            seq = u32[seq_i]
            u32[wait_i] = 1
            _fence()
            ok = self._ready(need)
            if not ok and self._gone(slept or timeout == 0):
                ok = self._ready(need)
                if not ok:
                    u32[wait_i] = 0
                    raise _Code(FIPC_EOF if self.role == 2 else -errno.EPIPE)
            if ok:
                u32[wait_i] = 0
                if slept:
                    self.sleeps += 1
                    if start:
                        self._adapt(_monotonic() - start)
                else:
                    self.spins += 1
                return
            if deadline is not None:
                left = deadline - _monotonic()
                if left <= 0:
                    u32[wait_i] = 0
                    raise _Code(-errno.ETIMEDOUT)
            else:
                left = SLICE
            rc = _futex_wait(self._addr + seq_i * 4, seq, min(left, SLICE))
            u32[wait_i] = 0
            slept = True
            if rc < 0:
                raise _Code(rc)

    def _adapt(self, waited: float) -> None:
        """As adapt() in csrc/shm.c: spin fully again if the wait ended soon after the spin
        gave up, else spin half as long next time."""
        if self.spin_max <= 0:
            return
        if waited < 4 * self.spin_max + 100e-6:
            self.spin_cur = self.spin_max
        else:
            self.spin_cur = max(self.spin_cur / 2, min(1e-6, self.spin_max))

    def _publish(self, off: int, value: int, wait_off: int, seq_off: int) -> None:
        if not _TSO:
            _fence()  # the data before the counter
        self._u64[off // 8] = value
        _fence()  # the counter before the look at the peer's flag
        u32 = self._u32
        if u32[wait_off // 4]:
            u32[seq_off // 4] = (u32[seq_off // 4] + 1) & 0xFFFFFFFF
            _fence()
            _futex_wake(self._addr + seq_off)

    def _deadline(self, timeout: float) -> Optional[float]:
        return None if timeout < 0 else _monotonic() + timeout


# ---------------------------------------------------------------------------- writer


class WriterOps(_Ops):
    role = 1

    def __init__(self, mm: Any, size: int, name: str, pid: int, max_message: int,
                 spin: float) -> None:
        cap = size - HDR
        if size <= HDR or cap < MIN_CAPACITY or cap & (cap - 1) or pid <= 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), name)
        super().__init__(mm, size, name)
        self.max_message = max_message
        self.chunk = min(cap // 16, MAX_CHUNK)
        self.spin = spin
        self.last_len = 0
        mm[:HDR] = bytes(HDR)
        u32, u64 = self._u32, self._u64
        u32[OFF_VERSION // 4] = VERSION
        u64[OFF_CAPACITY // 8] = cap
        u64[OFF_DATA // 8] = HDR
        u64[OFF_MAXMSG // 8] = max_message
        u32[OFF_WPID // 4] = pid
        u32[OFF_WSTATE // 4] = ST_OPEN
        _fence()
        u32[OFF_MAGIC // 4] = MAGIC  # last: the header is complete

    def _gone(self, check_pid: bool) -> bool:
        if self._u32[OFF_RSTATE // 4] == ST_CLOSED:
            return True
        if not check_pid:
            return False
        rpid = self._u32[OFF_RPID // 4]
        return 0 < rpid < 2**31 and pid_dead(rpid)

    def _load_tail(self) -> None:
        tail = self._u64[OFF_TAIL // 8]
        if tail & 7 or (self.pos - tail) % 2**64 > self.capacity or \
                (tail - self.peer) % 2**64 > self.capacity:
            raise _Code(FIPC_CORRUPT)
        if not _TSO:
            _fence()  # the reader's last reads of that space before our writes to it
        self.peer = tail

    def _ready(self, need: int) -> bool:
        if self.capacity - (self.pos - self.peer) >= need:
            return True
        self._load_tail()
        return self.capacity - (self.pos - self.peer) >= need

    def _reserve(self, frame: int, timeout: float, deadline: list[Optional[float]]) -> int:
        cap = self.capacity
        room = cap - (self.pos & (cap - 1))
        need = room + frame if frame > room else frame
        if not self._ready(need):
            self._publish_head()
            if not deadline:
                deadline.append(self._deadline(timeout))
            self._wait(need, timeout, deadline[0])
        if frame > room:
            off = HDR + (self.pos & (cap - 1))
            _FRAME.pack_into(self._mm, off, room - FR_HDR, FR_PAD)
            self.pos += room
        return HDR + (self.pos & (cap - 1))

    def _publish_head(self) -> None:
        self._publish(OFF_HEAD, self.pos, OFF_RWAIT, OFF_DSEQ)

    def _put(self, data: memoryview, timeout: float, deadline: list[Optional[float]],
             progress: list[int]) -> None:
        n = len(data)
        mm = self._mm
        frame = FR_HDR + _round8(n)
        if frame <= self.capacity // 4:
            off = self._reserve(frame, timeout, deadline)
            _FRAME.pack_into(mm, off, n, FR_WHOLE)
            mm[off + FR_HDR:off + FR_HDR + n] = data
            self.pos += frame
            return
        done = progress[0]
        while done < n:
            hdr = FIRST_HDR if done == 0 else FR_HDR
            want = min(n - done, self.chunk)
            off = self._reserve(hdr + _round8(want), timeout, deadline)
            _FRAME.pack_into(mm, off, want, FR_FIRST if done == 0 else FR_NEXT)
            if done == 0:
                _TOTAL.pack_into(mm, off + FR_HDR, n)
            mm[off + hdr:off + hdr + want] = data[done:done + want]
            self.pos += hdr + _round8(want)
            self._publish_head()
            done += want
            progress[0] = done

    def _send(self, data: memoryview, timeout: float, progress: list[int]) -> None:
        if len(data) > self.max_message:
            raise _Code(FIPC_TOOBIG)
        if self._gone(False):
            raise _Code(-errno.EPIPE)
        deadline: list[Optional[float]] = []
        self._put(data, timeout, deadline, progress)
        self._publish_head()

    def make_send(self) -> Any:
        def send(data: Any, timeout: Optional[float] = None) -> None:
            t = -1.0 if timeout is None else check_timeout(timeout)
            t0 = _monotonic() if t > 0 else 0.0
            mv = _bytes_view(data)
            progress = [0]
            left = t
            while True:
                try:
                    self._send(mv, left, progress)
                    return
                except _Code as c:
                    if c.code != -errno.EINTR:
                        self._error(c.code, t)
                left = _left(t, t0)

        return send

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        if any(n > self.max_message for n in lens):
            self._error(FIPC_TOOBIG, timeout)
        t0 = _monotonic() if timeout > 0 else 0.0
        mv = memoryview(blob)
        sent = offset = 0
        deadline: list[Optional[float]] = []
        left = timeout
        try:
            if self._gone(False):
                raise _Code(-errno.EPIPE)
            for n in lens:
                while True:
                    try:
                        self._put(mv[offset:offset + n], left, deadline, [0])
                        break
                    except _Code as c:
                        if c.code != -errno.EINTR:
                            raise
                        left = _left(timeout, t0)
                        deadline.clear()
                offset += n
                sent += 1
        except _Code as c:
            self._publish_head()
            try:
                self._error(c.code, timeout)
            except OSError as exc:
                exc.messages_sent = sent  # type: ignore[attr-defined]
                raise
        self._publish_head()

    def close(self) -> None:
        u32 = self._u32
        self._u64[OFF_HEAD // 8] = self.pos
        _fence()
        u32[OFF_WSTATE // 4] = ST_CLOSED
        self._wake_all()
        self._release_views()


def _bytes_view(data: Any) -> memoryview:
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str' (encode it first)")
    try:
        mv = memoryview(data)
    except TypeError:
        raise TypeError(
            f"a contiguous bytes-like object is required, not {type(data).__name__!r}"
        ) from None
    if not mv.c_contiguous:
        raise TypeError("a contiguous bytes-like object is required")
    return mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv


# ---------------------------------------------------------------------------- reader


class ReaderOps(_Ops):
    role = 2

    def __init__(self, mm: Any, size: int, name: str, pid: int, max_message: int,
                 spin: float) -> None:
        if size == 0:
            raise NotReady
        cap = size - HDR
        if size <= HDR or cap < MIN_CAPACITY or cap & (cap - 1):
            raise_errno(FIPC_CORRUPT, name)
        super().__init__(mm, size, name)
        try:
            self._check_header(size, name)
        except BaseException:
            self._release_views()
            raise
        u32, u64 = self._u32, self._u64
        tail = u64[OFF_TAIL // 8]
        self.pos = self.release_pos = self.published = tail
        self.peer = u64[OFF_HEAD // 8]
        self.peer_pid = u32[OFF_WPID // 4]
        self.max_message = max_message
        self.hold = _NO_HOLD
        self.msg_total = self.msg_done = 0
        self.last_len = self.last_pos = 0
        self.spin = spin
        u32[OFF_RPID // 4] = pid
        _fence()
        u32[OFF_RSTATE // 4] = ST_OPEN

    def _check_header(self, size: int, name: str) -> None:
        u32, u64 = self._u32, self._u64
        magic = u32[OFF_MAGIC // 4]
        if magic == 0:
            raise NotReady
        _fence()
        cap = size - HDR
        if magic != MAGIC or u32[OFF_VERSION // 4] != VERSION or \
                u64[OFF_CAPACITY // 8] != cap or u64[OFF_DATA // 8] != HDR:
            raise_errno(FIPC_CORRUPT, name)
        wpid, wstate = u32[OFF_WPID // 4], u32[OFF_WSTATE // 4]
        if not 0 < wpid < 2**31 or wstate not in (ST_OPEN, ST_CLOSED):
            raise_errno(FIPC_CORRUPT, name)
        if u32[OFF_RSTATE // 4] != 0:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), name)
        tail, head = u64[OFF_TAIL // 8], u64[OFF_HEAD // 8]
        if tail & 7 or head & 7 or (head - tail) % 2**64 > cap:
            raise_errno(FIPC_CORRUPT, name)

    def _gone(self, check_pid: bool) -> bool:
        if self._u32[OFF_WSTATE // 4] == ST_CLOSED:
            return True
        return check_pid and pid_dead(self.peer_pid)

    def _load_head(self) -> None:
        head = self._u64[OFF_HEAD // 8]
        if head & 7 or (head - self.pos) % 2**64 > self.capacity or \
                (head - self.peer) % 2**64 > self.capacity:
            raise _Code(FIPC_CORRUPT)
        if not _TSO:
            _fence()  # the counter before the data it covers
        self.peer = head

    def _ready(self, need: int) -> bool:
        if self.peer != self.pos:
            return True
        self._load_head()
        return self.peer != self.pos

    def release(self) -> None:
        t = min(self.release_pos, self.hold)
        if t == self.published or (t - self.published) % 2**64 > self.capacity:
            return
        self.published = t
        self._publish(OFF_TAIL, t, OFF_WWAIT, OFF_SSEQ)

    def _lazy_release(self) -> None:
        if self.release_pos - self.published >= self.capacity >> 4 or \
                self._u32[OFF_WWAIT // 4]:
            self.release()

    def set_hold(self, pos: Optional[int]) -> None:
        self.hold = _NO_HOLD if pos is None else pos
        if pos is None:
            self.release()

    def _frame(self) -> tuple[int, int, int, int, int]:
        """(kind, length, total, data offset in the mapping, frame size), checked."""
        cap = self.capacity
        if self.pos & 7:
            raise _Code(FIPC_CORRUPT)
        rel = self.pos & (cap - 1)
        room = cap - rel
        avail = self.peer - self.pos
        if avail < FR_HDR:
            raise _Code(FIPC_CORRUPT)
        off = HDR + rel
        n, kind = _FRAME.unpack_from(self._mm, off)
        hdr = FIRST_HDR if kind == FR_FIRST else FR_HDR
        size = hdr + _round8(n)
        if not FR_WHOLE <= kind <= FR_PAD or size > room or size > avail:
            raise _Code(FIPC_CORRUPT)
        if kind == FR_PAD and size != room:
            raise _Code(FIPC_CORRUPT)
        total = n
        if kind == FR_FIRST:
            total = _TOTAL.unpack_from(self._mm, off + FR_HDR)[0]
            if total < n or total == 0:
                raise _Code(FIPC_CORRUPT)
        return kind, n, total, off + hdr, size

    def _consume(self, size: int) -> None:
        self.pos += size
        self.release_pos = self.pos

    def _get(self, dest: Any, timeout: float) -> Any:
        """fipc_shm_recv(): dest None returns (offset, n) of a whole frame in place (released
        at the next call); else copies into dest and returns n. Raises _Code."""
        deadline: Optional[float] = None
        waited = False
        self._lazy_release()
        mm = self._mm
        while True:
            if self.peer == self.pos and not self._ready(0):
                if not waited:
                    deadline = self._deadline(timeout)
                    waited = True
                try:
                    self._wait(0, timeout, deadline)
                except _Code as c:
                    if c.code == FIPC_EOF:
                        self.msg_total = self.msg_done = 0
                    raise
            kind, n, total, off, size = self._frame()
            if kind == FR_PAD:
                self._consume(size)
                continue
            if kind == FR_NEXT:
                if self.msg_total == 0:
                    self._consume(size)
                    self.release()
                    continue
                if dest is None or len(dest) < self.msg_total:
                    raise _Code(-errno.EINVAL)
                if n > self.msg_total - self.msg_done:
                    raise _Code(FIPC_CORRUPT)
                dest[self.msg_done:self.msg_done + n] = mm[off:off + n]
                self.msg_done += n
                self._consume(size)
                self.release()
                if self.msg_done == self.msg_total:
                    total, self.msg_total, self.msg_done = self.msg_total, 0, 0
                    return total
                continue
            self.msg_total = self.msg_done = 0
            if total > self.max_message:  # dropped: later messages flow
                self.last_len = total
                self._consume(size)
                self.release()
                raise _Code(FIPC_TOOBIG)
            if kind == FR_WHOLE:
                self.last_len = n
                self.last_pos = self.pos
                if dest is None:
                    self._consume(size)
                    return off, n
                if len(dest) < n:
                    raise _Code(NEED)
                dest[:n] = mm[off:off + n]
                self._consume(size)
                self._lazy_release()
                return n
            self.last_len = total
            if dest is None or len(dest) < total:
                raise _Code(NEED)
            dest[:n] = mm[off:off + n]
            self.msg_total, self.msg_done = total, n
            self._consume(size)
            self.release()
            if n == total:
                self.msg_total = self.msg_done = 0
                return total

    def _call(self, dest: Any, timeout: float) -> Any:
        t0 = _monotonic() if timeout > 0 else 0.0
        t = timeout
        while True:
            try:
                return self._get(dest, t)
            except _Code as c:
                if c.code != -errno.EINTR:
                    self._error(c.code, timeout)
            t = _left(timeout, t0)

    def make_recv(self, slow: Any) -> Any:
        mm = self._mm

        def recv(timeout: Optional[float] = None) -> bytes:
            t = -1.0 if timeout is None else check_timeout(timeout)
            t0 = _monotonic() if t > 0 else 0.0
            try:
                off, n = self._get(None, t)
            except _Code as c:
                return slow(c.code, t, t0)  # type: ignore[no-any-return]
            return mm[off:off + n]  # type: ignore[no-any-return]

        return recv

    def finish(self, n: int, timeout: float, t0: float) -> bytes:
        if n == -errno.EINTR:
            return self.recv(_left(timeout, t0))
        self._error(n, timeout)
        raise AssertionError("unreachable")

    def recv(self, timeout: float) -> bytes:
        off, n = self._call(None, timeout)
        return self._mm[off:off + n]  # type: ignore[no-any-return]

    def recv_into(self, buffer: Any, timeout: float) -> int:
        dest = memoryview(buffer).cast("B")
        try:
            return int(self._call(dest, timeout))
        finally:
            dest.release()

    def in_progress(self) -> tuple[int, int]:
        return (self.msg_done, self.msg_total) if self.msg_total else (0, 0)

    def view(self, timeout: float) -> tuple[int, int, int]:
        off, n = self._call(None, timeout)
        return off, n, self.last_pos

    @staticmethod
    def new_buffer(n: int) -> Any:
        return bytearray(n)

    @staticmethod
    def finish_buffer(buf: Any, n: int) -> bytes:
        return bytes(memoryview(buf)[:n])

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        mm = self._mm
        out: list[bytes] = []
        if self.msg_total:
            raise Need(self.msg_total)
        try:
            off, n = self._call(None, timeout)
        except Need:
            raise
        out.append(mm[off:off + n])
        try:
            while len(out) < max_messages:
                if self.peer == self.pos and not self._ready(0):
                    break
                kind, n, total, off, size = self._frame()
                if kind in (FR_PAD, FR_NEXT):
                    self._consume(size)
                    continue
                if kind == FR_FIRST or total > self.max_message:
                    break
                out.append(mm[off:off + n])
                self._consume(size)
        except _Code as c:
            self._error(c.code, timeout)
        self._lazy_release()
        return out

    def close(self) -> None:
        self.hold = _NO_HOLD
        self.release()
        u32 = self._u32
        u32[OFF_RSTATE // 4] = ST_CLOSED
        self._wake_all()
        self._release_views()
