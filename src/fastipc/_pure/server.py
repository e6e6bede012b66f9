"""Server and client operations in pure Python on ``selectors``, with the behaviour of
``csrc/server.c``: same events, same framing checks, same back-pressure."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import threading
import time
from typing import Any, Optional

from fastipc._core import raise_errno
from fastipc._pure.pipe import Reader, _deadline, _wait, as_view

__all__ = ["Client", "Loop", "pack_sockaddr"]

EV_CONNECT, EV_CLOSE = 1, 3
READ_CHUNK = 64 * 1024
BATCH_LIMIT = 4 * 1024 * 1024
ACCEPT_BURST = 64
PAUSE = 0.1
_HEADER = struct.Struct(">I")
_IN, _OUT = selectors.EVENT_READ, selectors.EVENT_WRITE
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_TCP = (socket.AF_INET, socket.AF_INET6)


def pack_sockaddr(family: int, addr: Any) -> bytes:
    """The peer address as the kernel's sockaddr bytes, as the native loop reports it."""
    if family == socket.AF_INET:
        return struct.pack("=H", family) + struct.pack(">H", addr[1]) + socket.inet_pton(
            family, addr[0]) + bytes(8)
    if family == socket.AF_INET6:
        host = addr[0].split("%", 1)[0]
        return (struct.pack("=H", family) + struct.pack(">HI", addr[1], addr[2])
                + socket.inet_pton(family, host) + struct.pack("=I", addr[3]))
    path = addr if isinstance(addr, bytes) else os.fsencode(addr or "")
    return struct.pack("=H", family) + path


class _Conn:
    __slots__ = ("dead", "dirty_mark", "doomed", "fd", "id", "inbuf", "mask", "out", "paused",
                 "sock", "want_out")

    def __init__(self, sock: socket.socket, cid: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.id = cid
        self.inbuf = bytearray()
        self.out = bytearray()
        self.doomed = self.dead = self.paused = self.want_out = self.dirty_mark = False
        self.mask = _IN


class Loop:
    """One ``selectors`` loop with its connections."""

    def __init__(self, framed: bool, max_message_size: int, high_water: int) -> None:
        self._framed = framed
        self._max = max_message_size
        self._high = max(1, high_water)
        self._sel = selectors.DefaultSelector()
        self._mu = threading.RLock()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._sel.register(self._wake_r, _IN, None)
        self._conns: dict[int, _Conn] = {}
        self._listeners: list[socket.socket] = []
        self._paused_until: Optional[float] = None
        self._next_id = 0
        self._deferring = False
        self._dirty: list[_Conn] = []
        self._reap: list[_Conn] = []
        self._pend: list[tuple[int, int, int]] = []
        self._phase = 0
        self._pre: list[int] = []
        self._msg: list[int] = []
        self._post: list[int] = []
        self._parts: list[bytes] = []
        self._dlen = 0

    # ------------------------------------------------------------ set-up

    def listen(self, fd: int) -> None:
        with self._mu:
            sock = socket.socket(fileno=fd)  # borrowed: detached, never closed, on close()
            self._listeners.append(sock)
            if self._paused_until is None:
                self._sel.register(sock, _IN, sock)

    # ------------------------------------------------------------ the turn

    def _emit(self, kind: int, c: _Conn, off: int, n: int) -> None:
        events = self._post if kind == EV_CLOSE and self._phase else self._pre
        events += (kind, c.fd, c.id, off, n)

    def _add(self, payload: bytes) -> int:
        off = self._dlen
        self._parts.append(payload)
        self._dlen += len(payload)
        return off

    def poll(
        self, timeout: float, sends: list[tuple[int, bytes]]
    ) -> tuple[list[int], list[int], list[int], bytes]:
        with self._mu:
            self._pre, self._msg, self._post = [], [], []
            self._parts, self._dlen, self._phase = [], 0, 0
            self._queue_many(sends)
            for fd, cid, err in self._pend:
                c = self._conns.get(fd)
                if c is not None and c.id == cid:
                    self._pre += (EV_CLOSE, fd, cid, err, 0)
            self._pend = []
            self._flush_dirty(True)
            self._do_reap()
            if self._paused_until is not None and time.monotonic() >= self._paused_until:
                self._resume_listeners()
            wait: Optional[float] = None if timeout < 0 else timeout
            if self._pre:
                wait = 0
            if self._paused_until is not None:
                left = max(0.0, self._paused_until - time.monotonic())
                wait = left if wait is None else min(wait, left)
        try:
            ready = self._sel.select(wait)
        except InterruptedError:  # only on Pythons without PEP 475 for select
            ready = []
        with self._mu:
            self._phase = 1
            for key, events in ready:
                obj = key.data
                if obj is None:
                    try:
                        while len(os.read(self._wake_r, 4096)) == 4096:
                            pass  # stop() requests and signal numbers, all consumed
                    except BlockingIOError:
                        pass
                elif isinstance(obj, socket.socket):
                    if self._paused_until is None:
                        self._accept(obj)
                else:
                    self._on_event(obj, events)
            pre, msg, post = self._pre, self._msg, self._post
            self._deferring = bool(pre or msg or post)
            data = b"".join(self._parts)
            self._pre, self._msg, self._post, self._parts = [], [], [], []
            return pre, msg, post, data

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_listeners()
                    return
                continue  # that client is gone already
            sock.setblocking(False)
            if sock.family in _TCP:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass  # latency only
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            c = _Conn(sock, self._next_id)
            self._sel.register(sock, _IN, c)
            self._conns[c.fd] = c
            payload = pack_sockaddr(sock.family, addr)
            self._emit(EV_CONNECT, c, self._add(payload), len(payload))

    def _pause_listeners(self) -> None:
        if self._paused_until is None:
            for sock in self._listeners:
                self._sel.unregister(sock)
            self._paused_until = time.monotonic() + PAUSE

    def _resume_listeners(self) -> None:
        if self._paused_until is not None:
            for sock in self._listeners:
                self._sel.register(sock, _IN, sock)
            self._paused_until = None

    def _on_event(self, c: _Conn, events: int) -> None:
        if events & _OUT:
            self._conn_flush(c, True)
        if c.doomed or c.dead or not events & _IN or c.paused:
            return
        if self._dlen > BATCH_LIMIT:
            return
        try:
            if self._framed and len(c.inbuf) >= 4:
                (n,) = _HEADER.unpack_from(c.inbuf)
                want = max(READ_CHUNK, 4 + n - len(c.inbuf))
            else:
                want = READ_CHUNK
            chunk = c.sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._kill(c, exc.errno or errno.EIO, True)
            return
        if not chunk:
            self._doom(c, 0, True)
            return
        if not self._framed:
            self._msg += (c.fd, self._add(chunk), len(chunk))
            return
        buf = c.inbuf
        if buf:
            buf += chunk
            if len(buf) >= 4:
                (n,) = _HEADER.unpack_from(buf)
                if n <= self._max and len(buf) < 4 + n:
                    return  # a frame still under way: no copy until it is whole
            data = bytes(buf)
        else:
            data = chunk
        pos, end, base = 0, len(data), self._dlen
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(data, pos)
            if n > self._max:
                self._doom(c, errno.EMSGSIZE, True)
                return
            if end - pos - 4 < n:
                break
            self._msg += (c.fd, base + pos + 4, n)
            pos += 4 + n
        if pos:
            self._add(data[:pos])
        c.inbuf = bytearray(data[pos:]) if pos < end else bytearray()

    # ------------------------------------------------------------ output

    def _conn_write(self, c: _Conn) -> None:
        c.want_out = False
        if not c.out or c.dead:
            return
        try:
            n = c.sock.send(c.out, _NOSIGNAL | _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            n = 0
        del c.out[:n]
        if c.paused and len(c.out) <= self._high // 2:
            c.paused = False
        c.want_out = bool(c.out)

    def _conn_flush(self, c: _Conn, in_turn: bool) -> None:
        try:
            self._conn_write(c)
        except OSError as exc:
            self._kill(c, exc.errno or errno.EIO, in_turn)
        self._update(c)

    def _flush_dirty(self, in_turn: bool) -> None:
        dirty, self._dirty = self._dirty, []
        for c in dirty:
            c.dirty_mark = False
            if self._conns.get(c.fd) is c:
                self._conn_flush(c, in_turn)
        self._deferring = False

    def _update(self, c: _Conn) -> None:
        want = 0
        if not c.dead:
            if not c.doomed and not c.paused:
                want |= _IN
            if c.want_out:
                want |= _OUT
        if want != c.mask:
            if c.mask and want:
                self._sel.modify(c.sock, want, c)
            elif want:
                self._sel.register(c.sock, want, c)
            else:
                self._sel.unregister(c.sock)
            c.mask = want

    def _kill(self, c: _Conn, err: int, in_turn: bool) -> None:
        c.dead = True
        c.out = bytearray()
        self._doom(c, err, in_turn)

    def _doom(self, c: _Conn, err: int, in_turn: bool) -> None:
        if c.doomed:
            return
        c.doomed = True
        c.inbuf = bytearray()
        if in_turn:
            self._emit(EV_CLOSE, c, err, 0)
        else:
            self._pend.append((c.fd, c.id, err))
        self._reap.append(c)
        self._update(c)

    def _do_reap(self) -> None:
        keep = []
        for c in self._reap:
            if c.dead or not c.out:
                self._free(c)
                self._resume_listeners()
            else:
                keep.append(c)
        self._reap = keep

    def _free(self, c: _Conn) -> None:
        if c.mask:
            self._sel.unregister(c.sock)
        c.mask = 0
        self._conns.pop(c.fd, None)
        c.sock.close()

    def _lookup(self, key: int) -> Optional[_Conn]:
        c = self._conns.get(key & 0xFFFFFFFF)
        return c if c is not None and c.id == key >> 32 else None

    def _queue(self, c: _Conn, view: Any) -> None:
        n = len(view)
        if self._framed:
            if n > 0xFFFFFFFF:
                raise_errno(errno.EMSGSIZE)
            c.out += _HEADER.pack(n)
        c.out += view
        if not c.want_out and not c.dirty_mark:
            c.dirty_mark = True
            self._dirty.append(c)
        if not c.paused and len(c.out) > self._high:
            c.paused = True  # back-pressure: stop reading until the peer takes its output
            self._update(c)

    def _queue_many(self, sends: list[tuple[int, bytes]]) -> None:
        for key, data in sends:
            c = self._lookup(key)
            if c is not None and not c.dead:
                self._queue(c, data)

    # ------------------------------------------------------------ operations from Python

    def send(self, key: int, data: Any) -> None:
        view = as_view(data)
        with self._mu:
            c = self._lookup(key)
            if c is None or c.dead:
                raise BrokenPipeError(errno.EPIPE, "the connection is gone")
            self._queue(c, view)
            if not self._deferring or (not c.want_out and len(c.out) >= self._high):
                self._conn_flush(c, False)

    def sendv(self, sends: list[tuple[int, bytes]]) -> None:
        with self._mu:
            self._queue_many(sends)
            if not self._deferring:
                self._flush_dirty(False)

    def close_conn(self, key: int) -> None:
        with self._mu:
            c = self._lookup(key)
            if c is not None and not c.doomed:
                self._doom(c, 0, False)
                self.wake()

    def pending(self, key: int) -> int:
        with self._mu:
            c = self._lookup(key)
            return len(c.out) if c is not None else 0

    def flush(self) -> None:
        with self._mu:
            self._flush_dirty(False)

    def wakeup_fd(self) -> int:
        return self._wake_w

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full: the loop is being woken anyway

    def count(self) -> int:
        return len(self._conns)

    def close(self) -> None:
        with self._mu:
            for c in list(self._conns.values()):
                self._free(c)
            for sock in self._listeners:
                sock.detach()
            self._listeners = []
            self._sel.close()
            # the wake-up pipe stays open until this object goes (__del__): a late wake()
            # must not write to an fd that was closed and reused

    def __del__(self) -> None:
        for fd in (getattr(self, "_wake_r", -1), getattr(self, "_wake_w", -1)):
            if fd >= 0:
                os.close(fd)


class Client:
    """A blocking client socket: framed or raw sends, buffered receives."""

    __slots__ = ("_framed", "_reader", "_sock", "fd")

    def __init__(self, fd: int, framed: bool, max_message_size: int) -> None:
        self.fd = fd
        self._framed = framed
        self._sock = socket.socket(fileno=fd)  # borrowed: detached on close()
        self._reader = Reader(fd, max_message_size)

    @property
    def max_message_size(self) -> int:
        return int(self._reader.max_message_size)

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._reader.max_message_size = value

    def send(self, data: Any, timeout: float) -> None:
        view = as_view(data)
        n = len(view)
        if self._framed:
            if n > 0xFFFFFFFF:
                raise_errno(errno.EMSGSIZE)
            parts = [memoryview(_HEADER.pack(n)), view]
        else:
            parts = [view]
        deadline = _deadline(timeout)
        done = 0
        while parts:
            try:
                sent = self._sock.sendmsg(parts, [], _NOSIGNAL | _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                try:
                    _wait(self.fd, 4, deadline, timeout)  # POLLOUT
                except OSError as exc:
                    exc.characters_written = done  # type: ignore[attr-defined]
                    raise
                continue
            except OSError as exc:
                exc.characters_written = done  # type: ignore[attr-defined]
                raise
            done += sent
            while parts and sent >= len(parts[0]):
                sent -= len(parts[0])
                parts.pop(0)
            if parts and sent:
                parts[0] = parts[0][sent:]

    def recv(self, timeout: float) -> bytes:
        if self._framed:
            return self._reader.recv(timeout)
        return self._reader.read(65536, timeout)

    def close(self) -> None:
        self._sock.detach()
