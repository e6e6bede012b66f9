"""``fastipc mq serve NAME`` and ``fastipc mq send NAME``: the article's mq_server/mq_client.

``serve`` opens the queue (creating it if it does not exist), prints its attributes, then
every message as it arrives (length, priority, text) until Ctrl-C or SIGTERM, and unlinks the
queue on the way out. ``send`` sends each line of its standard input as one message (without
the line's newline), so several writers can feed one server.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("mq", help="POSIX message queue demos: serve, send")
    cmds = p.add_subparsers(dest="mq_command", metavar="ACTION")
    cmds.required = True

    s = cmds.add_parser("serve", help="print each message of queue NAME until Ctrl-C; unlink it")
    s.add_argument("name", help="queue name, e.g. /demo")
    s.add_argument(
        "--max-messages", type=int, default=10, help="queue depth when creating it (default 10)"
    )
    s.add_argument(
        "--max-message-size",
        type=int,
        default=8192,
        help="largest message in bytes when creating it (default 8192)",
    )
    s.set_defaults(func=serve)

    c = cmds.add_parser("send", help="send each line of stdin to queue NAME")
    c.add_argument("name", help="queue name, e.g. /demo")
    c.add_argument(
        "--priority",
        "-p",
        type=int,
        default=0,
        help="priority of the messages, 0 to MQ_PRIO_MAX-1 (default 0)",
    )
    c.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait while the queue is full (default: forever)",
    )
    c.set_defaults(func=send)


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def serve(args: argparse.Namespace) -> int:
    from fastipc import mq

    try:
        q = mq.MessageQueue(
            args.name,
            create=True,
            max_messages=args.max_messages,
            max_message_size=args.max_message_size,
            backend=args.backend,
        )
    except FileExistsError:
        q = mq.MessageQueue(args.name, backend=args.backend)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        a = q.attributes
        print(
            f"queue {q.name}: max_messages={a.max_messages} "
            f"max_message_size={a.max_message_size} current_messages={a.current_messages}",
            flush=True,
        )
        while True:
            data, priority = q.receive()
            text = data.decode("utf-8", "backslashreplace")
            print(f"received {len(data)} bytes, priority {priority}: {text}", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
        try:
            q.unlink()
        except FileNotFoundError:
            pass  # someone else removed it already
        q.close()


def send(args: argparse.Namespace) -> int:
    from fastipc import mq

    with mq.MessageQueue(args.name, backend=args.backend) as q:
        for line in sys.stdin.buffer:
            q.send(line.rstrip(b"\r\n"), priority=args.priority, timeout=args.timeout)
    return 0
