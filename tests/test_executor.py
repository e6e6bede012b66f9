"""fastipc.ProcessPoolExecutor: the concurrent.futures contract, and workers that die (SIGKILL,
os._exit, a segfault, a time limit) failing only the task they held."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import ctypes
import faulthandler
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing import resource_tracker
from pathlib import Path

import pytest

import fastipc
from fastipc import ProcessPoolExecutor, WorkerDied
from fastipc.executor import BrokenProcessPool
from helpers import in_forked_child


@pytest.fixture(scope="module", autouse=True)
def servers() -> None:
    """The fork server and the resource tracker (spawn) are started once per process, before
    any test's fd snapshot: their pipes are not a test's leak. (Not at import: the workers
    of spawn and forkserver import this module.)"""
    resource_tracker.ensure_running()
    if "forkserver" in mp.get_all_start_methods():
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _pool_segments(pid: int) -> set[str]:
    return {p for p in os.listdir("/dev/shm")
            if p.startswith((f"fastipc-queue-{pid}-", f"fastipc-pool-{pid}-"))}


@pytest.fixture(autouse=True)
def no_pool_segments() -> Iterator[None]:
    """Every pool of a test removes its queues and slot table."""
    before = _pool_segments(os.getpid())
    yield
    left = _pool_segments(os.getpid()) - before
    assert not left, f"left in /dev/shm: {sorted(left)}"


# ---------------------------------------------------------------------------- task functions


def double(x: int) -> int:
    return 2 * x


def add(x: int, y: int = 0) -> int:
    return x + y


def fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def pid_of(_: object = None) -> int:
    return os.getpid()


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def kill_self(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def exit_now(code: int) -> None:
    os._exit(code)


def segfault(_: int) -> None:
    faulthandler.disable()  # no dump of the crash on the test's stderr
    ctypes.string_at(0)


def killer_every_tenth(x: int) -> int:
    if x % 10 == 9:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def recorded(path: str, i: int, seconds: float) -> int:
    """Record one run of task ``i`` in ``path`` (O_APPEND), then work for a while."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return i


_state: dict[str, object] = {}


def remember(value: object) -> None:
    _state["value"] = value


def recall(_: object = None) -> object:
    return _state.get("value")


def broken_init() -> None:
    raise RuntimeError("no init")


class Unpicklable(Exception):
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("not this one")


def raise_unpicklable(_: int) -> None:
    raise Unpicklable("x")


def worker_pids() -> list[int]:
    """The children of this process (the pool's workers are children of its collector)."""
    pids = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    return pids


# ---------------------------------------------------------------------------- the contract


def test_submit_map_and_exceptions(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        assert ex.submit(double, 21).result(10) == 42
        assert ex.submit(add, 1, y=2).result(10) == 3
        assert list(ex.map(double, range(50))) == [2 * i for i in range(50)]
        assert list(ex.map(add, range(30), range(30), chunksize=7)) == [2 * i for i in range(30)]
        f = ex.submit(fail, 3)
        with pytest.raises(ValueError, match="bad 3") as info:
            f.result(10)
        assert "in fail" in str(info.value.__cause__)  # the worker's traceback
        with pytest.raises(ValueError):
            list(ex.map(fail, range(3), chunksize=2))
        with pytest.raises(cf.TimeoutError):
            list(ex.map(nap, [2.0], timeout=0.1))
        f = ex.submit(raise_unpicklable, 1)
        with pytest.raises(RuntimeError, match="Unpicklable"):
            f.result(10)
        assert ex.submit(double, 1).result(10) == 2
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(double, 1)


def test_a_task_that_cannot_be_pickled_fails_alone(backend: str) -> None:
    with ProcessPoolExecutor(1, backend=backend) as ex:
        futures = [ex.submit(double, 1), ex.submit(double, lambda: 1), ex.submit(double, 2)]
        with pytest.raises(Exception, match=r"pickle|lambda"):
            futures[1].result(10)
        assert futures[0].result(10) == 2
        assert futures[2].result(10) == 4


def test_wait_as_completed_and_run_in_executor(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        futures = [ex.submit(double, i) for i in range(20)]
        done, not_done = cf.wait(futures, timeout=10)
        assert len(done) == 20 and not not_done
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=10)) == [
            2 * i for i in range(20)]

        async def main() -> list[int]:
            loop = asyncio.get_running_loop()
            return list(await asyncio.gather(
                *(loop.run_in_executor(ex, double, i) for i in range(10))))

        assert asyncio.run(main()) == [2 * i for i in range(10)]


def test_arrays_travel_both_ways(backend: str) -> None:
    np = pytest.importorskip("numpy")
    a = np.arange(1 << 20, dtype=np.float64)
    with ProcessPoolExecutor(1, backend=backend) as ex:
        b = ex.submit(double, a).result(10)
        assert b.dtype == np.float64 and np.array_equal(b, 2 * a)


def test_initializer(backend: str) -> None:
    with ProcessPoolExecutor(2, initializer=remember, initargs=("hello",),
                             backend=backend) as ex:
        assert set(ex.map(recall, range(6))) == {"hello"}


def test_failing_initializer_breaks_the_pool(backend: str) -> None:
    ex = ProcessPoolExecutor(1, initializer=broken_init, backend=backend)
    f = ex.submit(double, 1)
    with pytest.raises(BrokenProcessPool, match="no init"):
        f.result(10)
    with pytest.raises(BrokenProcessPool):
        ex.submit(double, 1)
    ex.shutdown()


def test_max_tasks_per_child(backend: str) -> None:
    with ProcessPoolExecutor(1, max_tasks_per_child=3, backend=backend) as ex:
        pids = [ex.submit(pid_of).result(10) for _ in range(10)]
    counts = Counter(pids)
    assert len(counts) == 4 and max(counts.values()) == 3


def test_cancel_futures_cancels_what_has_not_started(backend: str) -> None:
    ex = ProcessPoolExecutor(1, backend=backend)
    first = ex.submit(nap, 0.5)
    rest = [ex.submit(double, i) for i in range(20)]
    time.sleep(0.2)
    ex.shutdown(wait=True, cancel_futures=True)
    assert first.result() == 0.5
    cancelled = [f for f in rest if f.cancelled()]
    assert len(cancelled) >= 15
    for f in rest:
        assert f.cancelled() or f.result() == 2 * rest.index(f)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        ProcessPoolExecutor(0)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, max_tasks_per_child=0)
    with pytest.raises(ValueError):
        ProcessPoolExecutor(1, task_timeout=-1)
    with pytest.raises(TypeError):
        ProcessPoolExecutor(1, initializer=3)  # type: ignore[arg-type]
    with ProcessPoolExecutor(1) as ex:
        with pytest.raises(TypeError):
            ex.submit(3)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            ex.map(double, [1], chunksize=0)


# ---------------------------------------------------------------------------- workers that die


@pytest.mark.parametrize("how", ["sigkill", "exit", "segfault"])
@in_forked_child
def test_a_dead_worker_fails_only_its_task(backend: str, how: str) -> None:
    fn, arg, code, signum = {
        "sigkill": (kill_self, 1, None, signal.SIGKILL),
        "exit": (exit_now, 3, 3, None),
        "segfault": (segfault, 0, None, signal.SIGSEGV),
    }[how]
    with ProcessPoolExecutor(2, backend=backend) as ex:
        before = [ex.submit(nap, 0.2) for _ in range(4)]
        bad = ex.submit(fn, arg)
        after = [ex.submit(double, i) for i in range(20)]
        with pytest.raises(WorkerDied) as info:
            bad.result(20)
        err = info.value
        assert err.exitcode == code and err.signal == signum
        assert err.pid > 0 and err.pid != os.getpid()
        assert fn.__name__ in err.task and str(err.pid) in str(err)
        assert [f.result(20) for f in before] == [0.2] * 4
        assert [f.result(20) for f in after] == [2 * i for i in range(20)]
        assert ex.submit(double, 5).result(20) == 10  # the pool goes on
        assert err.pid not in set(ex.map(pid_of, range(20)))


@in_forked_child
def test_tasks_a_dying_worker_held_but_had_not_started_run_elsewhere(backend: str) -> None:
    with ProcessPoolExecutor(1, backend=backend) as ex:
        first = ex.submit(pid_of).result(20)
        bad = ex.submit(kill_self, 1)  # the worker takes the next tasks with this one
        behind = [ex.submit(pid_of) for _ in range(3)]
        with pytest.raises(WorkerDied) as info:
            bad.result(20)
        assert info.value.pid == first
        pids = {f.result(20) for f in behind}
        assert first not in pids and len(pids) == 1


@in_forked_child
def test_every_tenth_task_kills_its_worker(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        futures = [ex.submit(killer_every_tenth, i) for i in range(100)]
        _, not_done = cf.wait(futures, timeout=60)
        assert not not_done
        for i, f in enumerate(futures):
            if i % 10 == 9:
                assert isinstance(f.exception(), WorkerDied)
            else:
                assert f.result() == i
        assert ex.submit(double, 1).result(20) == 2


@in_forked_child
def test_kills_at_random_moments_lose_nothing_and_run_nothing_twice(
        backend: str, tmp_path: Path) -> None:
    log = tmp_path / "runs"
    log.touch()
    rng = random.Random(1234)
    n = 150
    with ProcessPoolExecutor(3, backend=backend) as ex:
        futures = [ex.submit(recorded, str(log), i, rng.random() * 0.004) for i in range(n)]
        stop = threading.Event()

        def killer() -> None:
            while not stop.wait(rng.random() * 0.03):
                pids = worker_pids()
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        t = threading.Thread(target=killer)
        t.start()
        try:
            _, not_done = cf.wait(futures, timeout=60)
        finally:
            stop.set()
            t.join()
        assert not not_done, f"{len(not_done)} tasks never ended"
        assert ex.submit(double, 1).result(20) == 2
    runs = Counter(int(line) for line in log.read_text().split())
    died = 0
    for i, f in enumerate(futures):
        assert runs[i] <= 1, f"task {i} ran {runs[i]} times"
        if f.exception() is None:
            assert f.result() == i and runs[i] == 1
        else:
            assert isinstance(f.exception(), WorkerDied)
            died += 1
    assert 0 < died < n


@in_forked_child
def test_time_limits(backend: str) -> None:
    with ProcessPoolExecutor(2, task_timeout=0.5, backend=backend) as ex:
        slow = ex.submit(nap, 10)
        quick = [ex.submit(double, i) for i in range(10)]
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="time limit"):
            slow.result(20)
        assert time.monotonic() - t0 < 5
        assert [f.result(20) for f in quick] == [2 * i for i in range(10)]
        assert ex.submit(nap, 0.05).result(20) == 0.05
        with pytest.raises(TimeoutError):
            ex.submit_with_timeout(0.2, nap, 5).result(20)
        assert ex.submit_with_timeout(None, nap, 0.7).result(20) == 0.7  # no limit for it
        assert ex.submit(double, 2).result(20) == 4


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_start_methods(backend: str, method: str) -> None:
    with ProcessPoolExecutor(1, mp_context=mp.get_context(method), backend=backend) as ex:
        assert ex.submit(double, 4).result(60) == 8
        with pytest.raises(WorkerDied):
            ex.submit(kill_self, 1).result(60)
        assert list(ex.map(double, range(5), chunksize=2)) == [0, 2, 4, 6, 8]
    with ProcessPoolExecutor(1, mp_context=method, backend=backend) as ex:
        assert ex.submit(double, 1).result(60) == 2


# ---------------------------------------------------------------------------- the parent ends

_PARENT = """
import os, signal, sys, time, fastipc
from fastipc import ProcessPoolExecutor
# Ctrl-C raises KeyboardInterrupt, as in a program started from a terminal: a Python started
# with SIGINT ignored (a background job of a non-interactive shell) keeps it ignored otherwise.
signal.signal(signal.SIGINT, signal.default_int_handler)
mode = sys.argv[1]
def nap(s):
    time.sleep(s)
ex = ProcessPoolExecutor(2, backend=sys.argv[2])
futures = [ex.submit(nap, 60) for _ in range(4)]
while len(os.listdir(f"/proc/{os.getpid()}/task")) < 3:
    time.sleep(0.01)
time.sleep(0.3)
pids = []
for t in os.listdir(f"/proc/{os.getpid()}/task"):
    pids += open(f"/proc/{os.getpid()}/task/{t}/children").read().split()
print(" ".join(pids), flush=True)
if mode == "with":
    with ex:
        futures[0].result()
else:
    futures[0].result()
"""


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie of a reaper that has not run


def _run_parent(mode: str, backend: str) -> tuple[subprocess.Popen[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_PARENT), mode, backend],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2, proc.stderr.read() if proc.stderr else ""
    return proc, pids


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGINT-with"])
def test_parent_interrupted_ends_every_worker(backend: str, how: str) -> None:
    proc, pids = _run_parent("with" if how.endswith("with") else "bare", backend)
    try:
        os.kill(proc.pid, signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
        code = proc.wait(20)
    finally:
        proc.kill()
        proc.communicate()
    assert code == (-signal.SIGTERM if how == "SIGTERM" else -signal.SIGINT)
    deadline = time.monotonic() + 2
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert all(_gone(p) for p in pids), "orphaned workers"
    assert not _pool_segments(proc.pid)


def test_parent_sigkill_workers_exit_within_a_second(backend: str) -> None:
    proc, pids = _run_parent("bare", backend)
    try:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(20)
        t0 = time.monotonic()
        while not all(_gone(p) for p in pids) and time.monotonic() - t0 < 1.0:
            time.sleep(0.02)
        assert all(_gone(p) for p in pids), "workers outlived their parent by a second"
        # what the killed parent left (its worker table) is stale: rm --stale removes it
        listed = subprocess.run([sys.executable, "-m", "fastipc", "ls"], capture_output=True,
                                text=True, timeout=60).stdout
        for name in _pool_segments(proc.pid):
            assert name in listed and "pool-slots" in listed, listed
        done = subprocess.run([sys.executable, "-m", "fastipc", "rm", "--stale", "--match",
                               f"fastipc-pool-{proc.pid}-"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert not {n for n in _pool_segments(proc.pid) if n.startswith("fastipc-pool-")}
    finally:
        proc.kill()
        proc.communicate()
        for name in _pool_segments(proc.pid):  # whatever the test did not get to
            os.unlink(f"/dev/shm/{name}")


# ---------------------------------------------------------------------- outgrowing one machine


def score(x: int) -> int:
    return sum(i * i for i in range(x % 50))


def test_the_same_workload_on_dask_distributed() -> None:
    distributed = pytest.importorskip(
        "distributed",
        reason="dask.distributed is not installed (pip install 'fastipc[distributed]')")
    with ProcessPoolExecutor(2) as ex:
        local = sum(ex.map(score, range(200)))
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cl, \
            distributed.Client(cl) as client:
        ex2 = client.get_executor()
        remote = sum(ex2.map(score, range(200)))
    assert local == remote == sum(score(i) for i in range(200))


def test_exports() -> None:
    assert fastipc.ProcessPoolExecutor is ProcessPoolExecutor
    assert issubclass(WorkerDied, RuntimeError)
    assert isinstance(ProcessPoolExecutor(1), cf.Executor)


def test_shutdown_from_a_done_callback_does_not_hang(backend: str) -> None:
    ex = ProcessPoolExecutor(1, backend=backend)
    ended = threading.Event()
    f = ex.submit(double, 1)

    def end(_: cf.Future[int]) -> None:
        ex.shutdown(wait=True)
        ended.set()

    f.add_done_callback(end)
    assert f.result(10) == 2
    assert ended.wait(10)
    ex.shutdown(wait=True)


# ---------------------------------------------------------------------------- hostile tasks


def _exit_3() -> None:
    os._exit(3)


def _raise_value_error() -> None:
    raise ValueError("cannot be unpickled")


class ExitAtUnpickle:
    def __reduce__(self) -> tuple[object, ...]:
        return (_exit_3, ())


class ErrorAtUnpickle:
    def __reduce__(self) -> tuple[object, ...]:
        return (_raise_value_error, ())


def _system_exit() -> None:
    raise SystemExit(1)


class ExitAtUnpickleInTheParent:
    def __reduce__(self) -> tuple[object, ...]:
        return (_system_exit, ())


class ErrorAtPickle:
    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("cannot be pickled")


def identity(x: object) -> object:
    return x


def make(cls: type) -> object:
    return cls()


@in_forked_child
def test_a_task_whose_unpickling_kills_or_raises_in_its_worker_fails_alone(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        dies = ex.submit(identity, ExitAtUnpickle())
        raises = ex.submit(identity, ErrorAtUnpickle())
        with pytest.raises(WorkerDied) as info:
            dies.result(10)
        assert info.value.exitcode == 3
        with pytest.raises(ValueError, match="cannot be unpickled"):
            raises.result(10)
        assert list(ex.map(double, range(20))) == [2 * i for i in range(20)]


@in_forked_child
def test_a_result_that_cannot_be_unpickled_in_the_parent_fails_alone(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        bad = ex.submit(make, ErrorAtUnpickle)
        with pytest.raises(ValueError, match="cannot be unpickled"):
            bad.result(10)
        with pytest.raises(RuntimeError, match="cannot be unpickled: SystemExit"):
            ex.submit(make, ExitAtUnpickleInTheParent).result(10)
        assert ex.submit(double, 4).result(10) == 8


@in_forked_child
def test_a_task_that_cannot_be_pickled_fails_at_once_on_a_new_pool(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex, \
            pytest.raises(TypeError, match="cannot be pickled"):
        ex.submit(identity, ErrorAtPickle()).result(10)


@in_forked_child
def test_workers_that_die_before_any_task_break_the_pool(backend: str) -> None:
    with ProcessPoolExecutor(2, initializer=_exit_3, backend=backend) as ex:
        f = ex.submit(double, 1)
        with pytest.raises(BrokenProcessPool, match="before they took a task"):
            f.result(20)
        with pytest.raises(BrokenProcessPool):
            ex.submit(double, 1)


def test_a_task_that_kills_its_worker_every_time_fails_each_time(backend: str) -> None:
    with ProcessPoolExecutor(2, backend=backend) as ex:
        futures = [ex.submit(kill_self, i) for i in range(12)]
        for f in futures:
            with pytest.raises(WorkerDied):
                f.result(20)
        assert ex.submit(double, 3).result(20) == 6


class Finalized:
    """Writes a byte to a pipe when it is collected."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        os.write(self.fd, b"x")


def touch(obj: object) -> int:
    return 1


class Big:
    pass


def make_big(_: int) -> Big:
    return Big()


def test_no_task_s_objects_outlive_it(backend: str) -> None:
    import gc
    import weakref

    r, w = os.pipe()
    try:
        with ProcessPoolExecutor(1, backend=backend) as ex:
            # in the worker: a task's arguments are freed once it is done
            assert ex.submit(touch, Finalized(w)).result(10) == 1
            ready, _, _ = select_readable(r, 5)
            assert ready, "the worker kept the task's argument"
            # in the parent: a result, and the task's function, are not kept by the pool
            for obj in ex.map(make_big, range(3)):
                ref = weakref.ref(obj)
                del obj
                gc.collect()
                assert ref() is None, "the pool kept a result"
            bound = Big()
            ref = weakref.ref(bound)
            assert ex.submit(touch, 0).result(10) == 1
            f = ex.submit(identity, bound)
            f.result(10)
            del bound, f
            gc.collect()
            assert ref() is None, "the pool kept a task's argument"
    finally:
        os.close(r)
        os.close(w)


def select_readable(fd: int, timeout: float) -> tuple[list[int], list[int], list[int]]:
    import select

    return select.select([fd], [], [], timeout)


def log_to_then_fail(path: str) -> None:
    import logging

    logging.getLogger("concurrent.futures").addHandler(logging.FileHandler(path))
    raise RuntimeError("no init")


def test_a_task_s_traceback_and_a_failing_initializer_s_log_as_the_standard_pool(
        backend: str, tmp_path: Path) -> None:
    import concurrent.futures.process as cfp

    with ProcessPoolExecutor(1, backend=backend) as ex:
        exc = ex.submit(fail, 1).exception(10)
    assert exc is not None and type(exc.__cause__) is cfp._RemoteTraceback
    assert "fail" in exc.__cause__.tb
    log = tmp_path / "log"
    with ProcessPoolExecutor(1, initializer=log_to_then_fail, initargs=(str(log),),
                             backend=backend) as ex, pytest.raises(BrokenProcessPool):
        ex.submit(double, 1).result(10)
    assert "Exception in initializer:" in log.read_text()
    assert "RuntimeError: no init" in log.read_text()


@pytest.mark.parametrize("limit", [float("inf"), 1e300, 1 << 70])
def test_an_infinite_or_huge_time_limit_is_no_limit(backend: str, limit: float) -> None:
    with ProcessPoolExecutor(1, task_timeout=limit, backend=backend) as ex:
        assert ex.submit(double, 2).result(10) == 4
        assert ex.submit_with_timeout(limit, double, 3).result(10) == 6


def with_own_alarm_handler(seconds: float) -> str:
    signal.signal(signal.SIGALRM, lambda *_: None)
    time.sleep(seconds)
    return "ran to its end"


def alarm_is_default(_: object = None) -> bool:
    return signal.getsignal(signal.SIGALRM) is signal.SIG_DFL


@in_forked_child
def test_a_task_with_a_sigalrm_handler_of_its_own_is_held_to_its_limit(backend: str) -> None:
    with ProcessPoolExecutor(1, backend=backend) as ex:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="time limit"):
            ex.submit_with_timeout(0.3, with_own_alarm_handler, 3).result(10)
        assert time.monotonic() - t0 < 2.5
        # a task without a limit that sets a handler leaves none for the next limited one
        assert ex.submit(with_own_alarm_handler, 0).result(10) == "ran to its end"
        assert ex.submit_with_timeout(5, alarm_is_default).result(10)
        assert ex.submit(double, 2).result(10) == 4


def test_a_forked_child_leaves_its_parent_s_pool_alone(backend: str) -> None:
    code = textwrap.dedent("""
        import os, sys
        from fastipc import ProcessPoolExecutor
        ex = ProcessPoolExecutor(2, backend=sys.argv[1])
        assert ex.submit(abs, -1).result(10) == 1
        pid = os.fork()
        if pid == 0:
            try:
                ex.submit(abs, -2)
            except RuntimeError as exc:
                assert "forked child" in str(exc), exc
            else:
                os._exit(3)
            ex.shutdown()  # nothing to do in the child
            with ProcessPoolExecutor(1, backend=sys.argv[1]) as own:
                assert own.submit(abs, -4).result(10) == 4
            sys.exit(0)  # a normal exit: its atexit must not wait on the parent's pool
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert ex.submit(abs, -3).result(10) == 3
        ex.shutdown()
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code, backend], capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "ok", out.stderr


def _has_cpython_tests() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("test.test_concurrent_futures") is not None
    except ImportError:
        return False


@pytest.mark.skipif(not _has_cpython_tests(), reason="this Python has no "
                    "test.test_concurrent_futures (CPython's test package)")
def test_cpython_process_pool_tests(backend: str) -> None:
    """CPython's own tests of its process pool that fit fastipc's (tests/cpython_executor.py)."""
    env = dict(os.environ, FASTIPC_BACKEND=backend)
    here = Path(__file__).parent
    out = subprocess.run([sys.executable, str(here / "cpython_executor.py")], env=env,
                         cwd=here, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stdout + out.stderr
    assert ": ran 19, failures 0, errors 0, skipped 0" in out.stdout
