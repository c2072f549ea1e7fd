"""Issue 13, point 5: a node's data folder stays within 4x its live data.

The node runs in this process and its batches are handed to
``Node.handle_batch`` directly (no sockets): what is measured is the storage
policy, the same code a node process runs.  Live bytes are the key and value
bytes of the live keys; the folder's bytes are the sizes of every file under
it, the log's preallocated zero tail included.
"""

from __future__ import annotations

from pathlib import Path

import zmq.asyncio

from mesh.core import wire
from mesh.core.limits import MIB
from mesh.roles.config import NodeConfig
from mesh.roles.node import Node

#: the byte trigger (NodeConfig.snapshot_bytes) of these runs: smaller than the
#: default (64 MiB), so that a few dozen MiB of writes go through several snapshots
SNAPSHOT_BYTES = 8 * MIB
#: what the bound allows beyond 4x the live data: the byte trigger, the
#: preallocated tail of the active segment, one batch past the trigger,
#: headers, indexes, identity.json
SLACK = SNAPSHOT_BYTES + 2 * MIB


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run_overwrites(tmp_path: Path, keys: int, value_bytes: int, rounds: int, per_batch: int) -> int:
    """Write ``keys`` keys ``rounds`` times over; return the worst folder size seen."""
    ctx = zmq.asyncio.Context()
    config = NodeConfig(
        node_id="n1",
        data_dir=str(tmp_path / "n1"),
        insecure=True,
        fsync="never",
        segment_bytes=MIB,
        snapshot_bytes=SNAPSHOT_BYTES,
    )
    node = Node(config, ctx)
    worst, rid = 0, 0
    try:
        node.recover()
        node.state = "ready"
        for r in range(rounds):
            value = bytes([r % 256]) * value_bytes
            for start in range(0, keys, per_batch):
                batch = []
                for k in range(start, min(start + per_batch, keys)):
                    rid += 1
                    batch.append([b"c", wire.encode_request(rid, "SET", f"k{k:06d}", value)])
                for reply in node.handle_batch(batch):
                    assert wire.decode_reply(reply[-1])[1] == 0
                worst = max(worst, dir_bytes(tmp_path / "n1"))
    finally:
        node.close()
        ctx.term()
    return worst


def test_large_values_overwritten_keep_the_folder_within_4x_live(tmp_path: Path) -> None:
    keys, size = 16, 256 * 1024
    live = keys * (7 + size)
    worst = run_overwrites(tmp_path, keys, size, rounds=12, per_batch=4)  # 48 MiB written
    assert worst <= 4 * live + SLACK, f"{worst:,} bytes on disk for {live:,} live"


def test_small_values_overwritten_keep_the_folder_within_4x_live(tmp_path: Path) -> None:
    keys, size = 30_000, 100
    live = keys * (7 + size)
    worst = run_overwrites(tmp_path, keys, size, rounds=8, per_batch=1000)  # ~37 MB logged
    assert worst <= 4 * live + SLACK, f"{worst:,} bytes on disk for {live:,} live"
