"""Fan-out: one publisher, N subscribers (1, 2, 4), each receiving every message.

Implementations, each in the same process layout: the parent publishes; N forked children
subscribe. They meet through ``multiprocessing.Pipe`` only to say "ready" and "done",
outside the timed loop. The clock runs from the first send until every subscriber has
received the last message.

- **fastipc native / pure**: ``pubsub.Publisher`` and N ``pubsub.Subscriber`` s: one ring,
  each message written once; one ``send`` / ``recv`` call per message. The "batches" row
  sends with ``send_many`` (256 messages a call) and receives with ``recv_many``.
- **N fastipc shm channels**: N ``shm.Writer``/``shm.Reader`` pairs (native), the publisher
  sending each message to each channel in turn.
- **pyzmq PUB/SUB ipc://**: one PUB socket bound to an ipc:// path, N SUB sockets; high-water
  marks set to 0 (unlimited) so that no message is dropped, and the subscriptions confirmed
  with probe messages before the clock starts (no slow-joiner loss).

Workloads: **64 B** (msg/s: messages delivered to every subscriber per second, each
received with one ``recv`` call) and **1 MiB** (GB/s: 1e9 bytes per second delivered, summed
over the subscribers). At 1 MiB every implementation receives with its zero-copy call
(``recv_view`` for fastipc, ``recv(copy=False)`` for pyzmq) and reads one byte of each message;
the rings are 8 MiB, so that a 1 MiB message is stored whole (a quarter of the ring at most).

Fairness on a small machine: the 1 + N processes share the CPUs the same way for every
implementation: the publisher is pinned to one CPU and all N subscribers to another
(``bench.cores()``; on a 2-CPU machine the subscribers share one CPU), and every
implementation runs with its default waiting strategy (fastipc: adaptive spin then futex).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Optional

from fastipc.bench import Case, cores, now, optional

MSG = b"x" * 64
MiB = 1 << 20
RING = 8 * MiB  # 1 MiB messages stored whole in every ring
SMALL_RING = 1 << 22


def _name() -> str:
    return f"fastipc-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def _subscribers(n: int, child: Callable[[Connection, int], None]
                 ) -> Iterator[list[Connection]]:
    """N forked children running child(conn, i), pinned together to one CPU, while the caller
    runs pinned to another; their connections; reaped afterwards."""
    mine, theirs = cores()
    saved = os.sched_getaffinity(0)
    conns, procs = [], []

    def run(conn: Connection, i: int) -> None:
        os.sched_setaffinity(0, {theirs})
        try:
            child(conn, i)
        finally:
            conn.close()

    for i in range(n):
        a, b = mp.Pipe()
        proc = mp.get_context("fork").Process(target=run, args=(b, i), daemon=True)
        proc.start()
        b.close()
        conns.append(a)
        procs.append(proc)
    os.sched_setaffinity(0, {mine})
    try:
        yield conns
    finally:
        os.sched_setaffinity(0, saved)
        for c in conns:
            c.close()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _timed(conns: list[Connection], send_all: Callable[[], None]) -> float:
    """Seconds from the first send until every subscriber says it has all; then tells them
    to go ("bye")."""
    for c in conns:
        assert c.recv() == "ready"
    t0 = now()
    send_all()
    for c in conns:
        assert c.recv() == "done"
    seconds = now() - t0
    for c in conns:
        c.send("bye")
    return seconds


def _rate(size: int, subs: int, count: int, seconds: float) -> float:
    """msg/s for 64 B (each message to every subscriber), GB/s of bytes delivered else."""
    if size <= 64:
        return count / seconds
    return count * size * subs / seconds / 1e9


def _drain(conn: Connection, recv: Callable[[], Any], count: int) -> None:
    conn.send("ready")
    for _ in range(count):
        recv()
    conn.send("done")


def _touch(view_of: Callable[[], Any]) -> Callable[[], None]:
    """Receive one message zero-copy and read its last byte."""

    def recv() -> None:
        with view_of() as v:
            v[-1]

    return recv


# ---------------------------------------------------------------------------- fastipc


def fastipc_fanout(backend: str, subs: int, size: int, count: int) -> float:
    from fastipc import pubsub

    name = _name()
    msg = MSG if size <= 64 else b"x" * size
    pub = pubsub.Publisher(name, capacity=SMALL_RING if size <= 64 else RING,
                           backend=backend)

    def child(conn: Connection, _: int) -> None:
        with pubsub.Subscriber(name, timeout=10, backend=backend) as sub:
            _drain(conn, sub.recv if size <= 64 else _touch(sub.recv_view), count)
            conn.recv()

    try:
        with _subscribers(subs, child) as conns:
            send = pub.send

            def send_all() -> None:
                for _ in range(count):
                    send(msg)

            seconds = _timed(conns, send_all)
        return _rate(size, subs, count, seconds)
    finally:
        pub.close()


def fastipc_fanout_batch(subs: int, count: int, batch: int = 256) -> float:
    """64 B through ``send_many`` / ``recv_many`` in batches (native)."""
    from fastipc import pubsub

    name = _name()
    count = count // batch * batch
    pub = pubsub.Publisher(name, capacity=SMALL_RING, backend="native")

    def child(conn: Connection, _: int) -> None:
        with pubsub.Subscriber(name, timeout=10, backend="native") as sub:
            conn.send("ready")
            got = 0
            while True:
                if got >= count:
                    break
                got += len(sub.recv_many(batch))
            conn.send("done")
            conn.recv()

    try:
        with _subscribers(subs, child) as conns:
            msgs = [MSG] * batch

            def send_all() -> None:
                for _ in range(count // batch):
                    pub.send_many(msgs)

            seconds = _timed(conns, send_all)
        return count / seconds
    finally:
        pub.close()


def channels_fanout(subs: int, size: int, count: int) -> float:
    from fastipc import shm

    names = [_name() for _ in range(subs)]
    msg = MSG if size <= 64 else b"x" * size
    writers = [shm.Writer(n, capacity=SMALL_RING if size <= 64 else RING, backend="native")
               for n in names]
    try:
        def child(conn: Connection, i: int) -> None:
            with shm.Reader(names[i], timeout=10, backend="native") as r:
                _drain(conn, r.recv if size <= 64 else _touch(r.recv_view), count)
                conn.recv()

        with _subscribers(subs, child) as conns:
            sends = [w.send for w in writers]

            def send_all() -> None:
                for _ in range(count):
                    for send in sends:
                        send(msg)

            seconds = _timed(conns, send_all)
        return _rate(size, subs, count, seconds)
    finally:
        for w in writers:
            w.close()


# ---------------------------------------------------------------------------- pyzmq


def zmq_fanout(subs: int, size: int, count: int) -> float:
    zmq = optional("zmq")
    path = f"/tmp/{_name()}"
    addr = f"ipc://{path}"
    msg = b"d" + (MSG if size <= 64 else b"x" * size)[1:]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(addr)

    def child(conn: Connection, _: int) -> None:
        cctx = zmq.Context()
        s = cctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"")
        s.connect(addr)
        while s.recv()[:1] != b"p":  # a probe: the subscription is in place
            pass
        conn.send("subscribed")
        while True:  # probes still in flight come before the data
            first = s.recv(copy=False)
            if first.bytes[:1] == b"d":
                break
        conn.send("ready")
        if size <= 64:
            for _ in range(count - 1):
                s.recv()
        else:
            for _ in range(count - 1):
                s.recv(copy=False).buffer[-1]
        conn.send("done")
        conn.recv()
        s.close(0)
        cctx.term()

    try:
        with _subscribers(subs, child) as conns:
            pending = list(conns)
            while True:  # probe until every subscription has arrived
                if not pending:
                    break
                pub.send(b"p")
                pending = [c for c in pending if not c.poll(0.001) or c.recv() != "subscribed"]
            send = pub.send
            pub.send(msg)  # the first data message releases the subscribers' clocks

            def send_all() -> None:
                for _ in range(count - 1):
                    send(msg)

            seconds = _timed(conns, send_all)
        return _rate(size, subs, count - 1, seconds)
    finally:
        pub.close(0)
        ctx.term()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


# ---------------------------------------------------------------------------- cases


def cases(quick: bool) -> list[Case]:
    k = 0.4 if quick else 1.0
    out: list[Case] = []

    def add(workload: str, impl: str, unit: str, fn: Callable[[], float]) -> None:
        out.append(Case("fanout", workload, impl, unit, fn))

    for subs in (1, 2, 4):
        n = int(200_000 * k)
        w = f"64 B x{subs} subscribers"
        add(w, "fastipc native", "msg/s", partial(fastipc_fanout, "native", subs, 64, n))
        add(w, "fastipc native, batches of 256", "msg/s",
            partial(fastipc_fanout_batch, subs, n * 4 // 256 * 256))
        add(w, "fastipc pure", "msg/s", partial(fastipc_fanout, "pure", subs, 64, n // 10))
        add(w, f"{subs} fastipc shm channels", "msg/s",
            partial(channels_fanout, subs, 64, n // 2))
        add(w, "pyzmq PUB/SUB ipc://", "msg/s", partial(zmq_fanout, subs, 64, n // 4))
    for subs in (1, 2, 4):
        n = int(1000 * k)
        w = f"1 MiB x{subs} subscribers"
        add(w, "fastipc native", "GB/s", partial(fastipc_fanout, "native", subs, MiB, n))
        add(w, "fastipc pure", "GB/s", partial(fastipc_fanout, "pure", subs, MiB, n // 2))
        add(w, f"{subs} fastipc shm channels", "GB/s",
            partial(channels_fanout, subs, MiB, n // 2))
        add(w, "pyzmq PUB/SUB ipc://", "GB/s", partial(zmq_fanout, subs, MiB, n // 4))
    return out


def main(argv: Optional[list[str]] = None) -> int:
    """Run these cases alone: ``python -m fastipc.bench.pubsub [--quick] [--match S]``."""

    from fastipc import bench

    return bench.main(["--only", "pubsub", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
