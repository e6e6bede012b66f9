"""POSIX named semaphores: a counter shared by processes, for signalling and mutual exclusion.

>>> from fastipc import sem
>>> with sem.Semaphore("/demo-sem", create=True, value=1) as s:
...     s.acquire(timeout=1.0)      # one process at a time from here...
...     s.value
...     s.release()                 # ...to here
...     s.unlink()
True
0

A semaphore named ``x`` is ``/x`` (on Linux the file ``/dev/shm/sem.x``). It lives until it
is unlinked: ``close()``, and the end of a ``with`` block, only release this process's
handle, as for every named fastipc object."""

from __future__ import annotations

import errno
from types import ModuleType, TracebackType
from typing import Any, Optional

from fastipc import _core
from fastipc._core import check_int, check_timeout, closed_error, posix_name

__all__ = ["SEM_VALUE_MAX", "Semaphore", "unlink"]

SEM_VALUE_MAX = 2**31 - 1
"""The largest value a semaphore can hold (glibc's SEM_VALUE_MAX)."""


def unlink(name: str, *, backend: Optional[str] = None) -> None:
    """Remove the semaphore ``name``: FileNotFoundError if there is none. Processes that
    have it open keep using it."""
    _core.ops("sem", backend).unlink(posix_name(name))


class Semaphore:
    """A POSIX named semaphore.

    ``create=False`` attaches to an existing semaphore (FileNotFoundError if there is none);
    ``create=True`` creates it exclusively (FileExistsError if it exists) with the initial
    ``value`` and permissions ``mode`` (less the umask). ``value`` is ignored when attaching.
    """

    def __init__(
        self,
        name: str,
        create: bool = False,
        value: int = 0,
        mode: int = 0o600,
        *,
        backend: Optional[str] = None,
    ) -> None:
        self._s: Any = None
        name = posix_name(name)
        if not isinstance(create, bool):
            raise TypeError(f"create must be a bool, not {type(create).__name__}")
        value = check_int(value, "value", 0, SEM_VALUE_MAX)
        mode = check_int(mode, "mode", 0, 0o7777)
        impl: ModuleType = _core.ops("sem", backend)
        self._impl = impl
        self._name = name
        self._s = impl.Sem(name, create, mode, value)

    @property
    def name(self) -> str:
        """The semaphore's name, with its leading ``/``."""
        return self._name

    @property
    def backend(self) -> str:
        """``"native"`` or ``"pure"``."""
        return _core.backend_of(self._impl)

    @property
    def closed(self) -> bool:
        return self._s is None

    def _open(self) -> Any:
        s = self._s
        if s is None:
            raise closed_error("Semaphore")
        return s

    def acquire(self, timeout: Optional[float] = None) -> bool:
        """Decrement the value, waiting while it is 0: TimeoutError after ``timeout``
        seconds (None: forever, 0: do not wait). Returns True (so that code written for
        ``threading.Semaphore`` keeps working)."""
        s = self._s
        if s is None:
            raise closed_error("Semaphore")
        s.acquire(-1.0 if timeout is None else check_timeout(timeout))
        return True

    def release(self) -> None:
        """Increment the value, waking one waiter. OSError(EOVERFLOW) past SEM_VALUE_MAX."""
        s = self._s
        if s is None:
            raise closed_error("Semaphore")
        try:
            s.release()
        except OSError as exc:
            if exc.errno == errno.EOVERFLOW:
                raise OSError(
                    errno.EOVERFLOW, f"the value is at its maximum, {SEM_VALUE_MAX}", self._name
                ) from None
            raise

    @property
    def value(self) -> int:
        """The current value (a snapshot: other processes may change it at once)."""
        return int(self._open().value())

    def close(self) -> None:
        """Release this process's handle; the semaphore itself stays (see :meth:`unlink`).
        Idempotent. No other thread may be waiting on it at that moment."""
        s, self._s = self._s, None
        if s is not None:
            s.close()

    def unlink(self) -> None:
        """Remove the semaphore's name; handles already open keep working."""
        self._open()
        self._impl.unlink(self._name)

    def __enter__(self) -> Semaphore:
        """The semaphore itself; the ``with`` block's end closes it (the name stays, as for
        every named fastipc object). Use ``acquire``/``release`` to take and give it."""
        self._open()
        return self

    def __exit__(self, *exc: Optional[TracebackType]) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_s", None) is not None:
            self.close()

    def __repr__(self) -> str:
        state = " closed" if self._s is None else ""
        return f"<Semaphore {self._name!r}{state} backend={self.backend}>"
