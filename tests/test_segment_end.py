"""What every end of a shared-memory segment shares (fastipc._segment.SegmentEnd): the
channel's Writer, the fan-out's Publisher and the Queue create their segment one way (under
a temporary name, holding the creator's lock, linked into place once whole), attach with one
owner check, and give up the parent's liveness lock in a child made by fork()."""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from fastipc import _shm_layout as layout
from fastipc import pubsub, shm
from fastipc.queue import Queue
from helpers import start_python

SHM = Path("/dev/shm")

# A creator that makes and drops its segment in a loop: `kind` is "writer", "publisher"
# or "queue" (a named queue, unlinked before it is closed, so that none is kept).
CREATOR = """
import sys
from fastipc import pubsub, shm
from fastipc.queue import Queue
name, backend, kind = sys.argv[1:4]
print("go", flush=True)
while True:
    if kind == "writer":
        shm.Writer(name, capacity=1 << 20, backend=backend).close()
    elif kind == "publisher":
        pubsub.Publisher(name, capacity=1 << 20, backend=backend).close()
    else:
        q = Queue(name=name, create=True, capacity=1 << 20, backend=backend)
        q.unlink()
        q.close()
"""

KINDS = ["writer", "publisher", "queue"]


def _stale(prefix: str) -> Any:
    """The arguments of `fastipc rm --stale --match PREFIX` (this test's segments only)."""
    return type("Args", (), {"names": [], "stale": True, "match": prefix})()


def _left_by(name: str, pid: int) -> list[Path]:
    """The /dev/shm entries named after ``name`` or the process ``pid``."""
    return [p for p in SHM.iterdir() if name in p.name or f"-{pid}-" in p.name]


@pytest.mark.parametrize("kind", KINDS)
def test_a_creator_killed_at_any_point_leaves_nothing_rm_stale_keeps(
        backend: str, name: str, kind: str) -> None:
    """SIGKILL at random moments while a Writer, a Publisher or a Queue creates its
    segment: whatever it left (a temporary, a whole segment whose creator died), `fastipc
    rm --stale` recognises it as stale and removes it; nothing else is left behind."""
    from fastipc._cli import admin

    rng = random.Random(4321)
    for _ in range(8):
        proc = start_python(CREATOR, name, backend, kind)
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            time.sleep(rng.uniform(0, 0.03))
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
            proc.stderr.close()  # type: ignore[union-attr]
        try:
            left = [e for e in admin.entries() if e.name.startswith(name)]
            assert all(not e.alive for e in left), left
            admin.remove(_stale(name))
            assert _left_by(name, proc.pid) == []
        finally:
            for path in _left_by(name, proc.pid):
                path.unlink(missing_ok=True)


QUEUE_CREATOR = """
import sys, time
from fastipc.queue import Queue
name, backend = sys.argv[1:3]
print("go", flush=True)
end = time.monotonic() + 1.5
while time.monotonic() < end:
    q = Queue(name=name, create=True, backend=backend)
    q.unlink()
    q.close()
"""


def test_a_queue_appears_under_its_name_only_once_whole(backend: str, name: str) -> None:
    """A queue attached by name while its creator builds it is either absent
    (FileNotFoundError) or whole: never a segment without its header."""
    proc = start_python(QUEUE_CREATOR, name, backend)
    errors: list[OSError] = []
    attached = 0
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        while proc.poll() is None:
            try:
                q = Queue(name=name, backend=backend)
            except FileNotFoundError:
                continue
            except OSError as exc:
                errors.append(exc)
                continue
            attached += 1
            q.close()
    finally:
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == 0
    assert errors == []
    assert attached > 0


def _lock_held(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return layout.lock_held(fd, 0)
    finally:
        os.close(fd)


def _open(kind: str, name: str, backend: str) -> Any:
    if kind == "writer":
        return shm.Writer(name, capacity=4096, backend=backend)
    if kind == "publisher":
        return pubsub.Publisher(name, capacity=4096, backend=backend)
    return Queue(name=name, create=True, capacity=4096, backend=backend)


@pytest.mark.parametrize("kind", KINDS)
def test_every_creator_holds_the_lock_that_ls_and_rm_stale_probe(
        backend: str, name: str, kind: str) -> None:
    """Byte 0 of a segment is its creator's liveness lock, whichever kind it is (what
    `fastipc ls` and `rm --stale` probe on a temporary): held from the creation on, and
    not by a child made by fork() that outlives the creator."""
    end = _open(kind, name, backend)
    path = f"/dev/shm/{name}"
    try:
        assert _lock_held(path)
        pid = os.fork()
        if pid == 0:  # the child holds no lock of the parent's: close its end, exit
            code = 0
            try:
                end.close()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert _lock_held(path)  # the child's exit took nothing of the parent's
    finally:
        if kind == "queue":
            end.unlink()
        end.close()


FORK_KEEPER = """
import os, sys, time
from fastipc.queue import Queue
name, backend = sys.argv[1:3]
q = Queue(name=name, create=True, capacity=4096, backend=backend)
pid = os.fork()
if pid == 0:  # the child keeps using the queue, and outlives its parent
    q.put("from the child")
    time.sleep(60)
    os._exit(0)
print(pid, flush=True)
time.sleep(60)
"""


def test_a_fork_child_keeps_the_queue_but_not_its_creators_lock(
        backend: str, name: str) -> None:
    """The creator of a named queue is SIGKILLed while its fork child, which uses the
    queue, lives on: the queue is stale at once (`rm --stale` may remove it), and what the
    child put is there."""
    from fastipc.queue import describe

    proc = start_python(FORK_KEEPER, name, backend)
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    try:
        with Queue(name=name, backend=backend) as q:
            assert q.get(timeout=10) == "from the child"
            info = describe(f"/dev/shm/{name}")
            assert info is not None and info.alive
            proc.kill()
            proc.wait()
            info = describe(f"/dev/shm/{name}")
            assert info is not None and not info.alive  # the child holds no lock
    finally:
        proc.kill()
        proc.wait()
        os.kill(child, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()  # type: ignore[union-attr]
        shm.unlink(name)
