"""Server and client operations backed by ``csrc/server.c``: one C call per user operation.

The loop's turn is one ``fipc_srv_poll`` call, which also takes the sends the handlers
queued during the previous turn; its events come back as int64 fields and one buffer
holding every payload of the turn, turned here into the ``Batch`` of the seam
(:mod:`fastipc._backend.server`).
"""

from __future__ import annotations

import errno
from typing import Any

from fastipc._address import decode_sockaddr
from fastipc._backend.server import Batch, Closed, Connected, Event, Messages, Sends
from fastipc._backend.server import Loop as LoopProtocol
from fastipc._core import check, ffi, lib
from fastipc._native.pipe import as_buffer

__all__ = ["Loop"]

_EINTR = -errno.EINTR
_EPIPE = -errno.EPIPE
_unpack = ffi.unpack
_poll = lib.fipc_srv_poll
_send = lib.fipc_srv_send
_CONNECT = lib.FIPC_EV_CONNECT
_EV = lib.FIPC_EV_FIELDS
_MSG = lib.FIPC_MSG_FIELDS
_NONE: list[Any] = []  # an empty part of a batch (never changed by the caller)


class Loop:
    """One epoll loop with its connections (``fipc_srv``). Its life cycle is the Server's
    (``fastipc._core.Handle``): ``close()`` runs once no call is busy, so no call here can
    meet a freed loop; the C mutex orders the calls of different threads."""

    __slots__ = ("_b", "_s")

    def __init__(self, framed: bool, max_message_size: int, high_water: int, wake_r: int,
                 wake_w: int, idle_timeout: float, max_connections: int) -> None:
        out = ffi.new("fipc_srv **")
        check(lib.fipc_srv_new(out, lib.FIPC_SRV_LENGTH if framed else lib.FIPC_SRV_RAW,
                               max_message_size, high_water, wake_r, wake_w, idle_timeout,
                               max_connections), "cannot create the event loop")
        self._s = out[0]
        self._b = ffi.new("fipc_srv_batch *")

    def listen(self, fd: int) -> None:
        check(lib.fipc_srv_listen(self._s, fd))

    def fileno(self) -> int:
        return int(lib.fipc_srv_fd(self._s))

    def poll(self, timeout: float, sends: Sends) -> Batch:
        b = self._b
        if sends:
            keys, datas = zip(*sends, strict=False)
            lens = list(map(len, datas))
            blob = b"".join(datas)
            n = _poll(self._s, timeout, keys, lens, len(lens), blob, len(blob), b)
        else:
            n = _poll(self._s, timeout, ffi.NULL, ffi.NULL, 0, ffi.NULL, 0, b)
        if n <= 0:
            if n == 0:
                return _NONE, _NONE, _NONE, b.timer
            if n == _EINTR:
                return _NONE, _NONE, _NONE, -1.0
            check(n)
        data = _unpack(b.data, b.data_len)
        nmsg = b.nmsg
        if nmsg:
            # a generator, not a list: each payload is sliced as the dispatch reaches it,
            # and no list of tuples is built (the GC would count every tuple)
            it = iter(_unpack(b.msg, nmsg * _MSG))
            messages: Messages = ((fd, data[start:end])
                                  for fd, start, end in zip(it, it, it, strict=False))
        else:
            messages = _NONE
        return (
            _events(_unpack(b.pre, b.npre * _EV), data) if b.npre else _NONE,
            messages,
            _events(_unpack(b.post, b.npost * _EV), data) if b.npost else _NONE,
            b.timer,
        )

    def sendv(self, sends: Sends) -> None:
        keys, datas = zip(*sends, strict=False) if sends else ((), ())
        lens = list(map(len, datas))
        blob = b"".join(datas)
        check(lib.fipc_srv_sendv(self._s, keys, lens, len(lens), blob, len(blob)))

    def send(self, key: int, data: Any) -> None:
        if type(data) is bytes:
            buf, n = data, len(data)
        else:
            buf, n = as_buffer(data)
        rc = _send(self._s, key, buf, n)
        if rc == _EPIPE:
            raise BrokenPipeError(errno.EPIPE, "the connection is gone")
        check(rc)

    def close_conn(self, key: int) -> None:
        lib.fipc_srv_close(self._s, key)

    def pending(self, key: int) -> int:
        n = lib.fipc_srv_pending(self._s, key)
        return 0 if n < 0 else int(n)

    def close(self) -> None:
        s, self._s = self._s, ffi.NULL
        if s != ffi.NULL:
            lib.fipc_srv_free(s)


_check: type[LoopProtocol] = Loop


def _events(fields: list[int], data: bytes) -> list[Event]:
    """The control events of a batch: 5 ints each (kind, fd, id, offset or errno, length)."""
    it = iter(fields)
    return [
        Connected(cid << 32 | fd, fd, decode_sockaddr(data[off : off + size]))
        if kind == _CONNECT else Closed(cid << 32 | fd, fd, off)
        for kind, fd, cid, off, size in zip(it, it, it, it, it, strict=False)
    ]
