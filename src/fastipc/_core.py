"""What every mechanism shares: backend selection, error mapping, argument checks, the one
deadline object and EINTR retry of every blocking call, and the life cycle of every public
object (:class:`Handle`).

Backends: ``FASTIPC_BACKEND=native|pure|auto`` (default ``auto``) picks the process-wide
default once, at import; every public class also takes ``backend=`` to choose per object.
"""

from __future__ import annotations

import errno
import functools
import importlib
import importlib.util
import inspect
import math
import os
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any, ClassVar, Generic, NoReturn, Optional, TypeVar, overload

_T = TypeVar("_T", bound="Handle")
_F = TypeVar("_F", bound=Callable[..., Any])
_R = TypeVar("_R")

__all__ = [
    "BACKEND",
    "NATIVE_ERROR",
    "Deadline",
    "Fixed",
    "Handle",
    "check",
    "check_timeout",
    "closed_error",
    "native",
    "ops",
    "posix_name",
    "raise_errno",
    "resolve_backend",
    "retry",
    "shm_name",
    "uses_handle",
]

# Status codes of csrc/fastipc.h that are not errno values.
FIPC_EOF = -1000
FIPC_TOOBIG = -1001
FIPC_CORRUPT = -1002
FIPC_NEED = -1003  # the next message needs a larger buffer (every mechanism)

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


def check_create_mode(create: Any, mode: Any) -> int:
    """Check the two arguments every named object takes: ``create`` a bool, ``mode`` the
    permission bits, 0 to 0o777. Returns ``mode``."""
    if not isinstance(create, bool):
        raise TypeError(f"create must be a bool, not {type(create).__name__}")
    return check_int(mode, "mode", 0, 0o777)


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
    if not view.c_contiguous:  # (a Fortran-ordered view cannot be cast to bytes)
        raise TypeError(f"a contiguous bytes-like object is required, not {type(data).__name__!r}")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


# ---------------------------------------------------------------------------- deadlines

_monotonic = time.monotonic
_EINTR = -errno.EINTR


class Deadline:
    """The time limit of one blocking call, made once from its ``timeout`` and asked for the
    time left each time the call waits again (after EINTR, after a partial transfer...).

    ``timeout`` is the validated C convention of :func:`check_timeout`: ``-1.0`` waits
    forever, ``0.0`` tries once, ``> 0`` seconds. :meth:`left` answers in the same
    convention, so it passes straight to a C call. ``start`` is when the call began, for a
    Deadline made only on a slow path (``time.monotonic()`` taken before the first attempt)."""

    __slots__ = ("end", "timeout")

    def __init__(self, timeout: float, start: Optional[float] = None) -> None:
        self.timeout = timeout
        self.end = timeout if timeout <= 0 else (_monotonic() if start is None else start) + timeout

    @classmethod
    def of(cls, timeout: Optional[float]) -> Deadline:
        """A Deadline for a user's ``timeout`` argument (validated: ValueError if negative).
        No timeout gives the one shared Deadline that never expires (a Deadline does not
        change once made)."""
        if timeout is None and cls is Deadline:
            return _FOREVER
        return cls(check_timeout(timeout))

    def left(self) -> float:
        """Seconds left: ``-1.0`` for no limit, ``0.0`` once expired (try once more)."""
        end = self.end
        if end <= 0:
            return end
        left = end - _monotonic()
        return left if left > 0 else 0.0

    def expired(self) -> bool:
        """True once no time is left (a ``timeout=0`` call has none from the start)."""
        return self.end == 0 or (self.end > 0 and _monotonic() >= self.end)

    def error(self, name: Optional[str] = None) -> TimeoutError:
        """The TimeoutError for this deadline, naming the object."""
        return timeout_error(None if self.timeout < 0 else self.timeout, name)

    def left_or_raise(self, name: Optional[str] = None) -> float:
        """:meth:`left`, or the TimeoutError of :meth:`error` once expired: the step of a
        loop that tries, then waits for the time left."""
        left = self.left()
        if left == 0:
            raise self.error(name)
        return left


_FOREVER = Deadline(-1.0)


def retry(rc: int, again: Callable[[float], int], deadline: Deadline,
          name: Optional[str] = None) -> int:
    """The slow path of every blocking call; the fast path made the first attempt and got
    ``rc``. While that is ``-EINTR``, the Python signal handlers have run (a handler that
    raises ends the call here) and the call is made again with the time left (PEP 475). Then
    ``rc`` is returned if it is ``>= 0``, or mapped to its exception by :func:`check`."""
    while rc == _EINTR:
        rc = again(deadline.left())
    if rc >= 0:
        return rc
    timeout = None if deadline.timeout < 0 else deadline.timeout
    raise_errno(rc if rc <= FIPC_EOF else -rc, name, timeout)


# ---------------------------------------------------------------------------- life cycle


def given_up_in_child(method: str) -> weakref.WeakSet[Any]:
    """A set of live objects on which a child made by fork() calls ``method`` at once, then
    forgets them: the child gives up its copies (a parent's liveness lock, name or cursor
    is the parent's). The caller adds an object while it holds such a thing."""
    objs: weakref.WeakSet[Any] = weakref.WeakSet()

    def after_fork_in_child() -> None:
        failed: list[Exception] = []
        for obj in list(objs):
            try:
                getattr(obj, method)()
            except Exception as exc:  # one object's failure is not the others'
                failed.append(exc)
        objs.clear()
        if failed:
            raise failed[0]  # reported by Python as an exception of a fork hook

    os.register_at_fork(after_in_child=after_fork_in_child)
    return objs


# Every native handle: a child made by fork() has none of the parent's other threads, so it
# forgets their calls (the busy count, the call buffers they held) before anything else runs
# there; a mechanism's own fork hook (_forked) comes after.
_native_handles: weakref.WeakSet[Any] = given_up_in_child("_forget_calls")


def messages(end: Any) -> Iterator[bytes]:
    """``end.recv()`` until the stream ends (EOFError): the ``__iter__`` of every receiving
    end (a subclass's own ``recv`` is the one called; a closed end raises ValueError)."""
    recv = end.recv
    while True:
        try:
            yield recv()
        except EOFError:
            return


class Fixed(Generic[_R]):
    """A read-only attribute of a public object, kept in a private one: what
    ``@property`` plus ``def x(self): return self._x`` would say in four lines.

        framing = Fixed[str]("_framing", "How messages are delimited.")
        size = Fixed[int]("_size", "Bytes mapped.", open_only=True)

    ``open_only``: reading it on a closed :class:`Handle` raises ValueError. Assigning
    raises AttributeError, as for a property without a setter."""

    def __init__(self, attr: str, doc: str = "", *, open_only: bool = False) -> None:
        self._attr = attr
        self._open_only = open_only
        self.__doc__ = doc
        self._name = attr.lstrip("_")

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: Optional[type] = None) -> Fixed[_R]: ...
    @overload
    def __get__(self, obj: object, owner: Optional[type] = None) -> _R: ...

    def __get__(self, obj: Any, owner: Optional[type] = None) -> Any:
        if obj is None:
            return self
        if self._open_only and obj._closed:
            raise obj._closed_error()
        return getattr(obj, self._attr)

    def __set__(self, obj: object, value: object) -> None:
        raise AttributeError(f"{self._name} is read-only")


class Handle:
    """The life cycle of every public fastipc object, written once.

    - ``closed``; ``close()`` is idempotent; ``with obj:`` closes at the end of the block;
      ``__del__`` closes what was forgotten; ``__repr__`` names the object and its backend;
      ``fileno()`` for objects with a kernel fd (``_fd``).
    - A method decorated with :func:`uses_handle` raises ``ValueError`` on a closed object,
      whatever its arguments, and counts itself busy while it runs.
    - **Closing from another thread is safe.** ``close()`` marks the object closed and calls
      :meth:`_wake`, which makes every blocked call of this object return promptly (the
      subclass knows how: a wake-up fd, a flag in shared memory, ``shutdown()``). The
      resources are freed by :meth:`_free` only once no call is busy: by ``close()`` itself
      when idle, else by the last call to leave, so that no fd number is closed (and reused)
      and no memory is unmapped while a call may still use it. The woken call raises
      ``ValueError``.

    The busy count is a list: ``append`` and ``pop`` are atomic under the GIL, so entering
    and leaving cost two C calls and no lock. Entering appends *then* checks ``closed``, and
    ``close()`` sets ``closed`` *then* checks the count, so one of the two always sees the
    other. Subclasses call :meth:`_open_handle` in ``__init__`` once their resources exist."""

    _what = "object"  # named in the ValueError of a closed object
    _closed = True  # until _open_handle(): a half-built object is closed
    # The name of this class's native handle type in fastipc._fastipc (csrc/py/), or None.
    # With one, an object of the native backend is an instance of concrete(cls, "native"),
    # a subclass of that type and this class whose per-message methods are the type's.
    _handle_type: Optional[str] = None
    _native = False  # True on the native classes that concrete() makes
    _public: Optional[type] = None  # on those: the class they stand for
    # Methods the native class of this class takes before the handle type's (a C call in a
    # Python frame, for instance): see concrete().
    _native_methods: ClassVar[dict[str, Any]] = {}

    def __new__(cls, *args: Any, backend: Optional[str] = None, **kwargs: Any) -> Any:
        impl = concrete(cls, resolve_backend(backend))
        return _fastipc.Handle.__new__(impl) if impl._native else object.__new__(impl)

    _fd = -1
    _backend = "?"
    _calls: list[None]
    _unfreed: list[bool]

    def _open_handle(self, backend: str, fd: int = -1) -> None:
        self._backend = backend
        self._fd = fd
        self._calls = []
        self._unfreed = [True]
        self._closed = False
        if backend == "native" and hasattr(type(self), "_forget_calls"):  # a native handle
            _native_handles.add(self)

    # ---- what subclasses provide
    def _wake(self) -> None:
        """Make calls of this object blocked in other threads return (close() calls this)."""

    def _free(self) -> None:
        """Release the resources (fd, mapping, C memory). Runs once, when no call is busy."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def _describe(self) -> str:
        """What ``__repr__`` says of an open object, besides its type and backend."""
        return f"fd={self._fd}" if self._fd >= 0 else "open"

    # ---- the life cycle
    closed = Fixed[bool]("_closed", "Whether close() was called.")
    backend = Fixed[str]("_backend", '``"native"`` or ``"pure"``.')

    def _closed_error(self) -> ValueError:
        return closed_error(self._what)

    # The id of the exception with which a call closed its own object (a frame it cut
    # short): that call raises it, not the ValueError of an object closed under it. An id,
    # not the exception, so that no reference cycle keeps the object alive.
    _closing_exc = 0

    def _close_raising(self, exc: BaseException) -> None:
        """Close this object from within a call that then raises ``exc``."""
        self._closing_exc = id(exc)
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _enter(self) -> None:
        calls = self._calls
        calls.append(None)
        if self._closed:
            calls.pop()
            raise self._closed_error()

    def _leave(self) -> None:
        calls = self._calls
        calls.pop()
        if self._closed and not calls:
            self._free_once()

    def _free_once(self) -> None:
        try:
            self._unfreed.pop()
        except (IndexError, AttributeError):  # freed already, or never opened
            return
        self._free()

    def close(self) -> None:
        """Close the object; calls blocked in other threads end with ValueError. Idempotent."""
        if self._closed:
            return
        calls = self._calls
        calls.append(None)  # busy while waking, so a woken call leaving cannot free under _wake
        self._closed = True
        try:
            if len(calls) > 1:
                self._wake()
        finally:
            calls.pop()
            if not calls:
                self._free_once()

    def fileno(self) -> int:
        """The kernel fd (non-inheritable)."""
        if self._closed:
            raise self._closed_error()
        if self._fd < 0:
            raise OSError(errno.EBADF, f"{self._what} has no file descriptor")
        return self._fd

    def __enter__(self: _T) -> _T:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._closed:
            try:
                self.close()
            except Exception:  # at interpreter exit modules may be half torn down
                pass

    def __repr__(self) -> str:
        state = "closed" if self._closed else self._describe()
        return f"<{type(self).__name__} {state} backend={self._backend}>"


_concrete: dict[type, type] = {}


def concrete(cls: type[_T], backend: str) -> type[_T]:
    """The class of ``cls``'s objects on ``backend``: ``cls`` itself, or for the native
    backend of a class with a ``_handle_type``, a subclass made once and named as ``cls``:

    - for the class that names the handle type, ``(handle type, cls)``: the C methods come
      first, then the class's own (the pure backend's), plus its ``_native_methods``;
    - for a subclass of it, ``(cls, the native class of that class)``: the subclass's own
      methods come first, and their ``super()`` calls reach the C methods.

    ``_native`` is True on a native class, and ``_public`` is the class it stands for."""
    name = cls._handle_type
    if backend != "native" or name is None or cls._native:
        return cls
    impl = _concrete.get(cls)
    if impl is None:
        owner = next(c for c in cls.__mro__ if "_handle_type" in vars(c))
        ns: dict[str, Any] = {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                              "__doc__": cls.__doc__, "_native": True, "_public": cls}
        if owner is cls:
            ns.update(vars(cls).get("_native_methods", {}))
            bases: tuple[type, ...] = (getattr(_fastipc, name), cls)
        else:
            bases = (cls, concrete(owner, backend))
        impl = type(cls.__name__, bases, ns)
        _concrete[cls] = impl
    return impl


_WRAPPER = """
def {name}({params}):
    {this}._enter()
    try:
        return method({args})
    except (OSError, EOFError):
        if {this}._closed:
            raise {this}._closed_error() from None
        raise
    finally:
        {this}._leave()
"""


def uses_handle(method: _F) -> _F:
    """Decorate a method of a :class:`Handle`: ValueError when the object is closed (checked
    before the arguments' values), busy while it runs, and ValueError when another thread
    closed the object during the call (whatever the call then returned or raised).

    The wrapper is generated with the method's own signature, so that a call costs one
    extra frame (~0.1 µs) and no ``*args``/``**kwargs`` packing (~0.3 µs with them)."""
    return generated(method, _WRAPPER, {"method": method, "closed_error": closed_error})


def generated(method: _F, template: str, names: dict[str, Any], **fields: str) -> _F:
    """A function made from ``template`` with ``method``'s exact signature, wrapped as
    ``method`` (name, docstring): the dataclasses way, so that a call costs no
    ``*args``/``**kwargs`` packing. ``{name}``, ``{params}`` (the signature), ``{this}`` (the
    first parameter), ``{args}`` (every parameter passed on, keyword-only ones by keyword),
    ``{rest}`` (those after the first, all by position) and ``fields`` are filled in;
    ``names`` are the globals it sees."""
    params, args = [], []
    defaults = dict(names)
    star = False
    for p in inspect.signature(method).parameters.values():
        text = p.name
        if p.kind is p.VAR_POSITIONAL:
            text, star = "*" + p.name, True
            args.append(text)
        elif p.kind is p.VAR_KEYWORD:
            text = "**" + p.name
            args.append(text)
        elif p.kind is p.KEYWORD_ONLY:
            if not star:
                params.append("*")
                star = True
            args.append(f"{p.name}={p.name}")
        else:
            args.append(p.name)
        if p.default is not p.empty:
            defaults[f"_default_{p.name}"] = p.default
            text += f"=_default_{p.name}"
        params.append(text)
    rest = [a.partition("=")[0] for a in args[1:]]
    source = template.format(name=method.__name__, this=args[0], params=", ".join(params),
                             args=", ".join(args), rest=", ".join(rest), **fields)
    exec(source, defaults)
    return functools.wraps(method)(defaults[method.__name__])  # type: ignore[return-value]


def uses_handle_async(method: Callable[..., Awaitable[_R]]) -> Callable[..., Awaitable[_R]]:
    """The awaitable twin of :func:`uses_handle`: the object counts as busy while the
    coroutine runs (so nothing is freed under it), ValueError on a closed object, and
    ValueError when the object was closed during the call."""

    @functools.wraps(method)
    async def call(self: Handle, *args: Any, **kwargs: Any) -> _R:
        self._enter()
        try:
            return await method(self, *args, **kwargs)
        except (OSError, EOFError) as exc:
            if self._closed and self._closing_exc != id(exc):
                raise self._closed_error() from None
            raise
        finally:
            self._leave()

    return call


# The native handle types (csrc/py/) join fastipc._fastipc once what they call here exists.
if NATIVE_ERROR is None and not hasattr(_fastipc, "Handle") and lib.fipc_py_install() != 0:
    raise ImportError("fastipc: the native handle types could not be set up (see above)")
