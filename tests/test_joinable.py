"""fastipc.JoinableQueue and fastipc.SimpleQueue: the multiprocessing surface on both
backends, the task count shared across processes and backends, join's wake-up, close
semantics, consumers killed, and CPython's own tests of both run against them."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import mmap
import multiprocessing as mp
import os
import pickle
import queue as stdqueue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

import test_aio
from conftest import PREFIX, SHM_DIR
from fastipc import JoinableQueue, Queue, SimpleQueue, joinable
from fastipc import queue as fq
from fastipc.joinable import TASKS_SUFFIX
from fastipc.queue import Empty, Full
from helpers import close_ends_call, stop_workers, times_out
from interrupts import Stop, raise_after_call_to
from test_queue_async import put_batches_with_cancels

_Q = TypeVar("_Q", bound=Queue)

SMALL = 1 << 16
loops_ready = test_aio.loops_ready
run = test_aio.run
HERE = Path(__file__).resolve().parent
_fork = mp.get_context("fork")


@pytest.fixture(autouse=True)
def anonymous_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anonymous queues made by tests carry the prefix the leak check looks at."""
    monkeypatch.setattr(fq, "ANONYMOUS_PREFIX", PREFIX + "anon-")


@pytest.fixture
def long_slice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Joiners look at the count on their own only every 10 s (fork children inherit it):
    a join that returns sooner was woken."""
    monkeypatch.setattr(joinable, "SLICE", 10.0)


@pytest.fixture
def jq(backend: str) -> Iterator[JoinableQueue]:
    with JoinableQueue(capacity=SMALL, backend=backend) as q:
        yield q


@contextmanager
def _created(cls: Callable[..., _Q], **kwargs: Any) -> Iterator[_Q]:
    """The test's named queue of class ``cls``: created, then closed and unlinked (close()
    leaves the name of a named queue; unlink() removes it and everything beside it)."""
    q = cls(create=True, **kwargs)
    try:
        with q:
            yield q
    finally:
        q.unlink()


def _tasks_path(q: Queue) -> str:
    return f"{SHM_DIR}/{q.name}{TASKS_SUFFIX}"


def _shared_ints(n: int) -> memoryview:
    """n int64 shared with fork children (anonymous: no fd, no name)."""
    return memoryview(mmap.mmap(-1, 8 * n)).cast("q")


# ---------------------------------------------------------------- JoinableQueue in one process


def test_join_returns_at_once_on_an_empty_queue(jq: JoinableQueue) -> None:
    t0 = time.monotonic()
    jq.join()
    jq.join(timeout=0)
    assert time.monotonic() - t0 < 0.5
    assert jq.unfinished_tasks == 0


def test_every_put_counts_and_task_done_ends_one(jq: JoinableQueue) -> None:
    jq.put(1)
    jq.put_nowait(2)
    jq.put_bytes(b"3")
    jq.put_many([4, 5])
    assert jq.unfinished_tasks == 5
    assert [jq.get(timeout=1) for _ in range(5)] == [1, 2, b"3", 4, 5]
    assert jq.unfinished_tasks == 5  # a get is not the end of a task
    with pytest.raises(TimeoutError):
        jq.join(timeout=0.05)
    for left in range(4, -1, -1):
        jq.task_done()
        assert jq.unfinished_tasks == left
    jq.join()


def test_task_done_too_many_times_raises_value_error(jq: JoinableQueue) -> None:
    with pytest.raises(ValueError, match="task_done\\(\\) called too many times"):
        jq.task_done()
    jq.put("a")
    jq.get()
    jq.task_done()
    with pytest.raises(ValueError, match="too many times"):
        jq.task_done()
    assert jq.unfinished_tasks == 0  # the refused call changed nothing
    jq.put("b")
    assert jq.unfinished_tasks == 1
    jq.get()
    jq.task_done()
    jq.join()


class _Unpicklable:
    def __reduce__(self) -> str:
        raise RuntimeError("cannot be pickled")


def test_a_put_that_fails_is_not_counted(backend: str) -> None:
    with JoinableQueue(1, capacity=SMALL, backend=backend) as q:
        q.put(0)
        with pytest.raises(stdqueue.Full):
            q.put(1, block=False)
        with pytest.raises(stdqueue.Full):
            q.put(1, timeout=0.05)
        with pytest.raises(RuntimeError, match="cannot be pickled"):
            q.put(_Unpicklable())
        with pytest.raises(stdqueue.Full) as info:
            q.put_many([1, 2], timeout=0.05)
        assert info.value.messages_put == 0  # type: ignore[attr-defined]

        async def cancelled_and_timed_out() -> None:
            with pytest.raises(stdqueue.Full):
                await q.put_async(1, timeout=0.05)
            task = asyncio.ensure_future(q.put_bytes_async(b"x"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled_and_timed_out())
        assert q.unfinished_tasks == 1
        q.get()
        q.task_done()
        q.join(timeout=1)


def test_awaitable_puts_count(jq: JoinableQueue) -> None:
    async def puts() -> None:
        await jq.put_async("a")
        await jq.put_bytes_async(b"b")

    asyncio.run(puts())
    assert jq.unfinished_tasks == 2
    assert jq.get_many(2, timeout=1) == ["a", b"b"]
    jq.task_done()
    jq.task_done()
    jq.join(timeout=1)


def test_join_wakes_on_the_last_task_done_of_another_thread(jq: JoinableQueue,
                                                            long_slice: None) -> None:
    for i in range(3):
        jq.put(i)

    def worker() -> None:
        for _ in range(3):
            jq.get(timeout=5)
            time.sleep(0.05)
            jq.task_done()

    t = threading.Thread(target=worker)
    t.start()
    t0 = time.monotonic()
    jq.join(timeout=5)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert 0.1 < elapsed < 3  # woken


@pytest.mark.parametrize("kind", ["joinable", "simple"])
def test_close_from_another_thread_ends_join_and_get(backend: str, kind: str,
                                                     long_slice: None) -> None:
    q: Queue = JoinableQueue(backend=backend, capacity=SMALL) if kind == "joinable" \
        else SimpleQueue(backend=backend, capacity=SMALL)
    if isinstance(q, JoinableQueue):
        q.put(1)
    error = close_ends_call(q.join if isinstance(q, JoinableQueue) else q.get, q.close,
                            settle=0.2, join=2, within=0.5)
    assert isinstance(error, ValueError)
    assert "is closed" in str(error)


def test_closed_joinable_queue_says_is_closed(backend: str) -> None:
    q = JoinableQueue(backend=backend, capacity=SMALL)
    q.close()
    q.close()  # idempotent
    for call in (lambda: q.put(1), q.get, q.task_done, q.join, lambda: q.unfinished_tasks,
                 lambda: pickle.dumps(q)):
        with pytest.raises(ValueError, match="is closed"):
            call()


def test_named_joinable_queue_attaches_with_its_count(backend: str, name: str) -> None:
    with JoinableQueue(name=name, create=True, capacity=SMALL, backend=backend) as owner:
        assert os.path.exists(_tasks_path(owner))
        other = JoinableQueue(name=name, backend=backend)
        other.put("x")
        assert owner.unfinished_tasks == 1
        assert owner.get(timeout=1) == "x"
        owner.task_done()
        other.join(timeout=1)
        other.close()  # removes nothing
        assert os.path.exists(_tasks_path(owner))
        # a plain Queue has no task count: a JoinableQueue cannot attach to it
        with _created(Queue, name=name + "-plain", capacity=SMALL, backend=backend), \
                pytest.raises(FileNotFoundError, match="not a JoinableQueue"):
            JoinableQueue(name=name + "-plain", backend=backend)
    # the creator's close leaves a named queue and its count; unlink() removes both
    assert os.path.exists(f"{SHM_DIR}/{name}")
    assert os.path.exists(f"{SHM_DIR}/{name}{TASKS_SUFFIX}")
    owner.unlink()
    assert not os.path.exists(f"{SHM_DIR}/{name}")
    assert not os.path.exists(f"{SHM_DIR}/{name}{TASKS_SUFFIX}")


def test_a_task_count_in_the_way_or_broken(backend: str, name: str) -> None:
    tasks = f"{SHM_DIR}/{name}{TASKS_SUFFIX}"
    with open(tasks, "wb") as f:  # left by someone else: neither used nor removed
        f.write(bytes(64))
    try:
        with pytest.raises(FileExistsError):
            JoinableQueue(name=name, create=True, capacity=SMALL, backend=backend)
        assert not os.path.exists(f"{SHM_DIR}/{name}")  # the queue made first is removed
        assert os.path.exists(tasks)
        with _created(Queue, name=name, capacity=SMALL, backend=backend):
            with pytest.raises(FileNotFoundError, match="not ready"):  # no magic
                JoinableQueue(name=name, backend=backend)
            os.truncate(tasks, 100)
            with pytest.raises(OSError, match="not a JoinableQueue"):
                JoinableQueue(name=name, backend=backend)
    finally:
        os.unlink(tasks)


@pytest.mark.parametrize("cls", [JoinableQueue, SimpleQueue])
def test_dropping_the_last_reference_closes_at_once(backend: str, cls: type[Queue]) -> None:
    """No reference cycle: with the garbage collector off, the names go with the object."""
    q = cls(backend=backend, capacity=SMALL)
    path = f"{SHM_DIR}/{q.name}"
    q.put(1)
    q.get()
    if isinstance(q, JoinableQueue):
        q.task_done()
        q.join()
    gc.disable()
    try:
        del q
        assert not os.path.exists(path) and not os.path.exists(path + TASKS_SUFFIX)
    finally:
        gc.enable()


def test_unlink_removes_both_names(jq: JoinableQueue) -> None:
    path = f"{SHM_DIR}/{jq.name}"
    jq.unlink()
    assert not os.path.exists(path) and not os.path.exists(path + TASKS_SUFFIX)
    jq.put(1)  # attached handles keep working
    jq.get()
    jq.task_done()
    jq.join(timeout=1)


def test_pickles_as_a_joinable_queue_sharing_the_count(jq: JoinableQueue) -> None:
    other = pickle.loads(pickle.dumps(jq))
    try:
        assert isinstance(other, JoinableQueue) and other.backend == jq.backend
        jq.put(1)
        assert other.unfinished_tasks == 1
        other.get(timeout=1)
        other.task_done()
        jq.join(timeout=1)
    finally:
        other.close()


def _fork_child_closes(q: JoinableQueue) -> None:
    q.close()


def test_fork_child_does_not_remove_the_count(jq: JoinableQueue) -> None:
    p = _fork.Process(target=_fork_child_closes, args=(jq,))
    p.start()
    p.join(10)
    assert p.exitcode == 0
    assert os.path.exists(_tasks_path(jq))
    jq.put(1)
    jq.get()
    jq.task_done()
    jq.join(timeout=1)


# ---------------------------------------------------------------- JoinableQueue across processes


def _consumer(name: str, backend: str, done: memoryview, slot: int) -> None:
    with JoinableQueue(name=name, backend=backend) as q:
        while True:
            item = q.get(timeout=20)
            if item is None:
                q.task_done()
                break
            time.sleep(0.005)
            done[slot] += 1  # the work, finished before task_done says so
            q.task_done()
    os._exit(0)


def test_task_done_and_join_across_processes_several_consumers(
        cross: tuple[str, str], name: str) -> None:
    producer, consumer = cross
    done = _shared_ints(3)
    with _created(JoinableQueue, name=name, capacity=SMALL, backend=producer) as q:
        procs = [_fork.Process(target=_consumer, args=(name, consumer, done, i))
                 for i in range(3)]
        for p in procs:
            p.start()
        for i in range(60):
            q.put(i)
        q.join(timeout=20)
        assert sum(done) == 60  # join returned only once every task was done
        assert q.unfinished_tasks == 0
        stop_workers(q, procs, 20)
        assert all(n > 0 for n in done)  # they shared the work


def _late_task_done(name: str, backend: str, delay: float) -> None:
    with JoinableQueue(name=name, backend=backend) as q:
        q.get(timeout=10)
        time.sleep(delay)
        q.task_done()
    os._exit(0)


def test_join_wakes_when_the_last_task_done_comes_from_another_process(
        cross: tuple[str, str], name: str, long_slice: None) -> None:
    producer, consumer = cross
    with _created(JoinableQueue, name=name, capacity=SMALL, backend=producer) as q:
        q.put("job")
        p = _fork.Process(target=_late_task_done, args=(name, consumer, 0.2))
        p.start()
        t0 = time.monotonic()
        q.join(timeout=10)
        elapsed = time.monotonic() - t0
        p.join(10)
    assert p.exitcode == 0
    assert 0.15 < elapsed < 3  # woken by the other process's task_done


def _prompt_consumer(name: str, backend: str) -> None:
    with JoinableQueue(name=name, backend=backend) as q:
        while q.get(timeout=20) is not None:
            q.task_done()
        q.task_done()
    os._exit(0)


def test_join_racing_task_done_is_never_missed(cross: tuple[str, str], name: str,
                                               long_slice: None) -> None:
    """Hundreds of rounds where the task_done of another process races the join: a wake-up
    missed (the joiner asleep, the count at zero) would wait out the 10 s slice."""
    producer, consumer = cross
    with _created(JoinableQueue, name=name, capacity=SMALL, backend=producer) as q:
        p = _fork.Process(target=_prompt_consumer, args=(name, consumer), daemon=True)
        p.start()
        try:
            for i in range(300):
                q.put(i)
                t0 = time.monotonic()
                q.join(timeout=5)
                assert time.monotonic() - t0 < 2, f"round {i}"
            q.put(None)
            q.join(timeout=5)
            p.join(10)
            assert p.exitcode == 0
        finally:
            p.kill()
            p.join()


def _joiner(name: str, backend: str, woke: memoryview) -> None:
    with JoinableQueue(name=name, backend=backend) as q:
        q.join(timeout=10)
        woke[0] = time.monotonic_ns()
    os._exit(0)


def test_joiners_in_other_processes_all_wake(cross: tuple[str, str], name: str,
                                             long_slice: None) -> None:
    producer, joiner = cross
    woke = _shared_ints(2)
    with _created(JoinableQueue, name=name, capacity=SMALL, backend=producer) as q:
        q.put("job")
        procs = [_fork.Process(target=_joiner, args=(name, joiner, woke[i:i + 1]))
                 for i in range(2)]
        for p in procs:
            p.start()
        time.sleep(0.3)  # both sleep in join
        assert list(woke) == [0, 0]
        q.get(timeout=1)
        t0 = time.monotonic_ns()
        q.task_done()
        for p in procs:
            p.join(5)
            assert p.exitcode == 0
    assert all(0 < w - t0 < 3_000_000_000 for w in woke)  # woken


def _take_and_hang(name: str, backend: str) -> None:
    q = JoinableQueue(name=name, backend=backend)
    q.get(timeout=10)
    time.sleep(60)  # killed before its task_done


def test_a_consumer_killed_before_task_done_leaves_its_task_unfinished(
        backend: str, name: str) -> None:
    """As with multiprocessing: the count stays up (join(timeout) and unfinished_tasks say
    so), and the other tasks are done as usual."""
    with _created(JoinableQueue, name=name, capacity=SMALL, backend=backend) as q:
        p = _fork.Process(target=_take_and_hang, args=(name, backend))
        p.start()
        q.put("taken by the victim")
        while not q.empty():
            time.sleep(0.01)
        os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join(5)
        q.put("another")
        assert q.get(timeout=1) == "another"
        q.task_done()
        assert q.unfinished_tasks == 1
        with pytest.raises(TimeoutError):
            q.join(timeout=0.2)


def test_threads_share_the_count(jq: JoinableQueue) -> None:
    def work() -> None:
        for i in range(300):
            jq.put(i)
            jq.get(timeout=5)
            jq.task_done()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    jq.join(timeout=1)
    assert jq.unfinished_tasks == 0
    with pytest.raises(ValueError, match="too many"):
        jq.task_done()


def _blocked_get(name: str, backend: str, kind: str) -> None:
    cls = JoinableQueue if kind == "joinable" else SimpleQueue
    q = cls(name=name, backend=backend)
    q.get()  # blocks until killed
    os._exit(1)


def _drain(name: str, backend: str, kind: str, count: int, got: memoryview) -> None:
    cls = JoinableQueue if kind == "joinable" else SimpleQueue
    with cls(name=name, backend=backend) as q:
        for _ in range(count):
            got[q.get(timeout=10)] += 1
            if isinstance(q, JoinableQueue):
                q.task_done()
    os._exit(0)


@pytest.mark.parametrize("kind", ["joinable", "simple"])
def test_a_consumer_killed_in_get_does_not_break_the_others(backend: str, name: str,
                                                           kind: str) -> None:
    cls = JoinableQueue if kind == "joinable" else SimpleQueue
    got = _shared_ints(40)
    with _created(cls, name=name, capacity=SMALL, backend=backend) as q:
        victims = [_fork.Process(target=_blocked_get, args=(name, backend, kind))
                   for _ in range(2)]
        for v in victims:
            v.start()
        others = [_fork.Process(target=_drain, args=(name, backend, kind, 20, got))
                  for _ in range(2)]
        time.sleep(0.3)  # all four block in get
        for v in victims:
            os.kill(v.pid, signal.SIGKILL)  # type: ignore[arg-type]
            v.join(5)
            assert v.exitcode == -signal.SIGKILL
        for p in others:
            p.start()
        for i in range(40):
            q.put(i, timeout=5)
        for p in others:
            p.join(20)
            assert p.exitcode == 0
        assert list(got) == [1] * 40  # each message once, none lost to the killed ones
        assert q.empty()
        if isinstance(q, JoinableQueue):
            q.join(timeout=5)


# ---------------------------------------------------------------- SimpleQueue


def test_simple_queue_put_get_empty(backend: str) -> None:
    with SimpleQueue(backend=backend, capacity=SMALL) as q:
        assert q.empty()
        q.put([1, "two"])
        assert not q.empty()
        assert q.get() == [1, "two"]
        assert q.empty()
        assert q.maxsize == 0


def _simple_child(name: str, backend: str) -> None:
    with SimpleQueue(name=name, backend=backend) as q:
        item = q.get()
        q.put(q.empty())  # the parent put nothing more: True
        q.put(("echo", item))
    os._exit(0)


def test_simple_queue_across_processes(cross: tuple[str, str], name: str) -> None:
    parent, child = cross
    with _created(SimpleQueue, name=name, capacity=SMALL, backend=parent) as q:
        p = _fork.Process(target=_simple_child, args=(name, child))
        p.start()
        q.put({"x": 1})
        p.join(10)
        assert p.exitcode == 0
        assert not q.empty()
        assert q.get() is True
        assert q.get() == ("echo", {"x": 1})
        assert q.empty()


def test_simple_queue_close_semantics(backend: str) -> None:
    q = SimpleQueue(backend=backend, capacity=SMALL)
    path = f"{SHM_DIR}/{q.name}"
    q.close()
    q.close()  # closing twice does not fail, as multiprocessing's
    assert q.closed and not os.path.exists(path)
    for call in (q.get, lambda: q.put(1), q.empty):
        # multiprocessing.Queue says "is closed" in a ValueError; SimpleQueue's pipe
        # raises OSError: this error is both
        with pytest.raises(ValueError, match="is closed") as info:
            call()
        assert isinstance(info.value, OSError)


def test_simple_queue_pickles_as_a_simple_queue(backend: str) -> None:
    with SimpleQueue(backend=backend, capacity=SMALL) as q:
        other = pickle.loads(pickle.dumps(q))
        assert isinstance(other, SimpleQueue) and not isinstance(other, JoinableQueue)
        other.put(5)
        assert q.get() == 5
        other.close()


# ---------------------------------------------------------------- start methods

_START_METHOD = """
import multiprocessing as mp, os, sys
sys.path.insert(0, sys.argv[4])
from fastipc import queue, JoinableQueue, SimpleQueue
from helpers import stop_workers

def child(jq, sq):
    for item in iter(jq.get, None):
        sq.put(item * 2)
        jq.task_done()
    jq.task_done()

if __name__ == "__main__":
    method, backend, prefix = sys.argv[1:4]
    queue.ANONYMOUS_PREFIX = prefix
    ctx = mp.get_context(method)
    with JoinableQueue(backend=backend) as jq, SimpleQueue(backend=backend) as sq:
        procs = [ctx.Process(target=child, args=(jq, sq)) for _ in range(2)]
        for p in procs:
            p.start()
        for i in range(10):
            jq.put(i)
        jq.join(timeout=30)
        assert sorted(sq.get() for _ in range(10)) == [2 * i for i in range(10)]
        assert sq.empty()
        stop_workers(jq, procs, 30)
        print("ok", jq.name, sq.name)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_start_methods(method: str, backend: str, tmp_path: Path) -> None:
    """Both pass to multiprocessing.Process: pickled by name under spawn and forkserver,
    inherited under fork (a fresh interpreter, from which the start methods import the
    child's function)."""
    script = tmp_path / "start_method.py"
    script.write_text(_START_METHOD)
    res = subprocess.run([sys.executable, str(script), method, backend, PREFIX + "sm-",
                          str(HERE)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok ")
    for q in res.stdout.split()[1:]:
        assert not os.path.exists(f"{SHM_DIR}/{q}")
    assert not os.path.exists(f"{SHM_DIR}/{res.stdout.split()[1]}{TASKS_SUFFIX}")


# ---------------------------------------------------------------- CPython's own tests

_HAS_CPYTHON_TESTS = importlib.util.find_spec("test") is not None and \
    importlib.util.find_spec("test._test_multiprocessing") is not None


@pytest.mark.skipif(not _HAS_CPYTHON_TESTS, reason="this Python has no test._test_multiprocessing"
                    " (CPython's test package; some distributions leave it out)")
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_cpython_multiprocessing_tests(method: str, backend: str) -> None:
    """CPython's test_task_done, test_closed_queue_put_get_exceptions and TestSimpleQueue,
    run against fastipc's classes (tests/cpython_joinable.py)."""
    env = dict(os.environ, FASTIPC_BACKEND=backend)
    proc = subprocess.Popen([sys.executable, str(HERE / "cpython_joinable.py"), method],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=HERE)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, out
    assert f"{method} {backend}: ran 4, failures 0, errors 0, skipped 0" in out
    # the queues it made (named after its pid) are gone with it
    assert not [e for e in os.listdir(SHM_DIR) if e.startswith(f"fastipc-queue-{proc.pid}-")]


# Run in a child process: glibc aborts the process (a futex error it calls fatal) when a
# sem_post meets a sem_t whose waiters' count and private flag are garbage.
CORRUPT_COUNT = """
    import sys
    from fastipc import JoinableQueue
    backend, tasks, offset, fill = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with JoinableQueue(backend=backend) as q:
        q.put(1)
        with open(tasks.format(name=q.name), "r+b") as f:  # another process scribbles
            f.seek(offset)
            f.write(bytes.fromhex(fill))
        for call in (lambda: q.put(2), q.task_done, lambda: q.unfinished_tasks,
                     lambda: q.join(timeout=0.05), q.task_done, lambda: q.put(3)):
            try:
                call()
            except (OSError, ValueError) as exc:
                print(type(exc).__name__, exc)
    print("survived")
"""


@pytest.mark.parametrize("offset, fill", [
    (16, "ff" * 32),  # the whole sem_t
    (20, "01000000" "ffffffff"),  # its waiters' count and private flag (64-bit glibc)
    (16, "ffffff7f"),  # the count at SEM_VALUE_MAX
])
def test_a_task_count_scribbled_over_by_another_process(backend: str, offset: int,
                                                         fill: str) -> None:
    """Never trust shared memory: whatever another process wrote over the count, each call
    returns or raises an OSError (or task_done's ValueError), and the process lives on."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(CORRUPT_COUNT), backend,
                        f"{SHM_DIR}/{{name}}{TASKS_SUFFIX}", str(offset), fill],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.endswith("survived\n"), (r.returncode, r.stdout,
                                                                   r.stderr)


# Run in a child process (it forks with a thread blocked in the queue). The forked child
# closes its copy: its descriptors and mappings must go at once, although the parent's
# thread was counted busy in the queue at the fork.
FORK_WHILE_JOINING = """
    import os, sys, threading, time, warnings
    from fastipc import JoinableQueue
    backend = sys.argv[1]
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
    q = JoinableQueue(backend=backend)
    q.put(1)

    def join():
        try:
            q.join(timeout=5)
        except ValueError:
            pass

    t = threading.Thread(target=join)
    t.start()
    time.sleep(0.2)
    pid = os.fork()
    if pid == 0:
        q.close()
        maps = sum(q.name in line for line in open("/proc/self/maps"))
        fds = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                fds.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the listing's own
                pass
        left = maps + sum(q.name in path for path in fds)
        if left:
            print("left in the child:", maps, "mappings", fds)
        os._exit(1 if left else 0)
    _, status = os.waitpid(pid, 0)
    q.close()
    t.join(5)
    assert status == 0, status
    print("ok")
"""


def test_fork_while_a_thread_joins_then_close_in_the_child(backend: str) -> None:
    """A child forked while a thread of the parent waits in join() may close its copy: the
    mappings and descriptors go at once (the parent's join is not the child's)."""
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(FORK_WHILE_JOINING), backend],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.endswith("ok\n"), r.stdout + r.stderr


def test_an_exception_raised_as_the_task_is_counted_takes_it_back(jq: JoinableQueue) -> None:
    """A signal handler that raises as the put's task count returns (before the message goes
    in): the put ends with that exception, and neither a message nor a task is left."""
    with pytest.raises(Stop), raise_after_call_to(joinable._Tasks.add.__code__, "_sem_post"):
        jq.put("job")
    assert jq.unfinished_tasks == 0
    assert jq.empty()
    jq.join(timeout=1)


def test_rm_stale_removes_the_task_count_of_a_killed_owner(backend: str, name: str) -> None:
    """``fastipc ls`` lists a JoinableQueue's task count, alive while its owner runs;
    once the owner is SIGKILLed, ``fastipc rm --stale`` removes it with the queue."""
    def fastipc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fastipc", *args], capture_output=True,
                              text=True, timeout=30)

    with _created(JoinableQueue, name=name, backend=backend) as q:
        q.put(1)
        listing = fastipc("ls").stdout
        assert f"{name}{joinable.TASKS_SUFFIX}" in listing and "queue-tasks" in listing
        fastipc("rm", "--stale", "--match", name)
        assert (SHM_DIR / f"{name}{joinable.TASKS_SUFFIX}").exists()  # alive: kept
        q.get(timeout=1)
        q.task_done()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import os, sys
        from fastipc import JoinableQueue
        q = JoinableQueue(name=sys.argv[1], create=True, backend=sys.argv[2])
        q.put("left")
        os.kill(os.getpid(), 9)
        """), name, backend], capture_output=True, text=True, timeout=30)
    assert out.returncode == -signal.SIGKILL, out.stderr
    assert (SHM_DIR / f"{name}{joinable.TASKS_SUFFIX}").exists()
    out = fastipc("rm", "--stale", "--match", name)
    assert out.returncode == 0, out.stderr
    assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name)]


def test_put_many_takes_block_as_queue_does(backend: str) -> None:
    """``put_many(objs, block=False)`` tries each put once, whatever ``timeout`` says, and
    counts only what went."""
    with JoinableQueue(2, backend=backend) as q:
        with pytest.raises(stdqueue.Full) as info:
            q.put_many([1, 2, 3], -1, block=False)
        assert info.value.messages_put == 2  # type: ignore[attr-defined]
        assert q.unfinished_tasks == 2
        assert [q.get(timeout=1), q.get(timeout=1)] == [1, 2]


# ---------------------------------------------------------------- join_async, put_many_async


def _joiners(q: JoinableQueue) -> int:
    assert q._tasks is not None
    return int(q._tasks._words[joinable._OFF_JOINERS // 4])


def test_join_async_waits_for_the_last_task_done(backend: str, run: Any,
                                                 long_slice: None) -> None:
    """join_async returns at once with no task left, times out with TimeoutError, and is
    woken (not by a periodic look) by the last task_done of another thread; any number of
    coroutines join at once; cancelled, it leaves the joiners' count as it was."""
    async def main() -> None:
        with JoinableQueue(capacity=SMALL, backend=backend) as q:
            await q.join_async()
            await q.join_async(timeout=0)
            await q.put_many_async(["a", "b"])
            assert q.unfinished_tasks == 2
            await times_out(q.join_async(timeout=0.1), 0.08)
            with pytest.raises(TimeoutError):
                await q.join_async(timeout=0)
            with pytest.raises(ValueError):
                await q.join_async(timeout=-1)
            cancelled = asyncio.ensure_future(q.join_async())
            await asyncio.sleep(0.02)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert _joiners(q) == 0

            def worker() -> None:
                for _ in range(2):
                    q.get(timeout=5)
                    time.sleep(0.1)
                    q.task_done()

            joins = [asyncio.ensure_future(q.join_async(timeout=5)) for _ in range(200)]
            await asyncio.sleep(0)
            assert _joiners(q) == 200
            t = threading.Thread(target=worker)
            t0 = time.monotonic()
            t.start()
            await asyncio.gather(*joins)
            elapsed = time.monotonic() - t0
            t.join(5)
            assert 0.15 < elapsed < 3  # woken by the task_done (SLICE is 10 s)
            assert _joiners(q) == 0 and q.unfinished_tasks == 0

    run(main())


def test_join_async_woken_by_another_process(cross: tuple[str, str], name: str, run: Any,
                                             long_slice: None) -> None:
    producer, consumer = cross

    async def main() -> float:
        with _created(JoinableQueue, name=name, capacity=SMALL, backend=producer) as q:
            await q.put_async("job")
            p = _fork.Process(target=_late_task_done, args=(name, consumer, 0.2))
            p.start()
            t0 = time.monotonic()
            await q.join_async(timeout=10)
            elapsed = time.monotonic() - t0
            await asyncio.get_running_loop().run_in_executor(None, p.join, 10)
            assert p.exitcode == 0
            return elapsed

    elapsed = run(main())
    assert 0.15 < elapsed < 3  # woken by the other process's task_done (SLICE is 10 s)


def test_close_from_another_thread_ends_join_async(backend: str, run: Any,
                                                   long_slice: None) -> None:
    async def main() -> None:
        q = JoinableQueue(capacity=SMALL, backend=backend)
        q.put(1)
        joins = [asyncio.ensure_future(q.join_async()) for _ in range(20)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        closer = threading.Thread(target=q.close)
        closer.start()
        done = await asyncio.gather(*joins, return_exceptions=True)
        closer.join(5)
        assert time.monotonic() - t0 < 3  # woken by the close (SLICE is 10 s)
        assert all(isinstance(e, ValueError) and "is closed" in str(e) for e in done)
        assert q.closed
        with pytest.raises(ValueError):
            await q.join_async()

    run(main())


def test_put_many_async_counts_each_message(backend: str, run: Any) -> None:
    """Each message put_many_async puts is one task, whatever ends it: queue.Full, an object
    that cannot be pickled, a cancellation at a random moment."""
    rng = random.Random(3)

    async def main() -> None:
        with JoinableQueue(3, capacity=SMALL, backend=backend) as q:
            with pytest.raises(Full) as full:
                await q.put_many_async(range(5), timeout=0.05)
            assert full.value.messages_put == 3  # type: ignore[attr-defined]
            assert q.unfinished_tasks == 3
            assert q.get_many(5, timeout=1) == [0, 1, 2]
            with pytest.raises(Full) as full:
                await q.put_many_async(range(5), block=False)
            assert full.value.messages_put == 3  # type: ignore[attr-defined]
            assert q.get_many(5, timeout=1) == [0, 1, 2]
            with pytest.raises((AttributeError, TypeError, pickle.PicklingError)) as bad:
                await q.put_many_async([1, lambda: 0])
            assert bad.value.messages_put == 1  # type: ignore[attr-defined]
            assert q.get(timeout=1) == 1
            for _ in range(7):
                q.task_done()
            assert q.unfinished_tasks == 0

            got: list[int] = []
            stop = threading.Event()

            def consume() -> None:
                while not stop.is_set() or q.qsize():
                    try:
                        got.append(q.get(timeout=0.05))
                    except Empty:
                        continue
                    q.task_done()

            c = threading.Thread(target=consume)
            c.start()
            sent, cancels = await put_batches_with_cancels(
                lambda batch: q.put_many_async(batch, timeout=10), 600, rng)
            await q.join_async(timeout=10)  # every task counted is done
            stop.set()
            await asyncio.get_running_loop().run_in_executor(None, c.join, 10)
            assert cancels > 0
            assert got == sent and q.unfinished_tasks == 0

    run(main())


def test_simple_queue_has_the_batch_awaitables(backend: str, run: Any) -> None:
    async def main() -> None:
        with SimpleQueue(capacity=SMALL, backend=backend) as q:
            await q.put_many_async([1, 2, 3])
            assert await q.get_many_async(2, timeout=1) == [1, 2]
            assert await q.get_many_async(timeout=1) == [3]
            task = asyncio.ensure_future(q.get_many_async())
            await asyncio.sleep(0.05)
            q.close()
            with pytest.raises(ValueError) as closed:
                await task
            assert isinstance(closed.value, OSError) and "is closed" in str(closed.value)

    run(main())
