"""``pycache balancer``, ``pycache edge`` and ``pycache up``: the front doors and a local cluster.

Every option has an environment variable; defaults are read from
:mod:`mesh.roles.config`.
"""

from __future__ import annotations

import sys

import click

from mesh.cli.credentials import (
    client_key_option,
    client_keys_option,
    server_key_option,
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
    port_option,
    port_or_any,
    resp_option,
    seconds_in_range,
    seconds_option,
    setup_logging,
    valid_config,
)
from mesh.roles.config import (
    DEFAULT_EDGE_HOST,
    DEFAULT_FRONT,
    BalancerConfig,
    EdgeConfig,
    Ports,
)


@click.command()
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
@int_option("--health-ms", BalancerConfig.health_ms, "PYCACHE_HEALTH_MS", "HEALTH probe period.")
@int_option(
    "--hang-ms",
    BalancerConfig.hang_ms,
    "PYCACHE_HANG_MS",
    "Silence that takes a node out of rotation.",
)
@int_option(
    "--wait-ms",
    BalancerConfig.wait_ms,
    "PYCACHE_WAIT_MS",
    "Wait for a ready node before NOT_READY.",
)
@int_option(
    "--max-attempts",
    BalancerConfig.max_attempts,
    "PYCACHE_MAX_ATTEMPTS",
    "Sends of one request, retries on failover included.",
)
@int_option(
    "--deadline-ms",
    BalancerConfig.deadline_ms,
    "PYCACHE_DEADLINE_MS",
    "A node must start a forwarded request within this long, else it is resent elsewhere.",
)
@int_option(
    "--batch-per-node",
    BalancerConfig.batch_per_node,
    "PYCACHE_BATCH_PER_NODE",
    "Requests in a row to one node before the next (1: strict round robin).",
)
@int_option(
    "--max-request-bytes",
    BalancerConfig.max_request_bytes,
    "PYCACHE_MAX_REQUEST_BYTES",
    "Largest frame passed on (0: a node's default, the largest value plus 64 KiB); "
    "the nodes' own limit applies when lower.",
)
@click.option(
    "--status-file",
    default=None,
    envvar="PYCACHE_STATUS_FILE",
    help="Write {pid, state, front, metrics} JSON here once bound.",
)
@click.option(
    "--metrics-port",
    default="0",
    show_default=True,
    envvar="PYCACHE_METRICS_PORT",
    callback=port_or_any,
    help="Serve /metrics on this port (0: not served; '*': the OS picks, see --status-file).",
)
@click.option(
    "--metrics-host",
    default=DEFAULT_EDGE_HOST,
    show_default=True,
    envvar="PYCACHE_METRICS_HOST",
    help="Address /metrics listens on.",
)
@insecure_option
@client_keys_option
@client_key_option
@server_key_option
@resp_option
@click.option(
    "--token-file",
    default="",
    envvar="PYCACHE_TOKEN_FILE",
    help="Tokens, one per line: RESP AUTH and /metrics bearer tokens "
    "(required for either beyond loopback).",
)
@log_level_option
@log_format_option
def balancer(
    front: str,
    nodes: str,
    health_ms: int,
    hang_ms: int,
    wait_ms: int,
    max_attempts: int,
    deadline_ms: int,
    batch_per_node: int,
    max_request_bytes: int,
    status_file: str | None,
    metrics_port: int,
    metrics_host: str,
    insecure: bool,
    client_keys: str,
    client_key: str,
    server_key: str,
    resp: str,
    token_file: str,
    log_level: str,
    log_format: str,
) -> None:
    """Run a balancer in front of the nodes until SIGTERM or Ctrl-C."""
    from mesh.roles.balancer_main import run_balancer

    setup_logging(log_level, "balancer", log_format)
    config = valid_config(
        lambda: BalancerConfig(
            front=front,
            nodes=split_csv(nodes),
            health_ms=health_ms,
            hang_ms=hang_ms,
            wait_ms=wait_ms,
            max_attempts=max_attempts,
            deadline_ms=deadline_ms,
            batch_per_node=batch_per_node,
            max_request_bytes=max_request_bytes,
            insecure=insecure,
            client_keys=client_keys,
            client_key=client_key,
            server_key=server_key,
            metrics_host=metrics_host,
            metrics_port=metrics_port,
            resp=resp,
            token_file=token_file,
        )
    )
    errors_to_exit_codes(run_balancer)(config, status_file)


@click.command()
@click.option(
    "--host",
    default=EdgeConfig.host,
    show_default=True,
    envvar="PYCACHE_EDGE_HOST",
    help="Address to listen on.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=EdgeConfig.port,
    show_default=True,
    envvar="PYCACHE_EDGE_PORT",
    help="Port to listen on (0: the OS picks; see --status-file).",
)
@click.option(
    "--backend",
    default=",".join(EdgeConfig.backend),
    show_default=True,
    envvar="PYCACHE_BACKEND",
    help="Balancer front to forward to (or node API endpoints), comma-separated.",
)
@click.option(
    "--timeout",
    type=float,
    default=EdgeConfig.timeout,
    show_default=True,
    envvar="PYCACHE_EDGE_TIMEOUT",
    help="Seconds a backend request may take before the answer is 503.",
)
@int_option(
    "--max-body-bytes",
    EdgeConfig.max_body_bytes,
    "PYCACHE_EDGE_MAX_BODY_BYTES",
    "Largest request body; a larger one is answered 413.",
)
@click.option(
    "--status-file",
    default=EdgeConfig.status_file,
    envvar="PYCACHE_EDGE_STATUS_FILE",
    help="Write {pid, http, backend} JSON here once listening.",
)
@insecure_option
@token_file_option
@tls_cert_option
@tls_key_option
@client_key_option
@server_key_option
@int_option(
    "--max-connections",
    EdgeConfig.max_connections,
    "PYCACHE_EDGE_MAX_CONNECTIONS",
    "Most open HTTP connections; past it the longest idle are closed"
    " (0: the open-file limit less 128).",
)
@seconds_option(
    "--idle-timeout",
    EdgeConfig.idle_timeout,
    "PYCACHE_EDGE_IDLE_TIMEOUT",
    "Seconds a connection may wait for a request's complete headers"
    " (idle keep-alive, or slowloris).",
)
@seconds_option(
    "--body-timeout",
    EdgeConfig.body_timeout,
    "PYCACHE_EDGE_BODY_TIMEOUT",
    "Seconds a request's body may take to arrive after its headers.",
)
@log_level_option
@log_format_option
def edge(
    host: str,
    port: int,
    backend: str,
    timeout: float,
    max_body_bytes: int,
    status_file: str,
    insecure: bool,
    token_file: str,
    tls_cert: str,
    tls_key: str,
    client_key: str,
    server_key: str,
    max_connections: int,
    idle_timeout: float,
    body_timeout: float,
    log_level: str,
    log_format: str,
) -> None:
    """Run the HTTP edge (the seed's REST API) until SIGTERM or Ctrl-C (then exit 0)."""
    from mesh.roles.edge import run_edge

    setup_logging(log_level, "edge", log_format)
    config = valid_config(
        lambda: EdgeConfig(
            host=host,
            port=port,
            backend=split_csv(backend),
            timeout=timeout,
            max_body_bytes=max_body_bytes,
            status_file=status_file,
            insecure=insecure,
            token_file=token_file,
            tls_cert=tls_cert,
            tls_key=tls_key,
            client_key=client_key,
            server_key=server_key,
            max_connections=max_connections,
            idle_timeout=idle_timeout,
            body_timeout=body_timeout,
        )
    )
    errors_to_exit_codes(run_edge)(config)


@click.command()
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
@click.option("--host", default=DEFAULT_EDGE_HOST, show_default=True, envvar="PYCACHE_HOST")
@port_option(
    "--api-port",
    Ports.api,
    "PYCACHE_API_PORT",
    "First node's API port; the next get +1 (0: the OS picks every port).",
)
@port_option(
    "--repl-port",
    Ports.repl,
    "PYCACHE_REPL_PORT",
    "First node's replication port; the next get +1.",
)
@port_option("--pub-port", Ports.pub, "PYCACHE_PUB_PORT", "First node's PUB port; the next get +1.")
@port_option(
    "--http-port", Ports.http, "PYCACHE_HTTP_PORT", "First node's HTTP API port; the next get +1."
)
@port_option(
    "--balancer-port", Ports.balancer, "PYCACHE_BALANCER_PORT", "The balancer's front port."
)
@port_option("--edge-port", Ports.edge, "PYCACHE_EDGE_PORT", "The HTTP edge's port.")
@port_option(
    "--balancer-metrics-port",
    Ports.metrics,
    "PYCACHE_BALANCER_METRICS_PORT",
    "The balancer's /metrics port (0: the OS picks).",
)
@port_option(
    "--resp-port", Ports.resp, "PYCACHE_RESP_PORT", "First node's RESP port; the next get +1."
)
@port_option(
    "--balancer-resp-port",
    Ports.balancer_resp,
    "PYCACHE_BALANCER_RESP_PORT",
    "The balancer's RESP (Redis protocol) port.",
)
@fsync_option
@click.option(
    "--ready-timeout",
    type=float,
    callback=seconds_in_range,
    default=60.0,
    show_default=True,
    envvar="PYCACHE_READY_TIMEOUT",
    help="Seconds to wait for every node.",
)
@log_format_option
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
    balancer_metrics_port: int,
    resp_port: int,
    balancer_resp_port: int,
    fsync: str,
    ready_timeout: float,
    log_format: str,
) -> None:
    """Start nodes, a balancer and the HTTP edge; print the endpoints; Ctrl-C stops all.

    With --api-port 0 the OS picks every port (handy for scripts: read
    <data-dir>/cluster.json, which also lists every process's /metrics URL).
    --log-format is passed on to every process.
    """
    from mesh.roles.supervisor import Cluster

    setup_logging("INFO", "up", log_format)
    ports = Ports(
        api_port,
        repl_port,
        pub_port,
        http_port,
        balancer_port,
        edge_port,
        balancer_metrics_port,
        resp_port,
        balancer_resp_port,
    )
    cluster = Cluster(
        data_dir,
        nodes=nodes,
        host=host,
        ports=ports if api_port else Ports(0, 0, 0, 0, 0, 0, 0),
        fsync=fsync,
        log_format=log_format,
    )
    sys.exit(cluster.run(ready_timeout, echo=click.echo))


COMMANDS = (balancer, edge, up)
