"""Helpers for tests: another process doing X."""

from __future__ import annotations

import asyncio
import functools
import os
import random
import subprocess
import sys
import textwrap
import traceback
import warnings
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import uvloop

_F = TypeVar("_F", bound=Callable[..., None])
_T = TypeVar("_T")


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
                               rng: random.Random, check: Callable[[int, Any], None]) -> int:
    """Receive ``count`` messages, each through a fresh ``get()`` awaited in a task that is
    cancelled at a random moment and then retried; ``check(i, message)`` each in order.
    Returns how many tasks were cancelled."""
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
        check(got, m)
        got += 1
    return cancels


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
