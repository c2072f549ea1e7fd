"""A node's Prometheus families, read from its plain counters at scrape time.

Every family is read when ``/metrics`` is scraped from what the node already
keeps (:class:`mesh.roles.node_metrics.RequestMetrics`, the store's, log's
and replication's counters, the peers' lag).  ``/metrics`` is served on the
node's HTTP port (``--http-port``), in the node's own loop, so the reads need
no lock.  Imported only when the node serves HTTP (``prometheus_client``
loads the standard library's HTTP server and e-mail parser: tens of ms at
start-up).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from mesh.core.clock import monotonic_ms
from mesh.roles import metrics
from mesh.roles.metrics import Families, counter, counters, gauge, histogram, labelled
from mesh.roles.node_metrics import CatchUpProgress, RequestMetrics

if TYPE_CHECKING:
    from mesh.roles.node import Node


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
