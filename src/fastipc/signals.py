"""Signals, including signals that carry a value (``sigqueue``), received synchronously.

>>> import os, signal
>>> from fastipc import signals
>>> with signals.blocked({signal.SIGUSR1}):
...     signals.send(os.getpid(), signal.SIGUSR1, value=42)
...     info = signals.wait({signal.SIGUSR1}, timeout=1.0)
>>> info.value
42

A signal is waited for with ``wait()`` only while it is blocked (``blocked()``): otherwise it
would be delivered to its handler, or kill the process, before ``wait()`` could take it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple, Optional, Union

from fastipc import _aio, _core
from fastipc._core import Deadline, check_int, check_timeout

__all__ = ["SignalInfo", "blocked", "send", "wait", "wait_async"]

if TYPE_CHECKING:  # both backends implement the contract (mypy checks the modules)
    from fastipc._backend.signals import SignalsBackend
    from fastipc._native import signals as _native
    from fastipc._pure import signals as _pure

    _contract: tuple[SignalsBackend, SignalsBackend] = (_native, _pure)

SignalSet = Union[int, Iterable[int]]
_VALID = frozenset(int(s) for s in signal.valid_signals())
_UNBLOCKABLE = frozenset({int(signal.SIGKILL), int(signal.SIGSTOP)})
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


class SignalInfo(NamedTuple):
    """A received signal: its number, the sender's pid and uid, and the value it carried
    (``None`` when it was sent without one, e.g. by ``kill``)."""

    signo: int
    pid: int
    uid: int
    value: Optional[int]


def _signum(signum: object, *, allow_zero: bool = False) -> int:
    if isinstance(signum, bool) or not isinstance(signum, int):
        raise TypeError(f"a signal number must be an int, not {type(signum).__name__}")
    signum = int(signum)
    if signum == 0 and allow_zero:
        return 0
    if signum not in _VALID:
        raise ValueError(f"invalid signal number {signum}")
    return signum


def _signal_set(signums: SignalSet) -> list[int]:
    if isinstance(signums, int):
        signums = [signums]
    try:
        numbers = sorted({_signum(s) for s in signums})
    except TypeError as exc:
        if "signal number" in str(exc):
            raise
        raise TypeError(
            f"signums must be an int or an iterable of ints, not {type(signums).__name__}"
        ) from None
    if not numbers:
        raise ValueError("no signals given")
    bad = _UNBLOCKABLE.intersection(numbers)
    if bad:
        raise ValueError(f"signals {sorted(bad)} cannot be blocked or waited for")
    return numbers


def send(
    pid: int, signum: int, value: Optional[int] = None, *, backend: Optional[str] = None
) -> None:
    """Send ``signum`` to process ``pid``. With ``value`` (a C int, -2**31 .. 2**31-1) the
    signal is queued with ``sigqueue`` and the receiver's :func:`wait` sees the value.
    Signal 0 checks that ``pid`` exists and may be signalled."""
    impl = _core.ops("signals", backend)
    pid = check_int(pid, "pid", -(2**31) + 1, 2**31 - 1)
    signum = _signum(signum, allow_zero=True)
    if value is not None:
        value = check_int(value, "value", _INT_MIN, _INT_MAX)
        if pid <= 0:
            raise ValueError("a value can only be sent to one process (pid > 0)")
    impl.send(pid, signum, value)


@contextmanager
def blocked(signums: SignalSet) -> Iterator[frozenset[int]]:
    """Block ``signums`` in the calling thread for the duration of the ``with`` block, then
    restore the previous mask. Signals sent meanwhile stay pending for :func:`wait`."""
    numbers = _signal_set(signums)
    old = signal.pthread_sigmask(signal.SIG_BLOCK, numbers)
    try:
        yield frozenset(numbers)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def wait(
    signums: SignalSet, timeout: Optional[float] = None, *, backend: Optional[str] = None
) -> SignalInfo:
    """Wait for one of ``signums`` (which must be blocked in this thread, see :func:`blocked`)
    and take it: a :class:`SignalInfo`. TimeoutError if none arrives in ``timeout`` seconds.
    Other signals arriving meanwhile run their Python handlers; the wait then goes on."""
    impl = _core.ops("signals", backend)
    numbers = _signal_set(signums)
    t = check_timeout(timeout)
    _check_blocked(numbers)
    return SignalInfo(*impl.wait(numbers, t))


def _check_blocked(numbers: list[int]) -> None:
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    unblocked = [s for s in numbers if s not in mask]
    if unblocked:
        raise ValueError(
            f"signals {unblocked} are not blocked in this thread: wait inside "
            "fastipc.signals.blocked(...), or they are delivered before wait() can take them"
        )


async def wait_async(
    signums: SignalSet, timeout: Optional[float] = None, *, backend: Optional[str] = None
) -> SignalInfo:
    """:func:`wait` on the running event loop (asyncio, uvloop): the signals must be blocked
    in the loop's thread. The loop watches a ``signalfd`` of ``signums`` (one per call), so
    the wait blocks nothing and polls nothing; the signal is taken only when this returns
    (cancelled or timed out, it takes none). Several coroutines may wait at once: each
    signal goes to one of them."""
    impl = _core.ops("signals", backend)
    numbers = _signal_set(signums)
    deadline = Deadline.of(timeout)
    _check_blocked(numbers)

    def attempt() -> Any:
        try:
            return SignalInfo(*impl.wait(numbers, 0.0))
        except TimeoutError:
            return _aio.NOT_READY

    fd = impl.notifier(numbers)
    try:
        return await _aio.wait_readable(attempt, fd, deadline)  # type: ignore[no-any-return]
    finally:
        os.close(fd)
