"""SET throughput by value size: one node against redis-server with an AOF (issue 15).

    python bench/value_size.py [--runs 5] [--mib 32] [--sizes 100,10000,1000000]
                               [--fsync always,never] [--node-args '--snapshot-mib 0']

For each value size and each ``--fsync`` mode of the node, each run starts a
fresh node (no peers, the default CURVE key set) and a fresh ``redis-server
--appendonly yes --appendfsync no`` (every value appended to its AOF, which
the kernel writes back when it likes), and sends each the same pipelined
SETs: batches of about 4 MiB (at most 1,000 SETs), all sent then all replies
read, over ``--mib`` MiB of values (at least 20,000 SETs for small values),
keys cycling over 1,000.  The two take turns within each run.  Prints SETs/s
and MB/s of values for both and the ratio node / Redis (median of the
per-run ratios, with its range), and writes JSON.  Target (issue 15): 1 MB
values >= 0.6x.
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
from anchors import Node, Redis  # noqa: E402
from common import end_all, print_table, write_json  # noqa: E402

TARGET = {1_000_000: 0.6}
BATCH_BYTES = 4 * 1024 * 1024
KEYS = 1_000


def plan(size: int, mib: int) -> tuple[int, int]:
    """(SETs per run, SETs per batch) for values of ``size`` bytes."""
    count = max(20_000 if size < 10_000 else 8, mib * 1024 * 1024 // size)
    return count, max(1, min(1_000, BATCH_BYTES // size))


def throughput(server: Node | Redis, size: int, count: int, batch: int) -> float:
    """SETs/s of ``count`` pipelined SETs of ``size``-byte values (after one warm batch)."""
    value = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    keys = [f"key:{i:06d}" for i in range(KEYS)]
    server.set_batch(keys[:batch], value)  # warm
    started = time.perf_counter()
    done = 0
    while done < count:
        n = min(batch, count - done)
        first = done % KEYS
        chunk = keys[first : first + n]
        chunk += keys[: n - len(chunk)]
        server.set_batch(chunk, value)
        done += n
    return count / (time.perf_counter() - started)


def one_run(size: int, fsync: str, count: int, batch: int, node_args: list[str]) -> dict:
    root = Path(tempfile.mkdtemp(prefix="pycache-vsz-"))
    try:
        node = Node(root / "node", ["--fsync", fsync, *node_args]).start()
        try:
            ours = throughput(node, size, count, batch)
        finally:
            node.stop()
        redis = Redis(root / "redis", ["--appendonly", "yes", "--appendfsync", "no"]).start()
        try:
            theirs = throughput(redis, size, count, batch)
        finally:
            redis.stop()
    finally:
        end_all()
        shutil.rmtree(root, ignore_errors=True)
    return {"node_ops_s": ours, "redis_ops_s": theirs, "ratio": ours / theirs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=32, help="MiB of values per run and size")
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--fsync", default="always,never", help="the node's --fsync mode(s)")
    parser.add_argument(
        "--node-args", default="", help="more node options, e.g. '--snapshot-mib 0'"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    results = []
    for fsync in args.fsync.split(","):
        for size in map(int, args.sizes.split(",")):
            count, batch = plan(size, args.mib)
            runs = []
            for _ in range(args.runs):
                runs.append(one_run(size, fsync, count, batch, args.node_args.split()))
            ratios = [r["ratio"] for r in runs]
            row = {
                "fsync": fsync,
                "value_bytes": size,
                "sets_per_run": count,
                "batch": batch,
                "node_ops_s": statistics.median(r["node_ops_s"] for r in runs),
                "redis_ops_s": statistics.median(r["redis_ops_s"] for r in runs),
                "ratio": statistics.median(ratios),
                "ratio_range": [min(ratios), max(ratios)],
                "runs": runs,
            }
            results.append(row)
            print(
                f"{size:>9,} B fsync={fsync}: ratio {row['ratio']:.2f} "
                f"(runs {min(ratios):.2f}-{max(ratios):.2f})",
                flush=True,
            )
    rows = []
    for r in results:
        target = TARGET.get(r["value_bytes"])
        verdict = (
            "-"
            if target is None
            else f">= {target}: " + ("met" if r["ratio"] >= target else "not met")
        )
        rows.append(
            (
                f"{r['value_bytes']:,} B",
                r["fsync"],
                r["node_ops_s"],
                r["node_ops_s"] * r["value_bytes"] / 1e6,
                r["redis_ops_s"],
                r["redis_ops_s"] * r["value_bytes"] / 1e6,
                r["ratio"],
                f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}",
                verdict,
            )
        )
    print_table(
        f"pipelined SET by value size, {args.runs} runs (medians); "
        "Redis: appendonly yes, appendfsync no",
        ["value", "node fsync", "node SET/s", "MB/s", "redis SET/s", "MB/s"]
        + ["ratio", "range", "target"],
        rows,
    )
    write_json(
        "value_size",
        {"mib": args.mib, "runs": args.runs, "node_args": args.node_args, "results": results},
        args.json,
    )


if __name__ == "__main__":
    main()
