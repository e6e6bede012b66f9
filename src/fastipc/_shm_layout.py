"""The binary layout of the shm channel, defined once for Python (docs/shm-layout.md).

Both backends and the ``fastipc ls`` describer read these names; ``csrc/shm.h`` exports the
same values as the ``FIPC_SHM_*`` enum, and ``tests/test_shm_layout.py`` holds the three
(this module, the C enum and the table of the document) against each other.

Also here, because every participant in a segment uses them whatever its backend: the
liveness proof (an OFD lock per end, :func:`hold_lock` / :func:`lock_held`) and the parsed
header of :func:`read_header`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import NamedTuple, Optional

HEADER = 256  # bytes before the ring's data
MAGIC = 0x4D485346  # "FSHM" little-endian, written last
VERSION = 2  # 2: liveness by OFD locks (1 used kill(pid, 0))
MIN_CAPACITY = 4096

# header fields: byte offsets
OFF_MAGIC = 0  # u32
OFF_VERSION = 4  # u32
OFF_CAPACITY = 8  # u64
OFF_DATA = 16  # u64, == HEADER
OFF_MAXMSG = 24  # u64
OFF_WPID = 32  # i32, informative (ls)
OFF_WSTATE = 36  # u32
OFF_RPID = 40  # i32, informative (ls)
OFF_RSTATE = 44  # u32
OFF_HEAD = 64  # u64, own cache line
OFF_TAIL = 128  # u64, own cache line
OFF_DSEQ = 192  # u32 futex: the reader sleeps on it
OFF_RWAIT = 196  # u32 flag
OFF_SSEQ = 200  # u32 futex: the writer sleeps on it
OFF_WWAIT = 204  # u32 flag

# end states
ST_NONE = 0
ST_OPEN = 1
ST_CLOSED = 2

# frames
FR_WHOLE = 1
FR_FIRST = 2
FR_NEXT = 3
FR_PAD = 4
FR_HDR = 8  # u32 length, u32 kind
FIRST_HDR = 16  # ... then u64 total
MAX_CHUNK = 256 << 10

# liveness: each open end holds an OFD write lock on one byte of the segment file
LOCK_WRITER = 0
LOCK_READER = 1

# a Writer builds its segment under a temporary name and links it into place when whole
TEMP_SUFFIX = ".fastipc-tmp"

FRAME = struct.Struct("<II")
TOTAL = struct.Struct("<Q")

# struct flock for F_OFD_*: l_type, l_whence (short), l_start, l_len (off_t), l_pid, padding
_FLOCK = struct.Struct("hhqqi4x")


def _flock(kind: int, byte: int) -> bytes:
    return _FLOCK.pack(kind, os.SEEK_SET, byte, 1, 0)


def hold_lock(fd: int, byte: int) -> bool:
    """Take the liveness lock ``byte`` on ``fd``'s open file description: True, or False if
    another open end holds it. The kernel drops it when the last reference to that
    description goes (its close, or the death of the process), whatever the pid namespace."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, byte))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def release_lock(fd: int, byte: int) -> None:
    """Let go of the lock ``byte`` taken with :func:`hold_lock`."""
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, byte))


def lock_held(fd: int, byte: int) -> bool:
    """Whether another open file description holds the liveness lock ``byte``: the end
    that took it is alive (its process has not exited, in any pid namespace)."""
    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
    return bool(_FLOCK.unpack(got)[0] != fcntl.F_UNLCK)


class Header(NamedTuple):
    """What the header of a channel segment says."""

    version: int
    capacity: int
    max_message: int
    writer_pid: int
    writer_state: int
    reader_pid: int
    reader_state: int
    head: int
    tail: int


def parse_header(data: bytes) -> Optional[Header]:
    """The header in ``data`` (at least HEADER bytes), or None if it is not a channel's."""
    if len(data) < HEADER or struct.unpack_from("<I", data, OFF_MAGIC)[0] != MAGIC:
        return None

    def u32(off: int) -> int:
        return int(struct.unpack_from("<I", data, off)[0])

    def u64(off: int) -> int:
        return int(struct.unpack_from("<Q", data, off)[0])

    return Header(u32(OFF_VERSION), u64(OFF_CAPACITY), u64(OFF_MAXMSG),
                  struct.unpack_from("<i", data, OFF_WPID)[0], u32(OFF_WSTATE),
                  struct.unpack_from("<i", data, OFF_RPID)[0], u32(OFF_RSTATE),
                  u64(OFF_HEAD), u64(OFF_TAIL))
