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

Framing: ``"length"`` (the default) delivers whole messages, each sent as a 4-byte
big-endian length and the payload (``b""`` is a valid message); ``"raw"`` delivers bytes as
they arrive. A frame announcing more than ``max_message_size`` bytes closes its connection.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import struct
import threading
import time
from types import ModuleType, TracebackType
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
from fastipc._core import byte_view, check_int, check_timeout, closed_error
from fastipc.client import Client, connect

__all__ = [
    "DEFAULT_HIGH_WATER",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_UNIX_PATH",
    "Client",
    "Connection",
    "Handler",
    "Server",
    "connect",
]

DEFAULT_HIGH_WATER = 1 << 20
EV_CONNECT, EV_CLOSE = 1, 3
_NO_SENDS: list[tuple[int, bytes]] = []

log = logging.getLogger("fastipc.server")



# ---------------------------------------------------------------------------- arguments


# ---------------------------------------------------------------------------- handler


class Handler:
    """What a :class:`Server` calls. Subclass it and override what you need.

    Each connection gets one ``on_connect``, then ``on_message`` for each message (whole
    messages with ``"length"`` framing, chunks as they arrive with ``"raw"``), then exactly
    one ``on_close`` -- whether the peer closed, reset or sent an oversized frame, the
    handler closed it, or the server was closed. A handler that raises has its connection
    closed and the exception logged (logger ``fastipc.server``); the loop goes on.
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


def _decode_sockaddr(raw: bytes) -> Any:
    if len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(family, raw[4:8]), struct.unpack_from(">H", raw, 2)[0]
    if family == socket.AF_INET6 and len(raw) >= 28:
        port, flow = struct.unpack_from(">HI", raw, 2)
        (scope,) = struct.unpack_from("=I", raw, 24)
        return socket.inet_ntop(family, raw[8:24]), port, flow, scope
    if family == socket.AF_UNIX:
        path = raw[2:].split(b"\0", 1)[0]
        return os.fsdecode(path)
    return None


class Connection:
    """One client connection of a :class:`Server`, handed to the handler's methods.

    ``data`` is free for the application (per-connection state). ``send`` never blocks:
    inside a handler it queues the bytes, which the loop writes out at its next turn;
    elsewhere it writes what the kernel takes at once and queues the rest. A connection
    whose peer does not read stops being read once ``high_water`` bytes wait for it
    (back-pressure), and resumes when they drain.
    """

    __slots__ = ("_key", "_peer", "_server", "closed", "data", "error", "fd")

    def __init__(self, server: Server, fd: int, cid: int, peer: bytes) -> None:
        self._server = server
        self.fd = fd
        self._key = cid << 32 | fd
        self._peer = peer
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
        if len(data) > MAX_FRAME and self._server._framed:
            raise ValueError(f"a message is limited to {MAX_FRAME} bytes")
        srv = self._server
        if srv._dispatching:
            srv._q.append((self._key, data))
            if srv._dispatching:
                return
            srv._drain()  # the turn ended meanwhile (we are another thread): send it now
        else:
            loop = srv._loop
            if loop is None:
                raise closed_error("Connection")
            loop.send(self._key, data)

    def close(self) -> None:
        """Close after the queued output is written; ``on_close`` follows. Idempotent."""
        if not self.closed:
            self.closed = True
            srv = self._server
            loop = srv._loop
            if loop is not None:
                if srv._q:
                    srv._drain()  # what was sent before close() goes first
                loop.close_conn(self._key)

    def fileno(self) -> int:
        """The connection's socket (for getsockopt and the like; do not read or close it)."""
        if self.closed:
            raise closed_error("Connection")
        return self.fd

    @property
    def peer(self) -> Any:
        """The client's address: ``(host, port)``, ``(host, port, flow, scope)`` for IPv6,
        or the client's Unix socket path (usually ``""``: clients rarely bind one)."""
        return _decode_sockaddr(self._peer)

    @property
    def pending(self) -> int:
        """Bytes queued for the peer and not yet taken by the kernel."""
        loop = self._server._loop
        return 0 if self.closed or loop is None else loop.pending(self._key)

    @property
    def server(self) -> Server:
        return self._server

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fd}"
        return f"<Connection {state} peer={self.peer!r}>"


# ---------------------------------------------------------------------------- server


class Server:
    """Serve TCP (IPv4 or IPv6) and/or Unix-domain stream connections with one loop.

    ``tcp=(host, port)`` (port 0 picks a free one, see :attr:`tcp_address`); ``unix=path``
    (at most 107 bytes; a stale socket file left by a dead server is replaced, a live one
    is ``OSError(EADDRINUSE)``). Closing the server closes every connection (each gets its
    ``on_close``), closes the listeners and unlinks the socket file it created.

    ``serve_forever()`` and ``serve(timeout)`` run the loop in the calling thread;
    ``stop()`` ends them from another thread or a signal handler.
    """

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
        backend: Optional[str] = None,
    ) -> None:
        self._loop: Any = None
        self._listeners: list[socket.socket] = []
        self._unix_path: Optional[bytes] = None
        self._unix_ino: Optional[tuple[int, int]] = None
        for method in ("on_connect", "on_message", "on_close"):
            if not callable(getattr(handler, method, None)):
                raise TypeError(f"handler must have an {method}() method (see server.Handler)")
        impl: ModuleType = _core.ops("server", backend)
        framed = framing_flag(framing)
        max_message_size = check_int(max_message_size, "max_message_size", 0, MAX_FRAME)
        high_water = check_int(high_water, "high_water", 1, 2**62)
        backlog = check_int(backlog, "backlog", 1, 2**31 - 1)
        if tcp is None and unix is None:
            raise ValueError("give tcp=(host, port), unix=path, or both")
        tcp_addr = None if tcp is None else tcp_address(tcp)
        unix_raw = None if unix is None else unix_path(unix)

        self._impl = impl
        self._handler = handler
        self._framing = framing
        self._framed = framed
        self._max = max_message_size
        self._conns: dict[int, Connection] = {}
        self._q: list[tuple[int, bytes]] = []  # sends made while a turn is dispatched
        self._qlock = threading.Lock()
        self._dispatching = False
        self._stop = False
        self._serving: Optional[int] = None  # the ident of the thread in serve()
        self._serve_lock = threading.Lock()
        self._close_after = False
        try:
            if tcp_addr is not None:
                self._listeners.append(_tcp_listener(tcp_addr, backlog))
            if unix_raw is not None:
                self._listeners.append(self._bind_unix(unix_raw, backlog))
            self._loop = impl.Loop(framed, max_message_size, high_water)
            for sock in self._listeners:
                self._loop.listen(sock.fileno())
        except BaseException:
            self._release()
            raise

    def _bind_unix(self, raw: bytes, backlog: int) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(raw)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or not _stale_unix_socket(raw):
                    raise
                os.unlink(raw)  # a dead server's socket file: nobody answers there
                sock.bind(raw)
            st = os.stat(raw)
            self._unix_path, self._unix_ino = raw, (st.st_dev, st.st_ino)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    # ------------------------------------------------------------ properties

    def _check(self) -> Any:
        if self._loop is None:
            raise closed_error("Server")
        return self._loop

    @property
    def closed(self) -> bool:
        return self._loop is None

    @property
    def backend(self) -> str:
        return _core.backend_of(self._impl)

    @property
    def framing(self) -> str:
        return self._framing

    @property
    def max_message_size(self) -> int:
        return self._max

    @property
    def tcp_address(self) -> Optional[TcpAddress]:
        """``(host, port)`` the TCP listener is bound to (None without one)."""
        self._check()
        for sock in self._listeners:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                name = sock.getsockname()
                return name[0], name[1]
        return None

    @property
    def unix_path(self) -> Optional[str]:
        """The Unix socket's path (None without one)."""
        self._check()
        return None if self._unix_path is None else os.fsdecode(self._unix_path)

    @property
    def connections(self) -> list[Connection]:
        """The open connections."""
        self._check()
        return [c for c in self._conns.values() if not c.closed]

    def fileno(self) -> int:
        """Not a kernel object of its own: the first listener's socket, for select() users."""
        self._check()
        return self._listeners[0].fileno()

    # ------------------------------------------------------------ running

    def serve_forever(self) -> None:
        """Run the loop until :meth:`stop` is called."""
        self._run(-1.0)

    def serve(self, timeout: Optional[float] = None) -> None:
        """Run the loop for ``timeout`` seconds (None: until :meth:`stop`; 0: one turn
        without waiting), or until :meth:`stop` is called. The end of the time is not an
        error: serve() just returns."""
        self._run(check_timeout(timeout))

    def stop(self) -> None:
        """Make the running (or the next) serve call return. Safe from any thread and from
        a signal handler."""
        self._stop = True
        loop = self._loop
        if loop is not None:
            loop.wake()

    def _run(self, t: float) -> None:
        self._check()
        if not self._serve_lock.acquire(blocking=False):
            raise RuntimeError("this server is already serving in another call")
        self._serving = threading.get_ident()
        wakeup = self._hook_signals()
        try:
            if t > 0:
                deadline = time.monotonic() + t
            turn = self._turn
            while not self._stop:
                if t > 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    turn(left)
                else:
                    turn(t)
                    if t == 0:
                        break
            self._stop = False
        finally:
            if wakeup:
                signal.set_wakeup_fd(-1)
            self._serving = None
            self._serve_lock.release()
            if self._loop is not None:
                self._drain()
                self._loop.flush()
            if self._close_after:
                self.close()

    def _drain(self) -> None:
        """Hand the queued sends to the loop now."""
        with self._qlock:
            q = self._q
            sends = q[:]
            del q[: len(sends)]
        if sends and self._loop is not None:
            self._loop.sendv(sends)

    def _hook_signals(self) -> bool:
        """Serving in the main thread, make every signal wake the loop.

        Python runs a signal's handler only between bytecodes: a signal that lands while
        the turn runs in C, before it sleeps in epoll_wait, interrupts nothing. Python's
        wake-up fd, set to the loop's own wake-up pipe, closes that gap. An application
        that has its own wake-up fd keeps it. True when ours was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        try:
            old = signal.set_wakeup_fd(self._loop.wakeup_fd(), warn_on_full_buffer=False)
        except ValueError:  # not the main interpreter
            return False
        if old != -1:
            signal.set_wakeup_fd(old)
            return False
        return True

    def _turn(self, timeout: float) -> None:
        q = self._q
        if q:
            with self._qlock:
                sends = q[:]
                del q[: len(sends)]
        else:
            sends = _NO_SENDS
        pre, msg, post, data = self._loop.poll(timeout, sends)
        self._dispatching = True
        try:
            if pre:
                self._control(pre, data)
            if msg:
                conns = self._conns
                on_message = self._handler.on_message
                it = iter(msg)
                for fd, off, size in zip(it, it, it):
                    conn = conns.get(fd)
                    if conn is None or conn.closed:
                        continue
                    try:
                        on_message(conn, data[off : off + size])
                    except Exception:
                        self._failed(conn, "on_message")
            if post:
                self._control(post, data)
        finally:
            self._dispatching = False

    def _control(self, events: list[int], data: bytes) -> None:
        conns = self._conns
        it = iter(events)
        for kind, fd, cid, off, size in zip(it, it, it, it, it):
            if kind == EV_CONNECT:
                conn = Connection(self, fd, cid, data[off : off + size])
                conns[fd] = conn
                try:
                    self._handler.on_connect(conn)
                except Exception:
                    self._failed(conn, "on_connect")
            elif kind == EV_CLOSE:
                gone = conns.get(fd)
                if gone is None or gone._key != cid << 32 | fd:
                    continue
                del conns[fd]
                gone.closed = True
                if off:
                    gone.error = OSError(off, os.strerror(off))
                self._closed(gone)

    def _failed(self, conn: Connection, where: str) -> None:
        log.exception("fastipc.server: %s raised; closing %r", where, conn)
        conn.close()

    def _closed(self, conn: Connection) -> None:
        try:
            self._handler.on_close(conn)
        except Exception:
            log.exception("fastipc.server: on_close raised for %r", conn)

    # ------------------------------------------------------------ life cycle

    def close(self) -> None:
        """Close every connection (running ``on_close`` for each), the listeners and the
        Unix socket file this server created. Idempotent. Called from a handler, it takes
        effect when the running serve call returns; from another thread while serving, it
        stops the loop and waits for it."""
        if self._loop is None:
            return
        if self._serving is not None:
            if self._serving == threading.get_ident():
                self._close_after = True
                self.stop()
                return
            self.stop()
            with self._serve_lock:
                pass
            if self._loop is None:
                return
        self._drain()
        self._loop.flush()  # what the kernel takes now; the rest goes with the connection
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.closed = True
            self._closed(conn)
        self._release()

    def _release(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.close()
        for sock in self._listeners:
            sock.close()
        self._listeners = []
        if self._unix_path is not None:
            try:
                st = os.stat(self._unix_path)
                if (st.st_dev, st.st_ino) == self._unix_ino:  # still ours: remove it
                    os.unlink(self._unix_path)
            except FileNotFoundError:
                pass
            self._unix_path = None

    def __enter__(self) -> Server:
        self._check()
        return self

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_loop", None) is not None and getattr(self, "_serving", 1) is None:
            try:
                self._release()
            except Exception:  # interpreter shutdown
                pass

    def __repr__(self) -> str:
        if self._loop is None:
            return "<Server closed>"
        where = [repr(a) for a in (self.tcp_address, self.unix_path) if a is not None]
        return f"<Server {' '.join(where)} framing={self._framing} backend={self.backend}>"


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
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
