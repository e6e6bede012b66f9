"""A signal whose handler raises ends a blocked call whenever it arrives: also while the call
spins before it sleeps, or between two of its sleep's slices, when no system call is there
for it to interrupt.

Another thread sends the signal to the blocked (main) thread with ``pthread_kill`` at
moments that fall on the slices' ends: that thread's timer and the blocked call's slice
expire together, so the signal lands while the call is between two sleeps. The call was
given a long timeout: a signal it missed shows as a ``TimeoutError`` seconds later (or a call
that returned late), not as a hang.
"""

from __future__ import annotations

import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

import fastipc
from fastipc import client, mq, pipe, pubsub, sem, shm
from helpers import closed_and_unlinked


class Interrupt(Exception):
    pass


def _interrupt(signum: int, frame: Any) -> None:
    raise Interrupt


#: when the signal is sent, in seconds into the blocked call: on the 100 ms slices' ends
#: (the 20 ms ones of a semaphore end there too), and between them
DELAYS = (0.1, 0.2, 0.3, 0.15)
KINDS = ["shm", "shm-send", "pubsub", "mq", "sem", "queue", "pipe", "client"]
#: how late after the signal the call may end: a slice, and a loaded machine's margin
LATE = 0.6


@contextmanager
def _blocked(kind: str, backend: str, name: str) -> Iterator[Callable[[float], object]]:
    """A call of ``kind`` that blocks (nothing arrives), taking its timeout."""
    with ExitStack() as stack:
        if kind == "shm":
            stack.enter_context(shm.Writer(name, capacity=4096, backend=backend))
            r = stack.enter_context(shm.Reader(name, timeout=5, backend=backend))
            yield lambda t: r.recv(timeout=t)
        elif kind == "shm-send":
            w = stack.enter_context(shm.Writer(name, capacity=4096, backend=backend))
            stack.enter_context(shm.Reader(name, timeout=5, backend=backend))
            while True:
                try:
                    w.send(b"x" * 100, timeout=0)
                except TimeoutError:
                    break
            yield lambda t: w.send(b"x" * 100, timeout=t)
        elif kind == "pubsub":
            stack.enter_context(pubsub.Publisher(name, capacity=4096, backend=backend))
            s = stack.enter_context(pubsub.Subscriber(name, timeout=5, backend=backend))
            yield lambda t: s.recv(timeout=t)
        elif kind == "mq":
            q = stack.enter_context(closed_and_unlinked(
                mq.MessageQueue(name, create=True, max_messages=2, max_message_size=64,
                                backend=backend),
                lambda: mq.unlink(name)))
            yield lambda t: q.receive(timeout=t)
        elif kind == "sem":
            s = stack.enter_context(closed_and_unlinked(
                sem.Semaphore(name, create=True, value=0, backend=backend),
                lambda: sem.unlink(name)))

            def acquire(t: float) -> None:
                if not s.acquire(timeout=t):
                    raise TimeoutError
            yield acquire
        elif kind == "queue":
            q = stack.enter_context(fastipc.Queue(capacity=1 << 16, backend=backend))
            yield lambda t: q.get(timeout=t)
        elif kind == "pipe":
            r, w = pipe.pipe(backend=backend)
            stack.enter_context(r)
            stack.enter_context(w)
            yield lambda t: r.recv(timeout=t)
        elif kind == "client":  # connected to a listener that never answers
            path = stack.enter_context(tempfile.TemporaryDirectory(prefix="fipc-")) + "/s"
            listener = stack.enter_context(socket.socket(socket.AF_UNIX))
            listener.bind(path)
            listener.listen()
            c = stack.enter_context(client.connect(path, timeout=5, backend=backend))
            stack.enter_context(listener.accept()[0])
            yield lambda t: c.recv(timeout=t)
        else:
            raise AssertionError(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_signal_between_two_sleeps_ends_the_call(kind: str, backend: str, name: str) -> None:
    main = threading.main_thread().ident
    assert threading.get_ident() == main
    old = signal.signal(signal.SIGALRM, _interrupt)
    try:
        with _blocked(kind, backend, name) as call:
            for delay in DELAYS:
                timer = threading.Timer(delay, signal.pthread_kill, (main, signal.SIGALRM))
                t0 = time.monotonic()
                timer.start()
                try:
                    with pytest.raises(Interrupt):
                        call(4)
                    took = time.monotonic() - t0
                finally:
                    timer.join()
                assert took < delay + LATE, f"sent at {delay} s, it ended the call at {took:.3f} s"
                with pytest.raises(TimeoutError):
                    call(0.05)  # usable after the interruption
    finally:
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("kind", KINDS)
def test_a_signal_delivered_to_another_thread_ends_the_main_threads_call(
        kind: str, backend: str, name: str) -> None:
    """The kernel gives a process-directed signal to any thread that does not block it: here
    the main thread blocks it, so another thread takes it, and Python's handler, which only
    runs in the main thread, runs there once the blocked call looks again (a slice)."""
    idle = threading.Event()
    other = threading.Thread(target=idle.wait, args=(10,))
    other.start()  # before the main thread blocks the signal: a thread inherits the mask
    old = signal.signal(signal.SIGALRM, _interrupt)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        with _blocked(kind, backend, name) as call:
            for delay in DELAYS[:2]:
                t0 = time.monotonic()
                signal.setitimer(signal.ITIMER_REAL, delay)
                with pytest.raises(Interrupt):
                    call(4)
                took = time.monotonic() - t0
                assert took < delay + LATE, f"sent at {delay} s, it ended the call at {took:.3f} s"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        idle.set()
        other.join()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
        signal.signal(signal.SIGALRM, old)
