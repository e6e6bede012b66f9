"""The benchmark runner: one table for every mechanism, native vs pure vs the peers.

Each mechanism has a module here (``pipe``, ``mq``, ``shm``, ``server``) whose docstring says
what it measures and how, and whose ``cases(quick)`` returns :class:`Case` objects. A case is
one implementation of one workload; ``run()`` calls it ``trials`` times, each call returning
one measurement, and the table shows the median with min-max. Two-process cases pin the
two processes to separate cores where there are two (``pinned``).

Run it with ``python -m fastipc.bench`` or ``fastipc bench`` (``--quick``, ``--json``).
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MECHANISMS = ["pipe", "mq", "shm", "queue", "pubsub", "server", "executor"]

# units: (label, higher_is_better, scale from the measured value to the unit shown)
UNITS: dict[str, tuple[str, bool]] = {
    "us": ("µs", False),
    "msg/s": ("msg/s", True),
    "GB/s": ("GB/s", True),
    "req/s": ("req/s", True),
    "us/req": ("µs/req", False),
    "tasks/s": ("tasks/s", True),
    "items/s": ("items/s", True),
    "of 90": ("of 90", True),
    "yes": ("1 = yes", True),
}


class Missing(Exception):
    """Raised by a case whose peer library or tool is not installed; shown, not hidden."""


@dataclass
class Case:
    mechanism: str
    workload: str
    impl: str  # "fastipc native", "fastipc pure", "multiprocessing.Pipe", "C pipe", ...
    unit: str  # a key of UNITS
    measure: Callable[[], float]  # one trial -> one measurement in `unit`
    note: str = ""


@dataclass
class Result:
    mechanism: str
    workload: str
    impl: str
    unit: str
    median: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    trials: list[float] = field(default_factory=list)
    missing: Optional[str] = None
    vs_native: Optional[float] = None  # how many times faster native is than this row


def run_cases(cases: Sequence[Case], trials: int, progress: bool = False) -> list[Result]:
    """Measure the cases of one workload together: a warm-up each, then ``trials`` rounds in
    which every case runs once, in turn. Interleaving puts every implementation of the
    workload under the same drift of a shared machine, so their ratios are fair."""
    results = [Result(c.mechanism, c.workload, c.impl, c.unit) for c in cases]
    live = []
    for case, res in zip(cases, results, strict=False):
        if progress:
            print(f"  {case.mechanism:7} {case.workload:24} {case.impl} ...", file=sys.stderr,
                  flush=True)
        try:
            case.measure()  # warm-up, not counted
            live.append((case, res))
        except Missing as exc:
            res.missing = str(exc) or "not installed"
    for _ in range(trials):
        for case, res in live:
            res.trials.append(case.measure())
    for _, res in live:
        res.median = statistics.median(res.trials)
        res.low, res.high = min(res.trials), max(res.trials)
    return results


def _add_ratios(results: list[Result]) -> None:
    native = {
        (r.mechanism, r.workload): r.median
        for r in results
        if r.impl == "fastipc native" and r.median
    }
    for r in results:
        base = native.get((r.mechanism, r.workload))
        if base is None or not r.median:
            continue
        higher_is_better = UNITS[r.unit][1]
        r.vs_native = base / r.median if higher_is_better else r.median / base


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g} {suffix}"
    return f"{value:.3g}"


def table(results: Sequence[Result]) -> str:
    rows = [("mechanism", "workload", "implementation", "median", "min - max", "native is")]
    for r in results:
        label = UNITS[r.unit][0]
        if r.missing:
            rows.append((r.mechanism, r.workload, r.impl, "missing", r.missing, ""))
            continue
        ratio = "" if r.vs_native is None else f"{r.vs_native:.2f}x"
        rows.append(
            (
                r.mechanism,
                r.workload,
                r.impl,
                f"{fmt(r.median)} {label}",
                f"{fmt(r.low)} - {fmt(r.high)}",
                ratio,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = zip(row, widths, strict=False)
        lines.append("  ".join(cell.ljust(w) for cell, w in cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- helpers


def cores() -> tuple[int, int]:
    """Two CPUs to pin the two processes of a case to (the same one on a 1-CPU machine)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[-1]


@contextmanager
def pinned(target: Callable[..., Any], *args: Any) -> Iterator[mp.process.BaseProcess]:
    """Run ``target(*args)`` in a forked child pinned to one core while the caller runs pinned
    to the other; restore the caller's affinity and reap the child afterwards."""
    mine, theirs = cores()
    saved = os.sched_getaffinity(0)

    def child() -> None:
        os.sched_setaffinity(0, {theirs})
        target(*args)

    proc = mp.get_context("fork").Process(target=child, daemon=True)
    proc.start()
    os.sched_setaffinity(0, {mine})
    try:
        yield proc
    finally:
        os.sched_setaffinity(0, saved)
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def optional(module: str) -> Any:
    """Import a peer library, or raise :class:`Missing`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise Missing(f"{module} not installed") from exc


_C_CACHE = Path(tempfile.gettempdir()) / f"fastipc-bench-{os.getuid()}"


def c_program(name: str) -> Path:
    """Compile ``bench/c/<name>.c`` once (cc -O2) and return the binary; Missing without cc."""
    source = Path(__file__).with_name("c") / f"{name}.c"
    binary = _C_CACHE / name
    newest = max(source.stat().st_mtime, source.with_name("bench.h").stat().st_mtime)
    if binary.exists() and binary.stat().st_mtime >= newest:
        return binary
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise Missing("no C compiler")
    _C_CACHE.mkdir(mode=0o700, exist_ok=True)
    cmd = [cc, "-O2", "-D_GNU_SOURCE", "-o", str(binary), str(source), "-lrt", "-lpthread"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise Missing(f"C baseline failed to compile: {proc.stderr.strip()[:200]}")
    return binary


def run_c(name: str, *args: str) -> float:
    """Run a C baseline; it prints one number, the measurement."""
    mine, theirs = cores()
    out = subprocess.run(
        [str(c_program(name)), str(mine), str(theirs), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return float(out.stdout.split()[-1])


def now() -> float:
    return time.perf_counter()


# ---------------------------------------------------------------------------- main


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="fastipc bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer trials, smaller workloads")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--trials", type=int, default=None, help="trials per case (default 7, quick 5)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated mechanisms: " + ",".join(MECHANISMS)
    )
    parser.add_argument(
        "--match", default="", help="only cases whose workload or implementation contains this"
    )
    args = parser.parse_args(argv)
    trials = args.trials or (5 if args.quick else 7)
    wanted = [m for m in (args.only.split(",") if args.only else MECHANISMS) if m]
    results: list[Result] = []
    for mech in wanted:
        if mech not in MECHANISMS:
            parser.error(f"unknown mechanism {mech!r}")
        try:
            module = importlib.import_module(f"fastipc.bench.{mech}")
        except ModuleNotFoundError as exc:
            if exc.name != f"fastipc.bench.{mech}":
                raise
            continue  # not written yet
        groups: dict[str, list[Case]] = {}
        for case in module.cases(args.quick):
            if not args.match or args.match in f"{case.workload} {case.impl}":
                groups.setdefault(case.workload, []).append(case)
        for group in groups.values():
            results += run_cases(group, trials, progress=not args.json)
    _add_ratios(results)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=1))
    else:
        print(machine())
        print(table(results))
    return 0


def machine() -> str:
    import platform

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from fastipc import _core

    return (
        f"# {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}; native backend: "
        f"{'yes' if _core.NATIVE_ERROR is None else _core.NATIVE_ERROR}\n"
        f"# medians of trials, min - max; 'native is' = how many times faster fastipc native is"
    )
