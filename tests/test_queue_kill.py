"""fastipc.queue under SIGKILL: producers and consumers killed at random moments (and while
holding a lock, on purpose), with the guarantees checked message by message: nothing
delivered twice, nothing torn, every message whose put returned delivered, and at most one
message lost per killed consumer."""

from __future__ import annotations

import hashlib
import mmap
import multiprocessing as mp
import os
import random
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import SHM_DIR
from fastipc._backend import queue as L
from fastipc._core import Deadline
from fastipc.queue import NamedQueue
from helpers import run_python, start_python


@contextmanager
def _created(name: str, **kwargs: Any) -> Iterator[NamedQueue]:
    """The test's named queue: created, then closed and unlinked (close() leaves the name of
    a named queue; unlink() removes it, and whatever is still queued in files of its own)."""
    q = NamedQueue(name, create=True, **kwargs)
    try:
        with q:
            yield q
    finally:
        q.unlink()

CAPACITY = 1 << 16
SENTINEL = b"stop"
_ctx = mp.get_context("fork")


def _body(ident: int) -> bytes:
    seed = hashlib.blake2b(struct.pack("<q", ident), digest_size=16).digest()
    return seed * (ident % 1200 + 1)  # up to ~19 KB: copies take a while, under the lock


def _producer(name: str, backend: str, slot: int, first: int, progress: Any,
              stop: Any) -> None:
    with NamedQueue(name, backend=backend) as q:
        ident = first
        while not stop[0]:
            body = _body(ident)
            if ident % 3:
                q.put((ident, body), timeout=10)
            else:
                q.put_bytes(struct.pack("<q", ident) + body, timeout=10)
            progress[slot] = ident  # this put returned
            ident += 1
    os._exit(0)


def _consumer(name: str, backend: str, path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with NamedQueue(name, backend=backend) as q:
        while True:
            # get, not get_many: a batch taken is in the consumer's hands as a whole
            items = [q.get(timeout=20)]
            if SENTINEL in items:  # after the drain: only sentinels, one is ours
                for _ in range(items.count(SENTINEL) - 1):
                    q.put_bytes(SENTINEL)
                os.close(fd)
                os._exit(0)
            for item in items:
                if isinstance(item, bytes):
                    ident, body = struct.unpack_from("<q", item)[0], item[8:]
                else:
                    ident, body = item
                ok = body == _body(ident)
                os.write(fd, struct.pack("<q", ident if ok else -1 - ident))


def _backend_for(mode: str) -> str:
    return mode if mode != "mixed" else random.choice(["native", "pure"])


@pytest.mark.parametrize("mode", ["native", "pure", "mixed"])
def test_random_sigkill_of_producers_and_consumers(mode: str, name: str,
                                                   tmp_path: Path) -> None:
    rng = random.Random(1234)
    shared = mmap.mmap(-1, 8 * 65)  # shared with the fork children, no fd
    progress = memoryview(shared).cast("q")[:64]
    stop = memoryview(shared).cast("q")[64:]
    firsts: dict[int, int] = {}
    producers: dict[int, Any] = {}
    consumers: dict[int, Any] = {}
    files: list[Path] = []
    consumer_kills = 0

    def start_producer() -> None:
        slot = len(firsts)
        firsts[slot] = slot * 10_000_000
        progress[slot] = firsts[slot] - 1
        proc = _ctx.Process(target=_producer, args=(name, _backend_for(mode), slot,
                                                    firsts[slot], progress, stop))
        proc.start()
        producers[slot] = proc

    def start_consumer() -> None:
        path = tmp_path / f"consumer-{len(files)}"
        files.append(path)
        proc = _ctx.Process(target=_consumer, args=(name, _backend_for(mode), str(path)))
        proc.start()
        consumers[len(files) - 1] = proc

    with _created(name, capacity=CAPACITY, backend="native") as q:
        for _ in range(3):
            start_producer()
            start_consumer()
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.01, 0.1))
            kill_consumer = rng.random() < 0.5
            pool = consumers if kill_consumer else producers
            key = rng.choice(sorted(pool))
            os.kill(pool[key].pid, signal.SIGKILL)
            victim = pool.pop(key)
            victim.join()
            victim.close()
            if kill_consumer:
                consumer_kills += 1
                start_consumer()
            else:
                start_producer()
        stop[0] = 1
        for proc in producers.values():
            proc.join(30)
            assert proc.exitcode == 0, "a producer did not finish (stuck behind a dead one?)"
            proc.close()
        # every survivor finished its puts: drain, then stop the consumers
        deadline = time.monotonic() + 30
        while q.qsize() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert q.qsize() == 0, "the consumers stopped taking messages"
        for _ in consumers:
            q.put_bytes(SENTINEL)
        for proc in consumers.values():
            proc.join(30)
            assert proc.exitcode == 0
            proc.close()
        assert q.qsize() == 0

    got: list[int] = []
    for path in files:
        data = path.read_bytes()
        got += [v for (v,) in struct.iter_unpack("<q", data[: len(data) // 8 * 8])]
    assert all(v >= 0 for v in got), "a torn or corrupted message was delivered"
    assert len(got) == len(set(got)), "a message was delivered twice"
    seen = set(got)
    missing = 0
    for slot, first in firsts.items():
        last = progress[slot]  # the last id whose put returned
        missing += sum(1 for i in range(first, last + 1) if i not in seen)
        assert not any(i in seen for i in range(last + 2, last + 100)), "a put never made"
    assert missing <= consumer_kills, (missing, consumer_kills)
    assert len(got) > 100  # the test did work
    leftovers = [p for p in os.listdir("/dev/shm") if p.startswith(name + ".")]
    assert leftovers == []


def _hold_lock_and_die(name: str, off: int, torn: bool, conn: Any) -> None:
    from fastipc._pure.queue import Ops

    q = NamedQueue(name, backend="pure")
    ops: Ops = q._ops  # type: ignore[assignment]
    assert ops._lock(off, Deadline(-1.0)) == 0
    if torn:  # a half-written frame beyond the tail, never committed
        tail = ops._w64[L.OFF_TAIL // 8]
        at = ((tail >> 32) * 8) & ops._mask
        struct.pack_into("<II", ops._data, at, 40, L.KIND_PICKLE)
        ops._data[at + 8:at + 20] = b"garbage-half"
    conn.send("locked")
    time.sleep(60)


@pytest.mark.parametrize("side", ["put", "get"])
def test_lock_holder_killed(backend: str, name: str, side: str) -> None:
    """A participant killed while it holds the producers' (or consumers') mutex, half-way
    through writing a frame: the others go on at once, and the half frame never shows."""
    with _created(name, capacity=CAPACITY, backend=backend) as q:
        q.put("before")
        off = L.OFF_PUT_LOCK if side == "put" else L.OFF_GET_LOCK
        parent, child = _ctx.Pipe()
        proc = _ctx.Process(target=_hold_lock_and_die, args=(name, off, side == "put", child))
        proc.start()
        assert parent.recv() == "locked"
        with pytest.raises(TimeoutError):  # really held
            if side == "put":
                q.put("blocked", timeout=0.3)
            else:
                q.get(timeout=0.3)
        t0 = time.monotonic()
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        proc.close()
        q.put("after", timeout=1)
        assert q.get(timeout=1) == "before"
        assert q.get(timeout=1) == "after"
        assert time.monotonic() - t0 < 1.0
        assert q.qsize() == 0
        parent.close()
        child.close()


def _sleeper(name: str, backend: str, conn: Any) -> None:
    with NamedQueue(name, backend=backend) as q:
        conn.send("ready")
        q.get(timeout=30)


def test_killed_sleeper_does_not_stall_others(backend: str, name: str) -> None:
    """A consumer killed while asleep on the futex leaves its waiting flag up: harmless."""
    with _created(name, capacity=CAPACITY, backend=backend) as q:
        parent, child = _ctx.Pipe()
        proc = _ctx.Process(target=_sleeper, args=(name, backend, child))
        proc.start()
        assert parent.recv() == "ready"
        time.sleep(0.3)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        proc.close()
        for i in range(100):
            q.put(i)
        assert q.get_many(200, timeout=1) == list(range(100))
        parent.close()
        child.close()


# ---------------------------------------------------------------- large messages


_HAMMER = """
import os, random, signal, sys, time
from fastipc.queue import NamedQueue

class Stop(Exception):
    pass

def handler(*args):
    signal.setitimer(signal.ITIMER_REAL, 0)  # one exception at a time
    raise Stop

name, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(7)
q = NamedQueue(name, backend=backend)
fds = len(os.listdir("/proc/self/fd"))
signal.signal(signal.SIGALRM, handler)
returned, interrupted = [], 0
for i in range(count):
    body = i.to_bytes(4, "little") * (5000 + i % 7)  # 20 KB: larger than half the ring
    try:
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(1e-5, 4e-4))
        if i % 2:
            q.put_bytes(body, timeout=10)
        else:
            q.put((i, body), timeout=10)
        signal.setitimer(signal.ITIMER_REAL, 0)
        returned.append(i)
    except Stop:
        interrupted += 1
signal.setitimer(signal.ITIMER_REAL, 0)
signal.signal(signal.SIGALRM, signal.SIG_DFL)
leaked = len(os.listdir("/proc/self/fd")) - fds
q.close()
print(leaked, interrupted, *returned)
"""


def test_exceptions_raised_into_large_puts_leak_nothing(cross: tuple[str, str],
                                                        name: str) -> None:
    """A raising SIGALRM handler at random moments of large puts: no fd or segment leaks,
    and every message whose reference was committed (every put that returned, at least) is
    readable, whole."""
    sender, receiver = cross
    count = 400
    with _created(name, capacity=1 << 15, backend=receiver) as q:
        out = run_python(_HAMMER, name, sender, str(count), timeout=90)
        assert out.returncode == 0, out.stderr
        leaked, interrupted, *returned = map(int, out.stdout.split())
        assert leaked == 0, f"{leaked} fds leaked by the producer"
        assert interrupted > 20  # the handler did land in many puts
        segments = [p for p in SHM_DIR.iterdir() if p.name.startswith(name + ".")]
        assert len(segments) == q.qsize()  # one per queued message, none left over
        got: list[int] = []
        while q.qsize():
            item = q.get(timeout=5)
            if isinstance(item, bytes):
                ident = int.from_bytes(item[:4], "little")
                assert item == ident.to_bytes(4, "little") * (5000 + ident % 7)
            else:
                ident, body = item
                assert body == ident.to_bytes(4, "little") * (5000 + ident % 7)
            got.append(ident)
        assert got == sorted(got)
        assert set(returned) <= set(got)
        assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name + ".")]


def _fastipc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastipc", *args], capture_output=True,
                          text=True, timeout=30)


_DIE_IN = """
import os, sys
from fastipc import queue as fq
name, backend, where = sys.argv[1:]
q = fq.NamedQueue(name, backend=backend)
die = lambda *args: os.kill(os.getpid(), 9)
if where == "consumer":  # killed after taking a reference, before reading its segment
    fq.Queue._read_blob = die
    q.get(timeout=5)
else:  # killed after writing its segment, before committing the reference
    fq.Queue._put_ref = die
    q.put_bytes(bytes(100_000))
"""


def test_rm_stale_removes_large_messages_left_by_killed_processes(backend: str,
                                                                  name: str) -> None:
    """A consumer killed after taking a reference, a producer killed before committing one:
    their segments are listed and removed by ``fastipc rm --stale``; the segments still
    referenced from the queue are not; nor are any once the owner's queue is gone."""
    big = [bytes([i]) * 100_000 for i in range(3)]
    with _created(name, capacity=CAPACITY, backend=backend) as q:
        for body in big:
            q.put_bytes(body)
        for where in ("consumer", "producer"):
            out = run_python(_DIE_IN, name, backend, where)
            assert out.returncode == -signal.SIGKILL, out.stderr
        segments = sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(name + "."))
        assert len(segments) == 4  # 2 queued, 1 taken by the killed consumer, 1 not put
        listing = _fastipc("ls").stdout
        assert sum(1 for s in segments if s in listing) == 4
        out = _fastipc("rm", "--stale", "--match", name)
        assert out.returncode == 0, out.stderr
        assert out.stdout.count(f"{name}.") == 2
        assert q.qsize() == 2
        assert [q.get_bytes(timeout=5) for _ in range(2)] == big[1:]
        assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name + ".")]


def test_owner_killed_with_large_and_spilled_messages_queued(name: str) -> None:
    """ls lists the queue, its large message and its spill files as stale; rm --stale
    removes them all."""
    out = run_python("""
        import os, sys
        from fastipc.queue import NamedQueue
        q = NamedQueue(sys.argv[1], create=True, capacity=1 << 16)
        q.put_many(range(200_000))
        q.put_bytes(bytes(100_000))
        os.kill(os.getpid(), 9)
        """, name)
    assert out.returncode == -signal.SIGKILL
    left = [p.name for p in SHM_DIR.iterdir() if p.name.startswith(name)]
    assert len(left) >= 4  # the queue, spill files, the large message
    listing = _fastipc("ls").stdout
    assert all(n in listing for n in left)
    assert "queue-spill" in listing and "queue-blob" in listing
    out = _fastipc("rm", "--stale", "--match", name)
    assert out.returncode == 0, out.stderr
    assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name)]


# ---------------------------------------------------------------- the spill


_DRAIN = """
import sys
from fastipc.queue import NamedQueue
name, backend, small, large = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with NamedQueue(name, backend=backend) as q:
    expected = 0
    while expected < small + large:
        for item in q.get_many(4096, timeout=10):
            if isinstance(item, bytes):  # every 500th: a message larger than the ring
                assert expected < small and expected % 500 == 0, expected
                assert item == expected.to_bytes(4, "little") * 25_000, expected
            else:
                assert item == expected, (item, expected)
            expected += 1
    assert q.qsize() == 0
print("ok")
"""


def test_maxsize_0_spills_without_bound_and_the_consumer_gets_all(cross: tuple[str, str],
                                                                   name: str) -> None:
    """100,000 small puts and 200 large ones with no consumer: put_nowait never raises;
    then a consumer in another process (the other backend) gets all of them in order, and
    the drained spill leaves nothing in /dev/shm."""
    sender, receiver = cross
    small, batch = 100_000, 1000
    with _created(name, capacity=CAPACITY, backend=sender) as q:
        for i in range(small):
            q.put_nowait(i.to_bytes(4, "little") * 25_000 if i % 500 == 0 else i)
        q.put_many(range(small, small + batch), block=False)
        assert q.qsize() == small + batch
        assert len([p for p in SHM_DIR.iterdir() if p.name.startswith(f"{name}.s")]) > 1
        out = run_python(_DRAIN, name, receiver, str(small), str(batch), timeout=100)
        assert out.returncode == 0 and out.stdout == "ok\n", out.stderr
        assert [p.name for p in SHM_DIR.iterdir() if p.name.startswith(name)] == [name]


def _spilling_producer(name: str, backend: str, progress: Any) -> None:
    with NamedQueue(name, backend=backend) as q:
        i = 0
        while True:
            if i % 3:
                q.put_nowait(i)
            else:
                q.put_many([i], block=False)
            progress[0] = i  # this put returned
            i += 1


def test_producer_killed_while_spilling_loses_nothing_acknowledged(cross: tuple[str, str],
                                                                   name: str) -> None:
    sender, receiver = cross
    rng = random.Random(99)
    shared = mmap.mmap(-1, 8)
    progress = memoryview(shared).cast("q")
    with _created(name, capacity=1 << 14, backend=receiver) as q:
        first = 0
        for _ in range(3):
            progress[0] = first - 1
            proc = _ctx.Process(target=_spilling_producer, args=(name, sender, progress))
            proc.start()
            deadline = time.monotonic() + 10
            while progress[0] < first + 2000 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            proc.close()
            acknowledged = progress[0]
            got = q.get_many(1 << 20, timeout=5)
            while q.qsize():
                got += q.get_many(1 << 20, timeout=5)
            # nothing twice, nothing torn, in order; every acknowledged put is there (the
            # one in progress at the kill may be too, if it had committed)
            assert got[:acknowledged + 1 - first] == list(range(acknowledged + 1 - first))
            assert len(got) - (acknowledged + 1 - first) in (0, 1)
            first = 0  # each producer counts from 0 again
        assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(f"{name}.")]
    del progress
    shared.close()


_LIMITED = """
import errno, resource, signal, sys
from fastipc.queue import Queue
with Queue(capacity=1 << 14, backend=sys.argv[1]) as q:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, resource.RLIM_INFINITY))
    put = 0
    try:
        while True:
            q.put_nowait(bytes([put % 256]) * 1000)
            put += 1
    except OSError as exc:
        assert exc.errno == errno.EFBIG, exc
    for call in (lambda: q.put(b"x" * 1000), lambda: q.put_many([b"y" * 1000] * 3)):
        try:
            call()
        except OSError as exc:
            assert exc.errno == errno.EFBIG, exc
        else:
            raise AssertionError("a put past the limit returned")
    assert q.qsize() == put
    for i in range(put):
        assert q.get(timeout=1) == bytes([i % 256]) * 1000, i
    q.put(b"room again")
    assert q.get(timeout=1) == b"room again"
print(put)
"""


def test_spill_out_of_room_is_an_oserror_at_once(backend: str) -> None:
    """The spill's limit is the file system's: a write it refuses is an OSError from put at
    once (here EFBIG, under RLIMIT_FSIZE, as ENOSPC on a full /dev/shm), never a hang; what
    was put before is intact, and the queue goes on once there is room."""
    out = run_python(_LIMITED, backend, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) > 400  # the ring, then a spill file up to the limit


# ---------------------------------------------------------------- exceptions raised into gets

# message i of the interrupted consumer's queue (the producer is the test, the consumer a child)
_EXPECTED = """
import numpy as np


def expected(i):
    kind = i % 5
    if kind == 0:
        return {"i": i, "pad": "x" * (i % 50)}
    if kind == 1:
        return np.arange(i % 40 + 1, dtype="<f8") * i
    if kind == 2:
        return i.to_bytes(4, "little") * (i % 30 + 1)
    if kind == 3 and i % 15 == 3:  # large: a segment of its own
        return np.full(9000 + i % 7, i, dtype="<i8")
    if kind == 3:
        return (i, [i] * 3)
    return i.to_bytes(4, "little") * 9000  # large bytes
"""

_INTERRUPTED_GETS = _EXPECTED + """
import asyncio, random, signal, sys
from fastipc.queue import NamedQueue

name, backend, count, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)


class Stop(Exception):
    pass


def same(a, b):
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    return type(a) is type(b) and a == b


armed = [False]  # raise only into the gets: set and cleared with no call in between


def handler(*args):
    if armed[0]:
        raise Stop


q = NamedQueue(name, backend=backend)
loop = asyncio.new_event_loop()
signal.signal(signal.SIGALRM, handler)
got, interrupted = [], 0
while len(got) < count:
    want = expected(len(got))
    calls = ["get", "get_many", "get_async"] + ["get_bytes"] * isinstance(want, bytes)
    call = rng.choice(calls)
    task = None
    if call == "get_async":  # cancelled at a random moment instead: the loop itself is not
        task = loop.create_task(q.get_async(timeout=10))  # safe against a raising handler
        loop.call_later(rng.uniform(0, 400e-6), task.cancel)
    try:
        armed[0] = task is None
        signal.setitimer(signal.ITIMER_REAL, rng.uniform(20e-6, 400e-6))
        if call == "get":
            new = [q.get(timeout=10)]
        elif call == "get_bytes":
            new = [q.get_bytes(timeout=10)]
        elif call == "get_many":
            new = q.get_many(rng.randint(1, 8), timeout=10)
        else:
            new = [loop.run_until_complete(task)]
        armed[0] = False
    except (Stop, asyncio.CancelledError):
        armed[0] = False
        interrupted += 1
        continue
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
    for obj in new:
        i = len(got)
        assert i < count, "more messages than were put"
        assert same(obj, expected(i)), (i, call, repr(obj)[:200])
        got.append(obj)
assert q.qsize() == 0, q.qsize()
loop.close()
q.close()
print(interrupted)
"""


def test_an_exception_raised_into_gets_loses_nothing(cross: tuple[str, str], name: str) -> None:
    """A consumer whose SIGALRM handler raises at short random intervals into get, get_bytes
    and get_many, and whose get_async are cancelled at random moments (small objects,
    out-of-band numpy arrays, bytes, large messages in their own segments, spilled ones):
    it receives every message exactly once, in order and intact, and nothing of the queue
    is left in /dev/shm but its name (gone with unlink())."""
    space: dict[str, Any] = {}
    exec(_EXPECTED, space)
    count = 2000
    sender, receiver = cross
    with _created(name, capacity=CAPACITY, backend=sender) as q:
        for i in range(count):
            obj = space["expected"](i)
            if isinstance(obj, bytes) and i % 2:
                q.put_bytes(obj)
            else:
                q.put(obj)
        out = run_python(_INTERRUPTED_GETS, name, receiver, str(count), str(len(name)),
                         timeout=90)
        assert out.returncode == 0, out.stderr[-3000:]
        assert int(out.stdout) > 100  # the handler did raise into many calls
        assert q.qsize() == 0
        assert [p.name for p in SHM_DIR.iterdir() if p.name.startswith(name)] == [name]
    assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name)]


def test_rm_stale_removes_segments_a_producer_died_creating(name: str) -> None:
    """A producer killed between creating a large message's segment (or a spill file) and
    writing its first bytes leaves an empty file: ``fastipc ls`` lists it beside its queue,
    alive while it is young (a live producer may be about to write it) or its queue's owner
    is alive, and ``rm --stale`` removes it once it is neither."""
    out = start_python("""
        import os, sys
        from fastipc.queue import NamedQueue
        q = NamedQueue(sys.argv[1], create=True, capacity=1 << 16)
        for suffix in ("0123456789abcdef", "s7"):
            os.close(os.open(f"/dev/shm/{sys.argv[1]}.{suffix}", os.O_CREAT | os.O_RDWR, 0o600))
        print("ready", flush=True)
        sys.stdin.read()
        """, name, stdin=subprocess.PIPE)
    try:
        assert out.stdout.readline().strip() == "ready"
        empties = [SHM_DIR / f"{name}.0123456789abcdef", SHM_DIR / f"{name}.s7"]
        listing = _fastipc("ls").stdout
        assert all(p.name in listing for p in empties)
        _fastipc("rm", "--stale", "--match", name)
        assert all(p.exists() for p in empties)  # young, and the queue's owner runs
        for p in empties:
            os.utime(p, (time.time() - 60, time.time() - 60))
        _fastipc("rm", "--stale", "--match", name)
        assert not any(p.exists() for p in empties)
        assert (SHM_DIR / name).exists()  # the live queue stays
    finally:
        out.kill()
        out.communicate()
    _fastipc("rm", "--stale", "--match", name)
    assert not [p for p in SHM_DIR.iterdir() if p.name.startswith(name)]
