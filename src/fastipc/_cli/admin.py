"""``fastipc ls`` and ``fastipc rm``: this user's shared memory segments of every fastipc kind,
and message queues, including what crashed processes left behind.

``ls`` asks every registered *describer* about each of this user's entries in /dev/shm; the
first that recognises one (by its magic, or its name for a temporary) says what it is in a
:class:`SegmentInfo`. Entries no describer claims are listed as plain ``shm`` when their
name starts with ``fastipc``. Then the message queues in /dev/mqueue (where the mqueue file
system is mounted). ``rm NAME`` removes one segment or queue; ``rm --stale`` removes every
segment whose describer says it is not alive (``--match PREFIX``: only those whose name starts
with PREFIX, e.g. one application's).

The hook, for other segment kinds (a queue, a publisher...)::

    from fastipc._cli.admin import SegmentInfo, register_describer

    def describe(path: str) -> Optional[SegmentInfo]:
        ...  # None unless the file at path is of this kind (check the magic)

    register_describer(describe)

A describer must not raise for a file of another kind, and must prove liveness without
trusting pids (e.g. the OFD lock of docs/shm-layout.md, "Liveness").
"""

from __future__ import annotations

import argparse
import importlib
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Optional

from fastipc import _shm_layout as layout
from fastipc._segment import open_to_inspect

SHM_DIR = "/dev/shm"
MQ_DIR = "/dev/mqueue"


def register(sub: Any) -> None:
    ls = sub.add_parser("ls", help="list this user's shm channels, segments and queues")
    ls.set_defaults(func=list_entries)
    rm = sub.add_parser("rm", help="remove a segment or queue (or every stale segment)")
    rm.add_argument("names", nargs="*", metavar="NAME", help="segment or queue names")
    rm.add_argument("--stale", action="store_true",
                    help="remove every segment whose owner is gone")
    rm.add_argument("--match", metavar="PREFIX", default="",
                    help="with --stale: only segments whose name starts with PREFIX")
    rm.set_defaults(func=remove)


@dataclass
class SegmentInfo:
    """What a describer says of one /dev/shm entry."""

    kind: str  # "channel", "temporary", "shm", "mq", or another describer's kind
    name: str
    size: int
    owner: Optional[int] = None  # the pid that made it, where known (informative)
    alive: bool = True  # False: stale, `rm --stale` removes it
    detail: str = ""


Describer = Callable[[str], Optional[SegmentInfo]]
_describers: list[Describer] = []


def register_describer(describe: Describer) -> None:
    """Add a describer (see the module's docstring). Idempotent."""
    if describe not in _describers:
        _describers.append(describe)


def _probe(path: str, byte: int) -> Optional[bool]:
    """Whether the liveness lock ``byte`` of the file at ``path`` is held (None: unknown)."""
    fd = open_to_inspect(path)
    if fd is None:
        return None
    try:
        return layout.lock_held(fd, byte)
    except OSError:
        return None
    finally:
        os.close(fd)


def describe_channel(path: str) -> Optional[SegmentInfo]:
    """The shm channel (magic ``FSHM``): alive while its writer holds its lock."""
    fd = open_to_inspect(path)
    if fd is None:
        return None
    try:
        header = layout.parse_header(os.pread(fd, layout.HEADER, 0))
        size = os.fstat(fd).st_size
        if header is None:
            return None
        writer_alive = layout.lock_held(fd, layout.LOCK_WRITER)
        reader_alive = layout.lock_held(fd, layout.LOCK_READER)
    except OSError:
        return None
    finally:
        os.close(fd)

    def state(alive: bool, closed: bool) -> str:
        return "closed" if closed else "running" if alive else "dead"

    writer = state(writer_alive, header.writer_state == layout.ST_CLOSED)
    detail = f"writer {writer}"
    if header.reader_state != layout.ST_NONE:
        reader = state(reader_alive, header.reader_state == layout.ST_CLOSED)
        detail += f", reader {header.reader_pid} {reader}"
    else:
        detail += ", no reader"
    if 0 <= header.head - header.tail <= header.capacity:
        detail += f", {header.head - header.tail} bytes queued"
    return SegmentInfo("channel", os.path.basename(path), size, header.writer_pid,
                       writer == "running", detail)


def describe_temporary(path: str) -> Optional[SegmentInfo]:
    """A channel a Writer was still building (or died building): alive while it holds its
    lock."""
    if not path.endswith(layout.TEMP_SUFFIX):
        return None
    alive = _probe(path, layout.LOCK_WRITER)
    try:
        size = os.stat(path, follow_symlinks=False).st_size
    except OSError:
        return None
    return SegmentInfo("temporary", os.path.basename(path), size, None, alive is not False,
                       "a writer building its channel" if alive else
                       "left by a writer that died while building its channel")


def _described_by(module: str, what: str) -> Describer:
    """The describer of the segments of ``fastipc.<module>``: that module's ``describe(path)``
    (imported when first used), as a SegmentInfo. ``what`` is its docstring."""

    def describe(path: str) -> Optional[SegmentInfo]:
        info = importlib.import_module(f"fastipc.{module}").describe(path)
        if info is None:
            return None
        return SegmentInfo(info.kind, info.name, info.size, info.owner, info.alive, info.detail)

    describe.__name__ = describe.__qualname__ = f"describe_{module}"
    describe.__doc__ = what
    return describe


describe_publisher = _described_by(
    "pubsub", "A fan-out publisher (fastipc.pubsub): alive while the publisher holds its lock.")
describe_queue = _described_by(
    "queue", "A fastipc.Queue (or one large message or spill file of it): alive while its "
    "creator holds its lock, and for good once the creator of a named queue closed it (kept "
    "until ``unlink()`` or ``rm NAME``); stale once its creator died holding it.")
describe_task_count = _described_by(
    "joinable", "A JoinableQueue's task count: alive while its queue is (kept or its creator "
    "running).")
describe_pool = _described_by(
    "executor", "A process pool's worker table: alive while the process that made the pool runs.")


register_describer(describe_channel)
register_describer(describe_temporary)
register_describer(describe_publisher)
register_describer(describe_queue)
register_describer(describe_task_count)
register_describer(describe_pool)


def _owned(directory: str) -> Iterator[tuple[str, str, os.stat_result]]:
    """(name, path, stat) of this user's regular files in ``directory``, sorted by name."""
    uid = os.getuid()
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for name in names:
        path = f"{directory}/{name}"
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == uid and stat.S_ISREG(st.st_mode):
            yield name, path, st


def entries() -> list[SegmentInfo]:
    found: list[SegmentInfo] = []
    for name, path, st in _owned(SHM_DIR):
        for describe in _describers:
            info = describe(path)
            if info is not None:
                found.append(info)
                break
        else:
            if name.startswith("fastipc"):
                found.append(SegmentInfo("shm", name, st.st_size))
    for name, path, _ in _owned(MQ_DIR):
        try:
            with open(path) as f:
                fields = dict(part.split(":", 1) for part in f.read().split() if ":" in part)
        except (OSError, ValueError):
            continue
        size = int(fields.get("QSIZE", "0") or 0)
        found.append(SegmentInfo("mq", "/" + name, size, None, True, "bytes queued"))
    return found


def list_entries(args: argparse.Namespace) -> int:
    rows = [("KIND", "NAME", "SIZE", "OWNER", "STATE")]
    for e in entries():
        rows.append((e.kind, e.name, str(e.size), str(e.owner) if e.owner else "-", e.detail))
    if len(rows) == 1:
        print("no fastipc channels, segments or queues", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _remove_one(name: str) -> str:
    from fastipc._core import posix_name

    bare = posix_name(name)[1:]
    for directory in (SHM_DIR, MQ_DIR):
        path = f"{directory}/{bare}"
        if os.path.lexists(path):
            os.unlink(path)
            return path
    raise FileNotFoundError(2, "no shm segment or message queue by that name", name)


def remove(args: argparse.Namespace) -> int:
    if not args.names and not args.stale:
        print("fastipc: error: rm needs NAME or --stale", file=sys.stderr)
        return 2
    for name in args.names:
        print(f"removed {_remove_one(name)}")
    if args.stale:
        n = 0
        prefix = getattr(args, "match", "") or ""
        for e in entries():
            if e.kind == "mq" or e.alive or not e.name.startswith(prefix):
                continue
            try:
                os.unlink(f"{SHM_DIR}/{e.name}")
            except FileNotFoundError:
                continue
            print(f"removed {SHM_DIR}/{e.name} ({e.kind}: {e.detail})")
            n += 1
        if n == 0:
            print("no stale segments", file=sys.stderr)
    return 0
