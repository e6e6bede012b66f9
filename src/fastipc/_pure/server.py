"""Server and client operations in pure Python on ``selectors``, with the behaviour of
``csrc/server.c``: same events, same framing checks, same back-pressure, same idle and
connection limits, behind the same seam (:class:`fastipc._backend.server.Loop`)."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

from fastipc._backend.server import Batch, Closed, Connected, Event, Sends, wake
from fastipc._backend.server import Loop as LoopProtocol
from fastipc._core import raise_errno
from fastipc._pure.pipe import as_view

__all__ = ["Loop"]

READ_CHUNK = 64 * 1024
BATCH_LIMIT = 4 * 1024 * 1024
ACCEPT_BURST = 64
PAUSE = 0.1
MAX_WAIT = 86400.0  # longer waits overflow select(): wake once a day, the caller waits again
_HEADER = struct.Struct(">I")
_IN, _OUT = selectors.EVENT_READ, selectors.EVENT_WRITE
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
_TCP = (socket.AF_INET, socket.AF_INET6)
_monotonic = time.monotonic


class _Conn:
    __slots__ = ("dead", "dirty_mark", "doomed", "fd", "inbuf", "key", "mask", "out", "paused",
                 "sock", "want_out")

    def __init__(self, sock: socket.socket, key: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.key = key
        self.inbuf = bytearray()
        self.out = bytearray()
        self.doomed = self.dead = self.paused = self.want_out = self.dirty_mark = False
        self.mask = _IN


class Loop:
    """One ``selectors`` loop with its connections. A lock guards its state: the serving
    thread holds it except while it waits in ``select``, so that sends and closes from
    other threads are safe."""

    def __init__(self, framed: bool, max_message_size: int, high_water: int, wake_r: int,
                 wake_w: int, idle_timeout: float, max_connections: int) -> None:
        self._framed = framed
        self._max = max_message_size
        self._high = max(1, high_water)
        self._idle = idle_timeout if idle_timeout > 0 else 0.0
        self._max_conns = max_connections
        self._sel = selectors.DefaultSelector()
        self._mu = threading.RLock()
        self._wake_r, self._wake_w = wake_r, wake_w
        self._sel.register(wake_r, _IN, None)
        self._conns: dict[int, _Conn] = {}  # by fd
        # idle_timeout: the open connections by last activity (a byte received, the output
        # queue emptied), oldest first: the check looks only at the front
        self._active: OrderedDict[int, float] = OrderedDict()
        self._listeners: list[socket.socket] = []
        self._paused_until: Optional[float] = None
        self._next_id = 0
        self._deferring = False
        self._dirty: list[_Conn] = []
        self._reap: list[_Conn] = []
        self._pend: list[Closed] = []
        self._phase = 0
        self._pre: list[Event] = []
        self._msg: list[tuple[int, bytes]] = []
        self._post: list[Event] = []
        self._dlen = 0

    # ------------------------------------------------------------ set-up

    def listen(self, fd: int) -> None:
        with self._mu:
            sock = socket.socket(fileno=fd)  # borrowed: detached, never closed, on close()
            self._listeners.append(sock)
            if self._paused_until is None:
                self._sel.register(sock, _IN, sock)

    def fileno(self) -> int:
        return self._sel.fileno()

    # ------------------------------------------------------------ the turn

    def _closed(self, c: _Conn, err: int) -> None:
        (self._post if self._phase else self._pre).append(Closed(c.key, c.fd, err))

    def poll(self, timeout: float, sends: Sends) -> Batch:
        with self._mu:
            self._pre, self._msg, self._post = [], [], []
            self._dlen, self._phase = 0, 0
            self._queue_many(sends)
            for ev in self._pend:
                c = self._conns.get(ev.fd)
                if c is not None and c.key == ev.key:
                    self._pre.append(ev)
            self._pend = []
            self._flush_dirty(True)
            self._do_reap()
            if self._paused_until is not None and _monotonic() >= self._paused_until:
                self._resume_listeners()
            timer = self._timer(self._expire_idle())
            wait: Optional[float] = None if timeout < 0 else min(timeout, MAX_WAIT)
            if self._pre:
                wait = 0
            elif timer >= 0:
                wait = min(timer, MAX_WAIT) if wait is None else min(wait, timer)
        # EINTR: select() runs the signal handlers and waits again (PEP 475); a handler
        # that raises (stop() does not) ends the serve call here
        ready = self._sel.select(wait)
        with self._mu:
            self._phase = 1
            for key, events in ready:
                obj = key.data
                if obj is None:
                    try:
                        while True:  # stop() requests and signal numbers, all consumed
                            if len(os.read(self._wake_r, 4096)) != 4096:
                                break
                    except BlockingIOError:
                        pass
                elif isinstance(obj, socket.socket):
                    if self._paused_until is None:
                        self._accept(obj)
                else:
                    self._on_event(obj, events)
            pre, msg, post = self._pre, self._msg, self._post
            self._deferring = bool(pre or msg or post)
            self._pre, self._msg, self._post = [], [], []
            idle_left = self._idle_left(_monotonic()) if self._idle else -1.0
            return pre, msg, post, self._timer(idle_left)

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
            if self._max_conns and len(self._conns) >= self._max_conns:
                sock.close()  # over max_connections: the client sees the end of the stream
                continue
            sock.setblocking(False)
            if sock.family in _TCP:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass  # latency only
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            c = _Conn(sock, self._next_id << 32 | sock.fileno())
            self._sel.register(sock, _IN, c)
            self._conns[c.fd] = c
            self._touch(c)
            self._pre.append(Connected(c.key, c.fd, addr))

    def _pause_listeners(self) -> None:
        if self._paused_until is None:
            for sock in self._listeners:
                self._sel.unregister(sock)
            self._paused_until = _monotonic() + PAUSE

    def _resume_listeners(self) -> None:
        if self._paused_until is not None:
            for sock in self._listeners:
                self._sel.register(sock, _IN, sock)
            self._paused_until = None

    # ------------------------------------------------------------ timers

    def _touch(self, c: _Conn) -> None:
        if self._idle and not c.doomed:  # a doomed connection left the list for good
            active = self._active
            active[c.key] = _monotonic()
            active.move_to_end(c.key)

    def _idle_left(self, now: float) -> float:
        """Seconds until the oldest connection is idle past the limit; -1.0 if none."""
        for last in self._active.values():
            return max(0.0, last + self._idle - now)
        return -1.0

    def _expire_idle(self) -> float:
        """Close the connections idle past idle_timeout, oldest first (one with output still
        queued is not idle: it starts a new period); return :meth:`_idle_left`."""
        if not self._idle:
            return -1.0
        now = _monotonic()
        active = self._active
        while active:
            key, last = next(iter(active.items()))
            if now - last < self._idle:
                break
            c = self._conns[key & 0xFFFFFFFF]
            if c.out:
                self._touch(c)
            else:
                del active[key]
                self._doom(c, errno.ETIMEDOUT, True)
        return self._idle_left(now)

    def _timer(self, idle_left: float) -> float:
        if self._paused_until is None:
            return idle_left
        left = max(0.0, self._paused_until - _monotonic())
        return left if idle_left < 0 else min(left, idle_left)

    # ------------------------------------------------------------ input

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
        self._touch(c)
        self._dlen += len(chunk)
        if not self._framed:
            self._msg.append((c.fd, chunk))
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
        pos, end, fd, msg = 0, len(data), c.fd, self._msg
        while end - pos >= 4:
            (n,) = _HEADER.unpack_from(data, pos)
            if n > self._max:
                self._doom(c, errno.EMSGSIZE, True)
                return
            if end - pos - 4 < n:
                break
            msg.append((fd, data[pos + 4 : pos + 4 + n]))
            pos += 4 + n
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
        if not c.out:
            self._touch(c)

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
        self._active.pop(c.key, None)
        if in_turn:
            self._closed(c, err)
        else:
            self._pend.append(Closed(c.key, c.fd, err))
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
        self._active.pop(c.key, None)
        c.sock.close()

    def _lookup(self, key: int) -> Optional[_Conn]:
        c = self._conns.get(key & 0xFFFFFFFF)
        return c if c is not None and c.key == key else None

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

    def _queue_many(self, sends: Sends) -> None:
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

    def sendv(self, sends: Sends) -> None:
        with self._mu:
            self._queue_many(sends)
            self._flush_dirty(False)

    def close_conn(self, key: int) -> None:
        with self._mu:
            c = self._lookup(key)
            if c is not None and not c.doomed:
                self._doom(c, 0, False)
                wake(self._wake_w)

    def pending(self, key: int) -> int:
        with self._mu:
            c = self._lookup(key)
            return len(c.out) if c is not None else 0

    def close(self) -> None:
        with self._mu:
            for c in list(self._conns.values()):
                self._free(c)
            for sock in self._listeners:
                sock.detach()
            self._listeners = []
            self._sel.close()


_check: type[LoopProtocol] = Loop
