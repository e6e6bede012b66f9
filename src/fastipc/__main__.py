"""The ``fastipc`` command: the benchmark table, housekeeping and the article's demos.

Each group of subcommands lives in ``fastipc/_cli/<group>.py`` with a ``register(subparsers)``
function; every subcommand sets ``func(args) -> int``. Errors are one line and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Optional

GROUPS = ["bench", "pipe", "mq", "shm", "server", "admin"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fastipc", description="Linux IPC for Python: benchmarks, housekeeping and demos."
    )
    parser.add_argument(
        "--backend",
        choices=["native", "pure", "auto"],
        default=None,
        help="backend for the demos (default: FASTIPC_BACKEND or auto)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        try:
            module = importlib.import_module(f"fastipc._cli.{group}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fastipc._cli.{group}":
                raise
            continue
        module.register(sub)
    for command in sub.choices.values():  # `fastipc pipe --backend pure` works too
        if not any("--backend" in a.option_strings for a in command._actions):
            command.add_argument(
                "--backend",
                choices=["native", "pure", "auto"],
                default=argparse.SUPPRESS,
                help=argparse.SUPPRESS,
            )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0  # `fastipc ... | head`: the reader left, nothing to report
    except (OSError, ValueError, TypeError, EOFError, ImportError) as exc:
        print(f"fastipc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
