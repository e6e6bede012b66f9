"""``fastipc bench``: the native-vs-pure benchmark table."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench", help="print the benchmark table (see `fastipc bench --help`)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fastipc.bench import main

    return main(args.rest)
