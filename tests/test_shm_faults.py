"""The shm channel under attack: close racing a copy, exceptions raised into a streamed
message, exported views, writers killed while building, liveness against pid reuse and pid
namespaces, foreign segments, truncation, closed objects and pickling. Each runs on both
backends, across them where data crosses processes, and in a child process where a failure
could be a crash."""

from __future__ import annotations

import errno
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fastipc import _shm_layout as layout
from fastipc import shm
from helpers import killed_at_end, run_python, start_python
from test_shm import _send_later, running

SHM = Path("/dev/shm")


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


# ---------------------------------------------------------------------------- 2. close vs copy

CLOSE_RACE = """
import sys, threading
from fastipc import shm
name, backend, size, nth = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
nth = 1  # pure reads a whole frame once; the native handle's recv reads and copies in C
target = "recv" if backend == "native" else "unpack_from"
w = shm.Writer(name, capacity=1 << 16, backend=backend)
r = shm.Reader(name, timeout=5, spin=0, backend=backend)
payload = bytes(range(256)) * (size // 256)
w.send(payload)
closer = threading.Thread(target=r.close)
seen = []

def hook(frame, event, arg):
    # right after the nth return of the C call that reads the ring: close from another
    # thread, and let recv go on only once close() has returned
    if event == "c_return" and getattr(arg, "__name__", "") == target:
        seen.append(1)
        if len(seen) == nth:
            closer.start()
            closer.join(5)

sys.setprofile(hook)
try:
    got = r.recv(timeout=5)
    sys.setprofile(None)
    assert got == payload, "a message read from an unmapped ring"
    print("message")
except ValueError:
    sys.setprofile(None)
    print("closed")
assert len(seen) >= nth and r.closed, seen
w.close()
"""


@pytest.mark.parametrize("size,nth", [(3000, 1), (3000, 2), (9000, 1), (9000, 2)])
def test_close_lands_between_the_c_call_and_the_copy(backend: str, name: str, size: int,
                                                    nth: int) -> None:
    """Reader.close() from another thread right after the call that reads the ring returns
    (the pure backend's read of a frame; the native handle's recv, which reads the ring and
    copies the message within one C method, counted busy): the call ends with the whole
    message or ValueError, and nothing reads unmapped memory (a crash fails the child)."""
    out = _ok(run_python(CLOSE_RACE, name, backend, str(size), str(nth)))
    assert out.strip() in ("message", "closed")


def test_close_with_a_live_view_waits_for_it(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w:
        r = shm.Reader(name, timeout=5, backend=backend)
        w.send(b"v" * 100)
        view = r.recv_view(timeout=1)
        mv = view.__enter__()
        r.close()  # releases the view's memoryview: the mapping goes with it
        with pytest.raises(ValueError):
            bytes(mv)
        view.release()
        assert r.closed


# ---------------------------------------------------------------------------- 3. interrupted

# What both interrupting readers share: a SIGALRM handler that raises Boom into the receiving
# calls (only into them: it is armed while one runs), and the loop that counts what came.
INTERRUPTED = """
import asyncio, signal, sys
from fastipc import shm

class Boom(Exception):
    pass

armed = [False]

def boom(*args):
    if armed[0]:  # once per arming: a second Boom could land while the first is handled
        armed[0] = False
        raise Boom

async def drain(take, check, first, every):
    # (message numbers, Booms): take(i) (a message, or an awaitable of one) until EOFError,
    # with Boom raised into it every `every` s; check(k, m) each message
    got, booms, i = [], 0, 0
    signal.signal(signal.SIGALRM, boom)
    signal.setitimer(signal.ITIMER_REAL, first, every)
    while True:
        i += 1
        try:
            armed[0] = True
            m = take(i)
            if not isinstance(m, bytes):
                m = await m
            armed[0] = False
        except Boom:
            booms += 1
            continue
        except EOFError:
            break
        finally:
            armed[0] = False
        k = int.from_bytes(m[:4], "little")
        check(k, m)
        got.append(k)
    signal.setitimer(signal.ITIMER_REAL, 0)
    assert got == sorted(set(got)), "out of order or twice"
    return got, booms
"""

INTERRUPT = INTERRUPTED + """
name, backend, mode, kind = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]

def size(k):
    return (k * 7919) % 200000 if kind == "big" else 1024 + (k * 131) % 1024

def check(k, m):
    body = m[4:]
    assert body == bytes([k % 251]) * len(body), f"message {k} corrupted"
    assert len(body) == size(k), f"message {k} has a wrong length"

r = shm.Reader(name, timeout=10, spin=0, backend=backend)
buf = bytearray(1 << 20)

def take(i):
    if mode == "into" or (mode == "mixed" and i % 2):
        return bytes(buf[:r.recv_into(buf, timeout=10)])
    return r.recv(timeout=10)

got, booms = asyncio.run(drain(take, check, 0.0005, 0.0007))
r.close()
print(len(got), booms)
"""

WRITER = """
import sys
from fastipc import shm
name, backend, count, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
with shm.Writer(name, capacity=1 << 14 if kind == "big" else 4096, spin=0,
                backend=backend) as w:
    print("ready", flush=True)
    for k in range(count):
        n = (k * 7919) % 200000 if kind == "big" else 1024 + (k * 131) % 1024
        w.send(k.to_bytes(4, "little") + bytes([k % 251]) * n, timeout=30)
    w.flush(timeout=30)
"""


@pytest.mark.parametrize("kind", ["big", "small"])
@pytest.mark.parametrize("mode", ["into", "recv", "mixed"])
def test_exception_raised_into_a_streamed_message(cross: tuple[str, str], name: str,
                                                  mode: str, kind: str) -> None:
    """A signal handler that raises, driven by setitimer, interrupts recv_into()/recv() in
    the middle of messages streamed through the ring (big: up to 200 KB through 16 KiB;
    small: 1-2 KiB through 4 KiB, which the native recv() streams into its staging buffer):
    the reader stays usable and never delivers a corrupted or partial message; a message
    whose call was interrupted comes whole with the next call (or, at most, is dropped
    whole)."""
    sender, receiver = cross
    count = 150 if kind == "big" else 2000
    with running(WRITER, name, sender, str(count), kind) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        out = _ok(run_python(INTERRUPT, name, receiver, mode, kind, timeout=120))
        delivered, booms = map(int, out.split())
        assert booms > 0, "the timer never interrupted a call"
        assert delivered >= count - booms
        assert proc.wait(60) == 0


ASYNC_INTERRUPT = INTERRUPTED + """
name, sender, receiver = sys.argv[1], sys.argv[2], sys.argv[3]
count = 60000

def msg(k):
    return k.to_bytes(4, "little") + bytes([k % 251]) * (k % 200)

def check(k, m):
    assert m == msg(k), f"message {k} corrupted"

w = shm.Writer(name, capacity=1 << 24, backend=sender)
r = shm.Reader(name, timeout=10, backend=receiver)
for k in range(count):
    w.send(msg(k))
w.close()  # all of them are queued: the reader never waits, so no await suspends
buf = bytearray(4096)

def view():
    with r.recv_view(timeout=10) as v:
        return bytes(v)

def take(i):
    if i % 5 == 0:
        return r.recv(timeout=10)
    if i % 7 == 0:
        return bytes(buf[:r.recv_into(buf, timeout=10)])
    if i % 11 == 0:
        return view()
    return r.recv_async(timeout=10)

got, booms = asyncio.run(drain(take, check, 0.0002, 0.0003))
r.close()
print(len(got), booms)
"""


def test_exception_raised_into_recv_async(cross: tuple[str, str], name: str) -> None:
    """A signal handler that raises, driven by setitimer, interrupts recv_async() (which
    takes the messages queued in batches) mixed with the other receiving calls: the reader
    stays usable, never delivers a message twice, out of order or corrupted, and drops at
    most the one message an exception lands on."""
    sender, receiver = cross
    out = _ok(run_python(ASYNC_INTERRUPT, name, sender, receiver, timeout=120))
    delivered, booms = map(int, out.split())
    assert booms > 0, "the timer never interrupted a call"
    assert delivered >= 60000 - booms


# ---------------------------------------------------------------------------- 4. exported views


def _flow(w: shm.Writer, r: shm.Reader, count: int) -> None:
    """``count`` messages of 900 bytes through a 4 KiB ring, the writer in a thread: a ring
    whose space stays held stalls it (TimeoutError there, then here)."""
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(count):
                w.send(bytes([i % 256]) * 900, timeout=5)
        except BaseException as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=produce)
    t.start()
    try:
        for i in range(count):
            assert r.recv(timeout=6) == bytes([i % 256]) * 900
    finally:
        t.join(10)
    assert not errors, errors


def test_exported_view_does_not_stall_the_writer_forever(backend: str, name: str) -> None:
    numpy = pytest.importorskip("numpy")
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        w.send(bytes(range(200)) * 4)
        with r.recv_view(timeout=1) as view:
            arr = numpy.frombuffer(view, dtype=numpy.uint8)
        # the export outlived the block: no BufferError, the space stays held meanwhile
        assert int(arr[5]) == 5
        filled = 0
        with pytest.raises(TimeoutError):
            for _ in range(10):
                w.send(b"f" * 900, timeout=0.05)
                filled += 1
        assert filled == 3
        assert int(arr.sum()) == sum(range(200)) * 4  # not overwritten
        del arr  # the export goes: the reader's next wait hands the space back
        for _ in range(filled):
            assert r.recv(timeout=1) == b"f" * 900
        _flow(w, r, 20)


def test_iter_unpack_of_a_view(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        w.send(struct.pack("<4I", 1, 2, 3, 4))
        with r.recv_view(timeout=1) as view:
            it = struct.iter_unpack("<I", view)
        assert [x for (x,) in it] == [1, 2, 3, 4]
        del it
        _flow(w, r, 20)


def _pattern(i: int, n: int = 900) -> bytes:
    return bytes((i * 7 + k) % 251 for k in range(n))


def _keep(kind: str, mv: memoryview) -> Any:
    """What a user keeps of a view past its ``with`` block, and how to read it back."""
    if kind == "iter_unpack":  # an export of the memoryview itself
        return struct.iter_unpack("B", mv)
    if kind == "cast":  # another export: a memoryview made from it by cast()
        return mv.cast("B", (len(mv),))
    if kind == "slice":  # shares the view's buffer without exporting it
        return mv[100:]
    if kind == "numpy":  # numpy wraps the view in a memoryview of its own
        numpy = pytest.importorskip("numpy")
        return numpy.frombuffer(mv, dtype=numpy.uint8)
    return mv  # the memoryview itself, named after the block


def _read_kept(kind: str, kept: Any, n: int) -> bytes:
    """The first ``n`` bytes of what was kept (an iterator is left unexhausted: exported)."""
    if kind == "iter_unpack":
        return bytes(next(kept)[0] for _ in range(n))
    return bytes(kept)[:n]


KEPT = ["iter_unpack", "cast", "slice", "numpy", "view"]


ENDS = {"channel": (shm.Writer, shm.Reader), "fanout": (shm.Publisher, shm.Subscriber)}


def _view_kept_past_its_block(mechanism: str, backends: tuple[str, str], name: str,
                              kind: str) -> None:
    """A message's view is kept past its block in one of the KEPT ways. While anything made
    from it lives, its bytes stay intact and its space stays held (the sender fills the rest
    of the ring, then times out); once the last of them has gone, whatever still names the
    memoryview, the receiver's next call hands the space back: the sender goes round the
    ring again, and every byte comes through. The channel's ends and the fan-out's (under
    "block") alike."""
    make_sender, make_receiver = ENDS[mechanism]
    with make_sender(name, capacity=4096, backend=backends[0]) as sender, \
            make_receiver(name, timeout=5, backend=backends[1]) as receiver:
        _kept_past_its_block(sender, receiver, kind)
        if mechanism == "channel":
            _flow(sender, receiver, 20)


def _kept_past_its_block(sender: Any, receiver: Any, kind: str) -> None:
    whole = 4  # 900-byte messages that fit the free ring
    sender.send(_pattern(0))
    with receiver.recv_view(timeout=1) as mv:
        kept = _keep(kind, mv)
    if kind == "view":  # nothing made from it: released at the block's end
        with pytest.raises(ValueError):
            bytes(mv)
    else:
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < whole:
                sender.send(_pattern(1 + sent), timeout=0.05)
                sent += 1
        assert sent == whole - 1  # the held message takes the rest
        for i in range(sent - 1):  # read without waiting: the fast path
            assert receiver.recv(timeout=0) == _pattern(1 + i)
        start = 100 if kind == "slice" else 0
        assert _read_kept(kind, kept, 799) == _pattern(0)[start:start + 799]
    del kept  # `mv` is still named: the space must go back all the same
    if kind != "view":  # the receiver's next call hands it back
        assert receiver.recv(timeout=0) == _pattern(whole - 1)
    for i in range(3 * whole):  # three times round the ring, through the held space
        sender.send(_pattern(i), timeout=1)
        assert receiver.recv(timeout=0) == _pattern(i)  # never waiting
    for i in range(3 * whole):  # the fast path, and the batch
        sender.send(_pattern(i), timeout=1)
        assert receiver.recv() == _pattern(i)
        sender.send(_pattern(i), timeout=1)
        assert receiver.recv_many(4, timeout=0) == [_pattern(i)]


@pytest.mark.parametrize("mechanism", ENDS)
@pytest.mark.parametrize("kind", KEPT)
def test_view_kept_past_its_block(backend: str, name: str, kind: str, mechanism: str) -> None:
    _view_kept_past_its_block(mechanism, (backend, backend), name, kind)


@pytest.mark.parametrize("mechanism", ENDS)
@pytest.mark.parametrize("kind", KEPT)
def test_view_kept_past_its_block_across(cross: tuple[str, str], name: str, kind: str,
                                         mechanism: str) -> None:
    _view_kept_past_its_block(mechanism, cross, name, kind)


CLOSE_UNDER_EXPORT = """
import struct, sys
import numpy
from fastipc import shm
name, writer, reader, kind = sys.argv[1:]
data = bytes(range(256)) * 3

def mapped():
    with open("/proc/self/maps") as f:
        return name in f.read()

w = shm.Writer(name, capacity=4096, backend=writer)
r = shm.Reader(name, timeout=5, backend=reader)
w.send(data)
with r.recv_view(timeout=1) as mv:
    kept = struct.iter_unpack("B", mv) if kind == "iter_unpack" else \\
        numpy.frombuffer(mv, dtype=numpy.uint8)
r.close()  # the mapping must stay while `kept` lives (reading it would crash otherwise)
try:
    for _ in range(10):
        w.send(b"x" * 900, timeout=1)
except BrokenPipeError:
    pass
else:
    raise AssertionError("the writer was not told the reader closed")
got = bytes(x for (x,) in kept) if kind == "iter_unpack" else bytes(kept)
assert got == data, "the kept bytes changed"
w.close()
assert mapped()
del kept, mv
assert not mapped(), "the mapping outlived every use of it"
print("ok")
"""


@pytest.mark.parametrize("kind", ["iter_unpack", "numpy"])
def test_close_while_a_view_is_exported(cross: tuple[str, str], name: str, kind: str) -> None:
    """close() of the reader while a view is exported past its block: the writer is told
    (BrokenPipeError, never left waiting), the exported bytes stay mapped and intact, and
    the mapping goes with the last use of it. In a child process: a read of unmapped
    memory would crash it."""
    pytest.importorskip("numpy")
    assert _ok(run_python(CLOSE_UNDER_EXPORT, name, *cross, kind)).strip() == "ok"


def test_exported_view_of_a_streamed_message(backend: str, name: str) -> None:
    """A message larger than half the ring comes to recv_view as a copy: exported past its
    block it is neither an error nor a hold, and an empty message's view works too."""
    data = _pattern(3, 3000)
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        t = _send_later(w, data)
        with r.recv_view(timeout=5) as mv:
            kept = struct.iter_unpack("B", mv)
        t.join(5)
        assert bytes(x for (x,) in kept) == data
        w.send(b"")
        with r.recv_view(timeout=1) as mv:
            assert mv.nbytes == 0 and bytes(mv) == b""
            empty = mv[:]
        assert bytes(empty) == b""
        del empty
        _flow(w, r, 20)


# ---------------------------------------------------------------------------- 5. half-built

BUILDER = """
import sys
from fastipc import shm
print("go", flush=True)
while True:
    w = shm.Writer(sys.argv[1], capacity=1 << 20, backend=sys.argv[2])
    w.close()
"""


def _stale(prefix: str) -> Any:
    """The arguments of `fastipc rm --stale --match PREFIX` (only this test's segments:
    other test runs on the machine have stale segments of their own)."""
    return type("Args", (), {"names": [], "stale": True, "match": prefix})()


def test_writer_killed_while_building(backend: str, name: str) -> None:
    """SIGKILL at random moments while a Writer builds its segment: the name never shows a
    half-built channel (a Reader finds a whole one or none), and `fastipc rm --stale`
    removes what the dead writer left."""
    from fastipc._cli import admin

    rng = random.Random(1234)
    for _ in range(12):
        proc = start_python(BUILDER, name, backend)
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.03))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        try:
            r = shm.Reader(name, timeout=0, backend=backend)
        except (FileNotFoundError, TimeoutError):
            pass
        else:  # a whole channel whose writer died: an end of stream, never a hang
            with r, pytest.raises(EOFError):
                r.recv(timeout=2)
        left = [e for e in admin.entries() if e.name.startswith(name)]
        assert all(not e.alive for e in left), left
        assert all(e.kind in ("channel", "temporary") for e in left), left
        admin.remove(_stale(name))
        assert not [p for p in SHM.iterdir() if p.name.startswith(name)]


def test_reader_never_sees_a_header_in_progress(backend: str, name: str) -> None:
    temp = SHM / f"{name}.0123456789ab{layout.TEMP_SUFFIX}"
    temp.write_bytes(b"\0" * 8192)  # a temporary whose writer died before its header
    try:
        with pytest.raises(TimeoutError):
            shm.Reader(name, timeout=0.1, backend=backend)
    finally:
        temp.unlink(missing_ok=True)  # a concurrent `rm --stale` may have taken it


# ---------------------------------------------------------------------------- 6. liveness

SLEEPING_WRITER = """
import os, sys, time
from fastipc import shm
w = shm.Writer(sys.argv[1], capacity=4096, backend=sys.argv[2])
w.send(b"before")
if sys.argv[3] == "fork":
    pid = os.fork()
    if pid == 0:  # a child that inherited the writer and outlives its parent
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
print("ready", flush=True)
time.sleep(60)
"""


def _pid_not_running() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 7


def _set_writer_pid(name: str, pid: int) -> None:
    fd = os.open(SHM / name, os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack("<i", pid), layout.OFF_WPID)
    finally:
        os.close(fd)


def _writer_dies(name: str, receiver: str, proc: subprocess.Popen[str],
                 fake_pid: bool) -> None:
    """Attach, read the writer's message, kill it: EOFError within a second and a half."""
    with shm.Reader(name, timeout=5, spin=0, backend=receiver) as r:
        if fake_pid:
            _set_writer_pid(name, os.getpid())  # a pid that runs: ours
        assert r.recv(timeout=1) == b"before"
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        with pytest.raises(EOFError):
            r.recv(timeout=10)
        assert time.monotonic() - t0 < 1.5


def test_dead_writer_whose_pid_is_live(cross: tuple[str, str], name: str) -> None:
    """pid reuse: the header names a live process, but the writer is dead: EOF promptly."""
    sender, receiver = cross
    with running(SLEEPING_WRITER, name, sender, "plain") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        _writer_dies(name, receiver, proc, fake_pid=True)
        assert not (SHM / name).exists()  # the orphan went with the reader


def test_live_writer_whose_pid_is_not_visible(backend: str, name: str) -> None:
    """Another pid namespace: the header's pid does not exist here, the writer lives: the
    reader keeps waiting, and neither it nor `rm --stale` removes the channel."""
    from fastipc._cli import admin

    with shm.Writer(name, capacity=4096, backend=backend) as w:
        _set_writer_pid(name, _pid_not_running())
        with shm.Reader(name, timeout=5, spin=0, backend=backend) as r:
            with pytest.raises(TimeoutError):
                r.recv(timeout=0.4)
            with pytest.raises(TimeoutError):
                r.recv(timeout=0)
            admin.remove(_stale(name))
            assert (SHM / name).exists()
            w.send(b"still here")
            assert r.recv(timeout=1) == b"still here"
        assert (SHM / name).exists()


def test_forked_child_does_not_keep_a_dead_writer_alive(cross: tuple[str, str],
                                                         name: str) -> None:
    """The writer forked a child that inherited its end and outlives it: the end was given
    up in the child, so the writer's death still ends the stream."""
    sender, receiver = cross
    with running(SLEEPING_WRITER, name, sender, "fork") as proc:
        assert proc.stdout is not None
        with killed_at_end(int(proc.stdout.readline())):
            assert proc.stdout.readline().strip() == "ready"
            _writer_dies(name, receiver, proc, fake_pid=False)


# ---------------------------------------------------------------------------- 7. foreign


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_foreign_segment_is_refused(backend: str, name: str) -> None:
    with shm.Writer(name, capacity=4096, backend=backend) as w:
        os.chown(SHM / name, 65534, -1)
        with pytest.raises(PermissionError):
            shm.Reader(name, timeout=0, backend=backend)
        with pytest.raises(PermissionError):
            shm.Reader(name, timeout=1, backend=backend)
        with shm.Reader(name, timeout=0, owner=65534, backend=backend) as r:
            w.send(b"trusted")
            assert r.recv(timeout=1) == b"trusted"
        with pytest.raises(TypeError):
            shm.Reader(name, timeout=0, owner="nobody", backend=backend)  # type: ignore


# ---------------------------------------------------------------------------- 8. SIGBUS

TRUNCATE = """
import os, sys, threading
from fastipc import shm
name, backend, when = sys.argv[1], sys.argv[2], sys.argv[3]
w = shm.Writer(name, capacity=1 << 16, backend=backend)
r = shm.Reader(name, timeout=1, spin=0, backend=backend)
w.send(b"hello")
assert r.recv(timeout=1) == b"hello"
fd = os.open("/dev/shm/" + name, os.O_RDWR)
if when == "while-waiting":
    threading.Timer(0.3, os.ftruncate, (fd, 0)).start()
else:
    os.ftruncate(fd, 0)
try:
    r.recv(timeout=5)
except OSError as exc:
    print("reader", exc.errno)
if when == "before-calls":
    try:
        w.send(b"x" * 5000, timeout=1)
    except OSError as exc:
        print("writer", exc.errno)
r.close()
w.close()
os.close(fd)
"""


@pytest.mark.parametrize("when", ["while-waiting", "before-calls"])
def test_truncated_segment_is_an_error_not_a_crash(backend: str, name: str,
                                                   when: str) -> None:
    """A peer truncates the segment: the native backend turns every SIGBUS into
    OSError(EBADMSG); the pure one checks the size after every sleep (README: what it cannot
    catch)."""
    out_ = run_python(TRUNCATE, name, backend, when)
    if backend == "pure" and when == "before-calls":  # the documented limit (README)
        assert out_.returncode == -signal.SIGBUS, out_.stderr
        (SHM / name).unlink()
        return
    out = _ok(out_)
    assert f"reader {errno.EBADMSG}" in out
    if when == "before-calls":
        assert f"writer {errno.EBADMSG}" in out


# ---------------------------------------------------------------------------- 9. closed


def test_closed_ends_raise_value_error_whatever_the_arguments(backend: str, name: str) -> None:
    w = shm.Writer(name, capacity=4096, backend=backend)
    r = shm.Reader(name, timeout=5, backend=backend)
    r.close()
    w.close()
    calls = [
        lambda: w.send(data=b"x", timeout=1), lambda: w.send("not bytes"),
        lambda: w.send(b"x", timeout=-1), lambda: w.send_many(messages=[b"x"]),
        lambda: w.send_many(5), lambda: w.flush(timeout=1), lambda: w.flush(-3),
        lambda: w.capacity, lambda: w.spin, lambda: w.max_message_size,
        lambda: w.reader_attached, w.stats, w.fileno, lambda: w.__enter__(),
        lambda: setattr(w, "spin", 0.1),
        lambda: r.recv(timeout=1), lambda: r.recv("x"), lambda: r.recv_into(buffer=b"ro"),
        lambda: r.recv_view(timeout=-1), lambda: r.recv_many(max_messages=0),
        lambda: r.capacity, lambda: r.spin, lambda: r.max_message_size, r.stats, r.fileno,
        lambda: r.__enter__(), lambda: next(iter(r)),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    import asyncio

    for coro in (lambda: w.send_async(b"x", timeout=1), lambda: r.recv_async(timeout=1),
                 lambda: r.recv_many_async(max_messages=3)):
        with pytest.raises(ValueError):
            asyncio.run(coro())


def test_closed_shared_memory(backend: str, name: str) -> None:
    seg = shm.SharedMemory(name, size=4096, create=True, backend=backend)
    seg.close()
    for call in (lambda: seg.size, lambda: seg.buf, seg.fileno, lambda: seg.__enter__(),
                 lambda: pickle.dumps(seg)):
        with pytest.raises(ValueError):
            call()
    seg.unlink()
    assert not (SHM / name).exists()
    seg2 = shm.SharedMemory(name, size=4096, create=True, backend=backend)
    seg2.unlink()  # before close
    seg2.close()
    assert not (SHM / name).exists()


# ---------------------------------------------------------------------------- 10. pickling


PICKLE = """
import multiprocessing as mp, pickle, sys
from fastipc import shm

def child(seg, q):
    with seg:
        q.put((bytes(seg.buf[:5]), seg.size, seg.backend))
        seg.buf[5:10] = b"world"

if __name__ == "__main__":
    name, backend, method = sys.argv[1:4]
    ctx = mp.get_context(method)
    with shm.SharedMemory(name, size=4096, create=True, backend=backend) as seg:
        try:
            seg.buf[:5] = b"hello"
            q = ctx.Queue()
            p = ctx.Process(target=child, args=(seg, q))
            p.start()
            assert q.get(timeout=60) == (b"hello", 4096, backend)
            p.join(60)
            assert p.exitcode == 0
            assert bytes(seg.buf[5:10]) == b"world"
            data = pickle.dumps(seg)
        finally:
            seg.unlink()
    try:
        pickle.loads(data)
    except FileNotFoundError:
        print("ok")
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_shared_memory_pickles_by_name(backend: str, name: str, method: str,
                                       tmp_path: Path) -> None:
    """A SharedMemory passed to multiprocessing.Process re-attaches by name under every start
    method; once the name is gone, unpickling raises FileNotFoundError (never creates)."""
    script = tmp_path / "pickle_shm.py"  # spawn and forkserver import the main module
    script.write_text(PICKLE)
    out = subprocess.run([sys.executable, str(script), name, backend, method],
                         capture_output=True, text=True, timeout=120)
    assert _ok(out).strip() == "ok"
    assert not (SHM / name).exists()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))


@pytest.mark.parametrize("kind", ["channel", "publisher"])
def test_a_fork_leaves_the_fd_numbers_of_closed_ends_alone(backend: str, name: str,
                                                           kind: str) -> None:
    """A forked child gives up the ends it inherited, but one the parent closed (still
    referenced) is not its to close: its fd number may belong to something else by now."""
    from fastipc import pubsub

    end = (shm.Writer(name, capacity=4096, backend=backend) if kind == "channel"
           else pubsub.Publisher(name, capacity=1 << 16, backend=backend))
    end.close()  # still referenced: the fork hook still sees it
    r, w = os.pipe()  # takes the lowest free numbers: the end's, most likely
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.fstat(r)
            os.fstat(w)
            os._exit(0)
        except OSError:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    os.close(r)
    os.close(w)
    assert status == 0
    del end
