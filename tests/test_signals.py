"""fastipc.signals: values carried by sigqueue, synchronous waits, both backends."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from fastipc import signals
from helpers import (
    Ticker,
    in_forked_child,
    receive_with_cancels,
    run_on,
    start_python,
)

USR1, USR2 = signal.SIGUSR1, signal.SIGUSR2


@in_forked_child
def test_value_travels_with_the_signal(backend: str) -> None:
    with signals.blocked({USR1}):
        for value in (0, 42, -1, 2**31 - 1, -(2**31)):
            signals.send(os.getpid(), USR1, value=value, backend=backend)
            info = signals.wait({USR1}, timeout=1, backend=backend)
            assert info == signals.SignalInfo(USR1, os.getpid(), os.getuid(), value)


@in_forked_child
def test_plain_signal_has_no_value(backend: str) -> None:
    with signals.blocked([USR2]):
        signals.send(os.getpid(), USR2, backend=backend)
        info = signals.wait(USR2, timeout=1, backend=backend)
    assert info.signo == USR2 and info.value is None and info.pid == os.getpid()


@in_forked_child
def test_wait_takes_the_first_of_several(backend: str) -> None:
    with signals.blocked({USR1, USR2}):
        signals.send(os.getpid(), USR2, value=7, backend=backend)
        info = signals.wait({USR1, USR2}, timeout=1, backend=backend)
        assert (info.signo, info.value) == (USR2, 7)
        with pytest.raises(TimeoutError):
            signals.wait({USR1, USR2}, timeout=0, backend=backend)


@in_forked_child
def test_realtime_signals_queue_every_value(backend: str) -> None:
    rt = signal.SIGRTMIN + 1
    with signals.blocked({rt}):
        for v in range(5):
            signals.send(os.getpid(), rt, value=v, backend=backend)
        assert [signals.wait(rt, timeout=1, backend=backend).value for _ in range(5)] == list(
            range(5)
        )


@in_forked_child
def test_timeout(backend: str) -> None:
    with signals.blocked({USR1}):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"0\.1"):
            signals.wait({USR1}, timeout=0.1, backend=backend)
        assert 0.09 <= time.monotonic() - t0 < 2


def test_blocked_restores_the_mask() -> None:
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    with signals.blocked({USR1, USR2}) as numbers:
        assert numbers == {USR1, USR2}
        assert {USR1, USR2} <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


def test_wait_requires_blocked(backend: str) -> None:
    with pytest.raises(ValueError, match="not blocked"):
        signals.wait({USR1}, timeout=0, backend=backend)


@in_forked_child
def test_other_signal_handler_runs_and_wait_goes_on(backend: str) -> None:
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda s, f: fired.append(s))
    try:
        with signals.blocked({USR1}):
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                signals.wait({USR1}, timeout=0.3, backend=backend)
            elapsed = time.monotonic() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
    assert len(fired) >= 2 and 0.29 <= elapsed < 1.5


RECEIVER = """
import signal, sys
from fastipc import signals
with signals.blocked({signal.SIGUSR1}):
    print("ready", flush=True)
    for _ in range(3):
        info = signals.wait({signal.SIGUSR1}, timeout=20, backend=sys.argv[1])
        print(info.signo, info.pid, info.value, flush=True)
"""


def test_between_processes(cross: tuple[str, str]) -> None:
    sender, receiver = cross
    proc = start_python(RECEIVER, receiver)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for v in (1, 2, 3):
            signals.send(proc.pid, USR1, value=v, backend=sender)
            line = proc.stdout.readline().split()
            assert line == [str(int(USR1)), str(os.getpid()), str(v)]
        proc.wait(20)
        assert proc.returncode == 0
    finally:
        proc.kill()
        proc.communicate()


def test_bad_input(backend: str) -> None:
    for bad in (0, -3, 10_000):
        with pytest.raises(ValueError), signals.blocked({bad}):
            pass
        with pytest.raises(ValueError):
            signals.wait({bad}, timeout=0, backend=backend)
    with pytest.raises(ValueError):
        signals.send(os.getpid(), 10_000, backend=backend)
    with pytest.raises(ValueError):
        signals.send(os.getpid(), -1, backend=backend)
    with pytest.raises(TypeError):
        signals.send(os.getpid(), "SIGUSR1", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        signals.send("me", USR1, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        signals.send(os.getpid(), USR1, value=1.5, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        signals.send(os.getpid(), USR1, value=2**31, backend=backend)
    with pytest.raises(ValueError):
        signals.wait({signal.SIGKILL}, timeout=0, backend=backend)
    with pytest.raises(ValueError):
        signals.wait(set(), timeout=0, backend=backend)
    with pytest.raises(TypeError):
        signals.wait("USR1", timeout=0, backend=backend)  # type: ignore[arg-type]
    with signals.blocked({USR1}), pytest.raises(ValueError):
        signals.wait({USR1}, timeout=-1, backend=backend)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(ProcessLookupError):
        signals.send(pid_max + 1, USR1, value=1, backend=backend)


def test_signal_zero_checks_existence(backend: str) -> None:
    signals.send(os.getpid(), 0, backend=backend)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    with pytest.raises(ProcessLookupError):
        signals.send(pid_max + 1, 0, backend=backend)


# ---------------------------------------------------------------------------- wait_async
# The loop watches a signalfd; the signal is taken (with its value) only when the call
# returns. In forked children: the signal mask is the process's business.

_SENDER = """
import os, sys, time
from fastipc import signals
pid, signum, count, backend = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
time.sleep(0.2)
for v in range(count):
    signals.send(pid, signum, value=v, backend=backend)
"""


@in_forked_child
def test_wait_async_from_another_process(backend: str, loop_kind: str) -> None:
    rt = signal.SIGRTMIN + 2

    async def main() -> list[int]:
        peer = start_python(_SENDER, str(os.getpid()), str(rt), "3", backend)
        tick = Ticker()
        got = [(await signals.wait_async(rt, timeout=10, backend=backend)) for _ in range(3)]
        assert tick.stop() < 0.1  # the loop went on meanwhile
        assert peer.communicate(timeout=10)[0] == "" and peer.returncode == 0
        assert all(g.signo == rt and g.pid == peer.pid and g.uid == os.getuid() for g in got)
        return [g.value for g in got]  # type: ignore[misc]

    with signals.blocked({rt}):
        assert run_on(loop_kind, main()) == [0, 1, 2]


@in_forked_child
def test_wait_async_timeouts(backend: str, loop_kind: str) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await signals.wait_async(USR1, timeout=0, backend=backend)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await signals.wait_async({USR1, USR2}, timeout=0.2, backend=backend)
        assert 0.15 < time.monotonic() - t0 < 2
        with pytest.raises(ValueError):
            await signals.wait_async(USR1, timeout=-1, backend=backend)
        signals.send(os.getpid(), USR2, backend=backend)
        info = await signals.wait_async({USR1, USR2}, timeout=0, backend=backend)
        assert info == signals.SignalInfo(USR2, os.getpid(), os.getuid(), None)
        asyncio.get_running_loop().call_later(
            0.1, lambda: signals.send(os.getpid(), USR1, value=5, backend=backend))
        info = await signals.wait_async(USR1, backend=backend)  # None: as long as it takes
        assert (info.signo, info.value) == (USR1, 5)
        with pytest.raises(ValueError, match="not blocked"):
            await signals.wait_async(signal.SIGHUP, backend=backend)

    with signals.blocked({USR1, USR2}):
        run_on(loop_kind, main())


@in_forked_child
def test_wait_async_cancelled_takes_nothing(backend: str, loop_kind: str) -> None:
    """Queued realtime signals, awaited by calls cancelled at random moments: every value
    is received once, in order."""
    rt = signal.SIGRTMIN + 3
    count = 200

    async def main() -> int:
        rng = random.Random(3)
        peer = start_python(_SENDER, str(os.getpid()), str(rt), str(count), backend)

        def check(i: int, info: Any) -> None:
            assert info.value == i

        cancels = await receive_with_cancels(
            lambda: signals.wait_async(rt, timeout=10, backend=backend), count, rng, check)
        assert peer.communicate(timeout=10)[0] == "" and peer.returncode == 0
        with pytest.raises(TimeoutError):
            signals.wait(rt, timeout=0, backend=backend)  # nothing left over
        return cancels

    with signals.blocked({rt}):
        assert run_on(loop_kind, main()) > 0


@in_forked_child
def test_wait_async_several_coroutines(backend: str, loop_kind: str) -> None:
    rt = signal.SIGRTMIN + 4
    n = 20

    async def main() -> list[int]:
        tasks = [asyncio.ensure_future(signals.wait_async(rt, timeout=10, backend=backend))
                 for _ in range(n)]
        await asyncio.sleep(0.05)
        for v in range(n):
            signals.send(os.getpid(), rt, value=v, backend=backend)
        return sorted(i.value for i in await asyncio.gather(*tasks))  # type: ignore[misc]

    with signals.blocked({rt}):
        assert run_on(loop_kind, main()) == list(range(n))
