"""Awaitable pipe and FIFO calls (recv_async, send_async, read_async, write_async, the batch
calls, open_*_async), on asyncio and uvloop, both backends, with the peer blocking in another
process."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from fastipc import pipe
from helpers import Ticker, gather_cut_short, run_on, start_python

T = TypeVar("T")

# uvloop's first loop opens a pipe it keeps for the life of the process: open it now, not
# inside the first test's leak check
_warm = uvloop.new_event_loop()
_warm.close()


run = run_on


BLOCKING_SENDER = """
import sys, time
from fastipc import pipe
w = pipe.PipeWriter(int(sys.argv[1]), backend=sys.argv[2])
time.sleep(0.3)                      # the other side awaits meanwhile
for i in range(int(sys.argv[3])):
    w.send(b"m%d" % i)
w.close()
"""

BLOCKING_RECEIVER = """
import sys
from fastipc import pipe
r = pipe.PipeReader(int(sys.argv[1]), backend=sys.argv[2])
n = 0
for m in r:                          # blocking recv until the end of the stream
    assert m == b"%d" % n * 1000, (n, m[:20])
    n += 1
print(n)
r.close()
"""


def test_awaited_recv_from_a_blocking_sender(cross: tuple[str, str], loop_kind: str) -> None:
    sender, receiver = cross
    r, w = pipe.pipe(backend=receiver)
    proc = start_python(BLOCKING_SENDER, str(w.fileno()), sender, "500",
                        pass_fds=(w.fileno(),))
    w.close()

    async def main() -> list[bytes]:
        got = []
        async with Ticker() as ticker:
            while True:
                try:
                    got.append(await r.recv_async(timeout=20))
                except EOFError:
                    break
        assert ticker.gap < 0.05  # the loop ran on while recv_async waited
        return got

    with r:
        assert run(loop_kind, main()) == [b"m%d" % i for i in range(500)]
    proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_awaited_send_to_a_blocking_receiver(cross: tuple[str, str], loop_kind: str) -> None:
    """Messages far larger than the pipe: send_async waits for room many times."""
    sender, receiver = cross
    r, w = pipe.pipe(backend=sender)
    proc = start_python(BLOCKING_RECEIVER, str(r.fileno()), receiver, pass_fds=(r.fileno(),))
    r.close()

    async def main() -> None:
        async with Ticker() as ticker:
            for i in range(50):
                await w.send_async(b"%d" % i * 1000, timeout=20)
        assert ticker.gap < 0.05

    with w:
        run(loop_kind, main())
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert int(out) == 50


def test_timeouts(backend: str, loop_kind: str) -> None:
    r, w = pipe.pipe(backend=backend)

    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await r.recv_async(timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 2
        with pytest.raises(TimeoutError):
            await r.recv_async(timeout=0)
        w.write(b"f" * w.pipe_size)  # full now: a small message waits for room
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await w.send_async(b"small", timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 2
        assert not w.closed  # nothing of it went: the writer stays usable
        with pytest.raises(ValueError):
            await r.recv_async(timeout=-1)
        with pytest.raises(TypeError):
            await w.send_async("text")

    with r, w:
        run(loop_kind, main())


def _cut_short_while_sending(loop_kind: str, r: pipe.PipeReader, w: pipe.PipeWriter,
                            sender: Callable[[], None], receive: Callable[[], Awaitable[int]],
                            leftover: Callable[..., Awaitable[Any]], at_least: int,
                            done: Callable[[], None] = lambda: None) -> None:
    """``receive()`` (it returns how many of its calls were cut short: at least
    ``at_least``) while a thread runs ``sender()``, then ``done()``; then ``leftover()``
    finds nothing: nothing duplicated, nothing left over. Closes both ends."""

    async def main() -> int:
        t = threading.Thread(target=sender)
        t.start()
        try:
            cancels = await receive()
        finally:
            done()
            t.join()
        with pytest.raises(TimeoutError):
            await leftover(timeout=0.05)
        return cancels

    with r, w:
        assert run(loop_kind, main()) >= at_least


def test_recv_cancel_and_retry_loses_nothing(backend: str, loop_kind: str) -> None:
    """1,000 receives cancelled while they wait (mid-message too: some messages are larger
    than the pipe), each retried, while a thread sends numbered messages at its own pace:
    every message arrives once, whole and in order."""
    r, w = pipe.pipe(backend=backend)
    n = 300

    def message(i: int) -> bytes:
        return i.to_bytes(4, "big") * (50_000 if i % 10 == 0 else 4)

    def sender() -> None:
        for i in range(n):
            w.send(message(i))
            time.sleep(0.0005)

    async def receive() -> int:
        got, cancels = await gather_cut_short(lambda got: r.recv_async(),
                                              lambda got: len(got) >= n, 1000)
        for i, m in enumerate(got):
            assert m == message(i), (i, len(m))
        return cancels

    _cut_short_while_sending(loop_kind, r, w, sender, receive, r.recv_async, 1000)


def test_send_cancel_and_retry_loses_nothing(backend: str, loop_kind: str) -> None:
    """1,000 sends cancelled while they wait for room, each retried until it returns; a
    cancelled send either sent nothing (it raised) or the whole message (it returned):
    the receiver gets each message once, whole and in order."""
    r, w = pipe.pipe(backend=backend)
    n = 300
    got: list[int] = []

    def message(i: int) -> bytes:
        return i.to_bytes(4, "big") * (30_000 if i % 10 == 0 else 4)

    def receiver() -> None:
        for m in r:
            got.append(int.from_bytes(m[:4], "big"))
            assert m == message(got[-1])
            time.sleep(0.0005)

    async def main() -> int:
        cancels = sent = 0
        while sent < n or cancels < 1000:
            if sent == n:  # all went: keep the pipe full so that sends keep waiting
                w2r, w2 = pipe.pipe(backend=backend)
                with w2r, w2:
                    w2.write(b"f" * w2.pipe_size)
                    while cancels < 1000:
                        try:
                            await asyncio.wait_for(w2.send_async(b"never"), 0.0001)
                        except TimeoutError:
                            cancels += 1
                    assert w2r.read(1 << 20, timeout=1).strip(b"f") == b""
                break
            try:
                await asyncio.wait_for(w.send_async(message(sent)), 0.0002)
                sent += 1
            except TimeoutError:
                cancels += 1
        return cancels

    t = threading.Thread(target=receiver)
    t.start()
    try:
        with w:
            assert run(loop_kind, main()) >= 1000
    finally:
        t.join(30)
        r.close()
    assert got == list(range(n))


def test_dead_peer(backend: str, loop_kind: str) -> None:
    async def main() -> None:
        r, w = pipe.pipe(backend=backend)
        w.close()
        with pytest.raises(EOFError):
            await r.recv_async(timeout=5)
        r.close()
        r, w = pipe.pipe(backend=backend)
        r.close()
        with pytest.raises(BrokenPipeError):
            await w.send_async(b"x", timeout=5)
        w.close()
        # a peer process killed while we await
        r, w = pipe.pipe(backend=backend)
        proc = start_python("import time; time.sleep(0.3)", pass_fds=(w.fileno(),))
        w.close()  # the child holds the only write end now, and exits
        t0 = time.monotonic()
        with pytest.raises(EOFError):
            await r.recv_async(timeout=10)
        assert time.monotonic() - t0 < 5
        proc.communicate(timeout=10)
        r.close()

    run(loop_kind, main())


@pytest.mark.parametrize("closer", ["coroutine", "thread"])
def test_close_while_awaiting(backend: str, loop_kind: str, closer: str) -> None:
    r, w = pipe.pipe(backend=backend)
    w2r, w2 = pipe.pipe(backend=backend)
    w2.write(b"f" * w2.pipe_size)

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def close_soon(obj: Any) -> None:
            if closer == "thread":
                threading.Timer(0.1, obj.close).start()
            else:
                loop.call_later(0.1, obj.close)

        close_soon(r)
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="closed"):
            await r.recv_async(timeout=10)
        close_soon(w2)
        with pytest.raises(ValueError, match="closed"):
            await w2.send_async(b"x" * 100, timeout=10)
        assert time.monotonic() - t0 < 3

    run(loop_kind, main())
    time.sleep(0.05)  # the timer threads have finished
    assert r.closed and w2.closed
    w.close()
    w2r.close()


def test_cancelled_send_finishes_a_message_it_began(backend: str, loop_kind: str) -> None:
    r, w = pipe.pipe(backend=backend)
    big = os.urandom(1 << 20)

    async def main() -> None:
        task = asyncio.ensure_future(w.send_async(big, timeout=10))
        await asyncio.sleep(0.05)  # part of it went; the pipe is full
        task.cancel()
        send_next = asyncio.ensure_future(w.send_async(b"next", timeout=10))
        assert await r.recv_async(timeout=10) == big  # the rest went on
        assert await task is None  # absorbed: it returned, so the caller knows it went
        await send_next
        assert await r.recv_async(timeout=10) == b"next"

    with r, w:
        run(loop_kind, main())


def test_fifo_open_async(backend: str, loop_kind: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    fifo = pipe.FIFO(path, create=True, backend=backend)
    code = """
import sys
from fastipc import pipe
with pipe.FIFO(sys.argv[1]) as f, f.open_writer(timeout=10) as w:
    w.send(b"hello")
"""

    async def main() -> bytes:
        with pytest.raises(TimeoutError):
            await fifo.open_writer_async(timeout=0.05)
        proc = start_python(code, str(path))
        async with Ticker() as ticker:
            with await fifo.open_reader_async(timeout=10) as r:
                m = await r.recv_async(timeout=10)
        proc.communicate(timeout=10)  # reaped first: a slow loop fails this test alone
        assert ticker.gap < 0.05
        fifo.close()
        with pytest.raises(ValueError):
            await fifo.open_reader_async(timeout=1)
        return m

    assert run(loop_kind, main()) == b"hello"
    fifo.unlink()


# ---------------------------------------------------------------- raw and batch twins


def test_raw_and_batch_awaitables(backend: str, loop_kind: str) -> None:
    r, w = pipe.pipe(backend=backend)

    async def main() -> None:
        assert await w.write_async(b"hello world") == 11
        assert await w.write_async(bytearray(b"!")) == 1
        assert await r.read_async(5, timeout=1) == b"hello"
        assert await r.read_async(0) == b""
        assert await r.read_async(timeout=1) == b" world!"
        await w.send_many_async([b"a", b"bb", b"", memoryview(b"ccc")], timeout=1)
        await w.send_many_async([])  # nothing to send
        await w.send_many_async(iter([b"d"]))
        assert await r.recv_many_async(2, timeout=1) == [b"a", b"bb"]
        assert await r.recv_many_async(timeout=1) == [b"", b"ccc", b"d"]
        big = os.urandom(1 << 20)  # far larger than the pipe: both sides wait for each other
        reader = asyncio.ensure_future(r.recv_many_async(timeout=10))
        await w.send_many_async([big, b"tail"], timeout=10)
        got = await reader
        if len(got) == 1:
            got += await r.recv_many_async(timeout=1)
        assert got == [big, b"tail"]
        with pytest.raises(TypeError):
            await w.send_many_async(b"one message")
        with pytest.raises(TypeError):
            await w.send_many_async(["text"])
        with pytest.raises(TypeError):
            await w.write_async("text")
        with pytest.raises(ValueError):
            await r.read_async(-1)
        with pytest.raises(ValueError):
            await r.recv_many_async(0)
        assert not w.closed and not r.closed

    with r, w:
        run(loop_kind, main())


def test_raw_and_batch_timeouts(backend: str, loop_kind: str) -> None:
    r, w = pipe.pipe(backend=backend)

    async def main() -> None:
        for call in (lambda t: r.read_async(timeout=t),
                     lambda t: r.recv_many_async(timeout=t)):
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await call(0.2)
            assert 0.19 <= time.monotonic() - t0 < 2
            with pytest.raises(TimeoutError):
                await call(0)
            with pytest.raises(ValueError):
                await call(-1)
        size = w.pipe_size
        w.write(b"f" * (size - 4096))  # room for one page
        t0 = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await w.write_async(b"x" * 10_000, timeout=0.2)  # more than PIPE_BUF: not atomic
        assert 0.19 <= time.monotonic() - t0 < 2
        went = info.value.characters_written  # type: ignore[attr-defined]
        assert went == 4096  # as the blocking write says
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await w.send_many_async([b"a", b"b"], timeout=0.2)
        assert 0.19 <= time.monotonic() - t0 < 2
        assert not w.closed  # nothing of the batch went: the writer stays usable
        with pytest.raises(ValueError):
            await w.write_async(b"x", timeout=-1)
        with pytest.raises(ValueError):
            await w.send_many_async([b"x"], timeout=-1)
        assert r.read(size, timeout=1) == b"f" * (size - 4096) + b"x" * 4096

    with r, w:
        run(loop_kind, main())


def test_read_and_recv_many_cancel_and_retry_lose_nothing(backend: str,
                                                          loop_kind: str) -> None:
    """Reads and batch receives cancelled while they wait, each retried, while a thread
    writes at its own pace: every byte and every message arrives once, in order."""
    r, w = pipe.pipe(backend=backend)
    n = 200

    def message(i: int) -> bytes:
        return i.to_bytes(4, "big") * (20_000 if i % 10 == 0 else 4)

    raw = os.urandom(300_000)
    go = threading.Event()

    def sender() -> None:
        for i in range(0, len(raw), 1500):
            w.write(raw[i:i + 1500])
            time.sleep(0.0002)
        go.wait(10)  # the reads are over
        for i in range(0, n, 3):
            w.send_many([message(j) for j in range(i, min(i + 3, n))])
            time.sleep(0.0005)

    def size(chunks: list[Any]) -> int:
        return sum(map(len, chunks))

    async def receive() -> int:
        data, cancels = await gather_cut_short(
            lambda got: r.read_async(len(raw) - size(got) or 1),
            lambda got: size(got) >= len(raw), 300)
        assert b"".join(data) == raw
        go.set()
        batches, cancels = await gather_cut_short(
            lambda got: r.recv_many_async(5), lambda got: size(got) >= n, 600, cancels)
        assert [m for batch in batches for m in batch] == [message(i) for i in range(n)]
        return cancels

    _cut_short_while_sending(loop_kind, r, w, sender, receive, r.read_async, 600, go.set)


def test_cancelled_write_reports_what_went(backend: str, loop_kind: str) -> None:
    r, w = pipe.pipe(backend=backend)
    size = w.pipe_size

    async def main() -> None:
        data = os.urandom(3 * size)
        task = asyncio.ensure_future(w.write_async(data, timeout=10))
        await asyncio.sleep(0.05)  # the pipe is full, the rest waits
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        went = info.value.characters_written  # type: ignore[attr-defined]
        assert 0 < went < len(data)
        assert not w.closed  # raw bytes: nothing to finish
        got = bytearray()
        while len(got) < went:
            got += r.read(went - len(got), timeout=1)
        assert got == data[:went]
        with pytest.raises(TimeoutError):
            r.read(timeout=0.05)  # no more than it said
        # cancelled before any byte went: it says 0
        w.write(b"f" * size)
        task = asyncio.ensure_future(w.write_async(b"x", timeout=10))
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError) as info:
            await task
        assert info.value.characters_written == 0  # type: ignore[attr-defined]

    with r, w:
        run(loop_kind, main())


def test_cancelled_send_many_finishes_the_batch_it_began(backend: str,
                                                         loop_kind: str) -> None:
    r, w = pipe.pipe(backend=backend)
    big = [os.urandom(300_000), b"small", os.urandom(500_000)]

    async def main() -> None:
        task = asyncio.ensure_future(w.send_many_async(big, timeout=10))
        await asyncio.sleep(0.05)  # part of it went; the pipe is full
        task.cancel()
        send_next = asyncio.ensure_future(w.send_async(b"next", timeout=10))
        got: list[bytes] = []
        while len(got) < 4:
            got += await r.recv_many_async(timeout=10)
        assert got == [*big, b"next"]  # the rest went on, then the next send
        await task  # absorbed: it returned, so the caller knows it went
        await send_next

    with r, w:
        run(loop_kind, main())


def test_raw_and_batch_end_of_stream_and_broken_pipe(backend: str, loop_kind: str) -> None:
    async def main() -> None:
        r, w = pipe.pipe(backend=backend)
        w.send_many([b"last", b"one"])
        w.close()
        assert await r.recv_many_async(timeout=5) == [b"last", b"one"]
        with pytest.raises(EOFError):
            await r.recv_many_async(timeout=5)
        r.close()
        r, w = pipe.pipe(backend=backend)
        w.write(b"end")
        w.close()
        assert await r.read_async(timeout=5) == b"end"
        assert await r.read_async(timeout=5) == b""
        r.close()
        r, w = pipe.pipe(backend=backend)
        r.close()
        with pytest.raises(BrokenPipeError):
            await w.write_async(b"x", timeout=5)
        with pytest.raises(BrokenPipeError):
            await w.send_many_async([b"x"], timeout=5)
        w.close()
        # the reader goes while a write awaits room: what went is reported
        r, w = pipe.pipe(backend=backend)
        size = w.pipe_size
        asyncio.get_running_loop().call_later(0.1, r.close)
        with pytest.raises(BrokenPipeError) as info:
            await w.write_async(b"x" * (2 * size), timeout=5)
        assert info.value.characters_written == size  # type: ignore[attr-defined]
        w.close()
        # a writer process that exits while we await
        r, w = pipe.pipe(backend=backend)
        proc = start_python("import time; time.sleep(0.3)", pass_fds=(w.fileno(),))
        w.close()
        t0 = time.monotonic()
        assert await r.read_async(timeout=10) == b""
        assert time.monotonic() - t0 < 5
        proc.communicate(timeout=10)
        r.close()

    run(loop_kind, main())


@pytest.mark.parametrize("call", ["read_async", "recv_many_async", "write_async",
                                  "send_many_async"])
def test_raw_and_batch_close_from_another_thread(backend: str, loop_kind: str,
                                                 call: str) -> None:
    r, w = pipe.pipe(backend=backend)
    obj: Any = r if call.startswith("re") else w
    if obj is w:
        w.write(b"f" * w.pipe_size)  # full: the write waits for room
    args: tuple[Any, ...] = {"read_async": (), "recv_many_async": (),
                             "write_async": (b"x" * 100,),
                             "send_many_async": ([b"x"],)}[call]

    async def main() -> None:
        threading.Timer(0.1, obj.close).start()
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="closed"):
            await getattr(obj, call)(*args, timeout=10)
        assert time.monotonic() - t0 < 3

    run(loop_kind, main())
    time.sleep(0.05)  # the timer thread has finished
    assert obj.closed
    r.close()
    w.close()


def test_partial_send_many_async_says_messages_sent(backend: str, loop_kind: str) -> None:
    """An awaited batch that times out part way raises its TimeoutError (as the blocking
    send_many does, not the ValueError of a closed writer) with ``messages_sent``: exactly
    the messages the reader gets before the end of the stream."""
    r, w = pipe.pipe(backend=backend)
    batch = [bytes([i % 256]) * 1000 for i in range(3 * w.pipe_size // 1004)]

    async def main() -> None:
        with pytest.raises(TimeoutError) as info:
            await w.send_many_async(batch, timeout=0.2)
        sent = info.value.messages_sent  # type: ignore[attr-defined]
        assert isinstance(sent, int) and 0 < sent < len(batch)
        assert w.closed  # a message was cut short
        got: list[bytes] = []
        with pytest.raises(EOFError):
            while True:
                got += r.recv_many(timeout=5)
        assert got == batch[:sent]
        # timed out before any byte went: none sent, the writer stays open
        r2, w2 = pipe.pipe(backend=backend)
        with r2, w2:
            w2.write(b"f" * w2.pipe_size)
            with pytest.raises(TimeoutError) as info:
                await w2.send_many_async([b"a", b"b"], timeout=0.05)
            assert info.value.messages_sent == 0  # type: ignore[attr-defined]
            assert not w2.closed

    with r, w:
        run(loop_kind, main())
