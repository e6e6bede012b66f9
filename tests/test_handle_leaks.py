"""What a call's C memory becomes when calls overlap: messages two threads receive at once
from one object, and the buffers of calls blocked in a thread that a fork() child does not
have."""

from __future__ import annotations

import threading
import time
import tracemalloc
from typing import Any

from fastipc import mq


def _busy(obj: Any) -> int:
    """The calls of ``obj`` running now (the native handle's count, or the pure one's)."""
    return obj._busy if obj.backend == "native" else len(obj._calls)  # type: ignore[no-any-return]


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
