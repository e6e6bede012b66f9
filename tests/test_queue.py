"""fastipc.queue: the multiprocessing.Queue surface on both backends, across processes and
backends, numpy buffers out of band, messages larger than the ring, life cycle, liveness."""

from __future__ import annotations

import array
import asyncio
import errno
import gc
import multiprocessing as mp
import os
import pickle
import queue as stdqueue
import signal
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from conftest import PREFIX, SHM_DIR
from fastipc import _core
from fastipc import queue as fq
from fastipc._backend import queue as layout
from fastipc.queue import Empty, Full, NamedQueue, Queue, describe
from helpers import close_ends_call, run_python, start_python

SMALL = 1 << 16  # a small ring: wraps and fills quickly


@pytest.fixture(autouse=True)
def anonymous_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anonymous queues made by tests carry the prefix the leak check looks at."""
    monkeypatch.setattr(fq, "ANONYMOUS_PREFIX", PREFIX + "anon-")


@pytest.fixture
def q(backend: str) -> Iterator[Queue]:
    with Queue(capacity=SMALL, backend=backend) as queue:
        yield queue


# ---------------------------------------------------------------- layout


def test_layout_matches_the_c_header() -> None:
    _, lib = _core.native()
    for key, value in layout.LAYOUT.items():
        assert getattr(lib, f"FIPC_Q_{key}") == value, key


# ---------------------------------------------------------------- the drop-in surface


def test_put_get_objects_in_order(q: Queue) -> None:
    items: list[Any] = [(1, "x" * 32, 2.5), None, {"a": [1, 2]}, b"raw", "text", 3 ** 80]
    for item in items:
        q.put(item)
    assert q.qsize() == len(items)
    assert not q.empty()
    assert [q.get(timeout=1) for _ in items] == items
    assert q.empty()


def test_empty_and_full_are_the_stdlib_exceptions(backend: str) -> None:
    with Queue(2, capacity=SMALL, backend=backend) as q:
        with pytest.raises(stdqueue.Empty):
            q.get_nowait()
        with pytest.raises(stdqueue.Empty):
            q.get(block=False)
        q.put_nowait(1)
        q.put(2, timeout=0.01)
        assert q.full()
        with pytest.raises(stdqueue.Full):
            q.put_nowait(3)
        t0 = time.monotonic()
        with pytest.raises(Full) as info:
            q.put(3, timeout=0.1)
        assert time.monotonic() - t0 >= 0.09
        assert isinstance(info.value, TimeoutError)
        assert q.get() == 1 and q.get() == 2
        t0 = time.monotonic()
        with pytest.raises(Empty):
            q.get(timeout=0.1)
        assert time.monotonic() - t0 >= 0.09
        q.join_thread()
        q.cancel_join_thread()


def test_what_does_not_fit_the_ring_waits_in_the_spill(q: Queue) -> None:
    """maxsize 0: a put never blocks and never raises queue.Full (multiprocessing.Queue
    buffers without bound); what does not fit the ring waits in spill files, in order."""
    for i in range(300):
        q.put_nowait(bytes([i % 256]) * 1000)
    q.put_many([b"many"] * 50, -1, block=False)
    assert q.qsize() == 350
    assert [p for p in os.listdir(SHM_DIR) if p.startswith(q.name + ".s")]
    assert [q.get_bytes(timeout=1) for _ in range(300)] == [bytes([i % 256]) * 1000
                                                          for i in range(300)]
    assert q.get_many(100, timeout=1) == [b"many"] * 50
    q.put_bytes(b"ring again", timeout=0)
    assert q.get_bytes(timeout=1) == b"ring again"


def test_bad_arguments(q: Queue, backend: str) -> None:
    with pytest.raises(ValueError):
        q.put(1, timeout=-1)
    with pytest.raises(ValueError):
        q.get(timeout=-0.5)
    with pytest.raises(TypeError):
        q.get(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        q.put_bytes("text")
    with pytest.raises(ValueError):
        q.get_many(0)
    with pytest.raises(ValueError):
        Queue(capacity=5000, backend=backend)
    with pytest.raises(ValueError):
        Queue(capacity=1024, backend=backend)
    with pytest.raises(TypeError):
        Queue("3", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Queue(name="a/b", backend=backend)
    with pytest.raises(ValueError):
        Queue(name="x" * 250, create=True, backend=backend)


def test_unpicklable_object_leaves_the_queue_intact(q: Queue) -> None:
    q.put(1)
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        q.put(lambda: 0)
    with pytest.raises(TypeError):
        q.put(threading.Lock())
    q.put(2)
    assert q.qsize() == 2
    assert q.get() == 1 and q.get() == 2


def test_message_over_max_message_size(backend: str) -> None:
    with Queue(capacity=SMALL, max_message_size=1000, backend=backend) as q:
        with pytest.raises(ValueError):
            q.put(b"x" * 2000)
        with pytest.raises(ValueError):
            q.put_bytes(b"x" * 1001)
        with pytest.raises(ValueError):
            q.put(np.zeros(200))
        with pytest.raises(ValueError):
            q.put_many([1, b"x" * 2000])
        q.put_bytes(b"x" * 1000)
        assert q.qsize() == 2  # the 1 of put_many went before the large one
        assert q.get() == 1 and q.get_bytes() == b"x" * 1000


def test_closed_queue_raises_value_error(backend: str) -> None:
    q = Queue(capacity=SMALL, backend=backend)
    q.close()
    q.close()
    assert q.closed
    for call in (lambda: q.put(1), q.get, lambda: q.put_bytes(b""), q.get_bytes, q.qsize,
                 q.empty, q.full, q.get_nowait, lambda: q.put_many([1]), q.get_many,
                 lambda: pickle.dumps(q), lambda: q.maxsize, lambda: q.put(1, False, -1)):
        with pytest.raises(ValueError, match=f"^Queue {q.name} is closed$"):
            call()


def test_closed_queue_raises_value_error_whatever_the_arguments(backend: str) -> None:
    q = Queue(capacity=SMALL, backend=backend)
    q.close()
    for call in (lambda: q.put_bytes("text"), lambda: q.put_bytes(b"", -1),
                 lambda: q.get(timeout=-1), lambda: q.get_bytes("1"),
                 lambda: q.get_many(0), lambda: q.put(1, timeout=float("nan"))):
        with pytest.raises(ValueError, match=f"^Queue {q.name} is closed$"):
            call()


_NAN = float("nan")
_BAD_CALLS: list[tuple[str, Callable[[Queue], Any]]] = [
    ("put negative timeout", lambda q: q.put(1, timeout=-1)),
    ("put NaN timeout", lambda q: q.put(1, True, _NAN)),
    ("put str timeout", lambda q: q.put(1, timeout="1")),
    ("put unknown keyword", lambda q: q.put(1, nope=1)),
    ("put no object", lambda q: q.put()),
    ("put too many", lambda q: q.put(1, True, None, 4)),
    ("put twice", lambda q: q.put(1, obj=2)),
    ("put_bytes str", lambda q: q.put_bytes("text")),
    ("put_bytes int", lambda q: q.put_bytes(123)),
    ("put_bytes negative timeout", lambda q: q.put_bytes(b"x", -1)),
    ("put_bytes NaN timeout", lambda q: q.put_bytes(b"x", _NAN)),
    ("put_bytes unknown keyword", lambda q: q.put_bytes(b"x", nope=1)),
    ("put_bytes block by position", lambda q: q.put_bytes(b"x", 1, True)),
    ("get negative timeout", lambda q: q.get(timeout=-1)),
    ("get NaN timeout", lambda q: q.get(True, _NAN)),
    ("get str timeout", lambda q: q.get(timeout="1")),
    ("get unknown keyword", lambda q: q.get(nope=1)),
    ("get_bytes negative timeout", lambda q: q.get_bytes(-1)),
    ("get_bytes unknown keyword", lambda q: q.get_bytes(nope=1)),
    ("get_many zero", lambda q: q.get_many(0)),
    ("get_many float", lambda q: q.get_many(1.5)),
    ("get_many bool", lambda q: q.get_many(True)),
    ("get_many unknown keyword", lambda q: q.get_many(nope=1)),
    ("put_many negative timeout", lambda q: q.put_many([1], timeout=-1)),
]


def test_bad_arguments_fail_alike_on_both_backends() -> None:
    """Wrong types, negative or NaN timeouts, str data, unknown or missing arguments: the
    same exception type and message from the native handle's C methods as from the pure
    backend's Python ones."""
    seen: dict[str, list[tuple[type, str]]] = {}
    for backend in ("native", "pure"):
        with Queue(capacity=SMALL, backend=backend) as q:
            for what, call in _BAD_CALLS:
                with pytest.raises((TypeError, ValueError)) as info:
                    call(q)
                seen.setdefault(what, []).append((info.type, str(info.value)))
            assert q.empty()
    for what, (native, pure) in seen.items():
        assert native == pure, what


class _Counting(Queue):
    puts: ClassVar[list[Any]] = []

    def put(self, obj: Any, block: bool = True, timeout: Any = None) -> None:
        self.puts.append(obj)
        super().put(obj, block, timeout)


def test_a_subclass_overriding_put_is_called(backend: str) -> None:
    """The native handle's C methods come after a subclass's own methods (its put is the
    one called, by put_nowait too) and before Queue's (its super().put is the C one)."""
    _Counting.puts.clear()
    with _Counting(capacity=SMALL, backend=backend) as q:
        assert isinstance(q, _Counting) and q.backend == backend
        q.put(1)
        q.put_nowait(2)
        assert _Counting.puts == [1, 2]
        assert q.get_many(2, timeout=1) == [1, 2]
        again = pickle.loads(pickle.dumps(q))  # attaches as a Queue
        again.close()


def test_dropping_the_last_reference_frees_at_once(backend: str) -> None:
    """No reference cycle: with the garbage collector off, the queue's name, mapping and
    fds go as the last reference does (after every per-message call was used once)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        fds = set(os.listdir("/proc/self/fd"))
        q = Queue(capacity=SMALL, backend=backend)
        path = f"{SHM_DIR}/{q.name}"
        q.put({"x": 1}), q.put_bytes(b"abc"), q.put_many([1, np.zeros(3)])
        assert q.get() == {"x": 1} and q.get_bytes() == b"abc"
        assert q.get_many(1) == [1]
        assert q.get_nowait().shape == (3,)
        ref = weakref.ref(q)
        del q
        assert ref() is None
        assert not os.path.exists(path)
        assert set(os.listdir("/proc/self/fd")) <= fds
    finally:
        if was_enabled:
            gc.enable()


def test_block_false_ignores_timeout_on_every_variant(q: Queue) -> None:
    """As multiprocessing.Queue: block=False tries once, whatever timeout says."""
    q.put(1, False, -1)
    q.put_bytes(b"two", -1, block=False)
    q.put_many([3, 4], -1, block=False)
    assert q.get(False, -1) == 1
    assert q.get_bytes(-1, block=False) == b"two"
    assert q.get_many(10, -1, block=False) == [3, 4]
    for call in (lambda: q.get(False, -1), lambda: q.get_bytes(-1, block=False),
                 lambda: q.get_many(1, -1, block=False)):
        t0 = time.monotonic()
        with pytest.raises(Empty):
            call()
        assert time.monotonic() - t0 < 1
    with pytest.raises(ValueError):
        q.get(True, -1)  # a blocking call still checks its timeout


def test_put_bytes_get_bytes_and_mixing(q: Queue) -> None:
    q.put_bytes(b"abc")
    q.put_bytes(bytearray(b"def"))
    q.put_bytes(memoryview(b"xghi")[1:])
    q.put_bytes(b"")
    q.put(b"pickled")
    q.put([1])
    assert q.get_bytes() == b"abc"
    assert q.get() == b"def"  # raw bytes come back as bytes from get() too
    assert q.get_bytes() == b"ghi"
    assert q.get_bytes() == b""
    assert q.get_bytes() == b"pickled"
    with pytest.raises(TypeError):
        q.get_bytes()
    assert q.empty()


def test_put_many_get_many(q: Queue) -> None:
    items = [(i, "s" * 32, float(i)) for i in range(3000)]  # more than the ring holds
    got: list[Any] = []

    def consume() -> None:
        while len(got) < len(items):
            got.extend(q.get_many(64, timeout=5))

    t = threading.Thread(target=consume)
    t.start()
    q.put_many(items, timeout=5)
    t.join(10)
    assert got == items
    with pytest.raises(Empty):
        q.get_many(timeout=0)


def test_put_many_timeout_says_how_many_went(backend: str) -> None:
    with Queue(5, capacity=SMALL, backend=backend) as q:
        with pytest.raises(Full) as info:
            q.put_many(range(10), timeout=0.05)
        assert info.value.messages_put == 5  # type: ignore[attr-defined]
        assert q.get_many() == [0, 1, 2, 3, 4]


def test_put_many_mixes_small_objects_buffers_and_failures_in_order(q: Queue) -> None:
    """Small objects travel in batches, an object with buffers on its own, in order; an
    object that cannot be pickled raises after everything before it went."""
    arr = np.arange(5.0)
    q.put_many([1, 2, arr, 3, b"x" * 100])
    got = q.get_many(timeout=1)
    assert got[:2] == [1, 2] and got[3:] == [3, b"x" * 100]
    np.testing.assert_array_equal(got[2], arr)
    with pytest.raises(TypeError):
        q.put_many([4, 5, threading.Lock(), 6])
    assert q.get_many(timeout=1) == [4, 5]
    assert q.empty()


def test_put_many_puts_what_precedes_any_pickling_error(q: Queue) -> None:
    """Whatever error pickling an object raises (PicklingError for a lambda, not only
    TypeError), the objects before it are put, in order, and messages_put says how many."""
    with pytest.raises((pickle.PicklingError, AttributeError)) as info:
        q.put_many([1, lambda: 1, 3])
    assert info.value.messages_put == 1  # type: ignore[attr-defined]
    assert q.qsize() == 1 and q.get(timeout=1) == 1
    with pytest.raises(TypeError) as error:
        q.put_many([4, np.arange(3.0), 5, threading.Lock(), 6])
    assert error.value.messages_put == 3  # type: ignore[attr-defined]
    got = q.get_many(timeout=1)
    assert got[0] == 4 and got[2] == 5 and len(got) == 3
    np.testing.assert_array_equal(got[1], np.arange(3.0))
    assert q.empty()


@pytest.mark.parametrize("dtype", ["float64", "int8", "uint16", "complex64", "bool"])
def test_numpy_arrays_out_of_band(q: Queue, dtype: str) -> None:
    arrays = [
        np.arange(24).astype(dtype).reshape(2, 3, 4),
        np.asfortranarray(np.arange(12).astype(dtype).reshape(3, 4)),
        np.arange(40).astype(dtype).reshape(5, 8)[::2, 1::3],  # not contiguous
        np.zeros((0, 3), dtype=dtype),
        np.array(7, dtype=dtype),
    ]
    q.put({"arrays": arrays, "tag": "t"})
    got = q.get(timeout=1)
    assert got["tag"] == "t"
    for a, b in zip(arrays, got["arrays"], strict=False):
        assert b.dtype == a.dtype and b.shape == a.shape
        np.testing.assert_array_equal(a, b)
    assert got["arrays"][0].flags.writeable


def test_buffers_then_a_memoryview_keep_their_order(q: Queue) -> None:
    """An array's buffer and then a memoryview: each comes back with its own bytes (the
    pickling attempt abandoned for the memoryview must not leave a buffer behind), by put,
    put_many and put_async."""
    def item(i: int) -> list[Any]:
        return [np.arange(3) + i, memoryview(b"abc%d" % i), np.arange(2.0) * i]

    def check(got: Any, i: int) -> None:
        assert np.array_equal(got[0], np.arange(3) + i)
        assert bytes(got[1]) == b"abc%d" % i
        assert np.array_equal(got[2], np.arange(2.0) * i)

    q.put(item(0))
    q.put_many([item(1), item(2)])
    asyncio.run(q.put_async(item(3)))
    for i in range(4):
        check(q.get(timeout=1), i)


def _views() -> list[tuple[memoryview, bool]]:
    """(view, whether it must come back: memoryview.cast can rebuild it)."""
    structured = np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")])
    return [(memoryview(array.array("d")), True), (memoryview(array.array("i", [1, -2])), True),
            (memoryview(b""), True), (memoryview(b"xyz"), True),
            (memoryview(np.float64(2.5)), True), (memoryview(np.arange(12.0).reshape(3, 4)), True),
            (memoryview(np.arange(12, dtype="i2").reshape(3, 4))[::2], True),
            (memoryview(np.array([True, False, True])), True),
            (memoryview(np.zeros((0, 3))), False), (memoryview(np.zeros((2, 0, 3), "i4")), False),
            (memoryview(np.arange(3, dtype="e")), False),
            (memoryview(np.arange(3, dtype=">i4")), False),
            (memoryview(np.arange(3, dtype="complex128")), False),
            (memoryview(structured), False)]


def test_memoryviews_round_trip_or_are_refused_at_put(q: Queue) -> None:
    """Every memoryview either comes back equal (format, shape, bytes) or is refused by put
    with a clear error before anything is queued; those memoryview.cast can rebuild (native
    formats, one-dimensional empty ones) come back."""
    for view, must in _views():
        for obj in (view, [view]):
            try:
                q.put(obj)
            except (TypeError, ValueError) as exc:
                assert not must, (view.format, view.shape)
                assert "cannot be put" in str(exc)
                assert q.qsize() == 0
                continue
            got = q.get(timeout=1)
            got = got if isinstance(obj, memoryview) else got[0]
            assert (got.format, got.shape, got.tobytes()) == (view.format, view.shape,
                                                               view.tobytes())


def test_one_message_that_fails_to_unpickle_fails_alone(q: Queue) -> None:
    """get_many raises the bad message's error once; the others of its batch (before and
    after it, a message larger than the ring included) come with the next gets."""
    big = bytes(range(256)) * 1024
    q.put(1)
    q.put(2)
    q.put(_Unloadable())
    q.put(3)
    q.put(big)
    q.put_bytes(b"four")
    assert q.qsize() == 6
    with pytest.raises(_Unloaded):
        q.get_many(10, timeout=1)
    assert q.qsize() == 5
    assert q.get(timeout=1) == 1
    assert q.get_many(2, timeout=1) == [2, 3]
    assert q.get_many(10, timeout=1) == [big, b"four"]
    q.put(_Unloadable())
    q.put("next")
    with pytest.raises(_Unloaded):
        q.get_many(10, timeout=1)
    assert q.get(timeout=1) == "next"
    with pytest.raises(Empty):
        q.get_many(10, timeout=0)


class _Unloaded(Exception):
    pass


def _unload() -> None:
    raise _Unloaded


class _Unloadable:
    def __reduce__(self) -> tuple[Any, ...]:
        return (_unload, ())


def test_buffers_are_copied_once_not_pickled(q: Queue) -> None:
    a = np.random.default_rng(1).random(4000)  # 32 KB: stays in the ring
    q.put([a, bytearray(b"z" * 5000), pickle.PickleBuffer(b"pb" * 100)])
    # the frame holds the pickle and, out of band, the array and the PickleBuffer
    b, ba, pb = q.get(timeout=1)
    np.testing.assert_array_equal(a, b)
    assert bytes(ba) == b"z" * 5000
    assert bytes(pb) == b"pb" * 100
    # memoryviews (which pickle refuses) travel out of band too, format and shape kept
    grid: Any = np.arange(12, dtype=np.int32).reshape(3, 4)
    q.put({"v": memoryview(grid), "strided": memoryview(grid[:, ::2]), "b": memoryview(b"ab")})
    got = q.get(timeout=1)
    assert got["v"].format == "i" and got["v"].tolist() == grid.tolist()
    assert got["strided"].tolist() == grid[:, ::2].tolist()
    assert got["b"].tobytes() == b"ab"
    assert q.empty()


def test_messages_larger_than_the_ring(q: Queue, backend: str) -> None:
    big = np.random.default_rng(2).random(100_000)  # 800 KB through a 64 KiB ring
    raw = os.urandom(300_000)
    q.put({"big": big})
    q.put_bytes(raw)
    q.put("small")
    q.put(raw)
    got = q.get(timeout=5)
    np.testing.assert_array_equal(got["big"], big)
    assert q.get_bytes(timeout=5) == raw
    assert q.get(timeout=5) == "small"
    assert q.get_many(timeout=5) == [raw]
    leftovers = [p for p in os.listdir(SHM_DIR) if p.startswith(q.name + ".")]
    assert leftovers == []


def test_large_message_put_that_times_out_leaves_nothing(backend: str) -> None:
    with Queue(1, capacity=SMALL, backend=backend) as q:
        q.put(0)
        with pytest.raises(Full):
            q.put(b"x" * 100_000, timeout=0.05)
        assert [p for p in os.listdir(SHM_DIR) if p.startswith(q.name + ".")] == []
        assert q.get() == 0 and q.empty()


def test_get_into_a_staging_buffer_does_not_alias(q: Queue) -> None:
    q.put(np.arange(10))
    q.put(np.arange(10, 20))
    a = q.get()
    b = q.get()
    assert list(a) == list(range(10)) and list(b) == list(range(10, 20))


class _Reduced:
    """Counts its pickling; carries an out-of-band buffer after an in-band payload."""

    reduced = 0

    def __init__(self, head: list[int], data: bytes) -> None:
        self.head, self.data = head, data

    def __reduce_ex__(self, protocol: Any) -> Any:
        type(self).reduced += 1
        return _Reduced, (self.head, pickle.PickleBuffer(self.data))


def test_buffers_found_late_in_the_object_still_go_out_of_band(q: Queue) -> None:
    """The hot put's first pickling stops at the first out-of-band buffer and the full path
    pickles again: what arrives is the object, once, its buffer out of band."""
    obj = _Reduced(list(range(2000)), b"late" * 1000)
    q.put(obj)
    got = q.get(timeout=1)
    assert got.head == obj.head and bytes(got.data) == obj.data
    assert type(got.data) is not bytes  # out of band: it comes back as a (writable) buffer
    assert q.empty()
    _Reduced.reduced = 0
    q.put({"no": "buffers"})
    assert _Reduced.reduced == 0 and q.get(timeout=1) == {"no": "buffers"}


def test_a_type_once_seen_with_buffers_still_carries_plain_objects(q: Queue) -> None:
    """After an object of a type had buffers, the next objects of that type take the full
    path at once (a hint, bounded in size): those without buffers arrive the same."""
    fq._buffered.clear()
    q.put({"a": np.arange(3)})
    assert dict in fq._buffered
    q.put({"a": 1})
    q.put_many([{"b": 2}, {"c": np.arange(2)}, (3, "x")])
    got = [q.get(timeout=1) for _ in range(2)] + q.get_many(timeout=1)
    assert got[0]["a"].tolist() == [0, 1, 2] and got[1] == {"a": 1} and got[2] == {"b": 2}
    assert got[3]["c"].tolist() == [0, 1] and got[4] == (3, "x")
    for i in range(fq._BUFFERED_MAX + 1):
        fq._remember_buffered(type(f"T{i}", (), {}))
    assert len(fq._buffered) <= fq._BUFFERED_MAX


class _RefusesPickling:
    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("not today")


def test_a_type_error_of_the_object_itself_reaches_the_caller(q: Queue) -> None:
    with pytest.raises(TypeError, match="not today"):
        q.put(_RefusesPickling())
    with pytest.raises(TypeError, match="not today"):
        q.put([np.zeros(3), _RefusesPickling()])
    assert q.empty()


def test_hot_get_returns_the_length_alone_for_the_kind_it_expects(q: Queue) -> None:
    """The backend seam of the hot get (both backends): the length for the expected kind,
    kind << 32 | length for another, and a stage whose slices are bytes; each get marks
    what it took (kind << 32 | length) in the stage, until the caller clears it."""
    ops = q._ops
    get = ops.get_staged
    stage, out, mark = ops.new_stage()
    q.put_bytes(b"abc")
    q.put_bytes(b"defg")
    q.put((1, 2))
    assert mark[0] == 0
    assert get(stage, layout.STAGE, 0.0, layout.KIND_BYTES) == 3
    assert out[:3] == b"abc" and type(out[:3]) is bytes
    assert mark[0] == layout.KIND_BYTES << 32 | 3
    mark[0] = 0
    assert get(stage, layout.STAGE, 0.0, layout.KIND_PICKLE) == layout.KIND_BYTES << 32 | 4
    assert out[:4] == b"defg" and mark[0] == layout.KIND_BYTES << 32 | 4
    mark[0] = 0
    n = get(stage, layout.STAGE, 0.0, layout.KIND_PICKLE)
    assert 0 < n <= 0xFFFFFFFF and pickle.loads(out[:n]) == (1, 2)
    assert mark[0] == layout.KIND_PICKLE << 32 | n
    mark[0] = 0
    assert get(stage, layout.STAGE, 0.0, layout.KIND_PICKLE) == -errno.ETIMEDOUT
    assert mark[0] == 0


# ---------------------------------------------------------------- life cycle


def test_anonymous_queue_is_removed_on_close_and_named_queue_attaches(backend: str,
                                                                     name: str) -> None:
    """An anonymous queue goes with its creator's close; a named one stays until unlink()
    (close() never removes a name)."""
    q = Queue(capacity=SMALL, backend=backend)
    path = f"{SHM_DIR}/{q.name}"
    assert q.name.startswith(PREFIX) and os.path.exists(path)
    q.close()
    assert not os.path.exists(path)
    with pytest.raises(FileNotFoundError):
        NamedQueue(name, backend=backend)
    with NamedQueue(name, create=True, capacity=SMALL, maxsize=3, backend=backend) as owner:
        with pytest.raises(FileExistsError):
            NamedQueue(name, create=True, backend=backend)
        with NamedQueue(name, backend=backend) as other:
            assert other.maxsize == 3
            other.put("hi")
            assert owner.get() == "hi"
            other.put("kept")
    assert os.path.exists(f"{SHM_DIR}/{name}")
    with NamedQueue(name, backend=backend) as later:
        assert later.get(timeout=1) == "kept"
    owner.unlink()
    assert not os.path.exists(f"{SHM_DIR}/{name}")


def test_not_a_queue(backend: str, name: str) -> None:
    with open(f"{SHM_DIR}/{name}", "wb") as f:
        f.write(b"\0" * (layout.HEADER + SMALL))
    try:
        with pytest.raises(OSError):
            NamedQueue(name, backend=backend)
        assert describe(f"{SHM_DIR}/{name}") is None
    finally:
        os.unlink(f"{SHM_DIR}/{name}")


def test_unlink_then_attached_keep_working(q: Queue, backend: str) -> None:
    other = pickle.loads(pickle.dumps(q))
    q.unlink()
    with pytest.raises(FileNotFoundError):
        pickle.loads(pickle.dumps(q))
    other.put(1)
    assert q.get() == 1
    other.close()


@pytest.mark.parametrize("op", ["get", "put", "get_many"])
def test_close_from_another_thread_wakes_a_blocked_call(backend: str, op: str) -> None:
    q = Queue(1, capacity=SMALL, backend=backend)
    if op == "put":
        q.put(0)
    error = close_ends_call(lambda: q.put(1) if op == "put" else getattr(q, op)(), q.close,
                            settle=0.2, join=2, within=1)
    assert isinstance(error, ValueError)


@pytest.mark.parametrize("op", ["get", "get_many"])
def test_close_in_a_fork_child_while_a_parent_thread_was_blocked(backend: str,
                                                                 op: str) -> None:
    """The child inherits no call in progress: its close() is prompt."""
    q = Queue(capacity=SMALL, backend=backend)
    t = threading.Thread(target=lambda: getattr(q, op)(timeout=10))
    t.start()
    try:
        time.sleep(0.2)
        with warnings.catch_warnings():  # 3.12+: fork() of a process with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            fds = len(os.listdir("/proc/self/fd"))
            t0 = time.monotonic()
            q.close()
            slow = time.monotonic() - t0 > 1
            os._exit(1 if slow else 2 if len(os.listdir("/proc/self/fd")) >= fds else 0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) != 1, "close() in the child was slow"
        assert os.waitstatus_to_exitcode(status) == 0, "close() in the child freed nothing"
        q.put(None)
    finally:
        t.join(10)
        q.close()


def test_signal_handler_raising_into_a_blocked_get(q: Queue) -> None:
    class Interrupt(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Interrupt

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupt):
            q.get(timeout=5)
        seen: list[int] = []
        signal.signal(signal.SIGALRM, lambda s, f: seen.append(s))
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Empty):
            q.get(timeout=0.3)  # the handler ran, the wait went on to its timeout
        assert seen
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    q.put("still usable")
    assert q.get() == "still usable"


def test_describe_and_owner_liveness(backend: str, name: str) -> None:
    # the owner is a child that dies with SIGKILL: its lock goes with it (no pid probe)
    code = f"""
        import os, sys, time
        from fastipc.queue import NamedQueue
        q = NamedQueue({name!r}, create=True, capacity={SMALL}, backend={backend!r})
        q.put(1); q.put(2)
        print("ready", flush=True)
        time.sleep(60)
    """
    proc = start_python(code)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        info = describe(f"{SHM_DIR}/{name}")
        assert info is not None
        assert (info.kind, info.name, info.owner, info.alive) == ("queue", name, proc.pid, True)
        assert info.detail.startswith("2 messages")
        # a process of our own forked after attaching does not keep the owner alive
        with NamedQueue(name, backend=backend) as q:
            proc.kill()
            proc.wait()
            info = describe(f"{SHM_DIR}/{name}")
            assert info is not None and not info.alive
            assert q.get() == 1  # attached participants keep working
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        os.unlink(f"{SHM_DIR}/{name}")


def _fork_child_exits(q: Queue, conn: Any) -> None:
    conn.send(q.get(timeout=5))
    q.put("from child")


def test_fork_child_neither_keeps_the_owner_alive_nor_removes_the_queue(backend: str) -> None:
    q = Queue(capacity=SMALL, backend=backend)
    path = f"{SHM_DIR}/{q.name}"
    parent, child = mp.get_context("fork").Pipe()
    p = mp.get_context("fork").Process(target=_fork_child_exits, args=(q, child))
    p.start()
    q.put("to child")
    assert parent.recv() == "to child"
    p.join(5)
    assert q.get(timeout=5) == "from child"
    # a plain fork whose child exits normally (atexit runs) leaves the queue in place, and
    # the child holds no owner lock
    pid = os.fork()
    if pid == 0:
        code = 0 if describe(path) is not None else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert os.path.exists(path)
    info = describe(path)
    assert info is not None and info.alive
    parent.close()
    child.close()
    q.close()
    assert not os.path.exists(path)


def test_normal_exit_removes_an_anonymous_queue() -> None:
    code = f"""
        import sys
        from fastipc import queue
        queue.ANONYMOUS_PREFIX = {PREFIX + "exit-"!r}
        q = queue.Queue(capacity={SMALL})
        q.put(1)
        print(q.name)
    """
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert not os.path.exists(f"{SHM_DIR}/{res.stdout.strip()}")


def test_owner_killed_leaves_a_stale_queue() -> None:
    code = f"""
        import os, signal, sys
        from fastipc import queue
        queue.ANONYMOUS_PREFIX = {PREFIX + "crash-"!r}
        q = queue.Queue(capacity={SMALL})
        print(q.name, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    res = run_python(code)
    path = f"{SHM_DIR}/{res.stdout.strip()}"
    try:
        info = describe(path)
        assert info is not None and info.alive is False and info.kind == "queue"
    finally:
        os.unlink(path)


# ---------------------------------------------------------------- across processes


def _producer(q: Queue, first: int, count: int) -> None:
    for i in range(first, first + count):
        if i % 7 == 0:
            q.put(np.full(i % 50 + 1, i, dtype=np.int64))
        elif i % 5 == 0:
            q.put_many([(i, "x" * (i % 300))])
        else:
            q.put((i, "x" * (i % 300)))


def _consumer(q: Queue, conn: Any) -> None:
    got: list[int] = []
    while True:
        batch = q.get_many(16, timeout=20) if len(got) % 2 else [q.get(timeout=20)]
        stop = False
        for item in batch:
            if item is None:
                if stop:
                    q.put(None)  # another consumer's sentinel
                stop = True
            elif isinstance(item, np.ndarray):
                assert (item == item[0]).all() and len(item) == item[0] % 50 + 1
                got.append(int(item[0]))
            else:
                assert item[1] == "x" * (item[0] % 300)
                got.append(item[0])
        if stop:
            conn.send(got)
            return


def _many_to_many(producer_q: Queue, consumer_q: Queue) -> None:
    ctx = mp.get_context("fork")
    per = 400
    producers = [ctx.Process(target=_producer, args=(producer_q, p * per, per))
                 for p in range(4)]
    pipes = [ctx.Pipe() for _ in range(3)]
    consumers = [ctx.Process(target=_consumer, args=(consumer_q, c)) for _, c in pipes]
    for proc in producers + consumers:
        proc.start()
    for proc in producers:
        proc.join(60)
        assert proc.exitcode == 0
    for _ in consumers:
        producer_q.put(None)
    results = [r.recv() for r, _ in pipes]
    for proc in consumers:
        proc.join(30)
        assert proc.exitcode == 0
    for r, c in pipes:
        r.close()
        c.close()
    everything = sorted(i for got in results for i in got)
    assert everything == list(range(4 * per))  # each item exactly once


def test_four_producers_three_consumers_exactly_once(backend: str) -> None:
    with Queue(capacity=SMALL, backend=backend) as q:
        _many_to_many(q, q)


def test_cross_backend(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    with NamedQueue(name, create=True, capacity=SMALL, backend=sender) as a, \
            NamedQueue(name, backend=receiver) as b:
        a.unlink()
        _many_to_many(a, b)


_START_METHOD = """
import multiprocessing as mp, os, sys
import numpy as np
from fastipc import queue

def child(q, conn):
    item = q.get(timeout=10)
    q.put(("echo", item, os.getpid()))
    conn.send("done")

if __name__ == "__main__":
    method, backend, prefix = sys.argv[1:]
    queue.ANONYMOUS_PREFIX = prefix
    ctx = mp.get_context(method)
    with queue.Queue(capacity=1 << 16, backend=backend) as q:
        parent, end = ctx.Pipe()
        proc = ctx.Process(target=child, args=(q, end))
        proc.start()
        q.put(np.arange(5))
        assert parent.recv() == "done"
        tag, item, pid = q.get(timeout=10)
        assert tag == "echo" and list(item) == [0, 1, 2, 3, 4] and pid == proc.pid
        proc.join(10)
        assert proc.exitcode == 0
        print("ok", q.name)
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_start_methods(method: str, backend: str, tmp_path: Any) -> None:
    """A Queue passes to multiprocessing.Process (pickled by name under spawn and
    forkserver, inherited under fork); run in a fresh interpreter, which the start methods
    need to import the child's function from."""
    script = tmp_path / "start_method.py"
    script.write_text(_START_METHOD)
    res = subprocess.run([sys.executable, str(script), method, backend, PREFIX + "sm-"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok ")
    assert not os.path.exists(f"{SHM_DIR}/{res.stdout.split()[1]}")


def test_threads_share_one_handle(q: Queue) -> None:
    """Several threads put and get on one handle at once: each item once, intact (every
    concurrent get has its own staging buffer)."""
    count, threads = 3000, 4
    got: list[list[Any]] = [[] for _ in range(threads)]

    def produce(k: int) -> None:
        for i in range(k, count, threads):
            q.put((i, str(i) * (i % 40)))

    def consume(k: int) -> None:
        while True:
            items = q.get_many(8, timeout=10) if k % 2 else [q.get(timeout=10)]
            if None in items:  # after the drain: sentinels only, one is ours
                for _ in range(items.count(None) - 1):
                    q.put(None)
                return
            got[k].extend(items)

    workers = [threading.Thread(target=produce, args=(k,)) for k in range(threads)]
    workers += [threading.Thread(target=consume, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers[:threads]:
        w.join(30)
    while q.qsize():
        time.sleep(0.01)
    for _ in range(threads):
        q.put(None)
    for w in workers[threads:]:
        w.join(30)
    items = sorted(i for g in got for i in g)
    assert items == [(i, str(i) * (i % 40)) for i in range(count)]


@pytest.mark.parametrize("corruption", ["length", "kind", "tail", "count", "oob"])
def test_corrupted_segment_raises_not_crashes(backend: str, name: str,
                                             corruption: str) -> None:
    """Lengths and words read from shared memory are checked: a corrupted queue raises
    OSError (EBADMSG) in get; the attack runs in a child, so a crash fails the test."""
    code = f"""
        import errno, struct, sys
        import numpy as np
        from fastipc._backend import queue as L
        from fastipc.queue import NamedQueue
        q = NamedQueue({name!r}, create=True, capacity={SMALL}, backend={backend!r})
        q.put_bytes(b"x" * 100)
        q.put([1, 2, 3])
        mm, data = q._mm, L.HEADER
        c = {corruption!r}
        if c == "length":
            struct.pack_into("<I", mm, data, 0xFFFFFF00)
        elif c == "kind":
            struct.pack_into("<I", mm, data + 4, 0)
        elif c == "tail":
            struct.pack_into("<Q", mm, L.OFF_TAIL, (1 << 63) | 7)
        elif c == "count":
            tail = struct.unpack_from("<Q", mm, L.OFF_TAIL)[0]
            struct.pack_into("<Q", mm, L.OFF_TAIL, tail + 1000)
        elif c == "oob":  # a valid frame whose out-of-band header lies
            q.get_bytes()
            q.get()
            q.put(np.zeros(8))  # numpy arrays travel out of band
            at = (struct.unpack_from("<Q", mm, L.OFF_HEAD)[0] >> 32) * 8 % {SMALL}
            struct.pack_into("<I", mm, data + at, struct.unpack_from("<I", mm, data + at)[0])
            struct.pack_into("<Q", mm, data + at + 8 + 8 + 8, 1 << 40)
        try:
            q.get_many(timeout=0)
        except OSError as exc:
            print("raised", exc.errno == errno.EBADMSG)
        else:
            print("no error")
        q.close()
        q.unlink()
    """
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "raised True"


# ---------------------------------------------------------------- the benchmark's harness


@pytest.mark.parametrize("workload", ["objects 1:1", "objects 4:4", "batches", "bytes"])
def test_bench_harness_counts_every_message(backend: str, workload: str) -> None:
    """The queue benchmark's runner (fastipc.bench.queue) on a small count: every message
    arrives and the producers' stop markers end the run (it raises otherwise)."""
    from fastipc.bench import queue as bench

    def make(raw: bool = False) -> Any:
        return bench._fastipc(backend, raw)

    producers = 4 if workload == "objects 4:4" else 1
    seconds = bench._run(lambda: make(workload == "bytes"),
                         b"x" * 64 if workload == "bytes" else bench.SMALL, 1000, producers,
                         batched=workload == "batches", raw=workload == "bytes")
    assert seconds > 0


def test_owner_close_and_normal_exit_remove_queued_large_messages(backend: str,
                                                                   name: str) -> None:
    """An anonymous queue's close removes its large messages with it. A named queue's
    creator that exits normally leaves the queue and its large messages (they are queued):
    another process takes them, and unlink() removes the name and what is left."""
    q = Queue(capacity=SMALL, backend=backend)
    for i in range(3):
        q.put_bytes(bytes([i]) * 100_000)
    q.put(np.zeros(50_000))
    q.close()  # the no_leaks fixture checks that the segments went too
    out = run_python("""
        import sys
        from fastipc.queue import NamedQueue
        q = NamedQueue(sys.argv[1], create=True, capacity=1 << 16, backend=sys.argv[2])
        for i in range(3):
            q.put_bytes(bytes([i]) * 100_000)
        """, name, backend)
    assert out.returncode == 0, out.stderr
    assert len([p for p in SHM_DIR.iterdir() if p.name.startswith(name + ".")]) == 3
    info = describe(f"{SHM_DIR}/{name}")
    assert info is not None and info.alive and info.owner == 0  # kept, not stale
    with NamedQueue(name, backend=backend) as later:
        assert later.get_bytes(timeout=1) == bytes([0]) * 100_000
        later.unlink()
    assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name)]
