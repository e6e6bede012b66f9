"""Every object of the shared-memory mechanisms (the channel's Writer and Reader,
SharedMemory, the fan-out's Publisher and Subscriber) is freed by reference counting alone:
with the garbage collector off, dropping the last reference after any use frees the object
and its backend's operations at once, with its fds, its mapping, its subscriber slot or its
reader's place and, for the ends that created it, its /dev/shm entry."""

from __future__ import annotations

import asyncio
import gc
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fastipc import pubsub, shm

SHM = Path("/dev/shm")


@contextmanager
def no_collector() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _mapped(name: str) -> bool:
    with open("/proc/self/maps") as f:
        return name in f.read()


def _gone_at_once(obj: Any) -> list[Callable[[], Any]]:
    """Weak references to ``obj`` and to its backend's operations."""
    refs = [weakref.ref(obj)]
    if getattr(obj, "_ops", None) is not None:
        refs.append(weakref.ref(obj._ops))
    return refs


def _use(sender: Any, receiver: Any, calls: str) -> None:
    """Use the two ends in one of the CALLS ways (a channel or a fan-out: the same names)."""
    if calls == "send_recv":
        sender.send(b"a")
        sender.send(b"b" * 3000, timeout=1)  # larger than the stage (streamed in fan-out)
        assert receiver.recv() == b"a"  # the fast path
        assert receiver.recv(timeout=1) == b"b" * 3000
    elif calls == "recv_many":
        sender.send_many([b"a", b"b"], timeout=1)
        assert receiver.recv_many(8, timeout=1) == [b"a", b"b"]
    elif calls == "recv_into_view":
        sender.send_many([b"a", b"b", b"c" * 900])
        assert receiver.recv_into(bytearray(8), timeout=1) == 1
        with receiver.recv_view(timeout=1) as view:
            assert bytes(view) == b"b"
        with receiver.recv_view(timeout=1) as view:
            kept = view[1:]  # kept past its block: held until it goes
        assert bytes(kept) == b"c" * 899
        del kept
    elif calls == "timeouts":
        for call in (lambda: receiver.recv(timeout=0), lambda: receiver.recv_many(timeout=0),
                     lambda: receiver.recv_into(bytearray(8), timeout=0),
                     lambda: receiver.recv_view(timeout=0)):
            with pytest.raises(TimeoutError):
                call()
        with pytest.raises(TimeoutError):
            receiver.recv(timeout=0.01)  # one that waited
    elif calls == "awaitables":

        async def main() -> None:
            await sender.send_async(b"a")
            assert await receiver.recv_async(timeout=1) == b"a"
            await sender.send_async(b"b" * 3000, timeout=1)
            assert await receiver.recv_async(timeout=1) == b"b" * 3000
            sender.send_many([b"c", b"d", b"e"])
            assert await receiver.recv_async() == b"c"  # the others taken (native)
            assert await receiver.recv_many_async(8, timeout=1) == [b"d", b"e"]
            try:
                await receiver.recv_async(timeout=0.01)
            except TimeoutError:
                pass
            else:
                raise AssertionError("no TimeoutError")

        asyncio.run(main())


CALLS = ["none", "send_recv", "recv_many", "recv_into_view", "timeouts", "awaitables"]
CASES = [(mechanism, calls) for mechanism in ("channel", "fanout") for calls in CALLS
         if (mechanism, calls) != ("fanout", "awaitables")]  # (the fan-out has none yet)


@pytest.mark.parametrize(("mechanism", "calls"), CASES)
def test_dropping_the_last_reference_frees_at_once(backend: str, name: str, mechanism: str,
                                                   calls: str) -> None:
    """The receiving end first: its ops go with it, and the sender is no longer held back
    (the channel's writer is told, the fan-out's publisher laps the ring); then the
    sending end: its /dev/shm entry, fds and mapping go at once."""
    fds = set(os.listdir("/proc/self/fd"))
    with no_collector():
        if mechanism == "channel":
            sender: Any = shm.Writer(name, capacity=4096, backend=backend)
            receiver: Any = shm.Reader(name, timeout=1, backend=backend)
        else:
            sender = pubsub.Publisher(name, capacity=4096, backend=backend)
            receiver = pubsub.Subscriber(name, timeout=1, backend=backend)
        _use(sender, receiver, calls)
        refs = _gone_at_once(receiver)
        del receiver
        assert [ref() for ref in refs] == [None] * len(refs)
        if mechanism == "channel":
            with pytest.raises(BrokenPipeError):
                sender.send(b"x", timeout=1)
        else:
            assert sender.subscribers == 0
            for i in range(64):  # many times the ring: nobody holds the publisher back
                sender.send(bytes([i]) * 200, timeout=1)
        assert (SHM / name).exists()
        refs = _gone_at_once(sender)
        del sender
        assert [ref() for ref in refs] == [None] * len(refs)
        assert not (SHM / name).exists()
        assert not _mapped(name)
        assert set(os.listdir("/proc/self/fd")) == fds


def test_shared_memory_is_freed_at_once(backend: str, name: str) -> None:
    fds = set(os.listdir("/proc/self/fd"))
    with no_collector():
        seg = shm.SharedMemory(name, size=4096, create=True, backend=backend)
        other = shm.SharedMemory(name, backend=backend)
        seg.buf[:5] = b"hello"
        assert bytes(other.buf[:5]) == b"hello"
        refs = [weakref.ref(seg), weakref.ref(other)]
        del seg, other
        assert [ref() for ref in refs] == [None, None]
        assert not _mapped(name)
        assert set(os.listdir("/proc/self/fd")) == fds
    shm.unlink(name)
