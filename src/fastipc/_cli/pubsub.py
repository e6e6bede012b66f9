"""``fastipc shm publish NAME`` and ``fastipc shm subscribe NAME``: the fan-out demos, in
the style of ``shm write`` / ``shm read``.

``publish`` creates the publisher, waits until ``--subscribers`` subscribers have attached
(they see only what is published after they attach), sends each line of its standard input
(or each MESSAGE given) as one message, and closes: the subscribers read what is left, then
stop. ``subscribe`` waits for the publisher to appear and prints each message on its own
line until the publisher closes (and, with ``drop_oldest``, how many it missed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from fastipc._cli.shm import add_reader, print_messages


def add_commands(shm_subparsers: Any) -> None:
    """Add ``publish`` and ``subscribe`` to the subparsers of ``fastipc shm``."""
    p = shm_subparsers.add_parser("publish", help="publish stdin's lines (or MESSAGEs) to "
                                  "every subscriber of NAME")
    p.add_argument("name", help="publisher name (the segment is /dev/shm/NAME)")
    p.add_argument("messages", nargs="*", metavar="MESSAGE",
                   help="messages to send (default: each line of stdin)")
    p.add_argument("--capacity", type=int, default=1 << 22,
                   help="ring size in bytes (default 4 MiB)")
    p.add_argument("--overflow", choices=["block", "drop_oldest"], default="block",
                   help="what a lagging subscriber gets: the publisher waits (block), or "
                        "it loses the oldest messages (drop_oldest)")
    p.add_argument("--subscribers", type=int, default=1,
                   help="wait for this many subscribers before sending (default 1)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for the subscribers and for room (default: forever)")
    p.set_defaults(func=publish)

    add_reader(shm_subparsers, "subscribe", "publisher", "publisher", subscribe)


def publish(args: argparse.Namespace) -> int:
    from fastipc import pubsub
    from fastipc._core import Deadline

    backend = getattr(args, "backend", None)
    with pubsub.Publisher(args.name, capacity=args.capacity, overflow=args.overflow,
                          backend=backend) as pub:
        print(f"publisher {pub.name}: capacity {pub.capacity} bytes, {pub.overflow}, pid "
              f"{os.getpid()}", file=sys.stderr, flush=True)
        deadline = Deadline.of(args.timeout)
        if pub.subscribers < args.subscribers:
            print(f"waiting for {args.subscribers} subscriber(s) (fastipc shm subscribe "
                  f"{pub.name}) ...", file=sys.stderr, flush=True)
        while True:
            if pub.subscribers >= args.subscribers:
                break
            if deadline.expired():
                raise deadline.error(pub.name)
            time.sleep(0.01)
        sent = 0
        lines = args.messages or (line.rstrip("\n") for line in sys.stdin)
        for line in lines:
            pub.send(line.encode(), timeout=deadline.left() if args.timeout else None)
            sent += 1
        print(f"{sent} messages published to {pub.subscribers} subscriber(s)",
              file=sys.stderr, flush=True)
    return 0


def subscribe(args: argparse.Namespace) -> int:
    from fastipc import pubsub

    backend = getattr(args, "backend", None)
    if args.timeout is None:
        print(f"waiting for the publisher {args.name} ...", file=sys.stderr, flush=True)
    with pubsub.Subscriber(args.name, timeout=args.timeout, backend=backend) as sub:
        n = print_messages(sub, args.count, args.timeout)
        missed = sub.missed
    print(f"{n} messages" + (f", {missed} missed" if missed else ""), file=sys.stderr,
          flush=True)
    return 0
