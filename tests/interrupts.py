"""Signals arriving during a blocking call, for the tests of every blocking call: the call
goes on with the time left after a handler ran (PEP 475), and ends when a handler raises."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest


class Stop(Exception):
    """What the raising handler of :func:`raising_alarm` raises."""


@contextmanager
def alarms(handler: Callable[..., Any], first: float, every: float = 0.0) -> Iterator[None]:
    """SIGALRM to ``handler`` after ``first`` seconds (then every ``every`` seconds)."""
    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, first, every)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def check_retries_with_remaining_time(wait: Callable[[float], object]) -> None:
    """``wait(timeout)`` interrupted every 50 ms by a handler still times out after its
    timeout (0.4 s), not sooner and not much later."""
    hits: list[int] = []
    with alarms(lambda *a: hits.append(1), 0.05, 0.05):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            wait(0.4)
        elapsed = time.monotonic() - t0
    assert len(hits) >= 3
    assert 0.35 <= elapsed < 5


@contextmanager
def raising_alarm(after: float = 0.05) -> Iterator[None]:
    """A handler that raises :class:`Stop` ``after`` seconds into the block."""

    def handler(*args: object) -> None:
        raise Stop

    with alarms(handler, after):
        yield


def check_raising_handler_ends(wait: Callable[[], object]) -> None:
    """A handler that raises ends ``wait()`` promptly with its exception."""
    with raising_alarm():
        t0 = time.monotonic()
        with pytest.raises(Stop):
            wait()
        assert time.monotonic() - t0 < 5


@contextmanager
def raise_after_call_to(code: Any, callee: str) -> Iterator[None]:
    """Trace the frames of ``code``: raise Stop at the first instruction after the call to the
    global ``callee`` returns, once: what a signal handler that raises does when its signal
    arrived during that call (Python runs handlers as calls into C return)."""
    import dis

    ops = list(dis.get_instructions(code))
    loaded = next(i for i, op in enumerate(ops) if op.opname == "LOAD_GLOBAL"
                  and op.argval == callee)
    call = next(i for i in range(loaded, len(ops)) if ops[i].opname.startswith("CALL"))
    after = ops[call + 1].offset
    fired: list[bool] = []

    def trace(frame: Any, event: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        if event == "opcode" and frame.f_lasti == after and not fired:
            fired.append(True)
            raise Stop
        return trace

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(None)
