"""fastipc._aio on its own: futex words woken by threads and by other processes, on asyncio
and uvloop, with both implementations of the helper thread's futex_waitv (C and ctypes)."""

from __future__ import annotations

import asyncio
import ctypes
import mmap
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import fastipc
from conftest import PREFIX
from fastipc import _aio, _core, shm
from fastipc import queue as fq
from fastipc._core import Deadline
from helpers import Ticker, run_on, run_python

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98}.get(platform.machine(), 202)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _wake(address: int) -> None:
    _libc.syscall(_SYS_FUTEX, ctypes.c_void_p(address), 1, 0x7FFFFFFF, None, None, 0)


class Word:
    """A futex word in shared memory with a 'ready' flag beside it, as a ring has."""

    def __init__(self, mm: Any, offset: int = 0) -> None:
        self.words = (ctypes.c_uint32 * 2).from_buffer(mm, offset)
        self.address = ctypes.addressof(self.words)
        self.parks = 0

    def attempt(self) -> Any:
        return "ready" if self.words[1] else _aio.NOT_READY

    def park(self) -> Any:
        self.parks += 1
        if self.words[1]:
            return None
        return self.address, self.words[0]

    def unpark(self) -> None:
        pass

    def close(self) -> None:
        del self.words  # the export of the mapping goes with it

    def fire(self) -> None:
        self.words[1] = 1
        self.words[0] += 1
        _wake(self.address)


@pytest.fixture(params=["native", "ctypes"])
def waitv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs with the helper thread on the C futex_waitv and on the ctypes one."""
    waiter = _aio._Waiter()
    waiter._waitv = _aio._native_waitv() if request.param == "native" else _aio._ctypes_waitv()
    monkeypatch.setattr(_aio, "_waiter", waiter)
    yield str(request.param)
    assert not waiter._slots  # every parked coroutine left its line
    for thread in [s.thread for s in list(waiter._shards)]:
        if thread is not None:  # idle, it leaves within IDLE_EXIT
            thread.join(_aio.IDLE_EXIT + 5)
            assert not thread.is_alive()


@pytest.fixture(scope="session")
def loops_ready() -> None:
    """uvloop opens a pipe of its own for the process on its first run: open it before the
    leak check looks (session fixtures come first)."""
    try:
        import uvloop
    except ImportError:
        return

    async def nothing() -> None:
        pass

    uvloop.run(nothing())


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest, loops_ready: None) -> Callable[[Any], Any]:
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return lambda coro: uvloop.run(coro)  # type: ignore[no-any-return]
    return asyncio.run


def _shared(size: int = 4096) -> mmap.mmap:
    return mmap.mmap(-1, size, mmap.MAP_SHARED)


def test_ready_at_once_never_parks(waitv: str, run: Any) -> None:
    mm = _shared()
    word = Word(mm)
    word.words[1] = 1
    assert run(_aio.wait(word.attempt, word.park, word.unpark, Deadline.of(1))) == "ready"
    assert word.parks == 0
    word.close()
    mm.close()


def test_the_ticker_sees_a_loop_blocked_by_a_sleep_a_busy_loop_or_the_gil(run: Any) -> None:
    """The check every "the loop is never blocked" test relies on: a system call that
    sleeps, bytecode that runs, and a wait for the GIL another thread holds all show as a
    gap (only time spent waiting for a CPU is left out)."""
    def busy(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    async def blocked(block: Callable[[], object]) -> float:
        tick = Ticker()
        await asyncio.sleep(0.02)
        block()
        await asyncio.sleep(0.02)
        return tick.stop()

    assert run(blocked(lambda: time.sleep(0.1))) >= 0.09
    assert run(blocked(lambda: busy(0.1))) >= 0.09
    holder = threading.Thread(target=busy, args=(0.3,))
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.1)  # the holder keeps the GIL 0.1 s at a time
    try:
        assert run(blocked(holder.start)) >= 0.05
    finally:
        holder.join()
        sys.setswitchinterval(old)
    assert run(blocked(lambda: None)) < 0.05


def test_woken_by_a_thread_without_blocking_the_loop(waitv: str, run: Any) -> None:
    mm = _shared()
    word = Word(mm)

    async def main() -> tuple[Any, float]:
        tick = Ticker()
        threading.Timer(0.3, word.fire).start()
        t0 = time.monotonic()
        got = await _aio.wait(word.attempt, word.park, word.unpark, Deadline.of(5),
                              spin=_aio.Spin())
        assert 0.25 < time.monotonic() - t0 < 2
        return got, tick.stop()

    got, gap = run(main())
    assert got == "ready"
    assert gap < 0.05, f"the loop was blocked for {gap:.3f} s"
    word.close()
    mm.close()


def test_many_waiters_each_woken(waitv: str, run: Any) -> None:
    mm = _shared()
    words = [Word(mm, 8 * i) for i in range(60)]

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(_aio.wait(w.attempt, w.park, w.unpark, Deadline.of(10)))
                 for w in words]
        await asyncio.sleep(0.1)
        for w in reversed(words):
            threading.Thread(target=w.fire).start()
        return await asyncio.gather(*tasks)

    assert run(main()) == ["ready"] * len(words)
    for w in words:
        w.close()
    mm.close()


def test_timeout_and_cancel_remove_the_entry(waitv: str, run: Any) -> None:
    mm = _shared()
    word = Word(mm)

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await _aio.wait(word.attempt, word.park, word.unpark, Deadline.of(0.2), name="w")
        assert 0.15 < time.monotonic() - t0 < 2
        task = asyncio.ensure_future(_aio.wait(word.attempt, word.park, word.unpark,
                                               Deadline.of(None)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(TimeoutError):
            await _aio.wait(word.attempt, word.park, word.unpark, Deadline.of(0))

    run(main())
    word.close()
    mm.close()


def test_recheck_parks_again_when_nobody_wakes(waitv: str, run: Any) -> None:
    """A peer that died without waking: park() runs again every `recheck` seconds, which is
    where a ring notices it."""
    mm = _shared()
    word = Word(mm)

    def park() -> Any:
        if word.parks >= 4:
            raise EOFError("the peer has gone")
        return word.park()

    async def main() -> None:
        with pytest.raises(EOFError):
            await _aio.wait(word.attempt, park, word.unpark, Deadline.of(5), recheck=0.05)

    t0 = time.monotonic()
    run(main())
    assert time.monotonic() - t0 < 2 and word.parks == 4
    word.close()
    mm.close()


def test_woken_by_another_process(waitv: str, run: Any, tmp_path: Any) -> None:
    path = tmp_path / "word"
    path.write_bytes(bytes(4096))
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), 4096)
    word = Word(mm)

    async def main() -> Any:
        task = asyncio.ensure_future(_aio.wait(word.attempt, word.park, word.unpark,
                                               Deadline.of(10)))
        await asyncio.sleep(0.1)
        out = await asyncio.get_running_loop().run_in_executor(None, lambda: run_python(
            """
            import ctypes, mmap, sys
            with open(sys.argv[1], "r+b") as f:
                mm = mmap.mmap(f.fileno(), 4096)
            words = (ctypes.c_uint32 * 2).from_buffer(mm)
            words[1] = 1
            words[0] += 1
            libc = ctypes.CDLL(None)
            libc.syscall(202, ctypes.c_void_p(ctypes.addressof(words)), 1, 1, None, None, 0)
            """, str(path)))
        assert out.returncode == 0, out.stderr
        return await task

    assert run(main()) == "ready"
    word.close()
    mm.close()


def test_native_waitv_reports_a_changed_word() -> None:
    ffi, lib = _core.native()
    vec = (_aio._Waitv * 1)()
    value = ctypes.c_uint32(5)
    vec[0].uaddr = ctypes.addressof(value)
    vec[0].val = 4  # not what the word holds
    vec[0].flags = _aio._FUTEX_32 | _aio._FUTEX_PRIVATE
    rc = lib.fipc_aio_waitv(ffi.cast("void *", ctypes.addressof(vec)), 1, 1.0)
    assert rc == -11  # EAGAIN
    vec[0].val = 5
    t0 = time.monotonic()
    assert lib.fipc_aio_waitv(ffi.cast("void *", ctypes.addressof(vec)), 1, 0.05) == -110
    assert time.monotonic() - t0 >= 0.04
    assert os.uname().release  # a kernel with futex_waitv (5.16+) is what these tests need


def test_the_helper_thread_blocks_every_signal(waitv: str, run: Any) -> None:
    """A process-directed signal must reach the application's threads, never the helper."""
    mm = _shared()
    word = Word(mm)

    async def main() -> int:
        task = asyncio.ensure_future(_aio.wait(word.attempt, word.park, word.unpark,
                                               Deadline(5.0)))
        waiter = _aio._the_waiter()
        while not waiter._shards or waiter._shards[0].thread is None:
            await asyncio.sleep(0.001)
        thread = waiter._shards[0].thread
        assert thread is not None
        tid = thread.native_id
        with open(f"/proc/self/task/{tid}/status") as f:
            blocked = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk"))
        word.fire()
        await task
        return blocked

    blocked = run(main())
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGALRM):
        assert blocked & (1 << (signum - 1)), signum
    word.close()
    mm.close()


# ---------------------------------------------------------------------------- many coroutines
# Coroutines parked on the same futex word share one slot of the helper thread's futex_waitv
# (at most 128 words): any number of them may await one object, and words beyond 127 go to
# further helper threads.

MANY = 1000


async def _all_get(get: Callable[[], Any], count: int) -> list[Any]:
    tasks = [asyncio.ensure_future(get()) for _ in range(count)]
    return await asyncio.wait_for(asyncio.gather(*tasks), 60)


async def _closed_under(make_get: Callable[[], Any], close: Callable[[], None],
                        count: int) -> None:
    """``count`` coroutines await; close() from another thread ends every one (ValueError)."""
    tasks = [asyncio.ensure_future(make_get()) for _ in range(count)]
    await asyncio.sleep(0.3)
    assert not any(t.done() for t in tasks)
    closer = threading.Thread(target=close)  # joined: closed before the end
    closer.start()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)
    closer.join(5)
    assert all(isinstance(r, ValueError) for r in results), {type(r) for r in results}


def test_a_thousand_coroutines_on_one_queue(backend: str, loop_kind: str, loops_ready: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fq, "ANONYMOUS_PREFIX", PREFIX + "anon-")  # the leak check sees it
    q = fastipc.Queue(backend=backend)

    async def main() -> None:
        def produce() -> None:
            time.sleep(0.2)
            for i in range(MANY):
                q.put(i)

        threading.Thread(target=produce).start()
        got = await _all_get(lambda: q.get_async(timeout=30), MANY)
        assert sorted(got) == list(range(MANY))  # each once
        await _closed_under(lambda: q.get_async(), q.close, MANY)

    run_on(loop_kind, main())
    assert q.closed


def test_a_thousand_coroutines_on_one_channel(backend: str, loop_kind: str, name: str,
                                              loops_ready: None) -> None:
    with shm.Writer(name, capacity=1 << 16, backend=backend) as w:
        r = shm.Reader(name, backend=backend)

        async def main() -> None:
            def produce() -> None:
                time.sleep(0.2)
                for i in range(MANY):
                    w.send(i.to_bytes(4, "little"))

            threading.Thread(target=produce).start()
            got = await _all_get(lambda: r.recv_async(timeout=30), MANY)
            assert sorted(int.from_bytes(m, "little") for m in got) == list(range(MANY))
            await _closed_under(lambda: r.recv_async(), r.close, MANY)

        run_on(loop_kind, main())


def test_hundreds_of_coroutines_over_many_channels(backend: str, loop_kind: str, loops_ready: None,
                                                   name: str) -> None:
    """300 words at once: three helper threads' worth of futex_waitv."""

    n = 150
    writers = [shm.Writer(f"{name}-{i}", capacity=4096, backend=backend) for i in range(n)]
    readers = [shm.Reader(f"{name}-{i}", backend=backend) for i in range(n)]
    try:
        async def main() -> None:
            def produce() -> None:
                time.sleep(0.3)
                for i, w in enumerate(writers):
                    w.send(b"a%d" % i)
                    w.send(b"b%d" % i)

            tasks = [asyncio.ensure_future(r.recv_async(timeout=30))
                     for r in readers for _ in range(2)]
            await asyncio.sleep(0.1)
            assert len(_aio._the_waiter()._shards) >= 2
            threading.Thread(target=produce).start()
            got = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            for i in range(n):
                assert sorted(got[2 * i:2 * i + 2]) == [b"a%d" % i, b"b%d" % i]

        run_on(loop_kind, main())
    finally:
        for r in readers:
            r.close()
        for w in writers:
            w.close()
