"""fastipc.pubsub: one Publisher, many Subscribers, on both backends and across them, with
real segments and real processes (SIGKILL, fork, mid-stream joins, overruns)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import itertools
import mmap
import os
import random
import signal
import struct
import subprocess
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import test_aio
from fastipc import _core, pubsub
from fastipc._backend import pubsub as layout
from fastipc._cli import pubsub as cli
from helpers import (
    Ticker,
    close_ends_awaits,
    close_ends_call,
    killed_at_end,
    run_on,
    run_python,
    send_with_cancels,
    start_python,
)
from test_shm import running
from test_shm_faults import KEPT, _keep, _pattern, _read_kept

SHM = Path("/dev/shm")


def message(i: int, size: int | None = None) -> bytes:
    """Message number i: its number, a body derived from it, and a CRC of both."""
    n = (i * 37) % 300 if size is None else size
    body = struct.pack("<Q", i) + bytes((i + k) & 0xFF for k in range(min(n, 256))) * (
        n // 256 + 1)
    body = body[:8 + n]
    return body + struct.pack("<I", zlib.crc32(body))


def check_message(data: bytes) -> int:
    """The number of an intact message (AssertionError for a torn or corrupted one)."""
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    assert zlib.crc32(body) == crc, "torn or corrupted message"
    return int(struct.unpack("<Q", body[:8])[0])


# The subscriber process of the fan-out tests: attaches, says "ready", receives until EOF,
# checks every message, and prints the numbers it got (as ranges) and `missed`.
SUBSCRIBER = r"""
import struct, sys, time, zlib
from fastipc import pubsub
name, backend, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
sub = pubsub.Subscriber(name, timeout=20, backend=backend)
print("ready", flush=True)
got = []
while True:
    try:
        data = sub.recv(timeout=30)
    except EOFError:
        break
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if zlib.crc32(body) != crc:
        print("TORN", flush=True)
        sys.exit(3)
    got.append(struct.unpack("<Q", body[:8])[0])
    if delay:
        time.sleep(delay)
print("got", len(got), got[0] if got else -1, got[-1] if got else -1,
      int(all(b > a for a, b in zip(got, got[1:]))), sub.missed, flush=True)
sub.close()
"""


def _start_subscribers(name: str, backend: str, count: int, delay: float = 0.0
                       ) -> list[subprocess.Popen[str]]:
    procs = [start_python(SUBSCRIBER, name, backend, str(delay)) for _ in range(count)]
    return procs


def _wait_ready(pub: pubsub.Publisher, procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
    assert pub.subscribers == len(procs)


def _results(procs: list[subprocess.Popen[str]]) -> list[tuple[int, ...]]:
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=60)
        assert p.returncode == 0, stderr + stdout
        fields = stdout.split()
        assert fields[0] == "got", stdout
        out.append(tuple(int(f) for f in fields[1:]))
    return out


# ---------------------------------------------------------------------------- layout


def test_layout_matches_the_c_enum() -> None:
    _, lib = _core.native()
    for name, value in layout.LAYOUT.items():
        assert getattr(lib, f"FIPC_PUB_{name}") == value, name
    c_names = {n[len("FIPC_PUB_"):] for n in dir(lib) if n.startswith("FIPC_PUB_")}
    assert c_names == set(layout.LAYOUT)
    assert layout.HEADER == layout.OFF_SLOTS + layout.SLOTS * layout.SLOT_SIZE


# ---------------------------------------------------------------------------- API


def test_send_recv_every_way(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=1 << 16, backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        assert oct(os.stat(SHM / name).st_mode & 0o777) == oct(0o600)
        assert not os.get_inheritable(pub.fileno()) and not os.get_inheritable(sub.fileno())
        assert pub.capacity == sub.capacity == 1 << 16
        assert pub.backend == sub.backend == backend
        pub.send(b"one")
        pub.send(bytearray(b"two"))
        pub.send(memoryview(b"xthreex")[1:-1])
        pub.send(b"")
        pub.send_many([b"a", b"bc", b"def"])
        assert sub.recv(timeout=1) == b"one"
        buf = bytearray(10)
        assert sub.recv_into(buf, timeout=1) == 3 and buf[:3] == b"two"
        with sub.recv_view(timeout=1) as view:
            assert view.readonly and bytes(view) == b"three"
        assert sub.recv(timeout=1) == b""
        assert sub.recv_many(10, timeout=1) == [b"a", b"bc", b"def"]
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0)
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0.05)
        assert sub.missed == 0
        assert "Subscriber" in repr(sub) and backend in repr(pub)


def test_iteration_ends_when_the_publisher_closes(backend: str, name: str) -> None:
    pub = pubsub.Publisher(name, backend=backend)
    with pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        for i in range(100):
            pub.send(message(i))
        pub.close()
        assert not (SHM / name).exists()  # unlinked; the mapping stays readable
        assert [check_message(m) for m in sub] == list(range(100))
        with pytest.raises(EOFError):
            sub.recv(timeout=1)


def test_subscriber_sees_only_what_follows_its_attach(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub:
        for i in range(1000):  # no subscriber: the publisher never waits
            pub.send(message(i), timeout=0)
        with pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
            with pytest.raises(TimeoutError):
                sub.recv(timeout=0)
            for i in range(1000, 1020):
                pub.send(message(i))
            assert [check_message(sub.recv(timeout=1)) for _ in range(20)] == \
                list(range(1000, 1020))


def test_large_messages_stream_through_the_ring(backend: str, name: str) -> None:
    big = [os.urandom(n) for n in (5000, 70000, 300000, 16384)]
    with pubsub.Publisher(name, capacity=1 << 14, backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as a, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as b:
        sender = threading.Thread(target=lambda: [pub.send(m, timeout=10) for m in big])
        sender.start()
        got_b: list[bytes] = []
        reader = threading.Thread(target=lambda: got_b.extend(b.recv(timeout=10)
                                                                for _ in big))
        reader.start()
        got_a = []
        for m in big:
            buf = bytearray(len(m) + 10)
            n = a.recv_into(buf, timeout=10)
            got_a.append(bytes(buf[:n]))
        sender.join()
        reader.join()
        assert got_a == big and got_b == big


def test_recv_into_too_small_keeps_the_message(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=1 << 14, backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        pub.send(b"x" * 100)
        with pytest.raises(ValueError, match="too small"):
            sub.recv_into(bytearray(10), timeout=1)
        assert sub.recv(timeout=1) == b"x" * 100
        with pytest.raises(TypeError):
            sub.recv_into(b"read-only", timeout=1)


def test_drop_oldest_limits_message_size(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, overflow="drop_oldest",
                          backend=backend) as pub:
        assert pub.overflow == "drop_oldest"
        pub.send(b"x" * (1024 - layout.FR_HDR))
        with pytest.raises(ValueError, match="drop_oldest"):
            pub.send(b"x" * 1025)
    with pubsub.Publisher(name, max_message_size=10, backend=backend) as pub:
        with pytest.raises(OSError) as info:
            pub.send(b"x" * 11)
        assert info.value.errno == errno.EMSGSIZE


def test_drop_oldest_in_process_counts_missed(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, overflow="drop_oldest",
                          backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        for i in range(1000):
            pub.send(message(i), timeout=0)
        got = [check_message(m) for m in sub.recv_many(2000, timeout=0)]
        assert got == list(range(got[0], 1000))
        assert sub.missed == got[0] > 0
        pub.send(message(1000))
        with sub.recv_view(timeout=1) as view:  # a view of a copy under drop_oldest
            assert check_message(bytes(view)) == 1000


def test_bad_arguments(backend: str, name: str) -> None:
    with pytest.raises(TypeError):
        pubsub.Publisher(123, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pubsub.Publisher("a/b", backend=backend)
    with pytest.raises(ValueError):
        pubsub.Publisher(name, overflow="never", backend=backend)
    with pytest.raises(TypeError):
        pubsub.Publisher(name, overflow=1, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        pubsub.Publisher(name, capacity=0, backend=backend)
    with pytest.raises(TimeoutError):  # no publisher appears
        pubsub.Subscriber(name, timeout=0, backend=backend)
    with pytest.raises(ValueError):
        pubsub.Subscriber(name, timeout=-1, backend=backend)
    with pubsub.Publisher(name, backend=backend) as pub:
        with pytest.raises(FileExistsError):
            pubsub.Publisher(name, backend=backend)
        with pytest.raises(TypeError):
            pub.send("text")
        with pytest.raises(TypeError):
            pub.send(12)
        with pytest.raises(TypeError):
            pub.send_many(b"abc")
        with pytest.raises(TypeError):
            pub.send_many([b"a", "b"])
        with pytest.raises(ValueError):
            pub.send(b"x", timeout=-1)
        with pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
            with pytest.raises(ValueError):
                sub.recv(timeout=-0.5)
            with pytest.raises(TypeError):
                sub.recv(timeout="1")  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                sub.recv_many(0)
    assert not list(SHM.glob(".fastipc-pub-*"))  # no temporary name left behind


def test_closed_objects_raise_value_error(backend: str, name: str) -> None:
    pub = pubsub.Publisher(name, backend=backend)
    sub = pubsub.Subscriber(name, timeout=1, backend=backend)
    sub.close()
    sub.close()
    pub.close()
    pub.close()
    for call in (lambda: pub.send(b"x"), lambda: pub.send_many([b"x"]), pub.fileno,
                 lambda: pub.subscribers, lambda: sub.recv(), lambda: sub.recv_many(),
                 lambda: sub.recv_into(bytearray(1)), lambda: sub.recv_view(),
                 lambda: sub.missed, sub.fileno, lambda: pub.send("not even bytes")):
        with pytest.raises(ValueError):
            call()


def test_subscriber_limit(backend: str, name: str) -> None:
    with pubsub.Publisher(name, backend=backend) as pub:
        subs = [pubsub.Subscriber(name, timeout=1, backend=backend)
                for _ in range(pubsub.MAX_SUBSCRIBERS)]
        try:
            assert pub.subscribers == 64
            with pytest.raises(OSError, match="64 subscriber slots") as info:
                pubsub.Subscriber(name, timeout=1, backend=backend)
            assert info.value.errno == errno.EBUSY
            subs.pop().close()  # a slot frees up
            subs.append(pubsub.Subscriber(name, timeout=1, backend=backend))
            pub.send(b"all")
            assert {s.recv(timeout=1) for s in subs} == {b"all"}
        finally:
            for s in subs:
                s.close()
        assert pub.subscribers == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_segment_of_another_user_is_refused(backend: str, name: str) -> None:
    with pubsub.Publisher(name, backend=backend):
        os.chown(SHM / name, 12345, 12345)
        with pytest.raises(PermissionError, match="uid 12345, not 0"):
            pubsub.Subscriber(name, timeout=1, backend=backend)
        with pubsub.Subscriber(name, timeout=1, owner=12345, backend=backend) as sub:
            assert sub.name == name


def test_not_a_publisher_segment(backend: str, name: str) -> None:
    fd = os.open(SHM / name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, layout.HEADER + 4096)
        os.pwrite(fd, b"JUNK", 0)
        with pytest.raises(OSError) as info:
            pubsub.Subscriber(name, timeout=1, backend=backend)
        assert info.value.errno == errno.EBADMSG
        assert pubsub.describe(str(SHM / name)) is None
    finally:
        os.close(fd)
        os.unlink(SHM / name)


def test_describe(backend: str, name: str) -> None:
    with pubsub.Publisher(name, overflow="drop_oldest", backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend):
        pub.send(b"x")
        info = pubsub.describe(str(SHM / name))
        assert info is not None
        assert (info.kind, info.name, info.owner, info.alive) == \
            ("publisher", name, os.getpid(), True)
        assert info.size == os.stat(SHM / name).st_size
        assert "1 subscriber," in info.detail and "drop_oldest" in info.detail
    assert pubsub.describe(str(SHM / name)) is None  # gone


# ---------------------------------------------------------------------------- threads, signals


def test_close_from_another_thread_wakes_recv(backend: str, name: str) -> None:
    with pubsub.Publisher(name, backend=backend):
        sub = pubsub.Subscriber(name, timeout=1, backend=backend)
        error = close_ends_call(sub.recv, sub.close, join=2)
        assert isinstance(error, ValueError)


def test_close_from_another_thread_wakes_send(backend: str, name: str) -> None:
    pub = pubsub.Publisher(name, capacity=4096, backend=backend)
    with pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        while True:  # fill the ring: the subscriber does not read
            try:
                pub.send(b"x" * 100, timeout=0)
            except TimeoutError:
                break
        error = close_ends_call(lambda: pub.send(b"y" * 100), pub.close, join=2)
        assert isinstance(error, ValueError)
        n = len(list(sub))  # what was published whole is still delivered, then EOF
        assert n > 0


class Interrupt(Exception):
    """What _interrupt raises."""


def _interrupt(signum: int, frame: Any) -> None:
    """A signal handler that raises: the call it lands in is cut short."""
    raise Interrupt


def test_signal_raising_into_recv_leaves_the_subscriber_usable(cross: tuple[str, str],
                                                                name: str) -> None:
    """A handler that raises, and a timeout, each cut a recv short in the middle of a
    streamed message: the next recv delivers the message whole, never a part."""
    sender, receiver = cross

    big = bytes(range(256)) * 400
    proc = start_python("""
        import sys, time
        from fastipc import pubsub
        pub = pubsub.Publisher(sys.argv[1], capacity=1 << 14, backend=sys.argv[2])
        while pub.subscribers < 1:
            time.sleep(0.005)
        print("ready", flush=True)
        sys.stdin.readline()
        pub.send(bytes(range(256)) * 400, timeout=30)
        pub.send(b"after", timeout=30)
        sys.stdin.readline()
        pub.close()
    """, name, sender, stdin=subprocess.PIPE)
    old = signal.signal(signal.SIGALRM, _interrupt)
    try:
        sub = pubsub.Subscriber(name, timeout=10, backend=receiver)
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupt):
            sub.recv()  # nothing yet: blocked, then interrupted
        proc.stdin.write("go\n")
        proc.stdin.flush()
        time.sleep(0.3)  # the publisher has filled the ring and waits for us
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            buf = bytearray(len(big) + 1)
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with pytest.raises(Interrupt):
                sub.recv_into(buf)  # takes what is there, then waits for the rest
            with pytest.raises(TimeoutError):
                sub.recv(timeout=0.1)
            with pytest.raises(ValueError, match="too small"):
                sub.recv_into(bytearray(10), timeout=0.1)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            os.kill(proc.pid, signal.SIGCONT)
        assert sub.recv_into(buf, timeout=10) == len(big)
        assert buf[:len(big)] == big
        assert sub.recv(timeout=10) == b"after"
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
        sub.close()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        proc.kill()
        proc.communicate()


def test_eintr_is_retried_with_the_time_left(backend: str, name: str) -> None:
    hits = [0]

    def handler(signum: int, frame: Any) -> None:
        hits[0] += 1

    old = signal.signal(signal.SIGALRM, handler)
    try:
        with pubsub.Publisher(name, capacity=1 << 14, backend=backend) as pub, \
                pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
            signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                sub.recv(timeout=0.3)
            assert 0.25 < time.monotonic() - t0 < 3
            big = os.urandom(200000)
            t = threading.Thread(target=pub.send, args=(big,), kwargs={"timeout": 10})
            t.start()
            got = bytearray(len(big))
            assert sub.recv_into(got, timeout=10) == len(big)
            t.join()
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert got == big and hits[0] > 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_send_timeout_abandons_a_streamed_message(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        with pytest.raises(TimeoutError):
            pub.send(b"z" * 20000, timeout=0.05)  # the subscriber reads nothing meanwhile
        got: list[bytes] = []
        t = threading.Thread(target=lambda: got.append(sub.recv(timeout=5)))
        t.start()
        pub.send(b"next", timeout=5)
        t.join()
        assert got == [b"next"]  # the part of the abandoned message is never delivered


def test_signal_raising_into_a_streamed_send_abandons_it(backend: str, name: str) -> None:
    """send() without a timeout (the one-call path, its progress kept in the handle) cut
    short by a handler half-way through a streamed message: the next send starts afresh
    and the subscriber gets only whole messages."""

    old = signal.signal(signal.SIGALRM, _interrupt)
    try:
        with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
                pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
            with pytest.raises(Interrupt):
                signal.setitimer(signal.ITIMER_REAL, 0.05)
                pub.send(b"z" * 20000)  # the ring fills; nobody reads
            signal.setitimer(signal.ITIMER_REAL, 0)
            got: list[bytes] = []
            t = threading.Thread(target=lambda: got.extend(
                [sub.recv(timeout=5), sub.recv(timeout=5)]))
            t.start()
            pub.send(b"y" * 9000)
            pub.send(b"next")
            t.join()
            assert got == [b"y" * 9000, b"next"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------- processes


def test_one_publisher_four_subscribers(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=1 << 15, backend=backend) as pub:
        procs = _start_subscribers(name, backend, 4)
        _wait_ready(pub, procs)
        n = 3000
        for i in range(n):
            pub.send(message(i, 20000 if i % 500 == 7 else None), timeout=20)
        pub.close()
        for count, first, last, increasing, missed in _results(procs):
            assert (count, first, last, increasing, missed) == (n, 0, n - 1, 1, 0)


def test_cross_backend_fanout(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    with pubsub.Publisher(name, capacity=1 << 15, backend=sender) as pub:
        procs = _start_subscribers(name, receiver, 2)
        _wait_ready(pub, procs)
        n = 2000
        pub.send_many([message(i) for i in range(n // 2)], timeout=20)
        for i in range(n // 2, n):
            pub.send(message(i, 9000 if i % 300 == 1 else None), timeout=20)
        pub.close()
        for result in _results(procs):
            assert result == (n, 0, n - 1, 1, 0)


def test_subscriber_joins_mid_stream(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    stop = threading.Event()
    sent = [0]
    with pubsub.Publisher(name, capacity=1 << 14, backend=sender) as pub:

        def publish() -> None:
            while not stop.is_set():
                pub.send(message(sent[0]), timeout=20)
                sent[0] += 1
                if sent[0] % 64 == 0:
                    time.sleep(0.001)

        t = threading.Thread(target=publish)
        t.start()
        try:
            time.sleep(0.2)
            procs = _start_subscribers(name, receiver, 2)
            _wait_ready(pub, procs)
            time.sleep(0.3)
        finally:
            stop.set()
            t.join()
        pub.close()
        for count, first, last, increasing, missed in _results(procs):
            assert first > 0 and last == sent[0] - 1 and increasing == 1 and missed == 0
            assert count == last - first + 1  # every message from its first on


def test_drop_oldest_slow_subscriber(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    with pubsub.Publisher(name, capacity=4096, overflow="drop_oldest",
                          backend=sender) as pub:
        procs = _start_subscribers(name, receiver, 2, delay=0.0005)
        _wait_ready(pub, procs)
        n = 20000
        for i in range(n):
            pub.send(message(i), timeout=0)  # never waits: TimeoutError would fail here
        pub.close()
        for count, _, last, increasing, missed in _results(procs):
            assert increasing == 1 and last == n - 1
            assert missed > 0
            assert count + missed == n  # exact: every message is either read or counted


@contextlib.contextmanager
def _stuck(pub: pubsub.Publisher, name: str, backend: str) -> Iterator[subprocess.Popen[str]]:
    """A subscriber process that attaches and never reads, and a publisher held back by
    it (its ring full); the process is killed afterwards."""
    proc = start_python("""
        import sys, time
        from fastipc import pubsub
        sub = pubsub.Subscriber(sys.argv[1], timeout=20, backend=sys.argv[2])
        print("ready", flush=True)
        time.sleep(60)
    """, name, backend)
    try:
        _wait_ready(pub, [proc])
        _fill(pub)
        yield proc
    finally:
        proc.kill()
        proc.communicate()


def _fill(pub: pubsub.Publisher) -> None:
    with pytest.raises(TimeoutError):
        while True:
            pub.send(b"x" * 200, timeout=0.05)


def test_a_publisher_out_of_room_takes_it_as_soon_as_it_is_there(cross: tuple[str, str],
                                                                  name: str) -> None:
    """The subscribers wake a publisher waiting for room once a slice of the ring is free,
    not at every message; room for one message still lets it go on within its sleep slice
    (0.1 s), before its timeout, and every message arrives once, whole, in order."""
    sender, receiver = cross
    with pubsub.Publisher(name, capacity=1 << 16, backend=sender) as pub:
        proc = start_python("""
            import sys
            from fastipc import pubsub
            sub = pubsub.Subscriber(sys.argv[1], timeout=20, backend=sys.argv[2])
            print("ready", flush=True)
            for line in sys.stdin:  # read as many messages as told, then report them
                got = [sub.recv(timeout=10) for _ in range(int(line))]
                print(" ".join(str(len(m)) + ":" + m[:8].decode() for m in got), flush=True)
        """, name, receiver, stdin=subprocess.PIPE)
        try:
            assert proc.stdin is not None and proc.stdout is not None
            _wait_ready(pub, [proc])
            sent = 0
            with pytest.raises(TimeoutError):
                while True:
                    pub.send(b"%08d" % sent + b"m" * 1000, timeout=0.05)
                    sent += 1
            done: list[float] = []

            def send_one() -> None:
                pub.send(b"%08d" % sent + b"m" * 1000, timeout=5)
                done.append(time.monotonic())

            blocked = threading.Thread(target=send_one)
            blocked.start()
            time.sleep(0.3)  # the publisher sleeps, waiting for room
            assert not done
            t0 = time.monotonic()
            proc.stdin.write("1\n")  # frees one message's room, far less than a slice
            proc.stdin.flush()
            assert proc.stdout.readline().split() == ["1008:00000000"]
            blocked.join()
            assert done and done[0] - t0 < 1.5
            sent += 1
            proc.stdin.write(f"{sent - 1}\n")
            proc.stdin.flush()
            assert proc.stdout.readline().split() == [f"1008:{i:08d}" for i in range(1, sent)]
            proc.stdin.write("3000\n")  # more than the ring holds: it fills, empties, ...
            proc.stdin.flush()
            pub.send_many([b"%08d" % i for i in range(sent, sent + 3000)], timeout=10)
            assert proc.stdout.readline().split() == [f"8:{i:08d}"
                                                      for i in range(sent, sent + 3000)]
        finally:
            proc.kill()
            proc.communicate()


def test_killed_subscriber_releases_the_publisher(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            _stuck(pub, name, backend) as proc:
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        pub.send(b"resumed", timeout=1.0)  # within a second of the death
        assert time.monotonic() - t0 < 1.0
        assert pub.subscribers == 0


def test_killed_publisher_ends_the_stream(backend: str, name: str) -> None:
    proc = start_python("""
        import sys, time
        from fastipc import pubsub
        pub = pubsub.Publisher(sys.argv[1], capacity=1 << 16, backend=sys.argv[2])
        print("up", flush=True)
        while pub.subscribers < 2:
            time.sleep(0.005)
        for i in range(100):
            pub.send(b"m%d" % i)
        print("ready", flush=True)
        time.sleep(60)
    """, name, backend)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        subs = [pubsub.Subscriber(name, timeout=5, backend=backend) for _ in range(2)]
        assert proc.stdout.readline().strip() == "ready"
        proc.kill()
        proc.wait()
        for sub in subs:
            assert [sub.recv(timeout=1) for _ in range(100)] == [b"m%d" % i
                                                                 for i in range(100)]
            t0 = time.monotonic()
            with pytest.raises(EOFError):
                sub.recv(timeout=5)
            assert time.monotonic() - t0 < 1.0
            sub.close()
        assert not (SHM / name).exists()  # the orphan was removed
    finally:
        proc.kill()
        proc.communicate()


def test_forked_child_does_not_keep_a_dead_subscriber_alive(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, running("""
            import os, sys, time
            from fastipc import pubsub
            sub = pubsub.Subscriber(sys.argv[1], timeout=20, backend=sys.argv[2])
            child = os.fork()
            if child == 0:  # the child inherits the fd and the mapping, and lingers
                try:
                    sub.recv(timeout=0)
                except ValueError:
                    os.write(1, b"child: closed\\n")
                time.sleep(30)
                os._exit(0)
            os.write(1, b"ready %d\\n" % child)
            time.sleep(60)
        """, name, backend) as proc:
        assert proc.stdout is not None
        lines = sorted(proc.stdout.readline().strip() for _ in range(2))
        assert lines[0] == "child: closed" and lines[1].startswith("ready "), lines
        with killed_at_end(int(lines[1].split()[1])):
            _fill(pub)
            proc.kill()
            proc.wait()
            pub.send(b"resumed", timeout=1.0)  # the lingering child holds nothing back


def test_forked_child_does_not_keep_a_dead_publisher_alive(backend: str, name: str) -> None:
    with running("""
        import os, sys, time
        from fastipc import pubsub
        pub = pubsub.Publisher(sys.argv[1], backend=sys.argv[2])
        while pub.subscribers < 1:
            time.sleep(0.005)
        pub.send(b"last")
        child = os.fork()
        if child == 0:
            time.sleep(30)
            os._exit(0)
        print("ready", child, flush=True)
        time.sleep(60)
    """, name, backend) as proc:
        sub = pubsub.Subscriber(name, timeout=10, backend=backend)
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[0] == "ready", line
        with killed_at_end(int(line[1])):
            proc.kill()
            proc.wait()
            assert sub.recv(timeout=1) == b"last"
            with pytest.raises(EOFError):
                sub.recv(timeout=2)
            sub.close()


def test_liveness_does_not_trust_pids(backend: str, name: str) -> None:
    """A dead subscriber whose slot names a running process (as after pid reuse, or a pid
    from another namespace) is still found dead; a live one is never taken for dead."""
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            _stuck(pub, name, backend) as proc:
        with pytest.raises(TimeoutError):  # alive: its slot is not taken from it
            pub.send(b"x" * 200, timeout=0.3)
        proc.kill()
        proc.wait()
        with open(SHM / name, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            for i in range(layout.SLOTS):  # every slot now names a live process
                off = layout.OFF_SLOTS + i * layout.SLOT_SIZE + layout.SLOT_PID
                mm[off:off + 4] = struct.pack("<I", os.getpid())
        pub.send(b"resumed", timeout=1.0)


# ---------------------------------------------------------------------------- CLI


def test_cli_publish_subscribe(backend: str, name: str) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default=None)
    cli.add_commands(parser.add_subparsers(dest="action"))
    args = parser.parse_args(["--backend", backend, "publish", name, "x"])
    assert args.func is cli.publish and args.messages == ["x"]
    code = f"""
        import argparse, sys
        from fastipc._cli import pubsub as cli
        parser = argparse.ArgumentParser()
        parser.add_argument("--backend", default=None)
        cli.add_commands(parser.add_subparsers(dest="action"))
        args = parser.parse_args(["--backend", {backend!r}] + sys.argv[1:])
        sys.exit(args.func(args))
    """
    subs = [start_python(code, "subscribe", name, "--timeout", "20") for _ in range(2)]
    out = run_python(code, "publish", name, "--subscribers", "2", "--timeout", "20",
                     input="hello\nworld\n")
    assert out.returncode == 0, out.stderr
    assert "2 messages published to 2 subscriber(s)" in out.stderr
    for p in subs:
        stdout, stderr = p.communicate(timeout=30)
        assert p.returncode == 0, stderr
        assert stdout == "hello\nworld\n"
        assert "2 messages" in stderr


@contextlib.contextmanager
def _publisher_process(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """A publisher process running ``code``, which reads a line from stdin before it
    closes: told so once the block ends without an error (it must then exit with 0),
    killed in any case."""
    proc = start_python(code, *args, stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        yield proc
        proc.stdin.write("done\n")
        proc.stdin.flush()
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.communicate()


def test_timeout_in_a_small_streamed_message_then_recv_into(cross: tuple[str, str],
                                                             name: str) -> None:
    """A streamed message small enough for recv's staging buffer, cut short by a timeout,
    then finished by recv_into: delivered whole."""
    sender, receiver = cross
    code = """
        import sys, time
        from fastipc import pubsub
        pub = pubsub.Publisher(sys.argv[1], capacity=4096, backend=sys.argv[2])
        while pub.subscribers < 1:
            time.sleep(0.005)
        for i in range(10):
            pub.send(bytes([i]) * 300)  # most of the ring
        pub.send(bytes(range(250)) * 6, timeout=30)  # streamed: more than a quarter
        sys.stdin.readline()
        pub.close()
    """
    with _publisher_process(code, name, sender) as proc, \
            pubsub.Subscriber(name, timeout=10, backend=receiver) as sub:
        time.sleep(0.3)  # the publisher waits for room half-way through the last one
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            assert [sub.recv(timeout=1) for _ in range(10)] == \
                [bytes([i]) * 300 for i in range(10)]
            with pytest.raises(TimeoutError):
                sub.recv(timeout=0.1)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        buf = bytearray(2000)
        assert sub.recv_into(buf, timeout=10) == 1500
        assert buf[:1500] == bytes(range(250)) * 6


# (a view kept past its block: test_shm_faults.test_view_kept_past_its_block, for both rings)


@pytest.mark.parametrize("kind", ["iter_unpack", "numpy"])
def test_a_waiting_subscriber_hands_back_a_view_let_go(backend: str, name: str,
                                                       kind: str) -> None:
    """A subscriber waiting for the next message while the publisher waits for room behind
    a kept view: once the last use of the view goes (in another thread), the wait itself
    hands the space back within a few ms, and both go on (no deadlock)."""
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=5, backend=backend) as sub:
        pub.send(_pattern(0))
        with sub.recv_view(timeout=1) as mv:
            kept = [_keep(kind, mv)]
        for i in range(3):
            pub.send(_pattern(1 + i), timeout=1)
            assert sub.recv(timeout=1) == _pattern(1 + i)

        def publish() -> None:
            time.sleep(0.05)
            kept.clear()  # the last use of the view goes while both wait
            pub.send(_pattern(9), timeout=5)  # needs the held space

        t = threading.Thread(target=publish)
        t.start()
        try:
            assert sub.recv(timeout=5) == _pattern(9)
        finally:
            t.join(10)


@pytest.mark.parametrize("kind", KEPT)
def test_drop_oldest_views_are_copies(backend: str, name: str, kind: str) -> None:
    """Under "drop_oldest" the publisher never waits, so recv_view gives a view of a copy:
    kept past its block in any KEPT way it keeps its bytes while the publisher laps the
    ring many times, and it holds nothing back."""
    with pubsub.Publisher(name, capacity=4096, overflow="drop_oldest",
                          backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=5, backend=backend) as sub:
        pub.send(_pattern(0))
        with sub.recv_view(timeout=1) as mv:
            kept = _keep(kind, mv)
        for i in range(20):  # five times round the ring
            pub.send(_pattern(1 + i), timeout=0)
        if kind == "view":
            with pytest.raises(ValueError):
                bytes(mv)
        else:
            start = 100 if kind == "slice" else 0
            assert _read_kept(kind, kept, 799) == _pattern(0)[start:start + 799]
        del kept
        got = sub.recv(timeout=1)  # the oldest still there: every one before it counted
        assert sub.missed > 10 and got == _pattern(1 + sub.missed)


# ---------------------------------------------------------------------------- cut short

# The publisher of the tests below: waits for one subscriber; with "pad", publishes 14
# messages of 256 bytes (3808 bytes of a 4096-byte ring) for it to read first; on "go",
# publishes (with "pad": one more small message, so that the next frame wraps after a
# padding frame) a streamed message four times the ring, then a small one.
STREAMER = r"""
import sys, time
from fastipc import pubsub
name, backend, how = sys.argv[1:4]
pub = pubsub.Publisher(name, capacity=4096, backend=backend)
while pub.subscribers < 1:
    time.sleep(0.005)
if how == "pad":
    for i in range(14):
        pub.send(bytes([i]) * 256)
print("ready", flush=True)
sys.stdin.readline()
if how == "pad":
    pub.send(b"S" * 256)
pub.send(bytes(range(256)) * 64 + b"end", timeout=30)
pub.send(b"after")
sys.stdin.readline()
pub.close()
"""
STREAMED = bytes(range(256)) * 64 + b"end"


def _head(name: str) -> int:
    fd = os.open(SHM / name, os.O_RDONLY)
    try:
        return int(struct.unpack("<Q", os.pread(fd, 8, layout.OFF_HEAD))[0])
    finally:
        os.close(fd)


def _receive(sub: pubsub.Subscriber, how: str) -> list[bytes]:
    """The next message (or messages, for recv_many) through receiving call ``how``."""
    if how == "recv":
        return [sub.recv(timeout=10)]
    if how == "recv_into":
        buf = bytearray(len(STREAMED) + 100)
        return [bytes(buf[:sub.recv_into(buf, timeout=10)])]
    if how == "recv_view":
        with sub.recv_view(timeout=10) as view:
            return [bytes(view)]
    return sub.recv_many(16, timeout=10)


@pytest.mark.parametrize("then", ["recv", "recv_into", "recv_view", "recv_many"])
@pytest.mark.parametrize("how", ["timeout", "pad", "recv", "recv_into"])
def test_receive_cut_short_in_a_streamed_message(cross: tuple[str, str], name: str,
                                                 how: str, then: str) -> None:
    """A receiving call stops in the middle of a streamed message (the timeout of recv_many,
    recv or recv_into expires; a recv_many batch meets a padding frame and then the start of
    one): every receiving call after it gets that message whole, then the next one; never
    stale bytes, never a stuck subscriber."""
    sender, receiver = cross
    with _publisher_process(STREAMER, name, sender, how) as proc, \
            pubsub.Subscriber(name, timeout=10, backend=receiver) as sub:
        assert proc.stdin is not None and proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        start = 0
        if how == "pad":
            assert [sub.recv(timeout=5) for _ in range(14)] == \
                [bytes([i]) * 256 for i in range(14)]
            start = 14 * 272
        proc.stdin.write("go\n")
        proc.stdin.flush()
        end = time.monotonic() + 10
        while _head(name) - start < 4096 - 600:  # the ring is full: the publisher waits
            assert time.monotonic() < end, "the publisher did not fill the ring"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGSTOP)  # half of the streamed message stays unsent
        try:
            if how == "pad":
                assert sub.recv_many(64, timeout=1) == [b"S" * 256]
            else:
                with pytest.raises(TimeoutError):
                    if how == "recv":
                        sub.recv(timeout=0.3)
                    elif how == "recv_into":
                        sub.recv_into(bytearray(len(STREAMED)), timeout=0.3)
                    else:
                        sub.recv_many(64, timeout=0.3)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        got = _receive(sub, then)
        assert got[0] == STREAMED, (len(got[0]), got[0][:16])
        assert (got[1:] or [sub.recv(timeout=10)]) == [b"after"]


def test_a_batch_stops_before_a_message_it_would_have_to_refuse(backend: str,
                                                                 name: str) -> None:
    """A recv_many batch that meets a padding frame and then a message larger than the
    subscriber's max_message_size returns what it took; the next call reports that message
    (EMSGSIZE), and the one after goes on: nothing taken is lost, nothing refused is silent."""
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, max_message_size=100, backend=backend) as sub:
        fill = [bytes([i]) * 96 for i in range(34)] + [b"f" * 64]  # 3888 ring bytes
        pub.send_many(fill, timeout=1)
        assert sub.recv_many(64, timeout=1) == fill
        # S ends 112 bytes before the ring's end: B goes to its start, past a padding frame
        # (whose 96 bytes the subscriber takes)
        pub.send_many([b"S" * 80, b"B" * 200, b"after"], timeout=1)
        assert sub.recv_many(64, timeout=1) == [b"S" * 80]
        with pytest.raises(OSError) as info:
            sub.recv_many(64, timeout=1)
        assert info.value.errno == errno.EMSGSIZE
        assert sub.recv_many(64, timeout=1) == [b"after"]


# ---------------------------------------------------------------------------- joins


# The publisher of the next test: as fast as it can, under drop_oldest, in a small ring,
# messages that say their number (message()), until stdin closes.
FLOOD = r"""
import os, struct, sys, threading, zlib
from fastipc import pubsub
name, backend = sys.argv[1:3]
bodies = [bytes((j + k) & 0xFF for k in range(j)) for j in range(300)]
pub = pubsub.Publisher(name, capacity=4096, overflow="drop_oldest", backend=backend)
stop = []
threading.Thread(target=lambda: (sys.stdin.read(), stop.append(1)), daemon=True).start()
print("ready", flush=True)
i = 0
pack, crc, send = struct.pack, zlib.crc32, pub.send
while not stop:
    for _ in range(1000):
        body = pack("<Q", i) + bodies[i % 300]
        send(body + pack("<I", crc(body)))
        i += 1
pub.close()
"""


@pytest.mark.parametrize("pair", [("native", "native"), ("native", "pure"),
                                  ("pure", "native"), ("pure", "pure")],
                         ids=["native-native", "native-pure", "pure-native", "pure-pure"])
def test_subscribers_join_a_running_drop_oldest_publisher(pair: tuple[str, str],
                                                          name: str) -> None:
    """A gap larger than the ring between two looks at head is legitimate under
    drop_oldest: attaching to a publisher that floods a small ring never says EBADMSG, and
    what the subscriber then receives is intact, in order, with `missed` counting the gap."""
    sender, receiver = pair
    proc = start_python(FLOOD, name, sender, stdin=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "ready"
        end = time.monotonic() + 2.0
        joins = received = 0
        while time.monotonic() < end:
            with pubsub.Subscriber(name, timeout=5, backend=receiver) as sub:
                joins += 1
                first = check_message(sub.recv(timeout=5))
                missed0 = sub.missed
                assert missed0 <= first
                got = [first] + [check_message(sub.recv(timeout=5)) for _ in range(9)]
                gaps = sum(b - a - 1 for a, b in itertools.pairwise(got))
                assert sub.missed - missed0 == gaps, (got, sub.missed, missed0)
                received += len(got)
        assert joins > 5 and received >= 10 * joins
    finally:
        proc.stdin.close()
        try:
            proc.wait(10)
        finally:
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            proc.stdout.close()
            if proc.stderr:
                proc.stderr.close()
    assert proc.returncode == 0, err


# ---------------------------------------------------------------------------- awaitables
# send_async, send_many_async, recv_async, recv_many_async: parked on the ring's futex words
# (fastipc._aio), woken by the peer's ordinary wake-up, never blocking the loop.

loops_ready = test_aio.loops_ready

# a publisher in another process: waits for a subscriber, then sends count messages (or
# streams ones larger than the ring), and closes
_PUBLISHER = r"""
import sys, time
sys.path.insert(0, sys.argv[5])
from test_pubsub import message
from fastipc import pubsub
name, backend, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with pubsub.Publisher(name, capacity=4096, backend=backend) as pub:
    print("ready", flush=True)
    while pub.subscribers == 0:
        time.sleep(0.01)
    for i in range(count):
        pub.send(message(i, size if size >= 0 else None), timeout=30)
"""


def _publisher(name: str, backend: str, count: int, size: int = -1) -> subprocess.Popen[str]:
    proc = start_python(_PUBLISHER, name, backend, str(count), str(size),
                        str(Path(__file__).parent))
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_recv_async_from_another_process(cross: tuple[str, str], name: str, loop_kind: str,
                                         loops_ready: None) -> None:
    """Small and streamed messages (larger than the ring), then EOFError at the end."""
    count = 300
    proc = _publisher(name, cross[0], count)
    sub = pubsub.Subscriber(name, timeout=10, backend=cross[1])

    async def main() -> None:
        tick = Ticker()
        for i in range(count):
            m = await sub.recv_async(timeout=10) if i % 2 else \
                (await sub.recv_many_async(1, timeout=10))[0]
            assert check_message(m) == i
        with pytest.raises(EOFError):
            await sub.recv_async(timeout=10)
        assert tick.stop() < 0.1

    try:
        run_on(loop_kind, main())
        assert proc.communicate(timeout=10)[0] == "" and proc.returncode == 0
    finally:
        sub.close()
    big = _publisher(name, cross[0], 3, 20000)  # streamed through a 4 KiB ring
    sub = pubsub.Subscriber(name, timeout=10, backend=cross[1])
    try:
        got = run_on(loop_kind, _gather(sub.recv_async(timeout=10) for _ in range(3)))
        assert sorted(check_message(m) for m in got) == [0, 1, 2]  # each whole, once
        assert big.communicate(timeout=10)[0] == "" and big.returncode == 0
    finally:
        sub.close()


async def _gather(coros: Any) -> list[Any]:
    return list(await asyncio.gather(*coros))


def test_async_timeouts(backend: str, name: str, loop_kind: str, loops_ready: None) -> None:
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            pubsub.Subscriber(name, backend=backend) as sub:
        async def main() -> None:
            for call in (sub.recv_async, lambda t: sub.recv_many_async(10, t)):
                with pytest.raises(TimeoutError):
                    await call(0)
                t0 = time.monotonic()
                with pytest.raises(TimeoutError):
                    await call(0.2)
                assert 0.15 < time.monotonic() - t0 < 2
                with pytest.raises(ValueError):
                    await call(-1)
            pub.send(b"x")
            assert await sub.recv_async(0) == b"x"
            # the publisher: the ring full (the subscriber does not read)
            n = 0
            while True:
                try:
                    await pub.send_async(b"y" * 500, 0)
                except TimeoutError:
                    break
                n += 1
            with pytest.raises(TimeoutError) as exc:
                await pub.send_many_async([b"z" * 500] * 3, 0)
            assert exc.value.messages_sent == 0  # type: ignore[attr-defined]
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await pub.send_async(b"y" * 500, 0.2)
            assert 0.15 < time.monotonic() - t0 < 2
            with pytest.raises(ValueError):
                await pub.send_async(b"y", -1)
            # None: as long as it takes (a reader thread drains the ring)
            loop = asyncio.get_running_loop()
            drained = loop.run_in_executor(None, lambda: [sub.recv(5) for _ in range(n + 4)])
            await pub.send_async(b"w" * 500)
            await pub.send_many_async([b"v" * 500] * 3)
            assert await drained == [b"y" * 500] * n + [b"w" * 500] + [b"v" * 500] * 3

        run_on(loop_kind, main())


def test_send_async_wakes_on_room_from_another_process(cross: tuple[str, str], name: str,
                                                       loop_kind: str,
                                                       loops_ready: None) -> None:
    """An awaiting publisher, a slow subscriber process: every message (streamed ones
    too, larger than the ring) arrives whole and in order; the loop is never blocked."""
    pub = pubsub.Publisher(name, capacity=4096, backend=cross[0])
    procs = _start_subscribers(name, cross[1], 1, delay=0.0005)
    _wait_ready(pub, procs)
    count = 400

    async def main() -> None:
        tick = Ticker()
        for i in range(0, count, 4):
            await pub.send_async(message(i, 6000 if i % 100 == 0 else None), timeout=20)
            await pub.send_many_async([message(j) for j in range(i + 1, i + 4)], timeout=20)
        assert tick.stop() < 0.1

    try:
        run_on(loop_kind, main())
    finally:
        pub.close()
    assert _results(procs) == [(count, 0, count - 1, 1, 0)]


def test_async_cancelled_at_random_loses_nothing(backend: str, name: str, loop_kind: str,
                                                 loops_ready: None) -> None:
    """Publisher and subscriber both awaiting in one loop, every call cancelled at a random
    moment: each message whose send completed arrives once, whole, in order; a cancelled
    send (streamed in part, even) delivers nothing."""
    rng = random.Random(11)
    count = 400
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub, \
            pubsub.Subscriber(name, backend=backend) as sub:
        async def main() -> tuple[list[int], list[int]]:
            got: list[int] = []
            finished: list[bool] = []

            async def receive() -> None:
                while True:
                    task = asyncio.ensure_future(sub.recv_async(timeout=5))
                    try:
                        done, _ = await asyncio.wait([task], timeout=rng.random() * 0.0003)
                    except asyncio.CancelledError:
                        task.cancel()
                        raise
                    if not done:
                        task.cancel()
                    try:
                        m = await task
                    except asyncio.CancelledError:
                        if finished:
                            raise  # the receiver itself was cancelled
                        continue
                    got.append(check_message(m))

            receiver = asyncio.ensure_future(receive())
            sent, cancels = await send_with_cancels(
                lambda i: pub.send_async(message(i, 5000 if i % 40 == 0 else None), timeout=5),
                count, rng)
            assert cancels > 0
            end = time.monotonic() + 10
            while not got or got[-1] != sent[-1]:
                assert time.monotonic() < end, (got[-5:], sent[-5:], len(got), len(sent))
                if receiver.done():
                    receiver.result()  # what ended it
                    raise AssertionError(f"received {got}, sent {sent}")
                await asyncio.sleep(0.01)
            finished.append(True)
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            return sent, got

        sent, got = run_on(loop_kind, main())
        assert got == sent


def test_close_from_another_thread_ends_every_await(backend: str, name: str,
                                                     loop_kind: str,
                                                     loops_ready: None) -> None:
    pub = pubsub.Publisher(name, capacity=1 << 16, backend=backend)
    sub = pubsub.Subscriber(name, backend=backend)
    try:
        async def main() -> None:
            # many coroutines on one subscriber: one message each, then close ends the rest
            tasks = [asyncio.ensure_future(sub.recv_async(timeout=20)) for _ in range(300)]
            await asyncio.sleep(0.1)
            for i in range(100):
                pub.send(message(i))
            await asyncio.sleep(0.5)
            done = [t for t in tasks if t.done()]
            assert sorted(check_message(t.result()) for t in done) == list(range(100))
            rest = [t for t in tasks if t not in done]
            assert len(rest) == 200
            await close_ends_awaits(sub.close, rest)
            # the publisher, full (a second subscriber that does not read), closed under it
            with pubsub.Subscriber(name, backend=backend):
                while True:
                    try:
                        await pub.send_async(b"y" * 500, 0)
                    except TimeoutError:
                        break
                sends = [asyncio.ensure_future(pub.send_async(b"z" * 500)) for _ in range(5)]
                await asyncio.sleep(0.1)
                await close_ends_awaits(pub.close, sends)

        run_on(loop_kind, main())
    finally:
        sub.close()
        pub.close()


# ---------------------------------------------------------------------------- the handle


def _ends(name: str, backend: str, **kwargs: Any) -> tuple[Any, Any]:
    pub = pubsub.Publisher(name, capacity=4096, backend=backend, **kwargs)
    return pub, pubsub.Subscriber(name, timeout=1, backend=backend)


PER_MESSAGE = {
    "send": lambda pub, sub: pub.send(b"x"),
    "send-bad-args": lambda pub, sub: pub.send("not bytes", timeout=-1),
    "send_many": lambda pub, sub: pub.send_many([b"x"]),
    "recv": lambda pub, sub: sub.recv(timeout=0),
    "recv_into": lambda pub, sub: sub.recv_into(bytearray(8)),
    "recv_many": lambda pub, sub: sub.recv_many(0),
    "recv_view": lambda pub, sub: sub.recv_view(timeout=0),
    "missed": lambda pub, sub: sub.missed,
    "stats": lambda pub, sub: sub.stats(),
}


@pytest.mark.parametrize("call", list(PER_MESSAGE))
def test_a_closed_end_refuses_every_per_message_call(backend: str, name: str,
                                                     call: str) -> None:
    """ValueError on a closed end, whatever the arguments (checked before them)."""
    pub, sub = _ends(name, backend)
    pub.send(b"queued")
    sub.close()
    if call.startswith("send"):
        pub.close()
    with pytest.raises(ValueError, match="closed"):
        PER_MESSAGE[call](pub, sub)
    pub.close()


BAD_CALLS: dict[str, Any] = {
    "send str": lambda pub, sub: pub.send("text"),
    "send int": lambda pub, sub: pub.send(12),
    "send negative timeout": lambda pub, sub: pub.send(b"x", timeout=-1),
    "send nan timeout": lambda pub, sub: pub.send(b"x", timeout=float("nan")),
    "send str timeout": lambda pub, sub: pub.send(b"x", timeout="1"),
    "send unknown keyword": lambda pub, sub: pub.send(b"x", wait=1),
    "send no data": lambda pub, sub: pub.send(),
    "send too many": lambda pub, sub: pub.send(b"x", 1, 2),
    "send_many one message": lambda pub, sub: pub.send_many(b"xy"),
    "send_many str message": lambda pub, sub: pub.send_many(["x"]),
    "send_many int message": lambda pub, sub: pub.send_many([b"x", 3]),
    "send_many not iterable": lambda pub, sub: pub.send_many(5),
    "send_many negative timeout": lambda pub, sub: pub.send_many([b"x"], timeout=-0.5),
    "recv negative timeout": lambda pub, sub: sub.recv(timeout=-1),
    "recv nan timeout": lambda pub, sub: sub.recv(float("nan")),
    "recv unknown keyword": lambda pub, sub: sub.recv(block=False),
    "recv_into bytes": lambda pub, sub: sub.recv_into(b"readonly"),
    "recv_into str": lambda pub, sub: sub.recv_into("text"),
    "recv_into int": lambda pub, sub: sub.recv_into(3),
    "recv_into negative timeout": lambda pub, sub: sub.recv_into(bytearray(4), timeout=-1),
    "recv_many zero": lambda pub, sub: sub.recv_many(0),
    "recv_many float": lambda pub, sub: sub.recv_many(1.5),
    "recv_many bool": lambda pub, sub: sub.recv_many(True),
    "recv_many too many": lambda pub, sub: sub.recv_many(1 << 21),
    "recv_many negative timeout": lambda pub, sub: sub.recv_many(4, -1),
    "recv_view negative timeout": lambda pub, sub: sub.recv_view(timeout=-1),
}


@pytest.mark.parametrize("call", list(BAD_CALLS))
def test_bad_arguments_fail_alike_on_both_backends(name: str, call: str) -> None:
    """The same exception type and message from the C methods as from the pure ones; the
    ends stay usable."""
    seen = []
    for backend in ("native", "pure"):
        pub, sub = _ends(f"{name}-{backend}", backend)
        with pub, sub:
            with pytest.raises((TypeError, ValueError)) as info:
                BAD_CALLS[call](pub, sub)
            seen.append((type(info.value), str(info.value)))
            pub.send(b"still fine")
            assert sub.recv(timeout=1) == b"still fine"
    assert seen[0] == seen[1]


def test_close_from_another_thread_frees_only_after_the_blocked_call_left(
        backend: str, name: str) -> None:
    """A recv blocked in C ends with ValueError when another thread closes the subscriber;
    the slot, fd and mapping go once it has left, not before."""
    with pubsub.Publisher(name, capacity=4096, backend=backend) as pub:
        sub = pubsub.Subscriber(name, timeout=1, backend=backend)
        fd = sub.fileno()
        error = close_ends_call(lambda: sub.recv_many(8), sub.close, join=2)
        assert isinstance(error, ValueError), error
        assert not os.path.exists(f"/proc/self/fd/{fd}") or fd != sub._fd
        assert pub.subscribers == 0


@pytest.mark.parametrize("call", ["recv", "recv_into", "recv_many", "recv_view", "send"])
def test_a_raising_signal_handler_ends_a_blocked_call_and_the_end_stays_usable(
        backend: str, name: str, call: str) -> None:
    """A handler that raises during a wait in C propagates at once; the next call works."""
    from interrupts import check_raising_handler_ends

    pub, sub = _ends(name, backend)
    with pub, sub:
        if call == "send":
            while True:  # fill the ring: the subscriber does not read
                try:
                    pub.send(b"x" * 100, timeout=0)
                except TimeoutError:
                    break
            check_raising_handler_ends(lambda: pub.send(b"y" * 100, timeout=10))
            for _ in range(4):  # room for the next (given back a slice at a time)
                assert sub.recv(timeout=1) == b"x" * 100
            pub.send(b"after", timeout=1)
            return
        waits = {"recv": lambda: sub.recv(timeout=10),
                 "recv_into": lambda: sub.recv_into(bytearray(16), timeout=10),
                 "recv_many": lambda: sub.recv_many(4, timeout=10),
                 "recv_view": lambda: sub.recv_view(timeout=10)}
        check_raising_handler_ends(waits[call])
        pub.send(b"after")
        assert sub.recv(timeout=1) == b"after"


def _recv_into_list(recv: Any, errors: list[type[BaseException]]) -> None:
    try:
        recv()
    except BaseException as exc:  # (its type only: the exception would hold this frame)
        errors.append(type(exc))


@pytest.mark.parametrize("calls", ["none", "send_recv", "streamed", "views", "awaitables",
                                   "closed_by_thread"])
def test_dropping_the_last_reference_frees_at_once_without_the_collector(
        backend: str, name: str, calls: str) -> None:
    """No reference cycle anywhere (the handle holds nothing that refers to its object):
    with the collector off, each end goes when its last reference does, with its fd,
    mapping, slot and, for the publisher, /dev/shm entry."""
    import gc
    import weakref

    fds = set(os.listdir("/proc/self/fd"))
    enabled = gc.isenabled()
    gc.disable()
    try:
        pub = pubsub.Publisher(name, capacity=1 << 16, backend=backend)
        sub = pubsub.Subscriber(name, timeout=1, backend=backend)
        if calls == "send_recv":
            pub.send(b"a")
            pub.send_many([b"b", b"c"])
            assert sub.recv() == b"a" and sub.recv_many(4, timeout=1) == [b"b", b"c"]
            pub.send(b"d")
            assert sub.recv_into(bytearray(4), timeout=1) == 1
        elif calls == "streamed":
            big = os.urandom(50_000)  # streamed through the ring in chunks
            t = threading.Thread(target=pub.send, args=(big,), kwargs={"timeout": 5})
            t.start()
            assert sub.recv(timeout=5) == big
            t.join()
            with pytest.raises(TimeoutError):  # cut short: kept for the next call
                sub.recv(timeout=0.01)
        elif calls == "views":
            pub.send(b"held")
            with sub.recv_view(timeout=1) as view:
                kept = view[1:]
            assert bytes(kept) == b"eld"
            del kept
            pub.send(b"no timeout")
            with sub.recv_view() as view:  # waits as long as it takes
                assert bytes(view) == b"no timeout"
        elif calls == "awaitables":

            async def main(p: Any, s: Any) -> None:
                await p.send_async(b"a")
                assert await s.recv_async(timeout=1) == b"a"
                await p.send_many_async([b"b", b"c"])
                assert await s.recv_many_async(8, timeout=1) == [b"b", b"c"]
                await p.send_many_async((b"one",))  # a batch of one goes once
                assert await s.recv_many_async(8, timeout=1) == [b"one"]
                with pytest.raises(TimeoutError):
                    await s.recv_async(timeout=0.01)

            asyncio.run(main(pub, sub))
        elif calls == "closed_by_thread":
            errors: list[type[BaseException]] = []
            t = threading.Thread(target=_recv_into_list, args=(sub.recv, errors))
            t.start()
            time.sleep(0.05)
            sub.close()
            t.join()
            assert errors == [ValueError]
            del t, errors
        ref = weakref.ref(sub)
        del sub
        assert ref() is None
        assert pub.subscribers == 0
        ref = weakref.ref(pub)
        del pub
        assert ref() is None
        assert not (SHM / name).exists()
        assert set(os.listdir("/proc/self/fd")) == fds
    finally:
        if enabled:
            gc.enable()


def test_native_ends_are_their_handles() -> None:
    """On the native backend the per-message methods are C methods of the object's type:
    nothing is stored on the instance, no Python frame runs."""
    import inspect

    name_ = f"{pubsub.__name__}-{os.getpid()}-handles"
    pub = pubsub.Publisher(name_, backend="native")
    sub = pubsub.Subscriber(name_, timeout=1, backend="native")
    with pub, sub:
        for obj, public, names in ((pub, pubsub.Publisher, ["send", "send_many"]),
                                   (sub, pubsub.Subscriber,
                                    ["recv", "recv_into", "recv_many"])):
            for attr in names:
                assert attr not in vars(obj)
                assert type(getattr(obj, attr)).__name__ == "builtin_function_or_method"
                c_params = inspect.signature(getattr(obj, attr)).parameters.values()
                py_params = inspect.signature(getattr(public, attr)).parameters.values()
                assert [(p.name, p.default) for p in c_params] == [
                    (p.name, p.default) for p in list(py_params)[1:]]


@pytest.mark.parametrize("overflow", ["block", "drop_oldest"])
def test_send_many_blames_the_message_too_large(backend: str, name: str, overflow: str) -> None:
    """A batch checked whole is refused for its largest message, with that message's error:
    OSError(EMSGSIZE) above max_message_size under either overflow (never drop_oldest's
    ValueError about a small message), drop_oldest's ValueError for one over its limit."""
    with pubsub.Publisher(name, capacity=4096, max_message_size=100, overflow=overflow,
                          backend=backend) as pub, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as sub:
        with pytest.raises(OSError) as info:
            pub.send_many([b"x" * 50, b"y" * 500])
        assert info.value.errno == errno.EMSGSIZE
        assert info.value.messages_sent == 0  # type: ignore[attr-defined]
        with pytest.raises(TimeoutError):  # nothing of the batch went
            sub.recv(timeout=0)
    if overflow == "drop_oldest":
        with pubsub.Publisher(name, capacity=4096, overflow=overflow, backend=backend) as pub, \
                pytest.raises(ValueError, match="a message of 3000 bytes"):
            pub.send_many([b"x" * 50, b"y" * 3000])
