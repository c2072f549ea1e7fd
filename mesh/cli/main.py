"""The ``pycache`` command: a thin click layer over the roles.

Process roles: ``pycache node`` (one node), ``balancer``, ``edge`` and ``up``
(a local cluster).  The client commands (``get``, ``set``, ``status``, ...)
live in :mod:`mesh.cli.client_commands`; exit codes in :mod:`mesh.cli.exits`.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from mesh.cli.client_commands import COMMANDS
from mesh.cli.exits import EXIT_ERROR, errors_to_exit_codes, fail, split_csv
from mesh.core.errors import ConfigError
from mesh.core.limits import MIB, Limits
from mesh.roles.config import (
    DEFAULT_API,
    DEFAULT_EDGE_HOST,
    DEFAULT_EDGE_PORT,
    DEFAULT_EDGE_TIMEOUT,
    DEFAULT_FRONT,
    DEFAULT_PUB,
    DEFAULT_REPL,
    HTTP_PORT_ANY,
    BalancerConfig,
    EdgeConfig,
    NodeConfig,
)


def _valid(make_config: Callable[[], Any]) -> Any:
    """Build and validate a config; a bad value prints one line and exits 2."""
    try:
        return make_config().validate()
    except ConfigError as exc:
        fail(str(exc), EXIT_ERROR)


#: the collector's generation-0 threshold in the serving roles (CPython's default: 700)
GC_GEN0_THRESHOLD = 5_000


def _tune_gc() -> None:
    """Run the cyclic garbage collector less often in a serving process.

    A node makes several objects per request and holds its whole store in
    tuples; at CPython's default thresholds the collector ran every few dozen
    requests and kept rescanning the growing store, about a third of the time
    of a catch-up here.  The serving paths make no reference cycles.  The
    older generations are what rescanned the store; generation 0 is scanned
    once per new object whatever its threshold, which only sets the length
    of each pause: at 50,000 a node under 10,000 replicated writes/s stalled
    13-20 ms every 5 s (replication lag p99 8.5-9.1 ms; at 5,000, 8.2-8.4).
    """
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 100)


#: glibc's mallopt parameters (malloc.h) and what a node sets them to
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MALLOC_MMAP_THRESHOLD = 32 * MIB
MALLOC_TRIM_THRESHOLD = 64 * MIB


def _tune_malloc() -> None:
    """Let a node reuse the memory of freed large buffers instead of unmapping it.

    Each catch-up batch passes through buffers of a few MiB (the frame ZeroMQ
    receives, its Python copy, the log write).  glibc gave each its own
    mapping, or trimmed the heap once they were freed, so every batch
    page-faulted its buffers again: about 7,000 of a catch-up's 43,000 page
    faults here.  Past these thresholds glibc still maps and returns memory.
    Other C libraries keep their defaults.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD)
    except (OSError, AttributeError):  # no mallopt here
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pycache-mesh")
def main() -> None:
    """PyCache: a brokerless ZeroMQ mesh of in-memory key-value cache nodes."""


for _command in COMMANDS:
    main.add_command(_command)


# ---------------------------------------------------------------------- process roles


def _http_port(ctx: click.Context, param: click.Parameter, value: str) -> int:
    """``--http-port``: a port number, or ``*`` for one the OS picks."""
    if value.strip() == "*":
        return HTTP_PORT_ANY
    if value.strip().isdigit() and int(value) <= 65535:
        return int(value)
    raise click.BadParameter(f"{value!r} is not a port number (0-65535) or '*'")


@main.command()
@click.option("--id", "node_id", required=True, envvar="PYCACHE_NODE_ID", help="Node id.")
@click.option("--data-dir", required=True, envvar="PYCACHE_DATA_DIR", help="Data folder.")
@click.option(
    "--api",
    default=DEFAULT_API,
    show_default=True,
    envvar="PYCACHE_API",
    help="Client ROUTER endpoint to bind.",
)
@click.option(
    "--repl",
    default=DEFAULT_REPL,
    show_default=True,
    envvar="PYCACHE_REPL",
    help="Replication ROUTER endpoint to bind (peers fetch from it).",
)
@click.option(
    "--pub",
    default=DEFAULT_PUB,
    show_default=True,
    envvar="PYCACHE_PUB",
    help="PUB endpoint to bind (this node's writes go out on it).",
)
@click.option(
    "--peers",
    default="",
    envvar="PYCACHE_PEERS",
    help="Comma-separated repl endpoints of other nodes.",
)
@click.option(
    "--w",
    "w",
    default="1",
    show_default=True,
    envvar="PYCACHE_W",
    help='Default write acknowledgement: a node count, "quorum" or "all".',
)
@click.option(
    "--ack-timeout-ms",
    type=int,
    default=2000,
    show_default=True,
    envvar="PYCACHE_ACK_TIMEOUT_MS",
    help="How long a write waits for w nodes.",
)
@click.option(
    "--pub-hwm",
    type=int,
    default=10_000,
    show_default=True,
    envvar="PYCACHE_PUB_HWM",
    help="PUB send high-water mark in messages (tiny values force loss, for tests).",
)
@click.option(
    "--fsync",
    type=click.Choice(["always", "interval", "never"]),
    default="always",
    show_default=True,
    envvar="PYCACHE_FSYNC",
    help="Log fsync policy.",
)
@click.option(
    "--fsync-interval-ms",
    type=int,
    default=100,
    show_default=True,
    envvar="PYCACHE_FSYNC_INTERVAL_MS",
    help="Period of the interval policy.",
)
@click.option(
    "--segment-mib",
    type=int,
    default=64,
    show_default=True,
    envvar="PYCACHE_SEGMENT_MIB",
    help="Log segment size.",
)
@click.option(
    "--retention-mib",
    type=int,
    default=1024,
    show_default=True,
    envvar="PYCACHE_RETENTION_MIB",
    help="Log kept after a snapshot covers it.",
)
@click.option(
    "--snapshot-every",
    type=int,
    default=1_000_000,
    show_default=True,
    envvar="PYCACHE_SNAPSHOT_EVERY",
    help="Entries between snapshots (0: never).",
)
@click.option(
    "--max-keys",
    type=int,
    default=0,
    show_default=True,
    envvar="PYCACHE_MAX_KEYS",
    help="LRU eviction above this many keys (0: no limit).",
)
@click.option(
    "--max-memory-mib",
    type=int,
    default=0,
    show_default=True,
    envvar="PYCACHE_MAX_MEMORY_MIB",
    help="LRU eviction above this much data.",
)
@click.option(
    "--max-key-bytes",
    type=int,
    default=512,
    show_default=True,
    envvar="PYCACHE_MAX_KEY_BYTES",
    help="Longest key accepted.",
)
@click.option(
    "--max-value-mib",
    type=int,
    default=8,
    show_default=True,
    envvar="PYCACHE_MAX_VALUE_MIB",
    help="Largest value accepted.",
)
@click.option(
    "--http-port",
    default="0",
    show_default=True,
    envvar="PYCACHE_HTTP_PORT",
    callback=_http_port,
    help="Serve the HTTP API on this port too (0: no HTTP; '*': the OS picks, see node.json).",
)
@click.option(
    "--http-host",
    default=DEFAULT_EDGE_HOST,
    show_default=True,
    envvar="PYCACHE_HTTP_HOST",
    help="Address the HTTP API listens on.",
)
@click.option("--log-level", default="INFO", show_default=True, envvar="PYCACHE_LOG_LEVEL")
def node(
    node_id: str,
    data_dir: str,
    api: str,
    repl: str,
    pub: str,
    peers: str,
    w: str,
    ack_timeout_ms: int,
    pub_hwm: int,
    fsync: str,
    fsync_interval_ms: int,
    segment_mib: int,
    retention_mib: int,
    snapshot_every: int,
    max_keys: int,
    max_memory_mib: int,
    max_key_bytes: int,
    max_value_mib: int,
    http_port: int,
    http_host: str,
    log_level: str,
) -> None:
    """Run one node until SIGTERM or Ctrl-C (then fsync and exit 0)."""
    from mesh.roles.node import run_node

    _setup_logging(log_level, node_id)
    config = _valid(
        lambda: NodeConfig(
            node_id=node_id,
            data_dir=data_dir,
            api=api,
            repl=repl,
            pub=pub,
            peers=split_csv(peers),
            w=int(w) if w.isdigit() else w,
            ack_timeout_ms=ack_timeout_ms,
            pub_hwm=pub_hwm,
            fsync=fsync,
            fsync_interval_ms=fsync_interval_ms,
            segment_bytes=segment_mib * MIB,
            retention_bytes=retention_mib * MIB,
            snapshot_every=snapshot_every,
            max_keys=max_keys,
            max_memory=max_memory_mib * MIB,
            limits=Limits(max_key_bytes=max_key_bytes, max_value_bytes=max_value_mib * MIB),
            http_port=http_port,
            http_host=http_host,
        )
    )
    _tune_gc()
    _tune_malloc()
    errors_to_exit_codes(run_node)(config)


@main.command()
@click.option(
    "--front",
    default=DEFAULT_FRONT,
    show_default=True,
    envvar="PYCACHE_FRONT",
    help="ROUTER endpoint clients connect to.",
)
@click.option(
    "--nodes",
    "nodes",
    required=True,
    envvar="PYCACHE_NODES_API",
    help="Comma-separated client API endpoints of the nodes.",
)
@click.option(
    "--health-ms",
    type=int,
    default=100,
    show_default=True,
    envvar="PYCACHE_HEALTH_MS",
    help="HEALTH probe period.",
)
@click.option(
    "--hang-ms",
    type=int,
    default=600,
    show_default=True,
    envvar="PYCACHE_HANG_MS",
    help="Silence that takes a node out of rotation.",
)
@click.option(
    "--wait-ms",
    type=int,
    default=1000,
    show_default=True,
    envvar="PYCACHE_WAIT_MS",
    help="Wait for a ready node before NOT_READY.",
)
@click.option(
    "--batch-per-node",
    type=int,
    default=32,
    show_default=True,
    envvar="PYCACHE_BATCH_PER_NODE",
    help="Requests in a row to one node before the next (1: strict round robin).",
)
@click.option(
    "--status-file",
    default=None,
    envvar="PYCACHE_STATUS_FILE",
    help="Write {pid, state, front} JSON here once bound.",
)
@click.option("--log-level", default="INFO", show_default=True, envvar="PYCACHE_LOG_LEVEL")
def balancer(
    front: str,
    nodes: str,
    health_ms: int,
    hang_ms: int,
    wait_ms: int,
    batch_per_node: int,
    status_file: str | None,
    log_level: str,
) -> None:
    """Run a balancer in front of the nodes until SIGTERM or Ctrl-C."""
    from mesh.roles.balancer import run_balancer

    _setup_logging(log_level, "balancer")
    config = _valid(
        lambda: BalancerConfig(
            front=front,
            nodes=split_csv(nodes),
            health_ms=health_ms,
            hang_ms=hang_ms,
            wait_ms=wait_ms,
            batch_per_node=batch_per_node,
        )
    )
    _tune_gc()
    errors_to_exit_codes(run_balancer)(config, status_file)


@main.command()
@click.option(
    "--nodes",
    type=int,
    default=3,
    show_default=True,
    envvar="PYCACHE_NODES",
    help="How many nodes to start.",
)
@click.option(
    "--data-dir",
    default="./pycache-data",
    show_default=True,
    envvar="PYCACHE_DATA_DIR",
    help="Parent folder of every node's data.",
)
@click.option("--host", default="127.0.0.1", show_default=True, envvar="PYCACHE_HOST")
@click.option(
    "--api-port",
    type=int,
    default=7001,
    show_default=True,
    envvar="PYCACHE_API_PORT",
    help="First node's API port; the next get +1 (0: the OS picks every port).",
)
@click.option(
    "--repl-port",
    type=int,
    default=7101,
    show_default=True,
    envvar="PYCACHE_REPL_PORT",
    help="First node's replication port; the next get +1.",
)
@click.option(
    "--pub-port",
    type=int,
    default=7201,
    show_default=True,
    envvar="PYCACHE_PUB_PORT",
    help="First node's PUB port; the next get +1.",
)
@click.option(
    "--http-port",
    "http_port",
    type=int,
    default=8001,
    show_default=True,
    envvar="PYCACHE_HTTP_PORT",
    help="First node's HTTP API port; the next get +1.",
)
@click.option(
    "--balancer-port",
    type=int,
    default=7000,
    show_default=True,
    envvar="PYCACHE_BALANCER_PORT",
    help="The balancer's front port.",
)
@click.option(
    "--edge-port",
    type=int,
    default=5000,
    show_default=True,
    envvar="PYCACHE_EDGE_PORT",
    help="The HTTP edge's port.",
)
@click.option(
    "--fsync",
    type=click.Choice(["always", "interval", "never"]),
    default="always",
    show_default=True,
    envvar="PYCACHE_FSYNC",
)
@click.option(
    "--ready-timeout",
    type=float,
    default=60.0,
    show_default=True,
    envvar="PYCACHE_READY_TIMEOUT",
    help="Seconds to wait for every node.",
)
@errors_to_exit_codes
def up(
    nodes: int,
    data_dir: str,
    host: str,
    api_port: int,
    repl_port: int,
    pub_port: int,
    http_port: int,
    balancer_port: int,
    edge_port: int,
    fsync: str,
    ready_timeout: float,
) -> None:
    """Start nodes, a balancer and the HTTP edge; print the endpoints; Ctrl-C stops all.

    With --api-port 0 the OS picks every port (handy for scripts: read
    <data-dir>/cluster.json).
    """
    from mesh.roles.supervisor import Cluster, Ports

    _setup_logging("INFO", "up")
    ports = Ports(api_port, repl_port, pub_port, http_port, balancer_port, edge_port)
    cluster = Cluster(
        data_dir,
        nodes=nodes,
        host=host,
        ports=ports if api_port else Ports(0, 0, 0, 0, 0, 0),
        fsync=fsync,
    )
    sys.exit(cluster.run(ready_timeout, echo=click.echo))


@main.command()
@click.option(
    "--host",
    default=DEFAULT_EDGE_HOST,
    show_default=True,
    envvar="PYCACHE_EDGE_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=DEFAULT_EDGE_PORT,
    show_default=True,
    envvar="PYCACHE_EDGE_PORT",
    help="Port to listen on (0: the OS picks; see --status-file).",
)
@click.option(
    "--backend",
    default=DEFAULT_FRONT,
    show_default=True,
    envvar="PYCACHE_BACKEND",
    help="Balancer front to forward to (or node API endpoints), comma-separated.",
)
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_EDGE_TIMEOUT,
    show_default=True,
    envvar="PYCACHE_EDGE_TIMEOUT",
    help="Seconds a backend request may take before the answer is 503.",
)
@click.option(
    "--max-body-bytes",
    type=int,
    default=EdgeConfig.max_body_bytes,
    show_default=True,
    envvar="PYCACHE_EDGE_MAX_BODY_BYTES",
    help="Largest request body; a larger one is answered 413.",
)
@click.option(
    "--status-file",
    default="",
    envvar="PYCACHE_EDGE_STATUS_FILE",
    help="Write {pid, http, backend} JSON here once listening.",
)
@click.option("--log-level", default="INFO", show_default=True, envvar="PYCACHE_LOG_LEVEL")
def edge(
    host: str,
    port: int,
    backend: str,
    timeout: float,
    max_body_bytes: int,
    status_file: str,
    log_level: str,
) -> None:
    """Run the HTTP edge (the seed's REST API) until SIGTERM or Ctrl-C (then exit 0)."""
    from mesh.roles.edge import run_edge

    _setup_logging(log_level, "edge")
    config = _valid(
        lambda: EdgeConfig(
            host=host,
            port=port,
            backend=split_csv(backend),
            timeout=timeout,
            max_body_bytes=max_body_bytes,
            status_file=status_file,
        )
    )
    _tune_gc()
    errors_to_exit_codes(run_edge)(config)


def _setup_logging(level: str, name: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


if __name__ == "__main__":
    main()
