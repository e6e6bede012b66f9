"""Fuzz the shm channel: random and corrupted headers and frames must be refused with an
exception, never crash, hang, or read or write out of bounds; and any sequence of messages
goes through a small ring whole, once and in order, between any two backends.

The same tests run under the sanitizer build (FASTIPC_SANITIZE=1), where an out-of-bounds
access in csrc/shm.c would abort the process; ``tests/fuzz_shm_atheris.py`` fuzzes the same
reader with coverage guidance where atheris is installed.
"""

from __future__ import annotations

import os
import struct
import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastipc import shm

BACKENDS = ["native", "pure"]
HDR = 256
CAP = 4096
# Run from a copy the user can only read, hypothesis has nowhere to keep its examples: no
# database then (its warning would be an error here).
DATABASE: dict[str, Any] = {} if os.access(".", os.W_OK) else {"database": None}
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture], **DATABASE)

EXPECTED = (OSError, EOFError, TimeoutError, ValueError)


def _name() -> str:
    return f"fastipc-test-fz-{uuid.uuid4().hex[:12]}"


def _drain(r: shm.Reader) -> None:
    """Every read call either returns something plausible or raises what it may raise."""
    calls = [
        lambda: r.recv(timeout=0),
        lambda: r.recv_into(bytearray(CAP * 4), timeout=0),
        lambda: r.recv_many(16, timeout=0),
    ]
    for _ in range(6):
        for call in calls:
            try:
                out = call()
            except EXPECTED:
                continue
            if isinstance(out, bytes):
                assert len(out) <= r.max_message_size
            elif isinstance(out, list):
                assert all(len(m) <= CAP for m in out)
            else:
                assert 0 <= out <= CAP * 4
        try:
            with r.recv_view(timeout=0) as v:
                assert len(v) <= CAP
        except EXPECTED:
            pass


def _drain_if_opened(name: str, backend: str) -> None:
    """A Reader of ``name`` is refused with what it may raise, or opens and is drained."""
    try:
        r = shm.Reader(name, timeout=0, backend=backend)
    except EXPECTED:
        return
    with r:
        _drain(r)


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(header=st.binary(min_size=HDR, max_size=HDR))
def test_random_header(backend: str, header: bytes) -> None:
    name = _name()
    with shm.SharedMemory(name, size=HDR + CAP, create=True) as seg:
        try:
            seg.buf[:HDR] = header
            _drain_if_opened(name, backend)
        finally:
            seg.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, HDR // 4 - 1), st.integers(0, 2**32 - 1)),
        min_size=1, max_size=6,
    )
)
def test_mutated_header(backend: str, edits: list[tuple[int, int]]) -> None:
    """A valid header with a few 32-bit words changed."""
    name = _name()
    with shm.Writer(name, capacity=CAP, backend="native") as w:
        w.send(b"abc")
        w.send(b"x" * 2000)
        with shm.SharedMemory(name) as seg:
            for index, value in edits:
                seg.buf[index * 4:index * 4 + 4] = struct.pack("<I", value)
        _drain_if_opened(name, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@FUZZ
@given(
    ring=st.binary(min_size=64, max_size=CAP).map(lambda b: b.ljust(CAP, b"\0")),
    head=st.integers(0, CAP // 8).map(lambda n: n * 8),
    frames=st.lists(
        st.tuples(st.integers(0, CAP // 8 - 1), st.integers(0, 2**32 - 1),
                  st.integers(0, 6), st.integers(0, 2**40)),
        max_size=4,
    ),
)
def test_random_frames(backend: str, ring: bytes, head: int,
                       frames: list[tuple[int, int, int, int]]) -> None:
    """Random ring contents and a random published head, plus frame headers planted at
    random aligned places (random length, kind and total)."""
    name = _name()
    with shm.Writer(name, capacity=CAP, backend="native"):
        with shm.SharedMemory(name) as seg:
            seg.buf[HDR:HDR + CAP] = ring
            for slot, length, kind, total in frames:
                off = HDR + slot * 8
                seg.buf[off:off + 8] = struct.pack("<II", length, kind)
                if slot * 8 + 16 <= CAP:
                    seg.buf[off + 8:off + 16] = struct.pack("<Q", total)
            seg.buf[64:72] = struct.pack("<Q", head)
        with shm.Reader(name, timeout=0, backend=backend) as r:
            _drain(r)


@pytest.mark.parametrize("sender,receiver", [(a, b) for a in BACKENDS for b in BACKENDS])
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture], **DATABASE)
@given(sizes=st.lists(st.integers(0, 3 * CAP), min_size=1, max_size=30),
       batch=st.booleans())
def test_any_sequence_goes_through(sender: str, receiver: str, sizes: list[int],
                                   batch: bool) -> None:
    name = _name()
    messages = [bytes([i % 256]) * n for i, n in enumerate(sizes)]
    with shm.Writer(name, capacity=CAP, backend=sender) as w, \
            shm.Reader(name, timeout=5, backend=receiver) as r:
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                if batch:
                    w.send_many(messages, timeout=20)
                else:
                    for m in messages:
                        w.send(m, timeout=20)
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        t = threading.Thread(target=produce)
        t.start()
        got: list[bytes] = []
        try:
            while len(got) < len(messages):
                got.extend(r.recv_many(8, timeout=20) if batch else [r.recv(timeout=20)])
        finally:
            t.join(20)
        assert not errors
        assert got == messages
