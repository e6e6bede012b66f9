"""``fastipc.ProcessPoolExecutor``: a ``concurrent.futures`` process pool over
:class:`fastipc.Queue` that survives its workers' deaths.

>>> from fastipc import ProcessPoolExecutor
>>> with ProcessPoolExecutor(max_workers=2) as ex:
...     list(ex.map(abs, [-1, -2, 3]))
[1, 2, 3]

How it works. Each worker has its own task queue, fed by the parent, so the parent always
knows what it handed to whom; every worker puts its results on one result queue, which a
collector thread in the parent drains in batches (``get_many``). Before it calls a task's
function, a worker writes the task's number into its own slot of a small shared-memory
table. When a worker dies, a reaper thread (which waits on the workers' sentinels) puts a
notice on the result queue behind every result the worker delivered; the collector then
fails the task named in the dead worker's slot (if its result did not come) with
:class:`WorkerDied`, hands every other task the worker held back to the pool (it never
started them), and starts a replacement. No task runs twice and none is lost.

A per-task time limit (``task_timeout=`` or :meth:`ProcessPoolExecutor.submit_with_timeout`)
is an interval timer armed in the worker around the call, with ``SIGALRM`` left at its
default action: a task over its limit ends its worker at once, whatever it is doing (a C
call holding the GIL included), and its future fails with ``TimeoutError``.

Workers end with their parent: each one sets ``PR_SET_PDEATHSIG`` and watches a pidfd of
the parent, so a parent killed with SIGKILL leaves no worker behind for more than a moment.
On SIGTERM (when its handler is the default one) and Ctrl-C the parent ends its workers and
removes its queues before it exits.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import ctypes
import errno
import glob
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import re
import reprlib
import select
import signal
import sys
import threading
import time
import traceback
import uuid
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures.process import (
    BrokenProcessPool,
    _RemoteTraceback,  # the standard pool's: a drop-in
)
from dataclasses import dataclass
from multiprocessing.connection import wait as _wait_ready
from typing import Any, Literal, Optional

from fastipc import shm
from fastipc._core import check_int, check_timeout
from fastipc.queue import Full, Queue, QueueInfo, _dumps_oob

__all__ = ["BrokenProcessPool", "ProcessPoolExecutor", "WorkerDied"]

# Ring sizes: a message up to half a ring travels through it (larger ones in a segment of
# their own, which costs more), so 32 MiB rings carry 8-16 MiB arrays. The result ring is
# one per pool; each worker's task ring shares 64 MiB with the others (4-32 MiB each).
# Where /dev/shm is too small for them, smaller rings are made (down to 1 MiB).
_RING_MAX = 1 << 25
_TASK_RINGS = 1 << 26
_RING_MIN = 1 << 20
_BATCH = 256  # tasks a worker takes at once, results the collector takes at once
_TARGET = 0.002  # seconds of queued work per worker the parent aims for
_MAX_QUEUED = 256  # tasks queued to one worker at most
_STILLBORN_MAX = 4  # (plus max_workers) workers in a row dead before a task: broken
_LIMIT_MAX = float(1 << 31)  # seconds: a time limit this long or longer is none
# int64 words per worker slot: the number of the task it runs or last ran, and the number
# of the task its watchdog killed it for (over its time limit, SIGALRM not at its default)
_SLOT = 2
_GRACE = 0.05  # seconds past a time limit (plus a tenth of it) before the watchdog acts


class WorkerDied(RuntimeError):
    """The worker process running a task died before the task returned (SIGKILL, the OOM
    killer, a segfault, ``os._exit``). Only that task fails: the pool replaces the worker
    and goes on.

    ``pid``: the worker's pid; ``exitcode``: its exit status, or ``None`` when a signal
    ended it; ``signal``: that signal's number, or ``None``; ``task``: a short description
    of the call (``"fn(1, 2)"``)."""

    def __init__(self, pid: int, exitcode: Optional[int], signum: Optional[int],
                 task: str) -> None:
        if signum is not None:
            try:
                how = f"was killed by signal {signum} ({signal.Signals(signum).name})"
            except ValueError:
                how = f"was killed by signal {signum}"
        else:
            how = f"exited with status {exitcode}"
        super().__init__(f"the worker process {pid} {how} while running {task}")
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signum
        self.task = task

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerDied, (self.pid, self.exitcode, self.signal, self.task))


def _rebuild_exc(exc: BaseException, tb: str) -> BaseException:
    exc.__cause__ = _RemoteTraceback(tb)  # type: ignore[arg-type]  # typeshed: it is a str
    return exc


class _Raised:
    """An exception raised by a task, pickled with its traceback as text."""

    def __init__(self, exc: BaseException) -> None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        self.exc = exc
        self.tb = f'\n"""\n{tb}"""'

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_exc, (self.exc, self.tb))


def _pack(obj: Any) -> tuple[bytes, tuple[Any, ...]]:
    """``obj`` pickled ahead of the queue (its buffers travel out of band all the same), to
    be unpickled by :func:`_unpack` where an error fails one task alone: a worker unpickles
    a task's call after it wrote the task in its slot (so an unpickling that kills it fails
    that task, instead of every worker it is handed to), and the parent unpickles a result
    outside the queue (so a result that cannot be unpickled fails its task, not the pool).
    A plain tuple: the queue pickles it at C speed."""
    data, buffers = _dumps_oob(obj)
    return data, tuple(buffers)


def _unpack(packed: tuple[bytes, tuple[Any, ...]]) -> Any:
    return pickle.loads(packed[0], buffers=packed[1])


def _describe(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    if fn is _process_chunk:
        fn, chunk = args
        return f"{_name_of(fn)} over a chunk of {len(chunk)} items of map()"
    r = reprlib.Repr()
    r.maxstring = r.maxother = 40
    parts = [r.repr(a) for a in args] + [f"{k}={r.repr(v)}" for k, v in kwargs.items()]
    return f"{_name_of(fn)}({', '.join(parts)})"


def _name_of(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))


def _process_chunk(fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]) -> list[Any]:
    """One task of ``map(chunksize=n)``: ``fn`` over a chunk of argument tuples."""
    return [fn(*args) for args in chunk]


# ---------------------------------------------------------------------------- the worker

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """End this process when ``parent`` ends: PR_SET_PDEATHSIG (delivered when the thread
    that made this process exits; under forkserver, when the fork server does, which ends
    with the parent), and a thread that waits on a pidfd of the parent (or polls it where
    pidfds are missing) and exits the process at once."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:
        os._exit(1)
    except (OSError, AttributeError):
        fd = -1

    def watch() -> None:
        if fd >= 0:
            select.select([fd], [], [])
        else:
            while True:
                try:
                    os.kill(parent, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
                time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="fastipc-parent-watch", daemon=True).start()


def _worker(index: int, tasks: Queue, results: Queue, slots: shm.SharedMemory, parent: int,
            initializer: Optional[Callable[..., Any]], initargs: tuple[Any, ...]) -> None:
    """The main function of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends its workers on Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the time limit of a task
    _die_with_parent(parent)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            logging.getLogger("concurrent.futures").critical(  # as the standard pool
                "Exception in initializer:", exc_info=True)
            results.put(("init", index, _Raised(exc)))
            return
    words = slots.buf.cast("q")
    try:
        _serve(words, index * _SLOT, tasks, results)
    finally:
        words.release()


class _Watchdog:
    """A worker's second guard of time limits, for a task that keeps the interval timer's
    SIGALRM from ending its worker (a handler of its own): a thread that, once a task is
    past its limit and a grace, writes the task's number in the slot's second word and
    ends the process with SIGKILL (the parent then fails the task with TimeoutError)."""

    def __init__(self, words: Any, slot: int) -> None:
        self.words = words
        self.slot = slot
        self.cond = threading.Condition()
        self.tid = 0
        self.end = 0.0
        threading.Thread(target=self.run, name="fastipc-pool-watchdog", daemon=True).start()

    def arm(self, tid: int, limit: float) -> None:
        with self.cond:
            self.tid = tid
            self.end = time.monotonic() + limit * 1.1 + _GRACE
            self.cond.notify()

    def disarm(self) -> None:
        self.tid = 0  # the watchdog checks it again before it acts

    def run(self) -> None:
        with self.cond:
            while True:
                left = self.end - time.monotonic()
                if not self.tid:
                    self.cond.wait()
                elif left > 0:
                    self.cond.wait(left)
                else:
                    self.words[self.slot + 1] = self.tid
                    os.kill(os.getpid(), signal.SIGKILL)


def _serve(words: Any, slot: int, tasks: Queue, results: Queue) -> None:
    """A worker's loop: take tasks, run them, put their results, until told to stop."""
    get_many, put = tasks.get_many, results.put
    perf = time.perf_counter
    setitimer, real = signal.setitimer, signal.ITIMER_REAL
    getsignal, alrm, dfl = signal.getsignal, signal.SIGALRM, signal.SIG_DFL
    watchdog: Optional[_Watchdog] = None
    pack = _pack
    while True:
        batch = get_many(_BATCH)
        batch.reverse()
        while batch:
            msg = batch.pop()
            if msg is None:
                return
            tid, call, limit = msg
            words[slot] = tid
            t0 = perf()
            try:
                fn, args, kwargs = _unpack(call)
                if limit:
                    if getsignal(alrm) is not dfl:  # an earlier task set a handler
                        signal.signal(alrm, dfl)
                    if watchdog is None:
                        watchdog = _Watchdog(words, slot)
                    watchdog.arm(tid, limit)
                    setitimer(real, limit)
                    try:
                        value = fn(*args, **kwargs)
                    finally:
                        setitimer(real, 0)
                        watchdog.disarm()
                else:
                    value = fn(*args, **kwargs)
                ok, out = True, pack(value)
            except BaseException as exc:
                ok, out = False, pack(_checked(exc))
            # nothing of a task outlives it here (its arguments' finalizers run now)
            msg = call = fn = args = kwargs = value = None
            put((tid, ok, out, perf() - t0))
            out = None  # type: ignore[assignment]


def _checked(exc: BaseException) -> _Raised:
    """The exception of a task, or a RuntimeError that describes it when it cannot make the
    trip to the parent (not picklable, or not unpicklable)."""
    raised = _Raised(exc)
    try:
        pickle.loads(pickle.dumps(raised))
    except Exception as why:
        raised = _Raised(RuntimeError(
            f"the task raised {type(exc).__name__}: {exc}; it cannot be sent to the parent "
            f"({type(why).__name__}: {why})"))
        raised.tb = _Raised(exc).tb
    return raised


# ---------------------------------------------------------------------------- the parent


@dataclass(slots=True, eq=False)
class _Work:
    """One submitted call: its task id, future, function and arguments, time limit, and the
    worker running it (None while queued)."""

    tid: int
    future: cf.Future[Any]
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    limit: float
    worker: Optional[_Proc] = None
    running: bool = False


class _Proc:
    """A worker as the parent sees it."""

    __slots__ = ("assigned", "budget", "index", "pid", "process", "queue", "retiring")

    def __init__(self, index: int, process: mp.process.BaseProcess, queue: Queue,
                 budget: Optional[int]) -> None:
        self.index = index
        self.process = process
        self.queue = queue
        self.assigned: dict[int, _Work] = {}  # handed to it, result not back yet
        self.budget = budget  # tasks it may still be given (max_tasks_per_child)
        self.retiring = False  # told to exit (budget spent, or the pool is shutting down)
        self.pid = 0


def _discard_queue(q: Queue) -> None:
    """Close a queue this process owns and remove its name and every file beside it (the
    segments of large messages still in it, its spill files): ``unlink()``."""
    try:
        q.unlink()
    except FileNotFoundError:
        pass
    q.close()


_live: weakref.WeakSet[ProcessPoolExecutor] = weakref.WeakSet()
# a forked child's exit and SIGTERM must not touch its parent's pools
os.register_at_fork(after_in_child=_live.clear)
_sigterm_installed = False


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM with no handler of the program's own: end every pool's workers, remove
    their queues, then die of SIGTERM as the process would have."""
    for ex in list(_live):
        ex._emergency()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm() -> None:
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True
    except ValueError:  # not the main interpreter
        pass


def _exiting_on_interrupt() -> bool:
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


@atexit.register
def _at_exit() -> None:
    """At interpreter exit, as the standard pool: wait for the work submitted to every pool
    not shut down, unless the program is ending on Ctrl-C (then end its workers now)."""
    for ex in list(_live):
        if _exiting_on_interrupt():
            ex._terminate()
        else:
            ex.shutdown(wait=True)




class ProcessPoolExecutor(cf.Executor):
    """A drop-in for ``concurrent.futures.ProcessPoolExecutor`` whose workers may die.

    ``max_workers``: processes (default ``os.cpu_count()``); ``mp_context``: a
    multiprocessing context or start method name (default: the Python version's default);
    ``initializer(*initargs)`` runs in every worker before its first task (if it raises,
    the pool is broken, as the standard one: ``BrokenProcessPool``);
    ``max_tasks_per_child``: a worker exits after that many tasks and a new one replaces it.
    ``task_timeout``: a time limit in seconds for every task (None: none); a task over it
    fails with ``TimeoutError`` and its worker is killed and replaced. ``backend``: the
    backend of the pool's queues ("native" or "pure", default: fastipc's).
    """

    def __init__(self, max_workers: Optional[int] = None, mp_context: Any = None,
                 initializer: Optional[Callable[..., Any]] = None, initargs: tuple[Any, ...] = (),
                 *, max_tasks_per_child: Optional[int] = None,
                 task_timeout: Optional[float] = None, backend: Optional[str] = None) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        max_workers = check_int(max_workers, "max_workers", -(1 << 31), 1 << 16)
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if mp_context is None or isinstance(mp_context, str):
            mp_context = mp.get_context(mp_context)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            max_tasks_per_child = check_int(max_tasks_per_child, "max_tasks_per_child",
                                            -(1 << 62), 1 << 62)
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._limit = self._check_limit(task_timeout)
        self._max_workers = max_workers
        self._ctx = mp_context
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_child
        self._backend = backend
        self._lock = threading.Lock()
        self._tids = itertools.count(1)
        self._pending: deque[_Work] = deque()
        self._works: dict[int, _Work] = {}
        self._procs: list[Optional[_Proc]] = [None] * max_workers
        self._retired: list[_Proc] = []  # told to exit, not reaped yet
        self._shutdown = False
        self._terminated = False
        self._late: list[tuple[cf.Future[Any], bool, Any]] = []  # to settle without the lock
        self._broken: Optional[str] = None
        self._started = False
        self._pid = 0  # the process that started the pool: the only one that may use it
        self._stopped = threading.Event()  # set once the collector has cleaned up
        self._stillborn = 0  # workers in a row that died before they took a task (collector)
        self._avg = 0.0  # moving average of a task's run time in a worker (seconds)
        self._cap = 2  # tasks queued to one worker at most, from _avg
        self._collector: Optional[threading.Thread] = None
        self._reaper: Optional[threading.Thread] = None
        self._results: Optional[Queue] = None
        self._slots: Optional[shm.SharedMemory] = None
        self._words: Any = None
        self._wake_r = self._wake_w = -1
        self._sentinels: dict[int, _Proc] = {}
        self._by_pid: dict[int, _Proc] = {}  # the workers whose end is not handled yet
        _install_sigterm()

    @staticmethod
    def _check_limit(limit: Optional[float]) -> float:
        if limit is None:
            return 0.0
        t = check_timeout(limit)  # TypeError, ValueError for NaN and < 0; inf: -1
        if t == 0:
            raise ValueError("a task time limit must be > 0 seconds")
        if t < 0 or t >= _LIMIT_MAX:  # infinite, or beyond what an interval timer takes
            return 0.0
        return max(t, 1e-6)

    # ---------------------------------------------------------------- submitting
    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; returns its Future."""
        return self._submit(fn, args, kwargs, self._limit)

    def submit_with_timeout(self, timeout: Optional[float], fn: Callable[..., Any], /,
                            *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """:meth:`submit` with a time limit of its own for this task (None: no limit, even
        if the pool has a ``task_timeout``)."""
        return self._submit(fn, args, kwargs, self._check_limit(timeout))

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                limit: float) -> cf.Future[Any]:
        if not callable(fn):
            raise TypeError(f"{type(fn).__name__!r} object is not callable")
        self._check_owner()
        future: cf.Future[Any] = cf.Future()
        with self._lock:
            if self._broken:
                raise BrokenProcessPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if not self._started:
                self._start()
            work = _Work(next(self._tids), future, fn, args, kwargs, limit)
            self._works[work.tid] = work
            proc = self._roomiest()
            if proc is None or self._pending:
                self._pending.append(work)
            else:
                self._give(proc, [work])
            late = self._take_late()
        self._settle(late)
        return future

    def _check_owner(self) -> None:
        """A forked child has a copy of its parent's pool, without its threads: it must
        make a pool of its own (checked before the lock, which a parent's thread may have
        held at the fork)."""
        if self._started and self._pid != os.getpid():
            raise RuntimeError(
                f"this ProcessPoolExecutor belongs to process {self._pid}, of which this "
                f"process ({os.getpid()}) is a forked child: make a pool of its own")

    def _take_late(self) -> list[tuple[cf.Future[Any], bool, Any]]:
        late, self._late = self._late, []
        return late

    @staticmethod
    def _settle(done: list[tuple[cf.Future[Any], bool, Any]]) -> None:
        """Set the outcome of futures (without the lock: their callbacks run here)."""
        for future, ok, value in done:
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: Optional[float] = None, chunksize: int = 1) -> Iterator[Any]:
        """``concurrent.futures.Executor.map``: results in order; ``chunksize`` items per
        task (each chunk is one task in a worker; its time limit, if any, is the pool's
        limit times the chunk's size)."""
        chunksize = check_int(chunksize, "chunksize", -(1 << 62), 1 << 62)
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        end = None if timeout is None else time.monotonic() + check_timeout(timeout)
        if chunksize == 1:
            futures = [self.submit(fn, *args) for args in zip(*iterables, strict=False)]
            return self._results_of(futures, end, chained=False)
        it = zip(*iterables, strict=False)  # map() stops at the shortest
        futures = []
        while True:
            chunk = tuple(itertools.islice(it, chunksize))
            if not chunk:
                break
            limit = self._limit * len(chunk)
            futures.append(self._submit(_process_chunk, (fn, chunk), {}, limit))
        return self._results_of(futures, end, chained=True)

    @staticmethod
    def _results_of(futures: list[cf.Future[Any]], end: Optional[float],
                    chained: bool) -> Iterator[Any]:
        def results() -> Iterator[Any]:
            try:
                futures.reverse()
                # no reference to a result (or its future) is kept once it was yielded
                while True:
                    if not futures:
                        break
                    left = None if end is None else max(0.0, end - time.monotonic())
                    # concurrent.futures.TimeoutError, as the stdlib
                    if not chained:
                        yield futures.pop().result(left)
                        continue
                    chunk = futures.pop().result(left)
                    chunk.reverse()
                    while True:
                        if not chunk:
                            break
                        yield chunk.pop()
            finally:
                for f in futures:
                    f.cancel()

        return results()

    # ---------------------------------------------------------------- dispatch (lock held)
    def _roomiest(self) -> Optional[_Proc]:
        """The worker with the fewest tasks queued, if it has room for one more."""
        best: Optional[_Proc] = None
        n = self._cap
        for proc in self._procs:
            if proc is not None and not proc.retiring and len(proc.assigned) < n:
                best, n = proc, len(proc.assigned)
        return best

    def _give(self, proc: _Proc, works: list[_Work]) -> None:
        """Hand ``works`` to ``proc``: mark their futures running (dropping the cancelled
        ones) and put them on its queue; what does not fit goes back to the pending
        front."""
        # A task is recorded as the worker's before its put: the collector takes results
        # without the lock. One put each: put_many loses the batch before an object whose
        # pickling raises PicklingError, so a batch would leave the parent unsure of what
        # went.
        assigned = proc.assigned
        put = proc.queue.put
        sent = 0
        rest: list[_Work] = []
        for i, work in enumerate(works):
            if not work.running:
                if not work.future.set_running_or_notify_cancel():
                    del self._works[work.tid]
                    continue
                work.running = True
            work.worker = proc
            assigned[work.tid] = work
            try:
                put((work.tid, _pack((work.fn, work.args, work.kwargs)), work.limit),
                    False)
            except Full:
                rest = works[i:]
            except Exception as exc:  # it cannot be pickled: it fails alone
                rest = works[i + 1:]
                del self._works[work.tid]
                self._late.append((work.future, False, exc))
            else:
                sent += 1
                continue
            del assigned[work.tid]
            work.worker = None
            break
        self._pending.extendleft(reversed(rest))
        if proc.budget is not None:
            proc.budget -= sent
            if proc.budget <= 0:
                self._retire(proc)

    def _fill(self) -> None:
        """Hand pending tasks to workers with room."""
        pending = self._pending
        while pending and not self._terminated:
            proc = self._roomiest()
            if proc is None:
                return
            room = self._cap - len(proc.assigned)
            if proc.budget is not None:
                room = min(room, proc.budget)
            batch = [pending.popleft() for _ in range(min(room, len(pending)))]
            self._give(proc, batch)
            if pending and batch and pending[0] is batch[0]:
                return  # its queue is full: wait for results

    def _retire(self, proc: _Proc) -> None:
        """Tell ``proc`` to exit once its queued tasks are done."""
        if proc.retiring:
            return
        proc.retiring = True
        try:
            proc.queue.put(None, False)
        except (Full, ValueError):
            os.kill(proc.pid, signal.SIGKILL)  # cannot happen with an unbounded queue
        self._procs[proc.index] = None
        self._retired.append(proc)

    # ---------------------------------------------------------------- workers (collector)
    def _start(self) -> None:
        """First submit: the queues, the slot table, the collector and the reaper (lock
        held). The collector starts the workers, so that their PDEATHSIG is tied to it."""
        try:
            self._results = self._queue(_RING_MAX)
            name = f"fastipc-pool-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self._slots = shm.SharedMemory(name, create=True, size=8 * _SLOT * self._max_workers)
            self._words = self._slots.buf.cast("q")
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except BaseException:  # /dev/shm full, out of fds...: nothing is left behind
            self._release()
            raise
        self._started = True
        self._pid = os.getpid()
        _live.add(self)
        _install_sigterm()
        self._collector = threading.Thread(target=self._collect, name="fastipc-pool-collector",
                                           daemon=True)
        self._reaper = threading.Thread(target=self._reap, name="fastipc-pool-reaper",
                                        daemon=True)
        self._collector.start()
        self._reaper.start()

    def _queue(self, capacity: int) -> Queue:
        """A queue whose ring takes ``capacity`` bytes (a power of two at most), or less
        where /dev/shm has no room for it."""
        capacity = 1 << (capacity.bit_length() - 1)
        while True:
            try:
                return Queue(capacity=capacity, backend=self._backend)
            except OSError as exc:
                if exc.errno != errno.ENOSPC or capacity <= _RING_MIN:
                    raise
                capacity //= 2

    def _spawn(self, index: int) -> None:
        """Start the worker of slot ``index`` (collector thread, lock held)."""
        assert self._results is not None and self._slots is not None
        q = self._queue(max(1 << 22, min(_RING_MAX, _TASK_RINGS // self._max_workers)))
        if self._terminated:  # SIGTERM came while it was made
            _discard_queue(q)
            raise RuntimeError("the pool was terminated")
        self._words[index * _SLOT] = self._words[index * _SLOT + 1] = 0
        process = self._ctx.Process(
            target=_worker, name=f"fastipc-pool-worker-{index}", daemon=True,
            args=(index, q, self._results, self._slots, os.getpid(), self._initializer,
                  self._initargs))
        try:
            with warnings.catch_warnings():  # 3.12+: fork() of a process with threads
                warnings.simplefilter("ignore", DeprecationWarning)
                process.start()
        except BaseException:
            _discard_queue(q)
            raise
        proc = _Proc(index, process, q, self._max_tasks)
        proc.pid = process.pid or 0
        self._procs[index] = proc
        self._sentinels[process.sentinel] = proc
        self._by_pid[proc.pid] = proc
        os.write(self._wake_w, b"x")

    def _reap(self) -> None:
        """The reaper thread: a notice on the result queue for each worker that ends."""
        assert self._results is not None
        watched: dict[int, _Proc] = {}
        while True:
            with self._lock:
                watched = dict(self._sentinels)
            ready = _wait_ready([self._wake_r, *watched])
            for fd in ready:
                assert isinstance(fd, int)
                if fd == self._wake_r:
                    try:
                        if os.read(self._wake_r, 4096) == b"":
                            return
                    except BlockingIOError:
                        pass
                    if self._stopped.is_set():
                        return
                    continue
                proc = watched[fd]
                proc.process.join()
                with self._lock:
                    self._sentinels.pop(fd, None)
                try:
                    self._results.put(("died", proc.pid))
                except ValueError:  # closed: the pool is gone
                    return

    def _collect(self) -> None:
        """The collector thread: results, worker deaths, dispatch, and the end."""
        assert self._results is not None
        get_many = self._results.get_many
        done: list[tuple[cf.Future[Any], bool, Any]] = []
        try:
            with self._lock:
                for i in range(self._max_workers):
                    self._replace(i, done)
                self._fill()
                done += self._take_late()
            self._settle(done)
            del done[:]
            while True:
                if self._handle(get_many(_BATCH), done):
                    break
        except BaseException as exc:  # no future may wait for ever on a collector gone
            with self._lock:
                self._break(f"the pool's collector thread failed: {exc!r}", done)
            self._settle(done)
            raise
        finally:
            self._finish()

    def _handle(self, msgs: list[Any], done: list[tuple[cf.Future[Any], bool, Any]]) -> bool:
        """The collector's work on a batch of messages; True once the pool is done. A
        method of its own, so that nothing of a task (its result, its function) stays
        referenced while the collector waits for the next batch; ``done`` is emptied."""
        # results without the lock (submit records a task as its worker's before it puts
        # it); the rest with it
        others = []
        works = self._works
        avg = self._avg
        for msg in msgs:
            tid = msg[0]
            if type(tid) is int:
                work = works.pop(tid, None)
                if work is None:
                    continue
                del work.worker.assigned[tid]  # type: ignore[union-attr]
                avg += (msg[3] - avg) * 0.05
                try:
                    value = _unpack(msg[2])
                except BaseException as exc:  # it cannot be unpickled: its task fails
                    if not isinstance(exc, Exception):  # SystemExit...: not the caller's
                        why = RuntimeError(f"the result cannot be unpickled: {exc!r}")
                        why.__cause__ = exc
                        exc = why
                    done.append((work.future, False, exc))
                else:
                    done.append((work.future, msg[1], value))
            else:
                others.append(msg)
        if done:
            self._stillborn = 0
            self._avg = avg
            self._cap = (max(1, min(_MAX_QUEUED, int(_TARGET / avg)))
                         if avg > 0 else _MAX_QUEUED)
        with self._lock:
            for msg in others:
                if msg[0] == "died":
                    self._died(self._by_pid.pop(msg[1]), done)
                elif msg[0] == "init":
                    self._break(f"a worker's initializer raised: {msg[2]!r}", done)
            if self._pending:
                self._fill()
            done += self._take_late()
            finished = bool(self._shutdown or self._broken) and not self._works
        self._settle(done)
        del done[:]
        return finished

    def _replace(self, index: int, done: list[tuple[cf.Future[Any], bool, Any]]) -> None:
        """Start the worker of slot ``index``; if that fails, the pool is broken (lock
        held)."""
        try:
            self._spawn(index)
        except Exception as exc:
            self._break(f"cannot start a worker process: {exc!r}", done)

    def _died(self, proc: _Proc, done: list[tuple[cf.Future[Any], bool, Any]]) -> None:
        """A worker ended: fail the task it was running, give back the others, replace it
        (lock held; every result it delivered was taken before this notice)."""
        code = proc.process.exitcode
        signum = -code if code is not None and code < 0 else None
        running = self._words[proc.index * _SLOT]
        watchdog = running and self._words[proc.index * _SLOT + 1] == running
        # workers that die before they take any of the tasks waiting for them (a broken
        # environment, a start method that cannot import the program...) would be
        # replaced for ever: after a few in a row with no result in between, the pool is
        # broken (a result resets the count). SIGKILL comes from outside (kill -9, the
        # OOM killer), not from the worker's own start: it does not count.
        if proc.assigned and not running and signum != signal.SIGKILL:
            self._stillborn += 1
        back = []
        for tid, work in proc.assigned.items():
            if self._terminated:
                self._works.pop(tid, None)
                done.append((work.future, False,
                             BrokenProcessPool("the pool was terminated (KeyboardInterrupt)")))
            elif tid == running:
                self._works.pop(tid, None)
                exc: BaseException
                if work.limit and (signum == signal.SIGALRM or watchdog):
                    exc = TimeoutError(f"{_describe(work.fn, work.args, work.kwargs)} ran "
                                       f"over its time limit of {work.limit:g} s; its worker "
                                       f"process {proc.pid} was killed")
                else:
                    exc = WorkerDied(proc.pid, None if signum else code, signum,
                                     _describe(work.fn, work.args, work.kwargs))
                done.append((work.future, False, exc))
            else:
                work.worker = None
                back.append(work)
        proc.assigned.clear()
        self._pending.extendleft(reversed(back))
        _discard_queue(proc.queue)
        proc.process.close()
        if proc in self._retired:
            self._retired.remove(proc)
        if self._procs[proc.index] is proc:
            self._procs[proc.index] = None
        if self._broken or self._terminated:
            return
        if self._stillborn >= _STILLBORN_MAX + self._max_workers:
            how = (f"signal {signum}" if signum else f"exit status {code}")
            self._break(f"{self._stillborn} worker processes in a row died before they "
                        f"took a task (the last one: pid {proc.pid}, {how})", done)
            return
        if (not self._shutdown or self._works) and self._procs[proc.index] is None:
            self._replace(proc.index, done)

    def _break(self, why: str, done: list[tuple[cf.Future[Any], bool, Any]]) -> None:
        """The pool is broken (an initializer raised, a worker cannot start): every task
        fails, and so will every submit (lock held)."""
        self._broken = why
        for work in self._works.values():
            done.append((work.future, False, BrokenProcessPool(why)))
        self._works.clear()
        self._pending.clear()
        for proc in self._procs:
            if proc is not None:
                proc.assigned.clear()
                self._retire(proc)

    def _finish(self) -> None:
        """The collector's last act: stop every worker and remove the pool's segments."""
        with self._lock:
            procs = [p for p in self._procs if p is not None] + self._retired
            for proc in procs:
                if not proc.retiring:
                    self._retire(proc)
        # the reaper may be joining some of them: wait on sentinels, join after it stopped
        alive = {p.process.sentinel: p for p in procs}
        end = time.monotonic() + 5
        while alive and time.monotonic() < end:
            for fd in _wait_ready(list(alive), max(0.0, end - time.monotonic())):
                del alive[fd]  # type: ignore[arg-type]
        for proc in alive.values():
            proc.process.kill()
        self._stopped.set()
        os.write(self._wake_w, b"x")
        if self._reaper is not None:
            self._reaper.join()
        for proc in procs:
            proc.process.join()
            proc.process.close()
        with self._lock:
            for proc in procs:
                if not proc.queue.closed:
                    _discard_queue(proc.queue)
            self._release()

    def _release(self) -> None:
        """Close and remove the result queue and the slot table (lock held)."""
        if self._results is not None and not self._results.closed:
            _discard_queue(self._results)
        if self._slots is not None and not self._slots.closed:
            if self._words is not None:
                self._words.release()
            self._slots.close()
            try:
                self._slots.unlink()
            except FileNotFoundError:
                pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        _live.discard(self)
        self._stopped.set()

    # ---------------------------------------------------------------- the end
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new tasks; ``cancel_futures=True`` cancels those not handed to a worker yet;
        ``wait=True`` returns once every task is done and every worker has exited (a
        KeyboardInterrupt while waiting ends the workers at once). In a forked child, a
        parent's pool is left alone (nothing to do)."""
        if self._started and self._pid != os.getpid():
            return
        with self._lock:
            self._shutdown = True
            cancelled = []
            if cancel_futures:
                for work in self._pending:
                    self._works.pop(work.tid, None)
                    cancelled.append(work.future)
                self._pending.clear()
            started = self._started
            results = self._results
        for f in cancelled:
            f.cancel()
        if not started:
            return
        assert results is not None
        try:
            results.put(("wake",))
        except ValueError:  # already closed: the collector is done
            pass
        if wait and threading.current_thread() is not self._collector:  # not from a callback
            try:
                self._stopped.wait()
                if self._collector is not None:
                    self._collector.join()
            except BaseException:
                self._terminate()
                raise

    def _terminate(self) -> None:
        """Ctrl-C: cancel what has not started, end every worker now, fail what ran."""
        with self._lock:
            self._terminated = True
        self.shutdown(wait=False, cancel_futures=True)
        self._emergency(unlink=False)
        if self._collector is not None:
            self._collector.join(10)

    def _emergency(self, unlink: bool = True) -> None:
        """Kill every worker (lock-free: a signal handler calls this) and, with ``unlink``,
        remove the pool's segments."""
        self._terminated = True  # no replacement starts from now on
        for proc in [*self._procs, *self._retired]:
            if proc is not None and proc.pid:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if not unlink:
            return
        names = [p.queue.name for p in [*self._procs, *self._retired] if p is not None]
        for obj in (self._results, self._slots):
            if obj is not None:
                names.append(obj.name)
        for name in names:
            for path in [f"/dev/shm/{name}", *glob.glob(f"/dev/shm/{glob.escape(name)}.*")]:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._terminate()
        else:
            self.shutdown(wait=True)
        return False


_SLOT_TABLE = re.compile(r"fastipc-pool-([0-9]+)-[0-9a-f]{12}")


def describe(path: str) -> Optional[QueueInfo]:
    """What ``fastipc ls`` shows of a pool's worker table (``fastipc-pool-<pid>-<id>``): None
    if ``path`` is not one. It is alive while the process that made the pool runs (a pid
    reused since only keeps it longer), so ``fastipc rm --stale`` removes the table of a
    pool whose process was killed (its queues go with their owner)."""
    found = _SLOT_TABLE.fullmatch(os.path.basename(path))
    if found is None:
        return None
    try:
        size = os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return None
    pid = int(found.group(1))
    alive = _process_exists(pid)
    return QueueInfo("pool-slots", os.path.basename(path), size, pid, alive,
                     "a process pool's worker table"
                     + ("" if alive else f", its process {pid} is gone"))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: it exists
        return True
    return True
