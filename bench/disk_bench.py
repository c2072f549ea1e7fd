"""Disk: a node's data folder against its live data (issue 13, point 5).

    python bench/disk_bench.py [--live-mib 32] [--rounds 8]

For 100-byte, 10 KB and 1 MB values, a node (in this process, its batches
handed to ``Node.handle_batch``: the storage path of a node process, without
sockets) writes ``--live-mib`` of live data, then overwrites every key
``--rounds`` times, under the default config (``segment_bytes`` 64 MiB,
``snapshot_bytes`` 64 MiB, ``retention_bytes`` 1 GiB).  After every batch it
sums the sizes of the files under the data folder.  Live bytes are the live
keys' key and value bytes.  Prints the worst and final ratio of data-folder
bytes to live bytes and writes JSON.  Target: worst <= 4.

Then (issue 15; ``--bulk-keys 0`` skips it) the data folder per key after a
bulk load and a clean stop, against Redis's RDB: per run a fresh node process
(no peers, ``--fsync never``) and a fresh ``redis-server`` (no persistence
until ``SHUTDOWN SAVE``) each take the same ``--bulk-keys`` 100-byte random SETs in
pipelined batches of 1,000, then stop cleanly (SIGTERM for the node, SHUTDOWN
SAVE for Redis); the bytes of the node's data folder and of Redis's folder
(dump.rdb) are divided by the keys.  ``--bulk-runs`` runs, taking turns;
medians of the per-run ratio.  Target: <= 1.5.  Also the time each stop
took (SIGTERM to exit, which includes the node's snapshot: it has no peers;
SHUTDOWN SAVE to exit).
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import Node as NodeChild  # noqa: E402
from anchors import Redis  # noqa: E402
from common import end_all, print_table, write_json  # noqa: E402

from mesh.core import wire  # noqa: E402
from mesh.core.limits import MIB  # noqa: E402
from mesh.roles.config import NodeConfig  # noqa: E402
from mesh.roles.node import Node  # noqa: E402

TARGET = 4.0
BULK_TARGET = 1.5
BULK_VALUE_BYTES = 100
SIZES = (100, 10_000, 1_000_000)


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(value_bytes: int, live_bytes: int, rounds: int) -> dict:
    keys = max(1, live_bytes // (value_bytes + 8))
    per_batch = max(1, min(1000, (4 * MIB) // value_bytes))
    live = keys * (8 + value_bytes)
    worst = last = written = 0
    with tempfile.TemporaryDirectory(prefix="pycache-disk-") as tmp:
        ctx = zmq.asyncio.Context()
        node = Node(NodeConfig(node_id="bench", data_dir=tmp, insecure=True, fsync="never"), ctx)
        try:
            node.recover()
            node.state = "ready"
            rid = 0
            for r in range(rounds + 1):
                value = bytes([r % 256]) * value_bytes
                for start in range(0, keys, per_batch):
                    batch = []
                    for k in range(start, min(start + per_batch, keys)):
                        rid += 1
                        batch.append([b"c", wire.encode_request(rid, "SET", f"k{k:07d}", value)])
                    node.handle_batch(batch)
                    written += len(batch) * value_bytes
                    last = dir_bytes(Path(tmp))
                    if r:  # the first round is the bulk load
                        worst = max(worst, last)
        finally:
            node.close()
            ctx.term()
    return {
        "value_bytes": value_bytes,
        "keys": keys,
        "live_bytes": live,
        "written_bytes": written,
        "worst_dir_bytes": worst,
        "final_dir_bytes": last,
        "worst_ratio": worst / live,
        "final_ratio": last / live,
    }


def bulk_run(keys: int) -> dict:
    """Data folder bytes per key after a bulk load and a clean stop: node and Redis."""
    root = Path(tempfile.mkdtemp(prefix="pycache-bulk-"))
    names = [f"key:{i:08d}" for i in range(keys)]
    rng = random.Random(15)  # incompressible values: RDB compresses repetitive ones
    values = [rng.randbytes(BULK_VALUE_BYTES) for _ in range(keys)]
    try:
        node = NodeChild(root / "node", ["--insecure", "--fsync", "never"]).start()
        try:
            for start in range(0, keys, 1000):
                node.set_batch(names[start : start + 1000], values[start : start + 1000])
        finally:
            started = time.perf_counter()
            node.stop()
            node_stop = time.perf_counter() - started
        ours = dir_bytes(node.data_dir)
        redis = Redis(root / "redis").start()
        try:
            for start in range(0, keys, 1000):
                redis.set_batch(names[start : start + 1000], values[start : start + 1000])
        finally:
            started = time.perf_counter()
            redis.stop(save=True)
            redis_stop = time.perf_counter() - started
        theirs = dir_bytes(redis.dir)
    finally:
        end_all()
        shutil.rmtree(root, ignore_errors=True)
    return {
        "node_per_key": ours / keys,
        "redis_per_key": theirs / keys,
        "ratio": ours / theirs,
        "node_stop_s": node_stop,
        "redis_stop_s": redis_stop,
    }


def bulk(keys: int, runs: int) -> dict:
    """``runs`` bulk runs: medians, ranges and the table row."""
    samples = [bulk_run(keys) for _ in range(runs)]
    ratios = [r["ratio"] for r in samples]
    out = {
        "keys": keys,
        "node_per_key": statistics.median(r["node_per_key"] for r in samples),
        "redis_per_key": statistics.median(r["redis_per_key"] for r in samples),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
        "node_stop_s": statistics.median(r["node_stop_s"] for r in samples),
        "redis_stop_s": statistics.median(r["redis_stop_s"] for r in samples),
        "runs": samples,
    }
    print_table(
        f"data folder per key after a bulk load of {keys:,} x 100 B and a clean stop, "
        f"{runs} runs (medians)",
        ["measure", "node B/key", "redis RDB B/key", "ratio", "range", "target", "stop s"],
        [
            (
                "bytes/key",
                out["node_per_key"],
                out["redis_per_key"],
                out["ratio"],
                f"{min(ratios):.2f}-{max(ratios):.2f}",
                f"<= {BULK_TARGET}: {'met' if out['ratio'] <= BULK_TARGET else 'not met'}",
                f"node {out['node_stop_s']:.2f}, redis {out['redis_stop_s']:.2f}",
            )
        ],
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--live-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--bulk-keys", type=int, default=200_000, help="0: skip the RDB anchor")
    parser.add_argument("--bulk-runs", type=int, default=5)
    parser.add_argument("--skip-overwrite", action="store_true", help="the bulk anchor only")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bulk_out = None
    if args.bulk_keys:
        if not shutil.which("redis-server"):
            raise SystemExit("redis-server is not on PATH (apt-get install redis-server)")
        bulk_out = bulk(args.bulk_keys, args.bulk_runs)
    if args.skip_overwrite:
        write_json("disk_bench", {"bulk": bulk_out}, args.json)
        return
    results = [run(size, args.live_mib * MIB, args.rounds) for size in SIZES]
    print_table(
        f"data folder / live data, {args.live_mib} MiB live overwritten {args.rounds} times",
        ["value", "keys", "live MiB", "worst dir MiB", "worst ratio", "final ratio", "target"],
        [
            (
                f"{r['value_bytes']:,} B",
                r["keys"],
                r["live_bytes"] / MIB,
                r["worst_dir_bytes"] / MIB,
                r["worst_ratio"],
                r["final_ratio"],
                f"<= {TARGET} {'ok' if r['worst_ratio'] <= TARGET else 'OVER'}",
            )
            for r in results
        ],
    )
    write_json(
        "disk_bench",
        {
            "live_mib": args.live_mib,
            "rounds": args.rounds,
            "target": TARGET,
            "runs": results,
            "bulk": bulk_out,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
