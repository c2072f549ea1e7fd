"""What a node reports about itself: ``node.json``, HEALTH, CLUSTER and STATS; its
clock and lag guards.

Read-only views of a running :class:`~mesh.roles.node.Node`, kept apart from
the request and replication paths.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mesh.core.clock import monotonic_ms, physical_ms, wall_ms
from mesh.core.clockguard import CLOCK_OFFSET, ClockGuard, Verdict
from mesh.core.lagguard import BEHIND, LagGuard
from mesh.core.replication import READY
from mesh.storage.datadir import write_atomically

if TYPE_CHECKING:
    from mesh.roles.node import Node

log = logging.getLogger("mesh.roles.node")

STATUS_FILE = "node.json"


def write_status_file(node: Node) -> None:
    """Write ``<data-dir>/node.json``: pid, state and the endpoints actually bound.

    With ``tcp://127.0.0.1:*`` endpoints the OS picks the ports; tests and
    tools read them from here.
    """
    status = {"pid": os.getpid(), "state": node.state, "api": node.endpoint}
    if node.http is not None:
        status["http"] = node.http.url
    if node.resp is not None:
        status["resp"] = node.resp.url
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
        "clock": node.clockwatch.report(),
        "behind": node.clockwatch.lag_report(),
        "peering": dict(node.peering.counters) if node.peering else {},
        "endpoints": {"api": node.endpoint, **(node.peering.endpoints if node.peering else {})},
        "log": {
            "fsync": node.config.fsync,
            "next_offset": node.log.next_offset,
            "first_offset": node.log.first_offset(),
        },
    }


class ClockWatch:
    """The clock offset guard (:mod:`mesh.core.clockguard`) and the lag guard
    (:mod:`mesh.core.lagguard`) of a node: each peer's clock and news measured from its
    heartbeats; the node turned from ``ready`` to ``clock-offset`` or ``behind`` and back
    (logged once per change)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.guard = ClockGuard(node.config.max_clock_offset_ms)
        self.verdict = Verdict(False, 0, 0, 0)
        self.lag = LagGuard(node.config.max_lag_entries, node.config.max_lag_ms)

    def heard(self, peer: str, their_wall: int) -> None:
        """A heartbeat of ``peer`` said its wall clock reads ``their_wall`` (ms)."""
        now = monotonic_ms()
        if self.lag.touch(now):  # a stall ended: out of rotation before anything else
            self.check()
        if self.lag.heard(peer, their_wall, now):  # not one queued during a stall
            self.guard.observe(peer, their_wall, wall_ms(), now)

    def busy(self) -> None:
        """The node's loop was busy until now (a snapshot): not a stall, for both guards."""
        now = monotonic_ms()
        self.lag.busy(now)
        self.guard.busy(now)

    def touch(self) -> None:
        """The node's loop runs: after a stall (SIGSTOP), out of ``ready`` at once."""
        if self.lag.touch(monotonic_ms()):
            self.check()

    def check(self) -> None:
        """Judge this node's clock and lag; move the node between ``ready``,
        ``clock-offset`` and ``behind``."""
        node, now = self.node, monotonic_ms()
        self.verdict = verdict = self.guard.judge(node.cluster_size(), now)
        replica = node.replica
        peers = {p.node_id: (p.vv, p.heard_ms) for p in replica.peers.values()}
        lag = self.lag.judge(replica.vv, peers, now, replica.gate.refusing())
        if node.state not in (READY, CLOCK_OFFSET, BEHIND):
            self.lag.reset()  # catching up at start has its own rule (Replica's readiness)
            return
        state = CLOCK_OFFSET if verdict.bad else BEHIND if lag.behind else READY
        if state == node.state:
            return
        was, node.state = node.state, state
        if node.peering is not None:  # "behind" is not told: peers before it refuse the state
            node.peering.beat_overrides = {"state": state} if verdict.bad else {}
        write_status_file(node)
        if verdict.bad:
            log.error("%s: not serving data until it is back within bounds", self.reason())
        elif lag.behind:
            lagged = {"lag_entries": lag.entries, "lag_ms": lag.ms, "peers": list(lag.stale)}
            log.warning("%s: out of rotation until it has caught up", self.reason(), extra=lagged)
        elif was == BEHIND:
            log.warning("node %s caught up: serving", node.config.node_id)
        else:
            log.warning("clock back within %d ms of the peers': serving", self.guard.max_offset_ms)

    def reason(self) -> str:
        """Why the node does not serve data ops (its NOT_READY reason)."""
        node = self.node
        if node.state == BEHIND:
            return f"node {node.config.node_id} is {BEHIND}: {self.lag.reason()}"
        if node.state != CLOCK_OFFSET:
            return f"node {node.config.node_id} is {node.state}"
        v = self.verdict
        return (
            f"node {node.config.node_id} is {CLOCK_OFFSET}: its wall clock is {v.offset_ms} ms "
            f"off {v.far} of its {v.heard} peers heard (max {self.guard.max_offset_ms} ms)"
        )

    def lag_report(self) -> dict:
        """The ``behind`` section of STATS."""
        v = self.lag.verdict
        return {
            "entries": v.entries,
            "ms": v.ms,
            "waiting_for": list(v.stale),
            "max_entries": self.lag.max_entries,
            "max_ms": self.lag.max_ms,
            "stalls": self.lag.stalls,
        }

    def report(self) -> dict:
        """The ``clock`` section of STATS."""
        node = self.node
        return {
            "wall_ms": wall_ms(),
            "hlc_ms": physical_ms(node.clock.last),
            "offset_ms": self.verdict.offset_ms,
            "max_offset_ms": self.guard.max_offset_ms,
            "peers": self.guard.offsets(monotonic_ms()),
            "refused_entries": node.replica.gate.refused,
            "refusing": node.replica.gate.refusing(),
        }
