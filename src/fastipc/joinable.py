"""Drop-ins for ``multiprocessing.JoinableQueue`` and ``multiprocessing.SimpleQueue``, built
on :class:`fastipc.Queue`.

>>> from fastipc import JoinableQueue
>>> with JoinableQueue() as q:
...     q.put("job")
...     q.get(timeout=1)
...     q.task_done()
...     q.join()                    # every task put so far is done: returns at once
'job'

**The unfinished-task count** of a :class:`JoinableQueue` lives in a small segment of its own
beside the queue's, ``/dev/shm/<queue name>.tasks``, created with the queue and removed with
its name (by ``unlink()``; an anonymous queue's by its creator's close). It holds a
process-shared POSIX semaphore (glibc's ``sem_t``, through ``ctypes``), whose value is the
count, and a futex word, the *zero generation*. Each put posts the semaphore before the message
goes in (so a consumer can never be done with a task that is not counted yet) and takes the
post back if the put fails. ``task_done()`` is a ``sem_trywait``: at zero it fails, and raises
ValueError as multiprocessing does. A joiner adds itself to a count of joiners, reads the
generation, then the count; while the count is not zero it sleeps on the generation word, and
returns once the count was seen at zero or the generation moved: the semantics of
multiprocessing's ``join()`` (woken when the count reached zero, even if a put came right
after). The ``task_done()`` that leaves the count at zero while there are joiners adds one to
the generation and wakes every sleeper on it (one ``FUTEX_WAKE_OP``: the kernel adds and wakes
atomically); without joiners it makes no system call. Nothing holds a lock, so a process killed
at any moment leaves the count consistent and blocks no one; a joiner also looks at the count
once a second, in case the process that brought it to zero died before it could wake anyone.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
import types
import weakref
from collections.abc import Callable, Iterable
from typing import Any, Optional, TypeVar

from fastipc import _aio
from fastipc._core import Deadline, check_timeout
from fastipc._pure.queue import _libc, _libc_fn
from fastipc._pure.shm import _SYS_FUTEX, _TSO, _fence, _futex_wait, _futex_wake, _syscall
from fastipc._segment import check_owner, create_segment, open_segment, open_to_inspect
from fastipc.queue import (
    DEFAULT_CAPACITY,
    DEFAULT_MAX_MESSAGE_SIZE,
    Queue,
    QueueInfo,
    _queue_alive,
    _tell_sent,
    _unlink_quietly,
    _unpark,
)

__all__ = ["JoinableQueue", "SimpleQueue"]

_Q = TypeVar("_Q", bound=Queue)

TASKS_SUFFIX = ".tasks"  # the count's segment: /dev/shm/<queue name>.tasks
SEM_VALUE_MAX = 2**31 - 1  # glibc's, as for multiprocessing's semaphore of the count
SLICE = 1.0  # a joiner looks at the count at least this often (a waker may have died)

# The count's segment: magic, version, the zero generation (a futex word), the number of
# joiners asleep or about to be, then the sem_t.
_MAGIC = 0x4B534154  # "TASK"
_VERSION = 1
_OFF_GEN = 8
_OFF_JOINERS = 12
_OFF_SEM = 16
_SIZE = 64  # sem_t is 32 bytes on 64-bit glibc, 16 on 32-bit
# In 64-bit glibc's sem_t, after the 32-bit count: the number of sem_wait() callers asleep
# (never any here: nobody waits on the semaphore) and the private flag (0: shared). sem_post
# wakes those waiters if their number is not zero, and glibc aborts the process if that futex
# call fails, as it does for garbage flags: both words are set to what they must be before
# each post, so that another process scribbling over them cannot kill this one.
_WIDE_SEM = ctypes.sizeof(ctypes.c_void_p) == 8
_OFF_SEM_WAITERS = _OFF_SEM + 4
_OFF_SEM_PRIVATE = _OFF_SEM + 8
_HEAD = struct.Struct("<II")

_vp = ctypes.c_void_p
_sem_init = _libc_fn(_libc, "sem_init", _vp, ctypes.c_int, ctypes.c_uint)
_sem_post = _libc_fn(_libc, "sem_post", _vp)
_sem_trywait = _libc_fn(_libc, "sem_trywait", _vp)
_sem_getvalue = _libc_fn(_libc, "sem_getvalue", _vp, ctypes.POINTER(ctypes.c_int))

# FUTEX_WAKE_OP with FUTEX_OP(FUTEX_OP_ADD, n, FUTEX_OP_CMP_EQ, 0): the kernel adds n to
# the word atomically (n: 12 bits, sign-extended) and wakes up to nr_wake sleepers on it.
_FUTEX_WAKE_OP = 5
_ALL = 0x7FFFFFFF


def _add_op(n: int) -> int:
    return 1 << 28 | (n & 0xFFF) << 12


def _errno_error(what: str, name: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}", name)


class _Tasks:
    """The unfinished-task count of one JoinableQueue handle (see the module docstring).
    Its owner calls it only while the queue counts a call busy, so the mapping outlives
    every call into it."""

    def __init__(self, path: str, create: bool, mode: int, uid: int) -> None:
        self.path = path
        if create:
            fd = create_segment(path, _SIZE, mode)
        else:
            try:
                fd = open_segment(path, 0)
            except FileNotFoundError:
                raise FileNotFoundError(errno.ENOENT, "not a JoinableQueue (its task count "
                                        "is missing)", path) from None
        try:
            try:
                st = os.fstat(fd)
                if not create:
                    check_owner(st, uid, path)  # the queue's owner owns its count too
                if st.st_size != _SIZE:
                    raise OSError(errno.EBADMSG, "not a JoinableQueue task count", path)
                self._mm = mmap.mmap(fd, _SIZE)
            finally:
                os.close(fd)
            self._words: Any = (ctypes.c_uint32 * (_SIZE // 4)).from_buffer(self._mm)
            self._setup(create)
        except BaseException:
            if hasattr(self, "_mm"):
                self.close()
            if create:
                _unlink_quietly(path)
            raise

    def _setup(self, create: bool) -> None:
        base = self._words_base = ctypes.addressof(self._words)
        self._gen = base + _OFF_GEN
        self._sem = base + _OFF_SEM
        if create:
            if _sem_init(self._sem, 1, 0):
                raise _errno_error("sem_init", self.path)
            _HEAD.pack_into(self._mm, 0, 0, _VERSION)
            self._words[0] = _MAGIC  # last: the count is ready
        elif _HEAD.unpack_from(self._mm, 0) != (_MAGIC, _VERSION):
            raise FileNotFoundError(errno.ENOENT, "not a JoinableQueue (its task count is "
                                    "not ready)", self.path)

    def close(self) -> None:
        if hasattr(self, "_words"):
            del self._words  # the ctypes view exports the mapping: it goes first
        self._mm.close()

    def add(self) -> None:
        """One more unfinished task."""
        if _WIDE_SEM:
            self._words[_OFF_SEM_WAITERS // 4] = self._words[_OFF_SEM_PRIVATE // 4] = 0
        try:
            failed = _sem_post(self._sem)
        except BaseException:
            # A signal handler raised as the post returned (nothing else can raise here: no
            # check runs before the call): the task was counted, and its put will not be
            # made, so it is taken back.
            self.done()
            raise
        if failed:
            if ctypes.get_errno() == errno.EOVERFLOW:
                raise OSError(errno.EOVERFLOW, f"more than {SEM_VALUE_MAX} unfinished tasks",
                              self.path)
            raise _errno_error("sem_post", self.path)

    def done(self) -> bool:
        """One task fewer: False (and no change) if the count is zero. The call that
        leaves it at zero wakes the joiners, if there are any: it decrements the count,
        then reads the joiners' number, while a joiner adds itself to that number, then
        reads the count; with a full barrier between (the decrement is a locked CAS), one
        of the two sees the other's write."""
        if _sem_trywait(self._sem):
            if ctypes.get_errno() == errno.EAGAIN:
                return False
            raise _errno_error("sem_trywait", self.path)
        if not _TSO:
            _fence()
        if self._words[_OFF_JOINERS // 4] and self.value() == 0:
            self._add(_OFF_GEN, 1, _ALL)
        return True

    def value(self) -> int:
        v = ctypes.c_int()
        if _sem_getvalue(self._sem, v):
            raise _errno_error("sem_getvalue", self.path)
        if v.value < 0:  # over SEM_VALUE_MAX: written by someone else
            raise OSError(errno.EBADMSG, "corrupt task count", self.path)
        return v.value

    def _add(self, off: int, n: int, wake: int) -> None:
        """Add n to a word atomically and wake up to ``wake`` sleepers on it (one
        FUTEX_WAKE_OP)."""
        if _syscall is None:  # no futex here: joiners poll, a plain store will do
            self._words[off // 4] = (self._words[off // 4] + n) & 0xFFFFFFFF
            return
        word = _vp(self._words_base + off)
        _syscall(_SYS_FUTEX, word, _FUTEX_WAKE_OP, wake, None, word, _add_op(n))

    def wake(self) -> None:
        """Wake the joiners (they look again: this process's see that it closed)."""
        _futex_wake(self._gen)

    def wait_zero(self, deadline: Deadline, closed: Callable[[], bool], name: str) -> bool:
        """Sleep until the count reaches zero: True, or False once ``closed()`` says so.
        TimeoutError (naming the queue ``name``) when the deadline expires first."""
        # self._words is looked up each time, never held by this frame: a child forked
        # while a thread sleeps here keeps the frame (not the thread), and must still be
        # able to unmap the count (an exported buffer cannot be)
        gen = _OFF_GEN // 4
        self._add(_OFF_JOINERS, 1, 0)
        try:
            while True:
                if closed():
                    return False
                seen = self._words[gen]
                if not _TSO:
                    _fence()  # the generation is read before the count
                if self.value() == 0:
                    return True
                left = deadline.left()
                if left == 0:
                    raise deadline.error(name)
                _futex_wait(self._gen, seen, SLICE if left < 0 else min(left, SLICE))
                if self._words[gen] != seen:  # the count reached zero since we looked
                    return not closed()
        finally:
            self._add(_OFF_JOINERS, -1, 0)

    async def wait_zero_async(self, deadline: Deadline, closed: Callable[[], bool],
                              name: str) -> bool:
        """:meth:`wait_zero` on the running event loop: the coroutine parks on the
        generation word (:func:`fastipc._aio.wait`), counted among the joiners from start to
        end, so the ``task_done()`` that brings the count to zero wakes it as it wakes a
        blocking joiner. It takes nothing: a cancellation leaves only the joiners' count
        as it was."""
        gen = _OFF_GEN // 4
        self._add(_OFF_JOINERS, 1, 0)
        try:
            seen = self._words[gen]

            def zero() -> bool:
                """The count reached zero since the join began."""
                if self._words[gen] != seen:
                    return True
                if not _TSO:
                    _fence()  # the generation is read before the count
                return self.value() == 0

            def attempt() -> Any:
                if closed():
                    return False
                return True if zero() else _aio.NOT_READY

            def park() -> Optional[tuple[int, int]]:
                return None if zero() else (self._gen, seen)

            # like a blocking joiner, it looks at the count every SLICE s on its own
            return bool(await _aio.wait(attempt, park, _unpark, deadline, recheck=SLICE,
                                        name=name))
        finally:
            self._add(_OFF_JOINERS, -1, 0)


def _reattach(cls: type[_Q], name: str, max_message: int, spin: float, backend: str,
              owner: Optional[int] = None) -> _Q:
    """Unpickling: attach to the queue by name, as the class it was (trusting the uid its
    segment had where it was pickled)."""
    return cls(name=name, create=False, max_message_size=max_message, spin=spin,
               owner=owner, backend=backend)


class _ClosedQueue(ValueError, OSError):
    """A closed SimpleQueue's error: ValueError, as for a closed ``multiprocessing.Queue``,
    and OSError, as for a closed ``multiprocessing.SimpleQueue`` (whose pipe says "handle
    is closed")."""


class _Dropin(Queue):
    """What both drop-ins change in :class:`Queue`: a closed one's error says "is closed",
    as multiprocessing's does, and pickling re-attaches as the same class."""

    _closed_type: type[ValueError] = ValueError

    def __class_getitem__(cls, item: Any) -> types.GenericAlias:
        return types.GenericAlias(cls, item)  # JoinableQueue[int], as multiprocessing's

    def _closed_error(self) -> ValueError:
        return self._closed_type(f"{self._what} {self._name!r} is closed")

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def __reduce__(self) -> tuple[Callable[..., Queue], tuple[Any, ...]]:
        self._check_open()
        return _reattach, (self._public or type(self), self._name, self._max_message,
                           self._spin, self._backend, self._uid)


class _OneTask:
    """``with _OneTask(q):`` around a put of a JoinableQueue: one more unfinished task
    before the message goes in (so that no consumer can finish a task not counted yet),
    taken back if the put raises (the message did not go in). The queue counts the call
    busy meanwhile. Made for each call: kept on the queue, it would be a reference cycle."""

    __slots__ = ("_q",)

    def __init__(self, q: JoinableQueue) -> None:
        self._q = q

    def __enter__(self) -> None:
        q = self._q
        tasks = q._counted()
        try:
            tasks.add()
        except BaseException:
            q._leave()
            raise

    def __exit__(self, kind: Optional[type[BaseException]], *exc: object) -> None:
        q = self._q
        try:
            if kind is not None and q._tasks is not None:
                q._tasks.done()
        finally:
            q._leave()


class JoinableQueue(_Dropin):
    """``multiprocessing.JoinableQueue`` in shared memory: a :class:`fastipc.Queue` that
    counts unfinished tasks. Every put (``put``, ``put_nowait``, ``put_bytes``,
    ``put_many``, ``put_async``, ``put_bytes_async``, ``put_many_async``) adds one task
    per message; :meth:`task_done` ends one; :meth:`join` (or :meth:`join_async`) waits
    until none is left. The constructor is
    :class:`Queue`'s; attaching by name (``create=False``) needs a queue that a
    JoinableQueue created.

    A consumer killed between ``get()`` and ``task_done()`` leaves its task unfinished for
    good, as with multiprocessing: ``join()`` then waits forever (``join(timeout)`` raises
    TimeoutError instead, and :attr:`unfinished_tasks` shows the count)."""

    _what = "JoinableQueue"
    _tasks: Optional[_Tasks] = None
    _tasks_finalizer: Optional[weakref.finalize[Any, Any]] = None
    _joins: list[None]  # the joins in progress (a fork child forgets them)

    def __init__(self, maxsize: int = 0, *, name: Optional[str] = None,
                 create: Optional[bool] = None, capacity: int = DEFAULT_CAPACITY,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, mode: int = 0o600,
                 spin: Optional[float] = None, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        super().__init__(maxsize, name=name, create=create, capacity=capacity,
                         max_message_size=max_message_size, mode=mode, spin=spin,
                         owner=owner, backend=backend)
        path = self._path + TASKS_SUFFIX
        self._joins = []
        try:
            self._tasks = _Tasks(path, self._owner, mode, self._uid)
        except BaseException:
            if self._owner:  # the queue made for nothing goes (not a count in the way)
                _unlink_quietly(self._path)
            self.close()
            raise
        if self._anonymous:  # a named queue's count stays with its name (see unlink)
            self._tasks_finalizer = weakref.finalize(self, _unlink_quietly, path)

    # ---------------------------------------------------------------- life cycle
    def _forked(self) -> None:
        """In a child made by fork(): besides what :meth:`Queue._forked` gives up (the
        parent's calls in progress, its ownership), the joins in progress were the
        parent's threads', and the count's name is the parent's to remove."""
        self._joins.clear()
        if self._tasks_finalizer is not None:
            self._tasks_finalizer.detach()
            self._tasks_finalizer = None
        super()._forked()

    def _wake(self) -> None:
        super()._wake()
        if self._tasks is not None:
            self._tasks.wake()
            _aio.wake(self._tasks._gen)  # this process's join_async: they see it closed

    def _free(self) -> None:
        super()._free()
        if self._tasks is not None:
            self._tasks.close()
            self._tasks = None
        if self._tasks_finalizer is not None:
            self._tasks_finalizer()  # removes the count's name

    def unlink(self) -> None:
        """:meth:`Queue.unlink`, and the task count's name (others attached keep
        working)."""
        try:
            super().unlink()
        finally:
            _unlink_quietly(self._path + TASKS_SUFFIX)
            if self._tasks_finalizer is not None:
                self._tasks_finalizer.detach()

    # ---------------------------------------------------------------- tasks
    def _counted(self) -> _Tasks:
        """The task count, with this call counted busy (the caller calls _leave)."""
        if self._closed:
            raise self._closed_error()
        self._enter()
        tasks = self._tasks
        assert tasks is not None
        return tasks

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """:meth:`Queue.put`, counting one more unfinished task."""
        with _OneTask(self):
            super().put(obj, block, timeout)

    def put_bytes(self, data: Any, *args: Any, **kwargs: Any) -> None:
        """:meth:`Queue.put_bytes`, counting one more unfinished task."""
        with _OneTask(self):
            super().put_bytes(data, *args, **kwargs)

    def put_many(self, objs: Iterable[Any], timeout: Optional[float] = None, *,
                 block: bool = True) -> None:
        """Put every object of ``objs`` in order, each counted as a task: one put at a time,
        so that the count is exact whatever fails. On timeout, ``queue.Full``
        (``block=False``: each put tries once). Whatever stops it part way, the exception's
        ``messages_sent`` (and its deprecated alias ``messages_put``) says how many went."""
        deadline = Deadline(check_timeout(timeout) if block else 0.0)
        done = 0
        try:
            for obj in objs:
                self.put(obj, block, None if deadline.timeout < 0 else deadline.left())
                done += 1
        except BaseException as exc:
            _tell_sent(exc, done)
            raise

    async def put_async(self, obj: Any, *args: Any, **kwargs: Any) -> None:
        """:meth:`Queue.put_async`, counting one more unfinished task (taken back if the
        await is cancelled or times out: the message did not go in)."""
        with _OneTask(self):
            await super().put_async(obj, *args, **kwargs)

    async def put_bytes_async(self, data: Any, *args: Any, **kwargs: Any) -> None:
        """:meth:`Queue.put_bytes_async`, counting one more unfinished task."""
        with _OneTask(self):
            await super().put_bytes_async(data, *args, **kwargs)

    async def put_many_async(self, objs: Iterable[Any], timeout: Optional[float] = None, *,
                             block: bool = True) -> None:
        """:meth:`Queue.put_many_async`, each message counted as a task: one
        :meth:`put_async` at a time (as :meth:`put_many`), so that the count is exact
        whatever ends it. Whatever ends it early (``queue.Full``, an error, a cancellation),
        the exception's ``messages_sent`` (and its deprecated alias ``messages_put``) says
        how many went."""
        self._check_open()
        deadline = Deadline(check_timeout(timeout) if block else 0.0)
        done = 0
        try:
            for obj in objs:
                await self.put_async(obj, None if deadline.timeout < 0 else deadline.left(),
                                     block=block)
                done += 1
        except BaseException as exc:
            _tell_sent(exc, done)
            raise

    def task_done(self) -> None:
        """Tell the queue that a task taken with ``get()`` is finished. ValueError if it is
        called more times than messages were put, as multiprocessing does."""
        tasks = self._counted()
        try:
            if not tasks.done():
                raise ValueError("task_done() called too many times")
        finally:
            self._leave()

    def join(self, timeout: Optional[float] = None) -> None:
        """Wait until every task put so far is done (returns at once if none is left).
        ``timeout`` (not in multiprocessing): TimeoutError if some are still unfinished
        then. Closing the queue from another thread ends the wait with ValueError."""
        deadline = Deadline(check_timeout(timeout))
        tasks = self._counted()
        joins = self._joins
        try:
            joins.append(None)
            if not tasks.wait_zero(deadline, lambda: self._closed, self._name):
                raise self._closed_error()
        finally:
            if joins:
                joins.pop()
            self._leave()

    async def join_async(self, timeout: Optional[float] = None) -> None:
        """:meth:`join` on the running event loop (asyncio, uvloop): waits, without
        blocking the loop, no polling, until every task put so far is done. TimeoutError
        on timeout; closing the queue (from any thread) ends the wait with ValueError.
        Cancelling it changes nothing."""
        deadline = Deadline(check_timeout(timeout))
        tasks = self._counted()
        joins = self._joins
        try:
            joins.append(None)
            if not await tasks.wait_zero_async(deadline, lambda: self._closed, self._name):
                raise self._closed_error()
        finally:
            if joins:
                joins.pop()
            self._leave()

    @property
    def unfinished_tasks(self) -> int:
        """Tasks put and not yet done (a snapshot, as ``queue.Queue.unfinished_tasks``)."""
        tasks = self._counted()
        try:
            return tasks.value()
        finally:
            self._leave()


class SimpleQueue(_Dropin):
    """``multiprocessing.SimpleQueue`` in shared memory: :class:`fastipc.Queue` without a
    ``maxsize``; ``get()``, ``put(obj)``, ``empty()`` and ``close()`` as multiprocessing's,
    with everything else of :class:`Queue` too. Once closed, every call raises an error
    that is a ValueError whose message says "is closed" (as a closed
    ``multiprocessing.Queue``) and an OSError (as a closed ``multiprocessing.SimpleQueue``).
    """

    _what = "SimpleQueue"
    _closed_type = _ClosedQueue

    def __init__(self, *, name: Optional[str] = None, create: Optional[bool] = None,
                 capacity: int = DEFAULT_CAPACITY,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, mode: int = 0o600,
                 spin: Optional[float] = None, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        super().__init__(0, name=name, create=create, capacity=capacity,
                         max_message_size=max_message_size, mode=mode, spin=spin,
                         owner=owner, backend=backend)

    def empty(self) -> bool:
        self._check_open()
        return super().empty()


def describe(path: str) -> Optional[QueueInfo]:
    """What ``fastipc ls`` shows of a JoinableQueue's task count (``<queue>.tasks``): None if
    ``path`` is not one. It is alive while its queue exists and is not stale (its creator
    runs, or closed a named queue), so ``fastipc rm --stale`` removes the count of a queue
    whose creator was killed, or whose name is gone."""
    if not path.endswith(TASKS_SUFFIX):
        return None
    fd = open_to_inspect(path)
    if fd is None:
        return None
    try:
        head = os.pread(fd, _HEAD.size, 0)
        size = os.fstat(fd).st_size
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) != _HEAD.size or _HEAD.unpack(head) != (_MAGIC, _VERSION):
        return None
    alive = _queue_alive(path[: -len(TASKS_SUFFIX)])
    return QueueInfo("queue-tasks", os.path.basename(path), size, 0, alive,
                     "a JoinableQueue's task count" + ("" if alive else ", its queue is gone"))
