"""Replay: how fast a node rebuilds its memory from 1,000,000 logged entries.

    python bench/replay_bench.py [--entries 1000000] [--keys 1000000] [--runs 5]

Writes the entries (100-byte values, ``--keys`` distinct keys) to a fresh log
once, then times, on the same files, (a) ``Log.replay`` alone, reading and
decoding every record (the ceiling for the node) and (b) ``Node.recover``,
which replays the log into the store exactly as a node does on start.
Prints medians of ``--runs`` runs and writes JSON.  Target (issue 2):
>= 300,000 entries/s for (b).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_of, print_table, write_json  # noqa: E402

from mesh.core.clock import pack, wall_ms  # noqa: E402
from mesh.core.mutation import Mutation  # noqa: E402
from mesh.roles.config import NodeConfig  # noqa: E402
from mesh.roles.node import Node  # noqa: E402
from mesh.storage.datadir import open_identity  # noqa: E402
from mesh.storage.log import Log  # noqa: E402

TARGET = 300_000
VALUE = b"v" * 100
BATCH = 1000


def write_log(data_dir: str, entries: int, keys: int) -> None:
    origin = open_identity(data_dir, "bench")
    now = wall_ms()
    with Log(data_dir, fsync="never") as log:
        for start in range(0, entries, BATCH):
            log.append(
                [
                    Mutation(
                        origin,
                        seq,
                        pack(now + seq // 1000, seq % 1000),
                        f"key:{seq % keys:07d}",
                        VALUE,
                        0,
                    )
                    for seq in range(start + 1, min(start + BATCH, entries) + 1)
                ]
            )
        log.sync()


def time_log_replay(data_dir: str) -> float:
    with Log(data_dir, fsync="never") as log:
        started = time.perf_counter()
        count = sum(1 for _ in log.replay(0))
        return count / (time.perf_counter() - started)


def time_node_recover(data_dir: str) -> float:
    gc.collect()
    ctx = zmq.asyncio.Context()
    try:
        node = Node(
            NodeConfig(node_id="bench", data_dir=data_dir, snapshot_every=0, insecure=True), ctx
        )
        started = time.perf_counter()
        count = node.recover()
        rate = count / (time.perf_counter() - started)
        node.close()
        return rate
    finally:
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pycache-replay-") as data_dir:
        write_log(data_dir, args.entries, args.keys)
        log_rate, log_runs = median_of(args.runs, lambda: time_log_replay(data_dir))
        node_rate, node_runs = median_of(args.runs, lambda: time_node_recover(data_dir))
    print_table(
        f"replay of {args.entries:,} entries ({args.keys:,} keys, {len(VALUE)}-byte values), "
        f"medians of {args.runs} runs",
        ["what", "entries/s", "ratio to log read", "target"],
        [
            ("Log.replay (read + decode)", log_rate, 1.0, "-"),
            (
                "Node.recover (read + decode + apply)",
                node_rate,
                node_rate / log_rate,
                f">= {TARGET:,}/s {'ok' if node_rate >= TARGET else 'BELOW'}",
            ),
        ],
    )
    write_json(
        "replay_bench",
        {
            "entries": args.entries,
            "keys": args.keys,
            "runs": args.runs,
            "log_replay_entries_s": log_rate,
            "node_recover_entries_s": node_rate,
            "target_entries_s": TARGET,
            "log_runs": log_runs,
            "node_runs": node_runs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
