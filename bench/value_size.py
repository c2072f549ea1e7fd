"""SET throughput by value size: one node against redis-server with an AOF (issue 15).

    python bench/value_size.py [--runs 5] [--mib 32] [--sizes 100,10000,1000000]
                               [--fsync always,never] [--node-args '--snapshot-mib 0']
                               [--compare DIR]

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

The default 32 MiB per run stays below a node's 64 MiB snapshot floor
(``--snapshot-mib``): it measures the write path.  ``--mib 256`` shows a
store that passes it (snapshots written on the node's loop; Redis rewrites
its AOF in a forked child).

``--compare DIR`` also runs, in each run, a node started from the source
tree ``DIR`` (another checkout, e.g. ``git worktree add /tmp/before HEAD~1``),
interleaved with this tree's (the order alternates run by run): an A/B of
two versions in one sitting, its ratio the median of the per-run ratios
this tree / ``DIR``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import Node, Redis  # noqa: E402
from common import end_all, print_table, write_json  # noqa: E402

TARGET = {1_000_000: 0.6}
#: the source tree this script belongs to
HERE = Path(__file__).resolve().parent.parent
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


@contextlib.contextmanager
def source_tree(tree: Path) -> Iterator[None]:
    """Children started inside run ``python -m mesh`` from ``tree``."""
    cwd, path = os.getcwd(), os.environ.get("PYTHONPATH")
    os.chdir(tree)  # python -m puts the working folder first on sys.path
    os.environ["PYTHONPATH"] = str(tree)
    try:
        yield
    finally:
        os.chdir(cwd)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path


def node_run(root: Path, tree: Path, size: int, count: int, batch: int, args: list[str]) -> float:
    """SETs/s of a fresh node started from source ``tree``."""
    with source_tree(tree):
        node = Node(root, args).start()
    try:
        return throughput(node, size, count, batch)
    finally:
        node.stop()


def one_run(
    size: int,
    fsync: str,
    count: int,
    batch: int,
    node_args: list[str],
    other: Path | None,
    flip: bool,
) -> dict:
    root = Path(tempfile.mkdtemp(prefix="pycache-vsz-"))
    args = ["--fsync", fsync, *node_args]
    try:
        trees = [("node_ops_s", HERE)] + ([("other_ops_s", other)] if other else [])
        out: dict = {}
        for name, tree in trees[::-1] if flip else trees:
            out[name] = node_run(root / name, tree, size, count, batch, args)
        redis = Redis(root / "redis", ["--appendonly", "yes", "--appendfsync", "no"]).start()
        try:
            out["redis_ops_s"] = throughput(redis, size, count, batch)
        finally:
            redis.stop()
    finally:
        end_all()
        shutil.rmtree(root, ignore_errors=True)
    out["ratio"] = out["node_ops_s"] / out["redis_ops_s"]
    if other:
        out["other_ratio"] = out["other_ops_s"] / out["redis_ops_s"]
        out["vs_other"] = out["node_ops_s"] / out["other_ops_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mib", type=int, default=32, help="MiB of values per run and size")
    parser.add_argument("--sizes", default="100,10000,1000000")
    parser.add_argument("--fsync", default="always,never", help="the node's --fsync mode(s)")
    parser.add_argument(
        "--node-args", default="", help="more node options, e.g. '--snapshot-mib 0'"
    )
    parser.add_argument(
        "--compare", default=None, help="also a node from this source tree, interleaved (A/B)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
    other = Path(args.compare).resolve() if args.compare else None
    if other is not None and not (other / "mesh" / "__main__.py").is_file():
        raise SystemExit(f"--compare {args.compare}: no mesh/__main__.py there")
    results = []
    for fsync in args.fsync.split(","):
        for size in map(int, args.sizes.split(",")):
            count, batch = plan(size, args.mib)
            runs = []
            for i in range(args.runs):
                extra = args.node_args.split()
                runs.append(one_run(size, fsync, count, batch, extra, other, i % 2 == 1))
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
            line = (
                f"{size:>9,} B fsync={fsync}: ratio {row['ratio']:.2f} "
                f"(runs {min(ratios):.2f}-{max(ratios):.2f})"
            )
            if other is not None:
                versus = [r["vs_other"] for r in runs]
                row["other_ops_s"] = statistics.median(r["other_ops_s"] for r in runs)
                row["other_ratio"] = statistics.median(r["other_ratio"] for r in runs)
                row["vs_other"] = statistics.median(versus)
                line += (
                    f"; {other}: ratio {row['other_ratio']:.2f}; this tree / that one "
                    f"{row['vs_other']:.2f} (runs {min(versus):.2f}-{max(versus):.2f})"
                )
            results.append(row)
            print(line, flush=True)
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
        {
            "mib": args.mib,
            "runs": args.runs,
            "node_args": args.node_args,
            "compare": str(other) if other else None,
            "results": results,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
