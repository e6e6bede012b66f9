"""The queue's binary layout (named offsets, the one definition in Python) and the backend
Protocol that ``fastipc._native.queue`` and ``fastipc._pure.queue`` implement.

The same numbers are an enum in ``csrc/queue.h``; a test holds the two together, and
``docs/queue-layout.md`` explains them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fastipc import _core

__all__ = [
    "KIND_BLOB", "KIND_BYTES", "KIND_OOB", "KIND_PICKLE", "LAYOUT", "MARK", "NEED", "FormatFn",
    "QueueOps",
]

# ---- the binary layout (csrc/queue.h, docs/queue-layout.md)
MAGIC = 0x51435046  # "FPCQ" little-endian, stored last by the creator
VERSION = 2
HEADER = 512
OFF_MAGIC = 0
OFF_VERSION = 4
OFF_CAPACITY = 8
OFF_MAX_MESSAGE = 16
OFF_MAXSIZE = 24
OFF_OWNER_PID = 32
OFF_PUT_LOCK = 64
OFF_GET_LOCK = 128
LOCK_SIZE = 64
OFF_TAIL = 192
OFF_DATA_SEQ = 200
OFF_GET_WAITING = 204
OFF_HEAD = 256
OFF_SPACE_SEQ = 264
OFF_PUT_WAITING = 268
OFF_SPILLING = 208
OFF_SPILL_W = 216
OFF_SPILL_PUT = 224
OFF_SPILL_R = 272
OFF_SPILL_GOT = 280
SPILL_HEAD = 16
SPILL_FILE = 1 << 20
SPILL_MAGIC = b"FPCQSPIL"
PATH_MAX = 288
FRAME = 8
MIN_CAPACITY = 4096
NEED = _core.FIPC_NEED
MARK = 8  # a get's mark: bytes after the capacity of its destination (csrc/queue.h)

# name in csrc/queue.h (FIPC_Q_<key>) -> value here; the layout test compares them
LAYOUT = {
    "MAGIC_LO": MAGIC, "VERSION": VERSION, "HEADER": HEADER, "OFF_MAGIC": OFF_MAGIC,
    "OFF_VERSION": OFF_VERSION, "OFF_CAPACITY": OFF_CAPACITY,
    "OFF_MAX_MESSAGE": OFF_MAX_MESSAGE, "OFF_MAXSIZE": OFF_MAXSIZE,
    "OFF_OWNER_PID": OFF_OWNER_PID, "OFF_PUT_LOCK": OFF_PUT_LOCK,
    "OFF_GET_LOCK": OFF_GET_LOCK, "LOCK_SIZE": LOCK_SIZE, "OFF_TAIL": OFF_TAIL,
    "OFF_DATA_SEQ": OFF_DATA_SEQ, "OFF_GET_WAITING": OFF_GET_WAITING, "OFF_HEAD": OFF_HEAD,
    "OFF_SPACE_SEQ": OFF_SPACE_SEQ, "OFF_PUT_WAITING": OFF_PUT_WAITING, "FRAME": FRAME,
    "OFF_SPILLING": OFF_SPILLING, "OFF_SPILL_W": OFF_SPILL_W, "OFF_SPILL_PUT": OFF_SPILL_PUT,
    "OFF_SPILL_R": OFF_SPILL_R, "OFF_SPILL_GOT": OFF_SPILL_GOT, "SPILL_HEAD": SPILL_HEAD,
    "SPILL_FILE": SPILL_FILE, "PATH_MAX": PATH_MAX,
    "MIN_CAPACITY": MIN_CAPACITY, "MARK": MARK,
}

# ---- frame kinds (what the payload is; the public module encodes and decodes them)
KIND_BYTES = 1  # put_bytes: raw bytes
KIND_PICKLE = 2  # a pickle with no out-of-band buffers
KIND_OOB = 3  # a pickle and its out-of-band buffers (fastipc/queue.py lays them out)
KIND_BLOB = 4  # a reference to a message too large for the ring, in its own segment

STAGE = 1 << 16  # messages up to this size are copied into the handle's staging buffer


KEPT_PID = 0  # OFF_OWNER_PID once the creator of a named queue closed it (not died)


def mark_kept(mm: Any) -> None:
    """The creator of a named queue closes it: the name stays for others, and the header says
    so (the owner pid becomes KEPT_PID), so that ``fastipc rm --stale`` tells it from a queue
    whose creator died holding it. The mapping is Python's on both backends: written once."""
    if not mm.closed:
        mm[OFF_OWNER_PID:OFF_OWNER_PID + 4] = KEPT_PID.to_bytes(4, "little")


class QueueOps(Protocol):
    """One attached queue, at the grain of one user operation. Every call returns ``>= 0``
    or a ``-errno`` / ``FIPC_*`` status (``NEED``), for ``_core.retry`` to map; ``timeout``
    is the C convention (-1.0 forever, 0.0 try once)."""

    def __init__(self, mm: Any, size: int, spin: float, spill: str, mode: int) -> None:
        """Attach to the queue mapped at ``mm``; its spill files are ``<spill><seq>``,
        made with ``mode``."""

    def put(self, data: Any, kind: int, timeout: float) -> int:
        """Put one message (a bytes-like object) as one frame of ``kind``."""

    def putv(self, parts: Sequence[Any], kind: int, timeout: float) -> int:
        """Put one message gathered from several bytes-like parts."""

    def put_ref(self, data: bytes, kind: int, timeout: float, committed: bytearray) -> int:
        """:meth:`put` that sets ``committed[0]`` to 1 as it commits (in the same step: C,
        or Python with no call in between), so that a caller into which an exception is
        raised right after the commit knows the message is queued."""

    def put_many(self, blob: bytes, lens: Sequence[int], kind: int,
                 timeout: float) -> tuple[int, int]:
        """Put ``len(lens)`` messages stored back to back in ``blob``: (rc, how many went)."""

    def get(self, dest: Any, timeout: float) -> int:
        """Take the next message into ``dest`` (a writable buffer of its capacity plus
        ``MARK`` bytes): ``kind << 32 | length``, or ``NEED`` when it does not fit (it stays
        queued; :meth:`last` says its length). Every get marks what it took: ``kind << 32 |
        length`` in the ``MARK`` bytes after the capacity (little-endian), stored in the
        step that commits head (C, or Python with no call in between), so that a caller into
        which an exception is raised after the commit still finds the message; the caller
        clears it as it delivers the message. Every get also clears it first, whatever it
        returns."""

    def new_stage(self) -> tuple[Any, Any, Any]:
        """A staging buffer of ``STAGE`` (+ ``MARK``) bytes for the hot get: (what
        ``get_staged`` takes, a buffer over the same bytes whose slices are ``bytes``: one copy
        out, no view in between, the mark: ``mark[0]`` reads or clears it as one integer).
        One per concurrent get: a thread takes one from a pool."""

    def get_staged(self, stage: Any, cap: int, timeout: float, want: int) -> int:
        """The hot get: into a stage of :meth:`new_stage` (its first element, ``cap`` =
        ``STAGE``), as :meth:`get` returns, except that a message of kind ``want`` returns
        its length alone (kinds are >= 1, so ``kind << 32 | length`` is always larger)."""

    def address(self) -> int:
        """The address of the C core's queue struct (native; the native handle calls the C
        core on it), or 0 (pure)."""

    def new_batch(self, max_messages: int) -> Any:
        """Where :meth:`get_many` writes the lengths and kinds of up to ``max_messages``."""

    def batch(self, batch: Any, n: int) -> tuple[list[int], list[int]]:
        """The lengths and kinds of the first ``n`` messages :meth:`get_many` wrote."""

    def get_many(self, dest: Any, batch: Any, max_messages: int, timeout: float) -> int:
        """Take up to ``max_messages`` that fit ``dest`` (its capacity: all but the last
        ``MARK`` bytes) back to back, their lengths and kinds into ``batch``: the count or
        rc. Marks the count taken as :meth:`get` marks its message."""

    def last(self) -> tuple[int, int]:
        """(length, kind) of the message the last get returned or needed room for."""

    def count(self) -> int:
        """Messages queued now."""

    def used(self) -> int:
        """Ring bytes in use now."""

    def park(self, room: int) -> tuple[int, int, int]:
        """Before awaiting (``fastipc._aio``): raise the waiting flag of a consumer
        (``room < 0``) or of a producer needing room for a payload of ``room`` bytes, as a
        blocking sleeper does, and look again: ``(rc, address, expected)``, rc 1 = ready now,
        0 = wait while the futex word at ``address`` holds ``expected``, else ``-errno``.
        There is no unpark: the flag is shared by the side's sleepers, the next commit
        lowers it."""

    def wake(self) -> None:
        """Mark this handle closed; blocked calls of it return ``-EBADF`` promptly."""

    def free(self) -> bool:
        """Close this handle and let go of the mapping. Called once no call of it is inside
        (both backends count their calls above the seam: the native handle, or the public
        class's Handle count on the pure backend). False if the mapping must be left to
        the garbage collector."""


class FormatFn(Protocol):
    """``format(mm, size, max_message, maxsize, pid) -> rc``: lay out a fresh (zeroed)
    segment as a queue, both robust mutexes included, the magic stored last."""

    def __call__(self, mm: Any, size: int, max_message: int, maxsize: int, pid: int) -> int: ...
