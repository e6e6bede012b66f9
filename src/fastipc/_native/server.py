"""Server and client operations backed by ``csrc/server.c``: one C call per user operation.

The loop's turn is one ``fipc_srv_poll`` call, which also takes the sends the handlers
queued during the previous turn; its events come back as lists of ints and one ``bytes``
holding every payload of the turn.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

from fastipc._core import check, closed_error, ffi, lib, raise_errno
from fastipc._native.pipe import Reader, as_buffer

__all__ = ["Client", "Loop"]

_EINTR = -errno.EINTR
_EPIPE = -errno.EPIPE
_monotonic = time.monotonic
_unpack = ffi.unpack
_poll = lib.fipc_srv_poll
_send = lib.fipc_srv_send
_sock_send = lib.fipc_sock_send


class Loop:
    """One epoll loop with its connections (``fipc_srv``).

    ``poll(timeout, sends)`` is the turn, called by the serving thread only: ``sends`` is the
    list of ``(key, bytes)`` the handlers queued since the last turn, handed to C in the same
    call. The other operations may come from any thread; they and ``close()`` share a
    re-entrant lock, so that none runs on a freed loop. The wake-up pipe belongs to this
    object and is closed only when the last reference to it goes: ``wake()`` (from a
    signal handler, say) can never write to an fd that was closed and reused.
    """

    __slots__ = ("_b", "_cell", "_mu", "_s", "_wake_r", "_wake_w", "send")

    def __init__(self, framed: bool, max_message_size: int, high_water: int) -> None:
        self._s = ffi.NULL
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        s = lib.fipc_srv_new(lib.FIPC_SRV_LENGTH if framed else lib.FIPC_SRV_RAW,
                             max_message_size, high_water, self._wake_r, self._wake_w)
        if s == ffi.NULL:
            err = ffi.errno
            raise OSError(err, f"cannot create the event loop: {os.strerror(err)}")
        self._s = s
        self._b = ffi.new("fipc_srv_batch *")
        self._mu = mu = threading.RLock()
        self._cell = cell = [s]  # what send() sees; not `self`, which would make a cycle

        def send(key: int, data: Any) -> None:
            if type(data) is bytes:
                buf, n = data, len(data)
            else:
                buf, n = as_buffer(data)
            with mu:
                if cell[0] == ffi.NULL:
                    raise closed_error("Server")
                rc = _send(cell[0], key, buf, n)
            if rc:
                _raise_send(rc)

        self.send = send

    def _live(self) -> Any:
        if self._s == ffi.NULL:
            raise closed_error("Server")
        return self._s

    def listen(self, fd: int) -> None:
        with self._mu:
            check(lib.fipc_srv_listen(self._live(), fd))

    def poll(
        self, timeout: float, sends: list[tuple[int, bytes]]
    ) -> tuple[list[int], list[int], list[int], bytes]:
        """One turn: ``(pre, messages, post, payloads)``; all empty when a signal came
        first. ``pre``/``post`` hold 5 ints per event, ``messages`` 3 per message."""
        b = self._b
        if sends:
            keys, datas = zip(*sends)
            lens = list(map(len, datas))
            blob = b"".join(datas)
            n = _poll(self._s, timeout, keys, lens, len(lens), blob, len(blob), b)
        else:
            n = _poll(self._s, timeout, ffi.NULL, ffi.NULL, 0, ffi.NULL, 0, b)
        if n <= 0:
            if n == 0 or n == _EINTR:
                return _NONE, _NONE, _NONE, b""
            check(n)
        nmsg = b.nmsg
        npre = b.npre
        npost = b.npost
        return (
            _unpack(b.pre, npre * 5) if npre else _NONE,
            _unpack(b.msg, nmsg * 3) if nmsg else _NONE,
            _unpack(b.post, npost * 5) if npost else _NONE,
            _unpack(b.data, b.data_len),
        )

    def sendv(self, sends: list[tuple[int, bytes]]) -> None:
        keys, datas = zip(*sends)
        lens = list(map(len, datas))
        blob = b"".join(datas)
        with self._mu:
            check(lib.fipc_srv_sendv(self._live(), keys, lens, len(lens), blob, len(blob)))

    def close_conn(self, key: int) -> None:
        with self._mu:
            if self._s != ffi.NULL:
                lib.fipc_srv_close(self._s, key)

    def pending(self, key: int) -> int:
        with self._mu:
            n = lib.fipc_srv_pending(self._live(), key)
        return 0 if n < 0 else int(n)

    def flush(self) -> None:
        with self._mu:
            lib.fipc_srv_flush(self._live())

    def wakeup_fd(self) -> int:
        return self._wake_w

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is being woken anyway
        except OSError:
            pass  # closed already: nothing to wake

    def count(self) -> int:
        with self._mu:
            return int(lib.fipc_srv_count(self._live()))

    def close(self) -> None:
        with self._mu:
            s, self._s = self._s, ffi.NULL
            if s != ffi.NULL:
                self._cell[0] = ffi.NULL
                lib.fipc_srv_free(s)

    def __del__(self) -> None:
        if getattr(self, "_s", ffi.NULL) != ffi.NULL:
            self.close()
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                os.close(fd)


_NONE: list[int] = []


def _raise_send(rc: int) -> None:
    if rc == _EPIPE:
        raise BrokenPipeError(errno.EPIPE, "the connection is gone")
    check(rc)


def _left(timeout: float, t0: float) -> float:
    return max(0.0, t0 + timeout - _monotonic()) if timeout > 0 else timeout


class Client:
    """A blocking client socket: framed or raw sends in C (``fipc_sock_send``), receives
    through the pipe backend's reader (the same buffered, framed reads over any fd)."""

    __slots__ = ("_framed", "_reader", "_written", "fd")

    def __init__(self, fd: int, framed: bool, max_message_size: int) -> None:
        self.fd = fd
        self._framed = 1 if framed else 0
        self._reader = Reader(fd, max_message_size)
        self._written = ffi.new("size_t *")

    @property
    def max_message_size(self) -> int:
        return int(self._reader.max_message_size)

    def send(self, data: Any, timeout: float) -> None:
        buf, n = as_buffer(data)
        t0 = _monotonic() if timeout > 0 else 0.0
        rc = _sock_send(self.fd, buf, n, self._framed, 0, timeout, self._written)
        while rc == _EINTR:
            rc = _sock_send(self.fd, buf, n, self._framed, self._written[0],
                            _left(timeout, t0), self._written)
        if rc < 0:
            try:
                raise_errno(-rc, timeout=timeout)
            except OSError as exc:
                exc.characters_written = self._written[0]  # type: ignore[attr-defined]
                raise

    def recv(self, timeout: float) -> bytes:
        if self._framed:
            return self._reader.recv(timeout)
        return self._reader.read(65536, timeout)

    def close(self) -> None:
        self._reader.close()
