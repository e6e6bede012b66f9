"""fastipc.shm: SharedMemory and the Writer/Reader channel, on both backends and across them,
with real segments and real processes."""

from __future__ import annotations

import array
import errno
import os
import signal
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fastipc import shm
from helpers import close_ends_call, run_python, start_python

SHM = Path("/dev/shm")


@contextmanager
def running(code: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Another process running ``code`` (tests/helpers.py start_python), killed and reaped,
    its pipes closed, when the block ends."""
    proc = start_python(code, *args)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def _send_later(w: shm.Writer, data: Any, delay: float = 0.05) -> threading.Thread:
    def go() -> None:
        time.sleep(delay)
        w.send(data, timeout=10)

    t = threading.Thread(target=go)
    t.start()
    return t


# ---------------------------------------------------------------------------- SharedMemory


def test_shared_memory_create_attach(backend: str, name: str) -> None:
    with shm.SharedMemory(name, size=10000, create=True, backend=backend) as a:
        assert a.size == 10000
        assert (SHM / name).exists()
        assert oct(os.stat(SHM / name).st_mode & 0o777) == oct(0o600)
        assert not os.get_inheritable(a.fileno())
        a.buf[:5] = b"hello"
        with shm.SharedMemory("/" + name, backend=backend) as b:
            assert b.size == 10000
            assert (a.name, b.name) == (name, "/" + name)  # as given
            assert bytes(b.buf[:5]) == b"hello"
            b.buf[5:6] = b"!"
        assert bytes(a.buf[:6]) == b"hello!"
        with shm.SharedMemory(name, size=100, backend=backend) as c:
            assert c.size == 10000  # the real size, as the stdlib maps it; never a resize
        assert os.stat(SHM / name).st_size == 10000
        a.unlink()
    assert not (SHM / name).exists()


def test_shared_memory_errors(backend: str, name: str) -> None:
    with pytest.raises(FileNotFoundError):
        shm.SharedMemory(name, backend=backend)
    with pytest.raises(ValueError):
        shm.SharedMemory(name, create=True, backend=backend)  # size 0
    with pytest.raises(TypeError):
        shm.SharedMemory(name, size="1", create=True, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shm.SharedMemory(name, size=-1, create=True, backend=backend)
    with pytest.raises(TypeError):
        shm.SharedMemory(name, size=1, create=1, backend=backend)  # type: ignore[arg-type]
    seg = shm.SharedMemory(name, size=4096, create=True, backend=backend)
    try:
        with pytest.raises(FileExistsError):
            shm.SharedMemory(name, size=4096, create=True, backend=backend)
        with pytest.raises(ValueError):
            shm.SharedMemory(name, size=8192, backend=backend)  # larger than the segment
    finally:
        seg.close()
        seg.close()  # idempotent
        seg.unlink()
    assert seg.closed
    with pytest.raises(ValueError):
        _ = seg.buf
    with pytest.raises(ValueError):
        _ = seg.size
    with pytest.raises(ValueError):
        seg.fileno()


def _refused_everywhere(backend: str, bad: Any, error: type[Exception]) -> None:
    """``bad`` as the name of a SharedMemory (but None, for which SharedMemory makes a name
    up, as the stdlib's), a Writer and a Reader: ``error`` each time."""
    if bad is not None:
        with pytest.raises(error):
            shm.SharedMemory(bad, size=10, create=True, backend=backend)
    with pytest.raises(error):
        shm.Writer(bad, backend=backend)
    with pytest.raises(error):
        shm.Reader(bad, timeout=0, backend=backend)


@pytest.mark.parametrize("bad", [b"x", 3, None])
def test_bad_name_types(backend: str, bad: Any) -> None:
    _refused_everywhere(backend, bad, TypeError)


@pytest.mark.parametrize("bad", ["", "/", "a/b", "a\0b", "x" * 256, "..", "/../etc"])
def test_bad_names(backend: str, bad: str) -> None:
    _refused_everywhere(backend, bad, ValueError)


def test_shared_memory_across_processes(backend: str, name: str) -> None:
    with shm.SharedMemory(name, size=4096, create=True, backend=backend) as seg:
        out = run_python(
            """
            import sys
            from fastipc import shm
            with shm.SharedMemory(sys.argv[1], backend=sys.argv[2]) as s:
                s.buf[:3] = b"abc"
                print(s.size)
            """,
            name, backend, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "4096"
        assert bytes(seg.buf[:3]) == b"abc"
        seg.unlink()


# ---------------------------------------------------------------------------- the channel


def test_send_recv_basic(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w:
        assert (SHM / name).exists()
        assert w.capacity == 4096
        assert w.name == name and w.backend == backend
        assert not os.get_inheritable(w.fileno())
        with shm.Reader(name, timeout=5, backend=backend) as r:
            assert r.capacity == 4096
            for data in (b"hello", b"", bytearray(b"ba"), memoryview(b"mv"),
                         array.array("i", [1, 2, 3])):
                w.send(data)
                assert r.recv(timeout=5) == bytes(data)
            w.send_many([b"a", b"", bytearray(b"cc"), memoryview(b"ddd")])
            assert r.recv_many(10, timeout=5) == [b"a", b"", b"cc", b"ddd"]
            w.send_many(iter([b"x", b"y"]))
            assert r.recv_many(1, timeout=5) == [b"x"]
            assert r.recv_many(5, timeout=5) == [b"y"]
            w.send_many([])
            with pytest.raises(TimeoutError):
                r.recv(timeout=0)
            with pytest.raises(TimeoutError):
                r.recv_many(timeout=0.01)
    assert not (SHM / name).exists()


def test_capacity_rounding_and_limits(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=5000, backend=backend) as w:
        assert w.capacity == 8192
    with shm.Writer(name, capacity=1, backend=backend) as w:
        assert w.capacity == 4096
    with pytest.raises(ValueError):
        shm.Writer(name, capacity=0, backend=backend)
    with pytest.raises(TypeError):
        shm.Writer(name, capacity=1.5, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shm.Writer(name, max_message_size=-1, backend=backend)
    with pytest.raises(ValueError):
        shm.Writer(name, spin=-1, backend=backend)
    with pytest.raises(TypeError):
        shm.Writer(name, spin="1", backend=backend)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        shm.Writer(name, backend="fast")
    assert not (SHM / name).exists()


def test_big_messages_are_streamed(backend: str, name: str) -> None:
    sizes = [0, 1, 1000, 1023, 1024, 1025, 3000, 4096, 10000, 100003, 1 << 20]
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        payloads = [os.urandom(n) for n in sizes]

        def produce() -> None:
            for p in payloads:
                w.send(p, timeout=10)

        t = threading.Thread(target=produce)
        t.start()
        try:
            for i, p in enumerate(payloads):
                if i % 3 == 0:
                    assert r.recv(timeout=10) == p
                elif i % 3 == 1:
                    buf = bytearray(len(p) + 5)
                    assert r.recv_into(buf, timeout=10) == len(p)
                    assert buf[:len(p)] == p
                else:
                    with r.recv_view(timeout=10) as v:
                        assert v.readonly
                        assert bytes(v) == p
        finally:
            t.join(10)


@pytest.mark.parametrize("size", [1500, 6000])  # assembled in the stage / a buffer of its own
@pytest.mark.parametrize("then", ["recv", "recv_into", "recv_view", "recv_many",
                                  "recv_async"])
def test_interrupted_streamed_message_stays_whole(backend: str, name: str, then: str,
                                                  size: int) -> None:
    """A call that times out half-way through a streamed message leaves what came of it for
    the next call, of whichever kind: the message is delivered whole, then the next one."""
    import asyncio

    big = os.urandom(size)
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        for c in b"abc":
            w.send(bytes([c]) * 1000)
        t = threading.Thread(target=lambda: (w.send(big, timeout=10), w.send(b"after")))
        with r.recv_view(timeout=1) as held:  # its space stays taken: the ring fills up
            t.start()
            try:
                assert r.recv_many(2, timeout=5) == [b"b" * 1000, b"c" * 1000]
                time.sleep(0.05)  # the writer has filled the ring and waits for room
                with pytest.raises(TimeoutError):
                    r.recv(timeout=0)  # takes the first chunks; the rest cannot come
                assert bytes(held) == b"a" * 1000
            except BaseException:
                held.release()
                t.join(10)
                raise
        try:
            if then == "recv_into":
                buf = bytearray(7000)
                got = [bytes(buf[:r.recv_into(buf, timeout=5)])]
            elif then == "recv_view":
                with r.recv_view(timeout=5) as v:
                    got = [bytes(v)]
            elif then == "recv_many":
                got = r.recv_many(4, timeout=5)  # and "after", if it came meanwhile
            elif then == "recv_async":
                got = [asyncio.run(r.recv_async(timeout=5))]
            else:
                got = [r.recv(timeout=5)]
            if len(got) == 1:
                got.append(r.recv(timeout=5))
            assert got == [big, b"after"]
        finally:
            t.join(10)


def test_recv_into_too_small_keeps_message(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        w.send(b"0123456789")
        small = bytearray(4)
        with pytest.raises(ValueError):
            r.recv_into(small, timeout=1)
        big = bytearray(20)
        assert r.recv_into(memoryview(big), timeout=1) == 10
        assert big[:10] == b"0123456789"
        # a streamed one too
        payload = os.urandom(5000)
        t = _send_later(w, payload, 0)
        with pytest.raises(ValueError):
            r.recv_into(bytearray(100), timeout=5)
        assert r.recv(timeout=5) == payload
        t.join(5)
        with pytest.raises(TypeError):
            r.recv_into(b"readonly", timeout=0)
        with pytest.raises(TypeError):
            r.recv_into("text", timeout=0)  # type: ignore[arg-type]


def test_recv_view_holds_space(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        w.send(b"a" * 900)
        w.send(b"b" * 900)
        with r.recv_view(timeout=1) as first:
            assert bytes(first) == b"a" * 900
            # the view's bytes are not handed back while it lives: the writer cannot
            # overwrite them however much the reader reads after it
            assert r.recv(timeout=1) == b"b" * 900
            w.send(b"c" * 900)
            w.send(b"d" * 900)
            with pytest.raises(TimeoutError):
                w.send(b"e" * 900, timeout=0.05)
            assert bytes(first) == b"a" * 900
        with pytest.raises(ValueError):
            bytes(first)  # released with its block
        assert r.recv(timeout=1) == b"c" * 900
        assert r.recv(timeout=1) == b"d" * 900
        w.send(b"e" * 900, timeout=1)
        assert r.recv(timeout=1) == b"e" * 900


def test_timeouts_and_full_ring(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, spin=0, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        sent = 0
        with pytest.raises(TimeoutError):
            while True:
                w.send(b"x" * 100, timeout=0)
                sent += 1
        assert sent > 10
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            w.send(b"x" * 100, timeout=0.1)
        assert time.monotonic() - t0 >= 0.09
        with pytest.raises(ValueError):
            w.send(b"x", timeout=-1)
        with pytest.raises(TypeError):
            w.send(b"x", timeout="1")  # type: ignore[arg-type]
        for _ in range(sent):
            assert r.recv(timeout=1) == b"x" * 100
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.05)
        with pytest.raises(ValueError):
            r.recv(timeout=-1)
        with pytest.raises(ValueError):
            r.recv_many(0, timeout=0)
        with pytest.raises(TypeError):
            r.recv_many("3", timeout=0)  # type: ignore[arg-type]


def test_bad_data_types(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w:
        for bad in ("text", 3, None, [b"x"]):
            with pytest.raises(TypeError):
                w.send(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            w.send_many(b"abc")
        with pytest.raises(TypeError):
            w.send_many([b"a", "b"])  # type: ignore[list-item]
        with pytest.raises(TypeError):
            w.send_many([b"a", 3])  # type: ignore[list-item]


def test_max_message_size(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, max_message_size=100, backend=backend) as w:
        assert w.max_message_size == 100
        with pytest.raises(OSError) as info:
            w.send(b"x" * 101)
        assert info.value.errno == errno.EMSGSIZE
        with pytest.raises(OSError):
            w.send_many([b"x", b"x" * 101])
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, max_message_size=3000, backend=backend) as r:
        # an oversized message is dropped with EMSGSIZE; the ones after it flow
        def produce() -> None:
            w.send(b"y" * 20000, timeout=10)  # streamed: its chunks are skipped
            w.send(b"ok", timeout=10)

        t = threading.Thread(target=produce)
        t.start()
        try:
            with pytest.raises(OSError) as info:
                r.recv(timeout=5)
            assert info.value.errno == errno.EMSGSIZE
            assert r.recv(timeout=5) == b"ok"
        finally:
            t.join(10)
        w.send(b"z" * 3001)
        w.send(b"next")
        with pytest.raises(OSError) as info:
            r.recv_many(timeout=1)
        assert info.value.errno == errno.EMSGSIZE
        assert r.recv_many(timeout=1) == [b"next"]
        w.send(b"z" * 3001)
        w.send(b"next")
        with pytest.raises(OSError) as info:
            r.recv_into(bytearray(9000), timeout=1)
        assert info.value.errno == errno.EMSGSIZE
        buf = bytearray(10)
        assert r.recv_into(buf, timeout=1) == 4 and buf[:4] == b"next"


def test_closed_objects(backend: str, name: str) -> None:
    w = shm.Writer(name, capacity=4096, backend=backend)
    r = shm.Reader(name, timeout=5, backend=backend)
    r.close()
    r.close()
    w.close()
    w.close()
    assert w.closed and r.closed
    assert not (SHM / name).exists()
    for call in (lambda: w.send(b"x"), lambda: w.send_many([b"x"]), w.fileno,
                 lambda: w.capacity, lambda: w.spin, w.stats, lambda: w.__enter__()):
        with pytest.raises(ValueError):
            call()
    for call in (r.recv, lambda: r.recv_into(bytearray(4)), r.recv_view, r.recv_many,
                 r.fileno, lambda: r.capacity, lambda: r.__enter__()):
        with pytest.raises(ValueError):
            call()


def test_writer_close_then_eof(backend: str, name: str) -> None:
    w = shm.Writer(name, capacity=4096, backend=backend)
    r = shm.Reader(name, timeout=5, backend=backend)
    try:
        w.send(b"one")
        w.send(b"two")
        w.close()
        assert not (SHM / name).exists()
        assert r.recv(timeout=1) == b"one"
        assert list(r) == [b"two"]
        with pytest.raises(EOFError):
            r.recv(timeout=1)
        with pytest.raises(EOFError):
            r.recv_many(timeout=0)
    finally:
        r.close()
        w.close()


def test_eof_wakes_a_blocked_reader(backend: str, name: str) -> None:
    w = shm.Writer(name, capacity=4096, backend=backend)
    with shm.Reader(name, timeout=5, spin=0, backend=backend) as r:
        timer = threading.Timer(0.1, w.close)
        timer.start()
        t0 = time.monotonic()
        try:
            with pytest.raises(EOFError):
                r.recv(timeout=5)
            assert time.monotonic() - t0 < 2
        finally:
            timer.join(5)  # w.close() goes on a moment after the reader saw the end


def test_reader_close_breaks_the_pipe(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w:
        r = shm.Reader(name, timeout=5, backend=backend)
        w.send(b"x")
        r.close()
        with pytest.raises(BrokenPipeError):
            w.send(b"y")
        with pytest.raises(BrokenPipeError):
            w.send_many([b"y"])


def test_one_reader_per_channel(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend), \
            shm.Reader(name, timeout=5, backend=backend):
        with pytest.raises(OSError) as info:
            shm.Reader(name, timeout=0, backend=backend)
        assert info.value.errno == errno.EBUSY
        with pytest.raises(FileExistsError):
            shm.Writer(name, capacity=4096, backend=backend)


def test_reader_waits_for_writer(backend: str, name: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        shm.Reader(name, timeout=0.1, backend=backend)
    assert time.monotonic() - t0 >= 0.09
    w: list[shm.Writer] = []
    timer = threading.Timer(0.1, lambda: w.append(shm.Writer(name, capacity=4096,
                                                             backend=backend)))
    timer.start()
    try:
        with shm.Reader(name, timeout=5, backend=backend) as r:
            timer.join()
            w[0].send(b"late")
            assert r.recv(timeout=1) == b"late"
    finally:
        timer.join()
        for x in w:
            x.close()


def test_spin_and_stats(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, spin=0.001, backend=backend) as w, \
            shm.Reader(name, timeout=5, spin=0, backend=backend) as r:
        assert w.spin == pytest.approx(0.001)
        assert r.spin == 0
        r.spin = 0.0002
        assert r.spin == pytest.approx(0.0002)
        with pytest.raises(ValueError):
            r.spin = 5
        t = _send_later(w, b"x", 0.05)
        assert r.recv(timeout=5) == b"x"
        t.join()
        stats = r.stats()
        assert set(stats) == {"spins", "sleeps"}
        assert stats["spins"] + stats["sleeps"] >= 1


def test_eintr_is_retried(backend: str, name: str) -> None:
    """A signal during a blocking recv runs its handler; the call goes on (PEP 475)."""
    hits: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda *a: hits.append(1))
    try:
        with shm.Writer(name, capacity=4096, backend=backend) as w, \
                shm.Reader(name, timeout=5, spin=0, backend=backend) as r:
            signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                r.recv(timeout=0.3)
            assert 0.25 <= time.monotonic() - t0 < 2
            t = _send_later(w, b"after", 0.2)
            assert r.recv(timeout=5) == b"after"
            t.join()
            signal.setitimer(signal.ITIMER_REAL, 0)
            assert hits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_signal_handler_exception_propagates(backend: str, name: str) -> None:
    def boom(*args: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, boom)
    try:
        with shm.Writer(name, capacity=4096, backend=backend), \
                shm.Reader(name, timeout=5, spin=0, backend=backend) as r:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(KeyboardInterrupt):
                r.recv(timeout=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------------------- corruption


def _corrupt(name: str, offset: int, data: bytes) -> None:
    with shm.SharedMemory(name) as seg:
        seg.buf[offset:offset + len(data)] = data


@pytest.mark.parametrize(
    "offset,data",
    [
        (0, b"XXXX"),  # magic
        (4, struct.pack("<I", 99)),  # version
        (8, struct.pack("<Q", 1 << 40)),  # capacity larger than the mapping
        (16, struct.pack("<Q", 8)),  # data offset
        (64, struct.pack("<Q", 1 << 50)),  # head far beyond tail
        (64, struct.pack("<Q", 3)),  # head misaligned
        (128, struct.pack("<Q", 1 << 60)),  # tail
        (36, struct.pack("<I", 77)),  # writer state
    ],
)
def test_corrupted_header_is_refused(backend: str, name: str, offset: int,
                                     data: bytes) -> None:
    with shm.Writer(name, capacity=4096, backend=backend):
        _corrupt(name, offset, data)
        with pytest.raises(OSError) as info:
            shm.Reader(name, timeout=1, backend=backend)
        assert info.value.errno == errno.EBADMSG


@pytest.mark.parametrize(
    "frame",
    [
        struct.pack("<II", 5000, 1),  # whole frame longer than the ring
        struct.pack("<II", 4, 9),  # unknown kind
        struct.pack("<II", 100, 4),  # padding that does not reach the end
        struct.pack("<IIQ", 16, 2, 8),  # first chunk larger than its message
        struct.pack("<II", 200, 1),  # longer than what was published
    ],
)
def test_corrupted_frame_is_refused(backend: str, name: str, frame: bytes) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        w.send(b"x" * 16)
        _corrupt(name, 256, frame)
        for call in (lambda: r.recv(timeout=1), lambda: r.recv_into(bytearray(8192), timeout=1),
                     lambda: r.recv_many(timeout=1)):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EBADMSG


def test_garbage_segment_is_not_a_channel(backend: str, name: str) -> None:
    with shm.SharedMemory(name, size=100, create=True) as seg:
        try:
            seg.buf[:4] = b"junk"
            with pytest.raises(OSError) as info:
                shm.Reader(name, timeout=1, backend=backend)
            assert info.value.errno == errno.EBADMSG
        finally:
            seg.unlink()


# ---------------------------------------------------------------------------- processes

WRITER = """
import os, sys, time
from fastipc import shm
name, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with shm.Writer(name, capacity=1 << 14, backend=backend) as w:
    print("ready", flush=True)
    sizes = [0, 7, 64, 1000, 5000, 70000, 300000]
    for i in range(count):
        n = sizes[i % len(sizes)]
        w.send(i.to_bytes(4, "little") + bytes([i % 251]) * n, timeout=30)
    w.send(b"done", timeout=30)
    sys.stdin.readline()
"""


def _check_message(i: int, m: bytes) -> None:
    sizes = [0, 7, 64, 1000, 5000, 70000, 300000]
    assert int.from_bytes(m[:4], "little") == i
    assert m[4:] == bytes([i % 251]) * sizes[i % len(sizes)]


def test_across_processes(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    proc = start_python(WRITER, name, sender, "60", stdin=__import__("subprocess").PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        with shm.Reader(name, timeout=10, backend=receiver) as r:
            for i in range(60):
                _check_message(i, r.recv(timeout=10))
            assert r.recv(timeout=10) == b"done"
            proc.stdin.write("\n")
            proc.stdin.flush()
            with pytest.raises(EOFError):
                r.recv(timeout=10)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
        proc.stdin.close()  # type: ignore[union-attr]
    assert not (SHM / name).exists()


def test_reader_in_another_process(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    with shm.Writer(name, capacity=1 << 14, backend=sender) as w:
        proc = start_python(
            """
            import sys, zlib
            from fastipc import shm
            with shm.Reader(sys.argv[1], timeout=10, backend=sys.argv[2]) as r:
                total = 0
                for m in r:
                    total = zlib.crc32(m, total)
                print(total)
            """,
            name, receiver,
        )
        try:
            import zlib

            crc = 0
            for i in range(200):
                m = os.urandom((i * 977) % 40000)
                crc = zlib.crc32(m, crc)
                if i % 2:
                    w.send(m, timeout=10)
                else:
                    w.send_many([m, b""], timeout=10)
                    crc = zlib.crc32(b"", crc)
            w.close()
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            assert int(out) == crc
        finally:
            proc.kill()
            proc.wait()


def test_writer_killed_mid_stream(cross: tuple[str, str], name: str) -> None:
    """SIGKILL mid-stream: every whole message arrives, in order, then EOFError, and the
    orphaned segment is removed by the reader."""
    sender, receiver = cross
    with running(
        """
        import sys
        from fastipc import shm
        w = shm.Writer(sys.argv[1], capacity=1 << 14, backend=sys.argv[2])
        print("ready", flush=True)
        i = 0
        while True:
            n = (i * 7919) % 50000
            w.send(i.to_bytes(4, "little") + bytes([i % 256]) * n, timeout=30)
            i += 1
        """,
        name, sender,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with shm.Reader(name, timeout=10, backend=receiver) as r:
            got = 0
            while got < 50:
                m = r.recv(timeout=10)
                assert int.from_bytes(m[:4], "little") == got
                got += 1
            proc.kill()
            proc.wait()
            t0 = time.monotonic()
            with pytest.raises(EOFError):
                while True:
                    m = r.recv(timeout=10)
                    i = int.from_bytes(m[:4], "little")
                    assert i == got
                    assert m[4:] == bytes([i % 256]) * ((i * 7919) % 50000)
                    got += 1
            assert time.monotonic() - t0 < 5
        assert not (SHM / name).exists()


@pytest.mark.parametrize("pid", ["own", "reused"])
def test_reader_killed(cross: tuple[str, str], name: str, pid: str) -> None:
    """The writer notices a killed reader within a second or two; "reused": the header's
    reader pid names a live process (ours), as after pid reuse: liveness is not a pid."""
    sender, receiver = cross
    with shm.Writer(name, capacity=4096, backend=sender) as w, running(
        """
            import sys, time
            from fastipc import shm
            r = shm.Reader(sys.argv[1], timeout=10, backend=sys.argv[2])
            print(r.recv(timeout=10), flush=True)
            time.sleep(60)
            """,
        name, receiver,
    ) as proc:
        w.send(b"hi", timeout=5)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "b'hi'"
        if pid == "reused":
            fd = os.open(SHM / name, os.O_RDWR)
            os.pwrite(fd, struct.pack("<i", os.getpid()), 40)  # reader_pid
            os.close(fd)
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        with pytest.raises(BrokenPipeError):
            while True:
                w.send(b"z" * 500, timeout=10)
        assert time.monotonic() - t0 < 3


def test_ping_pong_across_processes(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    back = name + "-back"
    with shm.Writer(name, capacity=4096, backend=sender) as w, running(
        """
            import sys
            from fastipc import shm
            name, back, backend = sys.argv[1:4]
            with shm.Reader(name, timeout=10, backend=backend) as r, \\
                    shm.Writer(back, capacity=4096, backend=backend) as w:
                for m in r:
                    w.send(m[::-1], timeout=10)
            """,
        name, back, receiver,
    ) as proc:
        with shm.Reader(back, timeout=10, backend=sender) as r:
            for i in range(300):
                m = str(i).encode() * 3
                w.send(m, timeout=10)
                assert r.recv(timeout=10) == m[::-1]
            w.close()
            with pytest.raises(EOFError):
                r.recv(timeout=10)
        assert proc.wait(10) == 0


def test_no_resource_tracker(name: str) -> None:
    """Attaching in a process that exits must not unlink the segment (cpython #82300)."""
    with shm.SharedMemory(name, size=4096, create=True) as seg:
        out = run_python(
            """
            import sys
            from fastipc import shm
            s = shm.SharedMemory(sys.argv[1])
            s.close()
            """,
            name, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert (SHM / name).exists()
        seg.unlink()


def test_forked_copy_does_not_close_the_channel(backend: str, name: str) -> None:
    """A child that inherited the ends through fork and exits leaves the channel alone."""
    code = """
import os, sys
from fastipc import shm
name, backend = sys.argv[1], sys.argv[2]
w = shm.Writer(name, capacity=4096, backend=backend)
r = shm.Reader(name, timeout=5, backend=backend)
pid = os.fork()
if pid == 0:
    w.close()
    r.close()
    os._exit(0)
os.waitpid(pid, 0)
w.send(b"still open", timeout=5)
assert r.recv(timeout=5) == b"still open"
assert os.path.exists("/dev/shm/" + name)
r.close()
w.close()
assert not os.path.exists("/dev/shm/" + name)
print("ok")
"""
    out = run_python(code, name, backend, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_segment_too_large_for_dev_shm(backend: str, name: str) -> None:
    """A segment /dev/shm cannot back is refused at creation (ENOSPC), never a later SIGBUS."""
    with pytest.raises(OSError) as info:
        shm.SharedMemory(name, size=1 << 50, create=True, backend=backend)
    assert info.value.errno == errno.ENOSPC
    assert "/dev/shm" in str(info.value)
    assert not (SHM / name).exists()


def test_close_from_another_thread_wakes_a_blocked_call(backend: str, name: str) -> None:
    """Closing an end while another thread waits in it ends that wait with ValueError
    (the end is closed), promptly, and never unmaps memory under a running call."""
    with shm.Writer(name, capacity=4096, spin=0, backend=backend) as w:
        r = shm.Reader(name, timeout=5, spin=0, backend=backend)
        error = close_ends_call(lambda: r.recv(timeout=30), r.close, within=2)
        assert isinstance(error, ValueError), error

    w = shm.Writer(name, capacity=4096, spin=0, backend=backend)
    r = shm.Reader(name, timeout=5, backend=backend)
    try:
        while True:
            try:
                w.send(b"x" * 500, timeout=0)
            except TimeoutError:
                break
        error = close_ends_call(lambda: w.send(b"y" * 500, timeout=30), w.close)
        assert isinstance(error, ValueError), error
    finally:
        r.close()
        w.close()


# ---------------------------------------------------------------------------- the per-message calls


def _outcome(call: Any) -> tuple[str, str]:
    try:
        call()
    except Exception as exc:  # compared across backends below
        return type(exc).__name__, str(exc)
    return "no error", ""


def _bad_calls(w: Any, r: Any) -> list[Any]:
    """Per-message calls with bad arguments, each given the ends to call."""
    grid = memoryview(bytearray(16))[::2]  # not contiguous
    return [
        lambda: w.send("text"), lambda: w.send(3), lambda: w.send(None),
        lambda: w.send(grid), lambda: w.send(b"x", timeout=-1),
        lambda: w.send(b"x", timeout=float("nan")), lambda: w.send(b"x", timeout="1"),
        lambda: w.send(b"x", timeout=True), lambda: w.send(b"x", wait=1),
        lambda: w.send(), lambda: w.send(b"x", 1, 2),
        lambda: w.send_many(b"abc"), lambda: w.send_many("abc"),
        lambda: w.send_many([b"a", "b"]), lambda: w.send_many([b"a", 3]),
        lambda: w.send_many(7), lambda: w.send_many([b"a"], timeout=-0.5),
        lambda: w.send_many([b"a"], bogus=1),
        lambda: r.recv(timeout=-1), lambda: r.recv(timeout=float("nan")),
        lambda: r.recv(timeout="x"), lambda: r.recv(bogus=1), lambda: r.recv(1, 2),
        lambda: r.recv_into(b"read-only"), lambda: r.recv_into("text"),
        lambda: r.recv_into(3), lambda: r.recv_into(grid),
        lambda: r.recv_into(bytearray(4), timeout=-1), lambda: r.recv_into(),
        lambda: r.recv_many(0), lambda: r.recv_many(1 << 21), lambda: r.recv_many(True),
        lambda: r.recv_many("3"), lambda: r.recv_many(2.0),
        lambda: r.recv_many(4, timeout=float("nan")), lambda: r.recv_many(bogus=2),
        lambda: r.recv_view(timeout=-1),
    ]


def test_bad_arguments_same_on_both_backends(name: str) -> None:
    """Every per-message call given bad arguments raises the same exception, with the same
    message, on the native handle (C) and on the pure backend (Python)."""
    seen = {}
    for backend in ("native", "pure"):
        with shm.Writer(name, capacity=4096, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            seen[backend] = [_outcome(call) for call in _bad_calls(w, r)]
            w.send(b"still works")
            assert r.recv(timeout=1) == b"still works"
    for i, (native, pure) in enumerate(zip(seen["native"], seen["pure"], strict=True)):
        assert native[0] == pure[0] != "no error", (i, native, pure)
        if "argument" not in pure[1]:  # the function's name in these differs (send/Writer.send)
            assert native[1] == pure[1], (i, native, pure)


def test_per_message_calls_of_a_closed_end(backend: str, name: str) -> None:
    """On a closed end every per-message call is ValueError, whatever its arguments' values,
    the awaitables' no-wait hooks too (a call that does not fit the signature is the
    TypeError Python raises before the pure backend's method runs)."""
    w = shm.Writer(name, capacity=4096, backend=backend)
    r = shm.Reader(name, timeout=5, backend=backend)
    w.send(b"queued")
    r.close()
    w.close()
    calls = [
        *_bad_calls(w, r),
        lambda: w.send(b"x"), lambda: w.send_many([b"x"]), lambda: w._send_nowait(b"x"),
        r.recv, lambda: r.recv_into(bytearray(8)), r.recv_many, r.recv_view,
        r._recv_nowait, lambda: r._recv_many_nowait(4), lambda: list(r),
    ]
    for i, call in enumerate(calls):
        kind, message = _outcome(call)
        if backend == "pure" and kind == "TypeError" and "argument" in message:
            continue
        assert kind == "ValueError" and "closed" in message, (i, kind, message)


def test_close_during_a_call_frees_once_it_left(backend: str, name: str) -> None:
    """close() while a call of the end runs (here from a signal handler that runs inside the
    blocked recv) marks it closed and ends the call with ValueError, but frees nothing
    until the call has left: its fd and mapping are still there right after close()."""
    w = shm.Writer(name, capacity=4096, backend=backend)
    r = shm.Reader(name, timeout=5, spin=0, backend=backend)
    fd = r.fileno()
    during: list[bool] = []

    def handler(*args: object) -> None:
        r.close()
        during.append(r.closed)
        os.fstat(fd)  # still open: the call in progress holds the end
        assert r._mmap is not None and not r._mmap.closed

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="closed"):
            r.recv(timeout=5)
        assert time.monotonic() - t0 < 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert during == [True]
    with pytest.raises(OSError):
        os.fstat(fd)  # freed once the call left
    with pytest.raises(BrokenPipeError):
        w.send(b"x" * 100)  # the writer was told
    w.close()


@pytest.mark.parametrize("call", ["recv", "recv_into", "recv_many", "send", "send_many",
                                  "streamed"])
def test_a_raising_handler_leaves_the_end_usable(backend: str, name: str, call: str) -> None:
    """A signal handler that raises during a blocked call: the exception propagates out of
    the call, and both ends go on as if the call had not been made (nothing half sent or
    half taken)."""
    class Boom(Exception):
        pass

    def boom(*args: object) -> None:
        raise Boom

    big = bytes(range(256)) * 64  # streamed through a 4 KiB ring
    with shm.Writer(name, capacity=4096, spin=0, backend=backend) as w, \
            shm.Reader(name, timeout=5, spin=0, backend=backend) as r:
        old = signal.signal(signal.SIGALRM, boom)
        try:
            if call in ("send", "send_many"):
                while True:
                    try:
                        w.send(b"f" * 500, timeout=0)
                    except TimeoutError:
                        break
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Boom):
                if call == "recv":
                    r.recv(timeout=5)
                elif call == "recv_into":
                    r.recv_into(bytearray(64), timeout=5)
                elif call == "recv_many":
                    r.recv_many(8, timeout=5)
                elif call == "send":
                    w.send(b"s" * 500, timeout=5)
                elif call == "send_many":
                    w.send_many([b"m" * 500] * 3, timeout=5)
                else:
                    w.send(big, timeout=5)  # nobody reads: cut short half-way
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        got: list[bytes] = []
        while call not in ("recv", "recv_into", "recv_many"):  # what the writer had queued
            try:
                got += r.recv_many(64, timeout=0.2)
            except TimeoutError:
                break
        assert all(m in (b"f" * 500, b"m" * 500) for m in got), [m[:8] for m in got]
        if call == "send_many":
            assert got.count(b"m" * 500) <= 3
        w.send(b"after")
        t = _send_later(w, big, 0.0)
        assert r.recv(timeout=5) == b"after"
        assert r.recv(timeout=5) == big
        t.join()
