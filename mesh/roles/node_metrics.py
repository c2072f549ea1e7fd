"""What a node measures: requests by op and outcome, their latency, catch-up progress.

The hot path only adds to ints (:class:`RequestMetrics`: a dict increment per
request and one histogram observation per batch).  The node's Prometheus
families are made from these and its other counters at scrape time by
:mod:`mesh.roles.node_families`, which alone imports ``prometheus_client``
(so that a node without an HTTP port never loads it).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from mesh.core.histogram import Histogram

if TYPE_CHECKING:
    from mesh.roles.node import Node

log = logging.getLogger("mesh.roles.node.catchup")

#: Node states in which the node is catching up on its peers' entries.
CATCHING_UP = frozenset({"catching-up", "behind"})
#: Period of the catch-up progress check (ms; the node's timer).
PROGRESS_CHECK_MS = 500
#: A catch-up logs its progress at least this often (seconds) while it runs.
PROGRESS_LOG_S = 1.5


class RequestMetrics:
    """Requests by op, refusals by op and outcome, and the latency of the node's batches.

    ``ops[op]`` counts every decoded request (one dict increment);
    ``failed[(op, outcome)]`` the ones not answered OK; the rest are ``ok``.
    ``latency`` holds one observation per batch, weighted by its requests:
    the time from the batch's receipt to its replies' send (fsync included).
    """

    def __init__(self) -> None:
        self.ops: defaultdict[str, int] = defaultdict(int)
        self.failed: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.latency = Histogram()

    def fail(self, op: str, outcome: str) -> None:
        """Count a request of ``op`` answered with an error (``outcome``: its name)."""
        self.failed[(op, outcome)] += 1

    def samples(self) -> list[tuple[tuple[str, str], int]]:
        """``((op, outcome), count)`` for every op and outcome seen, ``ok`` included."""
        failed = dict(self.failed)
        out = []
        for op, total in list(self.ops.items()):
            bad = sum(n for (o, _), n in failed.items() if o == op)
            out.append(((op, "ok"), total - bad))
        return out + sorted(failed.items())


def missing_entries(node: Node) -> int:
    """Entries the node's peers hold (by their version vectors) that it lacks."""
    vv, best = node.replica.vv, dict[str, int]()
    for peer in list(node.replica.peers.values()):
        for origin, seq in peer.vv.items():
            if seq > best.get(origin, 0):
                best[origin] = seq
    return sum(max(0, seq - vv.get(origin, 0)) for origin, seq in best.items())


class CatchUpProgress:
    """A catch-up's progress: entries done and left, rate and ETA; logged every 1.5 s.

    ``check`` runs on the node's timer; a catch-up is on while the node is
    ``catching-up`` (at start) or ``behind`` and lacks entries its peers hold.
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.active = False
        self.done = self.left = 0
        self.rate = 0.0
        self._start_sum = 0
        self._started = self._logged = 0.0

    def check(self) -> None:
        """Update the figures; log them when a catch-up has run 1.5 s since the last line."""
        node, now = self.node, time.monotonic()
        left = missing_entries(node) if node.state in CATCHING_UP else 0
        applied = sum(node.replica.vv.values())
        if not self.active:
            if left:
                self.active, self._start_sum, self._started = True, applied, now
                self._logged, self.done, self.rate = now, 0, 0.0
            self.left = left
            return
        took = now - self._started
        self.done, self.left = max(0, applied - self._start_sum), left
        self.rate = self.done / took if took > 0 else 0.0
        if not left:
            self.active = False
            if took >= PROGRESS_LOG_S:
                log.info(
                    "catch-up done: %d entries in %.1f s",
                    self.done,
                    took,
                    extra={"entries": self.done, "seconds": round(took, 3)},
                )
        elif now - self._logged >= PROGRESS_LOG_S:
            self._logged = now
            self._log(took)

    def _log(self, took: float) -> None:
        eta = self.left / self.rate if self.rate > 0 else None
        log.info(
            "catch-up: %d entries done, %d left, %.0f entries/s, ETA %s",
            self.done,
            self.left,
            self.rate,
            "unknown" if eta is None else f"{eta:.1f} s",
            extra={
                "entries": self.done,
                "entries_left": self.left,
                "rate": round(self.rate, 1),
                "eta_s": None if eta is None else round(eta, 1),
                "elapsed_s": round(took, 1),
            },
        )
