"""Shared plumbing for the benchmark scripts: medians, a table, JSON output.

Benchmarks quote medians of several runs and put each figure next to a
ceiling measured in the same run, as a ratio: absolute numbers drift from
machine to machine, ratios much less.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``measure`` ``runs`` times; return the median and every sample."""
    samples = [measure() for _ in range(runs)]
    return statistics.median(samples), samples


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain aligned table with a title line."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, results: dict, path: str | None = None) -> Path:
    """Write ``results`` with machine facts to ``path`` or ``bench/results/<name>.json``."""
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **results,
    }
    target.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {target}")
    return target


def _fmt(cell: object) -> str:
    if isinstance(cell, float):
        return f"{cell:,.2f}" if cell < 100 else f"{cell:,.0f}"
    if isinstance(cell, int):
        return f"{cell:,}"
    return str(cell)
