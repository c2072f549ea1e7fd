"""``pycache node``: run one node; every :class:`~mesh.roles.config.NodeConfig` field is a flag.

Each flag has an environment variable ``PYCACHE_<FLAG>``; sizes in MiB are
converted to the config's bytes here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from mesh.cli.credentials import (
    client_keys_option,
    tls_cert_option,
    tls_key_option,
    token_file_option,
)
from mesh.cli.exits import errors_to_exit_codes, split_csv
from mesh.cli.options import (
    fsync_option,
    insecure_option,
    int_option,
    log_format_option,
    log_level_option,
    port_or_any,
    resp_option,
    seconds_option,
    setup_logging,
    valid_config,
)
from mesh.core.acks import W_LEVELS
from mesh.core.limits import MIB, Limits
from mesh.roles.config import (
    DEFAULT_API,
    DEFAULT_EDGE_HOST,
    DEFAULT_PUB,
    DEFAULT_REPL,
    NodeConfig,
)

_W_HELP = f"Default write acknowledgement: a node count, {' or '.join(map(repr, W_LEVELS))}."


def _endpoint_option(flag: str, default: str, help: str) -> Callable[[Any], Any]:
    envvar = "PYCACHE_" + flag.lstrip("-").upper().replace("-", "_")
    return click.option(flag, default=default, show_default=True, envvar=envvar, help=help)


@click.command()
@click.option("--id", "node_id", required=True, envvar="PYCACHE_NODE_ID", help="Node id.")
@click.option("--data-dir", required=True, envvar="PYCACHE_DATA_DIR", help="Data folder.")
@_endpoint_option("--api", DEFAULT_API, "Client ROUTER endpoint to bind.")
@_endpoint_option(
    "--repl", DEFAULT_REPL, "Replication ROUTER endpoint to bind (peers fetch from it)."
)
@_endpoint_option("--pub", DEFAULT_PUB, "PUB endpoint to bind (this node's writes go out on it).")
@click.option(
    "--peers",
    default="",
    envvar="PYCACHE_PEERS",
    help="Comma-separated repl endpoints of other nodes.",
)
@click.option(
    "--w", "w", default=str(NodeConfig.w), show_default=True, envvar="PYCACHE_W", help=_W_HELP
)
@int_option(
    "--ack-timeout-ms",
    NodeConfig.ack_timeout_ms,
    "PYCACHE_ACK_TIMEOUT_MS",
    "How long a write waits for w nodes.",
)
@int_option(
    "--pub-hwm",
    NodeConfig.pub_hwm,
    "PYCACHE_PUB_HWM",
    "PUB send high-water mark in messages (tiny values force loss, for tests).",
)
@fsync_option
@int_option(
    "--fsync-interval-ms",
    NodeConfig.fsync_interval_ms,
    "PYCACHE_FSYNC_INTERVAL_MS",
    "Period of the interval policy.",
)
@int_option(
    "--segment-mib", NodeConfig.segment_bytes // MIB, "PYCACHE_SEGMENT_MIB", "Log segment size."
)
@int_option(
    "--retention-mib",
    NodeConfig.retention_bytes // MIB,
    "PYCACHE_RETENTION_MIB",
    "At most this much log kept for peers after a snapshot covers it.",
)
@int_option(
    "--snapshot-every",
    NodeConfig.snapshot_every,
    "PYCACHE_SNAPSHOT_EVERY",
    "Entries between snapshots (0: never).",
)
@int_option(
    "--snapshot-mib",
    NodeConfig.snapshot_bytes // MIB,
    "PYCACHE_SNAPSHOT_MIB",
    "Also snapshot after this much log (or the last snapshot's size, if more; 0: never).",
)
@int_option(
    "--max-keys",
    NodeConfig.max_keys,
    "PYCACHE_MAX_KEYS",
    "LRU eviction above this many keys (0: no limit).",
)
@int_option(
    "--max-memory-mib",
    NodeConfig.max_memory // MIB,
    "PYCACHE_MAX_MEMORY_MIB",
    "LRU eviction above this much data.",
)
@int_option(
    "--tombstone-horizon-ms",
    NodeConfig.tombstone_horizon_ms,
    "PYCACHE_TOMBSTONE_HORIZON_MS",
    "The longest a tombstone is kept (it goes once every member has moved past it).",
)
@int_option(
    "--sweep-interval-ms",
    NodeConfig.sweep_interval_ms,
    "PYCACHE_SWEEP_INTERVAL_MS",
    "Period of the active TTL sweep.",
)
@int_option(
    "--batch-max",
    NodeConfig.batch_max,
    "PYCACHE_BATCH_MAX",
    "Most requests handled in one event-loop turn.",
)
@int_option(
    "--max-key-bytes", Limits.max_key_bytes, "PYCACHE_MAX_KEY_BYTES", "Longest key accepted."
)
@int_option(
    "--max-value-mib",
    Limits.max_value_bytes // MIB,
    "PYCACHE_MAX_VALUE_MIB",
    "Largest value accepted.",
)
@int_option(
    "--max-request-bytes",
    Limits.max_request_bytes,
    "PYCACHE_MAX_REQUEST_BYTES",
    "Largest request frame (0: the largest value plus 64 KiB).",
)
@int_option(
    "--max-frames",
    Limits.max_frames,
    "PYCACHE_MAX_FRAMES",
    "Most frames in one message, routing id included.",
)
@int_option(
    "--max-items",
    Limits.max_items,
    "PYCACHE_MAX_ITEMS",
    "Most keys in one MGET, MSET or DEL.",
)
@click.option(
    "--http-port",
    default=str(NodeConfig.http_port),
    show_default=True,
    envvar="PYCACHE_HTTP_PORT",
    callback=port_or_any,
    help="Serve the HTTP API on this port too (0: no HTTP; '*': the OS picks, see node.json).",
)
@_endpoint_option("--http-host", DEFAULT_EDGE_HOST, "Address the HTTP API listens on.")
@click.option(
    "--keys",
    default=NodeConfig.keys,
    envvar="PYCACHE_KEYS",
    help="The peer plane's keys folder (create it with `pycache keygen`).",
)
@insecure_option
@int_option(
    "--max-clock-offset-ms",
    NodeConfig.max_clock_offset_ms,
    "PYCACHE_MAX_CLOCK_OFFSET_MS",
    "Stop serving when this node's clock is further than this from its peers'.",
)
@int_option(
    "--max-lag-entries",
    NodeConfig.max_lag_entries,
    "PYCACHE_MAX_LAG_ENTRIES",
    "Stop serving while lacking more entries than this that live peers hold (0: off).",
)
@int_option(
    "--max-lag-ms",
    NodeConfig.max_lag_ms,
    "PYCACHE_MAX_LAG_MS",
    "Stop serving while an entry live peers hold has been missing longer than this (0: off).",
)
@client_keys_option
@token_file_option
@tls_cert_option
@tls_key_option
@int_option(
    "--http-max-connections",
    NodeConfig.http_max_connections,
    "PYCACHE_HTTP_MAX_CONNECTIONS",
    "Most open HTTP connections; past it the longest idle are closed"
    " (0: the open-file limit less 128).",
)
@seconds_option(
    "--http-idle-timeout",
    NodeConfig.http_idle_timeout,
    "PYCACHE_HTTP_IDLE_TIMEOUT",
    "Seconds a connection may wait for a request's complete headers"
    " (idle keep-alive, or slowloris).",
)
@seconds_option(
    "--http-body-timeout",
    NodeConfig.http_body_timeout,
    "PYCACHE_HTTP_BODY_TIMEOUT",
    "Seconds a request's body may take to arrive after its headers.",
)
@resp_option
@log_level_option
@log_format_option
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
    snapshot_mib: int,
    max_keys: int,
    max_memory_mib: int,
    tombstone_horizon_ms: int,
    sweep_interval_ms: int,
    batch_max: int,
    max_key_bytes: int,
    max_value_mib: int,
    max_request_bytes: int,
    max_frames: int,
    max_items: int,
    http_port: int,
    http_host: str,
    keys: str,
    insecure: bool,
    max_clock_offset_ms: int,
    max_lag_entries: int,
    max_lag_ms: int,
    client_keys: str,
    token_file: str,
    tls_cert: str,
    tls_key: str,
    http_max_connections: int,
    http_idle_timeout: float,
    http_body_timeout: float,
    resp: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run one node until SIGTERM or Ctrl-C (then fsync and exit 0)."""
    from mesh.roles.node_main import run_node

    setup_logging(log_level, node_id, log_format)
    limits = Limits(
        max_key_bytes=max_key_bytes,
        max_value_bytes=max_value_mib * MIB,
        max_request_bytes=max_request_bytes,
        max_frames=max_frames,
        max_items=max_items,
    )
    config = valid_config(
        lambda: NodeConfig(
            node_id=node_id,
            data_dir=data_dir,
            api=api,
            repl=repl,
            pub=pub,
            peers=split_csv(peers),
            w=int(w) if w.isascii() and w.isdigit() else w,
            ack_timeout_ms=ack_timeout_ms,
            pub_hwm=pub_hwm,
            fsync=fsync,
            fsync_interval_ms=fsync_interval_ms,
            segment_bytes=segment_mib * MIB,
            retention_bytes=retention_mib * MIB,
            snapshot_every=snapshot_every,
            snapshot_bytes=snapshot_mib * MIB,
            max_keys=max_keys,
            max_memory=max_memory_mib * MIB,
            tombstone_horizon_ms=tombstone_horizon_ms,
            sweep_interval_ms=sweep_interval_ms,
            batch_max=batch_max,
            limits=limits,
            http_port=http_port,
            http_host=http_host,
            keys=keys,
            insecure=insecure,
            max_clock_offset_ms=max_clock_offset_ms,
            max_lag_entries=max_lag_entries,
            max_lag_ms=max_lag_ms,
            client_keys=client_keys,
            token_file=token_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            http_max_connections=http_max_connections,
            http_idle_timeout=http_idle_timeout,
            http_body_timeout=http_body_timeout,
            resp=resp,
        )
    )
    errors_to_exit_codes(run_node)(config)
