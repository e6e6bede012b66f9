"""``fastipc tcp serve|connect`` and ``fastipc unix serve|connect``: an echo server that
prints each client's connect, data and disconnect, and a client that sends stdin lines and
prints the replies (the article's ``tcpservselect01`` and ``tcpcli01``)."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any, Optional


def register(sub: Any) -> None:
    for family in ("tcp", "unix"):
        p = sub.add_parser(family, help=f"{'TCP' if family == 'tcp' else 'Unix-domain'} "
                           "echo server and client (the article's demo)")
        verbs = p.add_subparsers(dest="verb", metavar="VERB")
        verbs.required = True
        serve = verbs.add_parser("serve", help="echo every message back, printing each "
                                 "client's connect, data and disconnect")
        connect = verbs.add_parser("connect", help="send stdin lines, print the replies")
        if family == "tcp":
            serve.add_argument("--host", default="127.0.0.1",
                               help="address to listen on (default 127.0.0.1; '' for all)")
            serve.add_argument("--port", type=int, default=9877,
                               help="port to listen on (default 9877, 0 picks a free one)")
            connect.add_argument("host")
            connect.add_argument("port", type=int)
        else:
            serve.add_argument("path", help="socket path (at most 107 bytes)")
            connect.add_argument("path", help="the server's socket path")
        for p2 in (serve, connect):
            p2.add_argument("--framing", choices=["raw", "length"], default="raw",
                            help="raw bytes, as nc sends them (default), or 4-byte "
                            "length-prefixed messages")
        serve.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                           help="close a connection idle for that long (default: never)")
        serve.add_argument("--max-connections", type=int, default=None, metavar="N",
                           help="close clients beyond N open connections at once "
                           "(default: no limit)")
        serve.set_defaults(func=run_serve, family=family)
        connect.set_defaults(func=run_connect, family=family)


def _say(line: str) -> None:
    print(line, flush=True)


def _show(data: bytes) -> str:
    return data.decode("utf-8", "replace").rstrip("\n")


def run_serve(args: argparse.Namespace) -> int:
    from fastipc import server

    class Echo(server.Handler):
        count = 0

        def on_connect(self, conn: server.Connection) -> None:
            Echo.count += 1
            peer = conn.peer
            if isinstance(peer, tuple):
                name = f"[{peer[0]}]:{peer[1]}" if ":" in peer[0] else f"{peer[0]}:{peer[1]}"
            else:
                name = peer or f"client #{Echo.count}"
            conn.data = name
            _say(f"connect {name}")

        def on_message(self, conn: server.Connection, data: bytes) -> None:
            _say(f"{conn.data}: {_show(data)}")
            conn.send(data)

        def on_close(self, conn: server.Connection) -> None:
            why = f" ({conn.error.strerror})" if conn.error is not None else ""
            _say(f"disconnect {conn.data}{why}")

    kw: dict[str, Any] = (
        {"tcp": (args.host, args.port)} if args.family == "tcp" else {"unix": args.path}
    )
    with server.Server(Echo(), framing=args.framing, idle_timeout=args.idle_timeout,
                       max_connections=args.max_connections, backend=args.backend,
                       **kw) as srv:
        where = srv.tcp_address if args.family == "tcp" else srv.unix_path
        if isinstance(where, tuple):
            where = f"{where[0]}:{where[1]}"
        _say(f"listening on {where} ({srv.backend} backend, {args.framing} framing); "
             "Ctrl-C stops")
        old = signal.signal(signal.SIGTERM, lambda *_: srv.stop())
        try:
            srv.serve_forever()
        finally:
            signal.signal(signal.SIGTERM, old)
    return 0


def run_connect(args: argparse.Namespace) -> int:
    from fastipc import server

    address: Any = (args.host, args.port) if args.family == "tcp" else args.path
    with server.connect(address, framing=args.framing, timeout=10.0,
                        backend=args.backend) as c:
        for line in sys.stdin:
            data = line.encode()
            try:
                c.send(data)
                reply = _reply(c, data, args.framing)
            except (EOFError, ConnectionError):
                reply = None
            if reply is None:
                print("fastipc: server terminated prematurely", file=sys.stderr)
                return 1
            _say(_show(reply))
    return 0


def _reply(c: Any, sent: bytes, framing: str) -> Optional[bytes]:
    """One whole message, or (raw) bytes up to the end of a line or as many as were sent;
    None once the server has gone."""
    if framing == "length":
        return c.recv()  # type: ignore[no-any-return]
    got = b""
    while not got.endswith(b"\n") and len(got) < len(sent):
        chunk = c.recv()
        if not chunk:
            return None
        got += chunk
    return got
