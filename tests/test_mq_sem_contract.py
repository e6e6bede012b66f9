"""The contract points shared by MessageQueue and Semaphore: closing from another thread
while a call waits, pickling into other processes (spawn, forkserver, fork), and the
awaitable twins of the queue (asyncio and uvloop: timeouts, cancellation, close, no
blocking of the loop)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Optional, TypeVar

import pytest

from fastipc import mq, sem
from helpers import Ticker, close_ends_call, run_on, run_python
from test_mq import SMALL, queue

__all__ = ["queue"]  # the fixture: a fresh queue of 8 x 256 bytes, closed and unlinked after

_T = TypeVar("_T")


# ---------------------------------------------------------------------------- close while busy

# Run in a child process: a crash (use of a freed sem_t*, a reused fd) fails the test instead
# of killing pytest. Each round blocks a thread in the call, closes the object from the main
# thread after a random delay, and checks that the call ended with ValueError, promptly.
CLOSE_WHILE_BLOCKED = """
    import random, sys, threading, time
    from fastipc import mq, sem
    name, backend, what = sys.argv[1], sys.argv[2], sys.argv[3]

    def make():
        if what == "sem":
            s = sem.Semaphore(name, create=True, value=0, backend=backend)
            s.unlink()
            return s, lambda: s.acquire()
        q = mq.MessageQueue(name, create=True, max_messages=1, max_message_size=16,
                            backend=backend)
        q.unlink()
        if what == "receive":
            return q, lambda: q.receive()
        q.send(b"full")
        return q, lambda: q.send(b"more")

    worst = 0.0
    for round in range(20):
        obj, call = make()
        outcome = []
        def run():
            try:
                call()
                outcome.append("returned")
            except ValueError as exc:
                outcome.append("ValueError" if "closed" in str(exc) else repr(exc))
            except BaseException as exc:
                outcome.append(repr(exc))
        t = threading.Thread(target=run)
        t.start()
        time.sleep(random.choice([0, 0.0001, 0.001, 0.02]))
        t0 = time.monotonic()
        obj.close()
        t.join(5)
        worst = max(worst, time.monotonic() - t0)
        assert not t.is_alive(), "the blocked call did not end"
        assert outcome == ["ValueError"], outcome
        assert obj.closed
    print("ok", worst)
"""


@pytest.mark.parametrize("what", ["receive", "send", "sem"])
def test_close_while_another_thread_waits(backend: str, name: str, what: str) -> None:
    res = run_python(CLOSE_WHILE_BLOCKED, name, backend, what)
    assert res.returncode == 0, res.stderr
    status, worst = res.stdout.split()
    assert status == "ok"
    # promptly: well within a second of close() (the waits sleep in slices of 0.1 s at most)
    assert float(worst) < 0.5


# Run in a child process: threads sending and receiving in a loop (without a timeout, with
# 0, short and long ones, taken from the queue before it is closed) while another thread
# closes it: each ends with ValueError, none hangs, and the descriptor is gone once all left.
CLOSE_UNDER_TRAFFIC = """
    import os, random, sys, threading, time
    from fastipc import mq
    name, backend = sys.argv[1], sys.argv[2]
    for round in range(20):
        q = mq.MessageQueue(name, create=True, max_messages=4, max_message_size=32,
                            backend=backend)
        q.unlink()
        fd = q.fileno()
        send, receive = q.send, q.receive
        outcome = []
        def work(sender):
            while True:
                timeout = random.choice([None, None, 0, 0.001, 1.0])
                try:
                    if sender:
                        send(b"x" * random.randint(0, 32), random.randint(0, 5), timeout)
                    else:
                        receive(timeout)
                except TimeoutError:
                    pass
                except ValueError as exc:
                    outcome.append("ValueError" if "closed" in str(exc) else repr(exc))
                    return
                except BaseException as exc:
                    outcome.append(repr(exc))
                    return
        threads = [threading.Thread(target=work, args=(i % 2,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(random.choice([0, 0.001, 0.01, 0.03]))
        q.close()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads), "a call did not end"
        assert outcome == ["ValueError"] * 4, outcome
        try:
            os.fstat(fd)
        except OSError:
            pass
        else:
            raise SystemExit("the descriptor outlived the calls")
    print("ok")
"""


def test_close_under_traffic(backend: str, name: str) -> None:
    res = run_python(CLOSE_UNDER_TRAFFIC, name, backend)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["ok"]


def _close_while_receiving(
    queue: mq.MessageQueue, after: float = 0.05, timeout: Optional[float] = 30
) -> BaseException:
    """Close ``queue`` while a thread waits in receive(); what that receive raised."""
    return close_ends_call(lambda: queue.receive(timeout=timeout), queue.close, settle=after)


@pytest.mark.parametrize("timeout", [30, None])
def test_fd_stays_open_until_the_waiter_left(
    queue: mq.MessageQueue, timeout: Optional[float]
) -> None:
    """close() with a receive in progress keeps the descriptor until the call has left, so
    its number cannot be reused under the waiting call; then it is released (on the native
    backend by the waiting call itself, the last one out of C)."""
    fd = queue.fileno()
    assert isinstance(_close_while_receiving(queue, timeout=timeout), ValueError)
    with pytest.raises(OSError):
        os.fstat(fd)


# ---------------------------------------------------------------------------- pickling


def _echo_queue(q: mq.MessageQueue, expected_backend: str) -> None:
    """In the child: the pickled queue attached by name, with its backend."""
    assert q.backend == expected_backend, q.backend
    data, _ = q.receive(timeout=30)
    q.send(data + b"|" + q.backend.encode(), priority=7, timeout=30)
    q.close()


def _take_semaphore(s: sem.Semaphore, expected_backend: str) -> None:
    assert s.backend == expected_backend, s.backend
    s.acquire(timeout=30)
    s.close()


@pytest.fixture(scope="session")
def forkserver() -> None:
    """The fork server (and its descriptors in this process) lives for the whole run: start
    it before any test's leak check looks at the open descriptors."""
    from multiprocessing import forkserver as fs

    fs.ensure_running()


@pytest.mark.usefixtures("forkserver")
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_queue_passes_to_a_process(backend: str, name: str, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        p = ctx.Process(target=_echo_queue, args=(q, backend))
        p.start()
        q.send(b"ping", timeout=5)
        p.join(60)
        assert p.exitcode == 0
        p.close()
        assert q.receive(timeout=5) == (b"ping|" + backend.encode(), 7)
        q.unlink()


@pytest.mark.usefixtures("forkserver")
@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_semaphore_passes_to_a_process(backend: str, name: str, method: str) -> None:
    ctx = multiprocessing.get_context(method)
    s = sem.Semaphore(name, create=True, value=0, backend=backend)
    try:
        p = ctx.Process(target=_take_semaphore, args=(s, backend))
        p.start()
        s.release()
        p.join(60)
        assert p.exitcode == 0
        p.close()
        assert s.value == 0  # the child took what this process released
    finally:
        s.close()
        s.unlink()


def test_unpickling_attaches_never_creates(backend: str, name: str) -> None:
    q = mq.MessageQueue(name, create=True, backend=backend, spin=1e-5, **SMALL)
    s = sem.Semaphore(name, create=True, value=2, backend=backend)
    q_data, s_data = pickle.dumps(q), pickle.dumps(s)
    with pickle.loads(q_data) as q2:
        assert (q2.name, q2.backend, q2.spin) == (q.name, backend, 1e-5)
        assert q2.fileno() != q.fileno()
        q2.send(b"through the copy")
        assert q.receive(0) == (b"through the copy", 0)
    s2 = pickle.loads(s_data)
    assert (s2.name, s2.backend, s2.value) == (s.name, backend, 2)
    s2.close()
    q.close()
    s.close()
    q.unlink()
    s.unlink()
    with pytest.raises(FileNotFoundError):
        pickle.loads(q_data)
    with pytest.raises(FileNotFoundError):
        pickle.loads(s_data)


# ---------------------------------------------------------------------------- asyncio


def _uvloop_run(coro: Coroutine[Any, Any, _T]) -> _T:
    import uvloop

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


LOOPS: dict[str, Callable[[Coroutine[Any, Any, Any]], Any]] = {
    "asyncio": asyncio.run,
    "uvloop": _uvloop_run,
}


@pytest.fixture(scope="session")
def loops_ready() -> None:
    """libuv keeps a process-wide signal pipe from its first loop on: make it before any
    test's leak check looks at the open descriptors."""
    _uvloop_run(asyncio.sleep(0))


@pytest.fixture(params=sorted(LOOPS))
def run(
    request: pytest.FixtureRequest, loops_ready: None
) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return LOOPS[request.param]


def test_async_cancel_and_retry_loses_nothing(
    queue: mq.MessageQueue, run: Callable[[Coroutine[Any, Any, Any]], Any]
) -> None:
    """1,000 receives cancelled at every stage while a thread sends: every message arrives
    exactly once, in order."""
    total = 400
    sender = threading.Thread(
        target=lambda: [queue.send(i.to_bytes(4, "big"), timeout=30) for i in range(total)]
    )

    async def main() -> list[int]:
        got: list[int] = []
        sender.start()
        for round in range(1000):
            task = asyncio.ensure_future(queue.receive_async(timeout=30))
            for _ in range(round % 3):
                await asyncio.sleep(0)
            task.cancel()
            try:
                data, _ = await task
                got.append(int.from_bytes(data, "big"))  # finished before the cancel
            except asyncio.CancelledError:
                pass
        while len(got) < total:
            data, _ = await queue.receive_async(timeout=30)
            got.append(int.from_bytes(data, "big"))
        return got

    got = run(main())
    sender.join(30)
    assert got == list(range(total))
    assert queue.attributes.current_messages == 0


def test_async_waits_do_not_block_the_loop(
    queue: mq.MessageQueue, run: Callable[[Coroutine[Any, Any, Any]], Any]
) -> None:
    """While receive_async and send_async wait, the loop keeps running other tasks: no gap
    of more than 50 ms between the ticks of a 5 ms ticker."""

    async def main() -> float:
        tick = Ticker(0.005)
        await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            await queue.receive_async(timeout=0.3)
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, lambda: threading.Thread(target=queue.send, args=(b"x",)).start())
        assert await queue.receive_async(timeout=10) == (b"x", 0)
        for _ in range(8):
            await queue.send_async(b"fill")
        with pytest.raises(TimeoutError):
            await queue.send_async(b"over", timeout=0.3)
        for _ in range(8):
            queue.receive(0)
        return tick.stop()

    assert run(main()) < 0.05


def test_async_timeouts_like_the_blocking_twin(
    queue: mq.MessageQueue, run: Callable[[Coroutine[Any, Any, Any]], Any]
) -> None:
    async def main() -> None:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await queue.receive_async(timeout=0.1)
        assert time.monotonic() - t0 >= 0.09
        with pytest.raises(TimeoutError):
            await queue.receive_async(timeout=0)
        with pytest.raises(ValueError):
            await queue.receive_async(timeout=-1)
        with pytest.raises(TypeError):
            await queue.receive_async(timeout="1")  # type: ignore[arg-type]

    run(main())


def test_close_while_awaiting_raises_value_error(
    queue: mq.MessageQueue, run: Callable[[Coroutine[Any, Any, Any]], Any]
) -> None:
    async def main() -> tuple[BaseException | None, BaseException | None, float]:
        loop = asyncio.get_running_loop()
        rx = asyncio.ensure_future(queue.receive_async())
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        closer = threading.Thread(target=queue.close)  # joined: closed before the end
        closer.start()
        done = await asyncio.wait_for(asyncio.gather(rx, return_exceptions=True), 5)
        closer.join(5)
        took = time.monotonic() - t0
        # send_async on a full queue, closed from the loop itself
        with mq.MessageQueue(queue.name, backend=queue.backend) as other:
            for _ in range(8):
                other.send(b"fill")
            tx = asyncio.ensure_future(other.send_async(b"more"))
            await asyncio.sleep(0.05)
            loop.call_soon(other.close)
            sent = (await asyncio.gather(tx, return_exceptions=True))[0]
        return done[0], sent, took

    rx_exc, tx_exc, took = run(main())
    assert isinstance(rx_exc, ValueError) and "closed" in str(rx_exc)
    assert isinstance(tx_exc, ValueError) and "closed" in str(tx_exc)
    assert took < 1.0


def test_many_coroutines_receive_from_one_queue(
    queue: mq.MessageQueue, loop_kind: str, loops_ready: None
) -> None:
    """50 coroutines await receive_async on one queue (beside 10 that time out and 10 that
    are cancelled): the 50 messages a thread sends go one to each, none is lost."""

    async def main() -> tuple[list[Any], list[Any]]:
        waiting = [asyncio.ensure_future(queue.receive_async(timeout=5)) for _ in range(50)]
        short = [asyncio.ensure_future(queue.receive_async(timeout=0.1)) for _ in range(10)]
        cancelled = [asyncio.ensure_future(queue.receive_async()) for _ in range(10)]
        await asyncio.sleep(0.05)
        for task in cancelled:
            task.cancel()
        timed_out = await asyncio.gather(*short, return_exceptions=True)
        sender = threading.Thread(
            target=lambda: [queue.send(b"%d" % i, timeout=5) for i in range(50)]
        )
        sender.start()
        got = await asyncio.gather(*waiting, return_exceptions=True)
        sender.join(10)
        await asyncio.gather(*cancelled, return_exceptions=True)
        return got, timed_out

    got, timed_out = run_on(loop_kind, main())
    assert all(isinstance(exc, TimeoutError) for exc in timed_out), timed_out
    assert sorted(int(data) for data, _ in got) == list(range(50)), got
    assert queue.attributes.current_messages == 0


def test_many_coroutines_send_to_one_queue(
    queue: mq.MessageQueue, loop_kind: str, loops_ready: None
) -> None:
    """20 coroutines await send_async on one full queue (beside 5 that are cancelled): as a
    thread makes room, each sends its message once."""
    for _ in range(8):
        queue.send(b"fill")

    async def main() -> list[Any]:
        waiting = [asyncio.ensure_future(queue.send_async(b"%d" % i, timeout=5))
                   for i in range(20)]
        cancelled = [asyncio.ensure_future(queue.send_async(b"cancelled")) for _ in range(5)]
        await asyncio.sleep(0.05)
        for task in cancelled:
            task.cancel()
        await asyncio.gather(*cancelled, return_exceptions=True)
        def receive() -> None:
            for _ in range(28):
                received.append(queue.receive(timeout=5)[0])

        receiver = threading.Thread(target=receive)
        receiver.start()
        sent = await asyncio.gather(*waiting, return_exceptions=True)
        receiver.join(10)
        return sent

    received: list[bytes] = []
    assert run_on(loop_kind, main()) == [None] * 20
    assert sorted(received) == sorted([b"fill"] * 8 + [b"%d" % i for i in range(20)])
    assert queue.attributes.current_messages == 0


def test_close_ends_every_awaiting_coroutine(
    queue: mq.MessageQueue, loop_kind: str, loops_ready: None
) -> None:
    """close() (from another thread, or from the loop) ends every receive_async and
    send_async awaiting the queue with ValueError, promptly."""

    async def main() -> tuple[list[Any], list[Any], float]:
        loop = asyncio.get_running_loop()
        rx = [asyncio.ensure_future(queue.receive_async()) for _ in range(20)]
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        closer = threading.Thread(target=queue.close)  # joined: closed before the end
        closer.start()
        received = await asyncio.wait_for(asyncio.gather(*rx, return_exceptions=True), 5)
        closer.join(5)
        took = time.monotonic() - t0
        with mq.MessageQueue(queue.name, backend=queue.backend) as other:
            for _ in range(8):
                other.send(b"fill")
            tx = [asyncio.ensure_future(other.send_async(b"more")) for _ in range(20)]
            await asyncio.sleep(0.05)
            loop.call_soon(other.close)
            sent = await asyncio.wait_for(asyncio.gather(*tx, return_exceptions=True), 5)
        return received, sent, took

    received, sent, took = run_on(loop_kind, main())
    for exc in received + sent:
        assert isinstance(exc, ValueError) and "closed" in str(exc), exc
    assert took < 1.0


def _close_copy(q: mq.MessageQueue) -> None:
    q.close()


def _wait_on_copy(q: mq.MessageQueue) -> None:
    """In a forked child: a receive that must time out, although the parent closes its
    copy (waking its own waiters) meanwhile."""
    try:
        q.receive(timeout=1.0)
    except TimeoutError:
        return
    raise SystemExit(3)


def test_forked_copies_wake_only_their_own_waiters(queue: mq.MessageQueue) -> None:
    """A forked child inherits the object; a close() in either process ends the waits of
    that process only (each has its own wake-up descriptor after the fork)."""
    fork = multiprocessing.get_context("fork")
    p = fork.Process(target=_close_copy, args=(queue,))
    p.start()
    p.join(30)
    assert p.exitcode == 0
    p.close()
    with pytest.raises(TimeoutError):
        queue.receive(timeout=0.1)
    for _ in range(8):
        queue.send(b"full")
    with pytest.raises(TimeoutError):
        queue.send(b"more", timeout=0.1)
    for _ in range(8):
        queue.receive(0)
    # the parent closes while its thread waits; the child's wait goes on to its timeout
    child = fork.Process(target=_wait_on_copy, args=(queue,))
    child.start()
    assert isinstance(_close_while_receiving(queue, after=0.2), ValueError)
    child.join(30)
    assert child.exitcode == 0
    child.close()


# Run in a child process (it forks with a thread blocked in the queue). The forked child
# closes its copy: every descriptor of the object (the queue twice, the wake-up descriptors)
# must be closed at once, although the parent's thread was counted busy in it at the fork.
FORK_WHILE_BLOCKED = """
    import os, sys, threading, time, warnings
    from fastipc import mq
    name, backend, how = sys.argv[1], sys.argv[2], sys.argv[3]
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads (3.12+)
    q = mq.MessageQueue(name, create=True, max_messages=1, max_message_size=16,
                        backend=backend)
    q.unlink()
    if how == "send":
        q.send(b"full")

    async def twice():
        await (q.receive_async(timeout=5) if how == "receive_async" else
               q.send_async(b"more", timeout=5))

    def wait():
        try:
            if how == "receive":
                q.receive(timeout=5)
            elif how == "send":
                q.send(b"more", timeout=5)
            else:
                import asyncio
                asyncio.run(twice())
        except ValueError:
            pass

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    fds = set(os.listdir("/proc/self/fd"))
    pid = os.fork()
    if pid == 0:
        t0 = time.monotonic()
        q.close()
        left = set(os.listdir("/proc/self/fd"))
        code = 0 if time.monotonic() - t0 < 0.5 and len(fds - left) >= 3 else 1
        if code:
            print("child: closed in", time.monotonic() - t0, "fds", sorted(fds), sorted(left))
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    q.close()
    t.join(5)
    assert not t.is_alive()
    assert status == 0, status
    print("ok")
"""


@pytest.mark.parametrize("how", ["receive", "send", "receive_async"])
def test_fork_while_a_thread_waits_then_close_in_the_child(
    backend: str, name: str, how: str
) -> None:
    """A child forked while a thread of the parent waits in the queue may close its copy:
    the descriptors go at once (the parent's call in progress is not the child's)."""
    r = run_python(FORK_WHILE_BLOCKED, name, backend, how, timeout=30)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr


# ---------------------------------------------------------------------------- one vocabulary

FORMS = {"bare": lambda name: name, "slash": lambda name: "/" + name}
OTHER = {"bare": "slash", "slash": "bare"}


@pytest.mark.parametrize("form", FORMS)
def test_names_as_given(backend: str, name: str, form: str) -> None:
    """``.name`` is the name as given, open, closed and through pickling; the other form
    names the same queue / semaphore."""
    given, other = FORMS[form](name), FORMS[OTHER[form]](name)
    q = mq.MessageQueue(given, create=True, backend=backend, **SMALL)
    s = sem.Semaphore(given, create=True, value=0, backend=backend)
    try:
        assert (q.name, s.name) == (given, given)
        assert repr(given) in repr(q) and repr(given) in repr(s)
        with pickle.loads(pickle.dumps(q)) as q2:
            assert q2.name == given
        s2 = pickle.loads(pickle.dumps(s))
        assert s2.name == given
        s2.close()
        with mq.MessageQueue(other, backend=backend) as q3:
            assert q3.name == other
            q3.send(b"same queue")
        assert q.receive(timeout=1) == (b"same queue", 0)
        s3 = sem.Semaphore(other, backend=backend)
        assert s3.name == other
        s3.release()
        s3.close()
        assert s.value == 1
    finally:
        q.close()
        s.close()
    assert (q.name, s.name) == (given, given)  # also once closed
    q.unlink()
    s.unlink()


NAMED_SENDER = """
import sys
from fastipc import mq, sem
name, backend = sys.argv[1], sys.argv[2]
with mq.MessageQueue(name, backend=backend) as q:
    q.send(b"from " + name.encode(), priority=3)
s = sem.Semaphore(name, backend=backend)
s.release()
s.close()
print(q.name, s.name)
"""


@pytest.mark.parametrize("form", FORMS)
def test_both_forms_across_processes(cross: tuple[str, str], name: str, form: str) -> None:
    """Another process (the other backend) opens by the other form of the name what this
    one made: the same queue and semaphore."""
    sender, receiver = cross
    given, other = FORMS[form](name), FORMS[OTHER[form]](name)
    q = mq.MessageQueue(given, create=True, backend=receiver, **SMALL)
    s = sem.Semaphore(given, create=True, value=0, backend=receiver)
    try:
        done = run_python(NAMED_SENDER, other, sender, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == [other, other]
        assert q.receive(timeout=5) == (b"from " + other.encode(), 3)
        assert s.acquire(timeout=5) is True
    finally:
        q.close()
        s.close()
        q.unlink()
        s.unlink()


def test_close_and_with_leave_the_name(backend: str, name: str) -> None:
    """close() and the end of a with block leave the queue and the semaphore: posix_ipc
    opens them and finds what was queued / posted."""
    import posix_ipc

    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        q.send(b"kept", priority=2)
    q.close()
    s = sem.Semaphore(name, create=True, value=0, backend=backend)
    s.release()
    s.close()
    other_q = posix_ipc.MessageQueue("/" + name)
    other_s = posix_ipc.Semaphore("/" + name)
    try:
        assert other_q.receive(1) == (b"kept", 2)
        assert other_s.value == 1
    finally:
        other_q.close()
        other_s.close()
    q.unlink()
    s.unlink()


@pytest.mark.parametrize("state", ["open", "closed"])
def test_unlink_open_or_closed_then_file_not_found(backend: str, name: str,
                                                   state: str) -> None:
    """unlink() removes the name whether the object is open or closed; once the name is
    gone, FileNotFoundError (from unlink(), and from attaching)."""
    q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
    s = sem.Semaphore(name, create=True, value=0, backend=backend)
    if state == "closed":
        q.close()
        s.close()
    q.unlink()
    s.unlink()
    for obj in (q, s):
        with pytest.raises(FileNotFoundError):
            obj.unlink()
    with pytest.raises(FileNotFoundError):
        mq.MessageQueue(name, backend=backend)
    with pytest.raises(FileNotFoundError):
        sem.Semaphore(name, backend=backend)
    if state == "open":  # the descriptors stay usable until closed
        q.send(b"still open")
        assert q.receive(timeout=1) == (b"still open", 0)
        s.release()
        assert s.acquire(timeout=1) is True
    q.close()
    s.close()
