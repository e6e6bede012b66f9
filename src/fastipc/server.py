"""TCP and Unix-domain servers driven by one event loop, and blocking clients.

>>> from fastipc import server
>>> class Echo(server.Handler):
...     def on_message(self, conn, data):
...         conn.send(data)
>>> with server.Server(Echo(), tcp=("127.0.0.1", 0)) as srv:
...     with server.connect(srv.tcp_address) as c:
...         c.send(b"hello")
...         srv.serve(0.1)
...         c.recv(timeout=1.0)
b'hello'

The native backend runs the loop in C (``csrc/server.c``, on epoll): one call per loop turn
waits with the GIL released and returns a batch of events; Python only calls the handlers.
Sends made by handlers are queued and written out together at the start of the next turn.
The pure backend does the same on :mod:`selectors`.

``await srv.serve_async()`` runs the same loop on the running asyncio (or uvloop) event loop
instead: the loop's epoll fd is watched with ``loop.add_reader`` and every turn is a
non-blocking one.

Framing: ``"length"`` (the default) delivers whole messages, each sent as a 4-byte
big-endian length and the payload (``b""`` is a valid message); ``"raw"`` delivers bytes as
they arrive. A frame announcing more than ``max_message_size`` bytes closes its connection.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from typing import Any, Optional

from fastipc import _core
from fastipc._address import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_FRAME,
    MAX_UNIX_PATH,
    TcpAddress,
    UnixPath,
    framing_flag,
    tcp_address,
    unix_path,
)
from fastipc._backend.server import Closed, Connected, Event, Sends, wake
from fastipc._backend.server import Loop as LoopProtocol
from fastipc._core import Deadline, byte_view, check_int, check_timeout, closed_error, uses_handle
from fastipc.client import AsyncClient, Client, connect, connect_async

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_UNIX_PATH",
    "AsyncClient",
    "Client",
    "Connection",
    "Handler",
    "Server",
    "connect",
    "connect_async",
]

DEFAULT_HIGH_WATER = 1 << 20
_NO_SENDS: Sends = []

log = logging.getLogger("fastipc.server")


# ---------------------------------------------------------------------------- handler


class Handler:
    """What a :class:`Server` calls. Subclass it and override what you need.

    Each connection gets one ``on_connect``, then ``on_message`` for each message (whole
    messages with ``"length"`` framing, chunks as they arrive with ``"raw"``), then exactly
    one ``on_close`` -- whether the peer closed, reset or sent an oversized frame, the
    connection stayed idle past ``idle_timeout``, the handler closed it, or the server was
    closed. A handler that raises has its connection closed and the exception logged (logger
    ``fastipc.server``); the loop goes on. A connection refused by ``max_connections`` is
    never seen by the handler.
    """

    def on_connect(self, conn: Connection) -> None:
        """A client connected."""

    def on_message(self, conn: Connection, data: bytes) -> None:
        """A message (or, with raw framing, a chunk of bytes) arrived."""

    def on_close(self, conn: Connection) -> None:
        """The connection is closed; ``conn.error`` says why (None: a clean close)."""


def _as_bytes(data: Any) -> bytes:
    """A bytes-like object as bytes, copied now (a later change to a bytearray given to
    send() must not change what is sent)."""
    with byte_view(data) as view:
        return view.tobytes()


class Connection:
    """One client connection of a :class:`Server`, handed to the handler's methods.

    ``data`` is free for the application (per-connection state). ``send`` never blocks:
    inside a handler it queues the bytes, which the loop writes out at its next turn;
    elsewhere it writes what the kernel takes at once and queues the rest. A connection
    whose peer does not read stops being read once ``high_water`` bytes wait for it
    (back-pressure), and resumes when they drain.

    ``peer`` is the client's address: ``(host, port)``, ``(host, port, flow, scope)`` for
    IPv6, or the client's Unix socket path (usually ``""``: clients rarely bind one).
    ``error`` is None while open and after a clean close, else the OSError that ended the
    connection (``TimeoutError`` when it was idle past ``idle_timeout``).
    """

    __slots__ = ("_key", "_server", "closed", "data", "error", "fd", "peer")

    def __init__(self, server: Server, key: int, fd: int, peer: Any) -> None:
        self._server = server
        self._key = key
        self.fd = fd
        self.peer = peer
        self.closed = False
        self.error: Optional[OSError] = None
        self.data: Any = None

    def send(self, data: Any) -> None:
        """Send ``data`` (bytes-like): one message with length framing, raw bytes otherwise.

        ValueError once the connection is closed. Inside a handler the bytes are queued and
        written at the loop's next turn; a peer that has gone by then drops them (its
        ``on_close`` follows). Outside the loop's dispatch, BrokenPipeError if the peer is
        gone.
        """
        if self.closed:
            raise closed_error("Connection")
        if type(data) is not bytes:
            data = _as_bytes(data)
        srv = self._server
        if len(data) > MAX_FRAME and srv._framed:
            raise ValueError(f"a message is limited to {MAX_FRAME} bytes")
        if srv._dispatching:
            srv._q.append((self._key, data))
            if srv._dispatching:
                return
            srv._drain()  # the turn ended meanwhile (we are another thread): send it now
        else:
            srv._send(self._key, data)

    def close(self) -> None:
        """Close after the queued output is written; ``on_close`` follows. Idempotent."""
        if not self.closed:
            self.closed = True
            self._server._close_conn(self._key)

    def fileno(self) -> int:
        """The connection's socket (for getsockopt and the like; do not read or close it)."""
        if self.closed:
            raise closed_error("Connection")
        return self.fd

    @property
    def pending(self) -> int:
        """Bytes queued for the peer and not yet taken by the kernel."""
        return 0 if self.closed else self._server._pending(self._key)

    server = _core.Fixed["Server"]("_server", "The server that accepted this connection.")

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"<Connection {state} peer={self.peer!r}>"


# ---------------------------------------------------------------------------- server


class Server(_core.Handle):
    """Serve TCP (IPv4 or IPv6) and/or Unix-domain stream connections with one loop.

    ``tcp=(host, port)`` (port 0 picks a free one, see :attr:`tcp_address`); ``unix=path``
    (at most 107 bytes; a stale socket file left by a dead server is replaced, a live one
    is ``OSError(EADDRINUSE)``). ``idle_timeout`` (seconds, None: no limit) closes a
    connection that received nothing and had nothing left to send for that long (its
    ``on_close`` sees ``conn.error``, a TimeoutError). ``max_connections`` (None: no limit
    but the fd limit) caps the open connections: a client accepted beyond it is closed at
    once, before any handler sees it (it reads the end of the stream).

    ``serve_forever()`` and ``serve(timeout)`` run the loop in the calling thread, ``await
    serve_async()`` on the running asyncio loop; ``stop()`` ends them from another thread,
    a signal handler or a coroutine. Closing the server closes every connection (each gets
    its ``on_close``), the listeners and the Unix socket file it created; closed from a
    handler it takes effect when the running serve call returns; closed from another thread
    while serving, that serve call ends with ValueError.
    """

    _what = "Server"
    _loop: LoopProtocol

    def __init__(
        self,
        handler: Handler,
        *,
        tcp: Optional[TcpAddress] = None,
        unix: Optional[UnixPath] = None,
        framing: str = "length",
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        high_water: int = DEFAULT_HIGH_WATER,
        backlog: int = socket.SOMAXCONN,
        idle_timeout: Optional[float] = None,
        max_connections: Optional[int] = None,
        backend: Optional[str] = None,
    ) -> None:
        self._listeners: list[socket.socket] = []
        self._unix_path: Optional[bytes] = None
        self._unix_ino: Optional[tuple[int, int]] = None
        self._wake_fds: tuple[int, ...] = ()
        for method in ("on_connect", "on_message", "on_close"):
            if not callable(getattr(handler, method, None)):
                raise TypeError(f"handler must have an {method}() method (see server.Handler)")
        impl = _core.ops("server", backend)
        framed = framing_flag(framing)
        max_message_size = check_int(max_message_size, "max_message_size", 0, MAX_FRAME)
        high_water = check_int(high_water, "high_water", 1, 2**62)
        backlog = check_int(backlog, "backlog", 1, 2**31 - 1)
        idle = check_timeout(idle_timeout)
        if idle == 0:
            raise ValueError("idle_timeout must be > 0 or None")
        max_conns = 0 if max_connections is None else check_int(
            max_connections, "max_connections", 1, 2**31 - 1)
        if tcp is None and unix is None:
            raise ValueError("give tcp=(host, port), unix=path, or both")
        tcp_addr = None if tcp is None else tcp_address(tcp)
        unix_raw = None if unix is None else unix_path(unix)

        self._handler = handler
        self._framing = framing
        self._framed = framed
        self._max = max_message_size
        self._idle_timeout = idle_timeout if idle > 0 else None
        self._max_connections = max_connections
        self._conns: dict[int, Connection] = {}  # by fd
        self._q: Sends = []  # sends made while a turn is dispatched
        self._qlock = threading.Lock()
        self._dispatching = False
        self._stop = False
        self._serve_lock = threading.Lock()
        self._serving: Optional[int] = None  # the thread in a serve call
        self._closed_by: Optional[int] = None  # the thread that closed a serving server
        self._quiet = False  # closed by the garbage collector: no handler calls
        try:
            # the wake-up pipe: stop(), close() and Python's signal wake-up fd write to it
            self._wake_fds = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            if tcp_addr is not None:
                self._listeners.append(_tcp_listener(tcp_addr, backlog))
            if unix_raw is not None:
                self._listeners.append(self._bind_unix(unix_raw, backlog))
            self._loop = impl.Loop(framed, max_message_size, high_water, *self._wake_fds,
                                   idle, max_conns)
            for sock in self._listeners:
                self._loop.listen(sock.fileno())
        except BaseException:
            self._release()
            raise
        self._open_handle(_core.backend_of(impl), self._loop.fileno())

    def _bind_unix(self, raw: bytes, backlog: int) -> socket.socket:
        def bind(sock: socket.socket) -> None:
            try:
                sock.bind(raw)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not _stale_unix_socket(raw):
                    raise
                os.unlink(raw)  # a dead server's socket file: nobody answers there
                sock.bind(raw)
            st = os.stat(raw)
            self._unix_path, self._unix_ino = raw, (st.st_dev, st.st_ino)

        return _listener(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), bind, backlog)

    # ------------------------------------------------------------ properties

    framing = _core.Fixed[str]("_framing", '``"length"`` or ``"raw"``.')
    max_message_size = _core.Fixed[int]("_max", "The largest message taken, in bytes.")
    idle_timeout = _core.Fixed[Optional[float]](
        "_idle_timeout", "Seconds a connection may stay idle before it is closed (None: no limit).")
    max_connections = _core.Fixed[Optional[int]](
        "_max_connections", "Connections past this many are accepted and closed at once.")

    @property
    def tcp_address(self) -> Optional[TcpAddress]:
        """``(host, port)`` the TCP listener is bound to (None without one)."""
        self._check_open()
        for sock in self._listeners:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                name = sock.getsockname()
                return name[0], name[1]
        return None

    @property
    def unix_path(self) -> Optional[str]:
        """The Unix socket's path (None without one)."""
        self._check_open()
        return None if self._unix_path is None else os.fsdecode(self._unix_path)

    @property
    def connections(self) -> list[Connection]:
        """The open connections."""
        self._check_open()
        return [c for c in self._conns.values() if not c.closed]

    def fileno(self) -> int:
        """The loop's own fd (epoll): readable whenever ``serve(0)`` would find something
        to do, for an application that runs its own ``select``/``poll`` loop."""
        return super().fileno()

    def _describe(self) -> str:
        where = [repr(a) for a in (self.tcp_address, self.unix_path) if a is not None]
        return f"{' '.join(where)} framing={self._framing}"

    # ------------------------------------------------------------ running

    @uses_handle
    def serve_forever(self) -> None:
        """Run the loop until :meth:`stop` is called."""
        self._run(-1.0)

    @uses_handle
    def serve(self, timeout: Optional[float] = None) -> None:
        """Run the loop for ``timeout`` seconds (None: until :meth:`stop`; 0: one turn
        without waiting), or until :meth:`stop` is called. The end of the time is not an
        error: serve() just returns."""
        self._run(check_timeout(timeout))

    def stop(self) -> None:
        """Make the running (or the next) serve call return. Safe from any thread, from a
        signal handler and from a coroutine; does nothing on a closed server."""
        self._stop = True
        try:
            self._enter()  # the wake-up pipe stays open while we write to it
        except ValueError:
            return
        try:
            wake(self._wake_fds[1])
        finally:
            self._leave()

    def _start(self) -> None:
        if not self._serve_lock.acquire(blocking=False):
            raise RuntimeError("this server is already serving in another call")
        self._serving = threading.get_ident()

    def _end(self) -> None:
        """After a serve call: hand over what handlers sent, then tell a call whose server
        was closed by another thread."""
        self._serving = None
        self._stop = False
        self._serve_lock.release()
        if not self._closed:
            self._drain()
        elif self._closed_by != threading.get_ident():
            raise self._closed_error()

    def _run(self, timeout: float) -> None:
        self._start()
        wakeup = self._hook_signals()
        try:
            turn = self._turn
            if timeout < 0:  # serve_forever: no clock to read
                while True:
                    if self._stop or self._closed:
                        break
                    turn(-1.0)
            else:
                deadline = Deadline(timeout)
                while True:
                    if self._stop or self._closed:
                        break
                    left = deadline.left()
                    turn(left)
                    if left == 0:
                        break
        finally:
            if wakeup:
                signal.set_wakeup_fd(-1)
            self._end()

    async def serve_async(self) -> None:
        """Run the loop on the running asyncio (or uvloop) event loop until :meth:`stop`
        (or :meth:`close`); handlers run on the event loop's thread. The server's epoll fd
        is watched with ``loop.add_reader``: each time it is readable one non-blocking turn
        runs, and a timer covers ``idle_timeout``. Nothing busy-polls, no thread is made."""
        self._enter()
        try:
            self._start()
            try:
                await self._serve_on(asyncio.get_running_loop())
            finally:
                self._end()
        finally:
            self._leave()

    async def _serve_on(self, aloop: asyncio.AbstractEventLoop) -> None:
        done: asyncio.Future[None] = aloop.create_future()
        timer: list[asyncio.Handle] = []

        def turn() -> None:
            while timer:
                timer.pop().cancel()
            if done.done():
                return
            try:
                if not (self._stop or self._closed):
                    left = self._turn(0.0)
                    if self._q:
                        left = 0.0
                    if left >= 0:
                        timer.append(aloop.call_later(left, turn) if left else
                                     aloop.call_soon(turn))
            except Exception as exc:
                done.set_exception(exc)
                return
            if self._stop or self._closed:
                done.set_result(None)

        fd = self._fd
        aloop.add_reader(fd, turn)
        try:
            turn()
            await done
        finally:
            aloop.remove_reader(fd)
            while True:
                if not timer:
                    break
                timer.pop().cancel()

    def _hook_signals(self) -> bool:
        """Serving in the main thread, make every signal wake the loop.

        Python runs a signal's handler only between bytecodes: a signal that lands while
        the turn runs in C, before it sleeps in epoll_wait, interrupts nothing. Python's
        wake-up fd, set to the loop's own wake-up pipe, closes that gap. An application
        that has its own wake-up fd keeps it. True when ours was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            old = signal.set_wakeup_fd(self._wake_fds[1], warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            return False
        if old != -1:
            signal.set_wakeup_fd(old)
            return False
        return True

    def _turn(self, timeout: float) -> float:
        """One loop turn and the dispatch of what it found. Returns when the next turn is
        due without I/O: 0.0 after a turn that found something (what its handlers sent and
        closed is written out and reaped by the next turn), else the batch's timer (-1.0:
        none)."""
        q = self._q
        if q:
            with self._qlock:
                sends = q[:]
                del q[: len(sends)]
        else:
            sends = _NO_SENDS
        pre, messages, post, timer = self._loop.poll(timeout, sends)
        self._dispatching = True
        try:
            if pre:
                self._control(pre)
            if messages:
                conns = self._conns
                on_message = self._handler.on_message
                for fd, payload in messages:
                    conn = conns.get(fd)
                    if conn is None or conn.closed:
                        continue
                    try:
                        on_message(conn, payload)
                    except Exception:
                        self._failed(conn, "on_message")
            if post:
                self._control(post)
        finally:
            self._dispatching = False
        return 0.0 if pre or messages or post else timer

    def _control(self, events: list[Event]) -> None:
        conns = self._conns
        for ev in events:
            if type(ev) is Connected:
                conn = Connection(self, ev.key, ev.fd, ev.peer)
                conns[ev.fd] = conn
                try:
                    self._handler.on_connect(conn)
                except Exception:
                    self._failed(conn, "on_connect")
            elif type(ev) is Closed:
                gone = conns.get(ev.fd)
                if gone is None or gone._key != ev.key:
                    continue
                del conns[ev.fd]
                gone.closed = True
                if ev.errno:
                    gone.error = OSError(ev.errno, os.strerror(ev.errno))
                self._closed_conn(gone)

    def _failed(self, conn: Connection, where: str) -> None:
        log.exception("fastipc.server: %s raised; closing %r", where, conn)
        conn.close()

    def _closed_conn(self, conn: Connection) -> None:
        try:
            self._handler.on_close(conn)
        except Exception:
            log.exception("fastipc.server: on_close raised for %r", conn)

    # ------------------------------------------------------------ connection operations
    # Called by Connection from any thread: each counts as a call of the server, so that
    # close() frees nothing under it.

    def _drain(self) -> None:
        """Hand the queued sends to the loop and write out everything queued now."""
        self._enter()
        try:
            with self._qlock:
                q = self._q
                sends = q[:]
                del q[: len(sends)]
            self._loop.sendv(sends)
        finally:
            self._leave()

    def _send(self, key: int, data: bytes) -> None:
        self._enter()
        try:
            self._loop.send(key, data)
        finally:
            self._leave()

    def _close_conn(self, key: int) -> None:
        try:
            self._enter()
        except ValueError:  # the server is closed: so is the connection
            return
        try:
            if self._q:
                self._drain()  # what was sent before close() goes first
            self._loop.close_conn(key)
        finally:
            self._leave()

    def _pending(self, key: int) -> int:
        self._enter()
        try:
            return self._loop.pending(key)
        finally:
            self._leave()

    # ------------------------------------------------------------ life cycle

    def _wake(self) -> None:
        """close() while a serve call runs: remember who closed, and wake the loop."""
        self._closed_by = threading.get_ident()
        wake(self._wake_fds[1])

    def _free(self) -> None:
        """Once no call is busy: write out what the kernel takes now, run every open
        connection's on_close, close the loop, the listeners and the wake-up pipe, and
        unlink the socket file this server created."""
        try:
            with self._qlock:
                sends, self._q = self._q, []
            self._loop.sendv(sends)
        except OSError:
            pass  # the rest goes with the connections
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.closed = True
            if not self._quiet:
                self._closed_conn(conn)
        self._release()

    def _release(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        for fd in self._wake_fds:
            os.close(fd)
        self._wake_fds = ()
        if self._unix_path is not None:
            try:
                st = os.stat(self._unix_path)
                if (st.st_dev, st.st_ino) == self._unix_ino:  # still ours: remove it
                    os.unlink(self._unix_path)
            except FileNotFoundError:
                pass
            self._unix_path = None

    def __del__(self) -> None:
        self._quiet = True  # the garbage collector calls no handlers
        super().__del__()


def _stale_unix_socket(raw: bytes) -> bool:
    """A socket file nobody listens on any more (the kernel refuses connections)."""
    try:
        if not stat.S_ISSOCK(os.lstat(raw).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(raw)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _tcp_listener(addr: TcpAddress, backlog: int) -> socket.socket:
    host, port = addr
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]

    def bind(sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)

    return _listener(socket.socket(family, kind, proto), bind, backlog)


def _listener(sock: socket.socket, bind: Callable[[socket.socket], None],
              backlog: int) -> socket.socket:
    """``sock`` bound by ``bind``, listening and non-blocking; closed if any step fails."""
    try:
        bind(sock)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
