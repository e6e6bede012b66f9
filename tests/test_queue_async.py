"""The Queue's awaitables (put_async, get_async, put_bytes_async, get_bytes_async) on asyncio
and uvloop: data across processes with a blocking peer on one side and an awaiting one on the
other, both ways and across backends; timeouts (queue.Full / queue.Empty); cancellation that
loses nothing; close while awaiting; and a loop that is never blocked while waiting."""

from __future__ import annotations

import asyncio
import os
import pickle
import queue as stdqueue
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest

import test_aio
from conftest import PREFIX, SHM_DIR
from fastipc import queue as fq
from fastipc.queue import Empty, Full, NamedQueue, Queue
from helpers import (
    Ticker,
    close_ends_awaits,
    producing,
    receive_with_cancels,
    send_with_cancels,
    trickling_in,
    while_consumed,
)
from test_shm import running

loops_ready = test_aio.loops_ready
run = test_aio.run

SMALL = 4096  # a small ring: half of it (2 KiB) is the largest message it carries itself


@pytest.fixture(autouse=True)
def anonymous_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anonymous queues made by tests carry the prefix the leak check looks at."""
    monkeypatch.setattr(fq, "ANONYMOUS_PREFIX", PREFIX + "anon-")


def _msg(i: int) -> bytes:
    """Message i: its number, then a body; every 50th is larger than half the ring (it
    travels in a segment of its own)."""
    size = 5000 if i % 50 == 49 else (i * 37) % 1500
    return i.to_bytes(4, "little") + bytes([i % 251]) * size


def _check(i: int, m: Any) -> None:
    assert isinstance(m, bytes) and m == _msg(i), f"message {i} corrupted"


def _blobs(name: str) -> list[str]:
    return [n for n in os.listdir(SHM_DIR) if n.startswith(name + ".")]


@contextmanager
def _both_ends(cross: tuple[str, str]) -> Iterator[tuple[Queue, Queue]]:
    """A queue of 8 on the receiving backend, and the same queue on the sending one."""
    sender, receiver = cross
    with Queue(8, capacity=SMALL, backend=receiver) as q, \
            Queue(name=q.name, backend=sender) as p:
        yield q, p


async def _received_with_cancels(q: Queue, p: Queue, get: Callable[[], Awaitable[Any]],
                                 count: int, rng: random.Random, batches: bool = False) -> None:
    """Messages 0 to count - 1, put (raw bytes) through ``p`` by a thread that pauses at
    random, each taken from ``q`` by a ``get()`` in a task cancelled at random and retried
    (helpers.receive_with_cancels): all of them, in order; some cancelled; none left."""
    t = producing(lambda i: p.put_bytes(_msg(i), timeout=30), count, rng)
    cancels = await receive_with_cancels(get, count, rng, _check, batches=batches)
    t.join(30)
    assert cancels > 0
    assert q.qsize() == 0


async def put_batches_with_cancels(put_many: Callable[[list[int]], Awaitable[None]],
                                   count: int, rng: random.Random) -> tuple[list[int], int]:
    """``put_many(batch)`` of the numbers 0 to count - 1 in batches of 1 to 12, each in a
    task cancelled at a random moment (not retried). Returns the numbers that went (a
    cancelled batch's first ``messages_put``), and how many tasks were cancelled."""
    sent: list[int] = []
    cancels = i = 0
    while i < count:
        batch = list(range(i, min(count, i + rng.randint(1, 12))))
        i += len(batch)
        put: asyncio.Future[None] = asyncio.ensure_future(put_many(batch))
        finished, _ = await asyncio.wait([put], timeout=rng.random() * 0.0005)
        if not finished:
            put.cancel()
        try:
            await put
            sent += batch
        except asyncio.CancelledError as exc:
            cancels += 1
            sent += batch[:getattr(exc, "messages_put", 0)]  # (0: it never started)
    return sent, cancels


# the peer, in another process: puts (objects and raw bytes, alternately) or gets, blocking
_PEER = """
import sys, time
from fastipc.queue import Queue
name, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def msg(i):
    return i.to_bytes(4, "little") + bytes([i % 251]) * (5000 if i % 50 == 49 else (i * 37) % 1500)
q = Queue(name=name, backend=backend)
print("ready", flush=True)
"""

BLOCKING_PRODUCER = _PEER + """
for i in range(count):
    if i % 2:
        q.put_bytes(msg(i), timeout=30)
    else:
        q.put((i, msg(i)), timeout=30)
    if i % 97 == 0:
        time.sleep(0.01)  # the awaiting consumer parks now and then
q.close()
"""

BLOCKING_CONSUMER = _PEER + """
for i in range(count):
    if i % 2:
        assert q.get_bytes(timeout=30) == msg(i), i
    else:
        assert q.get(timeout=30) == (i, msg(i)), i
q.close()
print("ok", flush=True)
"""


async def _ready(proc: Any) -> None:
    """Wait, without blocking the loop, for the peer's "ready" line."""
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    assert line.strip() == "ready"


PEER_COUNT = 600  # messages between this process and the blocking peer


@asynccontextmanager
async def _with_peer(name: str, cross: tuple[str, str],
                     awaiting: str) -> AsyncIterator[tuple[NamedQueue, Any]]:
    """The test's named queue, awaited here by the ``awaiting`` end ("consumer" or
    "producer"), and the other end blocking in another process, ready; once the peer is
    gone, no blob is left, and the name is unlinked (close() leaves it)."""
    sender, receiver = cross
    if awaiting == "consumer":
        mine, peer, code, maxsize = receiver, sender, BLOCKING_PRODUCER, 8
    else:
        mine, peer, code, maxsize = sender, receiver, BLOCKING_CONSUMER, 4
    with NamedQueue(name, create=True, capacity=SMALL, maxsize=maxsize, backend=mine) as q:
        with running(code, name, peer, str(PEER_COUNT)) as proc:
            await _ready(proc)
            yield q, proc
        assert _blobs(name) == []
        q.unlink()


def test_awaiting_consumer_blocking_producer(cross: tuple[str, str], name: str,
                                             run: Any) -> None:
    async def main() -> None:
        async with _with_peer(name, cross, "consumer") as (q, proc):
            for i in range(PEER_COUNT):
                if i % 2:
                    _check(i, await q.get_bytes_async(timeout=30))
                else:
                    j, m = await q.get_async(timeout=30)
                    assert j == i
                    _check(i, m)
            assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30) == 0
            assert q.qsize() == 0

    run(main())


def test_awaiting_producer_blocking_consumer(cross: tuple[str, str], name: str,
                                             run: Any) -> None:
    async def main() -> None:
        async with _with_peer(name, cross, "producer") as (q, proc):
            for i in range(PEER_COUNT):  # raw bytes and objects, alternately
                message = bytearray(_msg(i)) if i % 2 else (i, _msg(i))
                await (q.put_bytes_async if i % 2 else q.put_async)(message, timeout=30)
            out, err = await asyncio.get_running_loop().run_in_executor(
                None, lambda: proc.communicate(timeout=60))
            assert proc.returncode == 0, err
            assert out.strip() == "ok"

    run(main())


def test_timeouts(backend: str, run: Any) -> None:
    async def main() -> None:
        with Queue(2, capacity=SMALL, backend=backend) as q:
            t0 = time.monotonic()
            with pytest.raises(Empty) as got:
                await q.get_async(timeout=0.2)
            assert isinstance(got.value, stdqueue.Empty) and isinstance(got.value, TimeoutError)
            assert 0.15 < time.monotonic() - t0 < 2
            with pytest.raises(Empty):
                await q.get_bytes_async(timeout=0)
            with pytest.raises(ValueError):
                await q.get_async(timeout=-1)
            await q.put_async("a", timeout=0)
            await q.put_bytes_async(b"b", timeout=0)
            t0 = time.monotonic()
            with pytest.raises(Full) as full:
                await q.put_async("c", timeout=0.2)
            assert isinstance(full.value, stdqueue.Full) and isinstance(full.value, TimeoutError)
            assert 0.15 < time.monotonic() - t0 < 2
            with pytest.raises(Full):
                await q.put_bytes_async(b"d", timeout=0)
            # a message too large for the ring that times out leaves no segment behind
            with pytest.raises(Full):
                await q.put_bytes_async(b"e" * 10000, timeout=0.05)
            assert _blobs(q.name) == []
            with pytest.raises(ValueError):
                await q.put_async("f", timeout=-1)
            with pytest.raises(TypeError):
                await q.put_bytes_async("text")
            assert await q.get_async(timeout=0) == "a"
            assert await q.get_bytes_async(timeout=1) == b"b"
            assert q.qsize() == 0

    run(main())


def test_get_bytes_async_of_an_object_is_a_type_error(backend: str, run: Any) -> None:
    async def main() -> None:
        with Queue(capacity=SMALL, backend=backend) as q:
            await q.put_async({"x": 1})
            with pytest.raises(TypeError):
                await q.get_bytes_async(timeout=1)
            await q.put_async(bytearray(b"ok"))
            assert await q.get_bytes_async(timeout=1) == b"ok"

    run(main())


def test_cancel_and_retry_loses_nothing(cross: tuple[str, str], run: Any) -> None:
    """1,000 rounds of a get_async cancelled at a random moment, then retried, while a thread
    puts; and the same for put_async: every message arrives once, whole, in order."""
    count = 1000
    rng = random.Random(7)

    async def main() -> None:
        with _both_ends(cross) as (q, p):
            await _received_with_cancels(q, p, lambda: q.get_async(timeout=30), count, rng)

            # putting: a cancelled put_async put the whole message or nothing
            pauses = random.Random(11)  # the consumer's own: the queue must fill now and then
            sent, cancels, received = await while_consumed(
                send_with_cancels(lambda i: p.put_bytes_async(_msg(i), timeout=30), count, rng),
                lambda: [q.get_bytes(timeout=0.2)], Empty, pauses)
            assert cancels > 0
            numbers = [int.from_bytes(m[:4], "little") for m in received]
            for i, m in zip(numbers, received, strict=False):
                _check(i, m)
            assert numbers == sent  # each put once, in order; the cancelled ones not at all
            assert _blobs(q.name) == []

    run(main())


def test_close_while_awaiting(backend: str, run: Any) -> None:
    async def main() -> None:
        q = Queue(capacity=SMALL, backend=backend)
        task = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.05)
        await close_ends_awaits(q.close, [task], within=1)
        assert q.closed

        q = Queue(1, capacity=SMALL, backend=backend)
        await q.put_async(0)
        task = asyncio.ensure_future(q.put_async(1))
        await asyncio.sleep(0.05)
        assert not task.done()
        q.close()  # on the loop itself
        with pytest.raises(ValueError):
            await task
        with pytest.raises(ValueError):
            await q.get_async(timeout=0)
        with pytest.raises(ValueError):
            await q.put_async(2)

    run(main())


def test_the_loop_is_never_blocked(backend: str, run: Any) -> None:
    """A ticker coroutine's largest gap while a coroutine awaits messages that trickle in
    from a thread, then awaits room that a thread makes; each wait ends on the peer's
    wake-up, not on the periodic re-check."""
    async def main() -> tuple[float, float]:
        with Queue(1, capacity=SMALL, backend=backend) as q:
            def drain() -> None:
                for i in range(20):
                    time.sleep(0.03)
                    _check(i, q.get_bytes(timeout=5))

            tick = Ticker()
            t0 = time.monotonic()
            await trickling_in(lambda i: q.put_bytes(_msg(i), timeout=5),
                               lambda: q.get_bytes_async(timeout=5), _check)
            t = threading.Thread(target=drain)
            t.start()
            for i in range(20):
                await q.put_bytes_async(_msg(i), timeout=5)
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
            return tick.stop(), time.monotonic() - t0

    gap, took = run(main())
    assert gap < 0.05, f"the loop was blocked for {gap * 1000:.1f} ms"
    # 40 waits of 30 ms, woken by the peer; waking on the 0.5 s re-check alone takes ~10 s
    assert took < 5, f"the waits took {took:.1f} s: the peer's wake-up did not reach them"


def test_block_false_ignores_timeout_on_the_awaitables(backend: str, run: Any) -> None:
    async def main() -> None:
        with Queue(1, capacity=SMALL, backend=backend) as q:
            await q.put_async("a", -1, block=False)
            with pytest.raises(Full):
                await q.put_bytes_async(b"b", -1, block=False)
            assert await q.get_async(-1, block=False) == "a"
            with pytest.raises(Empty):
                await q.get_bytes_async(-1, block=False)
            with pytest.raises(ValueError):
                await q.get_async(-1)

    run(main())


# ---------------------------------------------------------------- put_many_async, get_many_async


def test_many_async_results_and_rules(backend: str, run: Any) -> None:
    """put_many_async and get_many_async: results in order (a large message in a segment of
    its own among them), put_many's and get_many's rules for block, timeout, max_messages,
    and a batch cut short (queue.Full, an object that cannot be pickled) with
    ``messages_put``."""
    async def main() -> None:
        with Queue(4, capacity=SMALL, max_message_size=8192, backend=backend) as q:
            big = b"x" * 5000  # larger than half the ring
            await q.put_many_async(["a", big, "c"])
            assert await q.get_many_async(2, timeout=1) == ["a", big]
            assert await q.get_many_async(timeout=0) == ["c"]
            assert _blobs(q.name) == []
            with pytest.raises(Empty):
                await q.get_many_async(10, timeout=0)
            t0 = time.monotonic()
            with pytest.raises(Empty):
                await q.get_many_async(10, timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 2
            with pytest.raises(Empty):
                await q.get_many_async(10, -1, block=False)
            with pytest.raises(ValueError):
                await q.get_many_async(0)
            with pytest.raises(ValueError):
                await q.get_many_async(10, timeout=-1)
            with pytest.raises(ValueError):
                await q.put_many_async([1], timeout=-1)
            # maxsize 4: six objects, timeout -> queue.Full, messages_put 4
            t0 = time.monotonic()
            with pytest.raises(Full) as full:
                await q.put_many_async(range(6), timeout=0.2)
            assert full.value.messages_put == 4  # type: ignore[attr-defined]
            assert 0.15 < time.monotonic() - t0 < 2
            with pytest.raises(Full) as full:
                await q.put_many_async([9], -1, block=False)
            assert full.value.messages_put == 0  # type: ignore[attr-defined]
            assert await q.get_many_async(10, timeout=1) == [0, 1, 2, 3]
            # the objects before one that cannot be pickled go, the rest do not
            with pytest.raises((AttributeError, TypeError, pickle.PicklingError)) as bad:
                await q.put_many_async([1, 2, lambda: 0, 3])
            assert bad.value.messages_put == 2  # type: ignore[attr-defined]
            with pytest.raises(ValueError) as big_err:  # too large: as put_many
                await q.put_many_async([1, bytes(9000)], timeout=1)
            assert big_err.value.messages_put == 1  # type: ignore[attr-defined]
            assert await q.get_many_async(10, timeout=1) == [1, 2, 1]
            await q.put_many_async([])
            assert q.qsize() == 0

    run(main())


def test_many_async_cancelled_at_random_loses_nothing(cross: tuple[str, str], run: Any) -> None:
    """Hundreds of get_many_async cancelled at random moments while a thread puts: every
    message arrives once, whole, in order. Then put_many_async batches cancelled at random
    moments while a thread gets: what arrives is, batch after batch, exactly the first
    ``messages_put`` objects of each (all of a batch that completed), each once."""
    count = 1500
    rng = random.Random(5)

    async def main() -> None:
        with _both_ends(cross) as (q, p):
            await _received_with_cancels(
                q, p, lambda: q.get_many_async(rng.randint(1, 6), timeout=30), count, rng,
                batches=True)

            sent, cancels, received = await while_consumed(
                put_batches_with_cancels(
                    lambda batch: p.put_many_async([(j, _msg(j)) for j in batch], timeout=30),
                    count, rng),
                lambda: q.get_many(4, timeout=0.2), Empty, random.Random(13))
            assert cancels > 0
            assert [j for j, _ in received] == sent  # each once, in order
            for j, m in received:
                _check(j, m)
            assert q.qsize() == 0
            assert _blobs(q.name) == []

    run(main())


def test_many_async_close_from_another_thread(backend: str, run: Any) -> None:
    async def main() -> None:
        q = Queue(2, capacity=SMALL, backend=backend)
        task = asyncio.ensure_future(q.get_many_async(10))
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        closer = threading.Thread(target=q.close)
        closer.start()
        with pytest.raises(ValueError):
            await task
        closer.join(5)
        assert time.monotonic() - t0 < 0.4  # woken by the close, not by the re-check

        q = Queue(2, capacity=SMALL, backend=backend)
        put = asyncio.ensure_future(q.put_many_async(range(5)))
        await asyncio.sleep(0.05)
        assert not put.done() and q.qsize() == 2
        t0 = time.monotonic()
        closer = threading.Thread(target=q.close)
        closer.start()
        with pytest.raises(ValueError) as closed:
            await put
        closer.join(5)
        assert time.monotonic() - t0 < 0.4
        assert closed.value.messages_put == 2  # type: ignore[attr-defined]
        with pytest.raises(ValueError):
            await q.get_many_async(timeout=0)
        with pytest.raises(ValueError):
            await q.put_many_async([1])

    run(main())


def test_many_async_any_number_of_coroutines(backend: str, run: Any) -> None:
    """60 consumers awaiting get_many_async and 12 producers awaiting put_many_async on
    one small queue: every object arrives once, each producer's in its order."""
    producers, per = 12, 150

    async def main() -> None:
        with Queue(16, capacity=SMALL, backend=backend) as q:
            got: list[tuple[int, int]] = []
            total = producers * per

            async def consumer(k: int) -> None:
                while True:
                    try:
                        got.extend(await q.get_many_async(1 + k % 7, timeout=0.5))
                    except Empty:
                        if len(got) >= total:
                            return

            async def producer(p: int) -> None:
                for start in range(0, per, 10):
                    await q.put_many_async([(p, j) for j in range(start, start + 10)],
                                           timeout=10)

            consumers = [asyncio.ensure_future(consumer(k)) for k in range(60)]
            await asyncio.wait_for(asyncio.gather(*(producer(p) for p in range(producers))),
                                   30)
            await asyncio.wait_for(asyncio.gather(*consumers), 30)
            assert len(got) == total
            for p in range(producers):  # (a take and its delivery: no await in between)
                assert [j for k, j in got if k == p] == list(range(per))

    run(main())
