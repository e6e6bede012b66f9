"""Helpers for tests: another process doing X."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import uvloop

_F = TypeVar("_F", bound=Callable[..., None])
_T = TypeVar("_T")


def _run_delay() -> float:
    """Seconds this thread has spent runnable but not running (waiting for a CPU), from the
    scheduler's own count (/proc/thread-self/schedstat); 0 where the kernel keeps none."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def loop_clock() -> float:
    """A clock for "was the loop blocked": wall time less the time the calling thread waited
    for a CPU. A wait in a system call or for the GIL counts, as does work holding the
    thread; the scheduler giving the CPU to another process (a loaded 2-CPU machine) does
    not."""
    return time.monotonic() - _run_delay()


class Ticker:
    """A coroutine ticking every ``period`` seconds on the running loop; ``gap`` is the
    largest time between two ticks on :func:`loop_clock`: what a call that blocked the loop
    shows. Use ``stop()`` (returns the gap) or ``async with`` (then read ``gap``)."""

    def __init__(self, period: float = 0.002) -> None:
        self.period = period
        self.gap = 0.0
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        last = loop_clock()
        while True:
            await asyncio.sleep(self.period)
            now = loop_clock()
            self.gap = max(self.gap, now - last)
            last = now

    def stop(self) -> float:
        self.task.cancel()
        return self.gap

    async def __aenter__(self) -> Ticker:
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        try:
            await self.task
        except asyncio.CancelledError:
            pass


def run_python(
    code: str, *args: str, timeout: float = 60, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh Python process (another process doing X); return its result."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def start_python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh Python process and return it (the caller waits for it)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args], text=True, **kwargs
    )


def frame(data: bytes) -> bytes:
    """``data`` framed as framing="length" sends it: its 4-byte big-endian length first."""
    return struct.pack(">I", len(data)) + data


def in_forked_child(test: _F) -> _F:
    """Run the test body in a forked child, whose only thread is the one running the test.

    For tests that block a signal in their thread and send it to their own process: the
    kernel delivers such a signal to any thread that does not block it, and this process may
    hold threads that libraries started (uvloop's libuv workers, OpenBLAS), where its default
    action would end the whole test run."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> None:
        r, w = os.pipe()
        with warnings.catch_warnings():  # 3.12+: fork() of a process with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 0
            try:
                test(*args, **kwargs)
            except BaseException:
                os.write(w, traceback.format_exc().encode())
                code = 1
            os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            report = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert status == 0, report or f"the child ended with wait status {status}"

    return run  # type: ignore[return-value]


def run_on(kind: str, coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` to completion on a new event loop of ``kind``: "asyncio" or "uvloop"."""
    loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def receive_with_cancels(get: Callable[[], Awaitable[Any]], count: int,
                               rng: random.Random, check: Callable[[int, Any], None],
                               batches: bool = False) -> int:
    """Receive ``count`` messages, each through a fresh ``get()`` awaited in a task that is
    cancelled at a random moment and then retried (with ``batches``, each ``get()`` returns
    a list of messages); ``check(i, message)`` each in order. Returns how many tasks were
    cancelled."""
    got = cancels = 0
    while got < count:
        task = asyncio.ensure_future(get())
        done, _ = await asyncio.wait([task], timeout=rng.random() * 0.0003)
        if not done:
            task.cancel()
            cancels += 1
        try:
            m = await task
        except asyncio.CancelledError:
            continue
        for one in m if batches else [m]:
            check(got, one)
            got += 1
    return cancels


def producing(send: Callable[[int], object], count: int,
              rng: random.Random) -> threading.Thread:
    """A started thread that calls ``send(i)`` for i in range(count), pausing at random."""

    def produce() -> None:
        for i in range(count):
            send(i)
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.0005)

    t = threading.Thread(target=produce)
    t.start()
    return t


async def trickling_in(send: Callable[[int], object], receive: Callable[[], Awaitable[Any]],
                       check: Callable[[int, Any], None], count: int = 20) -> None:
    """``send(i)`` for i in range(count) from a thread, one every 30 ms, while ``receive()``
    awaits each in turn: ``check(i, message)``."""

    def trickle() -> None:
        for i in range(count):
            time.sleep(0.03)
            send(i)

    t = threading.Thread(target=trickle)
    t.start()
    for i in range(count):
        check(i, await receive())
    t.join()


async def while_consumed(send_all: Awaitable[tuple[list[int], int]],
                         take: Callable[[], list[Any]], empty: type[BaseException],
                         pauses: random.Random | None = None
                         ) -> tuple[list[int], int, list[Any]]:
    """Await ``send_all`` (the numbers that went, and how many sends were cancelled) while a
    thread takes what comes with ``take()`` (a list; ``empty`` when nothing came in its
    wait), pausing at random by ``pauses`` (else a fast consumer leaves no send waiting),
    until it took as many as went. Returns the numbers sent, the cancels and what came."""
    sent: list[int] = []
    received: list[Any] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set() or len(received) < len(sent):
            try:
                received.extend(take())
            except empty:
                continue
            if pauses is not None and pauses.random() < 0.3:
                time.sleep(pauses.random() * 0.0005)

    c = threading.Thread(target=consume)
    c.start()
    try:
        sent[:], cancels = await send_all
    finally:
        stop.set()
        await asyncio.get_running_loop().run_in_executor(None, c.join, 30)
    assert not c.is_alive()
    return sent, cancels, received


async def send_with_cancels(send: Callable[[int], Awaitable[Any]], count: int,
                            rng: random.Random) -> tuple[list[int], int]:
    """``send(i)`` for i in range(count), each in a task cancelled at a random moment (not
    retried). Returns the numbers whose send completed, and how many were cancelled."""
    sent: list[int] = []
    cancels = 0
    for i in range(count):
        task = asyncio.ensure_future(send(i))
        done, _ = await asyncio.wait([task], timeout=rng.random() * 0.0003)
        if not done:
            task.cancel()
            cancels += 1
        try:
            await task
            sent.append(i)
        except asyncio.CancelledError:
            pass
    return sent, cancels


class InThread:
    """``call()`` running in another thread, started at once; what it raised is kept."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.errors: list[BaseException] = []
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(call,))
        self.thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        self.started.set()
        try:
            call()
        except BaseException as exc:  # the test inspects it
            self.errors.append(exc)

    def join(self, timeout: float) -> list[BaseException]:
        """Wait at most ``timeout`` s for the call to end (it must); what it raised."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call still runs"
        return self.errors


def close_ends_call(call: Callable[[], object], close: Callable[[], object], *,
                    settle: float | Callable[[], object] = 0.1, join: float = 5.0,
                    within: float | None = None) -> BaseException:
    """``close()`` from this thread while another thread blocks in ``call()``: that call
    ends, within ``join`` s (and ``within`` s of the close, if given), with one exception,
    which is returned. The close comes ``settle`` s after the call started (or once
    ``settle()`` returned)."""
    t = InThread(call)
    t.started.wait()
    if callable(settle):
        settle()
    else:
        time.sleep(settle)
    t0 = time.monotonic()
    close()
    errors = t.join(join)
    if within is not None:
        assert time.monotonic() - t0 < within
    assert len(errors) == 1, errors
    return errors[0]


@contextmanager
def later(delay: float, call: Callable[..., object], *args: Any,
          **kwargs: Any) -> Iterator[None]:
    """``call(*args, **kwargs)`` in another thread ``delay`` s into the block; joined at its
    end."""
    timer = threading.Timer(delay, call, args, kwargs)
    timer.start()
    try:
        yield
    finally:
        timer.join()


@contextmanager
def killed_at_end(pid: int) -> Iterator[None]:
    """The process ``pid`` (one that a test's other process forked), SIGKILLed at the end."""
    try:
        yield
    finally:
        os.kill(pid, signal.SIGKILL)


_O = TypeVar("_O")


@contextmanager
def closed_and_unlinked(obj: _O, unlink: Callable[[], object]) -> Iterator[_O]:
    """A named object the test created: closed, then its name unlinked, at the end."""
    try:
        yield obj
    finally:
        obj.close()  # type: ignore[attr-defined]
        unlink()


def stop_workers(q: Any, procs: Sequence[Any], timeout: float) -> None:
    """Each worker process of the joinable queue ``q`` ends at a None (and marks it done):
    one each, then every task done within ``timeout`` s, then each exits with 0."""
    for _ in procs:
        q.put(None)
    q.join(timeout=timeout)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0


async def close_ends_awaits(close: Callable[[], object], tasks: Sequence[Awaitable[Any]],
                            within: float | None = None) -> list[Any]:
    """``close()`` from another thread ends every one of ``tasks`` (awaiting the object)
    with ValueError (within ``within`` s, if given); what each ended with."""
    t0 = time.monotonic()
    closer = threading.Thread(target=close)  # joined: closed before the end
    closer.start()
    got = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    closer.join(5)
    assert all(isinstance(g, ValueError) for g in got), got
    if within is not None:
        assert time.monotonic() - t0 < within
    return got


async def ends_with(awaitable: Awaitable[Any], event: Callable[[], object],
                    error: type[BaseException], within: float, settle: float = 0.1) -> None:
    """``awaitable``, awaiting in a task, ends with ``error`` within ``within`` s of
    ``event()``, which comes ``settle`` s after the task started."""
    task = asyncio.ensure_future(awaitable)
    await asyncio.sleep(settle)
    event()
    t0 = time.monotonic()
    with pytest.raises(error):
        await task
    assert time.monotonic() - t0 < within


async def times_out(awaitable: Awaitable[Any], low: float, high: float = 2) -> None:
    """``awaitable`` raises TimeoutError after more than ``low`` and less than ``high`` s."""
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await awaitable
    assert low < time.monotonic() - t0 < high


async def gather_cut_short(get: Callable[[list[Any]], Awaitable[Any]],
                           enough: Callable[[list[Any]], bool], at_least: int,
                           cancels: int = 0) -> tuple[list[Any], int]:
    """``get(got)``, each cut short (cancelled by wait_for) after 0.2 ms unless it is done,
    again and again until ``enough(got)`` holds and ``at_least`` calls were cut short:
    ``got``, the results in order, and how many were cut short (counted on from
    ``cancels``)."""
    got: list[Any] = []
    while not enough(got) or cancels < at_least:
        try:
            got.append(await asyncio.wait_for(get(got), 0.0002))
        except TimeoutError:
            cancels += 1
    return got, cancels
