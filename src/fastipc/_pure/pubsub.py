"""Fan-out operations in pure Python over the binary layout of ``csrc/pubsub.c``.

The protocol is the C one, statement for statement (docs/pubsub-layout.md), through
``memoryview`` casts of the mapping and the named offsets of ``fastipc._backend.pubsub``.
Memory ordering and futex calls are those of the pure shm channel (``fastipc._pure.shm``:
a full barrier is a ``FUTEX_WAKE`` on a private word, whose kernel path runs ``smp_mb()``),
so native and pure participants wake each other. Internal steps raise :class:`_Code` with
the C status; each user operation turns it into the same return value as the C call and
goes through ``_core.retry``.
"""

from __future__ import annotations

import errno
import mmap
import time
from typing import Any, Optional

from fastipc._backend import pubsub as L
from fastipc._backend.pubsub import NotReady, PublisherOps, SubscriberOps
from fastipc._backend.ring import Holds
from fastipc._core import (
    FIPC_CORRUPT,
    FIPC_EOF,
    FIPC_TOOBIG,
    Deadline,
    byte_view,
    check,
    retry,
)
from fastipc._pure.shm import _TSO, _fence, _futex_wait, _futex_wake, _start_header


class _Code(Exception):
    """An internal status (a negative errno or FIPC_* code) on its way to the caller."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code

__all__ = ["Publisher", "Subscriber"]

_monotonic = time.monotonic
_MASK32 = 0xFFFFFFFF
_MASK64 = (1 << 64) - 1
_HALF = 1 << 63
_NO_HOLD = _MASK64
SLICE = 0.1
NEEDED = 1 << 62  # FIPC_NEED on its way through retry()
_ROLE_PUB, _ROLE_SUB = 1, 2


def _round16(n: int) -> int:
    return (n + 15) & ~15


def _too_small(cap: int, n: int) -> ValueError:
    return ValueError(f"buffer of {cap} bytes is too small for the next message ({n} bytes);"
                      " it stays queued")


def _slot(i: int, field: int) -> int:
    return L.OFF_SLOTS + i * L.SLOT_SIZE + field


class _Ops:
    role = 0
    _want = 0  # publisher: room its last attempt lacked (a parked sender's)

    def __init__(self, mm: mmap.mmap, size: int, fd: int, name: str) -> None:
        import ctypes

        self.name = name
        self._mm = mm
        self._mv = memoryview(mm)
        self._u32 = self._mv[:L.HEADER].cast("I")
        self._u64 = self._mv[:L.HEADER].cast("Q")
        self._words = (ctypes.c_uint32 * (L.HEADER // 4)).from_buffer(mm)
        self._addr = ctypes.addressof(self._words)
        self._fd = fd
        self._size = size
        self.capacity = size - L.HEADER
        self.closed = False
        self.recheck = False
        self.spin_max = self.spin_cur = 0.0
        self.spins = self.sleeps = 0
        self.pos = self.peer = 0

    def stats(self) -> tuple[int, int]:
        return self.spins, self.sleeps

    def _set_spin(self, spin: float) -> None:
        self.spin_max = self.spin_cur = min(float(spin), 1.0)

    def _bell(self, seq_off: int) -> None:
        u32 = self._u32
        u32[seq_off // 4] = (u32[seq_off // 4] + 1) & _MASK32
        _fence()
        _futex_wake(self._addr + seq_off)

    def wake(self) -> None:
        self.closed = True
        self._bell(L.OFF_DSEQ if self.role == _ROLE_SUB else L.OFF_SSEQ)

    def _let_go(self) -> None:
        self._u32.release()
        self._u64.release()
        self._mv.release()
        del self._words

    # -- the wait of wait_ring() in csrc/pubsub.c

    def _ready(self, need: int) -> bool:
        raise NotImplementedError

    def _wait(self, need: int, deadline: Deadline) -> None:
        sub = self.role == _ROLE_SUB
        timeout = deadline.left()
        if sub:
            self._release_cursor()
        start = 0.0
        if timeout != 0 and self.spin_cur > 0:
            start = _monotonic()
            end = start + self.spin_cur
            if timeout > 0:
                end = min(end, start + timeout)
            while True:
                if self._ready(need):
                    self.spins += 1
                    self.spin_cur = min(self.spin_max, self.spin_cur * 2)
                    return
                if self.closed:
                    raise _Code(-errno.EBADF)
                if (sub and self._gone(False)) or _monotonic() >= end:
                    break
        u32 = self._u32
        if not sub:
            self._want_room(need)
        wait_off = L.OFF_SWAIT if sub else L.OFF_PWAIT
        seq_off = L.OFF_DSEQ if sub else L.OFF_SSEQ
        slept = False
        while True:
            if self.closed:
                raise _Code(-errno.EBADF)
            ok, seq = self._look(need, slept or timeout == 0)
            if ok:
                if slept:
                    self.sleeps += 1
                    if start and self.spin_max > 0:
                        waited = _monotonic() - start
                        if waited < 4 * self.spin_max + 100e-6:
                            self.spin_cur = self.spin_max
                        else:
                            self.spin_cur = max(self.spin_cur / 2, min(1e-6, self.spin_max))
                else:
                    self.spins += 1
                return
            left = deadline.left()
            if left == 0:
                if not sub:
                    u32[wait_off // 4] = 0
                raise _Code(-errno.ETIMEDOUT)
            slice_ = SLICE / 10 if sub and self.recheck else SLICE
            rc = _futex_wait(self._addr + seq_off, seq, slice_ if left < 0 else min(left, slice_))
            if not sub:
                u32[wait_off // 4] = 0
            slept = True
            if rc < 0:
                raise _Code(rc)
            if sub and self.recheck:  # the subscriber looks at its exported views
                raise _Code(-errno.EINTR)

    def _want_room(self, need: int) -> None:
        """Publisher: subscribers wake us once they have freed a slice, not at once."""
        self._u64[L.OFF_PWANT // 8] = (self.pos + max(need, self.capacity >> L.WAKE_SHIFT)
                                       - self.capacity) & _MASK64

    def _look(self, need: int, deep: bool) -> tuple[bool, int]:
        """raise_and_look() of csrc/pubsub.c: raise this end's waiting flag and look once
        more: (ready, the futex word's value read before the flag went up); _Code(FIPC_EOF)
        for a subscriber whose publisher has gone. The publisher's flag is lowered again
        when it is ready."""
        sub = self.role == _ROLE_SUB
        u32 = self._u32
        wait_off = L.OFF_SWAIT if sub else L.OFF_PWAIT
        seq = u32[(L.OFF_DSEQ if sub else L.OFF_SSEQ) // 4]
        u32[wait_off // 4] = 1
        _fence()
        ok = self._ready(need)
        if not ok and sub and self._gone(deep):
            ok = self._ready(need)  # the last head comes before the closed state
            if not ok:
                raise _Code(FIPC_EOF)
        if not ok and not sub and deep:
            self._reclaim_dead()
            ok = self._ready(need)
        if ok and not sub:
            u32[wait_off // 4] = 0
        return ok, seq

    def park(self) -> Optional[tuple[int, int]]:
        if self.closed:
            check(-errno.EBADF, self.name)
        sub = self.role == _ROLE_SUB
        need = 0 if sub else self._want
        if sub:
            self._release_cursor()  # never park on space we could give back
        else:
            self._publish_head()
            self._want_room(need)
        try:
            ok, seq = self._look(need, True)
        except _Code as exc:
            check(exc.code, self.name)
            raise  # pragma: no cover - check raised
        return None if ok else (self._addr + (L.OFF_DSEQ if sub else L.OFF_SSEQ), seq)

    def unpark(self) -> None:
        if self.role != _ROLE_SUB and not self.closed:
            self._u32[L.OFF_PWAIT // 4] = 0

    def _gone(self, check_lock: bool) -> bool:
        return False

    def _publish_head(self) -> None:
        pass

    def _reclaim_dead(self) -> None:
        pass

    def _release_cursor(self) -> None:
        pass


# ---------------------------------------------------------------------------- publisher


class Publisher(_Ops):
    role = _ROLE_PUB

    def __init__(self, mm: mmap.mmap, size: int, fd: int, name: str, pid: int,
                 max_message: int, overflow: int, spin: float) -> None:
        cap = size - L.HEADER
        if size <= L.HEADER or cap < L.MIN_CAPACITY or cap & (cap - 1) or pid <= 0 or \
                overflow not in (L.BLOCK, L.DROP_OLDEST):
            check(-errno.EINVAL, name)
        super().__init__(mm, size, fd, name)
        self.max_message = max_message
        self.overflow = overflow
        self.chunk = min(cap // 16, L.MAX_CHUNK)
        self.oldest = 0
        self.seq = 0
        self._progress = 0
        self._limit = max_message
        if overflow == L.DROP_OLDEST:
            self._limit = min(max_message, L.whole_limit(cap))
        self._set_spin(spin)
        u32, u64 = self._u32, self._u64
        _start_header(mm, u32, u64, L, cap, max_message)
        u32[L.OFF_PID // 4] = pid
        u32[L.OFF_STATE // 4] = L.ST_OPEN
        u32[L.OFF_OVERFLOW // 4] = overflow
        u32[L.OFF_NSLOTS // 4] = L.SLOTS
        u64[L.OFF_CHUNK // 8] = self.chunk
        _fence()
        u32[L.OFF_MAGIC // 4] = L.MAGIC  # last: the header is complete

    def _publish_head(self) -> None:
        u32, u64 = self._u32, self._u64
        v = u32[L.OFF_SNAP // 4]
        u32[L.OFF_SNAP // 4] = v | 1  # head and count as one snapshot for joiners
        if not _TSO:
            _fence()  # the frames (and the odd snap) before head
        u64[L.OFF_COUNT // 8] = self.seq
        u64[L.OFF_HEAD // 8] = self.pos
        if not _TSO:
            _fence()
        u32[L.OFF_SNAP // 4] = ((v | 1) + 1) & _MASK32
        _fence()
        u32 = self._u32
        if u32[L.OFF_SWAIT // 4]:
            u32[L.OFF_SWAIT // 4] = 0
            self._bell(L.OFF_DSEQ)

    def _load_cursors(self) -> None:
        _fence()
        u32, u64, pos, cap = self._u32, self._u64, self.pos, self.capacity
        low = pos
        for i in range(L.SLOTS):
            if u32[_slot(i, L.SLOT_STATE) // 4] != 1:
                continue
            c = u64[_slot(i, L.SLOT_CURSOR) // 8]
            if (pos - c) & _MASK64 > cap:
                raise _Code(FIPC_CORRUPT)
            if (pos - c) & _MASK64 > (pos - low) & _MASK64:
                low = c
        if not _TSO:
            _fence()  # the subscribers' reads before our overwrite
        self.peer = low

    def _ready(self, need: int) -> bool:
        if self.capacity - (self.pos - self.peer) >= need:
            return True
        self._load_cursors()
        return self.capacity - (self.pos - self.peer) >= need

    def _reclaim_dead(self) -> None:
        u32 = self._u32
        for i in range(L.SLOTS):
            if u32[_slot(i, L.SLOT_STATE) // 4] == 0:
                continue
            try:
                if not L.lock_byte(self._fd, L.LOCK + 1 + i):
                    continue
            except OSError:
                continue
            u32[_slot(i, L.SLOT_STATE) // 4] = 0
            _fence()
            L.unlock_byte(self._fd, L.LOCK + 1 + i)

    def _advance_oldest(self, target: int) -> None:
        o = self.oldest
        if o >= target:
            return
        mm, cap = self._mm, self.capacity
        while o < target:
            if o == self.pos:
                o = target
                break
            room = cap - (o & (cap - 1))
            at = L.HEADER + (o & (cap - 1))
            n = int.from_bytes(mm[at:at + 4], "little")
            kind = int.from_bytes(mm[at + 4:at + 8], "little")
            size = (L.FIRST_HDR if kind == L.FR_FIRST else L.FR_HDR) + _round16(n)
            if not L.FR_WHOLE <= kind <= L.FR_PAD or size > room or size > self.pos - o:
                raise _Code(FIPC_CORRUPT)
            o += size
        self.oldest = o
        if (self._u64[L.OFF_HEAD // 8] - o) & _MASK64 >= _HALF:
            self._publish_head()  # (in a batch) subscribers never see oldest beyond head
        self._u64[L.OFF_OLDEST // 8] = o
        _fence()  # oldest before the overwrite (seqlock)

    def _reserve(self, frame: int, deadline: Deadline) -> int:
        cap = self.capacity
        room = cap - (self.pos & (cap - 1))
        need = room + frame if frame > room else frame
        if self.overflow == L.DROP_OLDEST:
            if self.pos + need > cap:
                self._advance_oldest(self.pos + need - cap)
        elif cap - (self.pos - self.peer) < need and not self._ready(need):
            self._publish_head()
            self._want = need  # what a parked async sender waits for
            self._wait(need, deadline)
        if frame > room:
            self._frame(L.HEADER + (self.pos & (cap - 1)), room - L.FR_HDR, L.FR_PAD)
            self.pos += room
        return L.HEADER + (self.pos & (cap - 1))

    def _frame(self, at: int, length: int, kind: int) -> None:
        mm = self._mm
        mm[at:at + 4] = length.to_bytes(4, "little")
        mm[at + 4:at + 8] = kind.to_bytes(4, "little")
        mm[at + 8:at + 16] = self.seq.to_bytes(8, "little")

    def _put(self, data: memoryview, deadline: Deadline) -> None:
        n = len(data)
        mm = self._mm
        frame = L.FR_HDR + _round16(n)
        if frame <= self.capacity // 4:
            at = self._reserve(frame, deadline)
            self._frame(at, n, L.FR_WHOLE)
            mm[at + L.FR_HDR:at + L.FR_HDR + n] = data
            self.pos += frame
            self.seq += 1
            return
        if self.overflow == L.DROP_OLDEST:
            raise _Code(FIPC_TOOBIG)
        done = self._progress
        while done < n:
            hdr = L.FIRST_HDR if done == 0 else L.FR_HDR
            want = min(n - done, self.chunk)
            at = self._reserve(hdr + _round16(want), deadline)
            self._frame(at, want, L.FR_FIRST if done == 0 else L.FR_NEXT)
            if done == 0:
                mm[at + 16:at + 24] = n.to_bytes(8, "little")
            mm[at + hdr:at + hdr + want] = data[done:done + want]
            self.pos += hdr + _round16(want)
            self._publish_head()
            done += want
            self._progress = done
        self.seq += 1

    def _send_some(self, views: list[memoryview], deadline: Deadline) -> int:
        """Send views in order; returns 0 or a status, with ``self._sent`` of them sent."""
        self._sent = 0
        rc = 0
        if self.closed:
            return -errno.EBADF
        if any(len(v) > self.max_message for v in views):
            return FIPC_TOOBIG
        try:
            for v in views:
                self._put(v, deadline)
                self._progress = 0
                self._sent += 1
        except _Code as exc:
            rc = exc.code
        self._publish_head()
        return rc

    def send(self, data: Any, timeout: float) -> None:
        view = byte_view(data)
        deadline = Deadline(timeout)
        try:
            retry(self._send_some([view], deadline),
                  lambda left: self._send_some([view], deadline), deadline, self.name)
        except BaseException as exc:  # a message cut short is abandoned
            self._progress = 0
            if isinstance(exc, OSError):
                self._too_big(exc, len(view))
            raise

    def send_nowait(self, data: Any) -> bool:
        view = byte_view(data)
        rc = self._send_some([view], Deadline(0.0))
        if rc in (0, -errno.ETIMEDOUT, -errno.EINTR):
            return rc == 0  # a message streamed in part keeps its progress
        self._progress = 0
        try:
            check(rc, self.name)
        except OSError as exc:
            self._too_big(exc, len(view))
            raise
        return False  # pragma: no cover - check raised

    def send_many_nowait(self, blob: Any, lens: list[int], first: int) -> int:
        mv = memoryview(blob)
        views, at = [], sum(lens[:first])
        for n in lens[first:]:
            views.append(mv[at:at + n])
            at += n
        rc = self._send_some(views, Deadline(0.0))
        sent = self._sent
        if rc and rc not in (-errno.ETIMEDOUT, -errno.EINTR):
            self._progress = 0
            try:
                try:
                    check(rc, self.name)
                except OSError as exc:
                    if first + sent < len(lens):  # the largest: the batch is checked whole
                        self._too_big(exc, max(lens[first + sent:]))
                    raise
            except (OSError, ValueError) as exc:
                setattr(exc, "messages_sent", first + sent)  # noqa: B010
                raise
        return sent

    def abandon(self) -> None:
        self._progress = 0

    def _too_big(self, exc: OSError, n: int) -> None:
        if exc.errno == errno.EMSGSIZE and n <= self.max_message:
            raise ValueError(f"a message of {n} bytes is larger than drop_oldest carries "
                             f"({self._limit} bytes: a quarter of the ring)") from None

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        mv = memoryview(blob)
        views, at = [], 0
        for n in lens:
            views.append(mv[at:at + n])
            at += n
        deadline = Deadline(timeout)
        done = [0]

        def attempt(left: float) -> int:
            rc = self._send_some(views[done[0]:], deadline)
            done[0] += self._sent
            return rc

        try:
            retry(attempt(timeout), attempt, deadline, self.name)
        except BaseException as exc:
            self._progress = 0
            if not isinstance(exc, OSError):
                raise
            exc.messages_sent = done[0]  # type: ignore[attr-defined]
            if done[0] < len(views):
                try:
                    self._too_big(exc, max(map(len, views[done[0]:])))
                except ValueError as err:
                    err.messages_sent = done[0]  # type: ignore[attr-defined]
                    raise
            raise

    def close(self) -> None:
        self.closed = True
        self._u32[L.OFF_STATE // 4] = L.ST_CLOSED
        self._bell(L.OFF_DSEQ)
        self._let_go()


# ---------------------------------------------------------------------------- subscriber


class Subscriber(_Ops, Holds):
    role = _ROLE_SUB

    def __init__(self, mm: mmap.mmap, size: int, fd: int, slot: int, name: str, pid: int,
                 max_message: int, spin: float) -> None:
        if pid <= 0 or not 0 <= slot < L.SLOTS:
            check(-errno.EINVAL, name)
        if size < 4 or int.from_bytes(mm[:4], "little") == 0:
            raise NotReady
        super().__init__(mm, size, fd, name)
        try:
            self._attach(size, slot, pid, max_message, spin)
        except BaseException:
            self._let_go()
            raise

    def _attach(self, size: int, slot: int, pid: int, max_message: int, spin: float) -> None:
        u32, u64 = self._u32, self._u64
        _fence()
        cap = size - L.HEADER
        if u32[L.OFF_MAGIC // 4] != L.MAGIC or cap < L.MIN_CAPACITY or cap & (cap - 1) or \
                u32[L.OFF_VERSION // 4] != L.VERSION or u64[L.OFF_CAPACITY // 8] != cap or \
                u64[L.OFF_DATA // 8] != L.HEADER or u32[L.OFF_NSLOTS // 4] != L.SLOTS or \
                u32[L.OFF_OVERFLOW // 4] not in (L.BLOCK, L.DROP_OLDEST) or \
                u32[L.OFF_STATE // 4] not in (L.ST_OPEN, L.ST_CLOSED):
            check(FIPC_CORRUPT, self.name)
        self.overflow = u32[L.OFF_OVERFLOW // 4]
        self.max_message = max_message
        self.slot = slot
        self.hold = _NO_HOLD
        self._set_spin(spin)
        head = u64[L.OFF_HEAD // 8]
        u32[_slot(slot, L.SLOT_PID) // 4] = pid
        u64[_slot(slot, L.SLOT_CURSOR) // 8] = head
        u32[_slot(slot, L.SLOT_STATE) // 4] = 1
        _fence()
        self.seq = 0
        self.seq_known = False
        for _ in range(100000):
            v1 = u32[L.OFF_SNAP // 4]
            _fence()
            again = u64[L.OFF_HEAD // 8]
            count = u64[L.OFF_COUNT // 8]
            _fence()
            if not v1 & 1 and u32[L.OFF_SNAP // 4] == v1:
                self.seq, self.seq_known = count, True
                break
        # head never goes back; under "block" it stays within a ring of our first cursor,
        # under "drop_oldest" it may have lapped it any number of times meanwhile
        gap = cap if self.overflow == L.BLOCK else _HALF - 1
        if head & 15 or again & 15 or (again - head) & _MASK64 > gap:
            check(FIPC_CORRUPT, self.name)
        u64[_slot(slot, L.SLOT_CURSOR) // 8] = again
        _fence()
        self.pos = self.peer = self.release = self.published = again
        self._missed = 0
        self.msg_total = self.msg_done = 0
        self.last_len = self.last_pos = 0
        self._ptr = 0
        self._partial: Optional[bytearray] = None
        self._init_holds()
        self._bell(L.OFF_SSEQ)

    @property
    def missed(self) -> int:
        return self._missed

    # -- counters

    def _release_cursor(self) -> None:
        t = min(self.release, self.hold)
        if self.overflow != L.BLOCK or t == self.published or \
                (t - self.published) & _MASK64 > self.capacity:
            return
        before, self.published = self.published, t
        if not _TSO:
            _fence()  # our reads before the cursor
        self._u64[_slot(self.slot, L.SLOT_CURSOR) // 8] = t
        _fence()
        if self._u32[L.OFF_PWAIT // 4]:  # wake it once, as our cursor passes its target
            if not _TSO:
                _fence()
            want = self._u64[L.OFF_PWANT // 8]
            if (t - want) & _MASK64 < _HALF and (want - before - 1) & _MASK64 < _HALF:
                self._bell(L.OFF_SSEQ)

    def _lazy_release(self) -> None:
        if self.overflow == L.BLOCK and (self.release - self.published >= self.capacity >> 4
                                         or self._u32[L.OFF_PWAIT // 4]):
            self._release_cursor()

    def _load_head(self) -> None:
        head = self._u64[L.OFF_HEAD // 8]
        cap = self.capacity
        if head & 15 or (head - self.peer) & _MASK64 >= _HALF:
            raise _Code(FIPC_CORRUPT)
        if self.overflow == L.BLOCK and ((head - self.pos) & _MASK64 > cap or
                                         (head - self.peer) & _MASK64 > cap):
            raise _Code(FIPC_CORRUPT)
        if not _TSO:
            _fence()  # head before the frames it covers
        self.peer = head

    def _ready(self, need: int) -> bool:
        if self.peer != self.pos:
            return True
        self._load_head()
        return self.peer != self.pos

    def _gone(self, check_lock: bool) -> bool:
        if self._u32[L.OFF_STATE // 4] == L.ST_CLOSED:
            return True
        return check_lock and not L.lock_held(self._fd, L.LOCK)

    def _lapped(self) -> bool:
        if self.overflow != L.DROP_OLDEST:
            return False
        _fence()
        return ((self._u64[L.OFF_OLDEST // 8] - self.pos - 1) & _MASK64) < _HALF - 1

    def _resync(self) -> None:
        o = self._u64[L.OFF_OLDEST // 8]
        self._load_head()  # after oldest: at least as far
        if o & 15 or (o - self.pos) & _MASK64 >= _HALF or (self.peer - o) & _MASK64 >= _HALF:
            raise _Code(FIPC_CORRUPT)
        self.pos = self.release = o

    def _lost(self, seq: int) -> int:
        """How many messages before number ``seq`` were lost (drop_oldest), unchanged."""
        if self.overflow != L.DROP_OLDEST or not self.seq_known:
            return 0
        if (seq - self.seq) & _MASK64 >= _HALF:
            raise _Code(FIPC_CORRUPT)  # a number from the past
        return seq - self.seq

    def _frame_at(self) -> tuple[int, int, int, int, int, int]:
        """(kind, length, total, number, payload offset, frame size), checked."""
        cap, pos = self.capacity, self.pos
        if pos & 15:
            raise _Code(FIPC_CORRUPT)
        room = cap - (pos & (cap - 1))
        avail = (self.peer - pos) & _MASK64
        if avail < L.FR_HDR or avail > cap:
            raise _Code(FIPC_CORRUPT)
        at = L.HEADER + (pos & (cap - 1))
        mm = self._mm
        n = int.from_bytes(mm[at:at + 4], "little")
        kind = int.from_bytes(mm[at + 4:at + 8], "little")
        hdr = L.FIRST_HDR if kind == L.FR_FIRST else L.FR_HDR
        size = hdr + _round16(n)
        if not L.FR_WHOLE <= kind <= L.FR_PAD or size > room or size > avail or \
                (kind == L.FR_PAD and size != room):
            raise _Code(FIPC_CORRUPT)
        seq = int.from_bytes(mm[at + 8:at + 16], "little")
        total = int.from_bytes(mm[at + 16:at + 24], "little") if kind == L.FR_FIRST else n
        if kind == L.FR_FIRST and (total < n or total == 0):
            raise _Code(FIPC_CORRUPT)
        return kind, n, total, seq, at + hdr, size

    def _recv(self, dest: Optional[memoryview], deadline: Deadline) -> int:
        """sub_recv() of csrc/pubsub.c: the length, or raises _Code. dest None: in place
        (block), the payload's offset in ``self._ptr``."""
        self._lazy_release()
        cap = -1 if dest is None else len(dest)
        while True:
            if self.peer == self.pos and not self._ready(0):
                try:
                    self._wait(0, deadline)
                except _Code as exc:
                    if exc.code == FIPC_EOF:
                        self.msg_total = self.msg_done = 0
                    raise
            try:
                kind, n, total, seq, data, size = self._frame_at()
            except _Code:
                if self._lapped():  # drop_oldest: torn while we looked
                    self._resync()
                    continue
                raise
            if self._lapped():  # drop_oldest: what we read of the header may be torn
                self._resync()
                continue
            # A handler that raises runs only at calls and backward jumps: each step's
            # state changes below are straight-line stores, with no call between them, so
            # an exception raised into this loop never leaves a step half done.
            mm = self._mm
            if kind == L.FR_PAD or (kind == L.FR_NEXT and self.msg_total == 0):
                self.pos += size  # padding, or the rest of an abandoned message
                self.release = self.pos
                continue
            if kind == L.FR_NEXT:
                if dest is None or cap < self.msg_total:
                    raise _Code(-errno.EINVAL)
                if n > self.msg_total - self.msg_done:
                    raise _Code(FIPC_CORRUPT)
                dest[self.msg_done:self.msg_done + n] = mm[data:data + n]
                if self.msg_done + n == self.msg_total:
                    total = self.msg_total
                    self.msg_total = self.msg_done = 0
                    self.pos += size
                    self.release = self.pos
                    self._release_cursor()
                    return total
                self.msg_done += n
                self.pos += size
                self.release = self.pos
                self._release_cursor()
                continue
            self.msg_total = self.msg_done = 0
            if total > self.max_message:
                lost = self._lost(seq) if kind == L.FR_WHOLE else 0
                self.last_len = total
                self.pos += size
                self.release = self.pos
                if kind == L.FR_WHOLE:
                    self._missed += lost
                    self.seq = seq + 1
                    self.seq_known = True
                raise _Code(FIPC_TOOBIG)
            if kind == L.FR_WHOLE:
                self.last_len, self.last_pos = n, self.pos
                if dest is None:
                    if self.overflow == L.DROP_OLDEST:
                        raise _Code(L.NEED)
                    self._ptr = data
                elif cap < n:
                    raise _Code(L.NEED)
                else:
                    dest[:n] = mm[data:data + n]
                    if self._lapped():
                        self._resync()
                        continue
                lost = self._lost(seq)
                self._missed += lost
                self.seq = seq + 1
                self.seq_known = True
                self.pos += size
                self.release = self.pos
                if dest is not None:
                    self._lazy_release()
                return n
            self.last_len = total  # FIRST (block only: drop_oldest never streams)
            if self.overflow == L.DROP_OLDEST:
                raise _Code(FIPC_CORRUPT)
            if dest is None or cap < total:
                raise _Code(L.NEED)
            dest[:n] = mm[data:data + n]
            if n == total:
                self.pos += size
                self.release = self.pos
                self._release_cursor()
                return total
            self.msg_total, self.msg_done = total, n
            self.pos += size
            self.release = self.pos
            self._release_cursor()

    def _attempt(self, dest: Optional[memoryview], deadline: Deadline) -> int:
        """One try, as the C call: the length, NEEDED, or a negative status."""
        if self.closed:
            return -errno.EBADF
        if self._stuck:
            self._unstick()
        try:
            return self._recv(dest, deadline)
        except _Code as exc:
            return NEEDED if exc.code == L.NEED else exc.code

    def _call(self, dest: Optional[memoryview], timeout: float) -> int:
        deadline = Deadline(timeout)
        return retry(self._attempt(dest, deadline),
                     lambda left: self._attempt(dest, deadline), deadline, self.name)

    def recv(self, timeout: float) -> bytes:
        deadline = Deadline(timeout)
        while True:
            if self._partial is None:
                n = retry(self._attempt(None, deadline),
                          lambda left: self._attempt(None, deadline), deadline, self.name)
                if n != NEEDED:
                    data = bytes(self._mm[self._ptr:self._ptr + n])
                    self._lazy_release()  # copied out: its room may go back (as C does)
                    return data
                self._partial = bytearray(self.last_len)
            buf = self._partial

            def again(left: float, b: bytearray = buf) -> int:
                return self._attempt(memoryview(b), deadline)

            try:
                n = retry(again(0.0), again, deadline, self.name)
            except BaseException:
                if self.msg_total == 0:
                    self._partial = None
                raise
            self._partial = None
            if n != NEEDED:
                return bytes(buf) if n == len(buf) else bytes(buf[:n])

    def recv_into(self, buffer: Any, timeout: float) -> int:
        try:
            mv = memoryview(buffer)
        except TypeError:
            raise TypeError("recv_into needs a writable contiguous bytes-like object, not "
                            f"{type(buffer).__name__!r}") from None
        if mv.readonly or not mv.c_contiguous:
            raise TypeError("recv_into needs a writable contiguous bytes-like object")
        dest = mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv
        cap = len(dest)
        if self._partial is not None:
            if cap < len(self._partial):
                raise _too_small(cap, len(self._partial))
            data = self.recv(timeout)
            dest[:len(data)] = data
            return len(data)
        try:
            n = self._call(dest, timeout)
        except BaseException:  # a timeout, or a handler that raised
            if self.msg_total:  # keep what came of a streamed message for the next call
                keep = bytearray(self.msg_total)
                keep[:self.msg_done] = dest[:self.msg_done]
                self._partial = keep
            raise
        if n == NEEDED:
            raise _too_small(cap, self.last_len)
        return n

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]:
        out = [self.recv(timeout)]  # waits for the first only
        while len(out) < max_messages and self._partial is None:
            try:
                if self.peer == self.pos and not self._ready(0):
                    break
                if self._lapped():
                    self._resync()
                    continue
                kind, _, total, _, _, size = self._frame_at()
                if self._lapped():  # what we read of the header may be torn
                    continue
            except _Code:
                break  # left for the next call to report
            if kind == L.FR_PAD:
                self.pos += size
                self.release = self.pos
                continue
            if kind != L.FR_WHOLE or total > self.max_message:
                break  # never a streamed message after the first (as the C batch)
            try:
                out.append(self.recv(0.0))
            except (EOFError, TimeoutError):
                break
        return out

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        if self.overflow == L.DROP_OLDEST or self._partial is not None:  # a copy
            return memoryview(self.recv(timeout)), None
        n = self._call(None, timeout)
        if n == NEEDED:  # streamed: assembled, so a copy
            return memoryview(self.recv(timeout)), None
        return self._export(self._ptr, n, self.last_pos)

    def set_hold(self, pos: Optional[int]) -> None:
        self.hold = _NO_HOLD if pos is None else pos
        if not self.closed:
            self._release_cursor()

    def _recheck(self, flag: bool) -> None:
        self.recheck = flag

    def close(self) -> None:
        self.closed = True
        self._u32[_slot(self.slot, L.SLOT_STATE) // 4] = 0
        _fence()
        self._bell(L.OFF_SSEQ)
        self._let_go()


_check_pub: type[PublisherOps] = Publisher
_check_sub: type[SubscriberOps] = Subscriber
