"""``fastipc shm write NAME`` and ``fastipc shm read NAME``: the article's mem_server and
mem_client, with real synchronisation instead of a sleep.

``write`` creates the channel, sends each line of its standard input (or each MESSAGE given
on the command line) as one message, then waits until a reader has taken them all before it
closes and removes the segment; it may start long before its reader. ``read`` waits for the
writer to appear, then prints each message on its own line until the writer closes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional


def register(sub: Any) -> None:
    cmds = sub.add_parser("shm", help="shared memory demos: write, read, publish, subscribe") \
        .add_subparsers(dest="shm_command", metavar="ACTION", required=True)

    w = cmds.add_parser("write", help="send stdin's lines (or MESSAGEs) through channel NAME")
    w.add_argument("name", help="channel name (the segment is /dev/shm/NAME)")
    w.add_argument("messages", nargs="*", metavar="MESSAGE",
                   help="messages to send (default: each line of stdin)")
    w.add_argument("--capacity", type=int, default=1 << 20,
                   help="ring size in bytes (default 1 MiB)")
    w.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for a reader to take everything (default: forever)")
    w.set_defaults(func=write)

    add_reader(cmds, "read", "channel", "writer", read)

    from fastipc._cli import pubsub

    pubsub.add_commands(cmds)


def add_reader(cmds: Any, command: str, kind: str, peer: str, func: Any) -> None:
    """Add a command that prints the messages of the ``kind`` NAME until it closes (``shm
    read``, ``shm subscribe``)."""
    r = cmds.add_parser(command, help=f"print the messages of {kind} NAME until it closes")
    r.add_argument("name", help=f"{kind} name")
    r.add_argument("--timeout", type=float, default=None,
                   help=f"seconds to wait for the {peer} and for each message "
                        "(default: forever)")
    r.add_argument("--count", type=int, default=None, help="stop after this many messages")
    r.set_defaults(func=func)


def write(args: argparse.Namespace) -> int:
    from fastipc import shm

    with shm.Writer(args.name, capacity=args.capacity, backend=args.backend) as w:
        print(f"channel {w.name}: capacity {w.capacity} bytes, writer pid "
              f"{os.getpid()}", file=sys.stderr, flush=True)
        sent = 0
        lines = args.messages or (line.rstrip("\n") for line in sys.stdin)
        for line in lines:
            w.send(line.encode(), timeout=args.timeout)
            sent += 1
        if not w.reader_attached:
            print("waiting for a reader (fastipc shm read "
                  f"{w.name}) ...", file=sys.stderr, flush=True)
        w.flush(timeout=args.timeout)
        print(f"{sent} messages taken by the reader", file=sys.stderr, flush=True)
    return 0


def read(args: argparse.Namespace) -> int:
    from fastipc import shm

    if args.timeout is None:
        print(f"waiting for the writer of {args.name} ...", file=sys.stderr, flush=True)
    with shm.Reader(args.name, timeout=args.timeout, backend=args.backend) as r:
        n = print_messages(r, args.count, args.timeout)
    print(f"{n} messages", file=sys.stderr, flush=True)
    return 0


def print_messages(end: Any, count: Optional[int], timeout: Optional[float]) -> int:
    """Write each message ``end`` receives to stdout, one a line, until the stream ends or
    ``count`` were written; returns how many were."""
    out = sys.stdout.buffer
    n = 0
    while count is None or n < count:
        try:
            data = end.recv(timeout=timeout)
        except EOFError:
            break
        out.write(data + b"\n")
        out.flush()
        n += 1
    return n
