"""What a node measures: requests by op and outcome, their latency, catch-up progress;
and the node's Prometheus families, read from its plain counters at scrape time.

The hot path only adds to ints (:class:`RequestMetrics`: a dict increment per
request and one histogram observation per batch); every other family is read
at scrape time from what the node already keeps (the store's, log's and
replication's counters, the peers' lag).  ``/metrics`` is served on the
node's HTTP port (``--http-port``), in the node's own loop, so the reads need
no lock.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mesh.core.clock import monotonic_ms
from mesh.core.histogram import Histogram
from mesh.roles import metrics
from mesh.roles.metrics import Families, counter, counters, gauge, histogram, labelled

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


def node_families(node: Node) -> Families:
    """Every family of a node, read now from its counters."""
    yield from _request_families(node)
    yield from _store_families(node)
    yield from _log_families(node)
    yield from _replication_families(node)


def _request_families(node: Node) -> Families:
    m: RequestMetrics = node.metrics
    yield labelled(
        CounterMetricFamily,
        "requests",
        "Client requests by op and outcome (ok, or the error's name)",
        ["op", "outcome"],
        [(key, n) for key, n in m.samples()],
    )
    yield counter(
        "bad_requests",
        "Requests refused before their op was known",
        node.counters["bad_requests"],
    )
    yield histogram(
        "request_duration_seconds",
        "Time from a batch's receipt to its replies' send, per request",
        m.latency,
    )
    yield from counters(
        "",
        "Node counter",
        {k: node.counters[k] for k in ("dropped_replies", "expired_requests")},
    )
    yield labelled(
        CounterMetricFamily,
        "curve_handshake_failures",
        "CURVE handshakes refused by ZAP (key not admitted), by plane",
        ["plane"],
        [
            (("peer",), node.counters["refused_handshakes"]),
            (("client",), node.counters["refused_clients"]),
        ],
    )
    yield labelled(
        GaugeMetricFamily,
        "node_state",
        "1 for the node's current state",
        ["state"],
        [((node.state,), 1)],
    )
    yield gauge("uptime_seconds", "Seconds since the node started", time.monotonic() - node.started)


def _store_families(node: Node) -> Families:
    s = node.store.stats()
    yield gauge("keys", "Live keys", s["keys"])
    yield gauge("bytes", "Bytes of keys and values held, tombstones included", s["bytes"])
    yield gauge("tombstones", "Tombstones held", s["tombstones"])
    yield gauge("tombstone_bytes", "Bytes of tombstones held", s["tombstone_bytes"])
    yield counter("evictions", "Keys evicted by the LRU (max keys or memory)", s["evicted"])
    yield counter("expirations", "Keys expired by their TTL", s["expired"])
    yield counter(
        "tombstones_collected", "Tombstones collected", s["collected"] + s["tombstones_dropped"]
    )
    yield counter("hits", "Reads that found their key", s["hits"])
    yield counter("misses", "Reads that did not find their key", s["misses"])
    yield gauge("max_memory_bytes", "The LRU's memory limit (0: none)", s["max_memory"])


def _log_families(node: Node) -> Families:
    log_ = node.log
    yield histogram(
        "log_fsync_duration_seconds", "Time of each fsync of the log", log_.fsync_seconds
    )
    yield gauge("log_bytes", "Bytes of log segments on disk", log_.bytes_from(0))
    yield counter("log_appended_bytes", "Bytes appended to the log since the start", log_.appended)
    yield gauge("snapshot_bytes", "Size of the newest snapshot file", log_.snapshot_bytes())


def _replication_families(node: Node) -> Families:
    lag = node.replica.lag(monotonic_ms())
    yield labelled(
        GaugeMetricFamily,
        "replication_lag_entries",
        "Entries of a peer's origin this node lacks",
        ["peer"],
        [((peer,), v["entries"]) for peer, v in lag.items()],
    )
    yield labelled(
        GaugeMetricFamily,
        "replication_lag_ms",
        "How long this node has lacked a peer's entries (ms)",
        ["peer"],
        [((peer,), v["ms"]) for peer, v in lag.items()],
    )
    yield labelled(
        GaugeMetricFamily,
        "peer_state",
        "1 for each peer's state as this node sees it",
        ["peer", "state"],
        [((peer, v["state"]), 1) for peer, v in lag.items()],
    )
    progress: CatchUpProgress = node.progress
    yield gauge("catchup_active", "1 while a catch-up runs", int(progress.active))
    yield gauge(
        "catchup_entries_done", "Entries fetched by the current or last catch-up", progress.done
    )
    yield gauge(
        "catchup_entries_left", "Entries the peers hold that this node lacks", progress.left
    )
    yield gauge("catchup_rate", "Entries per second of the current or last catch-up", progress.rate)
    yield from counters("replication_", "Replication counter", dict(node.replica.counters))
    if node.peering is not None:
        yield from counters("peering_", "Peering counter", dict(node.peering.counters))
    yield gauge(
        "clock_offset_ms",
        "This node's wall clock's offset from its peers'",
        node.clockwatch.verdict.offset_ms,
    )


def node_registry(node: Node) -> CollectorRegistry:
    """The node's private registry: its families and its HTTP API's."""
    from mesh.roles.http_handlers import http_families  # tornado only where HTTP is served

    return metrics.registry(lambda: node_families(node), http_families)
