"""The queues' vocabulary, shared with every named fastipc object: names as given, how many
of a partial batch went (``messages_sent``), what ``close()`` and ``unlink()`` do to a name,
and ``owner=`` when attaching. On both backends, for Queue, shm.Queue (NamedQueue),
JoinableQueue and SimpleQueue."""

from __future__ import annotations

import asyncio
import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import PREFIX, SHM_DIR
from fastipc import JoinableQueue, SimpleQueue
from fastipc import queue as fq
from fastipc.joinable import TASKS_SUFFIX
from fastipc.queue import Full, NamedQueue, Queue, describe
from helpers import run_python

SMALL = 1 << 16

# the classes that take a name, each as a factory (name, create, **kwargs) -> queue
KINDS: dict[str, Callable[..., Queue]] = {
    "Queue": lambda name, create=False, **kw: Queue(name=name, create=create, **kw),
    "NamedQueue": lambda name, create=False, **kw: NamedQueue(name, create, **kw),
    "JoinableQueue": lambda name, create=False, **kw: JoinableQueue(name=name, create=create,
                                                                   **kw),
    "SimpleQueue": lambda name, create=False, **kw: SimpleQueue(name=name, create=create,
                                                               **kw),
}


@pytest.fixture(autouse=True)
def anonymous_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anonymous queues made by tests carry the prefix the leak check looks at."""
    monkeypatch.setattr(fq, "ANONYMOUS_PREFIX", PREFIX + "anon-")


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _files_of(name: str) -> list[str]:
    """The queue's name and every file beside it (its segments, spill files, task count)."""
    return sorted(p.name for p in SHM_DIR.iterdir()
                  if p.name == name or p.name.startswith(name + "."))


def _fastipc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastipc", *args], capture_output=True,
                          text=True, timeout=30)


# ---------------------------------------------------------------- 1. names as given


@pytest.mark.parametrize("slash", [False, True], ids=["x", "/x"])
def test_name_with_or_without_slash_is_one_queue_and_kept_as_given(
        backend: str, name: str, kind: str, slash: bool) -> None:
    given = "/" + name if slash else name
    other = name if slash else "/" + name
    make = KINDS[kind]
    q = make(given, True, capacity=SMALL, backend=backend)
    try:
        assert q.name == given
        with make(other, backend=backend) as peer:
            assert peer.name == other
            peer.put("across")
            assert q.get(timeout=1) == "across"
        with pickle.loads(pickle.dumps(q)) as copy:
            assert copy.name == given
        with pytest.raises(FileExistsError):
            make(other, True, backend=backend)
        assert os.path.exists(f"{SHM_DIR}/{name}")
    finally:
        q.close()
        q.unlink()
    assert q.name == given  # also once closed


def test_anonymous_names_have_no_slash(backend: str) -> None:
    for make in (Queue, JoinableQueue, SimpleQueue):
        with make(capacity=SMALL, backend=backend) as q:
            assert not q.name.startswith("/")
            assert os.path.exists(f"{SHM_DIR}/{q.name}")
            with pickle.loads(pickle.dumps(q)) as copy:
                assert copy.name == q.name


# ---------------------------------------------------------------- 2. messages_sent


def _counts(exc: BaseException) -> tuple[int, int]:
    return exc.messages_sent, exc.messages_put  # type: ignore[attr-defined]


def _stops_after(n: int) -> Iterator[int]:
    yield from range(n)
    raise RuntimeError("the producer's iterable failed")


@pytest.mark.parametrize("make", [Queue, JoinableQueue], ids=["Queue", "JoinableQueue"])
def test_partial_put_many_says_messages_sent(backend: str, make: type[Queue]) -> None:
    """Whatever stops put_many part way (a full queue, an object that cannot be pickled, the
    iterable's own error), the exception says how many went with ``messages_sent``, and
    with ``messages_put``, its deprecated alias: the same value."""
    with make(3, capacity=SMALL, backend=backend) as q:
        with pytest.raises(Full) as full:
            q.put_many(range(5), timeout=0.05)
        assert _counts(full.value) == (3, 3)
        assert q.get_many(timeout=1) == [0, 1, 2]
        with pytest.raises(Full) as full:
            q.put_many(range(5), block=False)
        assert _counts(full.value) == (3, 3)
        assert q.get_many(timeout=1) == [0, 1, 2]
        with pytest.raises((TypeError, pickle.PicklingError, AttributeError)) as bad:
            q.put_many([1, 2, lambda: 0])
        assert _counts(bad.value) == (2, 2)
        assert q.get_many(timeout=1) == [1, 2]
        with pytest.raises(RuntimeError) as failed:
            q.put_many(_stops_after(2))
        assert _counts(failed.value) == (2, 2)
        assert q.get_many(timeout=1) == [0, 1]


@pytest.mark.parametrize("make", [Queue, JoinableQueue], ids=["Queue", "JoinableQueue"])
def test_partial_put_many_async_says_messages_sent(backend: str, make: type[Queue]) -> None:
    async def main(q: Queue) -> None:
        with pytest.raises(Full) as full:
            await q.put_many_async(range(5), timeout=0.05)
        assert _counts(full.value) == (3, 3)
        assert q.get_many(timeout=1) == [0, 1, 2]
        with pytest.raises((TypeError, pickle.PicklingError, AttributeError)) as bad:
            await q.put_many_async([1, 2, lambda: 0])
        assert _counts(bad.value) == (2, 2)
        assert q.get_many(timeout=1) == [1, 2]
        with pytest.raises(RuntimeError) as failed:
            await q.put_many_async(_stops_after(2))
        assert _counts(failed.value) == (2, 2)
        assert q.get_many(timeout=1) == [0, 1]

    with make(3, capacity=SMALL, backend=backend) as q:
        asyncio.run(main(q))


# ------------------------------------------------------- 3. close() keeps, unlink() removes

_CREATOR = """
import sys
from fastipc import JoinableQueue
from fastipc.queue import NamedQueue, Queue
name, kind, backend, how = sys.argv[1:]
if kind == "Queue":
    q = Queue(name=name, create=True, capacity=1 << 16, backend=backend)
elif kind == "NamedQueue":
    q = NamedQueue(name, True, capacity=1 << 16, backend=backend)
else:
    q = JoinableQueue(name=name, create=True, capacity=1 << 16, backend=backend)
q.put("first")
q.put_bytes(b"L" * 100_000)  # larger than half the ring: a segment of its own
q.put_many([b"s" * 1000] * 100)  # more than the ring holds: spill files
if how == "close":
    q.close()
elif how == "with":
    with q:
        pass
# "exit": the interpreter's normal exit, the queue still open
"""


@pytest.mark.parametrize("how", ["close", "with", "exit"])
@pytest.mark.parametrize("kind_", ["Queue", "NamedQueue", "JoinableQueue"])
def test_named_queue_outlives_its_creator_until_unlink(backend: str, name: str, kind_: str,
                                                       how: str) -> None:
    """The creator of a named queue closes it (or ends normally): the name stays, with every
    message, large and spilled ones included; another process attaches and takes them;
    ``fastipc rm --stale`` leaves it; unlink() removes the name and every file of the
    queue, whether the object is open or closed, and FileNotFoundError once gone."""
    res = run_python(_CREATOR, name, kind_, backend, how)
    assert res.returncode == 0, res.stderr
    files = _files_of(name)
    assert name in files
    assert any(f[len(name) + 1:].startswith("s") for f in files if f != name)  # spilled
    info = describe(f"{SHM_DIR}/{name}")
    assert info is not None and info.alive, info
    out = _fastipc("rm", "--stale", "--match", name)
    assert out.returncode == 0, out.stderr
    assert _files_of(name) == files  # kept: nothing of it is stale
    q = KINDS[kind_](name, backend=backend)
    try:
        assert q.get(timeout=1) == "first"
        assert q.get_bytes(timeout=1) == b"L" * 100_000
        assert q.get_many(200, timeout=1) + q.get_many(200, timeout=1) == [b"s" * 1000] * 100
        assert q.qsize() == 0
        q.put("left")  # what is queued at unlink() goes with the name
        if how == "close":
            q.close()
        q.unlink()
        assert _files_of(name) == []
        with pytest.raises(FileNotFoundError):
            q.unlink()
    finally:
        q.close()
    with pytest.raises(FileNotFoundError):
        KINDS[kind_](name, backend=backend)


def test_unlink_removes_the_queues_files_while_open(backend: str, name: str) -> None:
    """unlink() of an open queue removes its name and every file beside it; the handles
    attached keep the ring (what is queued there stays theirs to take)."""
    with NamedQueue(name, create=True, capacity=SMALL, backend=backend) as q:
        q.put("first")
        q.put_bytes(b"L" * 100_000)
        q.put_many([b"s" * 1000] * 100)
        assert len(_files_of(name)) > 2
        with NamedQueue(name, backend=backend) as peer:
            q.unlink()
            assert _files_of(name) == []
            assert peer.get(timeout=1) == "first"


def test_joinable_named_keeps_its_task_count(backend: str, name: str) -> None:
    q = JoinableQueue(name=name, create=True, capacity=SMALL, backend=backend)
    q.put("job")
    q.close()
    assert os.path.exists(f"{SHM_DIR}/{name}{TASKS_SUFFIX}")
    with JoinableQueue(name=name, backend=backend) as later:
        assert later.unfinished_tasks == 1
        assert later.get(timeout=1) == "job"
        later.task_done()
        later.join(timeout=1)
    q.unlink()
    assert _files_of(name) == []


def test_anonymous_queue_still_removes_itself(backend: str) -> None:
    for make in (Queue, JoinableQueue, SimpleQueue):
        q: Any = make(capacity=SMALL, backend=backend)
        q.put_bytes(b"L" * 100_000)
        name = q.name
        assert _files_of(name)
        q.close()
        assert _files_of(name) == []


def test_killed_creator_leaves_a_stale_named_queue(backend: str, name: str) -> None:
    """What tells a kept queue from a stale one: a creator that died holding it (SIGKILL)
    leaves it stale, and ``fastipc rm --stale`` removes it."""
    res = run_python("""
        import os, signal, sys
        from fastipc.queue import NamedQueue
        q = NamedQueue(sys.argv[1], True, capacity=1 << 16, backend=sys.argv[2])
        q.put("x")
        os.kill(os.getpid(), signal.SIGKILL)
        """, name, backend)
    assert res.returncode == -9
    info = describe(f"{SHM_DIR}/{name}")
    assert info is not None and not info.alive
    out = _fastipc("rm", "--stale", "--match", name)
    assert out.returncode == 0, out.stderr
    assert _files_of(name) == []


# ---------------------------------------------------------------- 4. owner=


def test_owner_other_than_the_segments_is_refused(backend: str, name: str, kind: str) -> None:
    """``owner=`` names the uid trusted; a queue that belongs to another is refused with
    PermissionError naming both uids. Creating ignores it."""
    me = os.geteuid()
    make = KINDS[kind]
    with make(name, True, capacity=SMALL, owner=me + 1, backend=backend) as q:
        try:
            with pytest.raises(PermissionError, match=f"uid {me}, not {me + 1}"):
                make(name, owner=me + 1, backend=backend)
            with make(name, owner=me, backend=backend) as peer:
                peer.put(1)
                assert q.get(timeout=1) == 1
            with pytest.raises(TypeError):
                make(name, owner="nobody", backend=backend)
        finally:
            q.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_foreign_queue_is_refused_unless_trusted(backend: str, name: str, kind: str) -> None:
    make = KINDS[kind]
    with make(name, True, capacity=SMALL, backend=backend) as q:
        try:
            for f in _files_of(name):
                os.chown(f"{SHM_DIR}/{f}", 65534, -1)
            with pytest.raises(PermissionError, match="uid 65534, not 0"):
                make(name, backend=backend)
            with make(name, owner=65534, backend=backend) as trusted:
                trusted.put("trusted")
                assert q.get(timeout=1) == "trusted"
                with pickle.loads(pickle.dumps(trusted)) as copy:  # carries the trust
                    copy.put("copied")
                    assert q.get(timeout=1) == "copied"
        finally:
            q.unlink()
