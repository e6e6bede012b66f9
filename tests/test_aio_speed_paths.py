"""The awaitables' fast paths: the adaptive spin of fastipc._aio (its rules, step by step)
and an awaited ping-pong between two processes that stalls once on purpose, on both
backends and across them."""

from __future__ import annotations

import os
from typing import Any

import pytest

import test_aio
from fastipc import _aio, shm
from helpers import run_on, start_python

loops_ready = test_aio.loops_ready  # the fixture that opens uvloop's own pipe first

MAX = 50e-6
SHORT = 4 * MAX + 100e-6  # a park that ended sooner than this after the spin began is short

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="no spin on one CPU")


def test_after_a_short_park_the_next_spin_covers_that_wait() -> None:
    # Both ends of a ping-pong park once (a preemption): each one's wake-up then takes
    # longer than a spin of MAX, so unless the next spin outlasts it, each end parks on
    # every message from then on.
    spin = _aio.Spin(MAX)
    spin.parked(120e-6)
    assert spin.budget >= 120e-6
    assert spin.budget <= SHORT


def test_a_stretch_that_caught_is_followed_by_a_spin_of_max() -> None:
    spin = _aio.Spin(MAX)
    spin.parked(150e-6)
    spin.caught()
    assert spin.budget == MAX
    spin.caught()  # the chain of parks is broken: spins of MAX catch again
    assert spin.budget == MAX
    spin.parked(150e-6)  # a later short park is stretched again
    assert spin.budget > MAX


def test_a_stretch_is_never_longer_than_a_short_park() -> None:
    spin = _aio.Spin(MAX)
    spin.parked(SHORT * 0.99)
    assert MAX < spin.budget <= SHORT


def test_a_slow_peer_halves_the_spin_as_before() -> None:
    spin = _aio.Spin(MAX)
    for _ in range(10):
        spin.parked(0.01)
    assert spin.budget == spin.min
    spin.parked(SHORT * 2)
    assert spin.budget == spin.min


def test_a_stretch_that_did_not_catch_is_not_repeated_at_once() -> None:
    spin = _aio.Spin(MAX)
    spin.parked(100e-6)
    stretch = spin.budget
    spin.parked(stretch + 50e-6)  # the stretched spin gave up too, and the wait was short
    assert spin.budget == MAX


def test_a_peer_that_answers_slowly_every_time_gets_few_stretches() -> None:
    # a peer that answers every 150 us whatever the waiter does: a stretch catches it, but
    # the next wait of MAX parks anyway; stretching on every other wait would spin most of
    # the time, so the stretches back off
    spin = _aio.Spin(MAX)
    stretches = 0
    for _ in range(1000):
        if spin.budget >= 150e-6:
            stretches += 1
            spin.caught()
        else:
            spin.parked(150e-6)
    assert 1 <= stretches <= 30


# ---------------------------------------------------------------------------- end to end


ROUNDS = 400

ECHO = """
import asyncio, sys, time
from fastipc import shm
ping, pong, backend, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
async def main():
    with shm.Reader(ping, timeout=10, backend=backend) as r, \\
            shm.Writer(pong, capacity=1 << 16, backend=backend) as w:
        for i in range(rounds):
            msg = await r.recv_async(timeout=10)
            if i == rounds // 2:
                time.sleep(0.02)  # a stall, as a preemption: both ends park
            await w.send_async(msg, timeout=10)
        await w.flush_async(timeout=10)
asyncio.run(main())
"""


def test_an_awaited_ping_pong_that_stalls_once_delivers_every_message(
        name: str, cross: tuple[str, str], loop_kind: str, loops_ready: None) -> None:
    mine, theirs = cross
    ping, pong = name + "-ping", name + "-pong"

    async def main() -> list[bytes]:
        got = []
        with shm.Writer(ping, capacity=1 << 16, backend=mine) as w:
            proc = start_python(ECHO, ping, pong, theirs, str(ROUNDS))
            try:
                with shm.Reader(pong, timeout=10, backend=mine) as r:
                    for i in range(ROUNDS):
                        await w.send_async(i.to_bytes(4, "big") * 16, timeout=10)
                        got.append(await r.recv_async(timeout=10))
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 0, err
            finally:
                proc.kill()
                proc.wait()
        return got

    got: Any = run_on(loop_kind, main())
    assert got == [i.to_bytes(4, "big") * 16 for i in range(ROUNDS)]
