"""Disk: a node's data folder against its live data (issue 13, point 5).

    python bench/disk_bench.py [--live-mib 32] [--rounds 8]

For 100-byte, 10 KB and 1 MB values, a node (in this process, its batches
handed to ``Node.handle_batch``: the storage path of a node process, without
sockets) writes ``--live-mib`` of live data, then overwrites every key
``--rounds`` times, under the default config (``segment_bytes`` 64 MiB,
``snapshot_bytes`` 8 MiB, ``retention_bytes`` 1 GiB).  After every batch it
sums the sizes of the files under the data folder.  Live bytes are the live
keys' key and value bytes.  Prints the worst and final ratio of data-folder
bytes to live bytes and writes JSON.  Target: worst <= 4.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import zmq.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from mesh.core import wire  # noqa: E402
from mesh.core.limits import MIB  # noqa: E402
from mesh.roles.config import NodeConfig  # noqa: E402
from mesh.roles.node import Node  # noqa: E402

TARGET = 4.0
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--live-mib", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
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
        {"live_mib": args.live_mib, "rounds": args.rounds, "target": TARGET, "runs": results},
        args.json,
    )


if __name__ == "__main__":
    main()
