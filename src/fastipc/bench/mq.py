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

Implementations: fastipc native and pure (both processes on the same backend, the default
``spin``, :data:`fastipc.mq.DEFAULT_SPIN`; one more ping-pong row with ``spin=50e-6``, where
each side polls the queue for up to 50 µs before it sleeps, so that the answer finds it
awake),
``posix_ipc`` used directly, ``multiprocessing.Queue`` and ``faster_fifo.Queue`` (they pickle
and carry Python objects: the peers a Python user would otherwise pick for a message
queue), and plain C (``bench/c/mq_pingpong.c``, one program with a mode per workload)
doing the same work with no Python: the limit.

Like with like: every queue row (fastipc, ``posix_ipc``, C) uses queues of depth 10 and
64-byte messages (``max_message_size=64``), blocking calls (no timeout; ``posix_ipc`` with
its default ``block = True``) and the same message count; only the C rows run twice as
many, for a steadier rate.

A stalled peer cannot hang the run: a watchdog signal ends a trial after 120 s.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import count
from typing import Any, NamedTuple, Optional

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


class _Kind(NamedTuple):
    """One implementation of a queue: how to make one, its send and receive methods, and
    how to let it go."""

    make: Callable[[], Any]
    send: str = "send"
    recv: str = "receive"
    close: Callable[[Any], None] = lambda q: q.close()


def _pair(kind: _Kind) -> tuple[Any, Any, Any, Any, Callable[[], None]]:
    """Two queues for a ping-pong: (send_a, recv_a, send_b, recv_b, cleanup)."""
    a, b = kind.make(), kind.make()

    def cleanup() -> None:
        kind.close(a)
        kind.close(b)

    return (
        getattr(a, kind.send),
        getattr(a, kind.recv),
        getattr(b, kind.send),
        getattr(b, kind.recv),
        cleanup,
    )


def _one(kind: _Kind) -> tuple[Any, Any, Callable[[], None]]:
    """One queue for a stream: (send, recv, cleanup)."""
    q = kind.make()
    return getattr(q, kind.send), getattr(q, kind.recv), lambda: kind.close(q)


def _fastipc(backend: str, spin: Optional[float] = None) -> _Kind:
    def make() -> Any:
        from fastipc import mq

        q = mq.MessageQueue(
            _name("mq"),
            create=True,
            max_messages=DEPTH,
            max_message_size=64,
            spin=mq.DEFAULT_SPIN if spin is None else spin,
            backend=backend,
        )
        q.unlink()  # the two processes share the open descriptor; nothing to leave behind
        return q

    return _Kind(make)


def _posix_ipc_queue() -> Any:
    posix_ipc = optional("posix_ipc")
    q = posix_ipc.MessageQueue(_name("pq"), posix_ipc.O_CREX, 0o600, DEPTH, 64)
    q.unlink()
    return q


def _mp_close(q: Any) -> None:
    q.close()
    q.join_thread()


def _ff_queue() -> Any:
    return optional("faster_fifo").Queue(max_size_bytes=DEPTH * 256)


POSIX_IPC = _Kind(_posix_ipc_queue)
MP_QUEUE = _Kind(lambda: mp.get_context("fork").Queue(DEPTH), "put", "get", _mp_close)
FASTER_FIFO = _Kind(_ff_queue, "put", "get")


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
    queues = [
        (native, _fastipc("native"), n),
        (pure, _fastipc("pure"), n),
        ("posix_ipc", POSIX_IPC, n),
        ("multiprocessing.Queue", MP_QUEUE, slow_n),
        ("faster-fifo", FASTER_FIFO, slow_n),
    ]
    spun = ("fastipc native, spin=50µs", _fastipc("native", 50e-6), n)
    return [
        *(
            Case("mq", pp, impl, "us", partial(_pingpong, partial(_pair, kind), rounds))
            for impl, kind, _ in [*queues[:2], spun, *queues[2:]]
        ),
        Case("mq", pp, "C mq", "us", partial(run_c, "mq_pingpong", str(rounds * 2), "pingpong")),
        *(
            Case("mq", st, impl, "msg/s", partial(_stream, partial(_one, kind), count))
            for impl, kind, count in queues
        ),
        Case("mq", st, "C mq", "msg/s", partial(run_c, "mq_pingpong", str(n * 2), "stream")),
        Case("sem", spp, native, "us", partial(_sem_pingpong, _fastipc_sem("native"), rounds)),
        Case("sem", spp, pure, "us", partial(_sem_pingpong, _fastipc_sem("pure"), rounds)),
        Case("sem", spp, "posix_ipc", "us", partial(_sem_pingpong, _posix_ipc_sem, rounds)),
        Case("sem", spp, "C sem", "us", partial(run_c, "mq_pingpong", str(rounds * 2), "sem")),
    ]
