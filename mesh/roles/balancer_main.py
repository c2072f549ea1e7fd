"""``pycache balancer``'s process: signals, the status file, and ``/metrics``.

The balancer has no HTTP server of its own for clients; with a metrics port
(``--metrics-port``: a number, ``*`` for one the OS picks; 0, the default,
serves none) a small one answers ``/metrics`` from a thread
(:class:`mesh.roles.metrics.MetricsServer`).  Its families are read at scrape
time from the balancer's plain counters and links: requests, retries,
failovers, refusals, CURVE handshake failures, and each node's state as the
balancer sees it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import zmq
from prometheus_client.core import GaugeMetricFamily

from mesh.core.errors import ConfigError
from mesh.roles import metrics
from mesh.roles.balancer import Balancer
from mesh.roles.config import HTTP_PORT_ANY, BalancerConfig
from mesh.roles.fronts import BalancerResp
from mesh.roles.metrics import Families, counter, counters, gauge, labelled
from mesh.roles.protected import host_is_loopback, load_tokens
from mesh.roles.tuning import raise_fd_limit, tune_gc
from mesh.storage.datadir import write_atomically

log = logging.getLogger("mesh.roles.balancer")


def balancer_families(balancer: Balancer) -> Families:
    """The balancer's families, read now (from the metrics thread: plain reads only)."""
    values = dict(balancer.counters)
    refused = values.pop("refused_handshakes", 0)
    yield from counters("balancer_", "Balancer counter", values)
    yield counter(
        "curve_handshake_failures",
        "CURVE handshakes refused by ZAP (key not admitted), by plane",
        refused,
        plane="client",
    )
    yield gauge("balancer_waiting", "Requests waiting for a ready node", len(balancer.waiting))
    links = list(balancer.links)
    yield labelled(
        GaugeMetricFamily,
        "balancer_node_up",
        "1 while the node is in rotation (connected and ready)",
        ["node", "endpoint"],
        [((link.node_id, link.endpoint), int(link.usable)) for link in links],
    )
    yield labelled(
        GaugeMetricFamily,
        "balancer_node_state",
        "1 for each node's state as the balancer sees it",
        ["node", "endpoint", "state"],
        [((link.node_id, link.endpoint, link.state), 1) for link in links],
    )
    yield labelled(
        GaugeMetricFamily,
        "balancer_node_inflight",
        "Requests sent to the node and not answered yet",
        ["node", "endpoint"],
        [((link.node_id, link.endpoint), len(link.inflight)) for link in links],
    )


def run_balancer(config: BalancerConfig, status_file: str | None = None) -> None:
    """Run a balancer in this process until SIGTERM or SIGINT.

    ``status_file`` gets ``{"pid", "state", "front"}`` (and ``"metrics"``, its
    URL, with a metrics port; ``"resp"`` with a RESP front) once the front is
    bound (with a ``*`` port, the port the OS picked).
    """
    raise_fd_limit()
    tune_gc()
    ctx, resp = zmq.Context(), BalancerResp(config).start()  # RESP front: mesh.roles.fronts
    server = None
    try:
        balancer = Balancer(config, ctx)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: balancer.stop())
        log.info("balancer on %s for %s", balancer.endpoint, ", ".join(config.nodes))
        status = {"pid": os.getpid(), "state": "ready", "front": balancer.endpoint, **resp.status}
        if config.metrics_port:
            port = 0 if config.metrics_port == HTTP_PORT_ANY else config.metrics_port
            reg = metrics.registry(lambda: balancer_families(balancer))
            tokens = load_tokens(config.token_file) if config.token_file else ()
            try:
                server = metrics.MetricsServer(config.metrics_host, port, reg, tokens)
            except Exception:
                balancer.close()
                raise
            status["metrics"] = server.url
            log.info("balancer metrics on %s", server.url)
            if not tokens and not host_is_loopback(config.metrics_host):
                log.warning(
                    "INSECURE: /metrics on %s has no token (--insecure): anyone who reaches "
                    "it reads the balancer's counters and the nodes' endpoints",
                    config.metrics_host,
                )
        if status_file:
            _write_status(Path(status_file), status, balancer)
        balancer.run()
    finally:
        resp.stop()
        if server is not None:
            server.close()
        ctx.term()


def _write_status(path: Path, status: dict, balancer: Balancer) -> None:
    """Write the status file; when it cannot be, close the balancer (its open sockets
    would block ``ctx.term()``) and say so in one line."""
    try:
        write_atomically(path, json.dumps(status).encode(), durable=False)
    except OSError as exc:
        balancer.close()
        raise ConfigError(f"--status-file {path}: {exc.strerror or exc}") from None
