"""Property tests of the pipe framing: random messages round-trip, and random or hostile
byte streams make both readers agree (same messages, then the same error), never crash."""

from __future__ import annotations

import errno
import threading

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastipc import pipe

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _drain(r: pipe.PipeReader) -> tuple[list[bytes], str]:
    """Every message the reader returns, then how it ended."""
    got: list[bytes] = []
    while True:
        try:
            got.append(r.recv(timeout=5))
        except EOFError:
            return got, "eof"
        except OSError as exc:
            assert exc.errno == errno.EMSGSIZE
            return got, "too big"


def _feed(backend: str, raw: bytes, max_message_size: int) -> tuple[list[bytes], str]:
    r, w = pipe.pipe(backend=backend, max_message_size=max_message_size)
    t = threading.Thread(target=lambda: (w.write(raw, timeout=10), w.close()))
    t.start()
    try:
        return _drain(r)
    finally:
        t.join(10)
        r.close()
        w.close()


@SETTINGS
@given(messages=st.lists(st.binary(max_size=5000), max_size=40), batch=st.booleans())
def test_messages_roundtrip(backend: str, messages: list[bytes], batch: bool) -> None:
    r, w = pipe.pipe(backend=backend)

    def produce() -> None:
        if batch:
            w.send_many(messages, timeout=10)
        else:
            for m in messages:
                w.send(m, timeout=10)
        w.close()

    t = threading.Thread(target=produce)
    t.start()
    try:
        assert _drain(r) == (messages, "eof")
    finally:
        t.join(10)
        r.close()


def _frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


streams = st.one_of(
    st.binary(max_size=3000),  # noise
    st.lists(st.binary(max_size=300), max_size=10).map(lambda ms: b"".join(map(_frame, ms))),
    st.tuples(  # whole frames, then a frame cut short or a lying header
        st.lists(st.binary(max_size=300), max_size=5),
        st.integers(0, 2**32 - 1),
        st.binary(max_size=100),
    ).map(lambda t: b"".join(map(_frame, t[0])) + t[1].to_bytes(4, "big") + t[2]),
)


@SETTINGS
@given(raw=streams, limit=st.sampled_from([0, 100, 1 << 20]))
def test_hostile_streams_native_and_pure_agree(raw: bytes, limit: int) -> None:
    native = _feed("native", raw, limit)
    pure = _feed("pure", raw, limit)
    assert native == pure
    assert all(len(m) <= limit for m in native[0])
