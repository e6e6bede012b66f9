"""The shm channel's awaitables (Writer.send_async, send_many_async, flush_async,
Reader.recv_async, recv_many_async, recv_into_async, recv_view_async; and the Subscriber's
recv_into_async, recv_view_async, which share the Reader's) on asyncio and uvloop: data
across processes with a blocking peer on one side and an awaiting one on the other, both
ways and across backends; timeouts; cancellation that loses nothing; a dead peer; close
while awaiting; and a loop that is never blocked while waiting."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import test_aio
from fastipc import pubsub, shm
from helpers import (
    Ticker,
    close_ends_awaits,
    ends_with,
    producing,
    receive_with_cancels,
    send_with_cancels,
    start_python,
    times_out,
    trickling_in,
    while_consumed,
)
from test_shm import running

# the same event loops as test_aio: asyncio and uvloop
loops_ready = test_aio.loops_ready
run = test_aio.run


def _msg(i: int) -> bytes:
    """Message i: its number, then a body whose size crosses the streaming threshold."""
    return i.to_bytes(4, "little") + bytes([i % 251]) * ((i * 37) % 3000)


def _check(i: int, m: bytes) -> None:
    assert m == _msg(i), f"message {i} corrupted"


BLOCKING_WRITER = """
import sys, time
from fastipc import shm
name, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def msg(i):
    return i.to_bytes(4, "little") + bytes([i % 251]) * ((i * 37) % 3000)
with shm.Writer(name, capacity=4096, backend=backend) as w:
    print("ready", flush=True)
    for i in range(count):
        w.send(msg(i), timeout=30)
        if i % 97 == 0:
            time.sleep(0.01)  # the awaiting reader parks now and then
    w.flush(timeout=30)
"""

BLOCKING_READER = """
import sys
from fastipc import shm
name, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
def msg(i):
    return i.to_bytes(4, "little") + bytes([i % 251]) * ((i * 37) % 3000)
with shm.Reader(name, timeout=30, backend=backend) as r:
    for i in range(count):
        assert r.recv(timeout=30) == msg(i), i
print("ok", flush=True)
"""


def test_awaiting_reader_blocking_writer(cross: tuple[str, str], name: str, run: Any) -> None:
    sender, receiver = cross
    count = 600
    with running(BLOCKING_WRITER, name, sender, str(count)) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

        async def main() -> None:
            with shm.Reader(name, timeout=10, backend=receiver) as r:
                i = 0
                while i < count:
                    if i % 2:
                        for m in await r.recv_many_async(16, timeout=10):
                            _check(i, m)
                            i += 1
                    else:
                        _check(i, await r.recv_async(timeout=10))
                        i += 1
                with pytest.raises(EOFError):
                    while True:
                        await r.recv_async(timeout=10)

        run(main())
        assert proc.wait(30) == 0


def test_awaiting_writer_blocking_reader(cross: tuple[str, str], name: str, run: Any) -> None:
    sender, receiver = cross
    count = 600

    async def send(w: shm.Writer) -> None:
        for i in range(count):
            await w.send_async(_msg(i), timeout=30)

    run(_to_a_blocking_reader(send, name, sender, receiver, count))


async def _to_a_blocking_reader(send: Callable[[shm.Writer], Awaitable[None]], name: str,
                                sender: str, receiver: str, count: int) -> None:
    """``await send(w)`` to a reader of ``count`` messages (_msg) in another process, which
    must get them all."""
    with shm.Writer(name, capacity=4096, backend=sender) as w:
        proc = start_python(BLOCKING_READER, name, receiver, str(count))
        try:
            await send(w)
            out, err = await asyncio.get_running_loop().run_in_executor(
                None, lambda: proc.communicate(timeout=60))
            assert proc.returncode == 0, err
            assert out.strip() == "ok"
        finally:
            proc.kill()
            proc.wait()


def test_timeouts(backend: str, name: str, run: Any) -> None:
    async def main() -> None:
        with shm.Writer(name, capacity=4096, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            await times_out(r.recv_async(timeout=0.2), 0.15)
            with pytest.raises(TimeoutError):
                await r.recv_many_async(timeout=0)
            while True:
                try:
                    await w.send_async(b"x" * 900, timeout=0)
                except TimeoutError:
                    break
            await times_out(w.send_async(b"y" * 900, timeout=0.2), 0.15)
            with pytest.raises(ValueError):
                await r.recv_async(timeout=-1)
            with pytest.raises(TypeError):
                await w.send_async("text")

    run(main())


def test_cancel_and_retry_loses_nothing(cross: tuple[str, str], name: str, run: Any) -> None:
    """1,000 rounds of a recv_async cancelled at a random moment, then retried, while a
    thread sends; and the same for send_async: every message arrives once, whole, in order."""
    sender, receiver = cross
    count = 1000
    rng = random.Random(7)

    async def main() -> None:
        with shm.Writer(name, capacity=4096, backend=sender) as w, \
                shm.Reader(name, timeout=5, backend=receiver) as r:
            t = producing(lambda i: w.send(_msg(i), timeout=30), count, rng)
            cancels = await receive_with_cancels(lambda: r.recv_async(timeout=30), count, rng,
                                                 _check)
            t.join(30)
            assert cancels > 0

            # sending: a cancelled send_async sent the whole message or nothing
            async def send_all() -> tuple[list[int], int]:
                went = await send_with_cancels(
                    lambda i: w.send_async(_msg(i), timeout=30), count, rng)
                await w.send_async(b"end", timeout=5)
                return went

            sent, _, received = await while_consumed(
                send_all(), lambda: [r.recv(timeout=0.2)], TimeoutError)
            sent_end = len(sent)
            numbers = []
            for m in received:
                if m == b"end":
                    break
                i = int.from_bytes(m[:4], "little")
                _check(i, m)
                numbers.append(i)
            assert numbers == sorted(set(numbers))
            assert set(sent[:sent_end]) <= set(numbers)

    run(main())


def test_dead_writer_ends_the_awaiting_reader(backend: str, name: str, run: Any) -> None:
    with running(
        """
        import sys, time
        from fastipc import shm
        w = shm.Writer(sys.argv[1], capacity=4096, backend=sys.argv[2])
        w.send(b"last")
        print("ready", flush=True)
        time.sleep(60)
        """,
        name, backend,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"

        async def main() -> None:
            with shm.Reader(name, timeout=5, backend=backend) as r:
                assert await r.recv_async(timeout=5) == b"last"
                await ends_with(r.recv_async(timeout=30), proc.kill, EOFError, within=1.5)

        run(main())


def test_dead_reader_breaks_the_awaiting_writer(backend: str, name: str, run: Any) -> None:
    async def main() -> None:
        with shm.Writer(name, capacity=4096, backend=backend) as w, running(
            """
                import sys, time
                from fastipc import shm
                r = shm.Reader(sys.argv[1], timeout=10, backend=sys.argv[2])
                print("ready", flush=True)
                time.sleep(60)
                """,
            name, backend,
        ) as proc:
            assert proc.stdout is not None
            line = await asyncio.get_running_loop().run_in_executor(
                None, proc.stdout.readline)
            assert line.strip() == "ready"
            await ends_with(_fill(w), proc.kill, BrokenPipeError, within=1.5)

    run(main())


async def _fill(w: shm.Writer) -> None:
    while True:
        await w.send_async(b"z" * 900, timeout=30)


def test_close_while_awaiting(backend: str, name: str, run: Any) -> None:
    async def main() -> None:
        with shm.Writer(name, capacity=4096, backend=backend) as w:
            r = shm.Reader(name, timeout=5, backend=backend)
            task = asyncio.ensure_future(r.recv_async())
            await asyncio.sleep(0.05)
            await close_ends_awaits(r.close, [task], within=1)
            assert r.closed
        w = shm.Writer(name, capacity=4096, backend=backend)
        r = shm.Reader(name, timeout=5, backend=backend)
        try:
            task = asyncio.ensure_future(_fill(w))
            await asyncio.sleep(0.05)
            w.close()
            with pytest.raises(ValueError):
                await task
        finally:
            r.close()
            w.close()

    run(main())


def test_the_loop_is_never_blocked(backend: str, name: str, run: Any) -> None:
    """A ticker coroutine's largest gap while a coroutine awaits messages that trickle in."""
    async def main() -> float:
        with shm.Writer(name, capacity=4096, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            tick = Ticker()
            await trickling_in(lambda i: w.send(_msg(i), timeout=5),
                               lambda: r.recv_async(timeout=5), _check)
            return tick.stop()

    gap = run(main())
    assert gap < 0.05, f"the loop was blocked for {gap * 1000:.1f} ms"


def test_messages_taken_together_come_first(backend: str, name: str, run: Any) -> None:
    """recv_async may take several queued messages out of the ring at once (the native
    backend does): every receiving call returns those first, in order, as if none had been
    taken; a too small recv_into leaves the next one queued; close() drops them, and a
    recv_async held from before the close raises ValueError."""
    def small(i: int) -> bytes:
        return i.to_bytes(4, "little") + bytes([i % 251]) * (i % 50)

    async def main() -> None:
        with shm.Writer(name, capacity=1 << 16, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            for i in range(300):
                w.send(small(i))
            got = [await r.recv_async(timeout=1)]
            with pytest.raises(ValueError):
                r.recv_into(bytearray(2), timeout=1)
            got.append(r.recv(timeout=1))
            buf = bytearray(100)
            got.append(bytes(buf[:r.recv_into(buf, timeout=1)]))
            with r.recv_view(timeout=1) as v:
                got.append(bytes(v))
            got += r.recv_many(3, timeout=1)
            got += await r.recv_many_async(3, timeout=1)
            while len(got) < 300:
                got.append(await r.recv_async(timeout=1) if len(got) % 3 else r.recv(timeout=1))
            assert got == [small(i) for i in range(300)]
            with pytest.raises(TimeoutError):
                await r.recv_async(timeout=0)
            w.flush(timeout=1)  # the reader took everything

        with shm.Writer(name, capacity=1 << 16, backend=backend) as w:
            r = shm.Reader(name, timeout=5, backend=backend)
            for i in range(10):
                w.send(small(i))
            recv_async = r.recv_async
            assert await recv_async(timeout=1) == small(0)
            r.close()
            with pytest.raises(ValueError):
                await recv_async(timeout=1)
            with pytest.raises(ValueError):
                await r.recv_async(timeout=1)
            with pytest.raises(ValueError):
                r.recv(timeout=1)

    run(main())


# ------------------------------------------------ send_many_async, flush_async (the writer)


def test_send_many_async_to_a_blocking_reader(cross: tuple[str, str], name: str,
                                              run: Any) -> None:
    """Batches awaited into a 4 KiB ring, with messages that are streamed in chunks among
    them (and one larger than the ring), reach a blocking reader in another process whole
    and in order; flush_async returns once it has taken them all."""
    sender, receiver = cross
    count = 600

    async def send(w: shm.Writer) -> None:
        for first in range(0, count, 50):
            await w.send_many_async([_msg(i) for i in range(first, first + 50)], timeout=30)
        await w.flush_async(timeout=30)

    run(_to_a_blocking_reader(send, name, sender, receiver, count))


def test_send_many_async_says_how_many_went(backend: str, name: str, run: Any) -> None:
    """A timeout, a cancellation or a close ends send_many_async with ``messages_sent``: the
    reader gets exactly those, each whole, and nothing of the others."""
    batch = [bytes([i]) * 700 for i in range(30)]

    async def main() -> None:
        with shm.Writer(name, capacity=4096, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                await w.send_many_async(batch, timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 2
            went = info.value.messages_sent  # type: ignore[attr-defined]
            assert 0 < went < len(batch)
            assert r.recv_many(100, timeout=1) == batch[:went]
            with pytest.raises(TypeError):
                await w.send_many_async(b"one message")
            with pytest.raises(TypeError):
                await w.send_many_async(["text"])

            task = asyncio.ensure_future(w.send_many_async(batch, timeout=30))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError) as cancelled:
                await task
            went = cancelled.value.messages_sent  # type: ignore[attr-defined]
            assert 0 < went < len(batch)
            assert r.recv_many(100, timeout=1) == batch[:went]
            with pytest.raises(TimeoutError):
                r.recv(timeout=0)

            task = asyncio.ensure_future(w.send_many_async(batch, timeout=30))
            await asyncio.sleep(0.05)
            closer = threading.Thread(target=w.close)
            closer.start()
            with pytest.raises(ValueError) as closed:
                await task
            closer.join(5)
            assert 0 < closed.value.messages_sent < len(batch)  # type: ignore[attr-defined]
            with pytest.raises(ValueError):
                await w.send_many_async(batch)

    run(main())


def test_flush_async(backend: str, name: str, run: Any) -> None:
    """flush_async waits, without blocking the loop, until the reader has taken every
    message; TimeoutError while it does not; BrokenPipeError once it has closed; ValueError
    when the writer is closed from another thread meanwhile."""
    async def main() -> None:
        with shm.Writer(name, capacity=4096, backend=backend) as w:
            await w.flush_async(timeout=0)  # nothing sent: flushed
            w.send(b"early")
            with pytest.raises(TimeoutError):
                await w.flush_async(timeout=0.1)  # no reader yet
            r = shm.Reader(name, timeout=5, backend=backend)
            assert r.recv(timeout=1) == b"early"
            for i in range(5):
                w.send(_msg(i))
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await w.flush_async(timeout=0.2)
            assert 0.15 < time.monotonic() - t0 < 2

            def slow_reader() -> None:
                time.sleep(0.2)
                for i in range(5):
                    _check(i, r.recv(timeout=5))
                with pytest.raises(TimeoutError):
                    r.recv(timeout=0.1)  # a reader waiting for more has handed all back

            tick = Ticker()
            t = threading.Thread(target=slow_reader)
            t.start()
            t0 = time.monotonic()
            await w.flush_async(timeout=5)
            waited = time.monotonic() - t0
            gap = tick.stop()
            t.join(5)
            assert 0.15 < waited < 0.45  # woken by the reader, not by a periodic look
            assert gap < 0.05, f"the loop was blocked for {gap * 1000:.1f} ms"

            w.send(b"unread")
            task = asyncio.ensure_future(w.flush_async(timeout=30))
            await asyncio.sleep(0.05)
            r.close()
            with pytest.raises(BrokenPipeError):
                await task

        w = shm.Writer(name, capacity=4096, backend=backend)
        r = shm.Reader(name, timeout=5, backend=backend)
        try:
            w.send(b"unread")
            tasks = [asyncio.ensure_future(w.flush_async()) for _ in range(3)]
            await asyncio.sleep(0.05)
            closer = threading.Thread(target=w.close)
            closer.start()
            for task in tasks:
                with pytest.raises(ValueError):
                    await task
            closer.join(5)
        finally:
            r.close()
            w.close()

    run(main())


# -------------------------------- recv_into_async, recv_view_async (Reader and Subscriber)


@contextmanager
def _ends(kind: str, name: str, backend: str) -> Iterator[tuple[Any, Any]]:
    """(sender, receiver) of the shm channel or of the fan-out."""
    if kind == "channel":
        with shm.Writer(name, capacity=4096, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            yield w, r
    else:
        with pubsub.Publisher(name, capacity=4096, backend=backend) as p, \
                pubsub.Subscriber(name, timeout=5, backend=backend) as s:
            yield p, s


KINDS = pytest.mark.parametrize("kind", ["channel", "fanout"])


@KINDS
def test_recv_into_and_view_async(kind: str, backend: str, name: str, run: Any) -> None:
    """Messages from a thread, awaited into a buffer and as views, alternately: whole and in
    order, without blocking the loop; a buffer too small raises ValueError and the message
    stays; a timeout takes nothing."""
    count = 200

    async def main() -> None:
        with _ends(kind, name, backend) as (tx, rx):
            buf = bytearray(4096)
            with pytest.raises(TimeoutError):
                await rx.recv_into_async(buf, timeout=0.1)
            with pytest.raises(TimeoutError):
                await rx.recv_view_async(timeout=0)
            with pytest.raises(TypeError):
                await rx.recv_into_async(b"read-only", timeout=1)
            with pytest.raises(ValueError):
                await rx.recv_into_async(buf, timeout=-1)

            def produce() -> None:
                for i in range(count):
                    tx.send(_msg(i), timeout=10)
                    if i % 17 == 0:
                        time.sleep(0.01)

            tick = Ticker()
            t = threading.Thread(target=produce)
            t.start()
            for i in range(count):
                if i % 2:
                    n = await rx.recv_into_async(buf, timeout=10)
                    _check(i, bytes(buf[:n]))
                else:
                    with await rx.recv_view_async(timeout=10) as view:
                        _check(i, bytes(view))
            t.join(10)
            gap = tick.stop()
            assert gap < 0.05, f"the loop was blocked for {gap * 1000:.1f} ms"

            tx.send(b"x" * 100)
            with pytest.raises(ValueError):
                await rx.recv_into_async(bytearray(10), timeout=1)
            n = await rx.recv_into_async(buf, timeout=1)  # it stayed queued
            assert bytes(buf[:n]) == b"x" * 100

    run(main())


@KINDS
def test_recv_into_and_view_async_cancelled_lose_nothing(kind: str, backend: str, name: str,
                                                         run: Any) -> None:
    """500 rounds of each awaitable cancelled at a random moment and retried while a
    thread sends: every message arrives once, whole, in order."""
    count = 500
    rng = random.Random(11)

    async def main() -> None:
        with _ends(kind, name, backend) as (tx, rx):
            def produce() -> None:
                for i in range(2 * count):
                    tx.send(_msg(i), timeout=30)
                    if rng.random() < 0.3:
                        time.sleep(rng.random() * 0.0005)

            t = threading.Thread(target=produce)
            t.start()
            buf = bytearray(4096)

            async def into() -> bytes:
                n = await rx.recv_into_async(buf, timeout=30)
                return bytes(buf[:n])

            async def view() -> bytes:
                with await rx.recv_view_async(timeout=30) as v:
                    return bytes(v)

            cancels = await receive_with_cancels(into, count, rng, _check)
            cancels += await receive_with_cancels(
                view, count, rng, lambda i, m: _check(count + i, m))
            t.join(30)
            assert cancels > 0

    run(main())


@KINDS
def test_many_coroutines_and_close(kind: str, backend: str, name: str, run: Any) -> None:
    """200 coroutines await one end at once (half into buffers, half views): each message
    goes to one of them; close() from another thread ends the rest with ValueError."""
    async def main() -> None:
        with _ends(kind, name, backend) as (tx, rx):
            async def into() -> bytes:
                buf = bytearray(4096)
                n = await rx.recv_into_async(buf, timeout=30)
                return bytes(buf[:n])

            async def view() -> bytes:
                with await rx.recv_view_async(timeout=30) as v:
                    return bytes(v)

            tasks = [asyncio.ensure_future(into() if i % 2 else view()) for i in range(200)]
            await asyncio.sleep(0.05)

            def produce() -> None:
                for i in range(100):
                    tx.send(_msg(i), timeout=5)

            t = threading.Thread(target=produce)
            t.start()
            done: set[asyncio.Future[bytes]] = set()
            while len(done) < 100:
                more, _ = await asyncio.wait(set(tasks) - done, timeout=5,
                                             return_when=asyncio.FIRST_COMPLETED)
                assert more, "messages were sent but no coroutine got them"
                done |= more
            t.join(5)
            got = sorted((t.result() for t in done), key=lambda m: int.from_bytes(m[:4], "little"))
            for i, m in enumerate(got):
                _check(i, m)
            t0 = time.monotonic()
            closer = threading.Thread(target=rx.close)
            closer.start()
            for task in set(tasks) - done:
                with pytest.raises(ValueError):
                    await task
            closer.join(5)
            assert time.monotonic() - t0 < 1

    run(main())
