"""The life-cycle contract of every public object, as one test case run against every class
(CPython's test_selectors runs one base test against every selector): open, use, close (from
this thread or another), ``with``, ``repr``, and freeing by reference counting alone.

Every test here runs with the garbage collector off: an object must need no collection to
free its fds, mappings and /dev/shm entries (no reference cycles)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import fastipc
from fastipc import client, mq, pipe, sem, shm
from test_shm_references import no_collector

SHM = Path("/dev/shm")


@dataclass
class Made:
    """One open object, with a call of it that blocks until the object is closed (or None),
    one that does not block, and what else must go when the test ends."""

    obj: Any
    block: Callable[[], Any] | None
    call: Callable[[], Any]
    also: list[Any]
    names: list[str]  # /dev/shm entries this object created (gone once it is freed)


def _nothing_yet(call: Callable[..., Any]) -> Callable[[], None]:
    """A receive that finds nothing to take: TimeoutError at once while the object is open."""

    def attempt() -> None:
        try:
            call(timeout=0)
        except TimeoutError:
            pass

    return attempt


def _pipe_reader(backend: str, name: str) -> Made:
    r, w = pipe.pipe(backend=backend)
    return Made(r, r.recv, _nothing_yet(r.recv), [w], [])


def _pipe_writer(backend: str, name: str) -> Made:
    r, w = pipe.pipe(backend=backend)
    return Made(w, None, lambda: w.send(b"x"), [r], [])


def _fifo(backend: str, name: str) -> Made:
    path = f"/tmp/{name}.fifo"
    f = pipe.FIFO(path, create=True, backend=backend)

    def attempt() -> None:
        try:
            f.open_reader(timeout=0)  # no writer: times out at once
        except TimeoutError:
            pass

    return Made(f, f.open_reader, attempt, [], [])


def _mq(backend: str, name: str) -> Made:
    q = mq.MessageQueue("/" + name, create=True, max_messages=2, max_message_size=64,
                        backend=backend)
    q.unlink()
    return Made(q, q.receive, lambda: q.send(b"x"), [], [])


def _sem(backend: str, name: str) -> Made:
    s = sem.Semaphore("/" + name, create=True, value=0, backend=backend)
    s.unlink()
    return Made(s, s.acquire, s.release, [], [])


def _shared_memory(backend: str, name: str) -> Made:
    m = shm.SharedMemory(name, create=True, size=4096, backend=backend)
    m.unlink()
    return Made(m, None, lambda: m.size, [], [])


def _receiving(sender: type, receiver: type) -> Callable[[str, str], Made]:
    """The receiving end of a ring whose sending end is a ``sender``."""

    def make(backend: str, name: str) -> Made:
        w = sender(name, 4096, backend=backend)
        r = receiver(name, backend=backend)
        return Made(r, r.recv, _nothing_yet(r.recv), [w], [])

    return make


def _sending(sender: type) -> Callable[[str, str], Made]:
    """The sending end of a ring, which creates it."""

    def make(backend: str, name: str) -> Made:
        w = sender(name, 4096, backend=backend)
        return Made(w, None, lambda: w.send(b"x"), [], [name])

    return make


def _queue(kind: type) -> Callable[[str, str], Made]:
    def make(backend: str, name: str) -> Made:
        q = kind(backend=backend)
        return Made(q, q.get, lambda: q.put(b"x"), [], [])

    return make


def _client(backend: str, name: str) -> Made:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    c = client.connect(("127.0.0.1", listener.getsockname()[1]), backend=backend)
    peer, _ = listener.accept()
    listener.close()
    return Made(c, c.recv, lambda: c.send(b"x"), [peer], [])


FACTORIES: dict[str, Callable[[str, str], Made]] = {
    "PipeReader": _pipe_reader,
    "PipeWriter": _pipe_writer,
    "FIFO": _fifo,
    "MessageQueue": _mq,
    "Semaphore": _sem,
    "SharedMemory": _shared_memory,
    "Reader": _receiving(shm.Writer, shm.Reader),
    "Writer": _sending(shm.Writer),
    "Subscriber": _receiving(shm.Publisher, shm.Subscriber),
    "Publisher": _sending(shm.Publisher),
    "Queue": _queue(fastipc.Queue),
    "JoinableQueue": _queue(fastipc.JoinableQueue),
    "SimpleQueue": _queue(fastipc.SimpleQueue),
    "Client": _client,
}


@pytest.fixture(autouse=True)
def collector_off() -> Iterator[None]:
    with no_collector():
        yield


# The classes with a call that waits for a peer (a close from another thread must end it),
# and those whose with block closes (a Semaphore's acquires and releases, as threading's).
WAITING = sorted(k for k in FACTORIES if k not in ("PipeWriter", "SharedMemory", "Writer",
                                                   "Publisher"))
CLOSED_BY_WITH = sorted(k for k in FACTORIES if k != "Semaphore")


def _made(kind: str, backend: str, name: str) -> Iterator[Made]:
    m = FACTORIES[kind](backend, name)
    try:
        yield m
    finally:
        m.obj.close()
        for other in m.also:
            other.close()
        if kind == "FIFO":
            Path(f"/tmp/{name}.fifo").unlink(missing_ok=True)


@pytest.fixture(params=sorted(FACTORIES))
def made(request: pytest.FixtureRequest, backend: str, name: str) -> Iterator[Made]:
    yield from _made(request.param, backend, name)


@pytest.fixture(params=CLOSED_BY_WITH)
def made_closed_by_with(request: pytest.FixtureRequest, backend: str,
                        name: str) -> Iterator[Made]:
    yield from _made(request.param, backend, name)


@pytest.fixture(params=WAITING)
def made_waiting(request: pytest.FixtureRequest, backend: str, name: str) -> Iterator[Made]:
    yield from _made(request.param, backend, name)


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_close_is_idempotent_and_refuses_later_calls(made: Made, backend: str) -> None:
    obj = made.obj
    assert not obj.closed
    assert obj.backend == backend
    made.call()
    assert f"backend={backend}" in repr(obj)
    obj.close()
    obj.close()
    assert obj.closed
    assert "closed" in repr(obj)
    with pytest.raises(ValueError, match="closed"):
        made.call()
    if made.block is not None:
        with pytest.raises(ValueError, match="closed"):
            made.block()


def test_with_closes_at_the_end_of_the_block(made_closed_by_with: Made) -> None:
    made = made_closed_by_with
    with made.obj as obj:
        assert obj is made.obj
    assert made.obj.closed


def test_fileno_is_the_kernel_fd_while_open(made: Made) -> None:
    obj = made.obj
    try:
        fd = obj.fileno()
    except OSError:
        return  # no kernel fd (a futex-based object): OSError while open is the contract
    assert fd >= 0 and os.fstat(fd)
    obj.close()
    with pytest.raises(ValueError):
        obj.fileno()


def test_close_from_another_thread_ends_a_blocked_call(made_waiting: Made) -> None:
    made = made_waiting
    assert made.block is not None
    outcome: list[BaseException | str] = []

    def blocked() -> None:
        try:
            made.block()  # type: ignore[misc]
            outcome.append("returned")
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.05)
    closer = threading.Thread(target=made.obj.close)
    started = time.monotonic()
    closer.start()
    t.join(5)
    closer.join(5)
    assert not t.is_alive(), "the blocked call did not end"
    assert time.monotonic() - started < 1.0
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome


def test_dropping_the_last_reference_frees_at_once(made_kind: str, backend: str,
                                                   name: str) -> None:
    kind = made_kind
    before = _fds()
    m = FACTORIES[kind](backend, name)
    m.call()
    names = m.names
    for other in m.also:
        other.close()
    del m  # the only reference to the object
    assert _fds() <= before, f"{kind}: fds left open"
    for entry in names:
        assert not (SHM / entry).exists(), f"{kind}: /dev/shm/{entry} left"
    if kind == "FIFO":
        Path(f"/tmp/{name}.fifo").unlink(missing_ok=True)


@pytest.fixture(params=sorted(FACTORIES))
def made_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
