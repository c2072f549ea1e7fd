"""Memory per key: RSS delta of N x 100 B keys in one node against redis-server (issue 15).

    python bench/memory_per_key.py [--keys 200000] [--runs 5] [--value-bytes 100]

Each run starts a fresh node (no peers, ``--fsync never``: durability does not
change what the store holds) and a fresh ``redis-server`` (no persistence),
reads each one's VmRSS when idle, loads the same ``--keys`` keys
(``key:00000000`` ...) with ``--value-bytes`` values in pipelined batches of
1,000 SETs, waits for the RSS to settle and reads it again.  The two take
turns within each run.  Prints bytes per key (RSS delta / keys) for both and
the ratio node / Redis, medians and ranges over the runs, and writes JSON.
Target (issue 15): ratio <= 1.3.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import Node, Redis, rss  # noqa: E402
from common import end_all, print_table, write_json  # noqa: E402

TARGET = 1.3
BATCH = 1_000


def settled_rss(pid: int) -> int:
    """RSS once two reads 100 ms apart agree within 0.1% (at most 2 s)."""
    last = rss(pid)
    for _ in range(20):
        time.sleep(0.1)
        now = rss(pid)
        if abs(now - last) <= last // 1000:
            return now
        last = now
    return last


def load(server: Node | Redis, keys: int, value: bytes) -> float:
    """SET every key in batches; seconds taken."""
    started = time.perf_counter()
    for start in range(0, keys, BATCH):
        server.set_batch([f"key:{i:08d}" for i in range(start, min(start + BATCH, keys))], value)
    return time.perf_counter() - started


def measure(server: Node | Redis, keys: int, value: bytes) -> dict:
    idle = settled_rss(server.pid)
    took = load(server, keys, value)
    loaded = settled_rss(server.pid)
    return {
        "idle_rss": idle,
        "loaded_rss": loaded,
        "per_key": (loaded - idle) / keys,
        "load_s": took,
    }


def one_run(keys: int, value: bytes) -> dict:
    root = Path(tempfile.mkdtemp(prefix="pycache-mpk-"))
    try:
        node = Node(root / "node", ["--insecure", "--fsync", "never"]).start()
        try:
            ours = measure(node, keys, value)
        finally:
            node.stop()
        redis = Redis(root / "redis").start()
        try:
            theirs = measure(redis, keys, value)
        finally:
            redis.stop()
    finally:
        end_all()
        shutil.rmtree(root, ignore_errors=True)
    return {"node": ours, "redis": theirs, "ratio": ours["per_key"] / theirs["per_key"]}


def spread(values: list[float]) -> str:
    return (
        f"{min(values):,.2f}-{max(values):,.2f}"
        if values[0] < 100
        else (f"{min(values):,.0f}-{max(values):,.0f}")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=200_000, help="the issue's size: 1000000")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    value = b"v" * args.value_bytes
    runs = []
    for n in range(args.runs):
        runs.append(one_run(args.keys, value))
        r = runs[-1]
        print(
            f"run {n + 1}: node {r['node']['per_key']:.0f} B/key "
            f"(load {r['node']['load_s']:.1f} s), redis {r['redis']['per_key']:.0f} B/key "
            f"(load {r['redis']['load_s']:.1f} s), ratio {r['ratio']:.2f}",
            flush=True,
        )
    ours = [r["node"]["per_key"] for r in runs]
    theirs = [r["redis"]["per_key"] for r in runs]
    ratios = [r["ratio"] for r in runs]
    summary = {
        "node_per_key": statistics.median(ours),
        "redis_per_key": statistics.median(theirs),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }
    print_table(
        f"RSS delta per key, {args.keys:,} keys x {args.value_bytes} B, {args.runs} runs (medians)",
        ["measure", "node", "range", "redis", "range", "ratio", "range", "target"],
        [
            (
                "bytes/key",
                summary["node_per_key"],
                spread(ours),
                summary["redis_per_key"],
                spread(theirs),
                summary["ratio"],
                spread(ratios),
                f"<= {TARGET}: {'met' if summary['ratio'] <= TARGET else 'not met'}",
            )
        ],
    )
    write_json(
        "memory_per_key",
        {
            "keys": args.keys,
            "value_bytes": args.value_bytes,
            "target": TARGET,
            "summary": summary,
            "runs": runs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
