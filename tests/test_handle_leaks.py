"""What a call's C memory becomes when calls overlap: messages two threads receive at once
from one object, and the buffers of calls blocked in a thread that a fork() child does not
have."""

from __future__ import annotations

import ctypes
import os
import threading
import time
import tracemalloc
import warnings
from typing import Any

import pytest

from fastipc import Queue, mq


def _busy(obj: Any) -> int:
    """The calls of ``obj`` running now (the native handle's count, or the pure one's)."""
    return int(obj._busy) if obj.backend == "native" else len(obj._calls)


def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


# ---------------------------------------------------------------------------- mq receive


def test_two_threads_receiving_at_once_keep_no_message(backend: str, name: str) -> None:
    """Two receives blocked on one queue at once, then both given a message, many times: what
    each returned is freed once its caller drops it. (The object keeps at most the message it
    returned last, for an exception raised into that receive as it returned.)"""
    size, rounds = 8192, 60
    q = mq.MessageQueue(name, create=True, max_messages=4, max_message_size=size,
                        backend=backend)
    got: list[int] = []
    errors: list[BaseException] = []
    # each round: both threads blocked in receive, two messages sent, and neither thread
    # receiving again before the other had its message (they meet here, GIL released)
    meet = threading.Barrier(3, timeout=10)

    def receiver() -> None:
        try:
            while data := q.receive(timeout=10)[0]:  # until an empty message
                got.append(len(data))
                meet.wait()
        except BaseException as exc:  # reported below
            errors.append(exc)
            meet.abort()

    tracemalloc.start()
    try:
        threads = [threading.Thread(target=receiver) for _ in range(2)]
        for t in threads:
            t.start()
        before = 0
        for i in range(rounds):
            _until(lambda: _busy(q) == 2 or bool(errors))
            if i == 1:  # what the threads and a first message made stays allocated
                before = tracemalloc.get_traced_memory()[0]
            q.send(b"x" * size)
            q.send(b"y" * size)
            meet.wait()
        grown = tracemalloc.get_traced_memory()[0] - before
        for _ in threads:
            q.send(b"")
        for t in threads:
            t.join(10)
    finally:
        tracemalloc.stop()
        q.close()
        q.unlink()
    assert not errors and got == [size] * (2 * rounds)
    # one message left referenced a round would be 60 * 8 KiB
    assert grown < 8 * size, f"{grown} bytes still allocated after {2 * rounds} messages"


# ---------------------------------------------------------------------------- fork


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(f, ctypes.c_size_t) for f in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


_mallinfo2: Any = getattr(ctypes.CDLL(None), "mallinfo2", None)  # glibc 2.33+
if _mallinfo2 is not None:
    _mallinfo2.restype = _Mallinfo2


def _heap() -> tuple[int, int]:
    """(bytes of malloc's heap in use, bytes of it that the interpreter's allocators hold
    for Python: tracemalloc's count)."""
    info = _mallinfo2()
    return info.uordblks + info.hblkhd, tracemalloc.get_traced_memory()[0]


def _lost_by_a_fork_child(obj: Any, call: Any, threads: int) -> int:
    """Start ``threads`` threads blocked in ``call()`` on ``obj``, fork, and return how much
    more of malloc's heap the child holds than the parent did before the calls began, less
    what the interpreter holds for Python objects (tracemalloc): the memory C took for
    calls of threads that the child does not have. (The interpreter loses the objects of
    those threads' frames in a fork child, the pure backend's buffers among them: CPython's
    own, not counted.)"""
    errors: list[BaseException] = []
    go = threading.Event()

    def blocked() -> None:
        go.wait(10)
        try:
            call()
        except ValueError:
            pass  # closed below
        except BaseException as exc:  # reported below
            errors.append(exc)

    tracemalloc.start()
    workers = [threading.Thread(target=blocked) for _ in range(threads)]
    try:
        for t in workers:
            t.start()
        time.sleep(0.05)  # the threads made, waiting for `go`
        heap, python = _heap()
        go.set()
        _until(lambda: _busy(obj) == threads or bool(errors))
        time.sleep(0.05)  # well into their waits
        r, w = os.pipe()
        with warnings.catch_warnings():  # 3.12+: fork() of a process with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the at-fork handlers ran: the child's objects are as they stay
            code = 1
            try:
                heap_now, python_now = _heap()
                os.write(w, b"%d" % ((heap_now - heap) - (python_now - python)))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            report = f.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0 and report, "the child failed"
    finally:
        tracemalloc.stop()
        obj.close()  # ends the calls blocked here with ValueError
        for t in workers:
            t.join(10)
    assert not errors
    return int(report)


needs_mallinfo2 = pytest.mark.skipif(_mallinfo2 is None, reason="needs glibc's mallinfo2")


@needs_mallinfo2
def test_a_fork_child_frees_the_buffer_of_a_get_many_blocked_in_another_thread(
        backend: str) -> None:
    """get_many's buffer (1 MiB) and its lengths, held by a thread blocked in it as the
    process forks: gone in the child, which has no such thread."""
    q = Queue(capacity=4 << 20, backend=backend)
    lost = _lost_by_a_fork_child(q, lambda: q.get_many(timeout=10), 1)
    assert lost < 64 << 10, f"the child holds {lost} bytes of the blocked get_many"


@needs_mallinfo2
def test_a_fork_child_frees_the_buffers_of_receives_blocked_in_other_threads(
        backend: str, name: str) -> None:
    """The buffer of each receive that had to wait (max_message_size: 8 KiB), held by
    threads blocked in them as the process forks: gone in the child."""
    q = mq.MessageQueue(name, create=True, max_messages=4, max_message_size=8192,
                        backend=backend)
    q.unlink()
    with pytest.raises(TimeoutError):  # the buffer of the object's first attempts, made
        q.receive(timeout=0)
    lost = _lost_by_a_fork_child(q, lambda: q.receive(timeout=10), 8)
    assert lost < 4 * 8192, f"the child holds {lost} bytes of the 8 blocked receives"


def _blocked_sender(kind: str, backend: str, name: str) -> tuple[Any, Any, list[Any]]:
    """(the sending end, what else to close, its peers): a send_many of this end waits, the
    ring (or pipe) full and nobody reading."""
    from fastipc import pipe, pubsub, shm

    if kind == "pipe":
        reader, writer = pipe.pipe(backend=backend)
        return writer, writer, [reader]
    if kind == "shm":
        writer = shm.Writer(name, capacity=64 << 10, backend=backend)
        return writer, writer, [shm.Reader(name, timeout=5, backend=backend)]
    publisher = pubsub.Publisher(name, capacity=64 << 10, backend=backend)
    return publisher, publisher, [pubsub.Subscriber(name, timeout=5, backend=backend)]


@needs_mallinfo2
@pytest.mark.parametrize("kind", ["shm", "pubsub", "pipe"])
def test_a_fork_child_frees_the_batch_of_a_send_many_blocked_in_another_thread(
        backend: str, name: str, kind: str) -> None:
    """send_many's views of 20,000 messages (and the pipe's frames), held by a thread blocked
    in it, the ring or pipe full, as the process forks: gone in the child."""
    sender, _, peers = _blocked_sender(kind, backend, name)
    messages = [b"m" * 64] * 20000
    try:
        lost = _lost_by_a_fork_child(sender, lambda: sender.send_many(messages, timeout=10), 1)
    finally:
        for peer in peers:
            peer.close()
    assert lost < 64 << 10, f"the child holds {lost} bytes of the blocked send_many"
