"""fastipc.client: blocking and awaitable socket clients (the blocking client's exchanges
with fastipc servers are tested in test_server.py), both backends, asyncio and uvloop."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from typing import TypeVar

import pytest
import uvloop

from fastipc import client, server
from helpers import frame, gather_cut_short, run_on, run_python, start_python
from test_server import serving

T = TypeVar("T")
WAIT = 10.0
HERE = Path(__file__).resolve().parent  # a child started here imports helpers

_warm = uvloop.new_event_loop()  # uvloop's process-wide pipe, opened outside the leak check
_warm.close()


run = run_on


class Echo(server.Handler):
    def on_message(self, conn: server.Connection, data: bytes) -> None:
        conn.send(data)


def test_connect_async_echo(backend: str, loop_kind: str, sock_path: str) -> None:
    srv = server.Server(Echo(), tcp=("127.0.0.1", 0), unix=sock_path, backend=backend)

    async def main() -> None:
        for address in (srv.tcp_address, sock_path):
            c = await client.connect_async(address, timeout=WAIT, backend=backend)
            with c:
                assert isinstance(c, client.AsyncClient) and c.framing == "length"
                assert c.address == address and not os.get_inheritable(c.fileno())
                for m in (b"", b"hi", os.urandom(3 << 20)):
                    await c.send(m, timeout=WAIT)
                    assert await c.recv(timeout=WAIT) == m
            with pytest.raises(ValueError, match="closed"):
                await c.recv()
        raw = await client.connect_async(sock_path, framing="raw", backend=backend)
        with raw:
            await raw.send(frame(b"abc"))
            got = b""
            while len(got) < 7:
                got += await raw.recv(timeout=WAIT)
            assert got == frame(b"abc")

    with serving(srv):
        run(loop_kind, main())


def test_connect_async_errors(backend: str, loop_kind: str, sock_path: str) -> None:
    async def main() -> None:
        with pytest.raises((FileNotFoundError, ConnectionRefusedError)):
            await client.connect_async(sock_path, backend=backend)
        with pytest.raises(ValueError):
            await client.connect_async(sock_path, timeout=-1, backend=backend)
        with pytest.raises(ValueError):
            await client.connect_async(sock_path, framing="x", backend=backend)
        with pytest.raises(TypeError):
            await client.connect_async(12, backend=backend)  # type: ignore[arg-type]

    run(loop_kind, main())


def _peer(sock_path: str) -> tuple[socket.socket, threading.Thread, list[socket.socket]]:
    """A plain listening socket whose one accepted connection the test drives by hand."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(1)
    accepted: list[socket.socket] = []
    t = threading.Thread(target=lambda: accepted.append(listener.accept()[0]))
    t.start()
    return listener, t, accepted


def test_async_client_timeouts_cancel_rounds_and_dead_peer(
    backend: str, loop_kind: str, sock_path: str
) -> None:
    listener, t, accepted = _peer(sock_path)
    n = 200

    async def main() -> None:
        c = await client.connect_async(sock_path, timeout=WAIT, backend=backend)
        t.join(WAIT)
        (peer,) = accepted
        with c:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await c.recv(timeout=0.1)
            assert time.monotonic() - t0 >= 0.09

            def feed() -> None:
                for i in range(n):
                    peer.sendall(frame(i.to_bytes(4, "big") * (20_000 if i % 7 == 0 else 1)))
                    time.sleep(0.0005)

            feeder = threading.Thread(target=feed)
            feeder.start()
            got, _ = await gather_cut_short(lambda got: c.recv(), lambda got: len(got) >= n, 1000)
            for j, m in enumerate(got):
                assert m[:4] == j.to_bytes(4, "big") and len(set(m[i::4] for i in range(4))) <= 4
            feeder.join()
            peer.close()  # the server goes away
            with pytest.raises(EOFError):
                await c.recv(timeout=WAIT)
            with pytest.raises((BrokenPipeError, ConnectionResetError)):
                for _ in range(100):
                    await c.send(b"x" * 100_000, timeout=WAIT)

    try:
        run(loop_kind, main())
    finally:
        listener.close()


def test_async_client_close_while_awaiting(backend: str, loop_kind: str, sock_path: str) -> None:
    listener, t, accepted = _peer(sock_path)

    async def main() -> None:
        c = await client.connect_async(sock_path, timeout=WAIT, backend=backend)
        threading.Timer(0.1, c.close).start()
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="closed"):
            await c.recv(timeout=WAIT)
        assert time.monotonic() - t0 < 3

    try:
        run(loop_kind, main())
        t.join(WAIT)
        time.sleep(0.05)
    finally:
        for s in accepted:
            s.close()
        listener.close()


CLOSE_BLOCKED_CLIENT = r"""
import socket, sys
from fastipc import client
from helpers import close_ends_call
backend, op, path = sys.argv[1], sys.argv[2], sys.argv[3]
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(path)
listener.listen(1)
c = client.connect(path, backend=backend)
peer, _ = listener.accept()           # connected; the peer never reads nor writes
if op == "send":
    call = lambda: [c.send(b"x" * 1_000_000) for _ in range(1000)]  # fills the socket
else:
    call = c.recv
error = close_ends_call(call, c.close, settle=0.3, within=1)
assert isinstance(error, ValueError), repr(error)
peer.close()
listener.close()
print("ok")
"""


@pytest.mark.parametrize("op", ["recv", "send"])
def test_client_close_from_another_thread(backend: str, op: str, sock_path: str) -> None:
    """Closing a blocking client while another thread is blocked in it: that call ends
    promptly with ValueError (in a child process, so that a crash fails the test)."""
    proc = run_python(CLOSE_BLOCKED_CLIENT, backend, op, sock_path, timeout=30, cwd=HERE)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok"


def test_async_client_across_processes(cross: tuple[str, str], loop_kind: str,
                                       sock_path: str) -> None:
    """A blocking client in another process talks to an awaiting one through a server."""
    sender, receiver = cross
    srv = server.Server(_Relay(), unix=sock_path, backend=receiver)
    code = """
import sys, time
from fastipc import client
with client.connect(sys.argv[1], timeout=10, backend=sys.argv[2]) as c:
    c.send(b"hello")
    for i in range(100):
        c.send(b"n%d" % i)
    assert c.recv(timeout=10) == b"bye"
"""

    async def main() -> None:
        with await client.connect_async(sock_path, backend=receiver) as c:
            await c.send(b"hello")
            proc = start_python(code, sock_path, sender)
            got = [await c.recv(timeout=WAIT) for _ in range(100)]
            assert got == [b"n%d" % i for i in range(100)]
            await c.send(b"bye")
            _, err = await asyncio.get_running_loop().run_in_executor(
                None, lambda: proc.communicate(timeout=WAIT))
            assert proc.returncode == 0, err

    with serving(srv):
        run(loop_kind, main())


class _Relay(server.Handler):
    """Pairs the first two connections that say hello; relays messages between them."""

    def __init__(self) -> None:
        self.peers: list[server.Connection] = []

    def on_message(self, conn: server.Connection, data: bytes) -> None:
        if data == b"hello":
            self.peers.append(conn)
            return
        for other in self.peers:
            if other is not conn:
                other.send(data)


def test_client_handle_closed_and_forgotten(backend: str, sock_path: str) -> None:
    """A client's send/recv are its handle's (natively C methods); on a closed client they
    raise ValueError whatever their arguments; a client dropped without close(), with the
    garbage collector off, closes its socket at once (no reference cycle)."""
    import gc
    import inspect

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(2)
    try:
        for framing in ("length", "raw"):
            c = client.connect(sock_path, framing=framing, backend=backend)
            peer, _ = listener.accept()
            with peer:
                assert inspect.isfunction(type(c).send) == (backend == "pure")
                c.send(b"abc")
                expected = frame(b"abc") if framing == "length" else b"abc"
                assert peer.recv(100) == expected
                peer.sendall(expected)
                assert c.recv(timeout=WAIT) == b"abc"
                fd = c.fileno()
                gc.disable()
                try:
                    del c
                    with pytest.raises(OSError):
                        os.fstat(fd)
                finally:
                    gc.enable()
        c = client.connect(sock_path, backend=backend)
        listener.accept()[0].close()
        c.close()
        for call in (lambda: c.send(b"x"), lambda: c.send("text", timeout=-1),
                     lambda: c.recv(), lambda: c.recv(timeout="x")):
            with pytest.raises(ValueError, match="closed Client"):
                call()
    finally:
        listener.close()


@pytest.mark.parametrize("framing", ["length", "raw"])
def test_end_of_stream_recv_raises_read_returns_empty(backend: str, sock_path: str,
                                                      framing: str) -> None:
    """The server sends, then closes first: ``recv`` returns what it sent (a message, or
    the raw bytes), then raises EOFError whatever the framing; ``read`` returns raw bytes,
    then ``b""`` at the end, as a pipe's ``read`` does."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(2)
    payload = frame(b"last") if framing == "length" else b"last"
    try:
        with client.connect(sock_path, framing=framing, backend=backend) as c:
            peer, _ = listener.accept()
            peer.sendall(payload)
            peer.close()
            assert c.recv(timeout=WAIT) == b"last"
            with pytest.raises(EOFError):
                c.recv(timeout=WAIT)
            assert c.read(timeout=WAIT) == b""
        with client.connect(sock_path, framing=framing, backend=backend) as c:
            peer, _ = listener.accept()
            peer.sendall(frame(b"raw bytes"))
            peer.close()
            got = b""
            while len(got) < 4 + 9:
                got += c.read(4 + 9 - len(got), timeout=WAIT)
            assert got == frame(b"raw bytes")
            assert c.read(timeout=WAIT) == b""
            assert c.read(0) == b""
            with pytest.raises(EOFError):
                c.recv(timeout=WAIT)
            with pytest.raises(TypeError):
                c.read("3")
    finally:
        listener.close()


@pytest.mark.parametrize("framing", ["length", "raw"])
def test_async_end_of_stream_recv_raises_read_returns_empty(
        backend: str, loop_kind: str, sock_path: str, framing: str) -> None:
    """The awaitable client as the blocking one: EOFError from ``recv`` at the end
    whatever the framing, ``read(n, timeout)`` with ``b""`` at the end."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(2)
    payload = frame(b"last") if framing == "length" else b"last"

    async def main() -> None:
        c = await client.connect_async(sock_path, framing=framing, timeout=WAIT,
                                       backend=backend)
        with c:
            peer, _ = listener.accept()
            peer.sendall(payload)
            peer.close()
            assert await c.recv(timeout=WAIT) == b"last"
            with pytest.raises(EOFError):
                await c.recv(timeout=WAIT)
            assert await c.read(timeout=WAIT) == b""
        c = await client.connect_async(sock_path, framing=framing, timeout=WAIT,
                                       backend=backend)
        with c:
            peer, _ = listener.accept()
            peer.sendall(b"abcdef")
            got = b""
            while len(got) < 6:
                got += await c.read(6 - len(got), timeout=WAIT)
            assert got == b"abcdef"
            with pytest.raises(TimeoutError):
                await c.read(timeout=0.05)
            peer.close()
            assert await c.read(timeout=WAIT) == b""
        for call in (c.recv, c.read):  # a closed one names its class, as Client does
            with pytest.raises(ValueError, match="closed AsyncClient"):
                await call(timeout=WAIT)

    try:
        run(loop_kind, main())
    finally:
        listener.close()
