"""``fastipc bench``: the native-vs-pure benchmark table."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    # Its options belong to fastipc.bench.main: fastipc.__main__ passes them through.
    p = sub.add_parser("bench", help="print the benchmark table (see `fastipc bench --help`)",
                       add_help=False)
    p.set_defaults(func=run, passthrough=True)


def run(args: argparse.Namespace) -> int:
    from fastipc.bench import main

    return main(args.extra)
