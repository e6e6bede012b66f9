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
few tens of microseconds at most, :class:`Spin`), so a peer that answers at once costs no
wake-up at all; then the coroutine parks, and ONE helper thread per process waits on every
parked futex word at once with ``futex_waitv`` (Linux 5.16+), plus a private control word
that tells it the set changed. A woken word resolves its future with
``loop.call_soon_threadsafe``; the coroutine then retries ``attempt()``. No thread per call,
no polling: a parked coroutine also wakes every ``recheck`` seconds (0.5 by default) only
to call ``park()`` again, which is how a peer that died without waking anyone is noticed.
The helper thread is native C (``csrc/aio.c``, GIL released) when the extension is built,
else the same system call through ctypes. On kernels without ``futex_waitv`` the first
park raises ``OSError(ENOSYS)`` with a message saying so.

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
from typing import Any, Callable, Optional, TypeVar

from fastipc import _core
from fastipc._core import Deadline

__all__ = ["NOT_READY", "Spin", "wait"]

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
    park, reset to ``max`` if it ended soon after the spin gave up (the peer answers at the
    pace of wake-ups: once both sides spin, spinning catches it), else halved, down to
    ``min``. No spin on a machine with one CPU."""

    __slots__ = ("budget", "max", "min")

    def __init__(self, max: float = 50e-6, min: float = 2e-6) -> None:
        self.max = max if (os.cpu_count() or 1) > 1 else 0.0
        self.min = min if self.max else 0.0
        self.budget = self.max

    def caught(self) -> None:
        self.budget = min(self.max, self.budget * 2)

    def parked(self, waited: float) -> None:
        if waited < 4 * self.max + 100e-6:
            self.budget = self.max
        else:
            self.budget = max(self.min, self.budget / 2)


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
    __slots__ = ("address", "expected", "future", "loop")

    def __init__(self, address: int, expected: int, loop: asyncio.AbstractEventLoop,
                 future: asyncio.Future[None]) -> None:
        self.address = address
        self.expected = expected
        self.loop = loop
        self.future = future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


IDLE_EXIT = 1.0  # seconds the helper thread stays after the last parked coroutine left


class _Waiter:
    """The one helper thread of the process: waits on every parked word at once. It starts
    with the first parked coroutine and ends once none has been parked for IDLE_EXIT s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._control = ctypes.c_uint32(0)
        self._thread: Optional[threading.Thread] = None
        self._pid = os.getpid()
        try:
            self._waitv = _native_waitv() if _core.NATIVE_ERROR is None else _ctypes_waitv()
        except (ImportError, OSError, AttributeError):
            self._waitv = _ctypes_waitv()

    def add(self, entry: _Entry) -> None:
        with self._lock:
            if len(self._entries) >= FUTEX_WAITV_MAX - 1:
                raise OSError(errno.E2BIG, f"more than {FUTEX_WAITV_MAX - 1} coroutines "
                              "parked on futex words at once in one process")
            self._entries.append(entry)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastipc-aio",
                                                daemon=True)
                self._thread.start()
        self._poke()

    def remove(self, entry: _Entry) -> None:
        if self._discard(entry):
            self._poke()

    def _discard(self, entry: _Entry) -> bool:
        """Take ``entry`` out of the set: False if it was not there (woken, or removed)."""
        with self._lock:
            try:
                self._entries.remove(entry)
            except ValueError:
                return False
        return True

    def _poke(self) -> None:
        """Tell the thread the set changed: bump the control word and wake it."""
        self._control.value = (self._control.value + 1) & 0xFFFFFFFF
        _wake_private(ctypes.addressof(self._control))

    def _run(self) -> None:
        # Signals are the application's: a library thread blocks them all, so that a signal
        # sent to the process (kill, sigqueue) reaches a thread of the application, and one
        # the application blocked to sigwait() for it does not end the process here instead.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        vec = (_Waitv * FUTEX_WAITV_MAX)()
        vec[0].uaddr = ctypes.addressof(self._control)
        vec[0].flags = _FUTEX_32 | _FUTEX_PRIVATE
        while True:
            with self._lock:
                entries = list(self._entries)
                control = self._control.value
            vec[0].val = control
            for i, e in enumerate(entries, 1):
                vec[i].uaddr = e.address
                vec[i].val = e.expected
                vec[i].flags = _FUTEX_32
            # with nobody parked, linger a while (the next park needs no new thread), then go
            rc = self._waitv(vec, len(entries) + 1, -1.0 if entries else IDLE_EXIT)
            if rc == -errno.ETIMEDOUT and not entries:
                with self._lock:
                    if not self._entries and self._control.value == control:
                        self._thread = None
                        return
            elif rc > 0:
                self._wake(entries[rc - 1])
            elif rc in (-errno.EAGAIN, -errno.EFAULT):
                # a word no longer held its value (the control word: the set changed), or
                # one removed meanwhile was unmapped: wake those whose word has changed.
                # Entries still registered are mapped (removed before their end unmaps).
                with self._lock:
                    changed = [e for e in self._entries
                               if ctypes.c_uint32.from_address(e.address).value != e.expected]
                for e in changed:
                    self._wake(e)
            elif rc < 0 and rc not in (-errno.EINTR, -errno.ETIMEDOUT):
                for e in entries:  # ENOSYS and the like: every waiter learns it
                    e.loop.call_soon_threadsafe(_fail, e.future, rc)
                with self._lock:
                    self._entries.clear()
                    self._thread = None
                return

    def _wake(self, entry: _Entry) -> None:
        if not self._discard(entry):
            return
        try:
            entry.loop.call_soon_threadsafe(_resolve, entry.future)
        except RuntimeError:  # its loop has closed
            pass


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
    while True:
        left = deadline.left()
        if left == 0:
            got = attempt()
            if got is not NOT_READY:
                return got
            raise deadline.error(name)
        word = park()
        if word is not None:
            future: asyncio.Future[None] = loop.create_future()
            entry = _Entry(word[0], word[1], loop, future)
            waiter = _the_waiter()
            timer = loop.call_later(recheck if left < 0 else min(left, recheck), _resolve,
                                    future)
            try:
                waiter.add(entry)
                await future
            finally:
                timer.cancel()
                waiter.remove(entry)
                unpark()
        got = attempt()
        if got is not NOT_READY:
            if spin is not None:
                spin.parked(_monotonic() - start)
            return got
