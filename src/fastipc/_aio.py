"""Awaiting a futex word in shared memory on an asyncio (or uvloop) event loop, for any
futex-based ring: the shm channel's awaitables use it, and so can any other mechanism whose
peer wakes sleepers with ``FUTEX_WAKE`` after changing a 32-bit word.

    result = await _aio.wait(attempt, park, unpark, deadline)

- ``attempt()``: a non-blocking try on the loop thread; returns the result, or
  :data:`NOT_READY`. It is the only thing that consumes or produces: whatever happens to
  the awaiting coroutine (cancelled, timed out), nothing is lost in between.
- ``park()``: raise the sleeping flag the peer checks before it wakes (the same one a
  blocking waiter raises, so the peer's ordinary wake-up path serves), look once more, and
  return ``(address, expected)`` of the futex word to wait on, or None if it is ready now.
  It may raise (the peer has gone: EOFError, BrokenPipeError...).
- ``unpark()``: lower the flag.
- ``deadline``: a :class:`fastipc._core.Deadline`; TimeoutError when it expires.

How it waits: ``attempt()`` is first retried in a short adaptive spin on the loop thread (a
few tens of microseconds, a few hundred at most after a park that ended soon:
:class:`Spin`), so a peer that answers at once costs no wake-up at all; then the coroutine
parks. Helper threads (one per 127 distinct words parked on, usually one per process) wait
on every parked futex word at once with ``futex_waitv`` (Linux 5.16+), plus a private
control word that tells each its set changed. Coroutines parked on the same word (any
number: every coroutine awaiting one object) share its slot and stand in line: a wake-up of
the word gives the turn to the first in line (resolved with ``loop.call_soon_threadsafe``),
which retries ``attempt()`` and then passes the turn to the next (however it ended: a
result, an error, a cancellation) or, finding nothing, parks again. So a burst of messages
wakes as many coroutines as it feeds, one after the other, an error (EOF, close) reaches
them all, and one message never wakes a thousand. No thread per call, no polling: a parked
coroutine also wakes every ``recheck`` seconds (0.5 by default) only to call ``park()``
again, which is how a peer that died without waking anyone is noticed. The helper thread is
native C (``csrc/aio.c``, GIL released) when the extension is built, else the same system
call through ctypes. On kernels without ``futex_waitv`` the first park raises
``OSError(ENOSYS)`` with a message saying so.

``unpark()`` runs when the last coroutine of the process parked on a word leaves it (the
flag is the object's, shared by its coroutines). :func:`wake` wakes every coroutine of this
process parked on a word, for an object whose close may not touch a word that other
processes read (a semaphore's value).

Whoever parks must keep the memory of the futex word mapped until :func:`wait` returns
(the shm ends count an awaiting call as busy, so close() unmaps only after it).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import platform
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Optional, TypeVar

from fastipc import _core
from fastipc._core import Deadline

__all__ = ["NOT_READY", "Spin", "wait", "wait_readable", "wake"]

T = TypeVar("T")


class _NotReady:
    def __repr__(self) -> str:
        return "NOT_READY"


NOT_READY: Any = _NotReady()
"""What an ``attempt()`` returns when it would have to wait."""

RECHECK = 0.5
_monotonic = time.monotonic


class Spin:
    """The adaptive spin budget of one waiter (seconds), as ``fipc_spin`` in csrc/common.c:
    doubled, up to ``max``, when a spin caught what it waited for; after a wait that had to
    park, halved, down to ``min``, if it ended long after the spin gave up (more than
    ``4 * max + 100 µs`` after the spin began: the peer is slow, spinning wastes the CPU).
    No spin on a machine with one CPU.

    A park that ended soon means the peer answers at the pace of wake-ups; but a parked
    coroutine's wake-up goes through a helper thread (three thread hops, 60-150 µs on a
    loaded 2-CPU VM), longer than ``max``: once both ends have parked, each one's spin
    gives up before the other is awake, and both park on every message from then on (one
    preemption turned a 10 µs round trip into 200 µs for hundreds of rounds). So the next
    spin after such a park is *stretched* to cover the wait just seen (1.5 times it, at
    most ``4 * max + 100 µs``): it catches the peer's answer, and the peer, spinning again
    by then, catches the next at once. A stretched spin that catches is followed by spins
    of ``max`` again; if the next wait parks anyway (a peer that answers every 100-300 µs
    whatever happens: the stretch only burns the CPU), the following short parks skip
    the stretch, 1, 2, 4... up to 64 of them, until a spin of ``max`` catches again."""

    __slots__ = ("backoff", "budget", "max", "min", "probation", "skip", "stretched")

    def __init__(self, max: float = 50e-6, min: float = 2e-6) -> None:
        self.max = max if (os.cpu_count() or 1) > 1 else 0.0
        self.min = min if self.max else 0.0
        self.budget = self.max
        self.stretched = False  # the budget is a stretch (after a park that ended soon)
        self.probation = False  # a stretched spin caught: was it a chain of parks it broke?
        self.backoff = 0  # short parks to skip the stretch for, after a stretch was wasted
        self.skip = 0

    def caught(self) -> None:
        if self.stretched:
            self.stretched, self.probation = False, True
            self.budget = self.max
            return
        self.probation = False
        self.backoff = self.skip = 0
        self.budget = min(self.max, self.budget * 2)

    def parked(self, waited: float) -> None:
        short = 4 * self.max + 100e-6
        if self.probation:  # parked right after a stretch caught: the stretch was wasted
            self.probation = False
            self.backoff = min(64, self.backoff * 2 or 1)
            self.skip = self.backoff
        if self.stretched or waited >= short:
            # even a stretch did not catch it, or it came late: the peer is slow
            self.stretched = False
            self.budget = self.max if waited < short else max(self.min, self.budget / 2)
        elif self.skip:
            self.skip -= 1
            self.budget = self.max
        elif self.max:
            self.stretched = True
            self.budget = min(short, 1.5 * waited)

# ---------------------------------------------------------------------------- futex_waitv

_SYS_FUTEX_WAITV = 449  # the same number on every architecture (asm-generic)
_FUTEX_32 = 2
_FUTEX_PRIVATE = 128
FUTEX_WAITV_MAX = 128


class _Waitv(ctypes.Structure):
    _fields_ = [("val", ctypes.c_uint64), ("uaddr", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _syscall() -> Any:
    """libc's syscall() through ctypes (the GIL is released around the call)."""
    global _libc_syscall
    if _libc_syscall is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc_syscall = libc.syscall
        _libc_syscall.restype = ctypes.c_long
    return _libc_syscall


_libc_syscall: Any = None


def _ctypes_waitv() -> Callable[[Any, int, float], int]:
    syscall = _syscall()

    def waitv(vec: Any, n: int, timeout: float) -> int:
        ts = None
        if timeout >= 0:
            end = time.clock_gettime(time.CLOCK_MONOTONIC) + timeout
            ts = ctypes.byref(_Timespec(int(end), int((end % 1) * 1e9)))
        rc = syscall(_SYS_FUTEX_WAITV, vec, ctypes.c_uint(n), ctypes.c_uint(0), ts,
                     ctypes.c_int(time.CLOCK_MONOTONIC))
        return int(rc) if rc >= 0 else -ctypes.get_errno()

    return waitv


def _native_waitv() -> Callable[[Any, int, float], int]:
    ffi, lib = _core.native()

    def waitv(vec: Any, n: int, timeout: float) -> int:
        return int(lib.fipc_aio_waitv(ffi.cast("void *", ctypes.addressof(vec)), n, timeout))

    return waitv


class _Entry:
    """One parked coroutine. ``turn``: woken because its word changed (not by a timer), so
    it must try, then pass the turn on (or re-park)."""

    __slots__ = ("future", "loop", "slot", "turn")

    def __init__(self, slot: _Slot, loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[None]) -> None:
        self.slot = slot
        self.loop = loop
        self.future = future
        self.turn = False


class _Slot:
    """The coroutines of this process parked on one futex word, in line, sharing one word
    of one ``futex_waitv``: however many await one object, it costs one slot. ``expected``
    is the value read by the latest park (a park that found nothing ready: any change after
    it is a change of the word). ``armed``: the helper thread waits on it; a wake-up disarms
    it and gives the turn to the first in line, who tries, then re-parks (re-arming it) or
    passes the turn to the next (so a burst of messages wakes as many coroutines as it
    needs, one after the other, and never all of them for one message)."""

    __slots__ = ("address", "armed", "expected", "line", "shard")

    def __init__(self, address: int, expected: int, shard: _Shard) -> None:
        self.address = address
        self.expected = expected
        self.armed = True
        self.line: deque[_Entry] = deque()
        self.shard = shard


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


IDLE_EXIT = 1.0  # seconds a helper thread stays after the last parked coroutine left


class _Shard:
    """One helper thread and the (at most FUTEX_WAITV_MAX - 1) slots it waits on, beside
    its private control word (bumped when its set changes)."""

    __slots__ = ("control", "slots", "thread")

    def __init__(self) -> None:
        self.control = ctypes.c_uint32(0)
        self.slots: list[_Slot] = []
        self.thread: Optional[threading.Thread] = None

    def poke(self) -> None:
        """Tell the thread its set changed: bump the control word and wake it."""
        self.control.value = (self.control.value + 1) & 0xFFFFFFFF
        _wake_private(ctypes.addressof(self.control))


class _Waiter:
    """The helper threads of the process: each waits on up to 127 words at once; words of
    the same address share one slot, so any number of coroutines may await one object, and
    a further thread starts for every 127 distinct words parked on. A thread starts with
    the first slot given to it and ends once it has had none for IDLE_EXIT s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[int, _Slot] = {}
        self._shards: list[_Shard] = []
        self._pid = os.getpid()
        try:
            self._waitv = _native_waitv() if _core.NATIVE_ERROR is None else _ctypes_waitv()
        except (ImportError, OSError, AttributeError):
            self._waitv = _ctypes_waitv()

    # ---- what the coroutines do (any thread, any loop)

    def join(self, address: int, expected: int, loop: asyncio.AbstractEventLoop) -> _Entry:
        """Park at the end of the line of ``address`` (whose value was ``expected``)."""
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            slot = self._slots.get(address)
            poke = None
            if slot is None:
                shard = next((s for s in self._shards if len(s.slots) < FUTEX_WAITV_MAX - 1),
                             None)
                if shard is None:
                    shard = _Shard()
                    self._shards.append(shard)
                slot = self._slots[address] = _Slot(address, expected, shard)
                shard.slots.append(slot)
                poke = shard
                if shard.thread is None:
                    shard.thread = threading.Thread(target=self._run, args=(shard,),
                                                    name="fastipc-aio", daemon=True)
                    shard.thread.start()
            elif not slot.armed or slot.expected != expected:
                slot.armed, slot.expected = True, expected
                poke = slot.shard
            entry = _Entry(slot, loop, future)
            slot.line.append(entry)
        if poke is not None:
            poke.poke()
        return entry

    def leave(self, entry: _Entry) -> bool:
        """Out of the line (if still in it). True if no coroutine of this process is left
        parked on its word."""
        slot = entry.slot
        with self._lock:
            try:
                slot.line.remove(entry)
            except ValueError:
                pass
            if slot.line:
                return False
            self._drop(slot)
        return True

    def pass_turn(self, address: int) -> None:
        """Give the turn to the next coroutine in the line of ``address``, if any."""
        with self._lock:
            slot = self._slots.get(address)
            if slot is not None:
                self._give_turn(slot)

    def wake(self, address: int) -> None:
        """Wake every coroutine of this process parked on ``address`` (each tries once:
        how an object closed in this process ends its awaits when it may not touch a word
        that other processes read)."""
        with self._lock:
            slot = self._slots.get(address)
            entries = list(slot.line) if slot is not None else []
            for e in entries:
                e.turn = True
            if slot is not None:
                slot.line.clear()
                self._drop(slot)
        for e in entries:
            _call(e, _resolve)

    # ---- under the lock

    def _drop(self, slot: _Slot, poke: bool = True) -> None:
        """The slot goes; its helper thread is told (``poke``), unless it is the caller: it
        rebuilds its set before it waits again (a poke of its own word would only make that
        wait return at once, and cost it one more round under the GIL per wake-up)."""
        if self._slots.get(slot.address) is slot:
            del self._slots[slot.address]
            slot.shard.slots.remove(slot)
            if poke:
                slot.shard.poke()

    def _give_turn(self, slot: _Slot, poke: bool = True) -> None:
        """The word changed: wake the first in line (who passes the turn on). No one left:
        the slot goes (``poke``: as in :meth:`_drop`)."""
        slot.armed = False
        while slot.line:
            entry = slot.line.popleft()
            entry.turn = True
            if _call(entry, _resolve):
                break
        if not slot.line:
            self._drop(slot, poke)

    # ---- the helper threads

    def _run(self, shard: _Shard) -> None:
        # Signals are the application's: a library thread blocks them all, so that a signal
        # sent to the process (kill, sigqueue) reaches a thread of the application, and one
        # the application blocked to sigwait() for it does not end the process here instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        vec = (_Waitv * FUTEX_WAITV_MAX)()
        vec[0].uaddr = ctypes.addressof(shard.control)
        vec[0].flags = _FUTEX_32 | _FUTEX_PRIVATE
        lock = self._lock
        while True:
            with lock:
                slots = [s for s in shard.slots if s.armed]
                control = shard.control.value
                idle = not shard.slots
            vec[0].val = control
            for i, s in enumerate(slots, 1):
                vec[i].uaddr = s.address
                vec[i].val = s.expected
                vec[i].flags = _FUTEX_32
            # with nothing parked, linger a while (the next park needs no new thread), then go
            rc = self._waitv(vec, len(slots) + 1, IDLE_EXIT if idle else -1.0)
            if rc == -errno.ETIMEDOUT and idle:
                with lock:
                    if not shard.slots and shard.control.value == control:
                        shard.thread = None
                        if shard in self._shards:
                            self._shards.remove(shard)
                        return
            elif rc > 0:
                with lock:
                    slot = slots[rc - 1]
                    if slot.armed and self._slots.get(slot.address) is slot:
                        self._give_turn(slot, poke=False)
            elif rc in (-errno.EAGAIN, -errno.EFAULT):
                # a word no longer held its value (the control word: the set changed), or
                # one removed meanwhile was unmapped: give the turn on each changed word.
                # Slots still registered are mapped (left before their end unmaps).
                with lock:
                    for slot in [s for s in shard.slots if s.armed]:
                        if ctypes.c_uint32.from_address(slot.address).value != slot.expected:
                            self._give_turn(slot, poke=False)
            elif rc < 0 and rc not in (-errno.EINTR, -errno.ETIMEDOUT):
                with lock:  # ENOSYS and the like: every waiter learns it
                    for slot in list(shard.slots):
                        for e in slot.line:
                            _call(e, _fail, rc)
                        slot.line.clear()
                        self._drop(slot)
                    shard.thread = None
                    if shard in self._shards:
                        self._shards.remove(shard)
                return


def _call(entry: _Entry, fn: Callable[..., None], *args: Any) -> bool:
    """Run ``fn(entry.future, *args)`` on the entry's loop; False if that loop has closed."""
    try:
        entry.loop.call_soon_threadsafe(fn, entry.future, *args)
    except RuntimeError:
        return False
    return True


def _fail(future: asyncio.Future[None], rc: int) -> None:
    if not future.done():
        msg = os.strerror(-rc)
        if rc == -errno.ENOSYS:
            msg = "futex_waitv is not available: awaiting needs Linux 5.16 or later"
        future.set_exception(OSError(-rc, msg))


def _wake_private(address: int) -> None:
    _syscall()(_SYS_FUTEX, ctypes.c_void_p(address), 1 | _FUTEX_PRIVATE, 0x7FFFFFFF, None,
               None, 0)


_SYS_FUTEX = {"x86_64": 202, "amd64": 202, "aarch64": 98, "arm64": 98, "riscv64": 98,
              "i386": 240, "i686": 240, "armv7l": 240, "armv6l": 240, "ppc64le": 221,
              "ppc64": 221, "s390x": 238}.get(platform.machine().lower(), 202)

_waiter: Optional[_Waiter] = None
_waiter_lock = threading.Lock()


def _the_waiter() -> _Waiter:
    global _waiter
    w = _waiter
    if w is None or w._pid != os.getpid():  # none yet, or inherited through fork
        with _waiter_lock:
            if _waiter is None or _waiter._pid != os.getpid():
                _waiter = _Waiter()
            w = _waiter
    return w


def wake(address: int) -> None:
    """Wake every coroutine of this process awaiting the futex word at ``address``: each
    calls its ``attempt()`` again (see :meth:`_Waiter.wake`). Safe from any thread."""
    w = _waiter
    if w is not None and w._pid == os.getpid():
        w.wake(address)


# ---------------------------------------------------------------------------- wait


async def wait(attempt: Callable[[], Any], park: Callable[[], Optional[tuple[int, int]]],
               unpark: Callable[[], None], deadline: Deadline, *, spin: Optional[Spin] = None,
               recheck: float = RECHECK, name: Optional[str] = None) -> Any:
    """The result of ``attempt()`` once it is not :data:`NOT_READY` (see the module's
    docstring). TimeoutError (naming ``name``) when ``deadline`` expires first."""
    got = attempt()
    if got is not NOT_READY:
        return got
    start = _monotonic()
    if spin is not None and spin.budget > 0 and deadline.timeout != 0:
        end = start + spin.budget
        while _monotonic() < end:
            got = attempt()
            if got is not NOT_READY:
                spin.caught()
                return got
    loop = asyncio.get_running_loop()
    turn = 0  # the address whose turn this coroutine holds (0: none)
    try:
        while True:
            left = deadline.left()
            if left == 0:
                got = attempt()
                if got is not NOT_READY:
                    return got
                raise deadline.error(name)
            word = park()
            if word is not None:
                waiter = _the_waiter()
                entry = waiter.join(word[0], word[1], loop)
                turn = 0  # parked again: the word's next change gives the next turn
                timer = loop.call_later(recheck if left < 0 else min(left, recheck), _resolve,
                                        entry.future)
                try:
                    await entry.future
                finally:
                    timer.cancel()
                    if waiter.leave(entry):
                        unpark()  # the last of this process parked on the word
                    if entry.turn:
                        turn = word[0]
            got = attempt()
            if got is not NOT_READY:
                if spin is not None:
                    spin.parked(_monotonic() - start)
                return got
    finally:
        if turn:  # what woke it may be for others too: they try next
            _the_waiter().pass_turn(turn)


async def wait_readable(attempt: Callable[[], Any], fd: int, deadline: Deadline,
                        name: Optional[str] = None) -> Any:
    """The result of ``attempt()`` once it is not :data:`NOT_READY`, trying again each time
    the running loop sees ``fd`` readable (for a mechanism whose readiness is a descriptor,
    e.g. a signalfd). TimeoutError when ``deadline`` expires first."""
    loop = asyncio.get_running_loop()
    while True:
        got = attempt()
        if got is not NOT_READY:
            return got
        left = deadline.left()
        if left == 0:
            raise deadline.error(name)
        future: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, future)
        timer = None if left < 0 else loop.call_later(left, _resolve, future)
        try:
            await future
        finally:
            loop.remove_reader(fd)
            if timer is not None:
                timer.cancel()
