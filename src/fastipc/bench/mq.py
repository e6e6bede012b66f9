"""POSIX message queues and semaphores: latency and throughput between two processes.

What is measured, each trial in a fresh pair of processes pinned to separate cores
(:func:`fastipc.bench.pinned`), the parent timing and the forked child serving:

- ``mq 64 B ping-pong`` (µs per round trip): the parent sends a 64-byte message on one
  queue, the child receives it and answers on a second queue; blocking calls, queue depth 10.
  One untimed round first, so that the child is running when the clock starts.
- ``mq 64 B stream`` (msg/s): the child sends 64-byte messages as fast as it can into one
  queue of depth 10 (``max_messages=10``, the Linux default), the parent receives them; the
  rate is the parent's, from its first message to its last.
- ``sem ping-pong`` (µs per round trip): two named semaphores, the parent releases one and
  acquires the other, the child the reverse.

Implementations: fastipc native and pure (both processes on the same backend; one more
ping-pong row with ``spin=50e-6``, where each side polls the queue for up to 50 µs before it
sleeps, so that the answer finds it awake),
``posix_ipc`` used directly, ``multiprocessing.Queue`` and ``faster_fifo.Queue`` (they pickle
and carry Python objects: the peers a Python user would otherwise pick for a message
queue), and plain C programs (``bench/c/mq_pingpong.c``, ``mq_stream.c``,
``sem_pingpong.c``) doing the same work with no Python: the limit.

A stalled peer cannot hang the run: a watchdog signal ends a trial after 120 s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from itertools import count
from typing import Any, Callable

from fastipc.bench import Case, now, optional, pinned, run_c

MSG = b"x" * 64
DEPTH = 10
_names = count()


def _name(tag: str) -> str:
    return f"/fastipc-bench-{os.getpid()}-{next(_names)}-{tag}"


class Stalled(RuntimeError):
    """The peer process stopped answering."""


@contextmanager
def _watchdog(seconds: float = 120) -> Iterator[None]:
    def expire(*args: Any) -> None:
        raise Stalled(f"no progress in {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------- the loops
# send(msg) and recv() are bound methods of the implementation under test, called as they
# are: no wrapper between the loop and the library.


def _echo(recv: Callable[[], Any], send: Callable[[bytes], Any], rounds: int) -> None:
    for _ in range(rounds + 1):
        recv()
        send(MSG)


def _ping(send: Callable[[bytes], Any], recv: Callable[[], Any], rounds: int) -> float:
    send(MSG)
    recv()
    t0 = now()
    for _ in range(rounds):
        send(MSG)
        recv()
    return (now() - t0) / rounds * 1e6


def _produce(send: Callable[[bytes], Any], n: int) -> None:
    for _ in range(n + 1):
        send(MSG)


def _consume(recv: Callable[[], Any], n: int) -> float:
    recv()
    t0 = now()
    for _ in range(n):
        recv()
    return n / (now() - t0)


def _pingpong(
    pair: Callable[[], tuple[Any, Any, Any, Any, Callable[[], None]]], rounds: int
) -> float:
    """pair() -> (send_a, recv_a, send_b, recv_b, cleanup): the parent sends on a and
    receives on b."""
    send_a, recv_a, send_b, recv_b, cleanup = pair()
    try:
        with _watchdog(), pinned(_echo, recv_a, send_b, rounds):
            return _ping(send_a, recv_b, rounds)
    finally:
        cleanup()


def _stream(one: Callable[[], tuple[Any, Any, Callable[[], None]]], n: int) -> float:
    """one() -> (send, recv, cleanup)."""
    send, recv, cleanup = one()
    try:
        with _watchdog(), pinned(_produce, send, n):
            return _consume(recv, n)
    finally:
        cleanup()


# ---------------------------------------------------------------------------- the queues


def _fastipc_queue(backend: str, spin: float = 0.0) -> Any:
    from fastipc import mq

    q = mq.MessageQueue(
        _name("mq"),
        create=True,
        max_messages=DEPTH,
        max_message_size=64,
        spin=spin,
        backend=backend,
    )
    q.unlink()  # the two processes share the open descriptor; nothing to leave behind
    return q


def _fastipc_pair(backend: str, spin: float = 0.0) -> Any:
    a, b = _fastipc_queue(backend, spin), _fastipc_queue(backend, spin)

    def cleanup() -> None:
        a.close()
        b.close()

    return a.send, a.receive, b.send, b.receive, cleanup


def _fastipc_one(backend: str) -> Any:
    q = _fastipc_queue(backend)
    return q.send, q.receive, q.close


def _posix_ipc_queue() -> Any:
    posix_ipc = optional("posix_ipc")
    q = posix_ipc.MessageQueue(_name("pq"), posix_ipc.O_CREX, 0o600, DEPTH, 64)
    q.unlink()
    return q


def _posix_ipc_pair() -> Any:
    a, b = _posix_ipc_queue(), _posix_ipc_queue()

    def cleanup() -> None:
        a.close()
        b.close()

    return a.send, a.receive, b.send, b.receive, cleanup


def _posix_ipc_one() -> Any:
    q = _posix_ipc_queue()
    return q.send, q.receive, q.close


def _mp_pair() -> Any:
    ctx = mp.get_context("fork")
    a, b = ctx.Queue(DEPTH), ctx.Queue(DEPTH)

    def cleanup() -> None:
        for q in (a, b):
            q.close()
            q.join_thread()

    return a.put, a.get, b.put, b.get, cleanup


def _mp_one() -> Any:
    q = mp.get_context("fork").Queue(DEPTH)

    def cleanup() -> None:
        q.close()
        q.join_thread()

    return q.put, q.get, cleanup


def _ff_queue() -> Any:
    faster_fifo = optional("faster_fifo")
    return faster_fifo.Queue(max_size_bytes=DEPTH * 256)


def _ff_pair() -> Any:
    a, b = _ff_queue(), _ff_queue()

    def cleanup() -> None:
        a.close()
        b.close()

    return a.put, a.get, b.put, b.get, cleanup


def _ff_one() -> Any:
    q = _ff_queue()
    return q.put, q.get, q.close


# ---------------------------------------------------------------------------- semaphores


def _sem_pingpong(make: Callable[[str], tuple[Any, Callable[[], None]]], rounds: int) -> float:
    """make(name) -> (semaphore with acquire/release, close)."""
    ping, close_ping = make(_name("ping"))
    pong, close_pong = make(_name("pong"))
    try:
        with _watchdog(), pinned(_echo, ping.acquire, lambda _msg: pong.release(), rounds):
            release, acquire = ping.release, pong.acquire
            release()
            acquire()
            t0 = now()
            for _ in range(rounds):
                release()
                acquire()
            return (now() - t0) / rounds * 1e6
    finally:
        close_ping()
        close_pong()


def _fastipc_sem(backend: str) -> Callable[[str], tuple[Any, Callable[[], None]]]:
    def make(name: str) -> tuple[Any, Callable[[], None]]:
        from fastipc import sem

        s = sem.Semaphore(name, create=True, value=0, backend=backend)
        s.unlink()
        return s, s.close

    return make


def _posix_ipc_sem(name: str) -> tuple[Any, Callable[[], None]]:
    posix_ipc = optional("posix_ipc")
    s = posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0)
    s.unlink()
    return s, s.close


# ---------------------------------------------------------------------------- cases


def cases(quick: bool) -> list[Case]:
    rounds = 2000 if quick else 10000
    n = 100_000 if quick else 500_000
    slow_n = n // 5  # the pickling queues run at a fifth of the rate or less
    pp, st, spp = "64 B ping-pong", "64 B stream", "ping-pong"
    native, pure = "fastipc native", "fastipc pure"
    return [
        Case("mq", pp, native, "us", partial(_pingpong, partial(_fastipc_pair, "native"), rounds)),
        Case("mq", pp, pure, "us", partial(_pingpong, partial(_fastipc_pair, "pure"), rounds)),
        Case(
            "mq",
            pp,
            "fastipc native, spin=50µs",
            "us",
            partial(_pingpong, partial(_fastipc_pair, "native", 50e-6), rounds),
        ),
        Case("mq", pp, "posix_ipc", "us", partial(_pingpong, _posix_ipc_pair, rounds)),
        Case("mq", pp, "multiprocessing.Queue", "us", partial(_pingpong, _mp_pair, rounds)),
        Case("mq", pp, "faster-fifo", "us", partial(_pingpong, _ff_pair, rounds)),
        Case("mq", pp, "C mq", "us", partial(run_c, "mq_pingpong", str(rounds * 2))),
        Case("mq", st, native, "msg/s", partial(_stream, partial(_fastipc_one, "native"), n)),
        Case("mq", st, pure, "msg/s", partial(_stream, partial(_fastipc_one, "pure"), n)),
        Case("mq", st, "posix_ipc", "msg/s", partial(_stream, _posix_ipc_one, n)),
        Case("mq", st, "multiprocessing.Queue", "msg/s", partial(_stream, _mp_one, slow_n)),
        Case("mq", st, "faster-fifo", "msg/s", partial(_stream, _ff_one, slow_n)),
        Case("mq", st, "C mq", "msg/s", partial(run_c, "mq_stream", str(n * 2))),
        Case("sem", spp, native, "us", partial(_sem_pingpong, _fastipc_sem("native"), rounds)),
        Case("sem", spp, pure, "us", partial(_sem_pingpong, _fastipc_sem("pure"), rounds)),
        Case("sem", spp, "posix_ipc", "us", partial(_sem_pingpong, _posix_ipc_sem, rounds)),
        Case("sem", spp, "C sem", "us", partial(run_c, "sem_pingpong", str(rounds * 2))),
    ]
