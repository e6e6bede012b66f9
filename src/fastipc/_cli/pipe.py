"""``fastipc pipe``: the article's pipe_test, parent to child over an anonymous pipe."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from fastipc import pipe


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pipe",
        help="parent -> child over a pipe (the article's pipe_test)",
        description="The parent forks a child and sends it TEXT (default: 'hello world') over "
        "a pipe; the child prints what it received. With --sigpipe the child closes its end "
        "first, and the parent's write fails with BrokenPipeError instead of SIGPIPE death.",
    )
    p.add_argument("text", nargs="*", default=["hello world"], help="what the parent sends")
    p.add_argument("--sigpipe", action="store_true", help="show a write to a closed pipe")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = " ".join(args.text).encode()
    r, w = pipe.pipe(backend=args.backend)
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            w.close()
            _say(f"child pid:{os.getpid()}.")
            if not args.sigpipe:
                for message in r:
                    _say(message.decode(errors="replace"))
        except BaseException:
            code = 1
        finally:
            r.close()
            os._exit(code)
    r.close()
    _say(f"parent pid:{os.getpid()}.")
    status = 0
    with w:
        if args.sigpipe:
            os.waitpid(pid, 0)  # the child has closed its end and gone
            pid = 0
            try:
                w.send(text)
            except BrokenPipeError as exc:
                _say(
                    f"write to a pipe without readers: BrokenPipeError ({exc.strerror}); "
                    "the process lives on"
                )
        else:
            w.send(text)
    if pid:
        _, status = os.waitpid(pid, 0)
    return 0 if os.waitstatus_to_exitcode(status) == 0 else 1


def _say(line: str) -> None:
    """One write per line, so that the two processes' lines never interleave."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
