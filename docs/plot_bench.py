"""Draw the benchmark charts of the documentation from ``fastipc bench --json`` output.

    python docs/plot_bench.py benchmarks/results.json docs/charts

writes, into the output directory, one SVG (``--format png``: PNG) per mechanism of the run
(``bench-<mechanism>.svg``: one panel per workload, every implementation's median with its
min-max range) and ``bench-overview.svg`` (for each workload, how many times faster fastipc's
native backend is than the best peer measured beside it). Needs matplotlib (the ``docs``
extra) and fastipc (for its units). The SVGs are deterministic for a given input (no date,
fixed ids), so a chart changes in git only when the figures do.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

from fastipc.bench import UNITS  # unit -> (label, higher is better)

TITLES = {
    "pipe": "Pipes",
    "mq": "Message queues",
    "sem": "Semaphores",
    "shm": "Shared-memory channel",
    "queue": "fastipc.Queue",
    "fanout": "Fan-out (Publisher/Subscriber)",
    "server": "Echo servers",
    "executor": "Process pools",
}
NATIVE, PURE = "fastipc native", "fastipc pure"
COLORS = {"native": "#1f6fb4", "pure": "#8fbbe0", "fastipc": "#4f97d1", "c": "#9a9a9a",
          "peer": "#e08a3c"}


def kind(impl: str) -> str:
    """Which family an implementation belongs to, for its colour."""
    if impl.startswith(NATIVE):
        return "native"
    if impl.startswith(PURE):
        return "pure"
    if "fastipc" in impl:
        return "fastipc"
    if impl.startswith("C "):
        return "c"
    return "peer"


def si(value: float) -> str:
    """A short label: 3 significant digits with k/M/G."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:.3g}{suffix}"
    return f"{value:.3g}"


def load(path: Path) -> list[dict[str, Any]]:
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SystemExit(f"{path}: not the output of `fastipc bench --json`")
    return rows


def groups(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """mechanism -> workload -> rows, in the order of the run."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in rows:
        out.setdefault(row["mechanism"], {}).setdefault(row["workload"], []).append(row)
    return out


def save(fig: Any, path: Path) -> None:
    if path.suffix == ".svg":
        fig.savefig(path, metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    else:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_mechanism(mech: str, workloads: dict[str, list[dict[str, Any]]], path: Path) -> None:
    names = list(workloads)
    ncols = 2 if len(names) > 1 else 1
    nrows = math.ceil(len(names) / ncols)
    height = [max(1.0, 0.32 * len(workloads[n]) + 0.9) for n in names]
    row_h = [max(height[i:i + ncols]) for i in range(0, len(names), ncols)]
    fig, axes = plt.subplots(nrows, ncols, figsize=(12, sum(row_h)), squeeze=False,
                             gridspec_kw={"height_ratios": row_h})
    for ax, name in zip(axes.flat, names, strict=False):  # a spare panel stays empty
        rows = workloads[name]
        label, higher = UNITS.get(rows[0]["unit"], (rows[0]["unit"], True))
        impls = [r["impl"] for r in rows]
        ys = range(len(rows))
        for y, r in zip(ys, rows, strict=True):
            if r.get("median") is None:
                ax.text(0.01, y, "missing: " + (r.get("missing") or "not measured"),
                        va="center", fontsize=8, color="#777777",
                        transform=ax.get_yaxis_transform())
                continue
            med = r["median"]
            low = min(med, r.get("low") if r.get("low") is not None else med)
            high = max(med, r.get("high") if r.get("high") is not None else med)
            ax.barh(y, med, color=COLORS[kind(r["impl"])], height=0.7)
            ax.errorbar(med, y, xerr=[[med - low], [high - med]], fmt="none", ecolor="#333333",
                        elinewidth=0.8, capsize=2)
            ax.text(high, y, " " + si(med), va="center", fontsize=8)
        values = [r["median"] for r in rows if r.get("median")]
        log = bool(values) and max(values) / min(values) > 30
        if log:  # a C baseline 50x above the rest would flatten every other bar
            ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: si(v)))
        ax.set_yticks(list(ys), impls, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(name, fontsize=10, loc="left")
        ax.set_xlabel(f"{label} ({'higher' if higher else 'lower'} is better"
                      f"{', log scale' if log else ''})", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(x=0.18)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle(f"{TITLES.get(mech, mech)}: median of the trials, bars from min to max",
                 fontsize=11, x=0.01, ha="left")
    fig.tight_layout()
    save(fig, path)


def speedups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, float, str]]:
    """(mechanism: workload, native over best peer, the peer) for every workload that has
    both, in the order of the run. C programs and fastipc's own variants are not peers."""
    out = []
    for mech, workloads in groups(rows).items():
        for name, group in workloads.items():
            unit = group[0]["unit"]
            if unit not in UNITS or unit in ("of 90", "yes"):  # counts, not speeds
                continue
            native = next((r for r in group if r["impl"] == NATIVE and r.get("median")), None)
            peers = [r for r in group if kind(r["impl"]) == "peer" and r.get("median")]
            if native is None or not peers:
                continue
            higher = UNITS[unit][1]
            best = max(peers, key=lambda r: r["median"] if higher else -r["median"])
            ratio = (native["median"] / best["median"] if higher
                     else best["median"] / native["median"])
            out.append((f"{mech}: {name}", ratio, best["impl"]))
    return out


def plot_overview(rows: Sequence[dict[str, Any]], path: Path) -> None:
    data = speedups(rows)
    fig, ax = plt.subplots(figsize=(10, 0.28 * len(data) + 1.2))
    ys = range(len(data))
    for y, (_, ratio, peer) in zip(ys, data, strict=True):
        ax.barh(y, ratio, color=COLORS["native"] if ratio >= 1 else COLORS["peer"], height=0.7)
        label = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.2g}"
        ax.text(ratio, y, f" {label}x {peer}", va="center", fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.axvline(1, color="#333333", linewidth=0.8)
    ax.set_yticks(list(ys), [d[0] for d in data], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("how many times faster fastipc native is than the best peer "
                  "(log scale; < 1: the peer is faster)", fontsize=8)
    ax.margins(x=0.25)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="the output of `fastipc bench --json`")
    parser.add_argument("outdir", type=Path, help="where to write the charts")
    parser.add_argument("--format", choices=("svg", "png"), default="svg",
                        help="svg (the default, for the site) or png")
    args = parser.parse_args(argv)
    rows = load(args.results)
    args.outdir.mkdir(parents=True, exist_ok=True)
    # Text stays text in the SVGs (small files, selectable, drawn in the reader's sans-serif).
    plt.rcParams.update({"svg.hashsalt": "fastipc", "svg.fonttype": "none",
                         "font.family": "sans-serif"})
    written = []
    for mech, workloads in groups(rows).items():
        path = args.outdir / f"bench-{mech}.{args.format}"
        plot_mechanism(mech, workloads, path)
        written.append(path)
    path = args.outdir / f"bench-overview.{args.format}"
    plot_overview(rows, path)
    written.append(path)
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
