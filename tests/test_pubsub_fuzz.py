"""Hostile segment contents: a publisher segment whose header, slot table, cursors and
frames are overwritten with arbitrary bytes (hypothesis) must give its publisher and
subscribers a clear exception, never a crash or a hang. The attack runs in a child process,
so that a crash is a failed test, not a dead pytest."""

from __future__ import annotations

import pytest

from helpers import run_python

FUZZ = r"""
import mmap, os, sys, uuid
from hypothesis import given, settings, HealthCheck, strategies as st
from fastipc import pubsub
from fastipc._backend import pubsub as L

backend = sys.argv[1]
CLEAR = (OSError, ValueError, EOFError)  # TimeoutError and the rest are OSErrors
SIZE = L.HEADER + 4096
# where it hurts: the header's fields, the slots' state and cursors, and the ring
hot = st.one_of(
    st.sampled_from([v for k, v in vars(L).items() if k.startswith("OFF_")]),
    st.integers(0, L.SLOTS - 1).map(lambda i: L.OFF_SLOTS + i * L.SLOT_SIZE
                                    + (0 if i % 2 else L.SLOT_CURSOR)),
    st.integers(L.HEADER, SIZE - 1).map(lambda o: o & ~15),
    st.integers(0, SIZE - 1),
)
value = st.one_of(
    st.binary(min_size=1, max_size=16),
    st.sampled_from([b"\xff" * 8, b"\x00" * 8, (1 << 63).to_bytes(8, "little"),
                     (4096).to_bytes(8, "little"), (4097).to_bytes(8, "little"),
                     (2**64 - 16).to_bytes(8, "little"), b"\x04\x00\x00\x00"]),
)


def attempt(f, *args, **kwargs):
    try:
        return f(*args, **kwargs)
    except CLEAR:
        return None


@settings(max_examples=int(sys.argv[2]), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(overflow=st.sampled_from(["block", "drop_oldest"]),
       sent=st.lists(st.integers(0, 3000), max_size=6),
       writes=st.lists(st.tuples(hot, value), min_size=1, max_size=8))
def attack(overflow, sent, writes):
    name = f"fastipc-fuzz-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    pub = pubsub.Publisher(name, capacity=4096, overflow=overflow, backend=backend)
    early = pubsub.Subscriber(name, timeout=1, backend=backend)
    try:
        for n in sent[:3]:
            attempt(pub.send, os.urandom(n), timeout=0)
        with open(f"/dev/shm/{name}", "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            for off, data in writes:
                data = data[:SIZE - off]
                mm[off:off + len(data)] = data
        late = attempt(pubsub.Subscriber, name, timeout=0, backend=backend)
        for n in sent[3:]:
            attempt(pub.send, os.urandom(n), timeout=0)
        attempt(pub.send_many, [b"a" * 100, b"b" * 2000], timeout=0)
        for sub in (early, late):
            if sub is None:
                continue
            for _ in range(3):
                attempt(sub.recv, timeout=0)
            attempt(sub.recv_into, bytearray(5000), timeout=0)
            attempt(sub.recv_many, 8, timeout=0)
            v = attempt(sub.recv_view, timeout=0)
            if v is not None:
                with v as mv:
                    bytes(mv)
            sub.missed
            sub.close()
        attempt(pubsub.describe, f"/dev/shm/{name}")
    finally:
        early.close()
        pub.close()


attack()
print("ok")
"""


@pytest.mark.parametrize("examples", [150])
def test_hostile_segment_contents(backend: str, examples: int) -> None:
    out = run_python(FUZZ, backend, str(examples), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")
