"""Socket addresses and framing arguments, checked once for servers and clients alike."""

from __future__ import annotations

import os
import socket
import sys
from typing import Any, Union

from fastipc._core import check_int

DEFAULT_MAX_MESSAGE_SIZE = 16 << 20
MAX_UNIX_PATH = 107  # sizeof(sun_path) - 1: the kernel's limit, not ours
MAX_FRAME = 0xFFFFFFFF

TcpAddress = tuple[str, int]
UnixPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Address = Union[TcpAddress, UnixPath]


def framing_flag(framing: Any) -> bool:
    if not isinstance(framing, str):
        raise TypeError(f"framing must be a str, not {type(framing).__name__}")
    if framing not in ("length", "raw"):
        raise ValueError(f"framing must be 'length' or 'raw', not {framing!r}")
    return framing == "length"


def unix_path(path: Any) -> bytes:
    """A Unix socket path as bytes; ValueError past the kernel's 107-byte sun_path limit."""
    if isinstance(path, bool) or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"a Unix socket path must be str, bytes or os.PathLike, not "
                        f"{type(path).__name__}")
    raw = os.fsencode(path)
    if not raw:
        raise ValueError("a Unix socket path must not be empty")
    if b"\0" in raw:
        raise ValueError("a Unix socket path must not contain NUL characters")
    if len(raw) > MAX_UNIX_PATH:
        raise ValueError(
            f"Unix socket path is {len(raw)} bytes long; the kernel's limit (sun_path) is "
            f"{MAX_UNIX_PATH}: use a shorter path, e.g. in a directory closer to /"
        )
    return raw


def tcp_address(address: Any) -> TcpAddress:
    if not isinstance(address, tuple) or len(address) not in (2, 4):
        raise TypeError(f"a TCP address must be a (host, port) tuple, not {address!r}")
    host, port = address[0], address[1]
    if not isinstance(host, str):
        raise TypeError(f"the host must be a str, not {type(host).__name__}")
    if "\0" in host:
        raise ValueError("the host must not contain NUL characters")
    return host, check_int(port, "port", 0, 65535)


def decode_sockaddr(raw: bytes) -> Any:
    """A peer address from the kernel's ``struct sockaddr`` bytes (what the native loop's
    accept4() returns), as Python's ``socket.accept()`` gives it: ``(host, port)`` for
    IPv4, ``(host, port, flowinfo, scope_id)`` for IPv6, the path (``str``; ``""`` for an
    unbound client) for a Unix socket; None for another or truncated family."""
    if len(raw) < 2:
        return None
    family = int.from_bytes(raw[:2], sys.byteorder)
    if family == socket.AF_INET and len(raw) >= 8:
        return socket.inet_ntop(family, raw[4:8]), int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET6 and len(raw) >= 28:
        return (socket.inet_ntop(family, raw[8:24]), int.from_bytes(raw[2:4], "big"),
                int.from_bytes(raw[4:8], "big"), int.from_bytes(raw[24:28], sys.byteorder))
    if family == socket.AF_UNIX:
        path = raw[2:]
        if path[:1] == b"\0":  # an abstract address: Python gives it as bytes
            return path
        return os.fsdecode(path.split(b"\0", 1)[0])
    return None
