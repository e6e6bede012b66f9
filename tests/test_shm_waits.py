"""How the shm rings' waits cost what they cost, and what they notice: a call that only looks
(timeout 0, the first attempt of every blocking call, each try of an awaitable's spin) never
raises the sleeping flag, so the peer's sends and receives never pay a futex wake-up for it;
an awaited wake-up costs the helper thread one round; a signal that arrives while a wait
spins is not lost."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastipc import _shm_layout as layout
from fastipc import shm
from helpers import start_python

POLLER = """
import sys
from fastipc import shm
name, backend, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with shm.Reader(name, timeout=10, backend=backend) as r:
    print("ready", flush=True)
    got = 0
    while got < count:
        try:
            r.recv(timeout=0)
        except TimeoutError:
            continue
        got += 1
    print("got", flush=True)
    sys.stdin.readline()  # stay open (a close wakes the writer) until the parent has looked
"""


def _pause(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@contextmanager
def _poller(name: str, backend: str, count: int) -> Iterator[subprocess.Popen[str]]:
    proc = start_python(POLLER, name, backend, str(count), stdin=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()  # type: ignore[union-attr]


def test_a_polling_reader_costs_the_writer_no_wake_up(name: str) -> None:
    """A reader that polls with recv(timeout=0) never sleeps, so the writer never has to
    wake it: the futex word a sleeping reader waits on (data_seq) never moves. (Each poll
    used to raise the reader's sleeping flag for its look; every send that found it up made
    a futex wake-up system call.)"""
    count = 4000
    with shm.Writer(name, capacity=1 << 16, backend="native") as w, \
            _poller(name, "native", count) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()  # type: ignore[union-attr]
        for i in range(count):
            w.send(i.to_bytes(8, "little"), timeout=10)
            _pause(20e-6)  # the reader finds the ring empty, and polls
        assert proc.stdout.readline() == "got\n", proc.stderr.read()  # type: ignore[union-attr]
        assert w._mmap is not None
        (seq,) = struct.unpack_from("<I", w._mmap, layout.OFF_DSEQ)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert seq == 0, f"the writer woke a polling reader {seq} times"


def test_an_awaited_wake_up_costs_the_helper_thread_one_round(backend: str, name: str) -> None:
    """A coroutine parked on the channel's futex word is woken by the helper thread of
    fastipc._aio, which then rebuilds its set of words on its own: its control word (the
    one that tells it the set changed, each bump a system call and one more round of the
    thread under the GIL) moves once, for the park, not again when the woken slot goes."""
    from fastipc import _aio

    async def main() -> int:
        with shm.Writer(name, capacity=1 << 16, backend=backend) as w, \
                shm.Reader(name, timeout=5, backend=backend) as r:
            waiter = _aio._the_waiter()
            before = {id(s): s.control.value for s in waiter._shards}
            threading.Timer(0.05, w.send, (b"x",)).start()
            assert await r.recv_async(timeout=5) == b"x"
            time.sleep(0.05)  # the helper thread has gone round once more
            (shard,) = waiter._shards
            return int(shard.control.value) - before.get(id(shard), 0)

    assert asyncio.run(main()) == 1
