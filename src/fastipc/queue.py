"""A drop-in for ``multiprocessing.Queue`` in shared memory, for any number of producers and
consumers in any processes and threads, robust to ``kill -9`` of any of them.

>>> from fastipc.queue import Queue
>>> with Queue() as q:
...     q.put({"x": 1})
...     q.get(timeout=1)
{'x': 1}

Objects travel pickled with protocol 5: their out-of-band buffers (numpy arrays,
``pickle.PickleBuffer``, memoryviews) are copied once into shared memory and once out, never
through the pickle stream (the standard pickler writes ``bytes`` and ``bytearray`` in band).
``put_bytes``/``get_bytes`` move raw bytes with no pickling at all. A message larger than half
the ring travels in a segment of its own (``<name>.<id>`` in /dev/shm), created by the
producer and removed by the consumer that takes it. What does not fit the ring waits in
spill files beside it (``<name>.s<seq>``), so that with ``maxsize=0`` a put never blocks
and never raises ``queue.Full``, as multiprocessing.Queue.

:class:`Queue` with no name is anonymous: it gets a unique name, and the process that made it
owns it (removes it when it closes the queue or exits normally). :class:`NamedQueue` (re-
exported as ``shm.Queue``) attaches to a queue by name, or creates it with ``create=True``;
a named queue outlives ``close()`` (another process can still attach and take what is
queued) until ``unlink()`` removes its name.
Pickling a queue (to ``multiprocessing.Process`` under spawn or forkserver) re-attaches it
by name in the receiving process; a fork child simply shares it. The binary layout, shared
by the native and pure backends, is in ``docs/queue-layout.md``.
"""

from __future__ import annotations

import errno
import inspect
import io
import mmap
import operator
import os
import pickle
import queue as _stdqueue
import re
import signal
import struct
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, TypeVar

from fastipc import _aio, _core
from fastipc._backend import queue as L
from fastipc._backend.queue import (
    KIND_BLOB,
    KIND_BYTES,
    KIND_OOB,
    KIND_PICKLE,
    MARK,
    NEED,
    STAGE,
    QueueOps,
)
from fastipc._core import Deadline, byte_view, check_int, check_timeout, uses_handle
from fastipc._segment import (
    DEFAULT_SPIN,
    LOCK_CREATOR,
    SegmentEnd,
    check_bool,
    check_spin,
    hold_lock,
    lock_held,
    map_segment,
    open_segment,
    open_to_inspect,
    owner_uid,
    segment_path,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Empty",
    "Full",
    "NamedQueue",
    "Queue",
    "QueueInfo",
    "describe",
]

_F = TypeVar("_F", bound=Callable[..., Any])
DEFAULT_CAPACITY = 1 << 22
MAX_CAPACITY = 1 << 32
DEFAULT_MAX_MESSAGE_SIZE = 1 << 30
MAX_MESSAGE_LIMIT = (1 << 63) - 1
ANONYMOUS_PREFIX = "fastipc-queue-"  # anonymous queues are named <prefix><pid>-<random>
_NAME_ROOM = 20  # bytes a blob segment's suffix adds to the queue's name
_BLOB_MAGIC = b"FPCQBLOB"
_BLOB_HEAD = struct.Struct("<8sQ")  # magic, payload length
_BLOB_REF = struct.Struct("<QI")  # in the ring: payload length, inner kind; then the suffix
_OOB_COUNT = struct.Struct("<Q")
_ALIGN = 16  # out-of-band buffers start at multiples of this within a message
_PAD = bytes(_ALIGN)
_dumps = pickle.dumps
_loads = pickle.loads
_monotonic = time.monotonic
_LEN = 0xFFFFFFFF  # a get returns kind << 32 | length
# Entries of Queue._pending besides (payload, kind): what a get took and has not delivered
_DECODED = -1  # (the object, _DECODED)
_MARKED = -2  # (a buffer whose last MARK bytes are the mark of the get that took into it)
_BATCH = -3  # ((out, batch, decoded), _BATCH): a get_many batch marked in out
_LIST = -4  # (objects, _LIST): what a get_many delivered as an exception was raised into it
_NOTHING = object()  # what a get's `held` holds until the call delivers
_iadd: Callable[[list[Any], Any], Any] = operator.iadd  # C: nothing runs before it is done
_FAILED = object()
_NO_MARK = bytes(MARK)  # in a batch's decoded list: the message that failed to decode (consumed)


class Full(_stdqueue.Full, TimeoutError):
    """The queue stayed full (``maxsize`` messages queued) until the timeout: ``queue.Full``
    as ``multiprocessing.Queue`` raises it, and a TimeoutError."""


class Empty(_stdqueue.Empty, TimeoutError):
    """No message came before the timeout: ``queue.Empty``, and a TimeoutError."""


def _new_bytearray(n: int) -> bytearray:
    """A bytearray of n bytes that is about to be overwritten (not zero-filled on CPython)."""
    if _new_ba is not None and n:
        return _new_ba(None, n)  # type: ignore[no-any-return]
    return bytearray(n)


try:
    import ctypes

    _new_ba: Any = ctypes.pythonapi.PyByteArray_FromStringAndSize
    _new_ba.restype = ctypes.py_object
    _new_ba.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
except (AttributeError, ImportError, TypeError):  # not CPython
    _new_ba = None


def _path(name: str) -> str:
    """The queue's path in /dev/shm (its name leaves room for its messages' segments)."""
    bare, path = segment_path(name)
    if len(bare.encode()) > 255 - _NAME_ROOM:
        raise ValueError(f"a queue name is at most {255 - _NAME_ROOM} bytes long")
    return path


def _view(buffer: Any, fmt: Any, shape: tuple[int, ...]) -> Any:
    """Unpickling a memoryview: the out-of-band buffer, with its format and shape back."""
    view = memoryview(buffer)
    if fmt == "B" and shape == (len(view),):
        return view
    if not view.nbytes:  # memoryview.cast refuses zeros in a shape: 1-D only (put checks)
        return view.cast(fmt)
    return view.cast("B").cast(fmt, shape)


def _rebuildable(view: memoryview) -> Any:
    """``view`` as the C-contiguous buffer :func:`_view` rebuilds on the other side, checked
    now: a format or shape ``memoryview.cast`` cannot make again (a byte order or a type
    that is not native, a struct, ``(0, 3)``...) raises ValueError here, before anything is
    queued, instead of failing in the consumer's get."""
    fmt: Any = view.format
    shape = view.shape or ()
    try:
        if not view.nbytes:
            if len(shape) != 1:
                raise ValueError("zeros in a shape of more than one dimension")
            return memoryview(b"").cast(fmt)  # also checks the format
        flat = view if view.c_contiguous else memoryview(view.tobytes())
        return flat.cast("B").cast(fmt, shape)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a memoryview of format {fmt!r} and shape {shape} cannot be put: "
                         f"memoryview.cast cannot rebuild it ({exc}); put its bytes, or an "
                         f"array of a native format") from None


class _ViewPickler(pickle.Pickler):
    """The pickler of objects holding a ``memoryview`` (which ``pickle`` refuses): each
    view travels out of band, and unpickles as a memoryview of the copied bytes, with its
    format and shape (those :func:`_rebuildable` accepts; it refuses the others)."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is memoryview:
            fmt: Any = obj.format
            shape = obj.shape or ()
            flat = _rebuildable(obj)
            return _view, (pickle.PickleBuffer(obj if obj.c_contiguous else flat), fmt,
                           shape)
        return NotImplemented


def _dumps_oob(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``pickle.dumps(obj, 5, buffer_callback=...)`` and its out-of-band buffers; objects
    holding a memoryview take the slower pickler that knows them (the fast one raised
    TypeError for them). Each attempt collects its own buffers: those of an abandoned first
    attempt must not precede the retry's (they would shift every buffer by one)."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        return _dumps(obj, 5, buffer_callback=buffers.append), buffers
    except TypeError:
        buffers = []
        out = io.BytesIO()
        _ViewPickler(out, 5, buffer_callback=buffers.append).dump(obj)
        return out.getvalue(), buffers


class _OutOfBand(TypeError):
    """Raised by the hot put's buffer_callback: the object has out-of-band buffers."""


def _in_band_only(buffer: pickle.PickleBuffer) -> None:
    """The buffer_callback of the hot put's first pickling: an object with out-of-band
    buffers (numpy arrays...) abandons it at its first buffer and takes the full path
    (:meth:`Queue._encode`). A constant callback costs less than a fresh list's ``append``
    for every small object, which has none."""
    raise _OutOfBand


# Types of objects whose first pickling was abandoned (out-of-band buffers, a memoryview):
# their next objects go straight to the full path instead of paying for an abandoned
# pickling again (a small numpy array's costs about as much as the full one). A hint only:
# a type here whose object has no buffers is pickled once by the full path, correctly.
_buffered: set[type] = set()
_BUFFERED_MAX = 1024  # then it starts afresh (classes made at run time must not pile up)


def _pickle_in_band(obj: Any) -> Optional[bytes]:
    """The pickle of ``obj`` if it has no out-of-band buffers (and no memoryview), else
    None: the full path (:meth:`Queue._encode`) must pickle it (and tell why it cannot).
    put() has this inline, its hot path."""
    if _buffered and type(obj) in _buffered:
        return None
    try:
        return _dumps(obj, 5, buffer_callback=_in_band_only)
    except TypeError:
        _remember_buffered(type(obj))
        return None


def _remember_buffered(cls: type) -> None:
    if len(_buffered) >= _BUFFERED_MAX:
        _buffered.clear()
    _buffered.add(cls)


def _handler_codes() -> set[Any]:
    codes = set()
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            codes.add(code)
    return codes


def _interrupted(exc: BaseException) -> bool:
    """Whether ``exc`` cut a get short from outside (so the message it took is kept): not an
    Exception (KeyboardInterrupt, SystemExit...), or raised by a Python signal handler (its
    frame is in the traceback). Other errors are the message's own (it fails to unpickle):
    it is consumed and the error raised once."""
    if not isinstance(exc, Exception):
        return True
    codes = _handler_codes()
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


def _mark_of(buf: Any) -> int:
    return int.from_bytes(buf[len(buf) - MARK:len(buf)], "little")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


_BLOB_SUFFIX = re.compile(r"[0-9a-f]{16}")


def _parse_ref(ref: bytes) -> Optional[tuple[int, int, str]]:
    """(length, inner kind, suffix) of a BLOB frame's payload, or None if malformed."""
    try:
        total, kind = _BLOB_REF.unpack_from(ref, 0)
        suffix = ref[_BLOB_REF.size:].decode("ascii")
    except (struct.error, UnicodeDecodeError):
        return None
    return (total, kind, suffix) if _BLOB_SUFFIX.fullmatch(suffix) else None


_SPILL_SUFFIX = re.compile(r"s[0-9]{1,10}")


def _segments_of(path: str) -> list[str]:
    """The message segments and spill files of the queue at ``path`` in /dev/shm."""
    directory, base = os.path.split(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    prefix = base + "."
    return [f"{directory}/{n}" for n in names if n.startswith(prefix) and (
        _BLOB_SUFFIX.fullmatch(n[len(prefix):]) or _SPILL_SUFFIX.fullmatch(n[len(prefix):]))]


def _remove_queue(path: str) -> None:
    """The owner's close (or normal exit): the queue's name, its messages' segments and its
    spill files."""
    _unlink_quietly(path)
    for segment in _segments_of(path):
        _unlink_quietly(segment)


def _tell_sent(exc: BaseException, n: int) -> None:
    """Say on ``exc`` how many messages of a batch call that it stopped part way went:
    ``messages_sent``, the name every ``*_many`` call of fastipc uses, and ``messages_put``,
    the queues' earlier name for it (deprecated, kept as an alias of the same value)."""
    exc.messages_sent = exc.messages_put = n  # type: ignore[attr-defined]


def _batch_sent(exc: BaseException) -> int:
    """How many messages of the batch of a ``_put_batch`` call that raised ``exc`` went
    (both backends set ``messages_sent``; ``messages_put`` is read for older callers)."""
    return int(getattr(exc, "messages_sent", getattr(exc, "messages_put", 0)))


def _timeout(block: bool, timeout: Optional[float]) -> float:
    """The C timeout of a put/get: block=False tries once, whatever timeout says (it is not
    even checked, as in multiprocessing: ``put(x, False, -1)`` works)."""
    if not block:
        return 0.0
    return -1.0 if timeout is None else check_timeout(timeout)


def _async_timeout(block: bool, timeout: Optional[float]) -> Optional[float]:
    """The timeout of an awaitable: block=False tries once, whatever timeout says."""
    if not block:
        return 0.0
    check_timeout(timeout)
    return timeout


_DELIVERED = """
def {name}({params}):
    held = [_NOTHING]
    try:
        return {this}.{take}(held, {rest})
    except BaseException:
        if held[0] is not _NOTHING:
            {this}._pending[:0] = ((held[0], kind),)
        raise
"""


def _delivering(take: str, kind: int) -> Callable[[_F], _F]:
    """Make a get-method of the signature and docstring of the stub it decorates: it calls
    the taking method ``take`` with ``held`` and its arguments, by position; when an
    exception is raised into that call as it returns (a signal handler's), what it took
    (in ``held``) is kept in front of _pending, as ``kind``, for the next get."""

    def make(stub: _F) -> _F:
        return _core.generated(stub, _DELIVERED, {"_NOTHING": _NOTHING, "kind": kind},
                               take=take)

    return make


_TAKEN = """
def {name}({params}):
    {this}._enter()
    try:
        got = held[0] = {this}.{take}({pass_on})
        return got
    finally:
        {this}._leave()
"""


def _taking(take: str) -> Callable[[_F], _F]:
    """Make a pure taking method (``_get``...) of the signature of the stub it decorates,
    ``(self, held, ...)``: ``take(...)`` counted busy, what it delivers stored in ``held``
    before the count is left (a plain call, no frame of a helper, no ``*args``: a call with
    unpacked arguments would run the signal handlers as it returns, before the store)."""

    def make(stub: _F) -> _F:
        pass_on = ", ".join(list(inspect.signature(stub).parameters)[2:])
        return _core.generated(stub, _TAKEN, {}, take=take, pass_on=pass_on)

    return make


def _unpark() -> None:
    """Nothing to undo after a park: the waiting flag is shared by every sleeper of a side
    (a blocking one in another process too), so only the other side's commit lowers it."""


class Queue(SegmentEnd):
    """A multiprocessing.Queue in shared memory (see the module docstring).

    ``Queue(maxsize=0)`` makes an anonymous queue, owned by this process (its close
    removes it); ``Queue(name=..., create=True)`` creates the named queue (``close()``
    leaves the name, ``unlink()`` removes it); ``Queue(name=...)`` attaches to an existing
    one (``FileNotFoundError`` if absent; ``maxsize`` and ``capacity`` are then the
    creator's). ``name`` is kept as given: ``"x"`` and ``"/x"`` are the same queue.
    ``capacity`` is the ring's size in bytes (a power of two, >= 4096); messages up to half
    of it travel through the ring, larger ones in a segment of their own; what does not fit
    the ring waits in spill files (bounded by /dev/shm: ENOSPC, never a hang).
    ``max_message_size`` bounds one message (pickled size plus buffers): ValueError above it.
    """

    _what = "Queue"
    _handle_type = "QueueHandle"  # csrc/py/queue.c: put, put_bytes, the taking calls of gets
    _owner = False  # this object created the queue (and holds the liveness lock)
    _anonymous = False  # no name was given: the queue is this object's, removed at close
    _ops: QueueOps
    _uid = -1  # the segment's owner (pickling carries it: the receiver trusts it too)
    _finalizer: Optional[weakref.finalize[Any, Any]] = None

    def __init__(self, maxsize: int = 0, *, name: Optional[str] = None,
                 create: Optional[bool] = None, capacity: int = DEFAULT_CAPACITY,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, mode: int = 0o600,
                 spin: Optional[float] = None, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        maxsize = check_int(maxsize, "maxsize", -(1 << 62), 1 << 31)
        maxsize = max(maxsize, 0)  # multiprocessing.Queue: <= 0 means no limit
        capacity = check_int(capacity, "capacity", L.MIN_CAPACITY, MAX_CAPACITY)
        if capacity & (capacity - 1):
            raise ValueError(f"capacity must be a power of two, not {capacity}")
        self._max_message = check_int(max_message_size, "max_message_size", 0,
                                      MAX_MESSAGE_LIMIT)
        mode = check_int(mode, "mode", 0, 0o777)
        self._spin = check_spin(spin)
        uid = owner_uid(owner)  # whom an attaching queue trusts (creating ignores it)
        which = _core.resolve_backend(backend)
        impl = _core.ops("queue", which)
        if name is None:
            if create is False:
                raise ValueError("an anonymous queue is always created: give a name to attach")
            name = f"{ANONYMOUS_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:16]}"
            create = True
            self._anonymous = True
        elif create is None:
            create = False
        else:
            check_bool(create, "create")
        self._set_name(name)  # as given (validated): "x" and "/x" name the same queue
        self._mode = mode
        if create:
            size = L.HEADER + capacity

            def build(fd: int, mm: mmap.mmap) -> QueueOps:
                _core.check(impl.format(mm, size, self._max_message, maxsize, os.getpid()),
                            self._name)
                return self._new_ops(impl, mm, size, mode)

            fd, self._mm, self._ops = self._publish(size, mode, build, _free_ops)
            self._owner = True
            self._uid = os.geteuid()
        else:
            fd, st = self._attach_or_raise(uid)
            try:
                self._uid = st.st_uid
                size = st.st_size
                self._mode = mode = st.st_mode & 0o777  # the creator's, for the files it adds
                if size < L.HEADER + L.MIN_CAPACITY:
                    raise OSError(errno.EBADMSG, "not a fastipc queue", self._name)
                self._mm = map_segment(fd, size)
                try:
                    self._ops = self._new_ops(impl, self._mm, size, mode)
                except BaseException:
                    self._mm.close()
                    raise
            except BaseException:
                os.close(fd)
                raise
        self._size = size
        self._capacity = size - L.HEADER
        self._ring_max = self._capacity // 2 - L.FRAME - 8  # payloads the ring takes
        self._hot_max = min(self._ring_max, self._max_message)
        self._spin_async = _aio.Spin(min(self._spin, DEFAULT_SPIN))  # on the loop thread
        # (pure backend) staging buffers and get_many's output buffers, one per concurrent
        # call: a thread pops one (list.pop and append are atomic) and puts it back after
        self._stages: list[tuple[Any, Any, Any]] = []
        self._outs: list[tuple[bytearray, Any]] = []
        # messages taken from the queue but not delivered yet, for the next gets of this
        # handle, in order: those of a get an exception cut short (what it held, marked by
        # the backend as it took them), and those of a get_many batch after one failed to
        # unpickle. Entries: (object, _DECODED), (payload, kind), (marked buffer, _MARKED),
        # ((out, batch, decoded), _BATCH); see _deliver.
        self._pending: list[tuple[Any, int]] = []
        self._blob_opener = partial(os.open, mode=mode)  # a C call: see _put_blob
        if which == "native":  # the handle (csrc/py/queue.c) calls the C core on self._ops's
            self._open(self._ops, self._ops.address(), self._pending,  # type: ignore[attr-defined]
                       self._hot_max, self._max_message, self._out_size())
        if self._anonymous:  # removed at close, or at the normal exit of its creator
            self._finalizer = weakref.finalize(self, _remove_queue, self._path)
        elif self._owner:  # the name stays: the header says the creator closed it
            self._finalizer = weakref.finalize(self, L.mark_kept, self._mm)
        self._track()
        self._open_handle(which, fd)

    def _set_name(self, name: Any) -> None:
        """SegmentEnd's, with room left in the name for its messages' segments."""
        self._path = _path(name)
        self._name = name

    def _new_ops(self, impl: Any, mm: mmap.mmap, size: int, mode: int) -> QueueOps:
        """The backend's view of the queue in ``mm`` (it checks the header)."""
        ops_cls: type[QueueOps] = impl.Ops
        try:
            return ops_cls(mm, size, self._spin, f"{self._path}.s", mode)
        except OSError as exc:
            raise OSError(exc.errno, "not a fastipc queue, or a corrupted header",
                          self._name) from None

    # ---------------------------------------------------------------- life cycle
    def _forked(self) -> None:
        """In a child made by fork(), which keeps using the queue but gives up what is the
        parent's: the creator's liveness lock (the child's fd gets an open file description
        of its own) and name (the child must not remove the queue when it exits), and the
        calls the parent's other threads had in progress (none of them runs here: a queue
        closed while one was, and not freed yet, is freed now)."""
        if self._owner:
            self._owner = False
            self._renew_fd()
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._forget_calls()

    def _orphaned(self, fd: int) -> bool:
        """Never, from one handle's view: a named queue whose creator closed it is kept,
        and the files of its messages beyond the ring may be another handle's to take;
        ``fastipc rm --stale``, which sees them all, removes what a dead creator left."""
        return False

    def _forget_calls(self) -> None:
        """Count no call in progress (the native handle's C method of the same name does
        this for its count), and free now if closed."""
        self._calls[:] = [None]
        self._leave()

    def _wake(self) -> None:
        if self._backend == "pure":  # the native handle's wake did it in C
            self._ops.wake()

    def _free(self) -> None:
        if self._owner and self._finalizer is not None:
            self._finalizer()  # anonymous: removes the name and the segments of its
            # messages; named: marks the queue kept (before the liveness lock goes)
        if self._ops.free():  # else a call never left C: the GC unmaps, later
            try:
                self._mm.close()
            except BufferError:  # a view of it lives on: in a fork child, in the frame of
                pass  # a parent's thread that was in a call (it never runs here); GC unmaps
        os.close(self._fd)
        self._untrack()
        while self._pending:  # kept messages no one will take: their segments go too
            for item, kind in self._unheld(0):
                if kind == KIND_BLOB:
                    _unlink_quietly(self._blob_path(item))
            del self._pending[0]

    def _closed_error(self) -> ValueError:
        return ValueError(f"Queue {self._name} is closed")

    def _describe(self) -> str:
        return f"name={self._name!r}"

    def __reduce__(self) -> tuple[Callable[..., Queue], tuple[Any, ...]]:
        self._check_open()
        return (_attach, (self._name, self._max_message, self._spin, self._backend,
                          self._uid))

    name = _core.Fixed[str]("_name", "The name as it was given (with or without the leading "
                            "slash; also once closed): what another process attaches to.")

    @property
    def maxsize(self) -> int:
        return self._maxsize_now()

    @uses_handle
    def _maxsize_now(self) -> int:
        return int(struct.unpack_from("<Q", self._mm, L.OFF_MAXSIZE)[0])

    def unlink(self) -> None:
        """Remove the name, open or closed (FileNotFoundError if it is gone already), and
        the files of what waits beyond the ring (spill files, large messages' segments).
        Those attached keep the messages in the ring; no one new can attach."""
        os.unlink(self._path)
        if self._finalizer is not None:
            self._finalizer.detach()
        for segment in _segments_of(self._path):
            _unlink_quietly(segment)

    # ---------------------------------------------------------------- put
    def _encode(self, obj: Any) -> tuple[list[Any], int, int]:
        """(parts, total bytes, kind) of one object, checked against max_message_size."""
        data, buffers = _dumps_oob(obj)
        return self._layout(data, buffers)

    def _layout(self, data: bytes, buffers: list[pickle.PickleBuffer]
                ) -> tuple[list[Any], int, int]:
        """(parts, total bytes, kind) of a pickle and its out-of-band buffers, checked
        against max_message_size."""
        if not buffers:
            parts: list[Any] = [data]
            kind = KIND_PICKLE
        else:
            raws = [b.raw() for b in buffers]
            parts = [_OOB_COUNT.pack(len(raws)), struct.pack(f"<{len(raws) + 1}Q", len(data),
                                                             *(len(r) for r in raws)), data]
            pos = sum(len(p) for p in parts)
            for raw in raws:
                if pos % _ALIGN:
                    parts.append(_PAD[: _ALIGN - pos % _ALIGN])
                    pos += len(parts[-1])
                parts.append(raw)
                pos += len(raw)
            kind = KIND_OOB
        total = sum(len(p) for p in parts)
        if total > self._max_message:
            raise ValueError(f"message of {total} bytes exceeds max_message_size "
                             f"({self._max_message})")
        return parts, total, kind

    def _put_pickled(self, data: bytes, t: float) -> None:
        """put() of a pickle with no out-of-band buffers, larger than the hot path takes."""
        parts, total, kind = self._layout(data, [])
        self._put_parts(parts, total, kind, t)

    def _put_parts(self, parts: list[Any], total: int, kind: int, t: float) -> None:
        ops = self._ops
        if total > self._ring_max:
            self._put_blob(parts, total, kind, t)
            return
        if len(parts) == 1:
            data = parts[0]
            rc = ops.put(data, kind, t)
            if rc:
                self._retry_put1(rc, data, kind, t)
        else:
            rc = ops.putv(parts, kind, t)
            if rc:
                self._retry_put(rc, lambda left: ops.putv(parts, kind, left), t)

    def _retry_put(self, rc: int, again: Callable[[float], int], t: float,
                   start: Optional[float] = None) -> None:
        """The slow path of a put: EINTR retries (PEP 475), a timeout is queue.Full."""
        try:
            _core.retry(rc, again, Deadline(t, start), self._name)
        except TimeoutError:
            raise Full(errno.ETIMEDOUT, "the queue is full") from None
        except OSError:
            self._check_open()  # closed by another thread during the call: ValueError
            raise

    def _retry_put1(self, rc: int, data: Any, kind: int, t: float,
                    start: Optional[float] = None) -> None:
        """:meth:`_retry_put` of a one-part message. Its lambda lives here, not in the hot
        paths: there it would turn their locals into closure cells, a cost on every call."""
        ops = self._ops
        self._retry_put(rc, lambda left: ops.put(data, kind, left), t, start)

    # A message too large for the ring travels in a segment of its own, <name>.<suffix>,
    # and a reference to it in the ring. Rule: until the reference is committed the segment
    # is the producer's, which removes it if the put ends in any other way (an exception
    # raised into it included); once committed, it is the queue's, and the producer never
    # touches it again. The segment is known by its path before it exists (the cleanup
    # removes it by name), its fd is held by a FileIO (closed however the put ends), and
    # the commit is reported by the backend in the same step (put_ref), so an exception
    # landing anywhere leaks nothing and never removes a committed message. The producer
    # holds an OFD lock on the segment until the commit: `fastipc rm --stale` leaves a
    # segment alone while it is locked or referenced from the queue.

    def _blob_file(self) -> tuple[str, str]:
        suffix = uuid.uuid4().hex[:16]
        return suffix, f"{self._path}.{suffix}"

    def _fill_blob(self, f: io.FileIO, suffix: str, parts: list[Any], total: int,
                   kind: int) -> bytes:
        """Lock and write the segment open in ``f``; the reference to put in the ring."""
        fd = f.fileno()
        hold_lock(fd, LOCK_CREATOR)  # (a file of its own: nobody else holds it)
        _write_all(fd, [byte_view(p) for p in [_BLOB_HEAD.pack(_BLOB_MAGIC, total), *parts]])
        return _BLOB_REF.pack(total, kind) + suffix.encode()

    def _put_ref(self, ref: bytes, committed: bytearray, t: float) -> None:
        ops = self._ops
        rc = ops.put_ref(ref, KIND_BLOB, t, committed)
        if rc:
            self._retry_put(rc, lambda left: ops.put_ref(ref, KIND_BLOB, left, committed), t)

    def _put_blob(self, parts: list[Any], total: int, kind: int, t: float) -> None:
        """A message too large for the ring: its own segment, and a reference in the ring."""
        deadline = Deadline(t)
        suffix, path = self._blob_file()
        committed = bytearray(1)
        try:
            with io.FileIO(path, "xb", opener=self._blob_opener) as f:
                ref = self._fill_blob(f, suffix, parts, total, kind)
                self._put_ref(ref, committed, deadline.left())
        except BaseException:
            if not committed[0]:
                _unlink_quietly(path)
            raise

    # put, get, put_bytes, get_bytes, get_many and put_many's batches below are the pure
    # backend's: on the native backend, the methods of the handle type (csrc/py/queue.c) come
    # first and do the same in C, calling back the methods here for what is rare. The pure
    # ones count themselves busy with the Handle's count (_enter/_leave, as @uses_handle
    # does, without its extra frame on the hot paths), so that close() from another thread
    # frees the mapping only once the last of them has left; their slow paths (_retry_put,
    # _take_slow) turn the error of a call closed under them into ValueError.

    def put(self, obj: Any, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put ``obj`` (pickled, protocol 5, buffers out of band). ``queue.Full`` (also a
        TimeoutError) if the queue stays full until the timeout (``block=False``: at once).
        An object that cannot be pickled raises here and leaves the queue as it was."""
        self._enter()
        try:
            t = -1.0 if timeout is None and block else _timeout(block, timeout)
            # _pickle_in_band, inlined on the hot path (type() only once a type is remembered)
            if _buffered and type(obj) in _buffered:
                return self._put_encoded(obj, t)
            try:
                data = _dumps(obj, 5, buffer_callback=_in_band_only)
            except TypeError:  # out-of-band buffers or a memoryview (or not picklable)
                _remember_buffered(type(obj))
                return self._put_encoded(obj, t)
            if len(data) <= self._hot_max:  # the hot path
                start = _monotonic() if t > 0.0 else None
                rc = self._ops.put(data, KIND_PICKLE, t)
                if rc:
                    self._retry_put1(rc, data, KIND_PICKLE, t, start)
                return None
            self._put_pickled(data, t)
        finally:
            self._leave()

    def _put_encoded(self, obj: Any, t: float) -> None:
        """put() of an object that has (or may have) out-of-band buffers."""
        parts, total, kind = self._encode(obj)
        self._put_parts(parts, total, kind, t)

    def put_nowait(self, obj: Any) -> None:
        """``put(obj, block=False)``."""
        self.put(obj, False)

    def put_bytes(self, data: Any, timeout: Optional[float] = None, *,
                  block: bool = True) -> None:
        """Put raw bytes (any contiguous bytes-like object), no pickling; ``get_bytes`` (or
        ``get``) returns them as ``bytes``. ``block=False``: try once (timeout ignored)."""
        self._enter()
        try:
            t = -1.0 if timeout is None and block else _timeout(block, timeout)
            if type(data) is bytes and len(data) <= self._hot_max:  # the hot path
                start = _monotonic() if t > 0.0 else None
                rc = self._ops.put(data, KIND_BYTES, t)
                if rc:
                    self._retry_put1(rc, data, KIND_BYTES, t, start)
                return
            self._put_bytes_large(data, t)
        finally:
            self._leave()

    def _put_bytes_large(self, data: Any, t: float) -> None:
        """put_bytes() of what the hot path does not take (a large or non-bytes buffer)."""
        view = data if type(data) is bytes else byte_view(data)
        n = len(view)
        if n > self._max_message:
            raise ValueError(f"message of {n} bytes exceeds max_message_size "
                             f"({self._max_message})")
        self._put_parts([view], n, KIND_BYTES, t)

    @uses_handle
    def put_many(self, objs: Iterable[Any], timeout: Optional[float] = None, *,
                 block: bool = True) -> None:
        """Put every object of ``objs``, in order, taking the producers' lock once per
        batch that fits. On timeout, ``queue.Full``. ``block=False``: what does not fit at
        once raises queue.Full (timeout ignored). An object that cannot be pickled (or is
        too large) raises its error once the objects before it are put; so does an error of
        the iterable itself. Whatever stops it part way, the exception's ``messages_sent``
        says how many of ``objs`` went, each whole (``messages_put``: its deprecated
        alias)."""
        t = _timeout(block, timeout)
        deadline = Deadline(t)
        batch: list[bytes] = []
        done = 0
        in_batch = False  # an error of _put_batch says how many of its batch went
        add, hot, it = batch.append, self._hot_max, iter(objs)
        try:
            while True:
                # the hot loop: pickles that a batch takes; it stops at the first object
                # that needs more (its encoding in `other`), or at an error of the iterable
                # or of pickling (in `other`, raised once what came before is put)
                other: Any = None
                try:
                    for obj in it:
                        data = _pickle_in_band(obj)
                        if data is not None and len(data) <= hot:
                            add(data)
                            continue
                        other = self._encode(obj) if data is None else self._layout(data, [])
                        break
                except Exception as exc:
                    other = exc
                if batch:  # what came before goes first
                    in_batch = True
                    done += self._put_batch(batch, deadline.left())
                    in_batch = False
                    batch.clear()
                if other is None:
                    return
                if isinstance(other, Exception):
                    raise other
                parts, total, kind = other
                self._put_parts(parts, total, kind, deadline.left())
                done += 1
        except BaseException as exc:
            _tell_sent(exc, done + (_batch_sent(exc) if in_batch else 0))
            raise

    def _encoded(self, objs: Iterable[Any]
                 ) -> Iterator[tuple[Optional[bytes], Any]]:
        """The objects of a put_many, in order, encoded: ``(pickle, None)`` for one that a
        batch takes (no out-of-band buffers, within the hot size), ``(None, (parts, total,
        kind))`` for another. An error of the iterable, or of an object that cannot be
        pickled or is too large, comes last as ``(None, exc)``: the caller puts what came
        before, then raises it."""
        hot = self._hot_max
        it = iter(objs)
        while True:
            try:
                obj = next(it)
            except StopIteration:
                return
            except Exception as exc:
                yield None, exc
                return
            try:
                data = _pickle_in_band(obj)
                item: tuple[Optional[bytes], Any] = (
                    (data, None) if data is not None and len(data) <= hot else
                    (None, self._encode(obj) if data is None else self._layout(data, [])))
            except Exception as exc:
                yield None, exc
                return
            yield item

    def _put_batch(self, batch: list[bytes], t: float) -> int:
        """Put pickles (each within the hot size) as one batch: how many went (all, or
        queue.Full whose ``messages_sent`` says how many; see :func:`_batch_sent`)."""
        deadline = Deadline(t)
        lens = [len(b) for b in batch]  # each <= _hot_max <= max_message_size
        blob = b"".join(batch)
        ops = self._ops
        rc, sent = ops.put_many(blob, lens, KIND_PICKLE, deadline.left())

        def again(left: float) -> int:  # after EINTR: the rest of the batch
            nonlocal sent
            offset = sum(lens[:sent])
            rc, more = ops.put_many(blob[offset:], lens[sent:], KIND_PICKLE, left)
            sent += more
            return rc

        if rc:
            try:
                _core.retry(rc, again, deadline, self._name)
            except TimeoutError:
                exc = Full(errno.ETIMEDOUT, "the queue is full")
                _tell_sent(exc, sent)
                raise exc from None
        return sent

    # ---------------------------------------------------------------- get
    def _decode(self, buf: Any, n: int, kind: int, fresh: bool) -> Any:
        if kind == KIND_PICKLE:
            return _loads(memoryview(buf)[:n])
        if kind == KIND_BYTES:
            return bytes(memoryview(buf)[:n])
        if kind == KIND_OOB:
            return self._decode_oob(buf if fresh else bytearray(memoryview(buf)[:n]), n)
        raise OSError(errno.EBADMSG, f"unknown message kind {kind}", self._name)

    def _decode_oob(self, buf: bytearray, n: int) -> Any:
        view = memoryview(buf)[:n]
        try:
            (count,) = _OOB_COUNT.unpack_from(view, 0)
            if count > n // 8:
                raise ValueError("buffer count")
            lens = struct.unpack_from(f"<{count + 1}Q", view, 8)
            pos = 8 + 8 * (count + 1)
            data = view[pos:pos + lens[0]]
            pos += lens[0]
            buffers = []
            for length in lens[1:]:
                pos += -pos % _ALIGN
                if pos + length > n:
                    raise ValueError("buffer length")
                buffers.append(view[pos:pos + length])
                pos += length
            if pos > n or len(data) != lens[0]:
                raise ValueError("pickle length")
        except (ValueError, struct.error):
            raise OSError(errno.EBADMSG, "corrupted message", self._name) from None
        return _loads(data, buffers=buffers)

    def _blob_ref(self, ref: Any) -> tuple[int, int, str]:
        """(length, inner kind, path) of a reference to a message in its own segment."""
        parsed = _parse_ref(bytes(ref))
        if parsed is None or parsed[1] == KIND_BLOB or parsed[0] > self._max_message:
            raise OSError(errno.EBADMSG, "corrupted message", self._name)
        return parsed[0], parsed[1], f"{self._path}.{parsed[2]}"

    def _blob_path(self, ref: Any) -> str:
        try:
            return self._blob_ref(ref)[2]
        except OSError:
            return "/nonexistent"

    def _read_blob(self, ref: Any) -> tuple[bytearray, int, str]:
        """(payload, inner kind, path) of a message in its own segment, read (the segment
        stays: see :meth:`_deliver`)."""
        total, kind, path = self._blob_ref(ref)
        fd = open_segment(path, 0)
        try:
            head = os.pread(fd, _BLOB_HEAD.size, 0)
            if (len(head) != _BLOB_HEAD.size or _BLOB_HEAD.unpack(head) != (_BLOB_MAGIC, total)
                    or os.fstat(fd).st_size != _BLOB_HEAD.size + total):
                raise OSError(errno.EBADMSG, "corrupted message segment", path)
            buf = _new_bytearray(total)
            view = memoryview(buf)
            done = 0
            while True:
                if done >= total:
                    break
                got = os.preadv(fd, [view[done:]], _BLOB_HEAD.size + done)
                if got <= 0:
                    raise OSError(errno.EBADMSG, "truncated message segment", path)
                done += got
        finally:
            os.close(fd)
        return buf, kind, path

    # A get that took a message holds it until it returns it. The backend marks what it took
    # (Ops.get) in the step that commits head; the hot paths clear the mark, put the stage
    # back (not a call: `+=`) and return with no call in between (a signal handler runs only
    # when a call returns, at a function's entry or at a backward jump), so an exception
    # raised into a get (a handler's, Ctrl-C) comes either before the commit or while the
    # stage, marked, is still the call's: the except clause then keeps the marked buffer in
    # _pending (its first call), and the next get of this handle delivers it before anything
    # newer. A stage or buffer kept there is never used again for a get; those in the pools
    # are unmarked.

    # get, get_bytes and get_many are Python functions on both backends, around the call that
    # takes (_get, _get_bytes, _get_many: the native handle's C methods, or the pure
    # backend's below). A signal handler runs when a call into C returns, before its result
    # reaches the caller (not when a Python function returns): the taking call stores what
    # it delivers in `held` too, and an exception raised as it returns keeps that in
    # _pending, in front (no call before), for the next get. Each is made from its stub
    # below and _DELIVERED (see _delivering): one body, and no frame more than a hand-written
    # one.

    @_delivering("_get", _DECODED)
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """Take the next object. ``queue.Empty`` (also a TimeoutError) if none comes before
        the timeout (``block=False``: at once). An exception raised into the call (a
        signal handler's, Ctrl-C) loses nothing: what it took, the next get returns."""
        raise NotImplementedError  # (made by _delivering)

    @_delivering("_get_bytes", _DECODED)
    def get_bytes(self, timeout: Optional[float] = None, *, block: bool = True) -> bytes:
        """Take the next message as bytes (one put with ``put_bytes``, or an object that is
        a bytes-like object; anything else raises TypeError, the message is consumed).
        ``block=False``: try once (timeout ignored). An exception raised into the call loses
        nothing, as for :meth:`get`."""
        raise NotImplementedError  # (made by _delivering)

    @_delivering("_get_many", _LIST)
    def get_many(self, max_messages: int = 1024, timeout: Optional[float] = None, *,
                 block: bool = True) -> list[Any]:
        """Take up to ``max_messages`` objects at once (at least one: waits for the first
        until the timeout, then ``queue.Empty``; ``block=False``: at once), with one pass
        of the consumers' lock.

        A message that fails to unpickle fails alone: its error is raised (once), and the
        other messages of the batch, those before it and after it, are kept in order by
        this handle for its next gets (``qsize()`` counts them). So is the whole batch when
        an exception is raised into the call (a signal handler's, Ctrl-C)."""
        raise NotImplementedError  # (made by _delivering)

    # The pure backend's taking calls (_get, _get_bytes, _get_many) count themselves busy
    # around the take, and store what it delivers in `held` before they leave: an exception
    # raised into _leave (a signal handler's, at its call) then keeps it for the next get,
    # as when the native handle's C method returns. (`x = held[0] = self._take(...)` has no
    # call between the take's return and the store.) Each is made from its stub below and
    # _TAKEN (see _taking).

    @_taking("_take")
    def _get(self, held: list[Any], block: bool = True, timeout: Optional[float] = None
             ) -> Any:
        """get() of the pure backend."""
        raise NotImplementedError  # (made by _taking)

    @_taking("_take_bytes")
    def _get_bytes(self, held: list[Any], timeout: Optional[float] = None,
                   block: bool = True) -> bytes:
        """get_bytes() of the pure backend."""
        raise NotImplementedError  # (made by _taking)

    @_taking("_take_many")
    def _get_many(self, held: list[Any], max_messages: int = 1024,
                  timeout: Optional[float] = None, block: bool = True) -> list[Any]:
        """get_many() of the pure backend."""
        raise NotImplementedError  # (made by _taking)

    def _staging(self, block: bool, timeout: Optional[float]
                 ) -> tuple[float, Optional[float], list[tuple[Any, Any, Any]], Any]:
        """What a pure take starts with: its C timeout, its start time (for a retry's
        deadline), and a staging buffer with the list it goes back to."""
        t = -1.0 if timeout is None and block else _timeout(block, timeout)
        stages = self._stages
        return (t, _monotonic() if t > 0.0 else None, stages,
                stages.pop() if stages else self._ops.new_stage())

    def _take(self, block: bool, timeout: Optional[float]) -> Any:
        """The take of the pure get (its stage marks what it took: see above)."""
        if self._pending:
            got = self._many_from_pending(1, False)
            if got:
                return got[0]
        t, start, stages, stage = self._staging(block, timeout)
        try:
            rc = self._ops.get_staged(stage[0], STAGE, t, KIND_PICKLE)
            if 0 <= rc <= _LEN:  # the hot path: a small object, staged (rc: its length)
                obj = _loads(stage[1][:rc])
                stage[2][0] = 0  # delivered: from here to the return, no call
                stages += (stage,)
                return obj
            if rc >= 0 and rc >> 32 != KIND_BLOB:
                obj = self._decode(stage[1], rc & _LEN, rc >> 32, False)
                stage[2][0] = 0
                stages += (stage,)
                return obj
            if rc >= 0:  # a large message: delivered through _pending (no call from here)
                self._pending += ((stage[1], _MARKED),)
        except BaseException as exc:  # the stage kept first: no call before it
            self._held(stage, exc, stage[2][0] and _iadd(self._pending, ((stage[1], _MARKED),)))
            raise
        return self._get_rest(rc, t, start, stage, False)

    def _get_rest(self, rc: int, t: float, start: Optional[float],
                  stage: tuple[Any, Any, Any], as_bytes: bool) -> Any:
        """The rest of a get whose first call returned ``rc``: ``rc >= 0``, the message the
        stage holds is in _pending already; else take it (:meth:`_take_slow`) into
        _pending. Then deliver it from there."""
        if rc < 0:
            try:
                buf = self._take_slow(rc, t, start, stage)
            except BaseException as exc:  # the stage kept first: no call before it
                self._held(stage, exc, stage[2][0] and _iadd(self._pending, ((stage[1], _MARKED),)))
                raise
            if buf is not stage[1]:
                self._stages += (stage,)
            self._pending += ((buf, _MARKED),)
        return self._many_from_pending(1, as_bytes)[0]

    def _held(self, stage: tuple[Any, Any, Any], exc: BaseException, _kept: Any) -> None:
        """After an exception in a get, the marked stage (if any) kept in _pending by the
        evaluation of ``_kept`` (an argument, so that it comes before this call's entry): the
        message's own error consumes it (raised once); else the stage goes back."""
        if stage[2][0]:
            if _interrupted(exc):
                return
            pending = self._pending
            for k in range(len(pending) - 1, -1, -1):
                if pending[k][0] is stage[1]:
                    del pending[k]
                    break
            stage[2][0] = 0
        self._stages.append(stage)

    def _take_slow(self, rc: int, t: float, start: Optional[float],
                   stage: tuple[Any, Any, Any]) -> Any:
        """After a first get that did not return a message in the staging buffer: a message
        larger than it goes into a new bytearray; EINTR retries, errors raise (timeout:
        queue.Empty). Returns the buffer the message is in, marked (the stage or a new
        one; an exception raised after the new one was filled keeps it in _pending)."""
        ops = self._ops
        dest: Any = None

        def again(left: float) -> int:
            nonlocal dest
            rc = (ops.get_staged(stage[0], STAGE, left, 0) if dest is None
                  else ops.get(dest, left))
            while rc == NEED:  # it did not fit: make room (another consumer may take it)
                new = _new_bytearray(ops.last()[0] + MARK)  # not zero-filled: nor its mark
                new[len(new) - MARK:] = _NO_MARK  # until the get clears it itself
                dest = new
                rc = ops.get(dest, left)
            return rc

        deadline = Deadline(t, start)
        try:
            if rc == NEED:
                rc = again(deadline.left())
            _core.retry(rc, again, deadline, self._name)
        except BaseException as exc:
            if dest is not None and dest[len(dest) - MARK:] != _NO_MARK:
                self._pending.append((dest, _MARKED))  # first: no call before it
            if isinstance(exc, TimeoutError):
                raise Empty(errno.ETIMEDOUT, "the queue is empty") from None
            if isinstance(exc, OSError):
                self._check_open()  # closed by another thread during the call: ValueError
            raise
        return stage[1] if dest is None else dest

    def get_nowait(self) -> Any:
        """``get(block=False)``."""
        return self.get(False)

    def _take_bytes(self, timeout: Optional[float], block: bool) -> bytes:
        """The take of the pure get_bytes."""
        if self._pending:
            got = self._many_from_pending(1, True)
            if got:
                return got[0]  # type: ignore[no-any-return]
        t, start, stages, stage = self._staging(block, timeout)
        try:
            rc = self._ops.get_staged(stage[0], STAGE, t, KIND_BYTES)
            if 0 <= rc <= _LEN:  # the hot path: bytes, staged (rc: the length)
                data = stage[1][:rc]
                stage[2][0] = 0  # delivered: from here to the return, no call
                stages += (stage,)
                return data  # type: ignore[no-any-return]
            if rc >= 0:  # not bytes: delivered through _pending (no call from here)
                self._pending += ((stage[1], _MARKED),)
        except BaseException as exc:  # the stage kept first: no call before it
            self._held(stage, exc, stage[2][0] and _iadd(self._pending, ((stage[1], _MARKED),)))
            raise
        return self._get_rest(rc, t, start, stage, True)  # type: ignore[no-any-return]

    def _take_many(self, max_messages: int, timeout: Optional[float], block: bool
                   ) -> list[Any]:
        """The take of the pure get_many."""
        max_messages = self._check_max_messages(max_messages)
        t = _timeout(block, timeout)
        if self._pending:
            got = self._many_from_pending(max_messages, False)
            if got:
                return got
        start = _monotonic() if t > 0.0 else None
        ops = self._ops
        outs = self._outs
        out: Any = None
        batch: Any = None
        result: list[Any] = []
        try:
            out = outs.pop() if outs else self._new_out()
            batch = ops.new_batch(max_messages)
            n = ops.get_many(out[0], batch, max_messages, t)
            if n <= 0:  # waiting was cut short, or the first message is large: take it alone
                obj = self.get(True, None if t < 0 else Deadline(t, start).left())
                outs += (out,)
                return [obj]
            lens, kinds = ops.batch(batch, n)
            view = memoryview(out[0])
            add = result.append
            pos = 0
            for length, kind in zip(lens, kinds, strict=False):
                if kind == KIND_BLOB:  # large messages: delivered through _pending
                    break
                end = pos + length
                add(_loads(view[pos:end]) if kind == KIND_PICKLE
                    else self._decode(view[pos:end], length, kind, False))
                pos = end
        except BaseException as exc:
            if out is not None and out[1][0]:
                self._pending.append(((out, batch, result), _BATCH))  # first
                if not _interrupted(exc):
                    result.append(_FAILED)  # the message's own error: that one is consumed
            elif out is not None:
                outs.append(out)
            if isinstance(exc, (OSError, EOFError)) and self._closed:
                raise self._closed_error() from None
            raise
        if len(result) < n:
            self._pending += (((out, batch, result), _BATCH),)
            return self._many_from_pending(max_messages, False)
        out[1][0] = 0  # delivered: from here to the return, no call
        outs += (out,)
        return result

    def _check_max_messages(self, max_messages: int) -> int:
        return check_int(max_messages, "max_messages", 1, 1 << 20)

    def _out_size(self) -> int:
        """The capacity of get_many's buffer."""
        return max(STAGE, min(1 << 20, self._capacity // 2))

    def _new_out(self) -> tuple[bytearray, Any]:
        out = bytearray(self._out_size() + MARK)
        return out, memoryview(out)[len(out) - MARK:].cast("Q")

    def _kept(self, exc: BaseException, entry: tuple[Any, int]) -> None:
        """The native handle kept ``entry`` in _pending: a message it took that raised
        ``exc`` as it was decoded. An exception raised into the call from outside (a signal
        handler's, Ctrl-C) leaves it there for the next get; the message's own error
        consumes it (raised once)."""
        if _interrupted(exc):
            return
        pending = self._pending
        for k in range(len(pending) - 1, -1, -1):
            if pending[k] is entry:
                del pending[k]
                break

    def _unheld(self, k: int) -> list[tuple[Any, int]]:
        """The entries that _pending[k] stands for: itself, or the messages of a marked
        buffer or batch as (payload or object, kind)."""
        item, kind = self._pending[k]
        if kind == _LIST:
            return [(obj, _DECODED) for obj in item]
        if kind == _MARKED:  # the buffer is this entry's alone (a fresh one, or a stage
            mark = _mark_of(item)  # that left the pool with it): no copy of the message
            return [(memoryview(item)[:mark & _LEN], mark >> 32)]
        if kind != _BATCH:
            return [(item, kind)]
        out, batch, done = item
        n = out[1][0]
        lens, kinds = self._ops.batch(batch, n)
        kept = [(obj, _DECODED) for obj in done if obj is not _FAILED]
        pos = sum(lens[:len(done)])
        for length, kind in zip(lens[len(done):], kinds[len(done):], strict=False):
            kept.append((bytearray(out[0][pos:pos + length]), kind))
            pos += length
        return kept

    def _many_from_pending(self, max_messages: int, as_bytes: bool) -> list[Any]:
        """Up to ``max_messages`` of the messages kept in _pending, delivered in order. This
        call claims them at once (no other thread delivers them too), and puts them all back
        in front, with no call before, if an exception cuts it short; a message's own error
        consumes it alone (raised once; those before it stay)."""
        pending = self._pending
        k = 0
        while k < len(pending) and k < max_messages:  # held buffers and batches: messages
            if pending[k][1] in (_MARKED, _BATCH, _LIST):
                pending[k:k + 1] = self._unheld(k)  # one step
            else:
                k += 1
        claimed = pending[:k]  # claimed: no call from here into the try
        del pending[:k]
        result: list[Any] = []
        i = 0
        path: Optional[str] = None  # a segment read, to remove once its entry holds the payload
        try:
            while True:
                if i >= len(claimed):
                    break
                item, kind = claimed[i]
                if kind == KIND_BLOB:  # its payload kept before its segment goes
                    buf, inner, path = self._read_blob(item)
                    item, kind = claimed[i] = (buf, inner)
                    _unlink_quietly(path)
                    path = None
                obj = item if kind == _DECODED else self._decode(item, len(item), kind, True)
                if as_bytes and type(obj) is not bytes:
                    try:
                        obj = bytes(byte_view(obj))
                    except TypeError:
                        raise TypeError(f"the message is a {type(obj).__name__}, not "
                                        f"bytes") from None
                result.append(obj)
                i += 1
        except BaseException as exc:
            pending[0:0] = claimed  # first: no call before it
            if path is not None and i < len(claimed) and claimed[i][1] != KIND_BLOB:
                _unlink_quietly(path)  # the payload is in the entry now: the segment goes
            if not _interrupted(exc) and i < len(claimed):
                failed = claimed[i]
                for j, entry in enumerate(pending):  # consumed, raised once
                    if entry is failed:
                        del pending[j]
                        break
            raise
        return result

    # ---------------------------------------------------------------- awaitables
    # The attempt of every awaitable is the try-once blocking call (timeout 0), made on the
    # loop thread: it alone puts or takes, so a cancelled await has put the whole message or
    # nothing, and takes nothing. While it waits, the coroutine parks on the futex word the
    # blocking sleepers of its side use, with their waiting flag raised (Ops.park), so the
    # other side's ordinary wake-up resolves it (docs/queue-layout.md, "Awaiting").

    async def put_async(self, obj: Any, timeout: Optional[float] = None, *,
                        block: bool = True) -> None:
        """:meth:`put` on the running event loop (asyncio, uvloop): waits for room without
        blocking the loop. ``queue.Full`` on timeout (``block=False``: at once, timeout
        ignored). Cancelled (or timed out), it has put the whole message or nothing."""
        self._check_open()
        timeout = _async_timeout(block, timeout)
        parts, total, kind = self._encode(obj)
        await self._put_async(parts, total, kind, Deadline.of(timeout))

    async def put_bytes_async(self, data: Any, timeout: Optional[float] = None, *,
                              block: bool = True) -> None:
        """:meth:`put_bytes` on the running event loop, as :meth:`put_async`."""
        self._check_open()
        timeout = _async_timeout(block, timeout)
        view = data if type(data) is bytes else byte_view(data)
        if len(view) > self._max_message:
            raise ValueError(f"message of {len(view)} bytes exceeds max_message_size "
                             f"({self._max_message})")
        await self._put_async([view], len(view), KIND_BYTES, Deadline.of(timeout))

    async def put_many_async(self, objs: Iterable[Any], timeout: Optional[float] = None, *,
                             block: bool = True) -> None:
        """:meth:`put_many` on the running event loop: puts every object of ``objs`` in
        order, as many at a time as there is room for, waiting for room without blocking
        the loop. ``block=False``: what does not fit at once raises queue.Full (timeout
        ignored). Whatever ends it early (``queue.Full``, an object that cannot be
        pickled or is too large, a cancellation, close()), the exception's
        ``messages_sent`` (and its deprecated alias ``messages_put``) says how many of
        ``objs`` went, each whole; none of the others did. As in put_many, the objects
        before one that cannot be pickled are put first."""
        self._check_open()
        deadline = Deadline.of(_async_timeout(block, timeout))
        sent = [0]
        batch: list[bytes] = []
        try:
            for data, other in self._encoded(objs):
                if data is not None:
                    batch.append(data)
                    continue
                await self._put_batch_async(batch, deadline, sent)  # what came before
                if isinstance(other, Exception):
                    raise other
                parts, total, kind = other
                await self._put_async(parts, total, kind, deadline)
                sent[0] += 1
            await self._put_batch_async(batch, deadline, sent)
        except BaseException as exc:
            _tell_sent(exc, sent[0])
            raise

    async def _put_batch_async(self, batch: list[bytes], deadline: Deadline,
                               sent: list[int]) -> None:
        """Put the pickles of ``batch`` (each within the hot size), in order, as many at a
        time as there is room for (each attempt a try-once :meth:`_put_batch`), adding to
        ``sent[0]`` those that went as they go; then empty ``batch``."""
        if not batch:
            return
        start = sent[0]

        def attempt() -> Any:
            try:
                n = self._put_batch(batch[sent[0] - start:], 0.0)
            except Full as exc:
                n = _batch_sent(exc)
            sent[0] += n
            return True if sent[0] - start == len(batch) else _aio.NOT_READY

        # (a producer parks until the queue holds fewer than maxsize messages: room in the
        # ring is not waited for, what does not fit it spills)
        await self._awaited_room(attempt, len(batch[0]), deadline)
        batch.clear()

    async def _put_async(self, parts: list[Any], total: int, kind: int,
                         deadline: Deadline) -> None:
        if total <= self._ring_max:
            def attempt() -> Any:
                try:
                    self._put_parts(parts, total, kind, 0.0)
                except Full:
                    return _aio.NOT_READY
                return True

            await self._awaited_room(attempt, total, deadline)
            return
        # its own segment now (see _put_blob), the reference when there is room
        suffix, path = self._blob_file()
        committed = bytearray(1)
        try:
            with io.FileIO(path, "xb", opener=self._blob_opener) as f:
                ref = self._fill_blob(f, suffix, parts, total, kind)

                def put_ref() -> Any:
                    try:
                        self._put_ref(ref, committed, 0.0)
                    except Full:
                        return _aio.NOT_READY
                    return True

                await self._awaited_room(put_ref, len(ref), deadline)
        except BaseException:
            if not committed[0]:
                _unlink_quietly(path)
            raise

    async def get_async(self, timeout: Optional[float] = None, *, block: bool = True) -> Any:
        """:meth:`get` on the running event loop (asyncio, uvloop): waits for a message
        without blocking the loop. ``queue.Empty`` on timeout (``block=False``: at once,
        timeout ignored). Cancelled (or timed out), it has taken nothing: the message stays
        queued for the next consumer."""
        return await self._get_async(self.get_nowait, _async_timeout(block, timeout))

    async def get_bytes_async(self, timeout: Optional[float] = None, *,
                              block: bool = True) -> bytes:
        """:meth:`get_bytes` on the running event loop, as :meth:`get_async`."""
        return await self._get_async(  # type: ignore[no-any-return]
            lambda: self.get_bytes(0), _async_timeout(block, timeout), True)

    async def get_many_async(self, max_messages: int = 1024, timeout: Optional[float] = None,
                             *, block: bool = True) -> list[Any]:
        """:meth:`get_many` on the running event loop: up to ``max_messages`` objects (at
        least one: ``queue.Empty`` if none comes before the timeout; ``block=False``: at
        once, timeout ignored), with get_many's rules for a message that fails to
        unpickle. Cancelled (or timed out), it has taken nothing: what it had just taken,
        this handle's next gets return, in order."""
        max_messages = self._check_max_messages(max_messages)
        return await self._get_async(  # type: ignore[no-any-return]
            lambda: self.get_many(max_messages, 0.0), _async_timeout(block, timeout),
            many=max_messages)

    async def _get_async(self, take: Callable[[], Any], timeout: Optional[float],
                         as_bytes: bool = False, many: int = 0) -> Any:
        """The attempt takes into _pending (what a get took stays there until delivered),
        and the message is delivered from it after the await, with no await in between: a
        cancellation, or an exception raised at any point, leaves it for the next get.
        ``many``: a get_many's ``max_messages`` (``take`` returns a list; so does this)."""
        self._check_open()
        deadline = Deadline.of(timeout)
        pending = self._pending
        kind = _LIST if many else _DECODED

        def attempt() -> Any:
            if pending:
                return True
            try:
                obj = take()
            except Empty:
                return _aio.NOT_READY
            self._pending += ((obj, kind),)
            return True

        while True:
            await self._awaited_room(attempt, -1, deadline)
            got = self._many_from_pending(many or 1, as_bytes)
            if got:
                return got if many else got[0]

    async def _awaited_room(self, attempt: Callable[[], Any], room: int,
                            deadline: Deadline) -> Any:
        """SegmentEnd's await of ``attempt()``, parked as a consumer (``room < 0``) or a
        producer of a ``room``-byte payload, until ``deadline``; its timeout is
        ``queue.Empty`` or ``queue.Full``."""
        ops = self._ops
        name = self._name

        def park() -> Optional[tuple[int, int]]:
            rc, address, expected = ops.park(room)
            if rc == 1:
                return None
            _core.check(rc, name)
            return address, expected

        try:
            return await self._awaited(attempt, deadline, park=park)
        except TimeoutError as exc:
            if isinstance(exc, (Full, Empty)):
                raise
            if room < 0:
                raise Empty(errno.ETIMEDOUT, "the queue is empty") from None
            raise Full(errno.ETIMEDOUT, "the queue is full") from None

    _unpark = staticmethod(_unpark)  # the await hook: nothing to undo after a park

    # ---------------------------------------------------------------- state
    @uses_handle
    def qsize(self) -> int:
        """Messages queued now (a snapshot: others may change it at once)."""
        return self._ops.count() + (self._held_count() if self._pending else 0)

    def _held_count(self) -> int:
        return sum(len(item) if kind == _LIST else 1 if kind != _BATCH
                   else item[0][1][0] - item[2].count(_FAILED) for item, kind in self._pending)

    def empty(self) -> bool:
        return self.qsize() == 0

    @uses_handle
    def full(self) -> bool:
        """True when ``maxsize`` messages are queued (the ring's bytes are not counted)."""
        maxsize = self._maxsize_now()
        return bool(maxsize) and self._ops.count() >= maxsize

    def join_thread(self) -> None:
        """No-op: there is no feeder thread (each put is done when it returns)."""

    def cancel_join_thread(self) -> None:
        """No-op: there is no feeder thread."""


def _free_ops(ops: QueueOps) -> None:
    """Let go of the backend's view of a queue that could not be created."""
    ops.free()


def _write_all(fd: int, views: list[memoryview]) -> None:
    pos = 0
    for view in views:
        while len(view):
            n = os.pwrite(fd, view, pos)
            view = view[n:]
            pos += n


class NamedQueue(Queue):
    """``shm.Queue(name, create=False, capacity=..., max_message_size=..., mode=0o600)``:
    attach to the queue ``name`` (FileNotFoundError if absent), or create it exclusively with
    ``create=True`` (FileExistsError if present). ``close()`` leaves the name; ``unlink()``
    removes it."""

    def __init__(self, name: str, create: bool = False, capacity: int = DEFAULT_CAPACITY,
                 max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, mode: int = 0o600, *,
                 maxsize: int = 0, spin: Optional[float] = None, owner: Optional[int] = None,
                 backend: Optional[str] = None) -> None:
        super().__init__(maxsize, name=name, create=check_bool(create, "create"),
                         capacity=capacity, max_message_size=max_message_size, mode=mode,
                         spin=spin, owner=owner, backend=backend)


def _attach(name: str, max_message: int, spin: float, backend: str,
            owner: Optional[int] = None) -> Queue:
    """Unpickling: attach to the queue by name (FileNotFoundError once it was removed),
    trusting the uid its segment had where it was pickled."""
    return Queue(name=name, create=False, max_message_size=max_message, spin=spin,
                 owner=owner, backend=backend)


# ---------------------------------------------------------------- fastipc ls / rm


@dataclass
class QueueInfo:
    kind: str  # "queue", or "queue-blob" for a large message's own segment
    name: str
    size: int
    owner: int  # the creator's pid (display only)
    alive: bool  # the owner runs (queue), the queue still exists (blob)
    detail: str


def describe(path: str) -> Optional[QueueInfo]:
    """What ``fastipc ls`` shows of ``path``: None if it is not a queue or a queue's
    message segment. A queue is alive while its creator holds its OFD lock (robust to pid
    reuse and pid namespaces; not a pid probe), and for good once the creator of a named
    queue closed it (the header says so: only ``unlink()`` or ``fastipc rm NAME`` remove
    it); it is stale once its creator died holding it. A message segment is alive while
    its queue exists and the segment is either referenced from the queue or locked by the
    producer writing it; otherwise a killed producer or consumer left it (stale)."""
    fd = open_to_inspect(path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        head = os.pread(fd, L.HEADER, 0)
        name = os.path.basename(path)
        if head[:8] == _BLOB_MAGIC:
            return _describe_blob(fd, path, name, st.st_size)
        if head[:8] == L.SPILL_MAGIC:
            return _describe_spill(path, name, st.st_size)
        if len(head) < 8 and (_BLOB_MAGIC.startswith(head) or L.SPILL_MAGIC.startswith(head)):
            return _describe_headless(fd, path, name, st)
        if len(head) < L.HEADER:
            return None
        magic, version, capacity, _max, maxsize, owner = struct.unpack_from("<IIQQQi", head)
        if magic != L.MAGIC or version != L.VERSION or capacity != st.st_size - L.HEADER:
            return None
        tail = struct.unpack_from("<Q", head, L.OFF_TAIL)[0]
        head_w = struct.unpack_from("<Q", head, L.OFF_HEAD)[0]
        count = (tail - head_w) & 0xFFFFFFFF
        kept = owner == L.KEPT_PID  # its creator closed it: kept until unlink()/rm NAME
        try:
            alive = kept or lock_held(fd, LOCK_CREATOR)
        except OSError:
            alive = False
        limit = f", maxsize {maxsize}" if maxsize else ""
        state = ", kept after its creator closed it" if kept else ""
        return QueueInfo("queue", name, st.st_size, owner, alive,
                         f"{count} messages{limit}{state}")
    except OSError:
        return None
    finally:
        os.close(fd)


# A message segment or spill file still without its first 8 bytes, which no one holds locked,
# and older than this (seconds): its producer was killed between creating and writing it.
# (A younger one may be a live producer's, between its create and its lock.)
HEADLESS_AGE = 10.0


def _describe_headless(fd: int, path: str, name: str, st: os.stat_result
                       ) -> Optional[QueueInfo]:
    """A queue's message segment or spill file whose producer has not written its magic yet:
    None unless ``path`` is named as one (``<queue>.<16 hex>`` or ``<queue>.s<n>``) beside a
    queue that exists, or beside an anonymous queue's name."""
    parent, _, suffix = path.rpartition(".")
    blob = bool(_BLOB_SUFFIX.fullmatch(suffix))
    if not blob and not _SPILL_SUFFIX.fullmatch(suffix):
        return None
    parent_info = describe(parent) if os.path.exists(parent) else None
    if (parent_info is None or parent_info.kind != "queue") and (
            not os.path.basename(parent).startswith(ANONYMOUS_PREFIX) or os.path.exists(parent)):
        return None  # not beside a queue: not ours to judge
    try:
        locked = lock_held(fd, LOCK_CREATOR)
    except OSError:
        locked = True
    young = time.time() - st.st_mtime < HEADLESS_AGE
    alive = locked or (young and parent_info is not None and parent_info.alive)
    kind = "queue-blob" if blob else "queue-spill"
    detail = ("being created" if alive else
              "left empty by a producer that died creating it")
    return QueueInfo(kind, name, st.st_size, 0, alive, detail)


def _describe_blob(fd: int, path: str, name: str, size: int) -> QueueInfo:
    parent, _, suffix = path.rpartition(".")
    try:
        locked = lock_held(fd, LOCK_CREATOR)  # the producer's, until it committed the reference
    except OSError:
        locked = True
    if locked:
        alive, detail = True, "a large message being put"
    elif not _queue_alive(parent):
        alive, detail = False, "a large message of a queue that is gone or stale"
    else:
        queued = _refs_queued(parent)
        alive = queued is None or suffix in queued
        detail = ("a large message in transit" if alive else
                  "a large message no longer queued (its consumer or producer died)")
    return QueueInfo("queue-blob", name, size, 0, alive, detail)


def _describe_spill(path: str, name: str, size: int) -> QueueInfo:
    parent, _, suffix = path.rpartition(".")
    seq = int(suffix[1:]) if _SPILL_SUFFIX.fullmatch(suffix) else -1
    alive = _queue_alive(parent)
    if alive:
        try:
            with open(parent, "rb") as f:
                head = f.read(L.HEADER)
            spill_r = struct.unpack_from("<Q", head, L.OFF_SPILL_R)[0]
            alive = seq >= 0 and (seq - (spill_r >> 32)) & 0xFFFFFFFF < 1 << 31
        except (OSError, struct.error):
            pass
    return QueueInfo("queue-spill", name, size, 0, alive,
                     "messages waiting beyond the ring" if alive else
                     "spilled messages no longer queued (the queue is gone, or read past)")


def _queue_alive(path: str) -> bool:
    """Whether the queue at ``path`` exists and is not stale (as describe says)."""
    info = describe(path)
    return info is not None and info.kind == "queue" and info.alive


def _refs_queued(path: str) -> Optional[set[str]]:
    """The suffixes of the message segments referenced from the ring or the spill of the
    queue at ``path`` (a snapshot read without locks: None if it kept moving or is not a
    queue). Only the ring's bytes in use are read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        for _ in range(10):
            head = os.pread(fd, L.HEADER, 0)
            if len(head) < L.HEADER or struct.unpack_from("<I", head)[0] != L.MAGIC:
                return None
            capacity, = struct.unpack_from("<Q", head, L.OFF_CAPACITY)
            h, = struct.unpack_from("<Q", head, L.OFF_HEAD)
            t, = struct.unpack_from("<Q", head, L.OFF_TAIL)
            used = (((t >> 32) - (h >> 32)) & 0xFFFFFFFF) * 8
            start = ((h >> 32) * 8) % capacity if capacity else 0
            if not capacity or used > capacity:
                return None
            first = min(used, capacity - start)
            span = (os.pread(fd, first, L.HEADER + start)
                    + os.pread(fd, used - first, L.HEADER))
            again = os.pread(fd, L.HEADER, 0)
            if again[L.OFF_HEAD:L.OFF_HEAD + 8] != head[L.OFF_HEAD:L.OFF_HEAD + 8]:
                continue
            # frames up to the first tail read were in the ring before it was read, and
            # head did not move, so none was overwritten meanwhile
            found = _refs_in(span, (t - h) & 0xFFFFFFFF, capacity)
            spilled = _refs_spilled(path, *struct.unpack_from("<Q", again, L.OFF_SPILL_R),
                                    *struct.unpack_from("<Q", head, L.OFF_SPILL_W))
            if found is not None and spilled is not None:
                return found | spilled
    except OSError:
        pass
    finally:
        os.close(fd)
    return None


def _refs_spilled(path: str, spill_r: int, spill_w: int) -> Optional[set[str]]:
    """Suffixes of the BLOB frames in the spill files between the read and write cursors
    (None: inconsistent). The read cursor is read after the write cursor: a file gone
    meanwhile was read past."""
    found: set[str] = set()
    seq, off = spill_r >> 32, spill_r & 0xFFFFFFFF
    wseq, end = spill_w >> 32, spill_w & 0xFFFFFFFF
    while (wseq - seq) & 0xFFFFFFFF < 1 << 31 and (seq, off) != (wseq, end):
        try:
            with open(f"{path}.s{seq}", "rb") as f:
                data = f.read()
        except FileNotFoundError:
            seq, off = (seq + 1) & 0xFFFFFFFF, 0
            continue
        except OSError:
            return None
        pos = off or L.SPILL_HEAD
        limit = end if seq == wseq else len(data)
        while pos + L.FRAME <= min(limit, len(data)):
            length, kind = struct.unpack_from("<II", data, pos)
            if length == kind == 0:
                break
            if kind == KIND_BLOB:
                ref = _parse_ref(data[pos + L.FRAME:pos + L.FRAME + length])
                if ref is not None:
                    found.add(ref[2])
            pos += (L.FRAME + length + 7) & ~7
        if seq == wseq:
            break
        seq, off = (seq + 1) & 0xFFFFFFFF, 0
    return found


def _refs_in(span: bytes, count: int, capacity: int) -> Optional[set[str]]:
    """Suffixes of the BLOB frames among the ``count`` frames of ``span`` (the ring's bytes
    in use, from head on; None: inconsistent)."""
    found: set[str] = set()
    pos = 0
    for _ in range(count):
        if pos + L.FRAME > len(span):
            return None
        length, kind = struct.unpack_from("<II", span, pos)
        if length > capacity // 2:
            return None
        if kind == KIND_BLOB:
            ref = _parse_ref(span[pos + L.FRAME:pos + L.FRAME + length])
            if ref is not None:
                found.add(ref[2])
        pos += (L.FRAME + length + 7) & ~7
    return found
