"""Socket clients of :mod:`fastipc.server` (TCP and Unix-domain): :func:`connect` returns a
blocking :class:`Client`, :func:`connect_async` an :class:`AsyncClient` whose ``send``,
``recv`` and ``read`` are awaited on the running loop. Both send and receive whole messages
(``framing="length"``) or raw bytes (``framing="raw"``), through the same stream backend as
pipes (``fastipc._backend.pipe``): one framed reader for pipes and sockets. As for pipes,
``recv`` raises EOFError at the end of the stream, whatever the framing, and ``read``
returns ``b""`` there. ``fastipc.server`` re-exports them."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional, TypeVar

from fastipc import _core
from fastipc._address import (
    DEFAULT_MAX_MESSAGE_SIZE,
    MAX_FRAME,
    Address,
    framing_flag,
    tcp_address,
    unix_path,
)
from fastipc._core import Deadline, check_int, check_timeout, uses_handle, uses_handle_async
from fastipc.pipe import PipeReader, StreamEnd

__all__ = ["AsyncClient", "Client", "connect", "connect_async"]

_C = TypeVar("_C", bound="_ClientEnd")


class _ClientEnd(StreamEnd):
    """What both clients share: the connected socket's fd, framing and address."""

    _what = "Client"

    def __init__(self, fd: int, framing: str, max_message_size: int, address: Any, *,
                 backend: Optional[str] = None) -> None:
        which = _core.resolve_backend(backend)
        self._framing = framing
        self._tears = framing == "length"
        self._address = address
        self._open_stream(fd, which, reading=True, sock=True, max_message_size=max_message_size)

    framing = _core.Fixed[str]("_framing", '``"length"`` (whole messages, each after its '
                               '4-byte big-endian length) or ``"raw"`` (bytes as they arrive).')
    address = _core.Fixed[Any]("_address", "The server's address as given to :func:`connect`.")

    @property
    def max_message_size(self) -> int:
        self._check_open()
        return self._limit

    def _describe(self) -> str:
        return f"fd={self._fd} {self._address!r}"


class Client(_ClientEnd):
    """A blocking client connection, from :func:`connect`.

    ``send(data)`` sends one message (length framing) or the raw bytes; ``recv()`` returns
    the next message or, with raw framing, the bytes that arrived: EOFError once the server
    closed, whatever the framing. ``read(n)`` returns up to ``n`` raw bytes, ``b""`` at the
    end, as :meth:`fastipc.pipe.PipeReader.read`. ``close()`` from another thread ends a
    blocked call with ValueError.
    """

    _handle_type = "ClientHandle"  # csrc/py/pipe.c: send, recv

    # send and recv below are the pure backend's: natively, the handle's C methods.
    @uses_handle
    def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send ``data`` (bytes-like) whole; TimeoutError if the server does not take it
        within ``timeout`` seconds, BrokenPipeError / ConnectionResetError once it is gone.
        A framed message cut short would desynchronise the stream, so the client then
        closes itself."""
        stream = self._stream
        assert stream is not None
        (stream.send if self._tears else stream.write)(data, check_timeout(timeout), 0)

    @uses_handle
    def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message (length framing; OSError(EMSGSIZE) for a frame over
        ``max_message_size``), or the bytes that arrived (raw framing). EOFError at the end
        of the stream, whatever the framing."""
        stream = self._stream
        assert stream is not None
        t = check_timeout(timeout)
        return stream.recv(t) if self._tears else _some(stream.read(65536, t))

    read = PipeReader.read  # raw bytes, b"" at the end (natively the handle's C method)


def _some(data: bytes) -> bytes:
    """What a raw ``recv`` returns: ``data``, or EOFError at the end of the stream."""
    if not data:
        _core.raise_errno(_core.FIPC_EOF)
    return data


class AsyncClient(_ClientEnd):
    """A client connection whose ``send`` and ``recv`` are awaited on the running loop
    (asyncio or uvloop), from :func:`connect_async`. Same framing, errors and timeouts as
    :class:`Client`; a cancelled ``recv`` leaves the message for the next one, a cancelled
    ``send`` has sent the whole message or nothing (once part of it went, the rest still
    goes, and the next ``send`` waits for it)."""

    _what = "AsyncClient"  # named in the ValueError of a closed one, as every class is
    _handle_type = "AsyncClientHandle"  # csrc/py/pipe.c: the no-wait steps

    @uses_handle_async
    async def send(self, data: Any, timeout: Optional[float] = None) -> None:
        """Send ``data`` whole (awaitable)."""
        await self._send_async(data, timeout)

    @uses_handle_async
    async def recv(self, timeout: Optional[float] = None) -> bytes:
        """The next message, or the raw bytes that arrived (awaitable); EOFError at the end
        of the stream, whatever the framing."""
        if self._tears:
            return await self._recv_async(timeout)
        return await self._recv_async(timeout, self._raw_step)

    def _raw_step(self) -> Optional[bytes]:
        """A raw ``recv`` without waiting: the bytes, None, or EOFError at the end."""
        data = self._read_step(65536)
        return None if data is None else _some(data)

    read = PipeReader.read_async  # awaitable: raw bytes, b"" at the end


def _checked(framing: str, timeout: Optional[float], max_message_size: int,
             backend: Optional[str]) -> tuple[str, Deadline, int, str]:
    framed = framing_flag(framing)
    mms = check_int(max_message_size, "max_message_size", 0, MAX_FRAME)
    deadline = Deadline(check_timeout(timeout))
    return "length" if framed else "raw", deadline, mms, _core.resolve_backend(backend)


def _client(kind: Callable[..., _C], sock: socket.socket, backend: str, *args: Any) -> _C:
    """The client object owning the connected ``sock``'s fd (closed if that fails)."""
    fd = sock.detach()
    try:
        return kind(fd, *args, backend=backend)
    except BaseException:
        os.close(fd)
        raise


def connect(address: Address, *, framing: str = "length", timeout: Optional[float] = None,
            max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, backend: Optional[str] = None
            ) -> Client:
    """Connect to a server: ``(host, port)`` for TCP, a path (str, bytes, PathLike) for a
    Unix socket. TimeoutError if it does not answer within ``timeout`` seconds;
    ConnectionRefusedError if nobody listens there."""
    framing, deadline, mms, which = _checked(framing, timeout, max_message_size, backend)
    if isinstance(address, tuple):
        host, port = tcp_address(address)
        sock = _connect_tcp(host, port, deadline)
    else:
        sock = _connect_unix(unix_path(address), deadline)
    return _client(Client, sock, which, framing, mms, address)


async def connect_async(address: Address, *, framing: str = "length",
                        timeout: Optional[float] = None,
                        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                        backend: Optional[str] = None) -> AsyncClient:
    """Awaitable :func:`connect` on the running loop: an :class:`AsyncClient`."""
    framing, deadline, mms, which = _checked(framing, timeout, max_message_size, backend)
    loop = asyncio.get_running_loop()
    targets: list[tuple[int, int, int, Any]]
    if isinstance(address, tuple):
        host, port = tcp_address(address)
        targets = [
            (family, kind, proto, sockaddr)
            for family, kind, proto, _, sockaddr in await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        ]
    else:
        targets = [(socket.AF_UNIX, socket.SOCK_STREAM, 0, unix_path(address))]
    tried: list[OSError] = []
    for family, kind, proto, sockaddr in targets:
        sock = socket.socket(family, kind, proto)
        with _trying(sock, tried):
            sock.setblocking(False)
            left = deadline.left()
            try:
                await asyncio.wait_for(loop.sock_connect(sock, sockaddr),
                                       None if left < 0 else left)
            except TimeoutError:
                raise deadline.error() from None
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            break
    else:
        raise tried[-1]
    return _client(AsyncClient, sock, which, framing, mms, address)


@contextlib.contextmanager
def _trying(sock: socket.socket, tried: list[OSError]) -> Iterator[None]:
    """Around an attempt to connect ``sock`` to one of a server's addresses: ``sock`` is
    closed if the attempt raises; an OSError (other than a timeout) is added to ``tried``
    and the caller goes on to the next address, anything else propagates."""
    try:
        yield
    except TimeoutError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        tried.append(exc)
    except BaseException:
        sock.close()
        raise


def _wait_connected(sock: socket.socket, deadline: Deadline) -> None:
    """Wait for a non-blocking connect() to finish (poll retries EINTR with the time left)."""
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    while True:
        left = deadline.left()
        if poller.poll(None if left < 0 else int(left * 1000 + 0.999)):
            break
        if deadline.expired():
            raise deadline.error()
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


def _connect_tcp(host: str, port: int, deadline: Deadline) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    tried: list[OSError] = []
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        with _trying(sock, tried):
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                _wait_connected(sock, deadline)
            elif err:
                raise OSError(err, os.strerror(err))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
    raise tried[-1]


def _connect_unix(raw: bytes, deadline: Deadline) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        delay = 0.0005
        while True:
            err = sock.connect_ex(raw)
            if err == 0:
                return sock
            if err == errno.EINPROGRESS:
                _wait_connected(sock, deadline)
                return sock
            if err != errno.EAGAIN:  # EAGAIN: the listen backlog is full; try again soon
                raise OSError(err, os.strerror(err), os.fsdecode(raw))
            if deadline.expired():
                raise deadline.error()
            left = deadline.left()
            time.sleep(delay if left < 0 else min(delay, left))
            delay = min(delay * 2, 0.02)
    except BaseException:
        sock.close()
        raise
