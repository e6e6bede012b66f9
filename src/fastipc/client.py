"""Blocking socket clients of :mod:`fastipc.server` (TCP and Unix-domain): ``connect()``
returns a :class:`Client` that sends and receives whole messages (length framing) or raw
bytes. ``fastipc.server`` re-exports both."""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from types import ModuleType
from typing import Any, Optional

from fastipc import _core
from fastipc._address import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_FRAME,
    Address,
    framing_flag,
    tcp_address,
    unix_path,
)
from fastipc._core import check_int, check_timeout, closed_error

__all__ = ["Client", "connect"]


class Client(_core.FdOwner):
    """A blocking client connection, from :func:`connect`.

    ``send(data)`` sends one message (length framing) or the raw bytes; ``recv()`` returns
    the next message (EOFError once the server closed) or, with raw framing, the bytes that
    arrived (``b""`` at the end).
    """

    _what = "Client"

    def __init__(self, fd: int, impl: ModuleType, framing: str, max_message_size: int,
                 address: Any) -> None:
        self._fd = -1  # owned only once the backend's half exists (connect() closes it else)
        self._impl = impl
        self._framing = framing
        self._address = address
        self._core = impl.Client(fd, framing == "length", max_message_size)
        self._fd = fd

    @property
    def framing(self) -> str:
        return self._framing

    @property
    def address(self) -> Any:
        """The server's address as given to :func:`connect`."""
        return self._address

    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send ``data`` (bytes-like) whole; TimeoutError if the server does not take it
        within ``timeout`` seconds, BrokenPipeError / ConnectionResetError once it is gone.
        A framed message cut short would desynchronise the stream, so the client then
        closes itself."""
        if self._fd < 0:
            raise closed_error("Client")
        t = check_timeout(timeout)
        try:
            self._core.send(data, t)
        except OSError as exc:
            if self._framing == "length" and getattr(exc, "characters_written", False):
                self.close()
            raise
        except OverflowError:
            raise ValueError(f"a message is limited to {MAX_FRAME} bytes") from None

    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message (length framing; EOFError at the end, OSError(EMSGSIZE) for a
        frame over ``max_message_size``), or the bytes that arrived (raw framing; ``b""``
        at the end)."""
        if self._fd < 0:
            raise closed_error("Client")
        return self._core.recv(check_timeout(timeout))  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<Client {state} {self._address!r} backend={self.backend}>"


def connect(
    address: Address,
    *,
    framing: str = "length",
    timeout: Optional[float] = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    backend: Optional[str] = None,
) -> Client:
    """Connect to a server: ``(host, port)`` for TCP, a path (str, bytes, PathLike) for a
    Unix socket. TimeoutError if it does not answer within ``timeout`` seconds;
    ConnectionRefusedError if nobody listens there."""
    impl: ModuleType = _core.ops("server", backend)
    framed = framing_flag(framing)
    max_message_size = check_int(max_message_size, "max_message_size", 0, MAX_FRAME)
    t = check_timeout(timeout)
    deadline = time.monotonic() + t if t > 0 else t
    if isinstance(address, tuple):
        host, port = tcp_address(address)
        sock = _connect_tcp(host, port, deadline, timeout)
    else:
        sock = _connect_unix(unix_path(address), deadline, timeout)
    fd = sock.detach()
    try:
        return Client(fd, impl, framing if framed else "raw", max_message_size, address)
    except BaseException:
        os.close(fd)
        raise


def _wait_connected(sock: socket.socket, deadline: float, timeout: Optional[float]) -> None:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while True:
        if deadline < 0:
            ms = None
        else:
            left = deadline - time.monotonic() if deadline > 0 else 0.0
            ms = max(0, int(left * 1000 + 0.999))
        if poller.poll(ms):
            break
        if ms is not None and (deadline == 0 or time.monotonic() >= deadline):
            raise _core.timeout_error(timeout)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _connect_tcp(host: str, port: int, deadline: float,
                 timeout: Optional[float]) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: Optional[BaseException] = None
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                _wait_connected(sock, deadline, timeout)
            elif err:
                raise OSError(err, os.strerror(err))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except TimeoutError:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            last = exc
        except BaseException:
            sock.close()
            raise
    assert last is not None
    raise last


def _connect_unix(raw: bytes, deadline: float, timeout: Optional[float]) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        delay = 0.0005
        while True:
            err = sock.connect_ex(raw)
            if err == 0:
                return sock
            if err == errno.EINPROGRESS:
                _wait_connected(sock, deadline, timeout)
                return sock
            if err != errno.EAGAIN:  # EAGAIN: the listen backlog is full; try again soon
                raise OSError(err, os.strerror(err), os.fsdecode(raw))
            if deadline >= 0:
                left = deadline - time.monotonic() if deadline > 0 else 0.0
                if left <= 0:
                    raise _core.timeout_error(timeout)
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
    except BaseException:
        sock.close()
        raise
