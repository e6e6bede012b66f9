"""Pipes: fastipc's framed pipe (native and pure) against multiprocessing.Pipe, a hand-framed
``os.pipe`` and a plain-C pipe.

Workloads, each between two processes pinned to separate cores:

- 64 B ping-pong: the parent sends a 64-byte message, the child sends it back; microseconds
  per round trip.
- 64 B stream: the child sends 64-byte messages as fast as it can, the parent receives them
  all; messages per second.
- awaited 64 B stream: the same stream, the parent awaiting ``recv_async`` on an event loop
  (uvloop if installed, else asyncio) while the child sends with blocking ``send``.
- 64 B batches: the same stream with ``send_many`` / ``recv_many``, 256 messages a batch
  (fastipc only: one system call and one C call per batch instead of per message).
- 1 MiB / 64 MiB one-way: the child sends messages of that size, the parent receives them
  whole; GB/s (1e9 bytes per second). fastipc grows its pipe to the largest buffer allowed
  (F_SETPIPE_SZ up to /proc/sys/fs/pipe-max-size); the peers keep the default 64 KiB.

The hand-framed ``os.pipe`` is what a careful Python programmer writes by hand: one
``os.write`` of a 4-byte length and the payload per message, and a reader that reads 64 KiB
chunks and splits them with ``struct``. Timing starts when the parent releases the child.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from fastipc.bench import Case, now, pinned, run_c

PAYLOAD = b"x" * 64
_HDR = struct.Struct(">I")


def _max_pipe_size() -> int:
    try:
        with open("/proc/sys/fs/pipe-max-size") as f:
            return int(f.read())
    except OSError:
        return 1 << 20


# ---- channel factories: (parent_send, parent_recv, child_send, child_recv, close_parent,
#      close_child) over two one-way pipes, so that each side closes the other's ends.


def _fastipc(backend: str, size: int = 0) -> Callable[[], Any]:
    def make() -> Any:
        from fastipc import pipe

        kw: dict[str, Any] = {"backend": backend}
        if size:
            kw["size"] = size
        down_r, down_w = pipe.pipe(**kw)
        up_r, up_w = pipe.pipe(**kw)
        return (down_w.send, up_r.recv, up_w.send, down_r.recv, (down_w, up_r), (up_w, down_r))

    return make


def _mp_pipe() -> Any:
    down_r, down_w = mp.Pipe(duplex=False)
    up_r, up_w = mp.Pipe(duplex=False)
    return (
        down_w.send_bytes,
        up_r.recv_bytes,
        up_w.send_bytes,
        down_r.recv_bytes,
        (down_w, up_r),
        (up_w, down_r),
    )


class _HandFramed:
    """Length-prefixed messages over os.pipe: 64 KiB read-ahead, an offset instead of
    re-slicing, and large payloads read straight into one bytearray."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd, self.buf, self.pos = rfd, wfd, b"", 0

    def send(self, data: bytes) -> None:
        if len(data) <= 65536:
            os.write(self.wfd, _HDR.pack(len(data)) + data)
            return
        os.write(self.wfd, _HDR.pack(len(data)))
        view = memoryview(data)
        while view:
            view = view[os.write(self.wfd, view) :]

    def recv(self) -> Any:
        buf, pos = self.buf, self.pos
        while True:
            avail = len(buf) - pos
            if avail >= 4:
                (n,) = _HDR.unpack_from(buf, pos)
                if avail >= 4 + n:
                    self.pos = pos + 4 + n
                    return buf[pos + 4 : pos + 4 + n]
                if n > 65536:
                    out = bytearray(n)
                    have = avail - 4
                    out[:have] = buf[pos + 4 :]
                    view = memoryview(out)
                    while have < n:
                        got = os.readv(self.rfd, [view[have:]])
                        if not got:
                            raise EOFError
                        have += got
                    self.buf, self.pos = b"", 0
                    return out
            chunk = os.read(self.rfd, 65536)
            if not chunk:
                raise EOFError
            buf, pos = buf[pos:] + chunk, 0
            self.buf, self.pos = buf, 0

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass


def _os_pipe() -> Any:
    dr, dw = os.pipe()
    ur, uw = os.pipe()
    parent = _HandFramed(ur, dw)
    child = _HandFramed(dr, uw)
    return (parent.send, parent.recv, child.send, child.recv, (parent,), (child,))


def _close(objs: Any) -> None:
    for o in objs:
        o.close()


# ---- workloads


def _pingpong(make: Callable[[], Any], n: int) -> float:
    psend, precv, csend, crecv, pobjs, cobjs = make()

    def child() -> None:
        _close(pobjs)
        crecv()
        for _ in range(n):
            csend(crecv())

    with pinned(child):
        _close(cobjs)
        psend(b"go")
        t0 = now()
        for _ in range(n):
            psend(PAYLOAD)
            precv()
        elapsed = now() - t0
        _close(pobjs)
    return elapsed / n * 1e6


def _oneway(make: Callable[[], Any], n: int, size: int) -> float:
    """Returns messages per second; the caller converts to bytes when it wants GB/s."""
    psend, precv, csend, crecv, pobjs, cobjs = make()
    payload = b"x" * size

    def child() -> None:
        _close(pobjs)
        crecv()
        for _ in range(n):
            csend(payload)
        _close(cobjs)

    with pinned(child):
        _close(cobjs)
        t0 = now()
        psend(b"go")
        for _ in range(n):
            if len(precv()) != size:
                raise AssertionError("short message")
        elapsed = now() - t0
        _close(pobjs)
    return n / elapsed


def _batches(backend: str, n: int, batch: int = 256) -> float:
    from fastipc import pipe

    down_r, down_w = pipe.pipe(backend=backend)
    up_r, up_w = pipe.pipe(backend=backend)
    messages = [PAYLOAD] * batch

    def child() -> None:
        down_w.close()
        up_r.close()
        down_r.recv()
        for _ in range(n // batch):
            up_w.send_many(messages)
        up_w.close()

    with pinned(child):
        down_r.close()
        up_w.close()
        t0 = now()
        down_w.send(b"go")
        got = 0
        while True:
            if got >= n // batch * batch:
                break
            got += len(up_r.recv_many(4096))
        elapsed = now() - t0
        down_w.close()
        up_r.close()
    return got / elapsed


def _awaited(backend: str, n: int) -> float:
    import asyncio

    from fastipc import pipe

    try:
        import uvloop

        new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    down_r, down_w = pipe.pipe(backend=backend)
    up_r, up_w = pipe.pipe(backend=backend)

    def child() -> None:
        down_w.close()
        up_r.close()
        down_r.recv()
        for _ in range(n):
            up_w.send(PAYLOAD)
        up_w.close()

    async def drain() -> float:
        t0 = now()
        down_w.send(b"go")
        for _ in range(n):
            await up_r.recv_async()
        return now() - t0

    with pinned(child):
        down_r.close()
        up_w.close()
        loop = new_loop()
        try:
            elapsed = loop.run_until_complete(drain())
        finally:
            loop.close()
        down_w.close()
        up_r.close()
    return n / elapsed


def _gbps(make: Callable[[], Any], n: int, size: int) -> float:
    return _oneway(make, n, size) * size / 1e9


def cases(quick: bool) -> list[Case]:
    n_pp = 2_000 if quick else 10_000
    n_stream = 200_000 if quick else 1_000_000
    n_1m = 64 if quick else 256
    n_64m = 2 if quick else 6
    big = _max_pipe_size()
    impls: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = [
        ("fastipc native", _fastipc("native"), _fastipc("native", big)),
        ("fastipc pure", _fastipc("pure"), _fastipc("pure", big)),
        ("os.pipe, hand-framed", _os_pipe, _os_pipe),
        ("multiprocessing.Pipe", _mp_pipe, _mp_pipe),
    ]
    c_pipe = "C pipe"
    out: list[Case] = []
    for impl, make, _ in impls:
        out.append(Case("pipe", "64 B ping-pong", impl, "us", partial(_pingpong, make, n_pp)))
    out.append(
        Case(
            "pipe",
            "64 B ping-pong",
            c_pipe,
            "us",
            partial(run_c, "pipe_bench", "pingpong", str(n_pp * 5)),
        )
    )
    for impl, make, _ in impls:
        out.append(Case("pipe", "64 B stream", impl, "msg/s", partial(_oneway, make, n_stream, 64)))
    out.append(
        Case(
            "pipe",
            "64 B stream",
            c_pipe,
            "msg/s",
            partial(run_c, "pipe_bench", "stream", str(n_stream * 5)),
        )
    )
    for impl, backend in (("fastipc native", "native"), ("fastipc pure", "pure")):
        out.append(Case("pipe", "awaited 64 B stream", impl, "msg/s",
                        partial(_awaited, backend, n_stream)))
    for impl, backend in (("fastipc native", "native"), ("fastipc pure", "pure")):
        out.append(
            Case("pipe", "64 B batches", impl, "msg/s", partial(_batches, backend, n_stream))
        )
    for label, size, count in (
        ("1 MiB one-way", 1 << 20, n_1m),
        ("64 MiB one-way", 64 << 20, n_64m),
    ):
        for impl, _, make_big in impls:
            out.append(
                Case(
                    "pipe",
                    label,
                    impl,
                    "GB/s",
                    partial(_gbps, make_big, count, size),
                )
            )
        out.append(
            Case(
                "pipe",
                label,
                c_pipe,
                "GB/s",
                partial(run_c, "pipe_bench", "bulk", str(count), str(size)),
            )
        )
    return out
