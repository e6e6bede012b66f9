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
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Optional, cast

from fastipc import _core
from fastipc._backend.mq import MessageQueueBackend, MessagesBackend
from fastipc._core import (
    Handle,
    byte_view,
    check_create_mode,
    check_int,
    check_timeout,
    posix_name,
    uses_handle,
)

__all__ = [
    "DEFAULT_SPIN",
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
DEFAULT_SPIN = 10e-6
"""The default ``spin``: a wait polls the queue for 10 µs before it sleeps, which catches a
peer answering at once (a ping-pong) without a wake-up on each side (20-25 µs each)."""
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


def _check_spin(spin: Any) -> float:
    if spin is None:
        raise TypeError("spin must be a number of seconds, not None")
    value = check_timeout(spin)
    if not 0 <= value <= 1:
        raise ValueError(f"spin must be between 0 and 1 second, not {spin!r}")
    return value


def _backend(backend: Optional[str]) -> tuple[str, type[MessageQueueBackend]]:
    which = _core.resolve_backend(backend)
    return which, _core.ops("mq", which).Queue


def unlink(name: str, *, backend: Optional[str] = None) -> None:
    """Remove the queue ``name``: FileNotFoundError if there is none. Processes that have
    it open keep using it; it is freed once the last one closes it."""
    _backend(backend)[1].unlink(posix_name(name))


def _attach(name: str, backend: str, spin: float) -> MessageQueue:
    """Unpickle a MessageQueue: attach to the queue by its name (never create it)."""
    return MessageQueue(name, spin=spin, backend=backend)


class MessageQueue(Handle):
    """A POSIX message queue, opened for sending and receiving.

    ``create=False`` attaches to an existing queue (FileNotFoundError if there is none);
    ``create=True`` creates it exclusively (FileExistsError if it exists) with room for
    ``max_messages`` messages of up to ``max_message_size`` bytes each and permissions
    ``mode`` (less the umask). Those two sizes are ignored when attaching: the queue's own
    are in :attr:`attributes`.

    Closing the object while another thread waits in :meth:`send` or :meth:`receive` (or
    awaits their async twins) ends that wait with ValueError. Pickling it (for instance to
    pass it to a ``multiprocessing.Process``) carries its name and backend: the receiving
    process attaches to the queue by name.
    """

    _what = "MessageQueue"
    _handle_type = "MqHandle"  # csrc/py/mq.c: send and receive
    def __init__(
        self,
        name: str,
        create: bool = False,
        max_messages: int = 10,
        max_message_size: int = 8192,
        mode: int = 0o600,
        *,
        spin: float = DEFAULT_SPIN,
        backend: Optional[str] = None,
    ) -> None:
        path = posix_name(name)  # the kernel's name, "/x", whichever form was given
        max_messages = check_int(max_messages, "max_messages", 1, _MAX_LONG)
        max_message_size = check_int(max_message_size, "max_message_size", 1, _MAX_LONG)
        mode = check_create_mode(create, mode)
        spin = _check_spin(spin)
        which, impl = _backend(backend)
        self._name = name  # as given: what .name, repr, errors and pickling say
        self._path = path
        self._impl = impl
        try:
            q = impl(path, create, mode, max_messages, max_message_size)
        except OSError as exc:
            if not create:
                raise
            raise _limit_error(exc, name, max_messages, max_message_size) from None
        self._q: MessageQueueBackend = q
        self._waiters: dict[asyncio.AbstractEventLoop, _Waiters] = {}  # awaiting, per loop
        q.spin = spin  # the backend's copy is the one: C reads it as it waits
        self._max_size: int = q.max_message_size
        if which == "native":
            self._open(*q.handle_args())  # type: ignore[attr-defined]
        self._open_handle(which, q.fd)
        _forked_copies.add(self)

    # ------------------------------------------------------------------ life cycle

    def _wake(self) -> None:
        if not self._native:  # the native handle woke its calls in C
            self._q.wake()

    def _free(self) -> None:
        if not self._native:  # the native handle closed the descriptors in C
            self._q.close()

    def _forked(self) -> None:
        """In a child made by fork(): the calls counted busy were the parent's threads',
        which the child does not have; left counted, they would keep close() from ever
        freeing the descriptors."""
        self._waiters.clear()  # the parent's event loops
        if self._native:
            self._forget_calls()  # type: ignore[attr-defined]
            return
        self._calls.clear()
        if self._closed:
            self._free_once()

    def _describe(self) -> str:
        return f"{self._name!r} fd={self._fd}"

    name = _core.Fixed[str]("_name", "The queue's name as it was given (``\"x\"`` and "
                            "``\"/x\"`` name the same queue), also once closed.")

    def unlink(self) -> None:
        """Remove the queue's name, whether this object is open or closed (it is an
        operation on the name): FileNotFoundError if it is gone already. Descriptors
        already open, here and in other processes, stay usable until closed."""
        self._impl.unlink(self._path)

    def __reduce__(self) -> tuple[Callable[..., MessageQueue], tuple[str, str, float]]:
        self._check_open()
        return _attach, (self._name, self._backend, self._q.spin)

    # ------------------------------------------------------------------ attributes

    @property
    @uses_handle
    def attributes(self) -> Attributes:
        """``Attributes(max_messages, max_message_size, current_messages)``, read now."""
        return Attributes(*self._q.attributes())

    max_message_size = _core.Fixed[int]("_max_size", "The largest message this queue takes, "
                                        "in bytes.", open_only=True)

    @property
    def spin(self) -> float:
        """Seconds a send or receive that has to wait polls the queue before it sleeps
        (default :data:`DEFAULT_SPIN`, 10 µs; 0: sleep at once).

        A process sleeping on a queue costs the one that wakes it a few microseconds per
        message (more than the message itself); spinning for a little longer than the peer
        usually takes to answer (20-100 µs) avoids that at the price of a busy core while
        waiting. The pure backend ignores it."""
        self._check_open()
        return self._q.spin

    @spin.setter
    def spin(self, value: float) -> None:
        self._check_open()
        self._q.spin = _check_spin(value)

    # ------------------------------------------------------------------ messages

    # The per-message operations below are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/mq.c) come first and do the same in C.

    @uses_handle
    def send(self, data: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
        """Send ``data`` (bytes-like) as one message with ``priority`` (0 to
        ``MQ_PRIO_MAX - 1``, higher first). Waits while the queue is full: TimeoutError
        after ``timeout`` seconds (None: forever, 0: do not wait). A message longer than
        :attr:`max_message_size` raises ValueError before anything is sent."""
        cast(MessagesBackend, self._q).send(*self._check_send(data, priority, timeout))

    def _check_send(self, data: Any, priority: Any, timeout: Any) -> tuple[Any, int, float]:
        """send's arguments checked in order, raising for the first that is wrong: the
        data (bytes, or a byte view of it), the priority, the timeout (C's convention). The
        native handle calls this for what it does not take as it is."""
        if type(data) is not bytes:
            data = byte_view(data)
        if type(priority) is not int or not 0 <= priority <= _PRIO_TOP:
            priority = check_int(priority, "priority", 0, _PRIO_TOP)
        t = -1.0 if timeout is None else check_timeout(timeout)
        if len(data) > self._max_size:
            raise ValueError(f"message of {len(data)} bytes exceeds the queue's "
                             f"max_message_size ({self._max_size})")
        return data, priority, t

    @uses_handle
    def receive(self, timeout: Optional[float] = None) -> tuple[bytes, int]:
        """The oldest message of the highest priority waiting, as ``(bytes, priority)``:
        exactly the bytes that were sent. Waits while the queue is empty: TimeoutError after
        ``timeout`` seconds (None: forever, 0: do not wait)."""
        return cast(MessagesBackend, self._q).receive(check_timeout(timeout))

    async def receive_async(self, timeout: Optional[float] = None) -> tuple[bytes, int]:
        """:meth:`receive` for asyncio (or uvloop): waits on the running loop for the
        descriptor to turn readable (no thread, no polling), then receives without
        blocking. Cancelling it loses nothing: a message is only taken when it returns."""
        return await self._async(self.receive, (), timeout, reader=True)  # type: ignore[no-any-return]

    async def send_async(
        self, data: Any, priority: int = 0, timeout: Optional[float] = None
    ) -> None:
        """:meth:`send` for asyncio (or uvloop): waits on the running loop for room in the
        queue (no thread, no polling), then sends without blocking."""
        await self._async(self.send, (data, priority), timeout, reader=False)

    async def _async(
        self, op: Any, args: tuple[Any, ...], timeout: Optional[float], reader: bool
    ) -> Any:
        deadline = _core.Deadline.of(timeout)
        loop = asyncio.get_running_loop()
        self._enter()  # busy while awaiting: close() wakes us and frees only once we left
        try:
            while True:
                try:
                    return op(*args, timeout=0)
                except TimeoutError:
                    pass  # nothing (or no room) yet; another process may have been quicker
                if deadline.expired():
                    raise deadline.error(self._name) from None
                await self._ready(loop, reader, deadline.left())
        finally:
            self._leave()

    async def _ready(self, loop: asyncio.AbstractEventLoop, reader: bool, left: float) -> None:
        """Until it is this coroutine's turn at a ready queue, the object is closed, or
        ``left`` seconds passed."""
        waiters = self._waiters.get(loop)
        if waiters is None:
            waiters = self._waiters[loop] = _Waiters(loop, self._fd, self._q.wake_fd)
        try:
            await waiters.wait(reader, left)
        finally:
            if waiters.stop_if_idle():
                del self._waiters[loop]


def _receive(self: MessageQueue, timeout: Optional[float] = None) -> tuple[bytes, int]:
    try:
        message: tuple[bytes, int] = _c_receive(self, timeout)
    except BaseException:
        # Raised as the C call returned (Python runs signal handlers then), before this
        # frame had its message: the handle keeps it for the next receive. Only here: a
        # return from a Python frame runs no handler, so none is raised past this point.
        self._keep_last()  # type: ignore[attr-defined]
        raise
    return message


# The native class's receive: the handle's (csrc/py/mq.c), in a frame that keeps a message
# an exception was raised into as that call returned.
_receive.__name__, _receive.__qualname__ = "receive", "MessageQueue.receive"
_receive.__doc__ = MessageQueue.receive.__doc__
_c_receive: Any = None
if _core.NATIVE_ERROR is None:
    from fastipc._fastipc import MqHandle

    _c_receive = MqHandle.receive
MessageQueue._native_methods = {"receive": _receive}

_forked_copies: weakref.WeakSet[MessageQueue] = weakref.WeakSet()


def _forget_the_parents_calls() -> None:
    for q in list(_forked_copies):
        q._forked()


os.register_at_fork(after_in_child=_forget_the_parents_calls)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Waiters:
    """The coroutines of one event loop awaiting one queue, in line: the queue's descriptor
    is watched once for each direction however many wait, and each time it turns ready the
    first in line is woken alone, and the descriptor left unwatched until that coroutine has
    made its attempt (it passes the turn as it stops waiting, in the same step of the loop):
    a message goes to one coroutine, and the others are woken as long as messages (or room)
    remain. A coroutine cancelled or timed out leaves the line and passes the turn if it
    had it; the wake-up descriptor (close()) wakes every one."""

    __slots__ = ("fd", "lines", "loop", "stopped", "wake_fd", "watched")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int, wake_fd: int) -> None:
        self.loop, self.fd, self.wake_fd = loop, fd, wake_fd
        # indexed by reader (True: receives, waiting for readable; False: sends, writable)
        self.lines: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())
        self.watched = [False, False]
        self.stopped = False
        loop.add_reader(wake_fd, self._wake_all)

    def _watch(self, reader: bool, on: bool) -> None:
        if self.watched[reader] != on:
            self.watched[reader] = on
            if reader:
                (self.loop.add_reader(self.fd, self._turn, True) if on
                 else self.loop.remove_reader(self.fd))
            else:
                (self.loop.add_writer(self.fd, self._turn, False) if on
                 else self.loop.remove_writer(self.fd))

    def _turn(self, reader: bool) -> None:
        """The queue is ready: wake the first in line, and stop watching until it tried."""
        self._watch(reader, False)
        line = self.lines[reader]
        while line:
            future = line.popleft()
            if not future.done():
                future.set_result(None)
                return

    def _wake_all(self) -> None:
        for line in self.lines:
            while line:
                _resolve(line.popleft())

    async def wait(self, reader: bool, left: float) -> None:
        """Until this coroutine's turn, close(), or ``left`` seconds (< 0: no limit)."""
        future = self.loop.create_future()
        line = self.lines[reader]
        line.append(future)
        self._watch(reader, True)
        timer = None if left < 0 else self.loop.call_later(left, _resolve, future)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            try:
                line.remove(future)  # timed out or cancelled while in line
            except ValueError:
                pass
            self._watch(reader, bool(line))  # the turn goes on to the next in line

    def stop_if_idle(self) -> bool:
        """Stop watching if no coroutine waits: True if this call stopped it (then this
        object is done; coroutines woken before it stopped only finish their attempt)."""
        if self.stopped or any(self.lines):
            return False
        self.stopped = True
        self._watch(True, False)
        self._watch(False, False)
        self.loop.remove_reader(self.wake_fd)
        return True
