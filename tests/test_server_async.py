"""fastipc.server: Server.serve_async on the running event loop (asyncio and uvloop), both
backends, with real clients in other processes."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest

from fastipc import server
from helpers import start_python

WAIT = 10.0
T = TypeVar("T")


@pytest.fixture(scope="module", autouse=True)
def _uvloop_warm() -> None:
    """uvloop opens a process-wide pipe the first time one of its loops runs and keeps it
    until exit: open it before the per-test fd leak check looks."""
    run("uvloop", lambda: asyncio.sleep(0))


@pytest.fixture(params=["asyncio", "uvloop"])
def aloop(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(kind: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a fresh event loop of that kind (asyncio.run, for any loop)."""
    if kind == "uvloop":
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


class Echo(server.Handler):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.threads: set[int] = set()

    def on_connect(self, conn: server.Connection) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("connect", conn))

    def on_message(self, conn: server.Connection, data: bytes) -> None:
        self.threads.add(threading.get_ident())
        if data == b"boom":
            raise RuntimeError("handler failure")
        conn.send(data)

    def on_close(self, conn: server.Connection) -> None:
        self.events.append(("close", conn))


CLIENT = """
import sys
from fastipc import server
path, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with server.connect(path, backend=backend, timeout=10) as c:
    for i in range(n):
        msg = b"%d:" % i + b"x" * (i * 37 % 5000)
        c.send(msg)
        assert c.recv(timeout=10) == msg, i
print("ok")
"""


async def wait_for(pred: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("client_backend", ["same", "other"])
def test_echo_with_clients_in_other_processes(backend: str, aloop: str, sock_path: str,
                                              client_backend: str) -> None:
    other = {"native": "pure", "pure": "native"}[backend]
    cb = backend if client_backend == "same" else other
    h = Echo()

    async def main() -> None:
        srv = server.Server(h, unix=sock_path, tcp=("127.0.0.1", 0), backend=backend)
        with srv:
            task = asyncio.ensure_future(srv.serve_async())
            procs = [start_python(CLIENT, sock_path, cb, "200") for _ in range(3)]
            try:
                await wait_for(lambda: all(p.poll() is not None for p in procs), "clients")
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                outs = [p.communicate() for p in procs]
            for p, (out, err) in zip(procs, outs, strict=False):
                assert p.returncode == 0 and out.strip() == "ok", err
            await wait_for(lambda: len([e for e in h.events if e[0] == "close"]) == 3,
                           "three on_close")
            srv.stop()
            await asyncio.wait_for(task, WAIT)
            assert h.threads == {threading.get_ident()}  # handlers ran on the loop's thread

    run(aloop, main)


def test_stop_from_another_coroutine_and_another_thread(backend: str, aloop: str,
                                                        sock_path: str) -> None:
    async def main() -> None:
        with server.Server(Echo(), unix=sock_path, backend=backend) as srv:
            async def stopper() -> None:
                await asyncio.sleep(0.05)
                srv.stop()

            t0 = time.monotonic()
            await asyncio.gather(srv.serve_async(), stopper())
            assert time.monotonic() - t0 < 1.0

            threading.Timer(0.05, srv.stop).start()
            t0 = time.monotonic()
            await asyncio.wait_for(srv.serve_async(), WAIT)
            assert time.monotonic() - t0 < 1.0

            srv.stop()  # before serving: the next serve call returns at once
            await asyncio.wait_for(srv.serve_async(), WAIT)
            with server.connect(sock_path, backend=backend) as c:  # still usable
                c.send(b"after")
                srv.serve(0.05)
                assert c.recv(timeout=WAIT) == b"after"

    run(aloop, main)


def test_handler_exception_closes_only_that_connection(
        backend: str, aloop: str, sock_path: str, caplog: pytest.LogCaptureFixture) -> None:
    h = Echo()

    async def main() -> None:
        with server.Server(h, unix=sock_path, backend=backend) as srv:
            task = asyncio.ensure_future(srv.serve_async())
            loop = asyncio.get_running_loop()
            with server.connect(sock_path, backend=backend) as bad, \
                    server.connect(sock_path, backend=backend) as good:
                def exchange() -> Any:
                    bad.send(b"boom")
                    try:
                        bad.recv(timeout=WAIT)
                    except EOFError:
                        pass
                    else:
                        raise AssertionError("the failing connection stayed open")
                    good.send(b"fine")
                    return good.recv(timeout=WAIT)

                assert await loop.run_in_executor(None, exchange) == b"fine"
            assert not task.done()
            srv.stop()
            await asyncio.wait_for(task, WAIT)

    with caplog.at_level(logging.ERROR, logger="fastipc.server"):
        run(aloop, main)
    assert any("on_message raised" in r.getMessage() for r in caplog.records)


def test_loop_not_blocked_while_idle(backend: str, aloop: str, sock_path: str) -> None:
    """A ticker coroutine never waits more than 50 ms while the server idles with a client
    connected and an idle timer armed."""
    async def main() -> float:
        with server.Server(Echo(), unix=sock_path, idle_timeout=30.0, backend=backend) as srv:
            task = asyncio.ensure_future(srv.serve_async())
            loop = asyncio.get_running_loop()
            with server.connect(sock_path, backend=backend) as c:
                c.send(b"x")
                assert await loop.run_in_executor(None, c.recv, WAIT) == b"x"
                worst, last, end = 0.0, time.monotonic(), time.monotonic() + 0.6
                while time.monotonic() < end:
                    await asyncio.sleep(0.005)
                    now = time.monotonic()
                    worst, last = max(worst, now - last), now
            srv.stop()
            await asyncio.wait_for(task, WAIT)
            return worst

    assert run(aloop, main) < 0.05


def test_idle_timeout_and_close(backend: str, aloop: str, sock_path: str) -> None:
    """The idle timer runs without any I/O; close() from a coroutine ends serve_async,
    from another thread with ValueError."""
    h = Echo()

    async def main() -> None:
        srv = server.Server(h, unix=sock_path, idle_timeout=0.2, backend=backend)
        task = asyncio.ensure_future(srv.serve_async())
        loop = asyncio.get_running_loop()
        with server.connect(sock_path, backend=backend) as c, pytest.raises(EOFError):
            await loop.run_in_executor(None, c.recv, WAIT)
        await wait_for(lambda: any(e[0] == "close" for e in h.events), "on_close")
        gone = next(e[1] for e in h.events if e[0] == "close")
        assert gone.error is not None and gone.error.errno == errno.ETIMEDOUT
        srv.close()  # from a coroutine on the serving loop: serve_async just returns
        await asyncio.wait_for(task, WAIT)
        assert srv.closed and not os.path.exists(sock_path)

        srv = server.Server(h, unix=sock_path, backend=backend)
        task = asyncio.ensure_future(srv.serve_async())
        await asyncio.sleep(0.02)
        await loop.run_in_executor(None, srv.close)
        with pytest.raises(ValueError):
            await asyncio.wait_for(task, WAIT)
        assert srv.closed and not os.path.exists(sock_path)
        with pytest.raises(ValueError):
            await srv.serve_async()

    run(aloop, main)


def test_cancel_and_serve_twice(backend: str, aloop: str, sock_path: str) -> None:
    async def main() -> None:
        with server.Server(Echo(), unix=sock_path, backend=backend) as srv:
            task = asyncio.ensure_future(srv.serve_async())
            await asyncio.sleep(0.02)
            with pytest.raises(RuntimeError):
                await srv.serve_async()  # one serve call at a time
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            loop = asyncio.get_running_loop()
            task = asyncio.ensure_future(srv.serve_async())  # serves again after a cancel
            with server.connect(sock_path, backend=backend) as c:
                c.send(b"again")
                assert await loop.run_in_executor(None, c.recv, WAIT) == b"again"
            srv.stop()
            await asyncio.wait_for(task, WAIT)

    run(aloop, main)
