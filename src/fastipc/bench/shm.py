"""Shared memory: the ``shm.Writer``/``shm.Reader`` channel against the peers a user would pick.

Every case runs two processes, pinned to two CPUs (``pinned``): the parent times, the child
is the other end; they meet through a ``multiprocessing.Pipe`` only to say "ready" and
"done", outside the timed loop's per-message path.

- **ping-pong 64 B** (µs per round trip): the parent sends 64 bytes, the child sends them
  back. fastipc uses two channels and its default adaptive spin (50 µs) before sleeping;
  iceoryx2 busy-polls its subscriber.
- **stream 64 B** (msg/s): the parent sends N messages of 64 bytes one call each, the child
  receives them one call each; timed until the child has the last one.
- **stream 64 B, a CPU-bound thread in the sender** (msg/s): the stream above, with a
  Python thread spinning in bytecode in the sending process (on its CPU) all along: what a
  send that keeps the GIL for its attempt is worth when another thread wants it.
- **batch 64 B** (msg/s): the same through ``send_many``/``recv_many`` (faster-fifo:
  ``put_many``/``get_many``) in batches of 256.
- **1 MiB / 64 MiB one-way** (GB/s, 1e9 bytes/s): the parent sends a message of that size N
  times; the child receives each into a buffer it allocated once (fastipc: ``recv_into``,
  streamed through the default 1 MiB ring in 64 KiB chunks, copied in and out as the C ring
  does; ``multiprocessing.shared_memory``: copy in, signal over a pipe, copy out, ack).

- **awaited ping-pong / stream 64 B**: the same two workloads with both processes on an
  asyncio event loop: fastipc's ``send_async``/``recv_async``, against asyncio and uvloop
  streams over a Unix socket (each message framed with a 4-byte length, read with
  ``readexactly``; the stream drains every 256 messages).

C rows (``bench/c/shm_ring.c``, ``bench/c/memcpy.c``) are the same work with no Python: a
busy-polling SPSC ring in shared memory, and one core's memcpy.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing as mp
import os
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from multiprocessing.connection import Connection
from typing import Any, Optional

from fastipc.bench import Case, Missing, now, optional, pinned, run_c

MSG = b"x" * 64
BATCH = 256
MiB = 1 << 20


def _name() -> str:
    return f"fastipc-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _two(child: Callable[[Connection], None], parent: Callable[[Connection], float]) -> float:
    """Run child(conn) in the pinned child process and parent(conn) here; parent's result."""
    mine, theirs = mp.Pipe()

    def run_child() -> None:
        try:
            child(theirs)
        finally:
            theirs.close()

    with pinned(run_child) as proc:
        try:
            return parent(mine)
        finally:
            mine.close()
            proc.join(30)


# The halves every case is made of: the child says "ready" once its end is open; the parent
# waits for that, times its loop and, for one-way cases, waits for the child's "done".


def _drain(conn: Connection, recv: Callable[[], Any], count: int) -> None:
    conn.send("ready")
    for _ in range(count):
        recv()
    conn.send("done")


def _flood(conn: Connection, send: Callable[[Any], Any], count: int, msg: Any = MSG) -> float:
    """Seconds from the first send until the child has taken all ``count`` messages."""
    conn.recv()
    t0 = now()
    for _ in range(count):
        send(msg)
    conn.recv()
    return now() - t0


def _echo(
    conn: Connection, recv: Callable[[], Any], send: Callable[[Any], Any], rounds: int
) -> None:
    conn.send("ready")
    for _ in range(rounds):
        send(recv())


def _ping(
    conn: Connection, send: Callable[[Any], Any], recv: Callable[[], Any], rounds: int
) -> float:
    """Microseconds per round trip, once the child is ready."""
    conn.recv()
    t0 = now()
    for _ in range(rounds):
        send(MSG)
        recv()
    return (now() - t0) / rounds * 1e6


# ---------------------------------------------------------------------------- fastipc


def fastipc_pingpong(backend: str, rounds: int) -> float:
    from fastipc import shm

    ping, pong = _name(), _name()

    def child(conn: Connection) -> None:
        with shm.Reader(ping, timeout=10, backend=backend) as r, \
                shm.Writer(pong, capacity=1 << 16, backend=backend) as w:
            _echo(conn, r.recv, w.send, rounds)
            conn.recv()  # keep the channels open until the parent is done

    def parent(conn: Connection) -> float:
        with shm.Writer(ping, capacity=1 << 16, backend=backend) as w, \
                shm.Reader(pong, timeout=10, backend=backend) as r:
            us = _ping(conn, w.send, r.recv, rounds)
            conn.send("done")
        return us

    return _two(child, parent)


def fastipc_stream(backend: str, count: int) -> float:
    from fastipc import shm

    name = _name()

    def child(conn: Connection) -> None:
        with shm.Reader(name, timeout=10, backend=backend) as r:
            _drain(conn, r.recv, count)

    def parent(conn: Connection) -> float:
        with shm.Writer(name, backend=backend) as w:
            return count / _flood(conn, w.send, count)

    return _two(child, parent)


def _busy(stop: threading.Event) -> None:
    """A CPU-bound Python thread: pure bytecode, never releases the GIL on its own."""
    n = 0
    while not stop.is_set():
        for _ in range(1000):
            n += 1


def fastipc_stream_busy(backend: str, count: int) -> float:
    """``fastipc_stream`` with a CPU-bound Python thread running in the sender's process
    (on the sender's CPU) for the whole timed loop."""
    from fastipc import shm

    name = _name()

    def child(conn: Connection) -> None:
        with shm.Reader(name, timeout=10, backend=backend) as r:
            _drain(conn, r.recv, count)

    def parent(conn: Connection) -> float:
        stop = threading.Event()
        thread = threading.Thread(target=_busy, args=(stop,), daemon=True)
        with shm.Writer(name, backend=backend) as w:
            thread.start()
            try:
                return count / _flood(conn, w.send, count)
            finally:
                stop.set()
                thread.join()

    return _two(child, parent)


def fastipc_batch(backend: str, count: int) -> float:
    from fastipc import shm

    name = _name()
    batches = count // BATCH

    def child(conn: Connection) -> None:
        with shm.Reader(name, timeout=10, backend=backend) as r:
            conn.send("ready")
            got, total = r.recv_many, batches * BATCH
            n = 0
            while True:
                if n >= total:
                    break
                n += len(got(BATCH))
            conn.send("done")

    def parent(conn: Connection) -> float:
        with shm.Writer(name, backend=backend) as w:
            conn.recv()
            batch = [MSG] * BATCH
            send_many = w.send_many
            t0 = now()
            for _ in range(batches):
                send_many(batch)
            conn.recv()
            return batches * BATCH / (now() - t0)

    return _two(child, parent)


def fastipc_bulk(backend: str, size: int, count: int) -> float:
    from fastipc import shm

    name = _name()

    def child(conn: Connection) -> None:
        with shm.Reader(name, timeout=10, backend=backend) as r:
            buf = bytearray(size)
            _drain(conn, lambda: r.recv_into(buf), count)

    def parent(conn: Connection) -> float:
        data = os.urandom(1024) * (size // 1024)
        with shm.Writer(name, backend=backend) as w:
            return size * count / _flood(conn, w.send, count, data) / 1e9

    return _two(child, parent)


# ---------------------------------------------------------------------------- awaited


def _loop_run(loop: str, main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main()`` on a fresh event loop: ``"asyncio"`` or ``"uvloop"``."""
    if loop == "uvloop":
        return optional("uvloop").run(main())
    return asyncio.run(main())  # type: ignore[arg-type]


def fastipc_awaited_pingpong(backend: str, rounds: int) -> float:
    from fastipc import shm

    ping, pong = _name(), _name()

    def child(conn: Connection) -> None:
        async def main() -> None:
            with shm.Reader(ping, timeout=10, backend=backend) as r, \
                    shm.Writer(pong, capacity=1 << 16, backend=backend) as w:
                conn.send("ready")
                for _ in range(rounds):
                    await w.send_async(await r.recv_async())
                conn.recv()

        asyncio.run(main())

    def parent(conn: Connection) -> float:
        async def main() -> float:
            with shm.Writer(ping, capacity=1 << 16, backend=backend) as w, \
                    shm.Reader(pong, timeout=10, backend=backend) as r:
                conn.recv()
                t0 = now()
                for _ in range(rounds):
                    await w.send_async(MSG)
                    await r.recv_async()
                dt = now() - t0
                conn.send("done")
                return dt / rounds * 1e6

        return asyncio.run(main())

    return _two(child, parent)


def fastipc_awaited_stream(backend: str, count: int) -> float:
    from fastipc import shm

    name = _name()

    def child(conn: Connection) -> None:
        async def main() -> None:
            with shm.Reader(name, timeout=10, backend=backend) as r:
                conn.send("ready")
                for _ in range(count):
                    await r.recv_async()
                conn.send("done")

        asyncio.run(main())

    def parent(conn: Connection) -> float:
        async def main() -> float:
            with shm.Writer(name, backend=backend) as w:
                conn.recv()
                t0 = now()
                for _ in range(count):
                    await w.send_async(MSG)
                conn.recv()
                return count / (now() - t0)

        return asyncio.run(main())

    return _two(child, parent)


FRAME = len(MSG).to_bytes(4, "big") + MSG


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    n = int.from_bytes(await reader.readexactly(4), "big")
    return await reader.readexactly(n)


def _streams(loop: str, serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                        Awaitable[None]],
             client: Callable[[asyncio.StreamReader, asyncio.StreamWriter, Connection],
                              Awaitable[float]]) -> float:
    """A Unix stream server running ``serve`` in the child, ``client`` in the parent."""
    path = f"/tmp/{_name()}.sock"

    def child(conn: Connection) -> None:
        async def main() -> None:
            done = asyncio.Event()

            async def handle(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
                await serve(reader, writer)
                conn.send("done")
                writer.close()
                done.set()

            server = await asyncio.start_unix_server(handle, path)
            conn.send("ready")
            await done.wait()
            server.close()

        _loop_run(loop, main)

    def parent(conn: Connection) -> float:
        async def main() -> float:
            conn.recv()
            reader, writer = await asyncio.open_unix_connection(path)
            try:
                return await client(reader, writer, conn)
            finally:
                writer.close()

        return _loop_run(loop, main)  # type: ignore[no-any-return]

    try:
        return _two(child, parent)
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def streams_pingpong(loop: str, rounds: int) -> float:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(rounds):
            writer.write(len(MSG).to_bytes(4, "big") + await _read_frame(reader))

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     conn: Connection) -> float:
        t0 = now()
        for _ in range(rounds):
            writer.write(FRAME)
            await _read_frame(reader)
        dt = now() - t0
        conn.recv()
        return dt / rounds * 1e6

    return _streams(loop, serve, client)


def streams_stream(loop: str, count: int) -> float:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(count):
            await _read_frame(reader)

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     conn: Connection) -> float:
        t0 = now()
        for i in range(count):
            writer.write(FRAME)
            if i % 256 == 255:
                await writer.drain()
        await writer.drain()  # a transport may still hold data: wait off the loop
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        return count / (now() - t0)

    return _streams(loop, serve, client)


# ---------------------------------------------------------------------------- peers


def mp_pipe_pingpong(rounds: int) -> float:
    a, b = mp.Pipe()
    try:
        return _two(lambda conn: _echo(conn, b.recv_bytes, b.send_bytes, rounds),
                    lambda conn: _ping(conn, a.send_bytes, a.recv_bytes, rounds))
    finally:
        a.close()
        b.close()


def mp_pipe_stream(count: int) -> float:
    r, w = mp.Pipe(duplex=False)
    try:
        return _two(lambda conn: _drain(conn, r.recv_bytes, count),
                    lambda conn: count / _flood(conn, w.send_bytes, count))
    finally:
        r.close()
        w.close()


def mp_pipe_bulk(size: int, count: int) -> float:
    r, w = mp.Pipe(duplex=False)
    buf = bytearray(size)
    try:
        return _two(
            lambda conn: _drain(conn, lambda: r.recv_bytes_into(buf), count),
            lambda conn: size * count / _flood(conn, w.send_bytes, count, b"y" * size) / 1e9,
        )
    finally:
        r.close()
        w.close()


def _queue_cases(make: Callable[[], Any]) -> tuple[Callable[[int], float], Callable[[int], float]]:
    def pingpong(rounds: int) -> float:
        q1, q2 = make(), make()
        return _two(lambda conn: _echo(conn, q1.get, q2.put, rounds),
                    lambda conn: _ping(conn, q1.put, q2.get, rounds))

    def stream(count: int) -> float:
        q = make()
        return _two(lambda conn: _drain(conn, q.get, count),
                    lambda conn: count / _flood(conn, q.put, count))

    return pingpong, stream


def _mp_queue() -> Any:
    return mp.get_context("fork").Queue()


def _faster_fifo() -> Any:
    ff = optional("faster_fifo")
    return ff.Queue(max_size_bytes=8 * MiB)


mp_queue_pingpong, mp_queue_stream = _queue_cases(_mp_queue)
ff_pingpong, ff_stream = _queue_cases(_faster_fifo)


def ff_batch(count: int) -> float:
    q = _faster_fifo()
    batches = count // BATCH

    def child(conn: Connection) -> None:
        conn.send("ready")
        n, total = 0, batches * BATCH
        while n < total:
            n += len(q.get_many(max_messages_to_get=BATCH))
        conn.send("done")

    def parent(conn: Connection) -> float:
        conn.recv()
        batch = [MSG] * BATCH
        t0 = now()
        for _ in range(batches):
            q.put_many(batch)
        conn.recv()
        return batches * BATCH / (now() - t0)

    return _two(child, parent)


def zmq_stream(count: int) -> float:
    return _zmq_two("PULL", lambda conn, s: _drain(conn, s.recv, count),
                    "PUSH", lambda conn, s: count / _flood(conn, s.send, count))


def zmq_pingpong(rounds: int) -> float:
    return _zmq_two("PAIR", lambda conn, s: _echo(conn, s.recv, s.send, rounds),
                    "PAIR", lambda conn, s: _ping(conn, s.send, s.recv, rounds))


def _zmq_two(child_kind: str, child: Callable[[Connection, Any], None],
             parent_kind: str, parent: Callable[[Connection, Any], float]) -> float:
    """:func:`_two` over a pyzmq ``ipc://`` socket pair: the parent's socket binds, the
    child's connects."""
    zmq = optional("zmq")
    path = f"ipc:///tmp/{_name()}"

    def in_child(conn: Connection) -> None:
        with _zmq_socket(zmq, getattr(zmq, child_kind), path, bind=False) as s:
            child(conn, s)

    def in_parent(conn: Connection) -> float:
        with _zmq_socket(zmq, getattr(zmq, parent_kind), path) as s:
            return parent(conn, s)

    return _two(in_child, in_parent)


@contextmanager
def _zmq_socket(zmq: Any, kind: int, path: str, bind: bool = True) -> Iterator[Any]:
    """A socket bound to ``path`` (or connected to it); closed afterwards, and the socket
    file of a bound one removed."""
    ctx = zmq.Context()
    s = ctx.socket(kind)
    (s.bind if bind else s.connect)(path)
    try:
        yield s
    finally:
        s.close(0)
        ctx.term()
        if bind:
            try:
                os.unlink(path[len("ipc://"):])
            except FileNotFoundError:
                pass


def mp_shared_memory_bulk(size: int, count: int) -> float:
    from multiprocessing import shared_memory

    seg = shared_memory.SharedMemory(create=True, size=size)
    go_r, go_w = os.pipe()
    ack_r, ack_w = os.pipe()

    def child(conn: Connection) -> None:
        # a forked child shares the parent's resource tracker: its registration is the
        # parent's, which the parent's unlink() ends
        other = shared_memory.SharedMemory(seg.name)
        buf = bytearray(size)
        view = memoryview(buf)
        src = other.buf
        assert src is not None
        conn.send("ready")
        for _ in range(count):
            os.read(go_r, 1)
            view[:] = src[:size]
            os.write(ack_w, b"a")
        del view, src
        other.close()

    def parent(conn: Connection) -> float:
        data = memoryview(b"z" * size)
        dst = seg.buf
        assert dst is not None
        conn.recv()
        t0 = now()
        for _ in range(count):
            dst[:size] = data
            os.write(go_w, b"g")
            os.read(ack_r, 1)
        return size * count / (now() - t0) / 1e9

    try:
        return _two(child, parent)
    finally:
        for fd in (go_r, go_w, ack_r, ack_w):
            os.close(fd)
        seg.close()
        seg.unlink()


def iceoryx2_pingpong(rounds: int) -> float:
    iox2 = optional("iceoryx2")
    if not hasattr(iox2, "NodeBuilder"):  # another package, or an API this case predates
        raise Missing("iceoryx2 without NodeBuilder (written for iceoryx2 0.10)")

    class Payload(ctypes.Structure):
        _fields_ = [("data", ctypes.c_uint8 * 64)]

    base = _name().replace("-", "_")

    def open_ports(node: Any, out: str, inp: str) -> tuple[Any, Any]:
        pub = (node.service_builder(iox2.ServiceName.new(out)).publish_subscribe(Payload)
               .open_or_create().publisher_builder().create())
        sub = (node.service_builder(iox2.ServiceName.new(inp)).publish_subscribe(Payload)
               .open_or_create().subscriber_builder().create())
        return pub, sub

    def exchange(pub: Any, sub: Any, first: bool) -> None:
        if first:
            sample = pub.loan_uninit()
            sample.write_payload(Payload()).send()
        while True:
            got = sub.receive()
            if got is not None:
                break
        del got
        if not first:
            sample = pub.loan_uninit()
            sample.write_payload(Payload()).send()

    def child(conn: Connection) -> None:
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        pub, sub = open_ports(node, base + "/pong", base + "/ping")
        conn.send("ready")
        for _ in range(rounds + 1):
            exchange(pub, sub, False)
        conn.recv()

    def parent(conn: Connection) -> float:
        node = iox2.NodeBuilder.new().create(iox2.ServiceType.Ipc)
        pub, sub = open_ports(node, base + "/ping", base + "/pong")
        conn.recv()
        exchange(pub, sub, True)  # both ports connected: warm-up round
        t0 = now()
        for _ in range(rounds):
            exchange(pub, sub, True)
        dt = now() - t0
        conn.send("done")
        return dt / rounds * 1e6

    try:
        return _two(child, parent)
    except iox2.PublishSubscribeOpenOrCreateError as exc:  # pragma: no cover
        raise Missing(f"iceoryx2: {exc}") from exc


def _c_ring(workload: str, _count: int) -> float:
    """The plain-C ring (bench/c/shm_ring.c): it picks its own count."""
    return run_c("shm_ring", workload)


def iceoryx2_check() -> None:
    optional("iceoryx2")


# ---------------------------------------------------------------------------- cases


def cases(quick: bool) -> list[Case]:
    k = 0.4 if quick else 1.0
    rounds = int(20000 * k)
    fast_n = int(1_000_000 * k)
    slow_n = int(100_000 * k)
    batch_n = int(4_000_000 * k)
    out: list[Case] = []

    def add(workload: str, impl: str, unit: str, fn: Callable[[], float], note: str = "") -> None:
        out.append(Case("shm", workload, impl, unit, fn, note))

    # each implementation's ping-pong 64 B (its rounds) and stream 64 B (its messages), plain
    # and awaited: one row of the table per implementation, one case per workload
    pair = Callable[[int], float]
    table: dict[str, list[tuple[str, pair, int, Optional[pair], int]]] = {
        "": [
            ("fastipc native", partial(fastipc_pingpong, "native"), rounds,
             partial(fastipc_stream, "native"), fast_n),
            ("fastipc pure", partial(fastipc_pingpong, "pure"), rounds // 4,
             partial(fastipc_stream, "pure"), slow_n),
            ("multiprocessing.Pipe", mp_pipe_pingpong, rounds // 4, mp_pipe_stream, slow_n),
            ("multiprocessing.Queue", mp_queue_pingpong, rounds // 8, mp_queue_stream,
             slow_n // 2),
            ("faster-fifo", ff_pingpong, rounds // 8, ff_stream, slow_n // 2),
            ("pyzmq ipc://", zmq_pingpong, rounds // 8, zmq_stream, slow_n),
            ("iceoryx2", iceoryx2_pingpong, rounds, None, 0),
            ("C shm ring", partial(_c_ring, "pingpong"), 0, partial(_c_ring, "stream"), 0),
        ],
        "awaited ": [
            ("fastipc native", partial(fastipc_awaited_pingpong, "native"), rounds,
             partial(fastipc_awaited_stream, "native"), slow_n * 4),
            ("fastipc pure", partial(fastipc_awaited_pingpong, "pure"), rounds // 4,
             partial(fastipc_awaited_stream, "pure"), slow_n),
            ("asyncio streams (Unix)", partial(streams_pingpong, "asyncio"), rounds // 8,
             partial(streams_stream, "asyncio"), slow_n),
            ("uvloop streams (Unix)", partial(streams_pingpong, "uvloop"), rounds // 8,
             partial(streams_stream, "uvloop"), slow_n),
        ],
    }
    for prefix, rows in table.items():
        for impl, pingpong, n, _, _ in rows:
            add(prefix + "ping-pong 64 B", impl, "us", partial(pingpong, n))
        for impl, _, _, stream, n in rows:
            if stream is not None:
                add(prefix + "stream 64 B", impl, "msg/s", partial(stream, n))

    add("stream 64 B, a CPU-bound thread in the sender", "fastipc native", "msg/s",
        partial(fastipc_stream_busy, "native", fast_n))

    w = "batch 64 B"
    add(w, "fastipc native", "msg/s", lambda: fastipc_batch("native", batch_n))
    add(w, "fastipc pure", "msg/s", lambda: fastipc_batch("pure", slow_n))
    add(w, "faster-fifo", "msg/s", lambda: ff_batch(slow_n * 4))
    add(w, "C shm ring", "msg/s", lambda: run_c("shm_ring", "stream"))

    for size, label, n, slow in ((MiB, "1 MiB", int(2000 * k), int(200 * k)),
                                 (64 * MiB, "64 MiB", max(3, int(20 * k)), 3)):
        w = f"one-way {label}"
        add(w, "fastipc native", "GB/s", partial(fastipc_bulk, "native", size, n))
        add(w, "fastipc pure", "GB/s", partial(fastipc_bulk, "pure", size, slow))
        add(w, "multiprocessing.shared_memory", "GB/s",
            partial(mp_shared_memory_bulk, size, n))
        add(w, "multiprocessing.Pipe", "GB/s", partial(mp_pipe_bulk, size, slow))
        add(w, "C shm ring", "GB/s",
            partial(run_c, "shm_ring", "bulk", str(size), str(max(3, n * 2))))
        add(w, "C memcpy", "GB/s", partial(run_c, "memcpy", str(size)))
    return out
