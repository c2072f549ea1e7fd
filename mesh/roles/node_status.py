"""What a node reports about itself: ``node.json``, HEALTH, CLUSTER and STATS.

Read-only views of a running :class:`~mesh.roles.node.Node`, kept apart from
the request and replication paths.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mesh.core.clock import monotonic_ms
from mesh.storage.datadir import write_atomically

if TYPE_CHECKING:
    from mesh.roles.node import Node

STATUS_FILE = "node.json"


def write_status_file(node: Node) -> None:
    """Write ``<data-dir>/node.json``: pid, state and the endpoints actually bound.

    With ``tcp://127.0.0.1:*`` endpoints the OS picks the ports; tests and
    tools read them from here.
    """
    status = {"pid": os.getpid(), "state": node.state, "api": node.endpoint}
    if node.http is not None:
        status["http"] = node.http.url
    if node.peering is not None:
        status.update(node.peering.endpoints)
    path = Path(node.config.data_dir) / STATUS_FILE
    write_atomically(path, json.dumps(status).encode(), durable=False)


def health(node: Node) -> dict:
    """The HEALTH reply: who this is and whether it serves."""
    return {
        "node_id": node.config.node_id,
        "state": node.state,
        "bundle_bytes": node.config.limits.request_bytes,
    }


def cluster(node: Node) -> dict:
    """The CLUSTER reply: this node in full, its peers as it sees them."""
    me = {
        "node_id": node.config.node_id,
        "state": node.state,
        "keys": len(node.store),
        "digest": node.store.digest(),
        "endpoint": node.endpoint,
        "lag": {"entries": 0, "ms": 0},
    }
    peers = [
        {"node_id": node_id, "state": lag.pop("state"), "lag": lag}
        for node_id, lag in node.replica.lag(monotonic_ms()).items()
    ]
    return {"nodes": [me, *peers]}


def stats(node: Node) -> dict:
    """The STATS reply: identity, state, replication, store, log and counters."""
    now = monotonic_ms()
    return {
        "node_id": node.config.node_id,
        "origin": node.origin,
        "state": node.state,
        "seq": node.commands.seq,
        "uptime_ms": int((time.monotonic() - node.started) * 1000),
        "digest": node.store.digest(),
        **node.store.stats(),
        **node.counters,
        "vv": dict(node.replica.vv),
        "lag": node.replica.lag(now),
        "replication": dict(node.replica.counters),
        "peering": dict(node.peering.counters) if node.peering else {},
        "endpoints": {"api": node.endpoint, **(node.peering.endpoints if node.peering else {})},
        "log": {
            "fsync": node.config.fsync,
            "next_offset": node.log.next_offset,
            "first_offset": node.log.first_offset(),
        },
    }
