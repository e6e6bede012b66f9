"""The native handles of the shm channel, the fan-out and the stream ends: what they share is
written (and declared) once, and a receive's deadline is the call's own."""

from __future__ import annotations

import struct
import threading
import time

import pytest

from fastipc import _shm_layout as layout
from fastipc import shm


def test_the_client_types_share_the_steps_and_the_stream_ends_their_open() -> None:
    """ClientHandle is an AsyncClientHandle with the blocking calls added: the no-wait steps
    are the AsyncClientHandle's, defined once; every stream end's _open is its base's."""
    from fastipc import _fastipc

    client, awaiting = _fastipc.ClientHandle, _fastipc.AsyncClientHandle
    assert client.__base__ is awaiting
    steps = {"_send_step", "_write_step", "_recv_step", "_read_step"}
    assert steps <= set(vars(awaiting)) and not steps & set(vars(client))
    assert {"send", "recv", "read"} <= set(vars(client)) and not {"send", "recv"} & set(
        vars(awaiting))
    for end in (_fastipc.PipeWriterHandle, _fastipc.PipeReaderHandle, awaiting):
        assert end.__base__ is _fastipc.StreamHandle and "_open" not in vars(end)


def test_the_ends_of_each_ring_share_a_base() -> None:
    """The shm channel's two ends have one base (its fipc_shm, _detach), the fan-out's two
    one of theirs (the await hooks and counters): each method is defined once."""
    from fastipc import _fastipc

    for base, ends, shared in (
            (_fastipc.ChannelHandle, (_fastipc.ShmWriterHandle, _fastipc.ShmReaderHandle),
             {"_core", "_detach"}),
            (_fastipc.FanOutHandle, (_fastipc.PublisherHandle, _fastipc.SubscriberHandle),
             {"_forsake", "_park", "_unpark", "_stats"})):
        assert shared <= set(vars(base))
        for end in ends:
            assert end.__base__ is base and not shared & set(vars(end))


def _first_chunk_later(w: shm.Writer, delay: float) -> threading.Thread:
    """After `delay` seconds, the first chunk of a streamed message of 10000 bytes appears in
    w's ring, as a writer that then stalls would leave it (written into the mapping by hand,
    by the layout's rules: the frame, then head)."""
    mm = w._mmap
    assert mm is not None

    def put() -> None:
        time.sleep(delay)
        payload = b"x" * 64
        frame = (layout.FRAME.pack(len(payload), layout.FR_FIRST) + layout.TOTAL.pack(10000)
                 + payload)
        mm[layout.HEADER:layout.HEADER + len(frame)] = frame
        mm[layout.OFF_HEAD:layout.OFF_HEAD + 8] = struct.pack("<Q", len(frame))

    t = threading.Thread(target=put)
    t.start()
    return t


def test_a_streamed_message_begun_late_is_waited_for_no_longer_than_the_timeout(
        backend: str, name: str) -> None:
    """recv(timeout) that finds the first chunk of a streamed message only part way through
    its wait goes on waiting for the rest for the time left, not for a whole timeout more:
    TimeoutError once `timeout` seconds have passed since the call began."""
    with shm.Writer(name, capacity=4096, backend=backend) as w, \
            shm.Reader(name, timeout=5, backend=backend) as r:
        t = _first_chunk_later(w, 0.4)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.8)
        took = time.monotonic() - start
        t.join()
        assert 0.75 < took < 1.1, took  # (a second timeout after the chunk came: >= 1.2 s)
