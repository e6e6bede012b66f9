"""fastipc.server: servers on one event loop and blocking clients, both backends, real sockets
and real processes."""

from __future__ import annotations

import errno
import logging
import os
import queue
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastipc import server
from helpers import close_ends_call, frame, run_python, start_python

WAIT = 10.0  # every wait in this module is bounded


class Recorder(server.Handler):
    """Records every event; echoes messages unless told not to."""

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.events: queue.Queue[tuple[Any, ...]] = queue.Queue()

    def on_connect(self, conn: server.Connection) -> None:
        self.events.put(("connect", conn))

    def on_message(self, conn: server.Connection, data: bytes) -> None:
        self.events.put(("message", conn, data))
        if self.echo:
            conn.send(data)

    def on_close(self, conn: server.Connection) -> None:
        self.events.put(("close", conn))

    def next(self, kind: Optional[str] = None, timeout: float = WAIT) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            if kind is None or ev[0] == kind:
                return ev


@contextmanager
def serving(srv: server.Server) -> Iterator[server.Server]:
    """Run ``srv`` in a thread; stop, join and close it afterwards."""
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.stop()
        t.join(WAIT)
        assert not t.is_alive(), "serve_forever did not return after stop()"
        srv.close()


def addresses(srv: server.Server) -> list[Any]:
    return [a for a in (srv.tcp_address, srv.unix_path) if a is not None]


# ---------------------------------------------------------------------------- echo


def test_echo_tcp_and_unix(backend: str, sock_path: str) -> None:
    h = Recorder()
    srv = server.Server(h, tcp=("127.0.0.1", 0), unix=sock_path, backend=backend)
    assert srv.backend == backend and srv.framing == "length"
    assert srv.unix_path == sock_path and srv.tcp_address[0] == "127.0.0.1"
    with serving(srv):
        for addr in addresses(srv):
            with server.connect(addr, timeout=WAIT, backend=backend) as c:
                for msg in (b"hello", b"", b"x" * 100_000, bytes(range(256)) * 4096):
                    c.send(msg, timeout=WAIT)
                    assert c.recv(timeout=WAIT) == msg
    assert not os.path.exists(sock_path)  # the server unlinked what it created


def test_echo_bytes_like(backend: str, sock_path: str) -> None:
    with serving(server.Server(Recorder(), unix=sock_path, backend=backend)):  # noqa: SIM117
        with server.connect(sock_path, backend=backend) as c:
            for msg in (bytearray(b"abc"), memoryview(b"defg"), memoryview(b"xyz" * 3)[::1]):
                c.send(msg)
                assert c.recv(timeout=WAIT) == bytes(msg)


def test_events_in_order(backend: str) -> None:
    h = Recorder()
    with serving(server.Server(h, tcp=("127.0.0.1", 0), backend=backend)) as srv:
        c = server.connect(srv.tcp_address, backend=backend)
        _, conn = h.next("connect")
        assert conn.peer == c_sockname(c)
        assert not conn.closed and conn.error is None and conn.server is srv
        assert conn in srv.connections
        for i in range(20):
            c.send(b"%d" % i)
        got = [h.next("message")[2] for _ in range(20)]
        assert got == [b"%d" % i for i in range(20)]
        assert [c.recv(timeout=WAIT) for _ in range(20)] == got
        c.close()
        _, closed = h.next("close")
        assert closed is conn and conn.closed and conn.error is None
        assert conn not in srv.connections
        with pytest.raises(ValueError):
            conn.send(b"late")
        with pytest.raises(ValueError):
            conn.fileno()


def c_sockname(c: server.Client) -> Any:
    s = socket.socket(fileno=os.dup(c.fileno()))
    try:
        return s.getsockname()[:2]
    finally:
        s.close()


def test_raw_framing(backend: str, sock_path: str) -> None:
    h = Recorder()
    with serving(server.Server(h, unix=sock_path, framing="raw", backend=backend)):
        with server.connect(sock_path, framing="raw", backend=backend) as c:
            assert c.framing == "raw"
            c.send(b"abc")
            assert h.next("message")[2] == b"abc"
            got = b""
            while len(got) < 3:
                got += c.recv(timeout=WAIT)
            assert got == b"abc"
            big = os.urandom(300_000)
            c.send(big)
            got = b""
            while len(got) < len(big):
                got += c.recv(timeout=WAIT)
            assert got == big
        h.next("close")


def test_raw_client_sees_end_of_stream(backend: str, sock_path: str) -> None:
    class Bye(server.Handler):
        def on_message(self, conn: server.Connection, data: bytes) -> None:
            conn.send(b"bye")
            conn.close()

    srv = server.Server(Bye(), unix=sock_path, framing="raw", backend=backend)
    with serving(srv):  # noqa: SIM117
        with server.connect(sock_path, framing="raw", backend=backend) as c:
            c.send(b"x")
            got = b""
            with pytest.raises(EOFError):  # a message call: EOFError at the end
                while True:
                    got += c.recv(timeout=WAIT)
            assert got == b"bye"


def test_ipv6(backend: str) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        probe.close()
        pytest.skip("no ::1 on this machine")
    h = Recorder()
    with serving(server.Server(h, tcp=("::1", 0), backend=backend)) as srv:
        assert srv.tcp_address[0] == "::1"
        with server.connect(srv.tcp_address, backend=backend) as c:
            c.send(b"six")
            assert c.recv(timeout=WAIT) == b"six"
            peer = h.next("connect")[1].peer
            assert peer[0] == "::1" and len(peer) == 4


# ---------------------------------------------------------------------------- processes


CLIENT = """
import sys
from fastipc import server
addr = sys.argv[1]
if addr.isdigit():
    addr = ("127.0.0.1", int(addr))
with server.connect(addr, timeout=10, backend=sys.argv[2]) as c:
    for i in range(int(sys.argv[3])):
        msg = b"%s-%d" % (sys.argv[4].encode(), i)
        c.send(msg, timeout=10)
        assert c.recv(timeout=10) == msg
print("ok")
"""


def test_two_clients_at_once(backend: str, sock_path: str) -> None:
    """The article's story: two clients in their own processes, served at the same time."""
    h = Recorder()
    with serving(server.Server(h, tcp=("127.0.0.1", 0), unix=sock_path, backend=backend)) as srv:
        procs = [
            start_python(CLIENT, str(srv.tcp_address[1]), backend, "200", "a"),
            start_python(CLIENT, sock_path, backend, "200", "b"),
        ]
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert out.strip() == "ok"
    seen: dict[int, list[bytes]] = {}
    closes = 0
    while not h.events.empty():
        ev = h.events.get()
        if ev[0] == "message":
            seen.setdefault(id(ev[1]), []).append(ev[2])
        closes += ev[0] == "close"
    assert sorted(len(v) for v in seen.values()) == [200, 200]
    for msgs in seen.values():  # each connection's messages arrive in order
        tag = msgs[0].split(b"-")[0]
        assert msgs == [b"%s-%d" % (tag, i) for i in range(200)]
    assert closes == 2


def test_cross_backend(cross: tuple[str, str], sock_path: str) -> None:
    """A server of one backend and a client process of the other, both ways."""
    server_backend, client_backend = cross
    with serving(server.Server(Recorder(), unix=sock_path, backend=server_backend)):
        r = run_python(CLIENT, sock_path, client_backend, "100", "x", timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "ok"


def test_client_sends_one_byte_at_a_time(backend: str, sock_path: str) -> None:
    h = Recorder(echo=False)
    with serving(server.Server(h, unix=sock_path, backend=backend)):  # noqa: SIM117
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(WAIT)
            s.connect(sock_path)
            data = frame(b"hello world") + frame(b"") + frame(b"!")
            for i in range(len(data)):
                s.send(data[i : i + 1])
                time.sleep(0.002)
            assert [h.next("message")[2] for _ in range(3)] == [b"hello world", b"", b"!"]


VANISH = """
import os, signal, socket, struct, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(struct.pack(">I", 100) + b"x" * 10)   # half a frame
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_client_vanishing_mid_frame(backend: str, sock_path: str) -> None:
    h = Recorder()
    with serving(server.Server(h, unix=sock_path, backend=backend)):  # noqa: SIM117
        with server.connect(sock_path, backend=backend) as other:
            h.next("connect")
            r = run_python(VANISH, sock_path, timeout=60)
            assert r.returncode == -signal.SIGKILL
            _, conn = h.next("connect")
            ev = h.next()
            assert ev[0] == "close" and ev[1] is conn  # no half message delivered
            other.send(b"still here")
            assert other.recv(timeout=WAIT) == b"still here"


def test_reset_is_reported(backend: str) -> None:
    h = Recorder(echo=False)
    with serving(server.Server(h, tcp=("127.0.0.1", 0), backend=backend)) as srv:
        s = socket.create_connection(srv.tcp_address, timeout=WAIT)
        _, conn = h.next("connect")
        s.sendall(frame(b"x"))
        h.next("message")
        # unread data at close() makes the kernel send a reset (RST)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        _, closed = h.next("close")
        assert closed is conn
        assert conn.error is not None and conn.error.errno == errno.ECONNRESET


def test_frame_over_the_limit(backend: str, sock_path: str) -> None:
    h = Recorder()
    srv = server.Server(h, unix=sock_path, max_message_size=100, backend=backend)
    assert srv.max_message_size == 100
    with serving(srv):
        good = server.connect(sock_path, backend=backend)
        bad = server.connect(sock_path, backend=backend)
        try:
            bad.send(b"y" * 100)
            assert bad.recv(timeout=WAIT) == b"y" * 100  # at the limit: fine
            bad.send(b"z" * 101)
            with pytest.raises(EOFError):
                bad.recv(timeout=WAIT)
            while True:
                ev = h.next("close")
                if ev[1].error is not None:
                    break
            assert ev[1].error.errno == errno.EMSGSIZE
            good.send(b"ok")
            assert good.recv(timeout=WAIT) == b"ok"
        finally:
            good.close()
            bad.close()


def test_client_refuses_oversized_reply(backend: str, sock_path: str) -> None:
    with serving(server.Server(Recorder(), unix=sock_path, backend=backend)):  # noqa: SIM117
        with server.connect(sock_path, max_message_size=10, backend=backend) as c:
            c.send(b"q" * 11)
            with pytest.raises(OSError) as info:
                c.recv(timeout=WAIT)
            assert info.value.errno == errno.EMSGSIZE


def test_2000_concurrent_unix_connections(backend: str, sock_path: str) -> None:
    """Past select()'s FD_SETSIZE: 2,000 clients connected at once, each served."""
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 200
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    socks: list[socket.socket] = []
    try:
        connected = threading.Semaphore(0)

        class Count(server.Handler):
            def on_connect(self, conn: server.Connection) -> None:
                connected.release()

            def on_message(self, conn: server.Connection, data: bytes) -> None:
                conn.send(data)

        with serving(server.Server(Count(), unix=sock_path, backend=backend)) as srv:
            for _ in range(n):
                s = socket.socket(socket.AF_UNIX)
                socks.append(s)
                s.settimeout(WAIT)
                s.connect(sock_path)
            for _ in range(n):
                assert connected.acquire(timeout=WAIT)
            assert len(srv.connections) == n
            for i, s in enumerate(socks):
                s.sendall(frame(b"%d" % i))
            for i, s in enumerate(socks):
                assert recv_exact(s, len(frame(b"%d" % i))) == frame(b"%d" % i)
    finally:
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "closed early"
        buf += chunk
    return buf


def test_back_pressure_bounds_memory(backend: str, sock_path: str) -> None:
    """A client that never reads: the server stops reading it once high_water bytes wait,
    so the client's sends block instead of the server buffering without bound; once the
    client reads, every reply arrives, in order."""
    high = 64 * 1024
    h = Recorder()
    with serving(server.Server(h, unix=sock_path, high_water=high, backend=backend)), \
            socket.socket(socket.AF_UNIX) as s:
        s.connect(sock_path)
        _, conn = h.next("connect")
        s.setblocking(False)
        msg = b"m" * 1000
        sent, pending = 0, b""
        for _ in range(200_000):  # ~200 MB: far more than socket buffers hold
            if not pending:
                pending = frame(msg + b"%08d" % sent)
                sent += 1
            try:
                pending = pending[s.send(pending):]
            except BlockingIOError:
                if not select.select([], [s], [], 0.5)[1]:
                    break  # the server stopped reading us
        else:
            pytest.fail("the server kept reading a client that never reads")
        time.sleep(0.1)
        assert conn.pending < 4 * high  # the server holds little; the rest waits upstream
        whole = sent - 1 if pending else sent
        s.setblocking(True)
        s.settimeout(WAIT)
        for i in range(whole):
            assert recv_exact(s, 4 + 1008) == frame(msg + b"%08d" % i)
        s.sendall(pending)
        if pending:
            assert recv_exact(s, 4 + 1008) == frame(msg + b"%08d" % whole)


HAMMER = """
import sys, time
from fastipc import server
try:
    with server.connect(sys.argv[1], timeout=10) as c:
        end = time.monotonic() + 20
        while time.monotonic() < end:
            c.send(b"x" * 64, timeout=5)
            c.recv(timeout=5)
except (OSError, EOFError):
    pass
"""


def test_stop_under_load_returns_quickly(backend: str, sock_path: str) -> None:
    srv = server.Server(Recorder(), unix=sock_path, backend=backend)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    procs = [start_python(HAMMER, sock_path) for _ in range(3)]
    try:
        deadline = time.monotonic() + WAIT
        while len(srv.connections) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)
        t0 = time.monotonic()
        srv.stop()
        t.join(WAIT)
        assert not t.is_alive()
        assert time.monotonic() - t0 < 1.0
    finally:
        srv.close()
        for p in procs:
            p.communicate(timeout=60)


def test_stop_from_a_signal_handler(backend: str, sock_path: str) -> None:
    srv = server.Server(Recorder(), unix=sock_path, backend=backend)
    old = signal.signal(signal.SIGALRM, lambda *_: srv.stop())
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t0 = time.monotonic()
        srv.serve_forever()
        assert time.monotonic() - t0 < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        srv.close()


def test_signal_stop_under_load(backend: str, sock_path: str) -> None:
    """A signal landing while a turn runs in C (not in epoll_wait) still stops the loop."""
    srv = server.Server(Recorder(), unix=sock_path, backend=backend)
    procs = [start_python(HAMMER, sock_path) for _ in range(2)]
    old = signal.signal(signal.SIGALRM, lambda *_: srv.stop())
    try:
        srv.serve(0.3)  # the clients connect and get going
        for _ in range(10):
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            t0 = time.monotonic()
            srv.serve(WAIT)
            assert time.monotonic() - t0 < 2.0, "the signal's stop() was not seen"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        srv.close()
        for p in procs:
            p.communicate(timeout=60)


def test_signal_that_interrupts_nothing_still_stops(backend: str, sock_path: str) -> None:
    """A signal that does not interrupt the loop's sleep (here: delivered to another thread;
    in life: landing while a turn runs in C) still reaches its handler at once."""
    srv = server.Server(Recorder(), unix=sock_path, backend=backend)
    old = signal.signal(signal.SIGALRM, lambda *_: srv.stop())

    def poke() -> None:
        time.sleep(0.2)
        signal.pthread_kill(threading.get_ident(), signal.SIGALRM)

    t = threading.Thread(target=poke)
    try:
        t.start()
        t0 = time.monotonic()
        srv.serve(WAIT)
        assert time.monotonic() - t0 < WAIT / 2
    finally:
        t.join(WAIT)
        signal.signal(signal.SIGALRM, old)
        srv.close()


def test_signal_handler_exception_ends_serve(backend: str, sock_path: str) -> None:
    def boom(*_: Any) -> None:
        raise KeyboardInterrupt

    srv = server.Server(Recorder(), unix=sock_path, backend=backend)
    old = signal.signal(signal.SIGALRM, boom)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(KeyboardInterrupt):
            srv.serve(timeout=WAIT)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        srv.close()


def test_serve_timeout_and_stop_before_serve(backend: str, sock_path: str) -> None:
    with server.Server(Recorder(), unix=sock_path, backend=backend) as srv:
        t0 = time.monotonic()
        srv.serve(0.2)
        assert 0.15 < time.monotonic() - t0 < 5
        srv.serve(0)  # one turn, no waiting
        srv.stop()  # before serving: the next serve returns at once
        t0 = time.monotonic()
        srv.serve(WAIT)
        assert time.monotonic() - t0 < 1


def test_serve_twice_at_once_refused(backend: str, sock_path: str) -> None:
    srv = server.Server(Recorder(), unix=sock_path, backend=backend)
    with serving(srv):
        time.sleep(0.05)
        with pytest.raises(RuntimeError):
            srv.serve(0)


def test_handler_exception_closes_only_that_connection(
    backend: str, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    class Picky(Recorder):
        def on_message(self, conn: server.Connection, data: bytes) -> None:
            if data == b"bad":
                raise RuntimeError("handler failure")
            super().on_message(conn, data)

    h = Picky()
    with caplog.at_level(logging.ERROR, logger="fastipc.server"):  # noqa: SIM117
        with serving(server.Server(h, unix=sock_path, backend=backend)):
            a = server.connect(sock_path, backend=backend)
            b = server.connect(sock_path, backend=backend)
            try:
                a.send(b"bad")
                with pytest.raises(EOFError):
                    a.recv(timeout=WAIT)
                b.send(b"good")
                assert b.recv(timeout=WAIT) == b"good"
            finally:
                a.close()
                b.close()
    assert any("handler failure" in r.getMessage() or r.exc_info for r in caplog.records)


def test_on_connect_exception_closes(backend: str, sock_path: str) -> None:
    class NoThanks(Recorder):
        def on_connect(self, conn: server.Connection) -> None:
            super().on_connect(conn)
            raise ValueError("go away")

    h = NoThanks()
    logging.getLogger("fastipc.server").disabled = True
    try:
        with serving(server.Server(h, unix=sock_path, backend=backend)):
            with server.connect(sock_path, backend=backend) as c, pytest.raises(EOFError):
                c.recv(timeout=WAIT)
            h.next("close")
    finally:
        logging.getLogger("fastipc.server").disabled = False


def test_send_from_another_thread(backend: str, sock_path: str) -> None:
    """Connection.send outside the handlers (another thread) writes at once."""
    h = Recorder(echo=False)
    with serving(server.Server(h, unix=sock_path, backend=backend)):  # noqa: SIM117
        with server.connect(sock_path, backend=backend) as c:
            _, conn = h.next("connect")
            for i in range(50):
                conn.send(b"push %d" % i)
            assert [c.recv(timeout=WAIT) for _ in range(50)] == [b"push %d" % i for i in range(50)]
            conn.data = {"user": "state"}
            assert conn.data == {"user": "state"}
            conn.close()
            with pytest.raises(EOFError):
                c.recv(timeout=WAIT)
            h.next("close")


def test_server_close_closes_connections(backend: str, sock_path: str) -> None:
    h = Recorder()
    srv = server.Server(h, unix=sock_path, backend=backend)
    c = server.connect(sock_path, backend=backend)
    try:
        srv.serve(0.05)
        _, conn = h.next("connect")
        with srv:
            pass
        assert srv.closed
        _, closed = h.next("close")
        assert closed is conn and conn.closed
        assert not os.path.exists(sock_path)
        with pytest.raises(EOFError):
            c.recv(timeout=WAIT)
        with pytest.raises(OSError):  # the server is gone for good
            for _ in range(100):
                c.send(b"x" * 65536, timeout=WAIT)
        srv.close()  # idempotent
    finally:
        c.close()


def test_close_from_a_handler(backend: str, sock_path: str) -> None:
    class Quit(server.Handler):
        def on_message(self, conn: server.Connection, data: bytes) -> None:
            conn.server.close()

    srv = server.Server(Quit(), unix=sock_path, backend=backend)
    with server.connect(sock_path, backend=backend) as c:
        c.send(b"quit")
        srv.serve(WAIT)  # returns: close() from the handler stops the loop
        assert srv.closed


def test_stale_socket_file_is_replaced(backend: str, sock_path: str) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(sock_path)
    s.close()  # a socket file nobody listens on, as a dead server leaves
    with server.Server(Recorder(), unix=sock_path, backend=backend):
        with pytest.raises(OSError) as info:  # a live one is not taken over
            server.Server(Recorder(), unix=sock_path, backend=backend)
        assert info.value.errno == errno.EADDRINUSE
    open(sock_path, "w").close()  # not a socket at all: left alone
    with pytest.raises(OSError):
        server.Server(Recorder(), unix=sock_path, backend=backend)
    assert os.path.exists(sock_path)
    os.unlink(sock_path)


def test_fds_not_inheritable(backend: str, sock_path: str) -> None:
    with serving(server.Server(Recorder(), unix=sock_path, backend=backend)) as srv:  # noqa: SIM117
        with server.connect(sock_path, backend=backend) as c:
            assert not os.get_inheritable(c.fileno())
            assert not os.get_inheritable(srv.fileno())


# ---------------------------------------------------------------------------- timeouts, EINTR


def test_client_timeouts(backend: str, sock_path: str) -> None:
    srv = server.Server(Recorder(echo=False), unix=sock_path, backend=backend)
    with serving(srv):  # noqa: SIM117
        with server.connect(sock_path, backend=backend) as c:
            with pytest.raises(TimeoutError):
                c.recv(timeout=0)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                c.recv(timeout=0.1)
            assert 0.08 < time.monotonic() - t0 < 5


def test_recv_resumes_after_signal(backend: str, sock_path: str) -> None:
    """PEP 475: a signal whose handler returns does not end the wait."""
    fired = []

    class Late(server.Handler):
        def on_message(self, conn: server.Connection, data: bytes) -> None:
            threading.Timer(0.3, conn.send, (data,)).start()

    old = signal.signal(signal.SIGALRM, lambda *_: fired.append(1))
    try:
        with serving(server.Server(Late(), unix=sock_path, backend=backend)):  # noqa: SIM117
            with server.connect(sock_path, backend=backend) as c:
                c.send(b"later")
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                assert c.recv(timeout=WAIT) == b"later"
                assert fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_connect_errors(backend: str, sock_path: str) -> None:
    with pytest.raises(FileNotFoundError):
        server.connect(sock_path, backend=backend)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConnectionRefusedError):
        server.connect(("127.0.0.1", port), timeout=WAIT, backend=backend)


# ---------------------------------------------------------------------------- bad input


def test_bad_arguments(backend: str, sock_path: str) -> None:
    h = Recorder()
    with pytest.raises(TypeError):
        server.Server(object(), unix=sock_path, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.Server(h, backend=backend)
    with pytest.raises(TypeError):
        server.Server(h, unix=sock_path, framing=1, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.Server(h, unix=sock_path, framing="lines", backend=backend)
    with pytest.raises(ValueError):
        server.Server(h, unix=sock_path, max_message_size=-1, backend=backend)
    with pytest.raises(TypeError):
        server.Server(h, unix=sock_path, max_message_size="1", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.Server(h, unix=sock_path, high_water=0, backend=backend)
    with pytest.raises(TypeError):
        server.Server(h, tcp="127.0.0.1:80", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        server.Server(h, tcp=(1, 2), backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.Server(h, tcp=("127.0.0.1", 70000), backend=backend)
    with pytest.raises(TypeError):
        server.Server(h, unix=42, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.Server(h, unix="/tmp/" + "x" * 103, backend=backend)  # 108 bytes
    with pytest.raises(ValueError):
        server.Server(h, unix="/tmp/a\0b", backend=backend)
    with pytest.raises(ValueError):
        server.Server(h, unix="", backend=backend)
    with pytest.raises(ValueError):
        server.Server(h, unix=sock_path, backend="fast")
    with pytest.raises(TypeError):
        server.Server(h, unix=sock_path, backend=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.connect("/tmp/" + "y" * 103, backend=backend)
    with pytest.raises(TypeError):
        server.connect(12, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        server.connect(sock_path, timeout=-1, backend=backend)
    with pytest.raises(ValueError):
        server.connect(sock_path, framing="x", backend=backend)
    assert not os.path.exists(sock_path)


def test_path_of_107_bytes_is_fine(backend: str) -> None:
    d = tempfile.mkdtemp(prefix="fipc-")
    try:
        path = os.path.join(d, "p" * (107 - len(d) - 1))
        assert len(path) == 107
        with serving(server.Server(Recorder(), unix=path, backend=backend)):  # noqa: SIM117
            with server.connect(path, backend=backend) as c:
                c.send(b"long path")
                assert c.recv(timeout=WAIT) == b"long path"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_bad_calls_and_closed_objects(backend: str, sock_path: str) -> None:
    h = Recorder()
    srv = server.Server(h, unix=sock_path, backend=backend)
    c = server.connect(sock_path, backend=backend)
    try:
        with pytest.raises(ValueError):
            srv.serve(-1)
        with pytest.raises(TypeError):
            srv.serve("1")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.send("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            c.send(12)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            c.recv(timeout=-0.5)
        with pytest.raises(TypeError):
            c.recv(timeout="soon")  # type: ignore[arg-type]
        srv.serve(0.05)
        _, conn = h.next("connect")
        with pytest.raises(TypeError):
            conn.send("text")
        with pytest.raises(TypeError):
            conn.send(None)
    finally:
        c.close()
        c.close()  # idempotent
        srv.close()
    for call in (lambda: c.send(b"x"), lambda: c.recv(), c.fileno):
        with pytest.raises(ValueError):
            call()
    for call in (lambda: srv.serve(0), srv.serve_forever, srv.fileno,
                 lambda: srv.tcp_address, lambda: srv.unix_path, lambda: srv.connections):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(ValueError):
        srv.__enter__()
    srv.stop()  # harmless on a closed server
    assert "closed" in repr(srv) and "closed" in repr(c)


# ---------------------------------------------------------------------------- framing property


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    messages=st.lists(st.binary(max_size=3000), max_size=20),
    cuts=st.lists(st.integers(min_value=1, max_value=5000), max_size=30),
)
def test_framing_survives_any_split(backend: str, messages: list[bytes], cuts: list[int]) -> None:
    """Frames split at arbitrary points arrive whole and in order."""
    d = tempfile.mkdtemp(prefix="fipc-")
    path = os.path.join(d, "s.sock")
    h = Recorder(echo=False)
    try:
        with serving(server.Server(h, unix=path, backend=backend)):  # noqa: SIM117
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(WAIT)
                s.connect(path)
                data = b"".join(frame(m) for m in messages)
                pos = 0
                for cut in cuts:
                    if pos >= len(data):
                        break
                    s.sendall(data[pos : pos + cut])
                    pos += cut
                    time.sleep(0.001)
                s.sendall(data[pos:])
                got = [h.next("message")[2] for _ in messages]
                assert got == messages
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------- the command


def test_cli_unix_serve_and_connect(backend: str, sock_path: str) -> None:
    """`fastipc unix serve` prints each client's connect, data and disconnect; `fastipc
    unix connect` sends stdin lines, prints the replies, and notices the server leaving;
    Ctrl-C stops the server cleanly."""
    cmd = [sys.executable, "-m", "fastipc", "--backend", backend, "unix"]
    srv = subprocess.Popen(
        [*cmd, "serve", sock_path, "--idle-timeout", "30", "--max-connections", "100"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert srv.stdout is not None
        assert srv.stdout.readline().startswith(f"listening on {sock_path}")
        r = subprocess.run([*cmd, "connect", sock_path], input="hello\nworld\n",
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "hello\nworld\n"
        lines = [srv.stdout.readline().strip() for _ in range(4)]
        assert lines == ["connect client #1", "client #1: hello", "client #1: world",
                         "disconnect client #1"]
        late = subprocess.Popen([*cmd, "connect", sock_path], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert late.stdin is not None and late.stdout is not None
        late.stdin.write("one\n")
        late.stdin.flush()
        assert late.stdout.readline() == "one\n"
        srv.send_signal(signal.SIGINT)
        out, _ = srv.communicate(timeout=60)
        assert srv.returncode == 130
        assert "disconnect client #2" in out
        assert not os.path.exists(sock_path)
        _, err = late.communicate("two\n", timeout=60)
        assert late.returncode == 1 and "server terminated prematurely" in err
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.communicate()


def test_cli_errors_are_one_line(sock_path: str) -> None:
    r = subprocess.run([sys.executable, "-m", "fastipc", "unix", "serve", "/tmp/" + "x" * 120],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.startswith("fastipc: error:") and "107" in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastipc", "unix", "connect", sock_path],
                       capture_output=True, text=True, timeout=60, input="x\n")
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_big_frames_in_slow_pieces(backend: str, sock_path: str) -> None:
    """Frames far larger than one read, trickling in, arrive whole; so does one exactly at
    max_message_size."""
    limit = 3 << 20
    h = Recorder(echo=False)
    with serving(server.Server(h, unix=sock_path, max_message_size=limit, backend=backend)), \
            socket.socket(socket.AF_UNIX) as s:
        s.settimeout(WAIT)
        s.connect(sock_path)
        big = os.urandom(limit)
        data = frame(big) + frame(b"after") + frame(big[:100_000])
        for i in range(0, len(data), 50_000):
            s.sendall(data[i : i + 50_000])
        assert h.next("message")[2] == big
        assert h.next("message")[2] == b"after"
        assert h.next("message")[2] == big[:100_000]


def test_close_while_other_threads_send_and_stop(backend: str, sock_path: str) -> None:
    """close() racing Connection.send and stop() from other threads: each call either works
    or raises ValueError / BrokenPipeError; nothing touches a freed loop."""
    h = Recorder(echo=False)
    srv = server.Server(h, unix=sock_path, backend=backend)
    c = server.connect(sock_path, backend=backend)
    errors: list[BaseException] = []
    done = threading.Event()

    def pound(conn: server.Connection) -> None:
        while not done.is_set():
            try:
                conn.send(b"x" * 100)
                srv.stop()
            except (ValueError, BrokenPipeError):
                pass
            except BaseException as exc:  # anything else is a bug
                errors.append(exc)
                return

    try:
        srv.serve(0.05)
        _, conn = h.next("connect")
        threads = [threading.Thread(target=pound, args=(conn,)) for _ in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.05)
        srv.close()
        time.sleep(0.05)
        done.set()
        for t in threads:
            t.join(WAIT)
        assert not errors
    finally:
        done.set()
        c.close()
        srv.close()


# ---------------------------------------------------------------------------- limits


def test_idle_connections_are_closed(backend: str, sock_path: str) -> None:
    """A connection that neither sends nor has anything left to receive is closed after
    idle_timeout (on_close sees a TimeoutError); one that keeps talking stays."""
    h = Recorder()
    srv = server.Server(h, unix=sock_path, idle_timeout=0.3, backend=backend)
    assert srv.idle_timeout == 0.3
    with serving(srv), server.connect(sock_path, backend=backend) as quiet, \
            server.connect(sock_path, backend=backend) as chatty:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.9:  # three idle periods
            chatty.send(b"ping")
            assert chatty.recv(timeout=WAIT) == b"ping"
            time.sleep(0.05)
        with pytest.raises(EOFError):  # closed by the server long ago
            quiet.recv(timeout=WAIT)
        _, gone = h.next("close")
        assert isinstance(gone.error, TimeoutError) and gone.error.errno == errno.ETIMEDOUT
        assert h.events.empty() or all(ev[0] != "close" for ev in list(h.events.queue))
        chatty.send(b"still here")
        assert chatty.recv(timeout=WAIT) == b"still here"
        assert len(srv.connections) == 1
        t1 = time.monotonic()
        with pytest.raises(EOFError):  # now quiet too: closed after about 0.3 s
            chatty.recv(timeout=WAIT)
        assert 0.2 < time.monotonic() - t1 < 3.0


BIG = b"x" * (8 << 20)  # far more than the socket buffers take


@contextmanager
def flooded_reader(h: Recorder, sock_path: str) -> Iterator[tuple[socket.socket, Any]]:
    """A client that does not read yet, and its Connection with BIG queued for it."""
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sock_path)
        _, conn = h.next("connect")
        conn.send(BIG)
        assert conn.pending > 0
        yield s, conn
    finally:
        s.close()


def test_idle_timeout_spares_a_connection_with_output_queued(
        backend: str, sock_path: str) -> None:
    """Output still waiting for a peer that does not read is not idleness."""
    h = Recorder(echo=False)
    with serving(server.Server(h, unix=sock_path, idle_timeout=0.2, backend=backend)), \
            flooded_reader(h, sock_path) as (s, conn):
        time.sleep(0.6)
        assert not conn.closed
        assert recv_exact(s, 4 + len(BIG))[4:] == BIG
        h.next("close")  # once drained and quiet, it goes


def test_idle_timeout_while_closing_with_output_queued(backend: str, sock_path: str) -> None:
    """A connection closed with output still queued drains it after on_close, however long
    past idle_timeout, while the loop goes on serving others."""
    h = Recorder()
    with serving(server.Server(h, unix=sock_path, idle_timeout=0.1, backend=backend)), \
            flooded_reader(h, sock_path) as (s, conn):
        conn.close()
        assert h.next("close")[1] is conn
        time.sleep(0.4)  # several idle periods with the output still queued
        with server.connect(sock_path, backend=backend) as c:
            c.send(b"alive")
            assert c.recv(timeout=WAIT) == b"alive"
        assert recv_exact(s, 4 + len(BIG))[4:] == BIG and s.recv(1) == b""


def test_max_connections(backend: str, sock_path: str) -> None:
    """Clients past max_connections are accepted and closed at once; no handler sees
    them; a freed slot takes the next client."""
    h = Recorder()
    srv = server.Server(h, unix=sock_path, max_connections=2, backend=backend)
    assert srv.max_connections == 2
    with serving(srv), server.connect(sock_path, backend=backend) as a, \
            server.connect(sock_path, backend=backend) as b:
        h.next("connect")
        h.next("connect")
        with server.connect(sock_path, backend=backend) as extra, pytest.raises(EOFError):
            extra.recv(timeout=WAIT)
        a.send(b"a")
        assert a.recv(timeout=WAIT) == b"a"
        assert [ev[0] for ev in list(h.events.queue)] == ["message"]
        b.close()
        h.next("close")
        with server.connect(sock_path, backend=backend) as c:
            c.send(b"c")
            assert c.recv(timeout=WAIT) == b"c"


@pytest.mark.parametrize("idle", [None, 1e10])
def test_huge_timeouts(backend: str, sock_path: str, idle: Optional[float]) -> None:
    """A serve() timeout or an idle_timeout far past what a single wait can hold is fine
    (the wait is cut into day-long pieces)."""
    h = Recorder()
    with server.Server(h, unix=sock_path, idle_timeout=idle, backend=backend) as srv, \
            server.connect(sock_path, backend=backend) as c:
        threading.Timer(0.2, srv.stop).start()
        srv.serve(1e12)
        c.send(b"x")
        srv.serve(0.05)
        assert c.recv(timeout=WAIT) == b"x"


def test_limit_arguments(backend: str, sock_path: str) -> None:
    bad: Any
    for bad, exc in ((0, ValueError), (-1.0, ValueError), ("1", TypeError),
                     (float("nan"), ValueError)):
        with pytest.raises(exc):
            server.Server(Recorder(), unix=sock_path, idle_timeout=bad, backend=backend)
    for bad, exc in ((0, ValueError), (-3, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc):
            server.Server(Recorder(), unix=sock_path, max_connections=bad, backend=backend)
    assert not os.path.exists(sock_path)


# ---------------------------------------------------------------------------- life cycle


def test_close_from_another_thread_ends_serve_with_valueerror(
        backend: str, sock_path: str) -> None:
    h = Recorder()
    srv = server.Server(h, unix=sock_path, backend=backend)
    c = server.connect(sock_path, backend=backend)
    connected: list[server.Connection] = []
    try:
        error = close_ends_call(srv.serve_forever, srv.close, join=WAIT, within=1.0,
                                settle=lambda: connected.append(h.next("connect")[1]))
        assert isinstance(error, ValueError)
        conn = connected[0]
        assert h.next("close")[1] is conn and conn.closed
        assert srv.closed and not os.path.exists(sock_path)
        with pytest.raises(EOFError):
            c.recv(timeout=WAIT)
        srv.stop()  # harmless once closed
        for call in (srv.serve_forever, lambda: srv.serve(0), srv.fileno):
            with pytest.raises(ValueError):
                call()
    finally:
        c.close()
        srv.close()


def test_stop_and_close_race_a_signal_storm(backend: str, sock_path: str) -> None:
    """stop() from a signal handler many times a second while the server serves, stops and
    closes: never a write to a closed (or reused) fd, never a hang."""
    code = f"""
        import os, signal, sys, threading, time
        from fastipc import server
        for i in range(20):
            srv = server.Server(server.Handler(), unix={sock_path!r}, backend={backend!r})
            signal.signal(signal.SIGALRM, lambda *_: srv.stop())
            signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
            srv.serve(0.02)
            threading.Timer(0.005, srv.close).start()
            try:
                srv.serve(1.0)
            except ValueError:
                pass
            srv.close()
            signal.setitimer(signal.ITIMER_REAL, 0)
        print(len(os.listdir("/proc/self/fd")))
    """
    out = run_python(code, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) < 10  # nothing piled up


def test_fileno_is_readable_when_there_is_work(backend: str, sock_path: str) -> None:
    h = Recorder()
    with server.Server(h, unix=sock_path, backend=backend) as srv:
        assert select.select([srv.fileno()], [], [], 0)[0] == []
        with server.connect(sock_path, backend=backend) as c:
            assert select.select([srv.fileno()], [], [], WAIT)[0] == [srv.fileno()]
            srv.serve(0)
            h.next("connect")
            c.send(b"hi")
            assert select.select([srv.fileno()], [], [], WAIT)[0] == [srv.fileno()]
            srv.serve(0)
            assert h.next("message")[2] == b"hi"


@pytest.mark.parametrize("raw,expected", [
    (b"", None),
    (b"\x01", None),
    (socket.AF_INET.to_bytes(2, sys.byteorder) + b"\x1f\x90\x7f\x00\x00\x01" + bytes(8),
     ("127.0.0.1", 8080)),
    (socket.AF_INET.to_bytes(2, sys.byteorder) + b"\x1f\x90", None),  # truncated
    (socket.AF_UNIX.to_bytes(2, sys.byteorder), ""),
    (socket.AF_UNIX.to_bytes(2, sys.byteorder) + b"/tmp/x\0\0\0", "/tmp/x"),
    (socket.AF_UNIX.to_bytes(2, sys.byteorder) + b"\0abstract", b"\0abstract"),
    (socket.AF_INET6.to_bytes(2, sys.byteorder) + b"\x00\x50" + b"\0\0\0\x07"
     + socket.inet_pton(socket.AF_INET6, "::1") + (3).to_bytes(4, sys.byteorder),
     ("::1", 80, 7, 3)),
    ((12345).to_bytes(2, sys.byteorder) + bytes(14), None),
])
def test_decode_sockaddr(raw: bytes, expected: Any) -> None:
    from fastipc._address import decode_sockaddr

    assert decode_sockaddr(raw) == expected


def test_peer_of_a_bound_unix_client(backend: str, sock_path: str) -> None:
    """The native loop's sockaddr bytes and the pure loop's accept() agree."""
    h = Recorder()
    with serving(server.Server(h, unix=sock_path, backend=backend)):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.bind(sock_path + ".c")
            s.connect(sock_path)
            assert h.next("connect")[1].peer == sock_path + ".c"
        finally:
            s.close()
            os.unlink(sock_path + ".c")
