"""POSIX named semaphores: a counter shared by processes, for signalling and mutual exclusion.

>>> from fastipc import sem
>>> s = sem.Semaphore("/demo-sem", create=True, value=1)
>>> with s:                         # acquires: one process at a time from here...
...     s.value
0
>>> s.value                         # ...to here: the block's end released it
1
>>> s.acquire(timeout=1.0), s.release()
(True, None)
>>> s.close(); s.unlink()

A semaphore named ``x`` is ``/x`` (on Linux the file ``/dev/shm/sem.x``). It lives until it
is unlinked (before or after ``close()``); ``close()`` only releases this process's handle.
The ``with`` block acquires and releases, as for ``threading``, ``multiprocessing`` and
``posix_ipc`` semaphores: it does not close."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from typing import Any, NoReturn, Optional

from fastipc import _aio, _core
from fastipc._backend.sem import SemaphoreBackend
from fastipc._core import (
    Deadline,
    Handle,
    check_create_mode,
    check_int,
    check_timeout,
    posix_name,
    uses_handle,
)

__all__ = ["SEM_VALUE_MAX", "Semaphore", "unlink"]

SEM_VALUE_MAX = 2**31 - 1
"""The largest value a semaphore can hold (glibc's SEM_VALUE_MAX)."""


def _backend(backend: Optional[str]) -> tuple[str, type[SemaphoreBackend]]:
    which = _core.resolve_backend(backend)
    return which, _core.ops("sem", which).Sem


def unlink(name: str, *, backend: Optional[str] = None) -> None:
    """Remove the semaphore ``name``: FileNotFoundError if there is none. Processes that
    have it open keep using it."""
    _backend(backend)[1].unlink(posix_name(name))


# The semaphores (by the address of their futex word: one per semaphore and process, as
# sem_open maps a name once per process) this process is counted a waiter of, while any of
# its coroutines awaits them; a lock orders the counting in and out.
_counted: set[int] = set()
_counted_lock = threading.Lock()


def _attach(name: str, backend: str) -> Semaphore:
    """Unpickle a Semaphore: attach to it by its name (never create it)."""
    return Semaphore(name, backend=backend)


class Semaphore(Handle):
    """A POSIX named semaphore.

    ``create=False`` attaches to an existing semaphore (FileNotFoundError if there is none);
    ``create=True`` creates it exclusively (FileExistsError if it exists) with the initial
    ``value`` and permissions ``mode`` (less the umask). ``value`` is ignored when attaching.

    ``with s:`` acquires (waiting as long as it takes) and releases at the end of the block;
    :meth:`close` releases the handle. Closing it while another thread waits in
    :meth:`acquire` ends that wait with ValueError (within about 20 ms: a waiting
    ``sem_wait`` cannot be woken from outside, so waits sleep in slices). Pickling carries
    the name and backend: the receiving process attaches by name.
    """

    _what = "Semaphore"
    _handle_type = "SemHandle"  # csrc/py/sem.c: acquire, release, value and the await hooks
    _s: Optional[SemaphoreBackend] = None  # the pure backend's semaphore (None: native)

    def __init__(
        self,
        name: str,
        create: bool = False,
        value: int = 0,
        mode: int = 0o600,
        *,
        backend: Optional[str] = None,
    ) -> None:
        path = posix_name(name)  # the kernel's name, "/x", whichever form was given
        value = check_int(value, "value", 0, SEM_VALUE_MAX)
        mode = check_create_mode(create, mode)
        which, impl = _backend(backend)
        self._impl = impl
        self._name = name  # as given: what .name, repr, errors and pickling say
        self._path = path
        if which == "native":
            self._open(path.encode(), create, mode, value)  # type: ignore[attr-defined]
        else:
            self._s = impl(path, create, mode, value)
        self._open_handle(which)

    # ------------------------------------------------------------------ life cycle

    def _wake(self) -> None:
        if self._s is not None:
            self._s.wake()
        word = getattr(self, "_word", 0)
        if word:
            _aio.wake(word)  # our awaiting coroutines try again, and find it closed

    def _free(self) -> None:
        if self._s is not None:  # the native handle released its semaphore in C
            self._s.close()

    def _describe(self) -> str:
        return repr(self._name)

    name = _core.Fixed[str]("_name", "The semaphore's name as it was given (``\"x\"`` and "
                            "``\"/x\"`` name the same semaphore), also once closed.")

    def unlink(self) -> None:
        """Remove the semaphore's name, whether this object is open or closed (it is an
        operation on the name): FileNotFoundError if it is gone already. Handles already
        open, here and in other processes, keep working."""
        self._impl.unlink(self._path)

    def __reduce__(self) -> tuple[Callable[..., Semaphore], tuple[str, str]]:
        self._check_open()
        return _attach, (self._name, self._backend)

    def __enter__(self) -> Semaphore:
        """Acquire (waiting as long as it takes); the block's end releases."""
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ operations

    # The per-message operations below are the pure backend's: on the native backend, the
    # methods of the handle type (csrc/py/sem.c) come first and do the same in C.
    @uses_handle
    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Decrement the value, waiting while it is 0: TimeoutError after ``timeout``
        seconds (None: forever, 0: do not wait). Returns True (so that code written for
        ``threading.Semaphore`` keeps working)."""
        self._s.acquire(-1.0 if timeout is None else check_timeout(timeout))  # type: ignore[union-attr]
        return True

    async def acquire_async(self, timeout: Optional[float] = None) -> bool:
        """:meth:`acquire` on the running event loop (asyncio, uvloop): waits without
        blocking the loop, woken by ``sem_post`` from any process (a C program's too), not
        by polling. Cancelled (or timed out), it has taken nothing. Any number of coroutines
        may await one semaphore. Needs glibc's semaphores on a 64-bit machine (the awaiting
        coroutines are counted among the semaphore's waiters, as a ``sem_wait`` is, so that
        ``sem_post`` wakes them): OSError(ENOSYS) elsewhere."""
        self._check_open()
        deadline = Deadline.of(timeout)

        def attempt() -> Any:
            if self._closed:
                raise self._closed_error()
            return True if self._try() else _aio.NOT_READY

        def park() -> Optional[tuple[int, int]]:
            with _counted_lock:
                if self._closed:
                    return None  # attempt() says so
                word, value = self._waiters(0)
                self._word = word
                if value:
                    return None
                if word not in _counted:  # the first of this process: counted in once
                    word, value = self._waiters(1)
                    _counted.add(word)
                    if value:  # posted meanwhile: nobody of ours parks after all
                        _counted.discard(word)
                        self._waiters(-1)
                        return None
            return word, 0

        def unpark() -> None:  # the last coroutine of this process awaiting it has left
            with _counted_lock:
                if self._word in _counted:
                    _counted.discard(self._word)
                    self._waiters(-1)

        self._enter()  # busy while awaiting: close() wakes it and frees only once it left
        try:
            return await _aio.wait(attempt, park, unpark, deadline,  # type: ignore[no-any-return]
                                   name=self._name)
        except BaseException:
            if not self._closed:
                self._pass_wake()  # a wake-up this coroutine took goes on to another waiter
            raise
        finally:
            self._leave()

    _word = 0  # the address of the semaphore's futex word, once awaited

    @uses_handle
    def release(self) -> None:
        """Increment the value, waking one waiter. OSError(EOVERFLOW) past SEM_VALUE_MAX."""
        try:
            self._s.release()  # type: ignore[union-attr]
        except OSError as exc:
            if exc.errno == errno.EOVERFLOW:
                self._overflow()
            raise

    def _overflow(self) -> NoReturn:
        raise OSError(errno.EOVERFLOW, f"the value is at its maximum, {SEM_VALUE_MAX}",
                      self._name)

    @property
    @uses_handle
    def value(self) -> int:
        """The current value (a snapshot: other processes may change it at once)."""
        return self._s.value()  # type: ignore[union-attr]

    # The hooks of acquire_async: the native handle's C methods, or these.
    def _try(self) -> bool:
        return self._s.try_acquire()  # type: ignore[union-attr]

    def _waiters(self, delta: int) -> tuple[int, int]:
        return self._s.waiters(delta)  # type: ignore[union-attr]

    def _pass_wake(self) -> None:
        self._s.pass_wake()  # type: ignore[union-attr]
