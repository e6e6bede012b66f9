"""Echo servers: requests per second and server CPU per request, with a C load generator.

What is measured: a server whose Python handler echoes each message back, 64-byte requests
in 4-byte big-endian length frames, under load from ``bench/c/echo_load.c`` -- a plain-C
client in its own process that opens N connections (50, and 1,000) to 127.0.0.1 or a Unix
socket, keeps one request outstanding on each and sends the next as soon as the whole
response is back. After a warm-up it counts completed requests over a fixed window and
reads the server process's CPU time (utime + stime from ``/proc/<pid>/stat``) at both ends
of the window, giving requests/s and server CPU µs per request.

Layouts: "same core" pins the server and the load generator to one CPU (the stable figure
on a shared 2-CPU machine: nothing depends on cross-core wake-ups), "split" pins them to
two. Each server is a fresh process started once per case and reused across its trials.

Servers: fastipc native (the C epoll loop), fastipc pure (its ``selectors`` fallback), a
hand-written ``selectors`` server, asyncio Protocol and streams, uvloop Protocol and
streams -- each parsing the frames and calling a handler per message, as fastipc does -- plus
uvloop Protocol writing back whatever it reads with no framing at all (the least work any
Python server can do), and ``bench/c/echo_server.c``, a plain-C epoll echo server: the
limit. The CPU
µs/request rows come from the same trials as the same-core requests/s rows.

Awaited streams (the peers of the async shared-memory channel): asyncio and uvloop *streams*
(``StreamReader``/``StreamWriter``) over a Unix socketpair between two processes pinned to
two cores, 64-byte messages in 4-byte length frames. "64 B ping-pong, awaited": the client
writes a message and awaits the echo, µs per round trip. "64 B stream, awaited": the other
process writes messages as fast as its loop lets it, the client awaits each one, msg/s.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from fastipc.bench import Case, c_program, cores, now, optional, pinned

IMPLS = [
    "fastipc native",
    "fastipc pure",
    "selectors",
    "asyncio Protocol",
    "asyncio streams",
    "uvloop Protocol",
    "uvloop streams",
    "uvloop Protocol, raw echo",
    "C epoll",
]

_PRELUDE = """
import os, sys, struct, threading
os.sched_setaffinity(0, {int(sys.argv[1])})
TRANSPORT, WHERE = sys.argv[2], sys.argv[3]
def ready(addr):
    print("READY", addr, flush=True)
"""

_FASTIPC = _PRELUDE + """
from fastipc import server
class Echo(server.Handler):
    def on_message(self, conn, data):
        conn.send(data)
kw = {"tcp": (WHERE, 0)} if TRANSPORT == "tcp" else {"unix": WHERE}
srv = server.Server(Echo(), backend=sys.argv[4], **kw)
def watch():
    sys.stdin.read()
    srv.stop()
threading.Thread(target=watch, daemon=True).start()
ready(srv.tcp_address[1] if TRANSPORT == "tcp" else srv.unix_path)
srv.serve_forever()
srv.close()
"""

_SELECTORS = _PRELUDE + """
import selectors, socket
def handle(payload):
    return payload
sel = selectors.DefaultSelector()
if TRANSPORT == "tcp":
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((WHERE, 0))
else:
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(WHERE)
lsock.listen(4096)
lsock.setblocking(False)
sel.register(lsock, selectors.EVENT_READ, None)
sel.register(sys.stdin, selectors.EVENT_READ, "stdin")
bufs, outs = {}, {}
ready(lsock.getsockname()[1] if TRANSPORT == "tcp" else WHERE)

def drop(sock):
    sel.unregister(sock)
    del bufs[sock], outs[sock]
    sock.close()

def write(sock, data):
    try:
        n = sock.send(data)
    except BlockingIOError:
        n = 0
    except ConnectionError:
        drop(sock)
        return
    outs[sock] = data[n:]
    sel.modify(sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if n < len(data) else 0), 1)

running = True
while running:
    for key, events in sel.select():
        sock = key.fileobj
        if key.data is None:
            try:
                conn, _ = lsock.accept()
            except BlockingIOError:
                continue
            conn.setblocking(False)
            if TRANSPORT == "tcp":
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            bufs[conn] = outs[conn] = b""
            sel.register(conn, selectors.EVENT_READ, 1)
        elif key.data == "stdin":
            running = False
        elif events & selectors.EVENT_WRITE and outs[sock]:
            write(sock, outs[sock])
        else:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionError:
                data = b""
            if not data:
                drop(sock)
                continue
            buf = bufs[sock] + data if bufs[sock] else data
            pos, out = 0, []
            while len(buf) - pos >= 4:
                n = int.from_bytes(buf[pos:pos + 4], "big")
                if len(buf) - pos - 4 < n:
                    break
                reply = handle(buf[pos + 4:pos + 4 + n])
                out.append(len(reply).to_bytes(4, "big") + reply)
                pos += 4 + n
            bufs[sock] = buf[pos:]
            if out:
                if outs[sock]:
                    outs[sock] += b"".join(out)
                else:
                    write(sock, b"".join(out))
if TRANSPORT == "unix":
    os.unlink(WHERE)
"""

_ASYNCIO = _PRELUDE + """
import asyncio
STYLE, LOOP = sys.argv[4], sys.argv[5]
if LOOP == "uvloop":
    import uvloop
    loop = uvloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
    def data_received(self, data):
        buf = self.buf + data if self.buf else data
        pos = 0
        while len(buf) - pos >= 4:
            n = int.from_bytes(buf[pos:pos + 4], "big")
            if len(buf) - pos - 4 < n:
                break
            payload = buf[pos + 4:pos + 4 + n]
            self.t.write(len(payload).to_bytes(4, "big") + payload)
            pos += 4 + n
        self.buf = buf[pos:]

class RawEcho(asyncio.Protocol):
    # no framing and no per-message handler: the bytes go back as they came
    def connection_made(self, transport):
        self.t = transport
    def data_received(self, data):
        self.t.write(data)

async def handle(reader, writer):
    try:
        while True:
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header, "big"))
            writer.write(len(payload).to_bytes(4, "big") + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()

async def main():
    if STYLE in ("protocol", "raw"):
        proto = Echo if STYLE == "protocol" else RawEcho
        if TRANSPORT == "tcp":
            srv = await loop.create_server(proto, WHERE, 0, backlog=4096)
        else:
            srv = await loop.create_unix_server(proto, WHERE, backlog=4096)
    else:
        if TRANSPORT == "tcp":
            srv = await asyncio.start_server(handle, WHERE, 0, backlog=4096)
        else:
            srv = await asyncio.start_unix_server(handle, WHERE, backlog=4096)
    done = loop.create_future()
    loop.add_reader(0, lambda: done.done() or done.set_result(None))
    ready(srv.sockets[0].getsockname()[1] if TRANSPORT == "tcp" else WHERE)
    await done
    srv.close()

loop.run_until_complete(main())
"""

_DIR = Path(tempfile.gettempdir()) / f"fastipc-bench-{os.getuid()}"


class _Server:
    """A server process pinned to one CPU; it exits when its stdin closes."""

    def __init__(self, impl: str, transport: str, cpu: int) -> None:
        _DIR.mkdir(mode=0o700, exist_ok=True)
        where = "127.0.0.1"
        if transport == "unix":
            where = str(_DIR / f"echo-{impl.replace(' ', '-').replace(',', '')}.sock")
            if os.path.exists(where):
                os.unlink(where)
        if impl.startswith("fastipc"):
            argv = [sys.executable, "-c", _FASTIPC, str(cpu), transport, where, impl.split()[1]]
        elif impl == "selectors":
            argv = [sys.executable, "-c", _SELECTORS, str(cpu), transport, where]
        elif impl == "C epoll":
            argv = [str(c_program("echo_server")), str(cpu), str(cpu), transport, where]
        else:
            loop, style = impl.split()[:2]
            if loop == "uvloop":
                optional("uvloop")
            style = "raw" if "raw" in impl else style.lower()
            argv = [sys.executable, "-c", _ASYNCIO, str(cpu), transport, where, style, loop]
        self.unix = where if transport == "unix" else None
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line.startswith("READY"):
            err = self.stop()
            raise RuntimeError(f"{impl} echo server did not start: {err.strip()[-500:]}")
        self.address = line.split()[1]

    def stop(self) -> str:
        proc = self.proc
        err = ""
        if proc.poll() is None:
            try:
                _, err = proc.communicate(timeout=5)  # closes stdin: the server stops
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
        else:
            err = proc.stderr.read() if proc.stderr else ""
        if self.unix and os.path.exists(self.unix):
            os.unlink(self.unix)
        return err or ""


_running: dict[str, Any] = {"key": None, "server": None}


def _server(impl: str, transport: str, cpu: int) -> _Server:
    key = (impl, transport, cpu)
    if _running["key"] != key:
        _stop_server()
        _running["server"] = _Server(impl, transport, cpu)
        _running["key"] = key
    srv: _Server = _running["server"]
    return srv


def _stop_server() -> None:
    srv = _running["server"]
    _running["server"] = _running["key"] = None
    if srv is not None:
        srv.stop()


atexit.register(_stop_server)


def _load(
    impl: str, transport: str, conns: int, split: bool, seconds: float
) -> tuple[float, float]:
    """One trial: (requests/s, server CPU µs per request)."""
    mine, theirs = cores()
    server_cpu = mine if split else theirs
    srv = _server(impl, transport, server_cpu)
    load = c_program("echo_load")
    out = subprocess.run(
        [str(load), str(theirs), str(theirs), transport, srv.address, str(conns),
         str(seconds), str(srv.proc.pid)],
        capture_output=True, text=True, timeout=60 + seconds * 2,
    )
    if out.returncode != 0:
        err = srv.stop()
        _running["server"] = _running["key"] = None
        raise RuntimeError(f"echo_load against {impl} failed: {out.stderr.strip()} {err[-300:]}")
    rate, cpu = (float(x) for x in out.stdout.split()[-2:])
    return rate, cpu


# ---------------------------------------------------------------------------- awaited streams

PAYLOAD = b"x" * 64
FRAME = len(PAYLOAD).to_bytes(4, "big") + PAYLOAD


def _event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        return optional("uvloop").new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def _on_loop(kind: str, sock: socket.socket,
             body: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]) -> Any:
    """Run ``body(reader, writer)`` on a fresh loop of that kind over ``sock``."""
    async def main() -> Any:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            return await body(reader, writer)
        finally:
            writer.close()
            await writer.wait_closed()  # what is still buffered goes out first

    loop = _event_loop(kind)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


async def _recv(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(header, "big"))


async def _echo(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    for _ in range(n):
        data = await _recv(reader)
        writer.write(len(data).to_bytes(4, "big") + data)


async def _pings(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    t0 = now()
    for _ in range(n):
        writer.write(FRAME)
        await _recv(reader)
    return (now() - t0) / n * 1e6


async def _flood(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readexactly(2)  # "go"
    for i in range(n):
        writer.write(FRAME)
        if i % 256 == 255:
            await writer.drain()
    await writer.drain()


async def _take(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
    t0 = now()
    writer.write(b"go")
    for _ in range(n):
        if len(await _recv(reader)) != len(PAYLOAD):
            raise AssertionError("short message")
    return n / (now() - t0)


def _awaited(kind: str, child: Callable[..., Any], parent: Callable[..., Any], n: int) -> float:
    """One trial: ``child`` in a forked process on one core, ``parent`` here on the other,
    each on its own event loop of ``kind`` over one Unix socketpair."""
    _event_loop(kind).close()  # Missing before forking when uvloop is not installed
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def run_child() -> None:
        mine.close()
        _on_loop(kind, theirs, partial(child, n))

    with pinned(run_child):
        theirs.close()
        result: float = _on_loop(kind, mine, partial(parent, n))
    return result


def _awaited_cases(quick: bool) -> list[Case]:
    n_pp = 2_000 if quick else 10_000
    n_stream = 100_000 if quick else 500_000
    out = []
    for kind in ("asyncio", "uvloop"):
        impl = f"{kind} streams, Unix socket"
        out.append(Case("server", "64 B ping-pong, awaited", impl, "us",
                        partial(_awaited, kind, _echo, _pings, n_pp)))
        out.append(Case("server", "64 B stream, awaited", impl, "msg/s",
                        partial(_awaited, kind, _flood, _take, n_stream)))
    return out


def cases(quick: bool) -> list[Case]:
    seconds = 0.5 if quick else 1.0
    cpu_trials: dict[tuple[str, str], list[float]] = {}
    result: list[Case] = []

    def rate_case(workload: str, impl: str, transport: str, conns: int, split: bool) -> Case:
        def measure() -> float:
            rate, cpu = _load(impl, transport, conns, split, seconds)
            if not split and conns == 50:
                cpu_trials.setdefault((transport, impl), []).append(cpu)
            return rate

        return Case("server", workload, impl, "req/s", measure,
                    note=f"{conns} connections, {'split' if split else 'same core'}")

    def cpu_case(workload: str, impl: str, transport: str) -> Case:
        def measure() -> float:
            got = cpu_trials.get((transport, impl))
            if got:
                return got.pop(0)  # measured with the same-core req/s trials
            return _load(impl, transport, 50, False, seconds)[1]

        return Case("server", workload, impl, "us/req", measure)

    layouts: list[tuple[str, int, bool, list[str]]] = [
        ("50c same core", 50, False, IMPLS),
        ("50c split", 50, True,
         IMPLS if not quick else ["fastipc native", "selectors", "uvloop Protocol", "C epoll"]),
        ("1000c same core", 1000, False,
         ["fastipc native", "fastipc pure", "selectors", "uvloop Protocol", "C epoll"]),
    ]
    for transport, label in (("tcp", "TCP"), ("unix", "Unix")):
        for name, conns, split, impls in layouts:
            workload = f"echo {label} {name}"
            for impl in impls:
                result.append(rate_case(workload, impl, transport, conns, split))
            if name == "50c same core":
                for impl in impls:
                    result.append(cpu_case(f"{workload} CPU", impl, transport))
    return result + _awaited_cases(quick)
