"""The fan-out segment's layout, defined once in Python, and the backend contract.

The layout (docs/pubsub-layout.md) is stated in C by the enum of ``csrc/pubsub.h`` and here
by the names below (the C names without their ``FIPC_PUB_`` prefix); ``tests/test_pubsub.py``
holds one against the other. The pure backend reads and writes the segment through these
names; the native one through the C enum. The liveness locks (OFD locks on one byte of the
segment file per participant) are taken and probed here, by both backends and by the
public module, which needs no offset for that.

:class:`PublisherOps` and :class:`SubscriberOps` are the pure backend's operations, at the
grain of one user operation (``fastipc._pure.pubsub`` implements them, and mypy --strict
checks it against these Protocols). On the native backend the same operations are the C
methods of the objects' native handles (``csrc/py/pubsub.c``).
"""

from __future__ import annotations

import mmap
import os
from typing import Any, NamedTuple, Optional, Protocol

from fastipc import _core, _shm_layout

MAGIC = 0x42555046  # "FPUB" little-endian
VERSION = 1
OFF_MAGIC = 0
OFF_VERSION = 4
OFF_CAPACITY = 8
OFF_DATA = 16
OFF_MAXMSG = 24
OFF_PID = 32
OFF_STATE = 36
OFF_OVERFLOW = 40
OFF_NSLOTS = 44
OFF_CHUNK = 48
OFF_HEAD = 64
OFF_COUNT = 72
OFF_SNAP = 80
OFF_OLDEST = 128
OFF_DSEQ = 192
OFF_SWAIT = 196
OFF_SSEQ = 200
OFF_PWAIT = 204
OFF_PWANT = 208
OFF_SLOTS = 256
SLOTS = 64
SLOT_SIZE = 64
SLOT_STATE = 0
SLOT_PID = 4
SLOT_CURSOR = 8
HEADER = 4352
MIN_CAPACITY = 4096
WAKE_SHIFT = 3  # a publisher waiting for room is woken once capacity >> 3 bytes are free
FR_WHOLE, FR_FIRST, FR_NEXT, FR_PAD = 1, 2, 3, 4
FR_HDR = 16
FIRST_HDR = 32
ALIGN = 16
LOCK = 0x7FFF0000
NOTREADY = -1201
RECHECK = -1202  # a wait of the native subscriber: views to look at (Holds._unstick)

# what the C enum calls these (the test compares each with lib.FIPC_PUB_<name>)
LAYOUT = {
    name: value for name, value in globals().items()
    if name.isupper() and isinstance(value, int) and name != "LAYOUT"
}
NEED = _core.FIPC_NEED  # the status every mechanism shares (csrc/fastipc.h)

ST_OPEN, ST_CLOSED = 1, 2
BLOCK, DROP_OLDEST = 1, 2
OVERFLOW = {"block": BLOCK, "drop_oldest": DROP_OLDEST}
MAX_CHUNK = 256 << 10


def whole_limit(capacity: int) -> int:
    """The largest message stored as one frame (``recv_view`` in place; ``drop_oldest``'s
    limit): a frame of at most a quarter of the ring."""
    return capacity // 4 - FR_HDR


# ---------------------------------------------------------------------------- liveness

# The OFD byte locks are the channel's (fastipc._shm_layout): the publisher's liveness lock
# and one a subscriber slot.
lock_byte = _shm_layout.hold_lock
unlock_byte = _shm_layout.release_lock


def lock_held(fd: int, byte: int) -> bool:
    """Whether another open file description holds the lock on ``byte`` (its owner lives).
    Undecidable (an error) counts as held: a live peer is never declared dead."""
    try:
        return _shm_layout.lock_held(fd, byte)
    except OSError:
        return True


def claim_slot(fd: int) -> int:
    """Take the lock of the first free subscriber slot and return its index; -1 if all
    ``SLOTS`` are held by live subscribers."""
    for slot in range(SLOTS):
        if lock_byte(fd, LOCK + 1 + slot):
            return slot
    return -1


# ---------------------------------------------------------------------------- describe


class SegmentInfo(NamedTuple):
    """What a publisher segment's header says (``fastipc ls``)."""

    capacity: int
    pid: int
    state: int
    overflow: str
    head: int
    messages: int
    subscribers: int


def read_info(fd: int) -> Optional[SegmentInfo]:
    """Parse the header of the segment open at ``fd``; None if it is not a publisher's."""
    header = os.pread(fd, HEADER, 0)
    if len(header) < HEADER or int.from_bytes(header[:4], "little") != MAGIC:
        return None

    def u32(off: int) -> int:
        return int.from_bytes(header[off:off + 4], "little")

    def u64(off: int) -> int:
        return int.from_bytes(header[off:off + 8], "little")

    active = sum(
        1 for i in range(SLOTS)
        if u32(OFF_SLOTS + i * SLOT_SIZE + SLOT_STATE) == 1 and lock_held(fd, LOCK + 1 + i)
    )
    overflow = {BLOCK: "block", DROP_OLDEST: "drop_oldest"}.get(u32(OFF_OVERFLOW), "?")
    return SegmentInfo(u64(OFF_CAPACITY), u32(OFF_PID), u32(OFF_STATE), overflow,
                       u64(OFF_HEAD), u64(OFF_COUNT), active)


# ---------------------------------------------------------------------------- contract


class NotReady(Exception):
    """The segment exists but its publisher has not finished setting it up."""


class PublisherOps(Protocol):
    """The publisher's side of one segment. ``timeout`` is the C convention of
    ``_core.check_timeout`` (-1.0 forever, 0.0 try once); errors are raised mapped."""

    def __init__(self, mm: mmap.mmap, size: int, fd: int, name: str, pid: int,
                 max_message: int, overflow: int, spin: float) -> None: ...

    def send(self, data: Any, timeout: float) -> None:
        """One message. ValueError (drop_oldest, too large for one frame), OSError(EMSGSIZE)
        (over max_message), TimeoutError (block: the slowest subscriber lags)."""

    def send_many(self, blob: bytes, lens: list[int], timeout: float) -> None:
        """Messages stored back to back; the exception says ``messages_sent``."""

    def send_nowait(self, data: Any) -> bool:
        """One attempt that does not wait: True once the message went whole; False while
        there is no room (a message streamed in part keeps its progress for the next
        attempt, until :meth:`abandon`)."""
        ...

    def send_many_nowait(self, blob: Any, lens: list[int], first: int) -> int:
        """send_many of the messages from index ``first`` on, without waiting: how many
        went (errors carry ``messages_sent``, counted from the first message of all)."""
        ...

    def abandon(self) -> None:
        """Give up a message streamed in part: the next one starts afresh (subscribers drop
        the part)."""

    def park(self) -> Optional[tuple[int, int]]:
        """Awaiting (fastipc._aio): raise the waiting flag, look once more; None if ready,
        else (address, value) of the futex word to wait on."""
        ...

    def unpark(self) -> None:
        """Lower the waiting flag raised by :meth:`park`."""

    def stats(self) -> tuple[int, int]:
        """(waits ended by spinning, waits that slept)"""

    def wake(self) -> None:
        """Make a call blocked in another thread return (ValueError), from any thread."""

    def close(self) -> None:
        """End the stream (subscribers get EOFError once drained); let go of the mapping."""


class SubscriberOps(Protocol):
    """A subscriber's side: its cursor, and the message being assembled."""

    def __init__(self, mm: mmap.mmap, size: int, fd: int, slot: int, name: str, pid: int,
                 max_message: int, spin: float) -> None: ...

    def park(self) -> Optional[tuple[int, int]]:
        """As :meth:`PublisherOps.park`; EOFError once the publisher has gone, all read."""
        ...

    def unpark(self) -> None: ...

    @property
    def missed(self) -> int:
        """Messages lost to overruns (drop_oldest)."""

    def recv(self, timeout: float) -> bytes: ...

    def recv_into(self, buffer: Any, timeout: float) -> int:
        """ValueError if the next message does not fit (it stays queued)."""

    def recv_many(self, max_messages: int, timeout: float) -> list[bytes]: ...

    def recv_view(self, timeout: float) -> tuple[memoryview, Optional[int]]:
        """The next message as a read-only view, and the ring position it holds until
        :meth:`release_view` (``_backend.ring.Holds``: also while anything made from the
        view lives). None: the view is a copy, nothing is held ("drop_oldest", where the
        publisher never waits, and streamed messages)."""

    def release_view(self, view: memoryview, pos: Optional[int]) -> None: ...

    def drop_taken(self) -> None:
        """This end closes: forget the views still exported."""

    def stats(self) -> tuple[int, int]: ...

    def wake(self) -> None: ...

    def close(self) -> None:
        """Free the slot (the publisher stops waiting for us); let go of the mapping."""
