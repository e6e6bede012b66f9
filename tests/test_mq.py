"""fastipc.mq: POSIX message queues, on both backends, across real processes."""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Optional

import pytest

from fastipc import mq
from helpers import close_ends_call, closed_and_unlinked, later, run_python, start_python
from interrupts import (
    Stop,
    alarms,
    check_raising_handler_ends,
    check_retries_with_remaining_time,
    raise_after_call_to,
)

SMALL = {"max_messages": 8, "max_message_size": 256}


@pytest.fixture
def queue(backend: str, name: str) -> Iterator[mq.MessageQueue]:
    with closed_and_unlinked(mq.MessageQueue(name, create=True, backend=backend, **SMALL),
                             lambda: mq.unlink(name)) as q:
        yield q


# ---------------------------------------------------------------------------- basics


def test_send_receive_exact_bytes(queue: mq.MessageQueue) -> None:
    for data in (b"hello", b"", b"\0" * 7, bytes(range(256))):
        queue.send(data, timeout=1)
        assert queue.receive(timeout=1) == (data, 0)


def test_bytes_like_inputs(queue: mq.MessageQueue) -> None:
    import array

    queue.send(bytearray(b"ba"))
    queue.send(memoryview(b"xmvx")[1:3])
    queue.send(array.array("H", [1, 2]))
    assert queue.receive(0) == (b"ba", 0)
    assert queue.receive(0) == (b"mv", 0)
    assert queue.receive(0) == (array.array("H", [1, 2]).tobytes(), 0)


def test_priorities_highest_first_fifo_within(queue: mq.MessageQueue) -> None:
    sent = [(b"a", 1), (b"b", 5), (b"c", 1), (b"d", mq.MQ_PRIO_MAX - 1), (b"e", 5), (b"f", 0)]
    for data, prio in sent:
        queue.send(data, priority=prio)
    got = [queue.receive(timeout=0) for _ in sent]
    assert got == [(b"d", 32767), (b"b", 5), (b"e", 5), (b"a", 1), (b"c", 1), (b"f", 0)]


def test_attributes(queue: mq.MessageQueue) -> None:
    assert queue.attributes == mq.Attributes(8, 256, 0)
    queue.send(b"x")
    queue.send(b"y")
    a = queue.attributes
    assert (a.max_messages, a.max_message_size, a.current_messages) == (8, 256, 2)
    assert queue.max_message_size == 256
    queue.receive()
    queue.receive()


def test_max_size_message_and_over(queue: mq.MessageQueue) -> None:
    queue.send(b"m" * 256)
    assert queue.receive(timeout=1) == (b"m" * 256, 0)
    with pytest.raises(ValueError, match="257 bytes exceeds"):
        queue.send(b"m" * 257)
    assert queue.attributes.current_messages == 0


def test_defaults_and_names(backend: str, name: str) -> None:
    with mq.MessageQueue("/" + name, create=True, backend=backend) as q:
        assert q.name == "/" + name
        assert q.attributes[:2] == (10, 8192)
        # the mode, through the API (no /dev/mqueue mount needed)
        assert oct(os.fstat(q.fileno()).st_mode & 0o777) == oct(0o600 & ~_umask())
        assert q.backend == backend
        assert name in repr(q)
    # closing does not unlink; attaching by the name without "/" finds it
    with mq.MessageQueue(name, backend=backend) as again:
        assert again.attributes.max_messages == 10
        again.unlink()
    with pytest.raises(FileNotFoundError):
        mq.MessageQueue(name, backend=backend)


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_attach_ignores_sizes(queue: mq.MessageQueue, backend: str) -> None:
    with mq.MessageQueue(queue.name, max_messages=1, max_message_size=1, backend=backend) as q:
        assert q.attributes[:2] == (8, 256)
        q.send(b"from the second handle")
    assert queue.receive(1) == (b"from the second handle", 0)


def test_create_existing_and_attach_missing(
    queue: mq.MessageQueue, backend: str, name: str
) -> None:
    with pytest.raises(FileExistsError) as info:
        mq.MessageQueue(name, create=True, backend=backend)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(FileNotFoundError) as info2:
        mq.MessageQueue(name + "-absent", backend=backend)
    assert info2.value.errno == errno.ENOENT
    with pytest.raises(FileNotFoundError):
        mq.unlink(name + "-absent", backend=backend)


def test_mode(backend: str, name: str) -> None:
    with mq.MessageQueue(name, create=True, mode=0o640, backend=backend, **SMALL) as q:
        assert os.fstat(q.fileno()).st_mode & 0o777 == 0o640 & ~_umask()
        q.unlink()


def test_fileno_pollable_and_not_inheritable(queue: mq.MessageQueue) -> None:
    fd = queue.fileno()
    assert not os.get_inheritable(fd)
    assert select.select([fd], [], [], 0)[0] == []
    assert select.select([], [fd], [], 0)[1] == [fd]
    queue.send(b"x")
    assert select.select([fd], [], [], 1)[0] == [fd]
    queue.receive()


# ---------------------------------------------------------------------------- timeouts


def test_receive_timeouts(queue: mq.MessageQueue) -> None:
    with pytest.raises(TimeoutError):
        queue.receive(timeout=0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match=r"0\.1 s"):
        queue.receive(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 5


def test_send_timeout_when_full(queue: mq.MessageQueue) -> None:
    for i in range(8):
        queue.send(bytes([i]), timeout=0)
    with pytest.raises(TimeoutError):
        queue.send(b"x", timeout=0)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        queue.send(b"x", timeout=0.1)
    assert time.monotonic() - t0 >= 0.09
    assert [queue.receive(0)[0] for _ in range(8)] == [bytes([i]) for i in range(8)]


@pytest.mark.parametrize("forever", [None, float("inf"), 1e12, 10**6])
def test_timeouts_that_never_expire(queue: mq.MessageQueue, forever: Optional[float]) -> None:
    """None, infinity and very long timeouts wait as long as it takes, ints as floats."""
    with later(0.1, queue.send, b"late", 1):
        assert queue.receive(timeout=forever) == (b"late", 1)
    for _ in range(8):
        queue.send(b"full", timeout=forever)
    with later(0.1, queue.receive, 0):
        queue.send(b"room", 2, timeout=forever)
    assert queue.receive(timeout=0) == (b"room", 2)
    assert queue.receive(timeout=1) == (b"full", 0)


@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("-inf")])
def test_bad_timeouts(queue: mq.MessageQueue, bad: float) -> None:
    with pytest.raises(ValueError):
        queue.receive(timeout=bad)
    with pytest.raises(ValueError):
        queue.send(b"x", timeout=bad)


@pytest.mark.parametrize("bad", ["1", b"1", [1], True])
def test_timeout_types(queue: mq.MessageQueue, bad: object) -> None:
    with pytest.raises(TypeError):
        queue.receive(timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        queue.send(b"x", timeout=bad)  # type: ignore[arg-type]


def test_blocking_receive_waits_for_a_thread(queue: mq.MessageQueue) -> None:
    with later(0.1, queue.send, b"late", 3):
        assert queue.receive(timeout=10) == (b"late", 3)


def test_blocking_send_waits_for_room(queue: mq.MessageQueue) -> None:
    for _ in range(8):
        queue.send(b"fill")
    with later(0.1, queue.receive, timeout=5):
        queue.send(b"last", timeout=10)
    assert queue.attributes.current_messages == 8
    got = [queue.receive(0)[0] for _ in range(8)]
    assert got == [b"fill"] * 7 + [b"last"]


def test_threads_share_one_queue(queue: mq.MessageQueue) -> None:
    """Receivers in several threads of one process each get distinct messages."""
    got: list[bytes] = []
    lock = threading.Lock()

    def reader() -> None:
        while True:
            data, _ = queue.receive(timeout=10)
            if data == b"stop":
                return
            with lock:
                got.append(data)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    sent = [b"%d" % i for i in range(300)]
    for data in sent:
        queue.send(data, timeout=10)
    for _ in threads:
        queue.send(b"stop", timeout=10)
    for t in threads:
        t.join(20)
    assert sorted(got) == sorted(sent)


def test_spin(backend: str, name: str) -> None:
    """A spinning queue behaves as a sleeping one: same results, same timeouts."""
    with mq.MessageQueue(name, create=True, spin=0.001, backend=backend, **SMALL) as q:
        assert q.spin == 0.001
        with later(0.05, q.send, b"spun", 1):
            assert q.receive(timeout=10) == (b"spun", 1)
        q.spin = 0.2  # longer than the timeout: the deadline wins
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            q.receive(timeout=0.05)
        assert time.monotonic() - t0 < 0.19
        with pytest.raises(TimeoutError):
            q.receive(timeout=0)
        for _ in range(8):
            q.send(b"x", timeout=0)
        with pytest.raises(TimeoutError):
            q.send(b"x", timeout=0.05)
        assert q.attributes.current_messages == 8
        for _ in range(8):
            q.receive(0)
        q.unlink()


@pytest.mark.parametrize(
    ("bad", "exc"),
    [
        (-1, ValueError),
        (float("inf"), ValueError),
        (1.5, ValueError),
        (float("nan"), ValueError),
        ("1", TypeError),
        (None, TypeError),
    ],
)
def test_bad_spin(queue: mq.MessageQueue, name: str, bad: object, exc: type) -> None:
    with pytest.raises(exc):
        queue.spin = bad  # type: ignore[assignment]
    with pytest.raises(exc):
        mq.MessageQueue(name, spin=bad)  # type: ignore[arg-type]
    assert queue.spin == mq.DEFAULT_SPIN == 10e-6


# ---------------------------------------------------------------------------- signals


def test_signal_retries_with_remaining_time(queue: mq.MessageQueue) -> None:
    check_retries_with_remaining_time(lambda t: queue.receive(timeout=t))
    for _ in range(8):
        queue.send(b"full")
    check_retries_with_remaining_time(lambda t: queue.send(b"x", timeout=t))
    for _ in range(8):
        queue.receive(0)


def test_signal_handler_that_raises_ends_the_call(queue: mq.MessageQueue) -> None:
    check_raising_handler_ends(lambda: queue.receive(timeout=10))
    for _ in range(8):
        queue.send(b"full")
    check_raising_handler_ends(lambda: queue.send(b"x", timeout=10))
    assert queue.attributes.current_messages == 8  # the queue stays usable, nothing added
    for _ in range(8):
        assert queue.receive(0) == (b"full", 0)


def test_signals_during_a_wait_without_timeout(queue: mq.MessageQueue) -> None:
    """A send or receive without a timeout (the native backend's hot path) waits on through
    signals whose handler returns, and ends with the exception of one that raises; the
    queue stays usable."""
    hits: list[int] = []

    def late(call: Callable[[], object]) -> threading.Timer:
        timer = threading.Timer(0.3, call)
        timer.start()
        return timer

    with alarms(lambda *a: hits.append(1), 0.05, 0.05):
        timer = late(lambda: queue.send(b"late", 3))
        assert queue.receive() == (b"late", 3)
        timer.join()
    assert len(hits) >= 2
    check_raising_handler_ends(lambda: queue.receive())
    for _ in range(8):
        queue.send(b"full")
    hits.clear()
    with alarms(lambda *a: hits.append(1), 0.05, 0.05):
        timer = late(lambda: queue.receive(0))
        queue.send(b"room", 9)
        timer.join()
    assert len(hits) >= 2
    check_raising_handler_ends(lambda: queue.send(b"x"))
    assert queue.attributes.current_messages == 8  # nothing added by the ended call
    assert queue.receive(0) == (b"room", 9)
    for _ in range(7):
        assert queue.receive(0) == (b"full", 0)


# ---------------------------------------------------------------------------- asyncio


def test_async_receive_and_send(queue: mq.MessageQueue) -> None:
    async def main() -> list[tuple[bytes, int]]:
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, queue.send, b"one", 2)
        first = await queue.receive_async(timeout=10)
        for _ in range(8):
            await queue.send_async(b"fill", timeout=1)
        loop.call_later(0.05, queue.receive, 1.0)
        await queue.send_async(b"after room", 1, timeout=10)
        rest = [await queue.receive_async(timeout=1) for _ in range(8)]
        return [first, *rest]

    got = asyncio.run(main())
    assert got[0] == (b"one", 2)
    assert got[1] == (b"after room", 1)
    assert got[2:] == [(b"fill", 0)] * 7


def test_async_timeouts(queue: mq.MessageQueue) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await queue.receive_async(timeout=0.05)
        with pytest.raises(TimeoutError):
            await queue.receive_async(timeout=0)
        for _ in range(8):
            await queue.send_async(b"x")
        with pytest.raises(TimeoutError):
            await queue.send_async(b"x", timeout=0.05)
        with pytest.raises(ValueError):
            await queue.receive_async(timeout=-1)

    asyncio.run(main())
    for _ in range(8):
        queue.receive(0)


# ---------------------------------------------------------------------------- bad input


BAD_NAMES = [
    ("a/b", ValueError),
    ("/a/b", ValueError),
    ("nul\0", ValueError),
    ("x" * 256, ValueError),
    ("", ValueError),
    ("/", ValueError),
    (b"bytes", TypeError),
    (None, TypeError),
    (3, TypeError),
]


@pytest.mark.parametrize(("bad", "exc"), BAD_NAMES)
def test_bad_names(backend: str, bad: object, exc: type) -> None:
    with pytest.raises(exc):
        mq.MessageQueue(bad, create=True, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(exc):
        mq.unlink(bad, backend=backend)  # type: ignore[arg-type]


def test_longest_name(backend: str, name: str) -> None:
    name += "n" * (255 - len(name))
    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        q.send(b"ok")
        assert q.receive(0) == (b"ok", 0)
        q.unlink()


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"max_messages": 0}, ValueError),
        ({"max_messages": -1}, ValueError),
        ({"max_message_size": 0}, ValueError),
        ({"max_message_size": -5}, ValueError),
        ({"max_messages": 2**40}, ValueError),
        ({"max_messages": 1.5}, TypeError),
        ({"max_message_size": "8"}, TypeError),
        ({"mode": "0o600"}, TypeError),
        ({"mode": -1}, ValueError),
        ({"mode": 0o10000}, ValueError),
        ({"mode": 0o1600}, ValueError),  # permission bits only, as for every named object
        ({"create": 1}, TypeError),
        ({"backend": "fast"}, ValueError),
        ({"backend": 1}, TypeError),
    ],
)
def test_bad_constructor_arguments(name: str, kwargs: dict[str, object], exc: type) -> None:
    args: dict[str, object] = {"create": True, **kwargs}
    with pytest.raises(exc):
        mq.MessageQueue(name, **args)  # type: ignore[arg-type]


def test_limits_named_in_errors(backend: str, name: str) -> None:
    for kwargs, what in (
        ({"max_messages": mq.HARD_MSGMAX + 1, "max_message_size": 16}, "max_messages"),
        ({"max_messages": 1, "max_message_size": mq.HARD_MSGSIZEMAX + 1}, "max_message_size"),
    ):
        with pytest.raises(mq.LimitError) as info:
            mq.MessageQueue(name, create=True, backend=backend, **kwargs)  # type: ignore[arg-type]
        assert info.value.errno == errno.EINVAL
        assert isinstance(info.value, OSError) and isinstance(info.value, ValueError)
        assert what in str(info.value)
    lim = mq.limits()
    if lim.msg_max > 0 and lim.msg_max < mq.HARD_MSGMAX:
        try:
            q = mq.MessageQueue(
                name,
                create=True,
                max_messages=lim.msg_max + 1,
                max_message_size=16,
                backend=backend,
            )
        except mq.LimitError as exc:
            assert "fs.mqueue.msg_max" in str(exc) and "sysctl" in str(exc)
        else:  # a process with CAP_SYS_RESOURCE may go past msg_max
            q.close()
            mq.unlink(name)


def test_rlimit_named_in_error(backend: str, name: str) -> None:
    code = """
        import resource, sys
        from fastipc import mq
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (1024, 1024))
        try:
            mq.MessageQueue(sys.argv[1], create=True, backend=sys.argv[2])
        except mq.LimitError as exc:
            print(exc.errno, exc)
    """
    out = run_python(code, name, backend, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"{errno.EMFILE} ")
    assert "RLIMIT_MSGQUEUE" in out.stdout and "ulimit -q" in out.stdout


def test_limits() -> None:
    lim = mq.limits()
    assert isinstance(lim, mq.Limits)
    assert lim.msg_max >= 1 and lim.msgsize_max >= 128 and lim.queues_max >= 0
    assert mq.MQ_PRIO_MAX >= 32


@pytest.mark.parametrize(
    ("prio", "exc"),
    [
        (-1, ValueError),
        (mq.MQ_PRIO_MAX, ValueError),
        (2**70, ValueError),  # past what C takes
        (-(2**70), ValueError),
        ("1", TypeError),
        (1.0, TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_bad_priorities(queue: mq.MessageQueue, prio: object, exc: type) -> None:
    with pytest.raises(exc):
        queue.send(b"x", priority=prio)  # type: ignore[arg-type]
    assert queue.attributes.current_messages == 0


@pytest.mark.parametrize("data", ["text", 42, None, [1, 2], memoryview(b"abcd")[::2]])
def test_bad_data(queue: mq.MessageQueue, data: object) -> None:
    with pytest.raises(TypeError):
        queue.send(data)
    assert queue.attributes.current_messages == 0


def test_closed_queue(backend: str, name: str) -> None:
    q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
    q.close()
    q.close()  # idempotent
    assert q.closed
    assert "closed" in repr(q)
    for call in (
        lambda: q.send(b"x"),
        lambda: q.receive(0),
        lambda: q.attributes,
        lambda: q.max_message_size,
        lambda: q.fileno(),
        lambda: q.__enter__(),
        lambda: q.spin,
        lambda: asyncio.run(q.receive_async(0)),
        lambda: asyncio.run(q.send_async(b"x")),
        lambda: pickle.dumps(q),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    q.unlink()


def test_methods_taken_before_close(backend: str, name: str) -> None:
    """send and receive taken from the open queue (as a loop binds them) raise ValueError
    once it is closed, whatever their arguments, and the descriptor is gone."""
    q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
    q.unlink()
    fd = q.fileno()
    send, receive = q.send, q.receive
    send(b"kept")
    q.close()
    for call in (
        lambda: send(b"x"),
        lambda: send(b"x", 1, 0.1),
        lambda: send(memoryview(b"x")),
        lambda: receive(),
        lambda: receive(0),
    ):
        with pytest.raises(ValueError, match="closed"):
            call()
    with pytest.raises(OSError):
        os.fstat(fd)


def test_subclass_methods_stay_in_charge(backend: str, name: str) -> None:
    """A subclass's own send and receive are the ones called (the native backend's hot
    paths are for MessageQueue's), and a close from another thread still ends their wait."""

    class Counting(mq.MessageQueue):
        calls = 0

        def send(self, data: Any, priority: int = 0, timeout: Optional[float] = None) -> None:
            self.calls += 1
            super().send(data, priority, timeout)

        def receive(self, timeout: Optional[float] = None) -> tuple[bytes, int]:
            self.calls += 1
            return super().receive(timeout)

    q = Counting(name, create=True, backend=backend, **SMALL)
    q.unlink()
    q.send(b"x", 2)
    assert q.receive() == (b"x", 2)
    assert q.calls == 2
    error = close_ends_call(q.receive, q.close, settle=0.05)
    assert isinstance(error, ValueError), error


def test_unlink_after_close(backend: str, name: str) -> None:
    """unlink() is an operation on the name: it works on a closed object, as in posix_ipc
    and multiprocessing.shared_memory (and raises FileNotFoundError once the name is gone)."""
    q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
    q.close()
    q.unlink()
    with pytest.raises(FileNotFoundError):
        mq.MessageQueue(name, backend=backend)
    with pytest.raises(FileNotFoundError):
        q.unlink()


def test_context_manager_closes_not_unlinks(backend: str, name: str) -> None:
    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        q.send(b"kept")
    assert q.closed
    with mq.MessageQueue(name, backend=backend) as again:
        assert again.receive(0) == (b"kept", 0)
        again.unlink()


def test_unlinked_queue_stays_usable(queue: mq.MessageQueue, backend: str, name: str) -> None:
    mq.unlink(name, backend=backend)
    queue.send(b"still here")
    assert queue.receive(0) == (b"still here", 0)
    mq.MessageQueue(name, create=True, backend=backend, **SMALL).close()  # the name is free


def test_garbage_collected_queue_closes_its_fd(backend: str, name: str) -> None:
    q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
    fd = q.fileno()
    del q
    with pytest.raises(OSError):
        os.fstat(fd)
    mq.unlink(name)


def test_fd_not_inherited_by_children(queue: mq.MessageQueue) -> None:
    out = run_python("import os, sys; os.fstat(int(sys.argv[1]))", str(queue.fileno()), timeout=30)
    assert out.returncode != 0 and "Bad file descriptor" in out.stderr


# ---------------------------------------------------------------------------- processes

SENDER = """
    import sys
    from fastipc import mq
    name, backend, count, prio = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tag = sys.argv[5].encode()
    with mq.MessageQueue(name, backend=backend) as q:
        for i in range(count):
            q.send(tag + b"-%d" % i, priority=prio, timeout=30)
"""

RECEIVER = """
    import sys
    from fastipc import mq
    name, backend = sys.argv[1], sys.argv[2]
    with mq.MessageQueue(name, backend=backend) as q:
        while True:
            data, prio = q.receive(timeout=30)
            if data == b"stop":
                break
            print(data.decode(), prio, flush=True)
"""


def test_cross_backend_processes(cross: tuple[str, str], name: str) -> None:
    sender, receiver = cross
    with mq.MessageQueue(name, create=True, backend=receiver, **SMALL) as q:
        p = start_python(SENDER, name, sender, "200", "7", "w")
        try:
            got = [q.receive(timeout=30) for _ in range(200)]
        finally:
            p.wait(30)
        q.unlink()
    assert p.returncode == 0, p.stderr.read() if p.stderr else ""
    if p.stderr:
        p.stderr.close()
    if p.stdout:
        p.stdout.close()
    assert got == [(b"w-%d" % i, 7) for i in range(200)]


def test_two_writers_one_reader_priorities(cross: tuple[str, str], name: str) -> None:
    """The article's story: two clients write with different priorities; the server reads
    the higher priority first, and each writer's messages in order."""
    writer, reader = cross
    with mq.MessageQueue(
        name, create=True, max_messages=10, max_message_size=64, backend=reader
    ) as q:
        low = run_python(SENDER, name, writer, "5", "1", "low", timeout=30)
        high = run_python(
            SENDER, name, "native" if writer == "pure" else "pure", "5", "9", "high", timeout=30
        )
        assert low.returncode == 0 and high.returncode == 0, low.stderr + high.stderr
        got = [q.receive(timeout=5) for _ in range(10)]
        q.unlink()
    assert got == [(b"high-%d" % i, 9) for i in range(5)] + [(b"low-%d" % i, 1) for i in range(5)]


def _feed_readers(
    q: mq.MessageQueue,
    readers: list[subprocess.Popen[str]],
    messages: list[bytes],
    priority: int = 0,
    gap: float = 0.0,
    asleep: bool = False,
) -> list[tuple[str, str]]:
    """Send ``messages`` (``gap`` seconds apart; ``asleep``: once every reader said "ready"
    and had time to fall asleep in its receive), then one "stop" per reader process: their
    (stdout, stderr) once they ended. Readers still running when this fails are killed."""
    try:
        if asleep:
            for p in readers:
                assert p.stdout is not None and p.stdout.readline() == "ready\n"
            time.sleep(0.3)
        for data in messages:
            q.send(data, priority=priority, timeout=30)
            if gap:
                time.sleep(gap)
        for _ in readers:
            q.send(b"stop", timeout=30)
        return [p.communicate(timeout=60) for p in readers]
    finally:
        for p in readers:
            if p.poll() is None:
                p.kill()
                p.communicate()


def test_several_readers_take_turns(cross: tuple[str, str], name: str) -> None:
    """Several reader processes on one queue: each message reaches exactly one of them."""
    writer, reader = cross
    with mq.MessageQueue(name, create=True, backend=writer, **SMALL) as q:
        readers = [start_python(RECEIVER, name, reader) for _ in range(3)]
        sent = [b"m-%d" % i for i in range(300)]
        outs = _feed_readers(q, readers, sent, priority=4)
        q.unlink()
    got = []
    for p, (out, err) in zip(readers, outs, strict=True):
        assert p.returncode == 0, err
        got += [line.split()[0].encode() for line in out.splitlines()]
        assert all(line.endswith(" 4") for line in out.splitlines())
    assert sorted(got) == sorted(sent)  # none lost, none duplicated


# A reader that receives until "stop", then prints its voluntary context switches meanwhile
# (each time it slept and was woken) and the messages it got.
COUNTING_RECEIVER = """
    import os, resource, sys
    from fastipc import mq
    name, backend, cpu = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cpu >= 0:
        os.sched_setaffinity(0, {cpu})
    with mq.MessageQueue(name, backend=backend) as q:
        print("ready", flush=True)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw
        got = []
        while True:
            data = q.receive(timeout=30)[0]
            if data == b"stop":
                break
            got.append(data.decode())
        switches = resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw - before
    print(switches, *got)
"""


def _blocked_readers_share(
    backend: str, name: str, readers: int, messages: int, gap: float, cpus: tuple[int, ...] = ()
) -> tuple[list[tuple[int, int]], list[int]]:
    """``readers`` processes blocked in receive() on one queue (reader i on CPU cpus[i], if
    given), then ``messages`` messages (their numbers) sent ``gap`` seconds apart, then one
    "stop" each: (messages received, context switches) of each reader, and which reader got
    each message."""
    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        procs = [start_python(COUNTING_RECEIVER, name, backend, str(cpus[i] if cpus else -1))
                 for i in range(readers)]
        sent = [b"%d" % i for i in range(messages)]
        outs = _feed_readers(q, procs, sent, gap=gap, asleep=True)
        q.unlink()
    counts = []
    taker = [-1] * messages
    for reader, (p, (out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, err
        switches, *got = out.split()
        counts.append((len(got), int(switches)))
        for number in map(int, got):
            assert taker[number] == -1, f"message {number} received twice"
            taker[number] = reader
    assert -1 not in taker, "a message was lost"
    return counts, taker


def test_a_message_wakes_one_blocked_reader(backend: str, name: str) -> None:
    """8 reader processes asleep on one queue, 2,000 messages sent a little apart (so that
    each finds the readers asleep): each message wakes the one reader that gets it (about
    one context switch per message received, as the kernel's own blocking receive), not
    all 8; and the readers take turns, none starved."""
    counts, _ = _blocked_readers_share(backend, name, readers=8, messages=2000, gap=0.0002)
    for got, switches in counts:
        assert got >= 2000 // 8 // 4, counts  # no reader starved
        assert switches <= 2 * got + 20, counts  # all 8 woken per message: about 8 * got
    assert sum(switches for _, switches in counts) <= 1.5 * 2000, counts


def test_blocked_readers_take_turns(backend: str, name: str) -> None:
    """2 reader processes asleep on one queue, 20 messages 20 ms apart: they take turns, as
    the kernel gives each message to the reader asleep the longest, not to whichever of the
    two woken readers runs first: here the one on the sender's CPU, given one."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        cpus.append(cpus[0])
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})  # the sender
    try:
        counts, taker = _blocked_readers_share(
            backend, name, readers=2, messages=20, gap=0.02, cpus=(cpus[0], cpus[1])
        )
    finally:
        os.sched_setaffinity(0, mine)
    assert all(got >= 5 for got, _ in counts), counts
    repeats = sum(a == b for a, b in itertools.pairwise(taker))
    assert repeats <= 5, taker  # turn by turn (woken together: the one on my CPU, mostly)


def test_reader_started_before_writer_waits(cross: tuple[str, str], name: str) -> None:
    writer, reader = cross
    with mq.MessageQueue(name, create=True, backend=writer, **SMALL) as q:
        p = start_python(RECEIVER, name, reader)
        try:
            time.sleep(0.3)
            assert p.poll() is None  # waiting, not failed
            q.send(b"late", priority=2, timeout=10)
            q.send(b"stop", timeout=10)
            out, err = p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        q.unlink()
    assert p.returncode == 0, err
    assert out.split() == ["late", "2"]


def test_writer_killed_mid_stream(cross: tuple[str, str], name: str) -> None:
    """A writer killed while blocked on a full queue leaves whole messages only, in order."""
    writer, reader = cross
    code = """
        import sys
        from fastipc import mq
        with mq.MessageQueue(sys.argv[1], backend=sys.argv[2]) as q:
            for i in range(1000):
                q.send(b"%d:" % i + bytes(100), timeout=30)
                if i == 7:
                    print("full", flush=True)
    """
    with mq.MessageQueue(name, create=True, backend=reader, **SMALL) as q:
        p = start_python(code, name, writer)
        try:
            assert p.stdout is not None
            assert p.stdout.readline() == "full\n"  # 8 sent; the 9th blocks on the full queue
            time.sleep(0.1)
            p.kill()
            p.communicate(timeout=30)
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
        got = []
        while True:
            try:
                got.append(q.receive(timeout=0)[0])
            except TimeoutError:
                break
        q.unlink()
    assert got == [b"%d:" % i + bytes(100) for i in range(8)]


def test_reader_times_out_without_writer(backend: str, name: str) -> None:
    code = """
        import sys, time
        from fastipc import mq
        with mq.MessageQueue(sys.argv[1], backend=sys.argv[2]) as q:
            t0 = time.monotonic()
            try:
                q.receive(timeout=0.2)
            except TimeoutError:
                print("timeout", round(time.monotonic() - t0, 1))
    """
    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        out = run_python(code, name, backend, timeout=30)
        q.unlink()
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "timeout"


# ---------------------------------------------------------------------------- CLI


def test_cli_serve_and_send(backend: str, name: str) -> None:
    serve = subprocess.Popen(
        [sys.executable, "-m", "fastipc", "--backend", backend, "mq", "serve", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job ignores SIGINT, and so would the child: Python then
        # installs no KeyboardInterrupt handler, and the SIGINT below would do nothing
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert serve.stdout is not None
        header = serve.stdout.readline()
        # the name as given (without its "/" here)
        assert header.startswith(f"queue {name}: max_messages=10 max_message_size=8192")
        send = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastipc",
                "--backend",
                backend,
                "mq",
                "send",
                name,
                "--priority",
                "3",
            ],
            input="hello\nwörld\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert send.returncode == 0, send.stderr
        lines = [serve.stdout.readline() for _ in range(2)]
        assert lines == [
            "received 5 bytes, priority 3: hello\n",
            "received 6 bytes, priority 3: wörld\n",
        ]
        serve.send_signal(signal.SIGINT)
        serve.communicate(timeout=30)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.communicate()
    with pytest.raises(FileNotFoundError):  # unlinked on exit
        mq.MessageQueue(name)


def test_cli_errors_are_one_line(name: str) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "fastipc", "mq", "send", name],
        input="x\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("fastipc: error:") and "No such file" in missing.stderr
    assert missing.stderr.count("\n") == 1
    limit = subprocess.run(
        [sys.executable, "-m", "fastipc", "mq", "serve", name, "--max-messages", "100000"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert limit.returncode == 2
    assert "max_messages" in limit.stderr and limit.stderr.count("\n") == 1
    with mq.MessageQueue(name, create=True, **SMALL) as q:
        prio = subprocess.run(
            [sys.executable, "-m", "fastipc", "mq", "send", name, "-p", "99999"],
            input="x\n",
            capture_output=True,
            text=True,
            timeout=30,
        )
        q.unlink()
    assert prio.returncode == 2 and "priority" in prio.stderr


def test_an_object_used_only_for_one_call(backend: str, name: str) -> None:
    """``MessageQueue(name).send(data)``: the object is dropped before its call runs (nothing
    else names it), and the call must still be made on an open queue; then, with the garbage
    collector off, the descriptors are closed at once by reference counting alone."""
    import gc

    fds = set(os.listdir("/proc/self/fd"))
    gc.disable()
    try:
        with mq.MessageQueue(name, create=True, backend=backend) as q:
            mq.MessageQueue(name, backend=backend).send(b"one", 3)
            mq.MessageQueue(name, backend=backend).send(b"two", timeout=1)
            assert mq.MessageQueue(name, backend=backend).receive() == (b"one", 3)
            assert mq.MessageQueue(name, backend=backend).receive(0) == (b"two", 0)
            other = mq.MessageQueue(name, backend=backend)
            other.send(b"three")
            assert other.receive(1) == (b"three", 0)
            del other
            q.unlink()
        assert set(os.listdir("/proc/self/fd")) <= fds
    finally:
        gc.enable()


# Run in a child process (a timer raises into its receives). A writer process sends N
# numbered messages; the reader receives them while a handler raises every 0.3 ms, and
# reports how many it got, how many exceptions, duplicates, and whether the order held.
RECEIVES_INTERRUPTED = """
    import os, signal, sys
    from fastipc import mq
    name, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    q = mq.MessageQueue(name, create=True, max_messages=4, max_message_size=16,
                        backend=backend)
    q.unlink()
    pid = os.fork()
    if pid == 0:
        for i in range(n):
            q.send(b"%d" % i)
        os._exit(0)

    class Stop(Exception):
        pass

    armed = False

    def handler(*args):
        if armed:
            raise Stop

    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0003)
    got, stops, writer_done = [], 0, False
    while True:
        if not writer_done:
            writer_done = os.waitpid(pid, os.WNOHANG)[0] != 0
        elif q.attributes.current_messages == 0:
            try:  # what an interrupted receive kept
                armed = False
                got.append(int(q.receive(timeout=0)[0]))
                continue
            except TimeoutError:
                break
        try:
            armed = True
            data, _ = q.receive(timeout=1)
            armed = False
        except Stop:
            armed = False
            stops += 1
            continue
        except TimeoutError:
            armed = False
            continue
        got.append(int(data))
    signal.setitimer(signal.ITIMER_REAL, 0)
    print(len(got), stops, len(got) - len(set(got)), got == sorted(got))
"""


def test_an_exception_raised_into_receive_loses_no_message(backend: str, name: str) -> None:
    """A signal handler that raises as a receive returns its message: on the native backend
    the message is kept for the next receive (none lost); on either, none is duplicated or
    reordered (the pure backend may drop the one it was taking: see the README)."""
    n = 3000
    r = run_python(RECEIVES_INTERRUPTED, name, backend, str(n), timeout=60)
    assert r.returncode == 0, r.stderr
    got, stops, dups, ordered = r.stdout.split()
    assert int(stops) > 10 and dups == "0" and ordered == "True", r.stdout
    if backend == "native":
        assert int(got) == n, r.stdout


def test_a_message_kept_by_an_interrupted_receive(name: str) -> None:
    """Native: an exception raised as the C receive returns its message keeps that message
    for the next receive, which returns it before the queue's; once the object is closed, a
    receive taken before close() raises ValueError, kept message or not."""
    with mq.MessageQueue(name, create=True, backend="native", **SMALL) as q:
        q.unlink()
        q.send(b"first", 1)
        q.send(b"second", 2)
        hot = q.receive.__code__
        with pytest.raises(Stop), raise_after_call_to(hot, "_c_receive"):
            q.receive()
        q.send(b"urgent", 9)
        assert q.receive(0) == (b"second", 2)  # kept: before the queue's
        assert q.receive(0) == (b"urgent", 9)
        with pytest.raises(Stop), raise_after_call_to(hot, "_c_receive"):
            q.receive(timeout=1)
        receive = q.receive
    with pytest.raises(ValueError, match="closed"):
        receive()


# ---------------------------------------------------------------------------- the native handle


def test_send_and_receive_are_the_handles_methods(backend: str, name: str) -> None:
    """On the native backend, send and receive are those of the handle type (C; receive in
    the one frame that keeps an interrupted message), nothing is stored on the object, and
    both backends show one signature and docstring."""
    import inspect

    with mq.MessageQueue(name, create=True, backend=backend, **SMALL) as q:
        q.unlink()
        assert "send" not in vars(q) and "receive" not in vars(q)
        if backend == "native":
            handle = type(q).__mro__[1]
            assert handle.__name__ == "MqHandle" and type(q).send is handle.send
            assert q.receive.__code__.co_names[0] == "_c_receive"
        pure = mq.MessageQueue.__dict__

        def params(f: Any) -> list[tuple[str, object, object]]:
            return [(p.name, p.default, p.kind)
                    for p in inspect.signature(f).parameters.values()]

        for method in ("send", "receive"):
            assert params(getattr(q, method)) == params(pure[method].__get__(q)), method
            assert " ".join(getattr(q, method).__doc__.split()) == " ".join(
                pure[method].__doc__.split()), method


BAD_CALLS: list[tuple[str, tuple[object, ...], dict[str, object]]] = [
    ("send", ("text",), {}),
    ("send", (42,), {}),
    ("send", (memoryview(b"abcd")[::2],), {}),
    ("send", (b"x", -1), {}),
    ("send", (b"x", 2**15), {}),
    ("send", (b"x", 2**70), {}),
    ("send", (b"x", True), {}),
    ("send", (b"x", 1.0), {}),
    ("send", (b"x", 0, -1.0), {}),
    ("send", (b"x", 0, float("nan")), {}),
    ("send", (b"x", 0, "1"), {}),
    ("send", (b"x" * 257,), {}),
    ("send", ("text", -1, -1), {}),  # the first wrong argument is named
    ("send", (b"x",), {"prio": 1}),
    ("receive", (-0.5,), {}),
    ("receive", (float("nan"),), {}),
    ("receive", (True,), {}),
    ("receive", (), {"tmo": 1}),
]


@pytest.mark.parametrize(("method", "args", "kwargs"), BAD_CALLS)
def test_bad_arguments_same_on_both_backends(
    name: str, method: str, args: tuple[object, ...], kwargs: dict[str, object]
) -> None:
    """Each backend refuses a bad argument with the same exception and message, and sends
    nothing."""
    said = []
    for backend in ("native", "pure"):
        q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
        try:
            with pytest.raises((TypeError, ValueError)) as info:
                getattr(q, method)(*args, **kwargs)
            assert q.attributes.current_messages == 0
        finally:
            q.close()
            q.unlink()
        said.append((type(info.value), str(info.value)))
    assert said[0] == said[1]


def test_dropped_queue_closes_at_once_without_the_collector(backend: str, name: str) -> None:
    """With the garbage collector off, dropping the last reference closes the descriptors
    at once: the object, its handle, a message kept by an interrupted receive and the one
    receive returned last form no cycle."""
    import gc

    fds = set(os.listdir("/proc/self/fd"))
    gc.disable()
    try:
        q = mq.MessageQueue(name, create=True, backend=backend, **SMALL)
        q.unlink()
        for i in range(3):
            q.send(b"%d" % i)
        assert q.receive() == (b"0", 0)
        if backend == "native":
            with pytest.raises(Stop), raise_after_call_to(q.receive.__code__, "_c_receive"):
                q.receive(timeout=1)
        receive = q.receive
        del q
        assert set(os.listdir("/proc/self/fd")) > fds  # the bound method holds it
        assert receive(0) == (b"1", 0)
        del receive
        assert set(os.listdir("/proc/self/fd")) <= fds
    finally:
        gc.enable()

