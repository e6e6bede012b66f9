"""Queues: ``fastipc.Queue`` (native and pure) against faster-fifo and multiprocessing.Queue.

Every workload runs in forked processes: P producers and as many consumers, made after the
queue (fork children inherit it), wait for a start signal; the time runs from that signal
until the last message is taken. Each producer puts its messages, then one stop marker; a
consumer counts what it takes until a stop marker, then stores its count and the time in
anonymous shared memory and exits. Every producer's messages precede its marker, so the
last marker taken ends the run; nothing is recorded per message, so the consumers' loop
costs every implementation the same few instructions. Every implementation moves the same
number of messages, made and started the same way, after one warm-up run (the runner's).
1:1 workloads pin the producer and the consumer to separate CPUs; 4:4 ones run unpinned.

- **objects 1:1 / 4:4** (msg/s): ``put``/``get`` of ``(int, 32-char str, float)`` tuples.
- **batches of 64** (msg/s): the same tuples through ``put_many``/``get_many`` 64 at a time
  (multiprocessing.Queue has no batch calls: missing).
- **bytes 64 B 1:1** (msg/s): fastipc ``put_bytes``/``get_bytes`` (no pickling); the peers
  ``put``/``get`` of a 64-byte bytes object.
- **numpy 1 MiB 1:1** (GB/s, 1e9 bytes/s): float64 arrays of 1 MiB, ``put``/``get``
  (fastipc: the array's buffer out of band, one copy in and one out).

Run alone: ``python -m fastipc.bench.queue [--quick] [--trials N] [--match TEXT]``.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Optional

from fastipc.bench import Case, Missing, cores, optional

MiB = 1 << 20
BATCH = 64
_ctx = mp.get_context("fork")
_monotonic = time.monotonic


class _Adapter:
    """One queue implementation: put/get of one item and of a batch, and a stop marker."""

    def __init__(self, q: Any, put: Callable[[Any], Any], get: Callable[[], Any],
                 put_many: Optional[Callable[[list[Any]], Any]] = None,
                 get_many: Optional[Callable[[], list[Any]]] = None,
                 close: Optional[Callable[[], Any]] = None,
                 flush: Optional[Callable[[], Any]] = None) -> None:
        self.q, self.put, self.get = q, put, get
        self.put_many, self.get_many = put_many, get_many
        self.close = close or (lambda: None)
        self.flush = flush or (lambda: None)  # a producer's last call before it exits


def _fastipc(backend: str, raw: bool = False) -> _Adapter:
    from fastipc.queue import Queue

    q = Queue(backend=backend)
    if raw:
        return _Adapter(q, q.put_bytes, q.get_bytes, close=q.close)
    return _Adapter(q, q.put, q.get, q.put_many, lambda: q.get_many(BATCH), q.close)


def _faster_fifo(raw: bool = False) -> _Adapter:
    ff = optional("faster_fifo")
    q = ff.Queue(max_size_bytes=1 << 24)
    return _Adapter(q, q.put, q.get, q.put_many,
                    lambda: q.get_many(max_messages_to_get=BATCH), q.close)


def _mp_queue(raw: bool = False) -> _Adapter:
    q = _ctx.Queue()

    def flush() -> None:  # its feeder thread must write out what put() buffered
        q.close()
        q.join_thread()

    return _Adapter(q, q.put, q.get, close=q.close, flush=flush)


def _pin(cpu: Optional[int]) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def _produce(a: _Adapter, item: Any, count: int, batched: bool, stop: Any) -> None:
    if batched:
        batch = [item] * BATCH
        for _ in range(count // BATCH):
            a.put_many(batch)  # type: ignore[misc]
    else:
        put = a.put
        for _ in range(count):
            put(item)
    a.put(stop)


def _consume(a: _Adapter, batched: bool, raw: bool) -> int:
    """Take messages until a stop marker (None; b"" for raw bytes): how many came before it."""
    n = 0
    if batched:
        get_many = a.get_many
        while True:
            items = get_many()  # type: ignore[misc]
            if items[-1] is None:
                return n + len(items) - 1
            n += len(items)
    get = a.get
    if raw:
        while get():
            n += 1
    else:
        while get() is not None:
            n += 1
    return n


def _run(make: Callable[[], _Adapter], item: Any, count: int, producers: int,
         batched: bool = False, raw: bool = False) -> float:
    """Seconds from the start signal until the last of count messages was taken, with as
    many consumers as producers."""
    a = make()
    shared = mmap.mmap(-1, 8 * 2 * producers)
    slots = memoryview(shared).cast("q")
    start = _ctx.Event()
    pin = producers == 1
    mine, theirs = cores()
    per = count // producers
    if batched:
        per -= per % BATCH
    procs = []

    def child(role: str, index: int) -> None:
        _pin(theirs if pin and role == "c" else mine if pin else None)
        start.wait()
        if role == "p":
            _produce(a, item, per, batched, b"" if raw else None)
            a.flush()
        else:
            slots[2 * index] = _consume(a, batched, raw)
            slots[2 * index + 1] = int(_monotonic() * 1e9)
        os._exit(0)

    try:
        for i in range(producers):
            procs.append(_ctx.Process(target=child, args=("c", i), daemon=True))
        for i in range(producers):
            procs.append(_ctx.Process(target=child, args=("p", i), daemon=True))
        for p in procs:
            p.start()
        time.sleep(0.05)
        t0 = _monotonic()
        start.set()
        deadline = t0 + 60
        for p in procs:
            p.join(max(0.0, deadline - _monotonic()))
            if p.is_alive():
                raise RuntimeError("the queue stalled")
        taken = sum(slots[2 * i] for i in range(producers))
        if taken != per * producers:
            raise RuntimeError(f"{taken} messages taken of {per * producers}")
        end = max(slots[2 * i + 1] for i in range(producers)) / 1e9
        return (end - t0) if end > t0 else float("nan")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        a.close()
        slots.release()
        shared.close()


def _rate(seconds: float, count: int) -> float:
    return count / seconds


SMALL = (123456, "s" * 32, 3.25)


def cases(quick: bool) -> list[Case]:
    k = 0.25 if quick else 1.0
    n = int(200_000 * k)
    big_n = max(20, int(400 * k))
    out: list[Case] = []
    impls: list[tuple[str, Callable[..., _Adapter]]] = [
        ("fastipc native", lambda raw=False: _fastipc("native", raw)),
        ("fastipc pure", lambda raw=False: _fastipc("pure", raw)),
        ("faster-fifo", _faster_fifo),
        ("multiprocessing.Queue", _mp_queue),
    ]

    def add(workload: str, impl: str, unit: str, fn: Callable[[], float]) -> None:
        out.append(Case("queue", workload, impl, unit, fn))

    for label, make in impls:

        def objects(make: Any = make, p: int = 1) -> float:
            return _rate(_run(make, SMALL, n, p), n // p * p)

        add("objects 1:1", label, "msg/s", objects)
        add("objects 4:4", label, "msg/s", partial(objects, p=4))

        def batches(make: Any = make) -> float:
            if make is _mp_queue:
                raise Missing("no put_many/get_many")
            return _rate(_run(make, SMALL, n, 1, batched=True), n // BATCH * BATCH)

        add(f"batches of {BATCH}", label, "msg/s", batches)

        def raw(make: Any = make) -> float:
            return _rate(_run(lambda: make(raw=True), b"x" * 64, n, 1, raw=True), n)

        add("bytes 64 B 1:1", label, "msg/s", raw)

        def arrays(make: Any = make) -> float:
            np = optional("numpy")
            arr = np.random.default_rng(0).random(MiB // 8)
            return big_n * MiB / _run(make, arr, big_n, 1) / 1e9

        add("numpy 1 MiB 1:1", label, "GB/s", arrays)
    order = ["objects 1:1", "objects 4:4", f"batches of {BATCH}", "bytes 64 B 1:1",
             "numpy 1 MiB 1:1"]
    out.sort(key=lambda c: order.index(c.workload))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run these cases alone: ``python -m fastipc.bench.queue [--quick] [--match S]``."""
    from fastipc import bench

    return bench.main(["--only", "queue", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
