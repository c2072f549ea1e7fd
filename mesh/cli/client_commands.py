"""The ``pycache`` client commands: ``get``, ``set``, ``del``, ``expire``,
``persist``, ``ttl``, ``incr``, ``stats`` (``--all``: every process of a ``pycache up``
cluster) and ``status`` (a table of the cluster, or ``--json``).  All take
``--connect`` (env ``PYCACHE_CONNECT``) with one default: the balancer's front
of ``pycache up``, ``tcp://127.0.0.1:7000``.  Toward a node or balancer that
admits only known clients, each takes ``--client-key FILE --server-key FILE``
(env ``PYCACHE_CLIENT_KEY``, ``PYCACHE_SERVER_KEY``).  :mod:`mesh.cli` adds them to the
``pycache`` group (:data:`COMMANDS`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

from mesh.cli.credentials import client_key_option, server_key_option
from mesh.cli.exits import EXIT_MISSING, EXIT_UNREACHABLE, errors_to_exit_codes, split_csv
from mesh.cli.options import seconds_in_range
from mesh.roles.config import DEFAULT_FRONT

#: Where ``pycache stats --all`` reads the processes: ``pycache up``'s default data folder.
DEFAULT_CLUSTER_FILE = "./pycache-data/cluster.json"

connect_option = click.option(
    "--connect",
    default=DEFAULT_FRONT,
    show_default=True,
    envvar="PYCACHE_CONNECT",
    help="Endpoint(s) to talk to, comma-separated: a balancer's front or nodes' API.",
)
_timeout_option = click.option(
    "--timeout",
    type=float,
    callback=seconds_in_range,
    default=5.0,
    show_default=True,
    envvar="PYCACHE_TIMEOUT",
    help="Seconds to wait for the reply.",
)


def timeout_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--timeout`` and the client's credentials (``--client-key``, ``--server-key``)."""
    return _timeout_option(client_key_option(server_key_option(command)))


def _client_call(
    connect: str, timeout: float, call: Callable[[Any], Any], client_key: str, server_key: str
) -> Any:
    from mesh.roles.client import Client
    from mesh.roles.clientplane import optional_credentials

    credentials = optional_credentials(client_key, server_key)
    with Client(split_csv(connect), timeout=timeout, credentials=credentials) as client:
        return call(client)


@click.command()
@click.argument("key")
@connect_option
@timeout_option
@errors_to_exit_codes
def get(key: str, connect: str, timeout: float, **credentials: str) -> None:
    """Print the value of KEY; exit 1 with no output when it is missing."""
    value = _client_call(connect, timeout, lambda c: c.get(key), **credentials)
    if value is None:
        sys.exit(EXIT_MISSING)
    sys.stdout.buffer.write(value + b"\n")


@click.command(name="set")
@click.argument("key")
@click.argument("value")
@click.option("--ttl", type=float, default=None, help="Expire after this many seconds.")
@click.option("--nx", is_flag=True, help="Only set when KEY does not exist.")
@click.option("--xx", is_flag=True, help="Only set when KEY exists.")
@connect_option
@timeout_option
@errors_to_exit_codes
def set_(
    key: str,
    value: str,
    ttl: float | None,
    nx: bool,
    xx: bool,
    connect: str,
    timeout: float,
    **credentials: str,
) -> None:
    """Set KEY to VALUE; prints OK, or (nil) when --nx/--xx was not met."""
    if ttl is not None and ttl <= 0:
        raise click.BadParameter("must be positive", param_hint="--ttl")
    done = _client_call(
        connect, timeout, lambda c: c.set(key, value, ttl=ttl, nx=nx, xx=xx), **credentials
    )
    click.echo("OK" if done else "(nil)")


@click.command(name="del")
@click.argument("keys", nargs=-1, required=True)
@connect_option
@timeout_option
@errors_to_exit_codes
def del_(keys: tuple[str, ...], connect: str, timeout: float, **credentials: str) -> None:
    """Delete KEYS; prints how many existed."""
    click.echo(_client_call(connect, timeout, lambda c: c.delete(*keys), **credentials))


@click.command()
@click.argument("key")
@click.argument("seconds", type=float)
@connect_option
@timeout_option
@errors_to_exit_codes
def expire(key: str, seconds: float, connect: str, timeout: float, **credentials: str) -> None:
    """Expire KEY after SECONDS; prints 1, or 0 when KEY does not exist."""
    if seconds <= 0:
        raise click.BadParameter("must be positive", param_hint="SECONDS")
    click.echo(int(_client_call(connect, timeout, lambda c: c.expire(key, seconds), **credentials)))


@click.command()
@click.argument("key")
@connect_option
@timeout_option
@errors_to_exit_codes
def persist(key: str, connect: str, timeout: float, **credentials: str) -> None:
    """Remove the TTL of KEY; prints 1, or 0 when it had none."""
    click.echo(int(_client_call(connect, timeout, lambda c: c.persist(key), **credentials)))


@click.command()
@click.argument("key")
@connect_option
@timeout_option
@errors_to_exit_codes
def ttl(key: str, connect: str, timeout: float, **credentials: str) -> None:
    """Print the seconds KEY has left: -1 no TTL, -2 no such key."""
    click.echo(_client_call(connect, timeout, lambda c: c.ttl(key), **credentials))


@click.command()
@click.option(
    "--all",
    "every",
    is_flag=True,
    envvar="PYCACHE_STATS_ALL",
    help="Every process of a `pycache up` cluster (see --cluster-file): each node's STATS, "
    "the balancer's and the edge's /metrics; keyed by process id.",
)
@click.option(
    "--cluster-file",
    default=DEFAULT_CLUSTER_FILE,
    show_default=True,
    envvar="PYCACHE_CLUSTER_FILE",
    help="The cluster.json `pycache up` wrote (with --all).",
)
@connect_option
@timeout_option
@errors_to_exit_codes
def stats(every: bool, cluster_file: str, connect: str, timeout: float, **credentials: str) -> None:
    """Print the statistics of one node (through --connect) as JSON, or with --all of
    every process; with --all, exit 3 when a process could not be read."""
    if every:
        from mesh.roles.clientplane import optional_credentials
        from mesh.roles.scrape import cluster_stats

        keys = optional_credentials(credentials["client_key"], credentials["server_key"])
        everything = cluster_stats(cluster_file, timeout, keys)
        click.echo(json.dumps(everything, indent=2))
        if any("error" in entry for entry in everything.values()):
            sys.exit(EXIT_UNREACHABLE)
        return
    click.echo(
        json.dumps(_client_call(connect, timeout, lambda c: c.stats(), **credentials), indent=2)
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the nodes as JSON, not a table.")
@connect_option
@timeout_option
@errors_to_exit_codes
def status(connect: str, timeout: float, as_json: bool, **credentials: str) -> None:
    """Print the cluster as a table (or --json): state, lag, keys and digest of every node.

    Through a balancer: every node; through a node: itself and its peers."""
    nodes = _client_call(connect, timeout, lambda c: c.cluster(), **credentials)["nodes"]
    if as_json:
        click.echo(json.dumps({"nodes": nodes}, indent=2))
        return
    columns = ["node_id", "state", "in_rotation", "lag_entries", "lag_ms", "keys", "digest"]
    rows = []
    for node in nodes:
        lag = node.get("lag") or {}
        cells = {**node, "lag_entries": lag.get("entries"), "lag_ms": lag.get("ms")}
        rows.append(["-" if cells.get(c) is None else str(cells[c]) for c in columns])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    for line in [columns, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))


#: the commands, in the order ``pycache --help`` lists them
COMMANDS = [get, set_, del_, expire, persist, ttl, stats, status]


# ----------------------------------------------------------------- counters (issue 18)


@click.command()
@click.argument("key")
@click.option(
    "--by", type=int, default=1, show_default=True, help="The amount to add (< 0: subtract)."
)
@connect_option
@timeout_option
@errors_to_exit_codes
def incr(key: str, by: int, connect: str, timeout: float, **credentials: str) -> None:
    """Add --by to the counter KEY (a missing key counts from 0); prints the new value.

    Increments on different nodes at the same time all count (docs/counters.md).
    """
    if not -(2**63) <= by < 2**63:
        raise click.BadParameter("must be a 64-bit signed integer", param_hint="--by")
    click.echo(_client_call(connect, timeout, lambda c: c.incr(key, by), **credentials))


COMMANDS.append(incr)
