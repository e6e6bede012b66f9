"""What every mechanism shares: backend selection, error mapping and argument checks.

Backends: ``FASTIPC_BACKEND=native|pure|auto`` (default ``auto``) picks the process-wide
default once, at import; every public class also takes ``backend=`` to choose per object.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import math
import os
import warnings
from types import ModuleType
from typing import Any, NoReturn, Optional, TypeVar

_T = TypeVar("_T", bound="FdOwner")

__all__ = [
    "BACKEND",
    "NATIVE_ERROR",
    "check",
    "check_timeout",
    "closed_error",
    "native",
    "ops",
    "posix_name",
    "raise_errno",
    "resolve_backend",
    "shm_name",
]

# Status codes of csrc/fastipc.h that are not errno values.
FIPC_EOF = -1000
FIPC_TOOBIG = -1001
FIPC_CORRUPT = -1002
FIPC_LARGE = -1003

ffi: Any = None
lib: Any = None
NATIVE_ERROR: Optional[str] = None
try:
    from fastipc import _fastipc

    ffi, lib = _fastipc.ffi, _fastipc.lib
except ImportError as exc:  # no compiled module: a source tree, or an unsupported platform
    if importlib.util.find_spec("fastipc._fastipc") is None:
        NATIVE_ERROR = "fastipc._fastipc was not built (was there a C compiler at install time?)"
    else:
        NATIVE_ERROR = f"{type(exc).__name__}: {exc}"


def _default_backend() -> str:
    wanted = os.environ.get("FASTIPC_BACKEND", "auto").strip().lower() or "auto"
    if wanted not in ("native", "pure", "auto"):
        raise ImportError(f"FASTIPC_BACKEND={wanted!r} is not one of 'native', 'pure' or 'auto'")
    if wanted == "native" and NATIVE_ERROR is not None:
        raise ImportError(
            f"FASTIPC_BACKEND=native, but fastipc._fastipc cannot be loaded ({NATIVE_ERROR})"
        )
    if wanted == "auto":
        if NATIVE_ERROR is None:
            return "native"
        warnings.warn(
            f"fastipc: native extension unavailable ({NATIVE_ERROR}); using the pure backend",
            RuntimeWarning,
            stacklevel=3,
        )
        return "pure"
    return wanted


BACKEND: str = _default_backend()


def resolve_backend(backend: Optional[str]) -> str:
    """Return ``"native"`` or ``"pure"`` for a ``backend=`` argument (None: the default)."""
    if backend is None:
        return BACKEND
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a str, not {type(backend).__name__}")
    if backend == "auto":
        return "native" if NATIVE_ERROR is None else "pure"
    if backend == "native":
        if NATIVE_ERROR is not None:
            raise ImportError(f"the native backend is unavailable: {NATIVE_ERROR}")
        return backend
    if backend == "pure":
        return backend
    raise ValueError(f"backend must be 'native', 'pure' or 'auto', not {backend!r}")


def ops(mechanism: str, backend: Optional[str]) -> ModuleType:
    """The backend module implementing ``mechanism`` (``fastipc._native.pipe``, ...)."""
    which = resolve_backend(backend)
    return importlib.import_module(f"fastipc._{which}.{mechanism}")


def backend_of(impl: ModuleType) -> str:
    """``"native"`` or ``"pure"``: which backend the module from :func:`ops` belongs to."""
    return impl.__name__.split(".")[1].lstrip("_")


def native() -> tuple[Any, Any]:
    """``(ffi, lib)`` of the compiled module; ImportError if it is unavailable."""
    if NATIVE_ERROR is not None:
        raise ImportError(f"the native backend is unavailable: {NATIVE_ERROR}")
    return ffi, lib


# ---------------------------------------------------------------------------- errors


def raise_errno(code: int, name: Optional[str] = None, timeout: Optional[float] = None) -> NoReturn:
    """Raise the exception for ``code``: a positive errno, or a negative FIPC_* status."""
    if code == FIPC_EOF:
        raise EOFError(f"{name}: the peer closed the channel" if name else "end of stream")
    if code == FIPC_TOOBIG:
        raise OSError(errno.EMSGSIZE, "message larger than max_message_size", name)
    if code == FIPC_CORRUPT:
        raise OSError(errno.EBADMSG, "corrupted header or frame in shared memory", name)
    if code == errno.ETIMEDOUT or code == errno.EAGAIN:
        raise TimeoutError(errno.ETIMEDOUT, _timeout_message(timeout), *([name] if name else []))
    raise OSError(code, os.strerror(code), *([name] if name else []))


def check(rc: int, name: Optional[str] = None, timeout: Optional[float] = None) -> int:
    """Return ``rc`` if it is >= 0, else raise what the C ``-errno``/status means."""
    if rc >= 0:
        return rc
    raise_errno(rc if rc <= FIPC_EOF else -rc, name, timeout)


def _timeout_message(timeout: Optional[float]) -> str:
    if timeout is None:
        return "timed out"
    return f"timed out after {timeout:g} s"


def timeout_error(timeout: Optional[float], name: Optional[str] = None) -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, _timeout_message(timeout), *([name] if name else []))


def closed_error(what: str) -> ValueError:
    return ValueError(f"I/O operation on closed {what}")


# ---------------------------------------------------------------------------- arguments


def check_timeout(timeout: Optional[float]) -> float:
    """Validate a ``timeout`` argument; return it as the C convention (-1.0 = forever)."""
    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if math.isnan(timeout):
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 or None, not {timeout!r}")
    if math.isinf(timeout):
        return -1.0
    return float(timeout)


def check_int(value: Any, what: str, low: int, high: int) -> int:
    """An int argument within [low, high]: TypeError for non-ints, ValueError out of range."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{what} must be between {low} and {high}, not {value}")
    return int(value)


def posix_name(name: Any) -> str:
    """Normalise a POSIX IPC name: ``"x"`` or ``"/x"`` -> ``"/x"`` (mq, sem)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare:
        raise ValueError("name must not be empty")
    if "/" in bare:
        raise ValueError(f"name must not contain '/' after the leading one: {name!r}")
    if "\0" in bare:
        raise ValueError("name must not contain NUL characters")
    if bare in (".", ".."):
        raise ValueError(f"name {name!r} is reserved")
    try:
        encoded = bare.encode()
    except UnicodeEncodeError as exc:
        raise ValueError(f"name {name!r} cannot be encoded: {exc.reason}") from None
    if len(encoded) > 255:
        raise ValueError(f"name is {len(encoded)} bytes long; the limit is 255")
    return "/" + bare


def shm_name(name: Any) -> str:
    """Same rules as :func:`posix_name`; shm segments live at ``/dev/shm/<name>``."""
    return posix_name(name)


def byte_view(data: Any) -> memoryview:
    """``data`` (any contiguous bytes-like object) as a flat memoryview of bytes, no copy.
    ``str`` and non-buffers raise TypeError with a message that says what to do."""
    if isinstance(data, str):
        raise TypeError("a bytes-like object is required, not 'str' (encode it first)")
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(data).__name__!r}") from None
    if not view.contiguous:
        raise TypeError(f"a contiguous bytes-like object is required, not {type(data).__name__!r}")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


class FdOwner:
    """An object that owns one kernel fd and a backend object (``_core``) working on it:
    ``fileno()``, ``closed``, ``backend``, an idempotent ``close()``, the context manager and
    a ``__del__`` safety net. Subclasses set ``_fd``, ``_impl`` and ``_core``."""

    _what = "object"  # named in the ValueError of a closed object
    _fd = -1
    _impl: ModuleType
    _core: Any

    def fileno(self) -> int:
        """The kernel fd (non-inheritable)."""
        if self._fd < 0:
            raise closed_error(self._what)
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def backend(self) -> str:
        return backend_of(self._impl)

    def close(self) -> None:
        """Close the fd. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._core.close()
            os.close(fd)

    def __enter__(self: _T) -> _T:
        self.fileno()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if self._fd >= 0:
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._fd < 0 else f"fd={self._fd}"
        return f"<{type(self).__name__} {state} backend={self.backend}>"
