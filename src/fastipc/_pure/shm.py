"""Channel operations in pure Python over the same binary layout as ``csrc/shm.c``
(``fastipc._shm_layout``), with the same return convention: every step returns a length or
a negative status (``-errno`` / ``FIPC_*``), so that the waits go through ``_core.retry``.

The ring is read and written through ``memoryview`` casts of the mapping. Ordering: on
x86-64 the hardware keeps stores in order and loads in order (TSO), which is all the
copy-then-publish protocol needs; the one reordering it allows (a store followed by a load
of another word) and every reordering weaker CPUs allow are closed by a full barrier: a
``FUTEX_WAKE`` on a private word, whose kernel path runs ``smp_mb()``. Waits use ``futex``
through ``ctypes`` with the same words as the native backend, so native and pure ends wake
each other; without it they poll with back-off.

Async exceptions (a signal handler that raises can run between any two bytecodes): every
step that consumes ring space copies first and commits its position in one store, and the
part of a streamed message received so far lives in ``_pending`` with the position of the
frame that follows it, so an interrupted call leaves the message whole for the next one.
A truncated segment cannot be guarded against here as C does (SIGBUS): the size is checked
(``fstat``) after every sleep, which catches a truncation that happens while this end
waits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from fastipc import _shm_layout as L
from fastipc._backend import shm as contract
from fastipc._backend.ring import Holds
from fastipc._core import (
    FIPC_CORRUPT,
    FIPC_EOF,
    FIPC_NEED,
    FIPC_TOOBIG,
    Deadline,
    byte_view,
    check_timeout,
    raise_errno,
)

__all__ = ["ReaderOps", "WriterOps"]

NEED = FIPC_NEED
SLICE = 0.1
_NO_HOLD = 2**64 - 1
_EINTR = -errno.EINTR
_EAGAIN = -errno.ETIMEDOUT
_CLOSED = L.ST_CLOSED
_WWAIT = L.OFF_WWAIT // 4
_FRAME = L.FRAME
_TOTAL = L.TOTAL
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
    if rc < 0 and ctypes.get_errno() == errno.EINTR:
        return _EINTR
    return 0


def _futex_wake(addr: int) -> None:
    if _syscall is not None:
        _syscall(_SYS_FUTEX, ctypes.c_void_p(addr), _FUTEX_WAKE, 0x7FFFFFFF, None, None, 0)


def _start_header(mm: Any, u32: Any, u64: Any, layout: Any, cap: int,
                  max_message: int) -> None:
    """Clear a new segment's header and write the fields the channel and the fan-out
    segment share (``layout``: the module of their offsets); the caller then writes its
    own fields, and the magic last."""
    mm[:layout.HEADER] = bytes(layout.HEADER)
    u32[layout.OFF_VERSION // 4] = layout.VERSION
    u64[layout.OFF_CAPACITY // 8] = cap
    u64[layout.OFF_DATA // 8] = layout.HEADER
    u64[layout.OFF_MAXMSG // 8] = max_message


def _valid_size(size: int) -> bool:
    """A channel segment's size: the header, then a ring of a power of two >= 4096."""
    cap = size - L.HEADER
    return cap >= L.MIN_CAPACITY and cap & (cap - 1) == 0


def _round8(n: int) -> int:
    return (n + 7) & ~7


def _no_retry(left: float) -> int:
    return -errno.EAGAIN  # never called: _run is given a status that is not EINTR


# ---------------------------------------------------------------------------- both ends


class _Ops(contract.Retrying):
    role = 0
    _what = "channel end"
    _peer_lock = 0

    def __init__(self, mm: Any, size: int, fd: int, name: str, pid: int, max_message: int,
                 spin: float) -> None:
        """This end of the channel in ``mm`` (``size`` bytes, from fstat of ``fd``): the
        views of the header, then the end's own state (:meth:`_setup`: the writer writes
        the header, the reader checks it)."""
        self._check_args(size, pid, name)
        self.name = name
        self._mm = mm
        self._fd = fd
        self._mv = memoryview(mm)
        self._u32 = self._mv[:L.HEADER].cast("I")
        self._u64 = self._mv[:L.HEADER].cast("Q")
        self._size = size
        self.capacity = size - L.HEADER
        self._words = (ctypes.c_uint32 * (L.HEADER // 4)).from_buffer(mm)
        self._addr = ctypes.addressof(self._words)
        self.spin_max = 0.0
        self.spin_cur = 0.0
        self.spins = self.sleeps = 0
        self.pos = 0
        self.peer = 0
        self._closed = False
        self.recheck = False
        self._probed = 0.0
        self._wait_i, self._seq_i = (L.OFF_RWAIT // 4, L.OFF_DSEQ // 4) if self.role == 2 \
            else (L.OFF_WWAIT // 4, L.OFF_SSEQ // 4)
        self._peer_state = (L.OFF_WSTATE if self.role == 2 else L.OFF_RSTATE) // 4
        self.max_message = max_message
        self._setup(mm, size, name, pid, spin)

    def _check_args(self, size: int, pid: int, name: str) -> None:
        """Refuse what cannot be this end's, before anything is set up."""

    def _setup(self, mm: Any, size: int, name: str, pid: int, spin: float) -> None:
        """This end's own state."""

    def _release_views(self) -> None:
        self._u32.release()
        self._u64.release()
        self._mv.release()
        del self._words
        self._mm = None  # the mapping lives on only in views still exported

    @property
    def spin(self) -> float:
        return self.spin_max

    @spin.setter
    def spin(self, value: float) -> None:
        self.spin_max = self.spin_cur = min(float(value), 1.0)

    def stats(self) -> tuple[int, int]:
        return self.spins, self.sleeps

    # -- waiting: the protocol of wait_ring() in csrc/shm.c

    def _ready(self, need: int) -> int:
        raise NotImplementedError

    def _gone(self, probe: int) -> bool:
        """As peer_gone() in csrc/shm.c: closed, or (probe) its liveness lock is free."""
        state = self._u32[self._peer_state]
        if state == _CLOSED:
            return True
        if not probe or (self.role == 1 and state == L.ST_NONE):
            return False
        now = _monotonic()
        if probe == 2 and now - self._probed < 0.01:
            return False
        self._probed = now
        try:
            return not L.lock_held(self._fd, self._peer_lock)
        except OSError:
            return False

    def _gone_code(self) -> int:
        return FIPC_EOF if self.role == 2 else -errno.EPIPE

    def _truncated(self) -> bool:
        try:
            return os.fstat(self._fd).st_size < self._size
        except OSError:
            return False

    def _wait(self, need: int, timeout: float, deadline: Deadline) -> int:
        """Until _ready(need): 0, or a negative status (EOF / EPIPE / timeout / EINTR)."""
        if self.role == 2:
            self.release()
        start = 0.0
        if timeout != 0 and self.spin_cur > 0:
            start = _monotonic()
            end = start + self.spin_cur
            if deadline.end > 0:
                end = min(end, deadline.end)
            while True:
                rc = self._ready(need)
                if rc:
                    if rc > 0:
                        self.spins += 1
                        self.spin_cur = min(self.spin_max, self.spin_cur * 2)
                    return min(rc, 0)
                if self._closed:
                    return -errno.EBADF
                if self._gone(0) or _monotonic() >= end:
                    break
        u32 = self._u32
        wait_i, seq_i = self._wait_i, self._seq_i
        slept = False
        probe = 2 if timeout == 0 else 0
        while True:
            if self._closed:
                return -errno.EBADF
            seq = u32[seq_i]
            u32[wait_i] = 1
            _fence()
            rc = self._ready(need)
            if rc == 0 and self._gone(1 if slept else probe):
                rc = self._ready(need) or self._gone_code()
            if rc:
                u32[wait_i] = 0
                if rc > 0:
                    if slept:
                        self.sleeps += 1
                        if start:
                            self._adapt(_monotonic() - start)
                    else:
                        self.spins += 1
                    return 0
                return rc
            left = deadline.left()
            if left == 0:
                u32[wait_i] = 0
                return -errno.ETIMEDOUT
            slice_ = SLICE / 10 if self.recheck else SLICE
            rc = _futex_wait(self._addr + seq_i * 4, seq, slice_ if left < 0 else
                             min(left, slice_))
            slept = True
            if self._truncated():  # the next look at the mapping would be a SIGBUS
                return FIPC_CORRUPT
            u32[wait_i] = 0
            if rc < 0:
                return rc
            if self.recheck:
                return _EINTR  # the reader looks at its exported views, then waits again

    def _adapt(self, waited: float) -> None:
        """As fipc_spin_slept() in csrc/common.c."""
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

    def release(self) -> None:
        """Reader: hand consumed space back to the writer (nothing to do for a writer)."""

    def _need(self) -> int:
        return 0

    def park(self) -> Optional[tuple[int, int]]:
        if self.role == 2:
            self.release()
        else:
            self._publish_head()
        u32 = self._u32
        seq = u32[self._seq_i]
        u32[self._wait_i] = 1
        _fence()
        rc = self._ready(self._need())
        if rc == 0 and self._gone(1):
            rc = self._ready(self._need()) or self._gone_code()
        if rc == 0:
            return self._addr + self._seq_i * 4, seq
        u32[self._wait_i] = 0
        if rc < 0:
            self._run(rc, _no_retry, Deadline(0.0))
        return None

    def unpark(self) -> None:
        self._u32[self._wait_i] = 0

    def _publish_head(self) -> None:
        self._publish(L.OFF_HEAD, self.pos, L.OFF_RWAIT, L.OFF_DSEQ)

    def wake(self) -> None:
        """Wake our own calls blocked in other threads (they find _closed: EBADF)."""
        self._closed = True
        u32 = self._u32
        for off in (L.OFF_DSEQ, L.OFF_SSEQ):
            u32[off // 4] = (u32[off // 4] + 1) & 0xFFFFFFFF
        _fence()
        _futex_wake(self._addr + L.OFF_DSEQ)
        _futex_wake(self._addr + L.OFF_SSEQ)

    def _mark_closed(self, off: int) -> None:
        if not self._truncated():
            self._u32[off // 4] = L.ST_CLOSED
            self.wake()  # and the peer
        self._release_views()

    def detach(self) -> None:
        self._release_views()


# ---------------------------------------------------------------------------- writer


class WriterOps(_Ops, contract.NowaitSend, contract.FlushPark):
    role = 1
    _what = "Writer"
    _peer_lock = L.LOCK_READER

    def _check_args(self, size: int, pid: int, name: str) -> None:
        if not _valid_size(size) or pid <= 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), name)

    def _setup(self, mm: Any, size: int, name: str, pid: int, spin: float) -> None:
        cap = self.capacity
        max_message = self.max_message
        self._whole_max = cap // 4
        self.chunk = min(cap // 16, L.MAX_CHUNK)
        self.spin = spin
        self.want = 0
        _start_header(mm, self._u32, self._u64, L, cap, max_message)
        u32 = self._u32
        u32[L.OFF_WPID // 4] = pid
        u32[L.OFF_WSTATE // 4] = L.ST_OPEN
        _fence()
        u32[L.OFF_MAGIC // 4] = L.MAGIC  # last: the header is complete
        self._progress = [0]
        self._nowait = [0]
        self._lock = threading.Lock()

    def _need(self) -> int:
        return self.want

    def _ready(self, need: int) -> int:
        if self.capacity - (self.pos - self.peer) >= need:
            return 1
        tail = self._u64[L.OFF_TAIL // 8]
        if tail & 7 or (self.pos - tail) % 2**64 > self.capacity or \
                (tail - self.peer) % 2**64 > self.capacity:
            return FIPC_CORRUPT
        if not _TSO:
            _fence()  # the reader's last reads of that space before our writes to it
        self.peer = tail
        return 1 if self.capacity - (self.pos - self.peer) >= need else 0

    def _reserve(self, frame: int, timeout: float, deadline: list[Deadline]) -> int:
        """Where a frame of `frame` bytes goes (padding to the ring's end if needed), or a
        negative status."""
        cap = self.capacity
        room = cap - (self.pos & (cap - 1))
        need = room + frame if frame > room else frame
        rc = self._ready(need)
        if rc < 0:
            return rc
        if rc == 0:
            self._publish_head()
            if not deadline:  # made only when a call first has to wait
                deadline.append(Deadline(timeout))
            rc = self._wait(need, timeout, deadline[0])
            if rc < 0:
                self.want = need
                return rc
        if frame > room:
            _FRAME.pack_into(self._mm, L.HEADER + (self.pos & (cap - 1)), room - L.FR_HDR,
                             L.FR_PAD)
            self.pos += room
        return L.HEADER + (self.pos & (cap - 1))

    def _put_whole(self, data: Any, n: int) -> bool:
        """The common case, without waiting: a whole frame that fits before the ring's end,
        with room for it. False if it is not that case (nothing written)."""
        frame = L.FR_HDR + ((n + 7) & ~7)
        cap = self.capacity
        pos = self.pos
        if frame > self._whole_max or frame > cap - (pos & (cap - 1)) or \
                cap - (pos - self.peer) < frame:
            return False
        off = L.HEADER + (pos & (cap - 1))
        mm = self._mm
        _FRAME.pack_into(mm, off, n, L.FR_WHOLE)
        mm[off + L.FR_HDR:off + L.FR_HDR + n] = data
        self.pos = pos + frame
        return True

    def _put(self, data: Any, timeout: float, deadline: list[Deadline],
             progress: list[int]) -> int:
        n = len(data)
        mm = self._mm
        frame = L.FR_HDR + _round8(n)
        if frame <= self.capacity // 4:
            off = self._reserve(frame, timeout, deadline)
            if off < 0:
                return off
            _FRAME.pack_into(mm, off, n, L.FR_WHOLE)
            mm[off + L.FR_HDR:off + L.FR_HDR + n] = data
            self.pos += frame
            return 0
        done = progress[0]
        while done < n:
            hdr = L.FIRST_HDR if done == 0 else L.FR_HDR
            want = min(n - done, self.chunk)
            off = self._reserve(hdr + _round8(want), timeout, deadline)
            if off < 0:
                return off
            _FRAME.pack_into(mm, off, want, L.FR_FIRST if done == 0 else L.FR_NEXT)
            if done == 0:
                _TOTAL.pack_into(mm, off + L.FR_HDR, n)
            mm[off + hdr:off + hdr + want] = data[done:done + want]
            self.pos += hdr + _round8(want)
            self._publish_head()
            done += want
            progress[0] = done
        return 0

    def _send(self, data: Any, timeout: float, progress: list[int]) -> int:
        if len(data) > self.max_message:
            return FIPC_TOOBIG
        if self._closed:
            return -errno.EBADF
        if self._gone(0):
            return -errno.EPIPE
        rc = self._put(data, timeout, [], progress)
        self._publish_head()
        if rc == 0:
            progress[0] = 0
        return rc

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        t = -1.0 if timeout is None else check_timeout(timeout)
        mv = data if type(data) is bytes else byte_view(data)
        if len(mv) <= self.max_message and not self._closed and \
                self._u32[self._peer_state] != _CLOSED and self._put_whole(mv, len(mv)):
            self._publish_head()
            return
        progress = self._progress
        progress[0] = 0
        start = _monotonic() if t > 0 else 0.0
        rc = self._send(mv, t, progress)
        if rc:
            try:
                self._run(rc, lambda left: self._send(mv, left, progress),
                          Deadline(t, start))
            finally:
                progress[0] = 0  # a message cut short is abandoned; the reader drops it

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        if any(n > self.max_message for n in lens):
            try:
                self._run(FIPC_TOOBIG, _no_retry, Deadline(timeout))
            except OSError as exc:
                exc.messages_sent = 0  # type: ignore[attr-defined]
                raise
        mv = memoryview(blob)
        deadline = Deadline(timeout)
        sent = [0, 0]  # messages, bytes

        def attempt(left: float) -> int:
            if self._closed:
                return -errno.EBADF
            if self._gone(0):
                return -errno.EPIPE
            step: list[Deadline] = []
            i, off = sent
            try:
                for n in lens[i:]:
                    data = mv[off:off + n]
                    if not self._put_whole(data, n):
                        rc = self._put(data, left, step, [0])
                        if rc:
                            return rc
                    i += 1
                    off += n
                return 0
            finally:
                sent[0], sent[1] = i, off
                self._publish_head()

        try:
            self._run(attempt(timeout), attempt, deadline)
        except OSError as exc:
            exc.messages_sent = sent[0]  # type: ignore[attr-defined]
            raise

    def send_nowait(self, data: Any) -> bool:
        return self._nowait_sent(self._send(byte_view(data), 0.0, self._nowait))

    def flushed(self) -> bool:
        self._publish_head()
        if self._u64[L.OFF_TAIL // 8] == self.pos:
            return True
        if self._gone(1):
            self._run(-errno.EPIPE, _no_retry, Deadline(0.0))
        return False

    def reader_attached(self) -> bool:
        return bool(self._u32[L.OFF_RSTATE // 4] != L.ST_NONE)

    def _header_words(self) -> tuple[Any, int]:
        return self._u32, self._addr

    def close(self) -> None:
        if not self._truncated():
            self._u64[L.OFF_HEAD // 8] = self.pos
            _fence()
        self._mark_closed(L.OFF_WSTATE)


# ---------------------------------------------------------------------------- reader


class ReaderOps(_Ops, Holds):
    role = 2
    _what = "Reader"
    _peer_lock = L.LOCK_WRITER

    def _check_args(self, size: int, pid: int, name: str) -> None:
        if not _valid_size(size):
            raise_errno(FIPC_CORRUPT, name)

    def _setup(self, mm: Any, size: int, name: str, pid: int, spin: float) -> None:
        try:
            self._check_header(size, name)
        except BaseException:
            self._release_views()
            raise
        u32, u64 = self._u32, self._u64
        tail = u64[L.OFF_TAIL // 8]
        self.pos = self.release_pos = self.published = tail
        self.peer = u64[L.OFF_HEAD // 8]
        self._batch = self.capacity >> 4  # released in batches of a sixteenth of the ring
        self.hold = _NO_HOLD
        self._init_holds()
        # a streamed message being assembled: (buffer, bytes in it, position of the frame
        # that continues it), committed in one store; None when there is none
        self._pending: Optional[tuple[Any, int, int]] = None
        self._msg: Optional[bytes] = None  # taken, not yet returned
        self._direct: Any = None  # the pending buffer when it is this recv_into's own
        self.last_len = self.last_pos = 0
        self._off = 0
        self.spin = spin
        u32[L.OFF_RPID // 4] = pid
        _fence()
        u32[L.OFF_RSTATE // 4] = L.ST_OPEN

    def _check_header(self, size: int, name: str) -> None:
        u32, u64 = self._u32, self._u64
        magic = u32[L.OFF_MAGIC // 4]
        _fence()
        cap = size - L.HEADER
        if magic != L.MAGIC or u32[L.OFF_VERSION // 4] != L.VERSION or \
                u64[L.OFF_CAPACITY // 8] != cap or u64[L.OFF_DATA // 8] != L.HEADER:
            raise_errno(FIPC_CORRUPT, name)
        wpid, wstate = u32[L.OFF_WPID // 4], u32[L.OFF_WSTATE // 4]
        if not 0 < wpid < 2**31 or wstate not in (L.ST_OPEN, L.ST_CLOSED):
            raise_errno(FIPC_CORRUPT, name)
        if u32[L.OFF_RSTATE // 4] != L.ST_NONE:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), name)
        tail, head = u64[L.OFF_TAIL // 8], u64[L.OFF_HEAD // 8]
        if tail & 7 or head & 7 or (head - tail) % 2**64 > cap:
            raise_errno(FIPC_CORRUPT, name)

    def _ready(self, need: int) -> int:
        if self.peer != self.pos:
            return 1
        head = self._u64[L.OFF_HEAD // 8]
        if head & 7 or (head - self.pos) % 2**64 > self.capacity or \
                (head - self.peer) % 2**64 > self.capacity:
            return FIPC_CORRUPT
        if not _TSO:
            _fence()  # the counter before the data it covers
        self.peer = head
        return 1 if head != self.pos else 0

    def release(self) -> None:
        t = min(self.release_pos, self.hold)
        cur = self._u64[L.OFF_TAIL // 8]
        if t == cur or (t - cur) % 2**64 > self.capacity:  # only ever forward
            return
        self.published = t
        self._publish(L.OFF_TAIL, t, L.OFF_WWAIT, L.OFF_SSEQ)

    def _lazy_release(self) -> None:
        if self.release_pos - self.published >= self._batch or self._u32[_WWAIT]:
            self.release()

    def set_hold(self, pos: Optional[int]) -> None:
        self.hold = _NO_HOLD if pos is None else pos
        self.release()

    def _recheck(self, flag: bool) -> None:
        self.recheck = flag

    def _frame(self) -> tuple[int, int, int, int, int]:
        """(kind, length, total, data offset in the mapping, frame size), or kind < 0: a
        status."""
        cap = self.capacity
        rel = self.pos & (cap - 1)
        room = cap - rel
        avail = self.peer - self.pos
        if self.pos & 7 or avail < L.FR_HDR:
            return FIPC_CORRUPT, 0, 0, 0, 0
        off = L.HEADER + rel
        n, kind = _FRAME.unpack_from(self._mm, off)
        hdr = L.FIRST_HDR if kind == L.FR_FIRST else L.FR_HDR
        size = hdr + _round8(n)
        total = n
        if kind == L.FR_FIRST:
            total = _TOTAL.unpack_from(self._mm, off + L.FR_HDR)[0]
        if not L.FR_WHOLE <= kind <= L.FR_PAD or size > room or size > avail or \
                (kind == L.FR_PAD and size != room) or \
                (kind == L.FR_FIRST and (total < n or total == 0)):
            return FIPC_CORRUPT, 0, 0, 0, 0
        return kind, n, total, off + hdr, size

    def _consume(self, size: int) -> None:
        pos = self.pos + size
        self.pos = pos  # the commit: one store
        self.release_pos = pos

    def _get(self, timeout: float, limit: int = -1, whole_only: bool = False,
             into: Optional[memoryview] = None) -> int:
        """fipc_shm_recv() into this end: the next message's length with it in place at
        ``_off`` (a WHOLE frame, consumed by :meth:`_take`) or whole in ``_pending``'s
        buffer; or a negative status. NEED, with nothing consumed, for a message longer
        than ``limit`` (``whole_only``: for any streamed one). A streamed message is
        assembled in ``into`` when given (recv_into: no second copy), else in a buffer of
        its own."""
        deadline: Optional[Deadline] = None
        if self._stuck:
            self._unstick()
        self._lazy_release()
        mm = self._mm
        while True:
            if self._closed:
                return -errno.EBADF
            if self.peer == self.pos:
                rc = self._ready(0)
                if rc == 0:
                    if deadline is None:  # made only when a call first has to wait
                        deadline = Deadline(timeout)
                    rc = self._wait(0, timeout, deadline)
                if rc < 0:
                    if rc == FIPC_EOF:
                        self._pending = None  # a message cut short is dropped
                    return rc
            kind, n, total, off, size = self._frame()
            if kind < 0:
                return kind
            if kind == L.FR_PAD:
                self._consume(size)
                continue
            pend = self._pending
            if kind == L.FR_NEXT:
                if pend is None:  # the rest of a message its writer abandoned
                    self._consume(size)
                    self.release()
                    continue
                buf, done, at = pend
                if self._behind(at):  # interrupted between its commit and the consume
                    continue
                if n > len(buf) - done:
                    return FIPC_CORRUPT
                buf[done:done + n] = mm[off:off + n]  # copy, then commit in one store
                self._pending = (buf, done + n, self.pos + size)
                self._consume(size)
                self.release()
                if done + n == len(buf):
                    return len(buf)
                continue
            # a new message: one that was being assembled was abandoned by its writer
            if pend is not None:
                if self._behind(pend[2]):
                    continue
                if pend[1] == len(pend[0]):  # whole already, not taken yet
                    return len(pend[0])
                self._pending = None
            self.last_len = total
            if total > self.max_message:  # dropped: later messages flow
                self._consume(size)
                self.release()
                return FIPC_TOOBIG
            if (0 <= limit < total) or (whole_only and kind == L.FR_FIRST):
                return NEED
            if kind == L.FR_WHOLE:
                self.last_pos = self.pos
                self._off = off
                return n
            buf = bytearray(total) if into is None else into[:total]
            if into is not None:
                self._direct = buf
            buf[:n] = mm[off:off + n]
            self._pending = (buf, n, self.pos + size)
            self._consume(size)
            self.release()
            if n == total:
                return total

    def _behind(self, at: int) -> bool:
        """A streamed message's commit is ahead of pos (a call was interrupted between the
        two): catch up, and say so."""
        if 0 < (at - self.pos) % 2**64 <= self.capacity:
            self.pos = self.release_pos = at
            return True
        return False

    def _take(self, n: int, into: Any = None) -> Any:
        """The message the last _get found, copied out (into ``into`` if given, else as
        bytes) before its space is consumed: an interruption in between leaves it queued."""
        pend = self._pending
        if pend is not None and pend[1] == len(pend[0]) == n:
            data: Any = pend[0]
            if into is not None and data is not self._direct:
                into[:n] = data
            self._pending = None
            return data
        off = self._off
        if into is not None:
            into[:n] = self._mv[off:off + n]
            data = None
        else:
            data = self._mm[off:off + n]
        self._consume(L.FR_HDR + _round8(n))
        return data

    def _attempt(self, t: float) -> int:
        if self._msg is not None:  # taken, but its call was interrupted before returning it
            return len(self._msg)
        n = self._get(t)
        if n >= 0:
            self._msg = bytes(self._take(n))
        return n

    def recv(self, timeout: Optional[float] = None) -> bytes:
        t = -1.0 if timeout is None else check_timeout(timeout)
        if self._msg is None and self._pending is None and not self._stuck and \
                not self._closed and (self.peer != self.pos or self._ready(0) > 0):
            # the common case inline: a whole frame published already
            kind, n, total, off, size = self._frame()
            if kind == L.FR_WHOLE and total <= self.max_message:
                got: bytes = self._mm[off:off + n]  # copied out, then consumed
                pos = self.pos + size
                self.pos = pos
                self.release_pos = pos
                if pos - self.published >= self._batch or self._u32[_WWAIT]:
                    self.release()
                return got
        start = _monotonic() if t > 0 else 0.0
        n = self._attempt(t)
        if n < 0:
            self._run(n, self._attempt, Deadline(t, start))
        msg, self._msg = self._msg, None
        return msg  # type: ignore[return-value]

    def recv_into(self, buffer: Any, timeout: float) -> int:
        dest = memoryview(buffer).cast("B")
        cap = dest.nbytes
        self._direct = None  # a part assembled in another call's buffer is copied over

        def attempt(t: float) -> int:
            if self._msg is not None:
                n = len(self._msg)
                if n > cap:
                    self._too_small(cap, n)
                dest[:n] = self._msg
                self._msg = None
                return n
            pend = self._pending
            if pend is not None and len(pend[0]) > cap:
                self._too_small(cap, len(pend[0]))
            n = self._get(t, cap, into=dest)
            if n == NEED:
                self._too_small(cap, self.last_len)
            if n >= 0:
                self._take(n, dest)
            return n

        try:
            start = _monotonic()
            n = attempt(timeout)
            return n if n >= 0 else self._run(n, attempt, Deadline(timeout, start))
        finally:
            dest.release()

    @staticmethod
    def _too_small(cap: int, n: int) -> None:
        raise ValueError(f"buffer of {cap} bytes is too small for the next message "
                         f"({n} bytes); it stays queued")

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        if self._msg is not None or self._pending is not None:
            return memoryview(self.recv(None if timeout < 0 else timeout)), None
        start = _monotonic()
        n = self._get(timeout, whole_only=True)
        if n < 0 and n != NEED:
            n = self._run(n, lambda t: self._get(t, whole_only=True), Deadline(timeout, start))
        if n == NEED:  # streamed: assembled, so a copy
            return memoryview(self.recv(None if timeout < 0 else timeout)), None
        got = self._export(self._off, n, self.pos)
        self._consume(L.FR_HDR + _round8(n))
        return got

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        return self._more([self.recv(None if timeout < 0 else timeout)], max_messages)

    def _more(self, out: list[bytes], max_messages: int) -> list[bytes]:
        """``out`` and what else is queued whole, up to ``max_messages``, without waiting;
        anything else (a streamed message, an error) is left for the next call."""
        mm = self._mm
        if self._pending is None:
            while len(out) < max_messages:
                if self.peer == self.pos and self._ready(0) <= 0:
                    break
                kind, n, total, off, size = self._frame()
                if kind == L.FR_PAD:
                    self._consume(size)
                    continue
                if kind != L.FR_WHOLE or total > self.max_message:
                    break
                out.append(mm[off:off + n])  # copied out, then consumed
                self._consume(size)
        self._lazy_release()
        return out

    def recv_nowait(self) -> Optional[bytes]:
        n = self._attempt(0.0)
        if n >= 0:
            msg, self._msg = self._msg, None
            return msg
        if n in (_EAGAIN, _EINTR):
            return None
        self._run(n, _no_retry, Deadline(0.0))
        return None

    def recv_many_nowait(self, max_messages: int) -> Optional[list[bytes]]:
        first = self.recv_nowait()
        return None if first is None else self._more([first], max_messages)

    def close(self) -> None:
        self.hold = _NO_HOLD
        if not self._truncated():
            self.release()
        self._mark_closed(L.OFF_RSTATE)


if TYPE_CHECKING:
    _check_writer: type[contract.PureWriterOps] = WriterOps
    _check_reader: type[contract.PureReaderOps] = ReaderOps
