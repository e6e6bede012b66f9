"""The vocabulary that shm's SharedMemory, Writer, Reader and pubsub's Publisher, Subscriber
share with the rest of fastipc and with the stdlib: names as given, ``messages_sent`` on a
partial batch, ``owner=`` wherever a segment is attached, and SharedMemory with the
signature and the behaviour of ``multiprocessing.shared_memory.SharedMemory``."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest

from fastipc import pubsub, shm
from helpers import run_python

SHM = Path("/dev/shm")
OTHER_UID = os.geteuid() + 1  # a uid that owns none of this test's segments


# ---------------------------------------------------------------------------- 1. names


@pytest.mark.parametrize("slash", ["", "/"])
def test_names_as_given(backend: str, name: str, slash: str) -> None:
    """``x`` and ``/x`` name one segment; ``obj.name`` is what was given, also closed."""
    fan = name + "-fan"
    given, other = slash + name, ("" if slash else "/") + name
    w = shm.Writer(given, capacity=4096, backend=backend)
    r = shm.Reader(other, timeout=1, backend=backend)
    p = pubsub.Publisher(slash + fan, capacity=4096, backend=backend)
    s = pubsub.Subscriber(("" if slash else "/") + fan, timeout=1, backend=backend)
    w.send(b"one")
    assert r.recv(timeout=1) == b"one"
    p.send(b"two")
    assert s.recv(timeout=1) == b"two"
    ends = [(w, given), (r, other), (p, slash + fan), (s, ("" if slash else "/") + fan)]
    for end, as_given in ends:
        assert end.name == as_given
    for end, _ in reversed(ends):
        end.close()
    for end, as_given in ends:
        assert end.name == as_given  # also once closed
    assert not (SHM / name).exists() and not (SHM / fan).exists()


@pytest.mark.parametrize("slash", ["", "/"])
def test_shared_memory_name_as_given(backend: str, name: str, slash: str) -> None:
    with shm.SharedMemory(slash + name, create=True, size=4096, backend=backend) as seg:
        assert (SHM / name).exists()
        assert seg.name == slash + name
        copy = pickle.loads(pickle.dumps(seg))  # pickling carries the name as given
        try:
            assert copy.name == slash + name
            seg.buf[0] = 7
            assert copy.buf[0] == 7
        finally:
            copy.close()
        seg.unlink()
    assert seg.name == slash + name


def test_made_up_name(backend: str) -> None:
    """``SharedMemory(create=True, size=n)`` makes a name: ``psm_`` and 8 hex digits,
    without a slash, as the stdlib's."""
    seg = shm.SharedMemory(create=True, size=4096, backend=backend)
    try:
        assert re.fullmatch(r"psm_[0-9a-f]{8}", seg.name), seg.name
        assert (SHM / seg.name).exists()
        with shm.SharedMemory(seg.name, backend=backend) as again:
            assert again.size == 4096
    finally:
        seg.close()
        seg.unlink()


# ---------------------------------------------------------------------------- 2. messages_sent


def test_messages_sent_when_a_batch_stops(backend: str, name: str) -> None:
    """Every exception of a send_many that stopped part way says how many went; one that
    stopped before the first carries 0."""
    with shm.Writer(name, capacity=4096, max_message_size=1000, backend=backend) as w, \
            shm.Reader(name, timeout=1, backend=backend) as r:
        _part_of_a_batch_goes(w, r)
        with pytest.raises(OSError) as oversized:
            w.send_many([b"ok", b"x" * 2000], timeout=1)
        assert oversized.value.errno == errno.EMSGSIZE
        assert oversized.value.messages_sent == 0  # type: ignore[attr-defined]
        r.close()
        with pytest.raises(BrokenPipeError) as broken:
            w.send_many([b"a", b"b"], timeout=1)
        assert broken.value.messages_sent == 0  # type: ignore[attr-defined]


def test_publisher_messages_sent_when_a_batch_stops(backend: str, name: str) -> None:
    with pubsub.Publisher(name, capacity=4096, backend=backend) as p, \
            pubsub.Subscriber(name, timeout=1, backend=backend) as s:
        _part_of_a_batch_goes(p, s)


def _part_of_a_batch_goes(tx: Any, rx: Any) -> None:
    """A batch larger than the ring times out part way: ``messages_sent`` says how many
    went, and those are what the receiver gets."""
    batch = [b"m" * 500] * 20
    with pytest.raises(TimeoutError) as info:
        tx.send_many(batch, timeout=0.05)
    went = info.value.messages_sent  # type: ignore[attr-defined]
    assert 0 < went < len(batch)
    assert rx.recv_many(100, timeout=1) == batch[:went]


# ---------------------------------------------------------------------------- 4. owner=


def test_owner_when_attaching(backend: str, name: str) -> None:
    """An attaching end refuses a segment that is not ``owner``'s (None: this process's
    effective uid) with PermissionError(EPERM) naming both uids; creating ignores it."""
    me = os.geteuid()
    with pubsub.Publisher(name, capacity=4096, backend=backend) as p:
        with pytest.raises(PermissionError) as info:
            pubsub.Subscriber(name, timeout=0, owner=OTHER_UID, backend=backend)
        assert info.value.errno == errno.EPERM
        assert f"uid {me}, not {OTHER_UID}" in str(info.value)
        with pubsub.Subscriber(name, timeout=1, owner=me, backend=backend) as s:
            p.send(b"mine")
            assert s.recv(timeout=1) == b"mine"
        with pytest.raises(TypeError):
            pubsub.Subscriber(name, timeout=0, owner="me", backend=backend)  # type: ignore
    seg = shm.SharedMemory(name, create=True, size=4096, owner=OTHER_UID, backend=backend)
    try:
        with pytest.raises(PermissionError) as info:
            shm.SharedMemory(name, owner=OTHER_UID, backend=backend)
        assert info.value.errno == errno.EPERM
        assert f"uid {me}, not {OTHER_UID}" in str(info.value)
        with shm.SharedMemory(name, owner=me, backend=backend) as again:
            assert again.size == 4096
        with pytest.raises(TypeError):
            shm.SharedMemory(name, owner="me", backend=backend)  # type: ignore
    finally:
        seg.close()
        seg.unlink()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_owner_trusts_another_users_segment(backend: str, name: str) -> None:
    with shm.SharedMemory(name, create=True, size=4096, backend=backend) as seg:
        os.chown(SHM / name, 65534, -1)
        with pytest.raises(PermissionError, match="uid 65534, not 0"):
            shm.SharedMemory(name, backend=backend)
        with shm.SharedMemory(name, owner=65534, backend=backend) as again:
            again.buf[0] = 1
            assert seg.buf[0] == 1
        seg.unlink()


# ---------------------------------------------------------------------------- 5. the stdlib's


def test_shared_memory_signature(backend: str, name: str) -> None:
    """``SharedMemory(name=None, create=False, size=0)``, positionally too."""
    with pytest.raises(ValueError):
        shm.SharedMemory(backend=backend)  # no name, no create
    with pytest.raises(ValueError):
        shm.SharedMemory(None, False, 4096, backend=backend)
    with pytest.raises(ValueError):
        shm.SharedMemory(name, True, 0, backend=backend)
    with pytest.raises(ValueError):
        shm.SharedMemory(name, True, -1, backend=backend)
    with shm.SharedMemory(name, True, 10000, mode=0o640, backend=backend) as seg:
        assert seg.size == 10000
        assert os.stat(SHM / name).st_mode & 0o777 == 0o640
        with shm.SharedMemory(name, False, 100, backend=backend) as small:
            assert small.size == 10000  # attaching maps the real size
        with pytest.raises(ValueError):
            shm.SharedMemory(name, False, 10001, backend=backend)  # never resizes
        seg.unlink()
    assert not (SHM / name).exists()


# The same calls against multiprocessing.shared_memory.SharedMemory and fastipc's, in a
# process of their own (the stdlib's resource tracker starts a process and keeps a pipe).
SAME_CALLS = """
import json, sys
from multiprocessing import resource_tracker, shared_memory
from fastipc import shm

name, backend = sys.argv[1], sys.argv[2]

def untrack(seg):
    if isinstance(seg, shared_memory.SharedMemory):  # this test removes its segments itself
        resource_tracker.unregister(seg._name, "shared_memory")

def outcome(call):
    try:
        seg = call()
    except Exception as exc:
        return type(exc).__name__
    try:
        untrack(seg)
        made_up = seg.name.startswith("psm_") and len(seg.name) == 12 and "/" not in seg.name
        return {"name": "<made up>" if made_up else seg.name, "size": seg.size,
                "buf": len(seg.buf)}
    finally:
        seg.close()
        if made_up:
            seg.unlink()

def calls(cls, name):
    def make(*args, **kwargs):
        return lambda: cls(*args, **kwargs)
    out = []
    for step in [
        make(),
        make(None, False, 100),
        make(name, True, 0),
        make(name, True, -1),
        make(name, False),
        make(None, True, 5000),
        make(create=True, size=100),
        make(name, True, 10000),
        make(name, True, 10000),
        make(name),
        make("/" + name),
        make(name, False, 100),
        make(name, size=-1),
    ]:
        out.append(outcome(step))
    shm.unlink(name)
    return out

kw = {"backend": backend}
theirs = calls(shared_memory.SharedMemory, name)
ours = calls(lambda *a, **k: shm.SharedMemory(*a, **k, **kw), name)
print(json.dumps([theirs, ours]))
"""


def test_same_calls_as_the_stdlib(backend: str, name: str) -> None:
    out = run_python(SAME_CALLS, name, backend, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs, ours = json.loads(out.stdout)
    assert ours == theirs
    assert theirs[-4]["name"] == name and theirs[-3]["name"] == "/" + name  # (the stdlib's)


EACH_ATTACHES = """
import sys
from multiprocessing import resource_tracker, shared_memory
from fastipc import shm

name, backend = sys.argv[1], sys.argv[2]

def theirs(*args, **kwargs):
    seg = shared_memory.SharedMemory(*args, **kwargs)
    resource_tracker.unregister(seg._name, "shared_memory")  # this script unlinks it
    return seg

def ours(*args, **kwargs):
    return shm.SharedMemory(*args, **kwargs, backend=backend)

def check(make, attach, first, second, size):
    made = make(first, create=True, size=size)
    other = attach(second)
    assert other.size == size, other.size
    made.buf[:5] = b"hello"
    assert bytes(other.buf[:5]) == b"hello"
    other.buf[5:6] = b"!"
    assert bytes(made.buf[:6]) == b"hello!"
    other.close()
    made.close()
    made.unlink()

for first, second in ((name, "/" + name), ("/" + name, name)):
    check(theirs, ours, first, second, 5000)
    check(ours, theirs, first, second, 7000)
print("ok")
"""


def test_each_attaches_to_the_others_segment(backend: str, name: str) -> None:
    out = run_python(EACH_ATTACHES, name, backend, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert not (SHM / name).exists()
