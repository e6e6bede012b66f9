"""``fastipc ls`` and ``fastipc rm``: this user's shared memory channels and segments, and
message queues, including what crashed processes left behind.

``ls`` lists, for this user: every shm channel segment in /dev/shm (recognised by its header,
whatever its name) with its size, writer and reader pids and whether they still run; other
/dev/shm entries whose name starts with ``fastipc``; and the message queues in /dev/mqueue
(where the mqueue file system is mounted) with their size. ``rm NAME`` removes one segment or
queue; ``rm --stale`` removes every channel whose writer is dead.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

SHM_DIR = "/dev/shm"
MQ_DIR = "/dev/mqueue"


def register(sub: Any) -> None:
    ls = sub.add_parser("ls", help="list this user's shm channels, segments and queues")
    ls.set_defaults(func=list_entries)
    rm = sub.add_parser("rm", help="remove a segment or queue (or every stale channel)")
    rm.add_argument("names", nargs="*", metavar="NAME", help="segment or queue names")
    rm.add_argument("--stale", action="store_true",
                    help="remove every channel whose writer process is dead")
    rm.set_defaults(func=remove)


@dataclass
class Entry:
    kind: str  # "channel", "shm", "mq"
    name: str
    size: int
    owner: Optional[int] = None  # the writer's pid, where known
    state: str = ""
    stale: bool = False


def _alive(pid: int) -> bool:
    from fastipc._pure.shm import pid_dead

    return pid > 0 and not pid_dead(pid)


def entries() -> list[Entry]:
    from fastipc import shm

    uid = os.getuid()
    found: list[Entry] = []
    try:
        names = sorted(os.listdir(SHM_DIR))
    except OSError:
        names = []
    for name in names:
        path = f"{SHM_DIR}/{name}"
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid != uid or not os.path.isfile(path):
            continue
        info = shm.channel_info(path)
        if info is None:
            if name.startswith("fastipc"):
                found.append(Entry("shm", name, st.st_size))
            continue
        writer = "running" if _alive(info.writer_pid) else "dead"
        if info.writer_state == 2:
            writer = "closed"
        state = f"writer {writer}"
        if info.reader_pid > 0:
            reader = "running" if _alive(info.reader_pid) else "dead"
            if info.reader_state == 2:
                reader = "closed"
            state += f", reader {info.reader_pid} {reader}"
        else:
            state += ", no reader"
        state += f", {info.head - info.tail} bytes queued" if info.head >= info.tail else ""
        found.append(Entry("channel", name, st.st_size, info.writer_pid, state,
                           stale=writer != "running"))
    try:
        queues = sorted(os.listdir(MQ_DIR))
    except OSError:
        queues = []
    for name in queues:
        path = f"{MQ_DIR}/{name}"
        try:
            st = os.stat(path)
            with open(path) as f:
                fields = dict(part.split(":", 1) for part in f.read().split() if ":" in part)
        except (OSError, ValueError):
            continue
        if st.st_uid != uid:
            continue
        size = int(fields.get("QSIZE", "0") or 0)
        found.append(Entry("mq", "/" + name, size, None, "bytes queued"))
    return found


def list_entries(args: argparse.Namespace) -> int:
    rows = [("KIND", "NAME", "SIZE", "OWNER", "STATE")]
    for e in entries():
        rows.append((e.kind, e.name, str(e.size), str(e.owner) if e.owner else "-", e.state))
    if len(rows) == 1:
        print("no fastipc channels, segments or queues", file=sys.stderr)
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
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
        for e in entries():
            if e.kind == "channel" and e.stale:
                try:
                    os.unlink(f"{SHM_DIR}/{e.name}")
                except FileNotFoundError:
                    continue
                print(f"removed {SHM_DIR}/{e.name} (writer {e.owner} {e.state})")
                n += 1
        if n == 0:
            print("no stale channels", file=sys.stderr)
    return 0
