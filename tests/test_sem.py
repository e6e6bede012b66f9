"""fastipc.sem: POSIX named semaphores, on both backends, across real processes."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import test_aio
from conftest import PREFIX
from fastipc import sem
from helpers import (
    Ticker,
    close_ends_awaits,
    closed_and_unlinked,
    later,
    receive_with_cancels,
    run_on,
    run_python,
    start_python,
)
from interrupts import check_raising_handler_ends, check_retries_with_remaining_time

loops_ready = test_aio.loops_ready


def _sems() -> set[str]:
    """This run's semaphores (named by the ``name`` fixture, with conftest's PREFIX)."""
    return {p.name for p in Path("/dev/shm").glob(f"sem.{PREFIX}*")}


@pytest.fixture(autouse=True)
def no_leaked_semaphores() -> Iterator[None]:
    """Named semaphores live in /dev/shm as sem.<name>; none may be left behind."""
    before = _sems()
    yield
    leaked = _sems() - before
    for entry in leaked:
        (Path("/dev/shm") / entry).unlink(missing_ok=True)
    assert not leaked, f"leaked semaphores: {sorted(leaked)}"


def _mapped(name: str) -> bool:
    """Is the semaphore's file mapped in this process? (by inode: glibc creates it under a
    temporary name that /proc/self/maps keeps showing)"""
    inode = os.stat(f"/dev/shm/sem.{name}").st_ino
    with open("/proc/self/maps") as f:
        return any(line.split()[4] == str(inode) for line in f if len(line.split()) > 5)


@pytest.fixture
def s(backend: str, name: str) -> Iterator[sem.Semaphore]:
    with closed_and_unlinked(sem.Semaphore(name, create=True, value=0, backend=backend),
                             lambda: sem.unlink(name)) as obj:
        yield obj


# ---------------------------------------------------------------------------- basics


def test_acquire_release_value(s: sem.Semaphore) -> None:
    assert s.value == 0
    s.release()
    s.release()
    assert s.value == 2
    assert s.acquire() is True
    assert s.acquire(timeout=0) is True
    assert s.value == 0
    with pytest.raises(TimeoutError):
        s.acquire(timeout=0)


def test_initial_value_and_names(backend: str, name: str) -> None:
    s = sem.Semaphore("/" + name, create=True, value=3, backend=backend)
    assert s.name == "/" + name
    assert s.value == 3
    assert s.acquire(timeout=0) is True
    assert s.value == 2
    assert os.stat(f"/dev/shm/sem.{name}").st_mode & 0o777 == 0o600 & ~_umask()
    assert s.backend == backend
    assert name in repr(s)
    s.close()
    assert s.closed
    with pytest.raises(ValueError, match="closed"):
        s.acquire(timeout=0)
    again = sem.Semaphore(name, backend=backend)  # closing left the semaphore
    assert again.value == 2
    again.close()
    sem.unlink(name, backend=backend)
    empty = sem.Semaphore(name, create=True, backend=backend)  # value 0
    assert empty.value == 0
    empty.close()
    empty.unlink()


def test_with_acquires_and_releases(s: sem.Semaphore) -> None:
    """As threading, multiprocessing and posix_ipc semaphores: the block holds the
    semaphore, its end (also by an exception) gives it back, and the object stays open."""
    s.release()
    with s as same:
        assert same is s
        assert s.value == 0
    assert s.value == 1 and not s.closed
    with pytest.raises(KeyError), s:
        assert s.value == 0
        raise KeyError("inside")
    assert s.value == 1 and not s.closed
    s.acquire(0)
    entered = threading.Event()

    def enter() -> None:
        with s:  # value 0: waits for the release below
            entered.set()

    t = threading.Thread(target=enter)
    t.start()
    assert not entered.wait(0.2)
    s.release()
    t.join(10)
    assert entered.is_set() and s.value == 1


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_two_handles_share_the_value(s: sem.Semaphore, backend: str, name: str) -> None:
    other = sem.Semaphore(name, value=99, backend=backend)  # value ignored when attaching
    try:
        assert other.value == 0
        other.release()
        assert s.value == 1
        s.acquire(0)
    finally:
        other.close()


def test_create_existing_and_attach_missing(s: sem.Semaphore, backend: str, name: str) -> None:
    with pytest.raises(FileExistsError) as info:
        sem.Semaphore(name, create=True, backend=backend)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FileNotFoundError):
        sem.Semaphore(name + "-absent", backend=backend)
    with pytest.raises(FileNotFoundError):
        sem.unlink(name + "-absent", backend=backend)


def test_mode(backend: str, name: str) -> None:
    obj = sem.Semaphore(name, create=True, mode=0o640, backend=backend)
    try:
        assert os.stat(f"/dev/shm/sem.{name}").st_mode & 0o777 == 0o640 & ~_umask()
    finally:
        obj.unlink()
        obj.close()


def test_close_unmaps_and_is_idempotent(backend: str, name: str) -> None:
    obj = sem.Semaphore(name, create=True, backend=backend)
    assert _mapped(name)
    obj.close()
    obj.close()
    assert not _mapped(name)
    sem.unlink(name)


def test_garbage_collected_semaphore_closes(backend: str, name: str) -> None:
    obj = sem.Semaphore(name, create=True, backend=backend)
    del obj
    assert not _mapped(name)
    sem.unlink(name)


def test_unlinked_semaphore_stays_usable(s: sem.Semaphore, backend: str, name: str) -> None:
    s.unlink()
    s.release()
    s.acquire(0)
    sem.Semaphore(name, create=True, backend=backend).close()  # the name is free again


def test_overflow(backend: str, name: str) -> None:
    obj = sem.Semaphore(name, create=True, value=sem.SEM_VALUE_MAX, backend=backend)
    try:
        with pytest.raises(OSError) as info:
            obj.release()
        assert info.value.errno == errno.EOVERFLOW
        assert obj.value == sem.SEM_VALUE_MAX
    finally:
        obj.close()
        sem.unlink(name)


# ---------------------------------------------------------------------------- timeouts


def test_timeout(s: sem.Semaphore) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"0\.1 s"):
        s.acquire(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 5


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_bad_timeouts(s: sem.Semaphore, bad: float) -> None:
    with pytest.raises(ValueError):
        s.acquire(timeout=bad)


@pytest.mark.parametrize("bad", ["1", [1], True])
def test_timeout_types(s: sem.Semaphore, bad: object) -> None:
    with pytest.raises(TypeError):
        s.acquire(timeout=bad)  # type: ignore[arg-type]


def test_release_from_another_thread(s: sem.Semaphore) -> None:
    with later(0.1, s.release):
        assert s.acquire(timeout=10)


def test_signal_retries_with_remaining_time(s: sem.Semaphore) -> None:
    check_retries_with_remaining_time(lambda t: s.acquire(timeout=t))


def test_signal_handler_that_raises_ends_the_wait(s: sem.Semaphore) -> None:
    check_raising_handler_ends(lambda: s.acquire(timeout=10))
    # a forever wait: a watchdog thread releases if the signal does not end it
    guard = threading.Timer(10, s.release)
    guard.start()
    try:
        check_raising_handler_ends(s.acquire)
    finally:
        guard.cancel()
    s.release()  # the semaphore stays usable
    assert s.acquire(0) and s.value == 0


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        ("a/b", ValueError),
        ("nul\0", ValueError),
        ("x" * 256, ValueError),
        ("", ValueError),
        (b"name", TypeError),
        (None, TypeError),
        (1, TypeError),
    ],
)
def test_bad_names(backend: str, bad: object, exc: type) -> None:
    with pytest.raises(exc):
        sem.Semaphore(bad, create=True, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(exc):
        sem.unlink(bad, backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"value": -1}, ValueError),
        ({"value": sem.SEM_VALUE_MAX + 1}, ValueError),
        ({"value": 1.0}, TypeError),
        ({"value": "1"}, TypeError),
        ({"mode": -1}, ValueError),
        ({"mode": "600"}, TypeError),
        ({"mode": 0o1600}, ValueError),  # permission bits only, as for every named object
        ({"create": "yes"}, TypeError),
        ({"backend": "other"}, ValueError),
    ],
)
def test_bad_arguments(name: str, kwargs: dict[str, object], exc: type) -> None:
    args: dict[str, object] = {"create": True, **kwargs}
    with pytest.raises(exc):
        sem.Semaphore(name, **args)  # type: ignore[arg-type]


def test_closed_semaphore(backend: str, name: str) -> None:
    obj = sem.Semaphore(name, create=True, value=1, backend=backend)
    obj.close()
    assert "closed" in repr(obj)
    calls = (lambda: obj.acquire(0), obj.release, lambda: obj.value, obj.__enter__)
    for call in (*calls, lambda: pickle.dumps(obj), obj.fileno):
        with pytest.raises(ValueError, match="closed"):
            call()
    obj.unlink()  # an operation on the name: works after close()
    with pytest.raises(FileNotFoundError):
        sem.Semaphore(name, backend=backend)
    with pytest.raises(FileNotFoundError):
        obj.unlink()


# ---------------------------------------------------------------------------- processes

PONG = """
    import sys
    from fastipc import sem
    name, backend, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    ping = sem.Semaphore(name + "-ping", backend=backend)
    pong = sem.Semaphore(name + "-pong", backend=backend)
    for _ in range(rounds):
        ping.acquire(timeout=30)
        pong.release()
    ping.close(); pong.close()
    print("done")
"""


def test_ping_pong_between_processes(cross: tuple[str, str], name: str) -> None:
    mine, theirs = cross
    ping = sem.Semaphore(name + "-ping", create=True, backend=mine)
    pong = sem.Semaphore(name + "-pong", create=True, backend=mine)
    try:
        p = start_python(PONG, name, theirs, "200")
        try:
            for _ in range(200):
                ping.release()
                pong.acquire(timeout=30)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert p.returncode == 0, err
        assert out.strip() == "done"
        assert ping.value == 0 and pong.value == 0
    finally:
        for obj in (ping, pong):
            obj.unlink()
            obj.close()


def test_mutual_exclusion_between_processes(
    cross: tuple[str, str], name: str, tmp_path: Path
) -> None:
    """Processes that take the semaphore around a read-modify-write lose no update."""
    code = """
        import sys
        from fastipc import sem
        name, backend, path = sys.argv[1], sys.argv[2], sys.argv[3]
        lock = sem.Semaphore(name, backend=backend)
        for _ in range(100):
            lock.acquire(timeout=30)
            try:
                with open(path) as f:
                    n = int(f.read())
                with open(path, "w") as f:
                    f.write(str(n + 1))
            finally:
                lock.release()
        lock.close()
    """
    counter = tmp_path / "counter"
    counter.write_text("0")
    lock = sem.Semaphore(name, create=True, value=1, backend=cross[0])
    try:
        procs = [start_python(code, name, b, str(counter)) for b in (*cross, cross[0])]
        for p in procs:
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        assert counter.read_text() == "300"
    finally:
        lock.unlink()
        lock.close()


def test_waiter_started_first(backend: str, name: str) -> None:
    code = """
        import sys
        from fastipc import sem
        s = sem.Semaphore(sys.argv[1], backend=sys.argv[2])
        s.acquire(timeout=30)
        print("acquired")
        s.close()
    """
    obj = sem.Semaphore(name, create=True, backend=backend)
    try:
        p = start_python(code, name, backend)
        try:
            time.sleep(0.3)
            assert p.poll() is None
            obj.release()
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        assert out.strip() == "acquired", err
    finally:
        obj.unlink()
        obj.close()


def test_attach_missing_in_child(backend: str, name: str) -> None:
    out = run_python(
        "import sys\nfrom fastipc import sem\n"
        "try:\n    sem.Semaphore(sys.argv[1], backend=sys.argv[2])\n"
        "except FileNotFoundError as e:\n    print(e.errno)",
        name,
        backend,
        timeout=30,
    )
    assert out.stdout.strip() == str(errno.ENOENT), out.stderr


# ---------------------------------------------------------------------------- acquire_async
# Awaiting counts the process among the semaphore's waiters (glibc's sem_t), so that
# sem_post (of any process, a C program's too) wakes the helper thread's futex_waitv.


def _waiters(name: str) -> int:
    """glibc's count of the semaphore's waiters (the high half of its first 64-bit word)."""
    with open(f"/dev/shm/sem.{name}", "rb") as f:
        return int.from_bytes(f.read(8), "little") >> 32


def test_acquire_async_timeouts(s: sem.Semaphore, loop_kind: str, loops_ready: None,
                                name: str) -> None:
    async def main() -> None:
        s.release()
        assert await s.acquire_async(0) is True  # there: taken at once
        with pytest.raises(TimeoutError):
            await s.acquire_async(0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await s.acquire_async(0.2)
        assert 0.15 < time.monotonic() - t0 < 2
        for bad in (-1, -0.001):
            with pytest.raises(ValueError):
                await s.acquire_async(bad)
        assert s.value == 0 and _waiters(name) == 0
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, s.release)
        assert await s.acquire_async() is True
        assert s.value == 0 and _waiters(name) == 0

    run_on(loop_kind, main())


_POSTER = """
import ctypes, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.sem_open.restype = ctypes.c_void_p
libc.sem_post.argtypes = [ctypes.c_void_p]
s = libc.sem_open(("/" + sys.argv[1]).encode(), 0)
assert s, ctypes.get_errno()
time.sleep(float(sys.argv[3]))
for _ in range(int(sys.argv[2])):
    assert libc.sem_post(ctypes.c_void_p(s)) == 0
"""


def test_acquire_async_woken_by_sem_post_of_another_process(
        s: sem.Semaphore, loop_kind: str, loops_ready: None, name: str) -> None:
    """The peer is glibc's sem_post itself, as a C program calls it; the loop stays free."""
    async def main() -> None:
        tick = Ticker()
        task = asyncio.ensure_future(s.acquire_async(10))
        await asyncio.sleep(0.1)
        assert _waiters(name) == 1  # counted as a waiter: sem_post will wake
        t0 = time.monotonic()
        peer = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_python(_POSTER, name, "1", "0.2"))
        assert peer.returncode == 0, peer.stderr
        assert await task is True
        assert time.monotonic() - t0 < 5
        assert tick.stop() < 0.1
        assert s.value == 0 and _waiters(name) == 0

    run_on(loop_kind, main())


def test_acquire_async_many_coroutines_each_token_once(
        s: sem.Semaphore, loop_kind: str, loops_ready: None, name: str) -> None:
    """1000 coroutines on one semaphore, posted 1000 times by another process: each
    coroutine gets one token, none is lost or taken twice; close ends the waits."""
    n = 1000

    async def main() -> None:
        tasks = [asyncio.ensure_future(s.acquire_async(30)) for _ in range(n)]
        await asyncio.sleep(0.2)
        peer = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run_python(_POSTER, name, str(n), "0"))
        assert peer.returncode == 0, peer.stderr
        assert await asyncio.wait_for(asyncio.gather(*tasks), 30) == [True] * n
        assert s.value == 0 and _waiters(name) == 0
        # close from another thread ends every wait
        tasks = [asyncio.ensure_future(s.acquire_async()) for _ in range(50)]
        await asyncio.sleep(0.2)
        await close_ends_awaits(s.close, tasks)

    run_on(loop_kind, main())
    assert _waiters(name) == 0


def test_acquire_async_close_from_the_loop(s: sem.Semaphore, loop_kind: str,
                                           loops_ready: None) -> None:
    async def main() -> None:
        task = asyncio.ensure_future(s.acquire_async())
        await asyncio.sleep(0.1)
        s.close()
        with pytest.raises(ValueError):
            await asyncio.wait_for(task, 5)
        with pytest.raises(ValueError):
            await s.acquire_async()

    run_on(loop_kind, main())


def test_acquire_async_cancelled_takes_nothing(s: sem.Semaphore, loop_kind: str,
                                               loops_ready: None, name: str) -> None:
    """Tokens posted by another process while awaits are cancelled at random moments: each
    token is taken once, by the coroutine that returned."""
    import random

    count = 300

    async def main() -> None:
        rng = random.Random(7)
        peer = asyncio.get_running_loop().run_in_executor(
            None, lambda: run_python(_POSTER, name, str(count), "0.05"))
        got = await receive_with_cancels(lambda: s.acquire_async(20), count, rng,
                                         lambda i, m: None)
        assert got > 0  # some were cancelled
        assert (await peer).returncode == 0
        assert s.value == 0  # no token left behind: every one was taken by a returned call
        assert _waiters(name) == 0

    run_on(loop_kind, main())


def test_acquire_async_native_and_pure_together(cross: tuple[str, str], name: str,
                                                loop_kind: str, loops_ready: None) -> None:
    """Coroutines of both backends on one semaphore in one process, and a blocking peer
    thread: every token goes once."""
    a = sem.Semaphore(name, create=True, backend=cross[0])
    b = sem.Semaphore(name, backend=cross[1])
    try:
        async def main() -> None:
            tasks = [asyncio.ensure_future((a if i % 2 else b).acquire_async(20))
                     for i in range(200)]
            await asyncio.sleep(0.1)

            def post() -> None:
                for _ in range(200):
                    a.release()

            threading.Thread(target=post).start()
            assert await asyncio.wait_for(asyncio.gather(*tasks), 20) == [True] * 200

        run_on(loop_kind, main())
        assert a.value == 0 and _waiters(name) == 0
    finally:
        a.close()
        b.close()
        sem.unlink(name)


BAD_ACQUIRES = [((1, 2), {}), ((), {"x": 1}), ((), {"timeout": -1}), ((), {"timeout": "1"}),
                ((), {"timeout": float("nan")}), ((1,), {"timeout": 1})]


@pytest.mark.parametrize(("args", "kwargs"), BAD_ACQUIRES)
def test_bad_arguments_fail_alike_on_both_backends(name: str, args: tuple[object, ...],
                                                   kwargs: dict[str, object]) -> None:
    """The native handle's C method refuses what the pure backend's Python method refuses,
    with the same exception and message."""
    seen = []
    for which in ("native", "pure"):
        s = sem.Semaphore(name, create=True, value=1, backend=which)
        try:
            with pytest.raises((TypeError, ValueError)) as info:
                s.acquire(*args, **kwargs)
            seen.append((type(info.value), str(info.value)))
            assert s.value == 1  # nothing taken
        finally:
            s.close()
            s.unlink()
    assert seen[0] == seen[1]
