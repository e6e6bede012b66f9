"""POSIX message queues: whole messages with priorities, between any processes of the host.

>>> from fastipc import mq
>>> with mq.MessageQueue("/demo", create=True, max_messages=8, max_message_size=256) as q:
...     q.send(b"low", priority=1)
...     q.send(b"high", priority=9)
...     q.receive(timeout=1.0), q.receive(timeout=1.0)
...     q.unlink()
((b'high', 9), (b'low', 1))

A queue named ``x`` is ``/x`` (listed in ``/dev/mqueue`` where the mqueue filesystem is
mounted). It lives until it is unlinked, whoever created it: ``close()`` (and the end of a
``with`` block) only closes this process's descriptor. ``fileno()`` is a real descriptor
that ``select``, ``epoll`` and asyncio can watch (readable: a message is waiting; writable:
there is room), which :meth:`MessageQueue.receive_async` and :meth:`MessageQueue.send_async`
use.

The kernel bounds queues (see :func:`limits`); asking for more than it allows raises
:class:`LimitError`, which says which limit and how to raise it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import time
from types import ModuleType, TracebackType
from typing import Any, NamedTuple, Optional

from fastipc import _core
from fastipc._core import byte_view, check_int, check_timeout, closed_error, posix_name

__all__ = [
    "MQ_PRIO_MAX",
    "Attributes",
    "LimitError",
    "Limits",
    "MessageQueue",
    "limits",
    "unlink",
]

try:
    MQ_PRIO_MAX: int = os.sysconf("SC_MQ_PRIO_MAX")
except (ValueError, OSError):  # pragma: no cover - Linux always has it
    MQ_PRIO_MAX = 32768
"""Priorities run from 0 to ``MQ_PRIO_MAX - 1`` (32767 on Linux); higher is delivered first."""

_PRIO_TOP = MQ_PRIO_MAX - 1
_monotonic = time.monotonic
# RECEIVE returns length << _PRIO_BITS | priority (both backends)
_PRIO_BITS = 16
_PRIO_MASK = 0xFFFF
_MAX_LONG = 2**31 - 1
_PROC = "/proc/sys/fs/mqueue"
# The kernel's ceilings for a process with CAP_SYS_RESOURCE (include/linux/ipc_namespace.h).
HARD_MSGMAX = 65536
HARD_MSGSIZEMAX = 16 << 20


class Attributes(NamedTuple):
    """A queue's attributes, read from the kernel (``mq_getattr``)."""

    max_messages: int
    max_message_size: int
    current_messages: int


class Limits(NamedTuple):
    """The system's bounds on message queues; see :func:`limits`."""

    msg_max: int  # max_messages allowed per queue (fs.mqueue.msg_max)
    msgsize_max: int  # max_message_size allowed per queue (fs.mqueue.msgsize_max)
    queues_max: int  # queues on the system (fs.mqueue.queues_max)
    rlimit_msgqueue: int  # bytes of queues per user (RLIMIT_MSGQUEUE, `ulimit -q`); -1: none


class LimitError(OSError, ValueError):
    """A queue larger, or one more queue, than the system allows.

    An :class:`OSError` with the kernel's errno (``EINVAL`` for a size over
    ``fs.mqueue.msg_max`` / ``msgsize_max``, ``EMFILE`` for ``RLIMIT_MSGQUEUE``, ``ENOSPC``
    for ``fs.mqueue.queues_max``) and a :class:`ValueError` (the request was too large);
    the message names the limit and how to raise it.
    """


def _read_proc(entry: str) -> int:
    try:
        with open(f"{_PROC}/{entry}") as f:
            return int(f.read())
    except (OSError, ValueError):
        return -1


def limits() -> Limits:
    """The current system limits (-1 where one cannot be read).

    Raise them with ``sysctl -w fs.mqueue.msg_max=N`` (and ``msgsize_max``, ``queues_max``)
    as root, and ``ulimit -q BYTES`` (``RLIMIT_MSGQUEUE``, per user) before starting the
    program. A process with ``CAP_SYS_RESOURCE`` may exceed ``msg_max`` and ``msgsize_max``
    up to the kernel's ceilings (65536 messages, 16 MiB).
    """
    soft = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0]
    return Limits(
        _read_proc("msg_max"),
        _read_proc("msgsize_max"),
        _read_proc("queues_max"),
        -1 if soft == resource.RLIM_INFINITY else soft,
    )


def _queue_bytes(max_messages: int, max_message_size: int) -> int:
    """What a queue charges to RLIMIT_MSGQUEUE: its messages plus the kernel's bookkeeping
    (about 48 bytes of msg_msg per message and 48 per priority node; approximate)."""
    return max_messages * (max_message_size + 48) + min(max_messages, MQ_PRIO_MAX) * 48


def _limit_error(exc: OSError, name: str, max_messages: int, max_message_size: int) -> OSError:
    """Turn the bare errno of a refused mq_open(O_CREAT) into an error naming the limit."""
    lim = limits()
    code = exc.errno
    if code == errno.EINVAL:
        parts = []
        if lim.msg_max >= 0 and max_messages > lim.msg_max:
            parts.append(
                f"max_messages={max_messages} exceeds fs.mqueue.msg_max={lim.msg_max} "
                f"(raise it: sysctl -w fs.mqueue.msg_max={max_messages})"
            )
        if lim.msgsize_max >= 0 and max_message_size > lim.msgsize_max:
            parts.append(
                f"max_message_size={max_message_size} exceeds "
                f"fs.mqueue.msgsize_max={lim.msgsize_max} "
                f"(raise it: sysctl -w fs.mqueue.msgsize_max={max_message_size})"
            )
        if max_messages > HARD_MSGMAX:
            parts.append(f"max_messages={max_messages} exceeds the kernel's ceiling {HARD_MSGMAX}")
        if max_message_size > HARD_MSGSIZEMAX:
            parts.append(
                f"max_message_size={max_message_size} exceeds the kernel's ceiling "
                f"{HARD_MSGSIZEMAX}"
            )
        if not parts:
            return exc
        return LimitError(code, "; ".join(parts), name)
    if code == errno.EMFILE:
        need = _queue_bytes(max_messages, max_message_size)
        return LimitError(
            code,
            f"the queue needs about {need} bytes, over what is left of this user's "
            f"RLIMIT_MSGQUEUE ({lim.rlimit_msgqueue} bytes for all its queues): unlink unused "
            f"queues, ask for fewer or smaller messages, or raise it (ulimit -q / setrlimit) "
            f"before starting the program; or this process has too many files open "
            f"(ulimit -n)",
            name,
        )
    if code == errno.ENOSPC:
        return LimitError(
            code,
            f"the system already has fs.mqueue.queues_max={lim.queues_max} queues "
            f"(raise it: sysctl -w fs.mqueue.queues_max=N, or unlink unused queues)",
            name,
        )
    return exc


def _as_message(data: Any) -> tuple[Any, int]:
    """A bytes-like object as a flat byte memoryview (no copy) and its length."""
    view = byte_view(data)
    return view, view.nbytes


def _check_spin(spin: Any) -> float:
    if spin is None:
        raise TypeError("spin must be a number of seconds, not None")
    value = check_timeout(spin)
    if not 0 <= value <= 1:
        raise ValueError(f"spin must be between 0 and 1 second, not {spin!r}")
    return value


def unlink(name: str, *, backend: Optional[str] = None) -> None:
    """Remove the queue ``name``: FileNotFoundError if there is none. Processes that have
    it open keep using it; it is freed once the last one closes it."""
    _core.ops("mq", backend).unlink(posix_name(name))


class MessageQueue:
    """A POSIX message queue, opened for sending and receiving.

    ``create=False`` attaches to an existing queue (FileNotFoundError if there is none);
    ``create=True`` creates it exclusively (FileExistsError if it exists) with room for
    ``max_messages`` messages of up to ``max_message_size`` bytes each and permissions
    ``mode`` (less the umask). Those two sizes are ignored when attaching: the queue's own
    are in :attr:`attributes`.
    """

    def __init__(
        self,
        name: str,
        create: bool = False,
        max_messages: int = 10,
        max_message_size: int = 8192,
        mode: int = 0o600,
        *,
        spin: float = 0.0,
        backend: Optional[str] = None,
    ) -> None:
        self._q: Any = None
        self._h: Any = None
        self._rx: Optional[tuple[Any, ...]] = None
        name = posix_name(name)
        if not isinstance(create, bool):
            raise TypeError(f"create must be a bool, not {type(create).__name__}")
        max_messages = check_int(max_messages, "max_messages", 1, _MAX_LONG)
        max_message_size = check_int(max_message_size, "max_message_size", 1, _MAX_LONG)
        mode = check_int(mode, "mode", 0, 0o7777)
        self._spin = _check_spin(spin)
        impl: ModuleType = _core.ops("mq", backend)
        try:
            q = impl.Queue(name, create, mode, max_messages, max_message_size)
        except OSError as exc:
            if not create:
                raise
            raise _limit_error(exc, name, max_messages, max_message_size) from None
        self._impl = impl
        self._name = name
        self._max_size: int = q.max_message_size
        self._send = impl.SEND
        self._retry_send = impl.retry_send
        self._as_buffer = impl.as_buffer
        self._retry_receive = impl.retry_receive
        self._new_buffer = impl.new_buffer
        if (impl.PRIO_BITS, impl.PRIO_MASK) != (_PRIO_BITS, _PRIO_MASK):  # pragma: no cover
            raise ImportError(f"{impl.__name__} packs priorities differently")
        # receive buffers, reused: one per thread receiving at the same time
        self._pool: list[Any] = []
        self._q = q
        # what receive() needs, in one attribute (None once closed)
        self._rx = (q.h, impl.RECEIVE, self._max_size, self._spin, self._pool, impl.unpack)
        self._h = q.h

    # ------------------------------------------------------------------ life cycle

    @property
    def name(self) -> str:
        """The queue's name, with its leading ``/``."""
        return self._name

    @property
    def backend(self) -> str:
        """``"native"`` or ``"pure"``."""
        return _core.backend_of(self._impl)

    @property
    def closed(self) -> bool:
        return self._q is None

    def _open(self) -> Any:
        q = self._q
        if q is None:
            raise closed_error("MessageQueue")
        return q

    def fileno(self) -> int:
        """The queue descriptor (close-on-exec). Readable while a message waits, writable
        while there is room: ``select``/``epoll``/asyncio can watch it."""
        return int(self._open().fd)

    def close(self) -> None:
        """Close this process's descriptor; the queue itself stays (see :meth:`unlink`).
        Idempotent."""
        q, self._q, self._h, self._rx = self._q, None, None, None
        if q is not None:
            self._pool.clear()
            q.close()

    def unlink(self) -> None:
        """Remove the queue's name; this descriptor and others stay usable until closed."""
        self._open()
        self._impl.unlink(self._name)

    def __enter__(self) -> MessageQueue:
        self._open()
        return self

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_q", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = " closed" if self._q is None else f" fd={self._q.fd}"
        return f"<MessageQueue {self._name!r}{state} backend={self.backend}>"

    # ------------------------------------------------------------------ attributes

    @property
    def attributes(self) -> Attributes:
        """``Attributes(max_messages, max_message_size, current_messages)``, read now."""
        return Attributes(*self._open().attributes())

    @property
    def max_message_size(self) -> int:
        """The largest message this queue takes, in bytes."""
        self._open()
        return self._max_size

    # ------------------------------------------------------------------ messages

    @property
    def spin(self) -> float:
        """Seconds a send or receive that has to wait polls the queue before it sleeps
        (default 0).

        A process sleeping on a queue costs the one that wakes it a few microseconds per
        message (more than the message itself); spinning for a little longer than the peer
        usually takes to answer (20-100 µs) avoids that at the price of a busy core while
        waiting. The pure backend ignores it."""
        self._open()
        return self._spin

    @spin.setter
    def spin(self, value: float) -> None:
        rx = self._rx
        if rx is None:
            raise closed_error("MessageQueue")
        self._spin = _check_spin(value)
        self._rx = (*rx[:3], self._spin, *rx[4:])

    def send(self, data: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
        """Send ``data`` (bytes-like) as one message with ``priority`` (0 to
        ``MQ_PRIO_MAX - 1``, higher first). Waits while the queue is full: TimeoutError
        after ``timeout`` seconds (None: forever, 0: do not wait). A message longer than
        :attr:`max_message_size` raises ValueError before anything is sent."""
        h = self._h
        if h is None:
            raise closed_error("MessageQueue")
        if type(data) is bytes:
            n = len(data)
        else:
            data, n = _as_message(data)
            data = self._as_buffer(data)
        if type(priority) is not int or not 0 <= priority <= _PRIO_TOP:
            priority = check_int(priority, "priority", 0, _PRIO_TOP)
        if timeout is None:
            t, t0 = -1.0, 0.0
        else:
            t = check_timeout(timeout)
            t0 = _monotonic() if t > 0 else 0.0
        if n > self._max_size:
            raise ValueError(
                f"message of {n} bytes exceeds the queue's max_message_size ({self._max_size})"
            )
        rc = self._send(h, data, n, priority, t, self._spin)
        if rc:
            self._retry_send(h, data, n, priority, t, self._spin, t0, rc, self._name)

    def receive(self, timeout: Optional[float] = None) -> tuple[bytes, int]:
        """The oldest message of the highest priority waiting, as ``(bytes, priority)``:
        exactly the bytes that were sent. Waits while the queue is empty: TimeoutError after
        ``timeout`` seconds (None: forever, 0: do not wait)."""
        rx = self._rx
        if rx is None:
            raise closed_error("MessageQueue")
        h, receive, size, spin, pool, unpack = rx
        if timeout is None:
            t, t0 = -1.0, 0.0
        else:
            t = check_timeout(timeout)
            t0 = _monotonic() if t > 0 else 0.0
        try:
            buf = pool.pop()
        except IndexError:
            buf = self._new_buffer(size)
        n = receive(h, buf, size, t, spin)
        if n < 0:
            try:
                n = self._retry_receive(h, buf, size, t, spin, t0, n, self._name)
            except BaseException:
                pool.append(buf)
                raise
        data = unpack(buf, n >> _PRIO_BITS)
        pool.append(buf)
        return data, n & _PRIO_MASK

    async def receive_async(self, timeout: Optional[float] = None) -> tuple[bytes, int]:
        """:meth:`receive` for asyncio: waits on the running loop for the descriptor to turn
        readable (no thread), then receives without blocking."""
        return await self._async(self.receive, (), timeout, reader=True)  # type: ignore[no-any-return]

    async def send_async(
        self, data: Any, priority: int = 0, timeout: Optional[float] = None
    ) -> None:
        """:meth:`send` for asyncio: waits on the running loop for room in the queue (no
        thread), then sends without blocking."""
        await self._async(self.send, (data, priority), timeout, reader=False)

    async def _async(
        self, op: Any, args: tuple[Any, ...], timeout: Optional[float], reader: bool
    ) -> Any:
        t = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t if t >= 0 else None
        while True:
            try:
                return op(*args, timeout=0)
            except TimeoutError:
                pass  # nothing (or no room) yet; another process may have been quicker
            fd = self.fileno()
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise _core.timeout_error(timeout, self._name) from None
            ready = loop.create_future()

            def wake(fut: asyncio.Future[None] = ready) -> None:
                if not fut.done():
                    fut.set_result(None)

            if reader:
                loop.add_reader(fd, wake)
            else:
                loop.add_writer(fd, wake)
            try:
                await asyncio.wait_for(ready, left)
            except asyncio.TimeoutError:
                raise _core.timeout_error(timeout, self._name) from None
            finally:
                if reader:
                    loop.remove_reader(fd)
                else:
                    loop.remove_writer(fd)
