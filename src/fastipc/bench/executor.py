"""Process pools: ``fastipc.ProcessPoolExecutor`` (native and pure queues) against
``concurrent.futures.ProcessPoolExecutor``, loky and pebble, with 2 workers each.

Every trial makes a new pool, runs one task through it (so that its workers are up), then
times the workload as a whole, from the first submit until the last result is in hand, and
shuts the pool down (not timed). Each pool runs under its own default start method (fork
for the stdlib and pebble on Linux up to Python 3.13, loky's own for loky). The task
functions live in this module, so every pool pickles them by reference.

- **20k no-op submits** (tasks/s): ``submit(f, i)`` 20,000 times (pebble: ``schedule``),
  then every result.
- **map 200k, chunks of 1000** (items/s): ``map(f, range(200_000), chunksize=1000)``,
  consumed to the end.
- **round trip** (µs): one ``submit(f, i).result()`` at a time, 2,000 of them.
- **8 MiB array there and back** (GB/s, 1e9 bytes/s): a float64 array of 8 MiB sent to a
  task that returns it, one at a time; both directions' bytes count (16 MiB a trip).
- **kill every 10th: others ok** (of 90): 100 tasks, every tenth SIGKILLs its worker; how
  many of the other 90 succeed (waiting at most 60 s for them).
- **kill every 10th: next task runs** (1 = yes): after those 100, whether one more task
  submitted to the same pool returns within 20 s.

Run alone: ``python -m fastipc.bench.executor [--quick] [--trials N] [--match TEXT]``.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar

from fastipc.bench import Case, now, optional

WORKERS = 2
_T = TypeVar("_T")
MiB = 1 << 20


def noop(x: Any) -> Any:
    return x


def kill_every_tenth(x: int) -> int:
    if x % 10 == 9:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


class _Pool:
    """One pool implementation: submit, map and the end, as the stdlib spells them."""

    def __init__(self, pool: Any, submit: Callable[..., cf.Future[Any]],
                 map_: Callable[..., Any], end: Callable[[], Any]) -> None:
        self.pool, self.submit, self.map, self.end = pool, submit, map_, end


def _fastipc(backend: str) -> _Pool:
    from fastipc.executor import ProcessPoolExecutor

    ex = ProcessPoolExecutor(WORKERS, backend=backend)
    return _Pool(ex, ex.submit, ex.map, ex.shutdown)


def _stdlib() -> _Pool:
    ex = cf.ProcessPoolExecutor(WORKERS)
    return _Pool(ex, ex.submit, ex.map, ex.shutdown)


def _loky() -> _Pool:
    loky = optional("loky")
    ex = loky.ProcessPoolExecutor(WORKERS)
    return _Pool(ex, ex.submit, ex.map, ex.shutdown)


def _pebble() -> _Pool:
    pebble = optional("pebble")
    pool = pebble.ProcessPool(max_workers=WORKERS)

    def submit(fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        return pool.schedule(fn, args=args)  # type: ignore[no-any-return]

    def map_(fn: Callable[..., Any], it: Any, chunksize: int = 1) -> Any:
        return pool.map(fn, it, chunksize=chunksize).result()

    def end() -> None:
        pool.close()
        pool.join()

    return _Pool(pool, submit, map_, end)


def _timed(make: Callable[[], _Pool], work: Callable[[_Pool], _T]) -> _T:
    """A new pool, warmed up by one task; ``work(pool)`` measures; then the pool ends."""
    pool = make()
    try:
        pool.submit(noop, 0).result(60)
        return work(pool)
    finally:
        pool.end()


def _submits(n: int) -> Callable[[_Pool], float]:
    def work(p: _Pool) -> float:
        t0 = now()
        futures = [p.submit(noop, i) for i in range(n)]
        for f in futures:
            f.result(120)
        return n / (now() - t0)

    return work


def _map(n: int) -> Callable[[_Pool], float]:
    def work(p: _Pool) -> float:
        t0 = now()
        count = sum(1 for _ in p.map(noop, range(n), chunksize=1000))
        elapsed = now() - t0
        if count != n:
            raise RuntimeError(f"map gave {count} results of {n}")
        return n / elapsed

    return work


def _round_trip(n: int) -> Callable[[_Pool], float]:
    def work(p: _Pool) -> float:
        t0 = now()
        for i in range(n):
            p.submit(noop, i).result(60)
        return (now() - t0) / n * 1e6

    return work


def _arrays(n: int) -> Callable[[_Pool], float]:
    def work(p: _Pool) -> float:
        np = optional("numpy")
        a = np.random.default_rng(0).random(8 * MiB // 8)
        p.submit(noop, a).result(60)
        t0 = now()
        for _ in range(n):
            b = p.submit(noop, a).result(60)
        elapsed = now() - t0
        if b.shape != a.shape:
            raise RuntimeError("the array came back changed")
        return float(2 * a.nbytes * n / elapsed / 1e9)

    return work


def _kills(p: _Pool) -> tuple[int, int]:
    futures = [p.submit(kill_every_tenth, i) for i in range(100)]
    cf.wait(futures, timeout=60)
    ok = sum(1 for i, f in enumerate(futures)
             if i % 10 != 9 and f.done() and f.exception() is None and f.result() == i)
    try:
        nxt = int(p.submit(noop, 1).result(20) == 1)
    except Exception:  # the pool is broken
        nxt = 0
    return ok, nxt


def cases(quick: bool) -> list[Case]:
    k = 0.25 if quick else 1.0
    impls: list[tuple[str, Callable[[], _Pool]]] = [
        ("fastipc native", lambda: _fastipc("native")),
        ("fastipc pure", lambda: _fastipc("pure")),
        ("concurrent.futures", _stdlib),
        ("loky", _loky),
        ("pebble", _pebble),
    ]
    workloads: list[tuple[str, str, Callable[[_Pool], float]]] = [
        ("20k no-op submits", "tasks/s", _submits(int(20_000 * k))),
        ("map 200k, chunks of 1000", "items/s", _map(int(200_000 * k))),
        ("round trip", "us", _round_trip(int(2_000 * k))),
        ("8 MiB array there and back", "GB/s", _arrays(max(5, int(20 * k)))),
    ]
    out: list[Case] = []
    for workload, unit, work in workloads:
        for label, make in impls:
            def measure(make: Callable[[], _Pool] = make,
                        work: Callable[[_Pool], float] = work) -> float:
                return _timed(make, work)

            out.append(Case("executor", workload, label, unit, measure))
    for workload, unit, which in (("kill every 10th: others ok", "of 90", 0),
                                  ("kill every 10th: next task runs", "yes", 1)):
        for label, make in impls:
            def kills(make: Callable[[], _Pool] = make, which: int = which) -> float:
                return float(_timed(make, _kills)[which])

            out.append(Case("executor", workload, label, unit, kills))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run these cases alone: ``python -m fastipc.bench.executor [--quick] [--match S]``."""
    from fastipc import bench

    return bench.main(["--only", "executor", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
