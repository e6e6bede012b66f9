"""Soak of fastipc.Queue: producers and consumers killed and interrupted at random.

    python scripts/soak_queue.py [--seconds 60] [--backend native|pure|mixed] [--seed N]
                                 [--producers 3] [--consumers 3] [--capacity 65536]
                                 [--kinds np,mv,mix,obj,bytes,large-np,large-bytes,large-mv]

The parent makes an anonymous Queue with a small ring (so that messages larger than half of
it take their own segments) and passes it, pickled, to several producer and consumer
processes; under ``mixed`` they alternate between the two backends. Producers put numpy
arrays of several dtypes, shapes and orders, memoryviews of several formats (zero-size ones
too), objects holding both, plain small objects, bytes (``put_bytes``) and large messages,
with ``put`` and ``put_many``; each message carries (producer id, sequence number) and a
content derived from them alone. After a put returns, the producer logs its numbers (the
messages are acknowledged). Consumers take them with ``get`` and ``get_many``, rebuild what
each should be from its numbers, compare bit for bit and log the outcome, one write per
message. Every worker has an interval timer whose SIGALRM
handler raises an exception into whatever it is doing (a producer: inside its step; a
consumer: inside its get), which the worker catches before going on; the parent SIGKILLs
producers and consumers at random moments and starts replacements. At the end the parent
stops the workers, drains the queue itself, closes it and checks: every acknowledged
message was taken exactly once, except those a consumer held when it was killed (at most
the batch of its call; what the calls an exception was raised into may have taken is
counted apart, not allowed); nothing twice; nothing corrupted; each consumer's single gets
see every producer's messages in order (and so does each get_many batch); no error raised
by a get; no fd and no /dev/shm entry of the queue left after close (its large-message
segments included). The random choices (messages, calls, timers, kills) follow from
``--seed``. Exit status 0 when all holds.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import signal
import struct
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
from soak import arguments, open_fds, spawn, verdict

CAPACITY = 1 << 16
MAX_BATCH = 8  # get_many takes at most this many: what one lost call can lose
DTYPES = ["u1", "<i2", ">i4", "<f4", "<f8", ">f8", "<c16", "<u8", "?"]
SHAPES = [(7,), (3, 5), (0,), (4, 0), (2, 3, 4), (1,), (16, 16)]
FORMATS = ["d", "B", "<i", "b", "Q", "f", "h"]
KINDS = ["np", "mv", "mix", "obj", "bytes", "large-np", "large-bytes", "large-mv"]
WEIGHTS = [20, 15, 10, 20, 20, 5, 5, 5]
_HEAD = struct.Struct("<2sIQ")  # b"SQ", producer, sequence: the head of a bytes message
_kinds, _weights = KINDS, WEIGHTS  # those --kinds keeps (the same in every process)


class Interrupt(Exception):
    """What the SIGALRM handler raises into a worker."""


class Corrupt(Exception):
    """A message is not what its numbers say it must be."""


# ------------------------------------------------------------------ the messages


_BLOCK = np.random.Generator(np.random.PCG64(20261206)).integers(
    0, 256, 1 << 18, dtype=np.uint8).tobytes()  # the same in every process


def _content(k: int, seq: int, n: int, salt: int = 0) -> bytes:
    """``n`` bytes (up to 128 KiB) that follow from the arguments alone."""
    off = (k * 1000003 + seq * 7919 + salt * 104729) % (len(_BLOCK) - n)
    return _BLOCK[off:off + n]


def _array(k: int, seq: int, rng: random.Random, large: bool, salt: int) -> Any:
    dtype = np.dtype("<f8" if large else rng.choice(DTYPES))
    shape = (rng.randint(4200, 12000),) if large else rng.choice(SHAPES)
    n = int(np.prod(shape)) * dtype.itemsize
    data: Any = np.frombuffer(_content(k, seq, n, salt), dtype=dtype)
    if dtype.kind == "b":
        data = data.view(np.uint8) & 1  # only 0 and 1 are booleans
        data = data.astype(bool)
    return data.reshape(shape, order=rng.choice("CF"))


def _memoryview(k: int, seq: int, rng: random.Random, large: bool, salt: int) -> Any:
    fmt = "B" if large else rng.choice(FORMATS)
    count = rng.randint(33000, 90000) if large else rng.choice([0, 1, 5, 64])
    size = struct.calcsize(fmt)
    data = _content(k, seq, count * size, salt)
    if fmt == "<i":  # a format with a byte order: numpy's
        return memoryview(np.frombuffer(data, dtype="<i4"))  # type: ignore[arg-type]
    view: Any = memoryview(bytearray(data)).cast(fmt)  # type: ignore[call-overload]
    if count == 64 and rng.random() < 0.5:
        view = view.cast("B").cast(fmt, (8, 8))
    return view


def make(k: int, seq: int) -> Any:
    """The message (producer k, number seq): a function of the two (and --kinds) alone."""
    rng = random.Random(f"{k}/{seq}")
    kind = rng.choices(_kinds, _weights)[0]
    if kind in ("bytes", "large-bytes"):
        n = rng.randint(40000, 100000) if kind == "large-bytes" else rng.choice([0, 1, 100, 2000])
        return _HEAD.pack(b"SQ", k, seq) + _content(k, seq, n)
    if kind in ("np", "large-np"):
        return ("soak", k, seq, kind, _array(k, seq, rng, kind == "large-np", 1))
    if kind in ("mv", "large-mv"):
        return ("soak", k, seq, kind, _memoryview(k, seq, rng, kind == "large-mv", 2))
    if kind == "mix":
        return ("soak", k, seq, kind, _array(k, seq, rng, False, 1),
                _memoryview(k, seq, rng, False, 2))
    return ("soak", k, seq, kind, {"text": f"{k}/{seq}", "nums": [seq, -k, seq * 0.5],
                                   "nested": (None, True, b"x" * (seq % 7))})


def _kind(msg: Any) -> str:
    return msg[3] if isinstance(msg, tuple) else "bytes" if len(msg) < 30000 else "large-bytes"


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"ndarray {x.dtype.str} {x.shape}"
    if isinstance(x, memoryview):
        return f"memoryview {x.format!r} {x.shape}"
    return type(x).__name__


def _same(got: Any, want: Any) -> Optional[str]:
    """None if ``got`` is ``want`` bit for bit, else what differs."""
    if isinstance(want, np.ndarray):
        if not isinstance(got, np.ndarray) or got.dtype.str != want.dtype.str or \
                got.shape != want.shape:
            return f"{_describe(want)} came back as {_describe(got)}"
        return None if got.tobytes() == want.tobytes() else f"{_describe(want)}: other bytes"
    if isinstance(want, memoryview):  # equal (an explicit '<i' may come back as 'i')
        if not isinstance(got, memoryview) or got.shape != want.shape or \
                (got.format != want.format and got != want):
            return f"{_describe(want)} came back as {_describe(got)}"
        return None if got.tobytes() == want.tobytes() else f"{_describe(want)}: other bytes"
    if isinstance(want, tuple):
        if not isinstance(got, tuple) or len(got) != len(want):
            return f"tuple of {len(want)} came back as {_describe(got)}"
        for g, w in zip(got, want):
            diff = _same(g, w)
            if diff:
                return diff
        return None
    return None if type(got) is type(want) and got == want else f"{want!r:.60} != {got!r:.60}"


def check_message(obj: Any) -> tuple[int, int]:
    """The numbers of a message taken, after checking its content (Corrupt if it differs)."""
    if isinstance(obj, bytes) and len(obj) >= _HEAD.size and obj[:2] == b"SQ":
        _, k, seq = _HEAD.unpack_from(obj)
    elif isinstance(obj, tuple) and len(obj) >= 4 and obj[0] == "soak":
        k, seq = obj[1], obj[2]
    else:
        raise Corrupt(f"? ? not a message of the soak: {_describe(obj)}")
    want = make(k, seq)
    diff = _same(obj, want)
    if diff:
        raise Corrupt(f"{k} {seq} {_kind(want)}: {diff}")
    return k, seq


# ------------------------------------------------------------------ the workers


def _interrupts(rng: random.Random, every: float, only: Optional[list[bool]] = None) -> Any:
    """A SIGALRM handler that raises Interrupt (while ``only[0]`` is true, if given), and
    the function that arms its one-shot timer (up to ``every`` seconds) when it is not
    armed already."""

    def handler(signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if only is None or only[0]:
            raise Interrupt

    signal.signal(signal.SIGALRM, handler)

    def arm() -> None:
        if signal.getitimer(signal.ITIMER_REAL)[0] == 0:
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(every / 20, every))

    return arm


def _write(fd: int, line: str) -> None:
    os.write(fd, line.encode() + b"\n")  # one write per line: whole, or not at all


def _queue(qhex: str) -> Any:
    return pickle.loads(bytes.fromhex(qhex))


def producer(k: int, qhex: str, log: str, seed: int) -> None:
    import queue

    q = _queue(qhex)
    rng = random.Random(f"{seed}/producer/{k}")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    inside = [False]
    arm = _interrupts(rng, 0.02, inside)
    seq = [0]  # the next number: taken before the put, so none is ever used twice
    while True:
        try:
            try:
                inside[0] = True  # the handler raises from here...
                _produce(q, k, seq, rng, fd, arm)
            finally:
                inside[0] = False  # ...to here (an exception in this line is caught too)
        except (Interrupt, queue.Full):
            pass
        except Exception as exc:  # reported by the parent
            _write(fd, f"E {type(exc).__name__}: {exc}".replace("\n", " "))


def _produce(q: Any, k: int, seq: list[int], rng: random.Random, fd: int, arm: Any) -> None:
    """One put or put_many of the next numbers (``seq[0]`` on), each logged once
    acknowledged."""
    import queue

    arm()
    first = seq[0]
    end = first + (rng.randint(2, 6) if rng.random() < 0.25 else 1)
    seq[0] = end
    if end - first > 1:
        try:
            q.put_many([make(k, s) for s in range(first, end)], timeout=5)
        except queue.Full as exc:
            end = first + getattr(exc, "messages_put", 0)  # these went
    else:
        msg = make(k, first)
        if isinstance(msg, bytes):
            q.put_bytes(msg, timeout=5)
        else:
            q.put(msg, timeout=5)
    for s in range(first, end):
        _write(fd, f"{s}")  # acknowledged


def consumer(c: int, qhex: str, log: str, seed: int) -> None:
    import queue

    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))  # before it takes anything
    q = _queue(qhex)
    rng = random.Random(f"{seed}/consumer/{c}")
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    inside = [False]
    arm = _interrupts(rng, 0.1, inside)

    def take(many: int) -> list[Any]:
        inside[0] = True
        try:
            return q.get_many(many, timeout=0.2) if many else [q.get(timeout=0.2)]
        finally:
            inside[0] = False

    batch = 0
    while not stop:
        arm()
        many = rng.randint(2, MAX_BATCH) if rng.random() < 0.3 else 0
        try:
            got = take(many)
        except Interrupt:
            _write(fd, f"I {many or 1}")  # what that call may have taken with it
            continue
        except queue.Empty:
            continue
        except Exception as exc:
            _write(fd, f"E {many or 1} {'get_many' if many else 'get'} {type(exc).__name__}: "
                   f"{exc}".replace("\n", " "))  # what that call may have taken with it
            continue
        batch += 1
        how = "m" if many else "g"
        for obj in got:
            try:
                k, seq = check_message(obj)
            except Corrupt as exc:
                _write(fd, f"BAD {how} {exc}")
                continue
            _write(fd, f"{how} {batch} {k} {seq}")
    signal.setitimer(signal.ITIMER_REAL, 0)  # no SIGALRM once the handler is gone
    q.close()


# ------------------------------------------------------------------ the parent


class Tally:
    """What the logs say."""

    def __init__(self) -> None:
        self.acked: dict[int, set[int]] = defaultdict(set)
        self.taken: Counter[tuple[int, int]] = Counter()
        self.order: list[str] = []
        self.corrupt: list[str] = []
        self.errors: Counter[str] = Counter()
        self.may_lose = 0  # messages the killed consumers may have held
        self.in_interrupted = 0  # messages the gets an exception was raised into may have taken
        self.in_failed = 0  # messages the gets that raised an error may have taken
        self.interrupted_gets = 0

    def consumer_log(self, who: str, lines: list[str], killed: bool) -> None:
        last: dict[int, int] = {}  # producer -> the last seq a single get took
        batches: dict[str, dict[int, int]] = defaultdict(dict)
        for line in lines:
            parts = line.split(" ")
            if parts[0] == "I":
                self.in_interrupted += int(parts[1])
                self.interrupted_gets += 1
            elif parts[0] == "E":
                self.in_failed += int(parts[1])
                what = re.sub(r"'/dev/shm/[^']*'", "'/dev/shm/<segment>'", " ".join(parts[2:]))
                self.errors[f"{who.split('#')[0]} {what[:160]}"] += 1
            elif parts[0] == "BAD":
                call = "get_many" if parts[1] == "m" else "get"
                self.corrupt.append(f"{who} ({call}): {' '.join(parts[2:])}")
            elif parts[0] in ("g", "m"):
                b, k, seq = parts[1], int(parts[2]), int(parts[3])
                self.taken[(k, seq)] += 1
                seen = last if parts[0] == "g" else batches[b]
                if seen.get(k, -1) >= seq:
                    self.order.append(f"{who}: producer {k}'s {seq} after {seen[k]} "
                                      f"({'single gets' if parts[0] == 'g' else 'one get_many'})")
                seen[k] = seq
        if killed:
            self.may_lose += MAX_BATCH


def main() -> int:
    a = arguments(__doc__, ["native", "pure", "mixed"], producers=3, consumers=3,
                  capacity=CAPACITY, kinds=",".join(KINDS))
    kinds = a.kinds.split(",")
    if set(kinds) - set(KINDS) or not kinds:
        raise SystemExit(f"--kinds: a comma-separated list of {', '.join(KINDS)}")
    global _kinds, _weights
    _kinds, _weights = kinds, [WEIGHTS[KINDS.index(kind)] for kind in kinds]
    if a.role in ("producer", "consumer"):
        who, qhex, log, seed = a.args
        (producer if a.role == "producer" else consumer)(int(who), qhex, log, int(seed))
        return 0
    return soak(a.seconds, a.backend, a.seed, a.producers, a.consumers, a.capacity, kinds)


def soak(seconds: float, backend: str, seed: Optional[int], producers: int, consumers: int,
         capacity: int, kinds: list[str]) -> int:
    import fastipc

    seed = seed if seed is not None else random.randrange(1 << 30)
    rnd = random.Random(f"{seed}/parent")
    fds_before = open_fds()
    logs = Path(tempfile.mkdtemp(prefix="fastipc-soak-queue-"))
    own = "native" if backend == "mixed" else backend
    q = fastipc.Queue(capacity=capacity, backend=own)
    handles = {own: q}
    if backend == "mixed":
        handles["pure"] = fastipc.Queue(name=q.name, create=False, backend="pure")
    pickled = {b: pickle.dumps(h).hex() for b, h in handles.items()}

    def backend_of(role: str, n: int) -> str:
        if backend != "mixed":
            return backend
        return ["native", "pure"][(n + (role == "consumer")) % 2]

    print(f"soak of fastipc.Queue: {seconds:g} s, backend {backend}, seed {seed}, "
          f"{producers} producers, {consumers} consumers, capacity {capacity}, "
          f"kinds {','.join(kinds)}, logs in {logs}")
    ids = {"producer": 0, "consumer": 0}
    killed: set[str] = set()

    def start(role: str) -> tuple[str, Any]:
        n = ids[role]
        ids[role] += 1
        b = backend_of(role, n)
        proc = spawn("--kinds", ",".join(kinds), "--role", role, str(n), pickled[b],
                     str(logs / f"{role}.{n}"), str(seed), script=__file__)
        return f"{role}.{n}", proc

    workers = dict(start("producer") for _ in range(producers))
    workers.update(start("consumer") for _ in range(consumers))
    kills = Counter[str]()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(rnd.uniform(0.2, 1.0))
        role = "producer" if rnd.random() < 0.5 else "consumer"
        victim = rnd.choice(sorted(w for w in workers if w.startswith(role)))
        workers[victim].kill()
        workers[victim].wait()
        del workers[victim]
        killed.add(victim)
        kills[role] += 1
        new, proc = start(role)
        workers[new] = proc
    problems: list[str] = []
    for w, proc in workers.items():  # producers: killed; consumers: asked to stop
        if w.startswith("producer"):
            proc.kill()
            proc.wait()
        else:
            proc.terminate()
    for w, proc in workers.items():
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
            proc.wait()
            problems.append(f"{w} did not stop within 30 s of SIGTERM")
        if w.startswith("consumer") and proc.returncode not in (0, -signal.SIGTERM):
            problems.append(f"{w} ended with status {proc.returncode}")  # -SIGTERM: it
            # had not started yet (its handler is set before it takes anything)

    tally = Tally()
    drained: list[str] = []
    while True:  # the parent drains what is left, with single gets
        try:
            obj = q.get(timeout=1)
        except fastipc.queue.Empty:
            break
        except Exception as exc:
            drained.append(f"E 1 get {type(exc).__name__}: {exc}".replace("\n", " "))
            continue
        try:
            k, seq = check_message(obj)
            drained.append(f"g 0 {k} {seq}")
        except Corrupt as exc:
            drained.append(f"BAD g {exc}")
    name = q.name
    blobs = sorted(p.name for p in Path("/dev/shm").glob(name + ".*"))
    for h in handles.values():
        h.close()
    del q, handles
    left = sorted(p.name for p in Path("/dev/shm").glob(name + "*"))

    for n in range(ids["producer"]):
        f = logs / f"producer.{n}"
        for line in f.read_text().splitlines() if f.exists() else []:
            if line.startswith("E "):
                tally.errors[f"producer {line[2:][:160]}"] += 1
            else:
                tally.acked[n].add(int(line))
    for n in range(ids["consumer"]):
        f = logs / f"consumer.{n}"
        lines = f.read_text().splitlines() if f.exists() else []
        tally.consumer_log(f"consumer#{n}", lines, f"consumer.{n}" in killed)
    tally.consumer_log("drain#parent", drained, False)

    acked = sum(len(s) for s in tally.acked.values())
    lost = sorted((k, s) for k, seqs in tally.acked.items() for s in seqs
                  if (k, s) not in tally.taken)
    twice = sorted(key for key, n in tally.taken.items() if n > 1)
    checked = sum(tally.taken.values()) + len(tally.corrupt)
    print(f"  {checked:,} messages taken and checked, {acked:,} acknowledged; "
          f"{kills['producer']} producers and {kills['consumer']} consumers killed; "
          f"{tally.interrupted_gets} gets interrupted")
    if len(lost) > tally.may_lose:
        problems.append(f"{len(lost)} acknowledged messages never taken, more than the "
                        f"{tally.may_lose} the killed consumers may have held; first: {lost[:5]}")
    print(f"  lost: {len(lost)} acknowledged messages not taken; at most {tally.may_lose} "
          "allowed (held by a consumer when it was killed); the calls an exception was "
          f"raised into may have taken {tally.in_interrupted}, those that raised an error "
          f"{tally.in_failed}"
          + "".join(f"\n    {n} of kind {kind}" for kind, n in
                    Counter(_kind(make(k, s)) for k, s in lost).most_common()))
    if twice:
        problems.append(f"{len(twice)} messages taken twice: {twice[:5]}")
    if tally.corrupt:
        by_kind = Counter(c.split(": ", 1)[1].split(" ")[2].rstrip(":") for c in tally.corrupt)
        problems.append(f"{len(tally.corrupt)} corrupted messages (by kind: "
                        + ", ".join(f"{n} {what}" for what, n in by_kind.most_common())
                        + "): " + "; ".join(tally.corrupt[:3]))
    if tally.order:
        problems.append(f"{len(tally.order)} out of order: {tally.order[:3]}")
    for what, n in tally.errors.most_common(10):
        problems.append(f"{n} x error raised by {what}")
    fds_left = open_fds() - fds_before
    if fds_left:
        problems.append(f"fds left open after close: {sorted(fds_left)}")
    if left:
        problems.append(f"/dev/shm entries of the queue left after close: {len(left)} "
                        f"({left[:3]}...)")
    print(f"  leaks: {len(fds_left)} fds, {len(left)} /dev/shm entries after close "
          f"({len(blobs)} large-message segments after the drain)")
    return verdict(problems, "nothing lost, duplicated, corrupted, reordered or leaked", logs)


if __name__ == "__main__":
    sys.exit(main())
