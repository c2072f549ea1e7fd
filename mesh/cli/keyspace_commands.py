"""The ``pycache`` key-space commands: ``mget``, ``exists``, ``keys``, ``scan`` and
``flush`` (with ``--connect``, ``--timeout`` and the client's credentials, as the
other client commands of :mod:`mesh.cli.client_commands`).
"""

from __future__ import annotations

import sys

import click

from mesh.cli.client_commands import _client_call, connect_option, timeout_option
from mesh.cli.exits import errors_to_exit_codes


@click.command()
@click.argument("keys", nargs=-1, required=True)
@connect_option
@timeout_option
@errors_to_exit_codes
def mget(keys: tuple[str, ...], connect: str, timeout: float, **credentials: str) -> None:
    """Print the values of KEYS, one line each (an empty line for a missing key)."""
    values = _client_call(connect, timeout, lambda c: c.mget(list(keys)), **credentials)
    for value in values:
        sys.stdout.buffer.write((value or b"") + b"\n")


@click.command()
@click.argument("keys", nargs=-1, required=True)
@connect_option
@timeout_option
@errors_to_exit_codes
def exists(keys: tuple[str, ...], connect: str, timeout: float, **credentials: str) -> None:
    """Print how many of KEYS exist (a key named twice counts twice)."""
    click.echo(_client_call(connect, timeout, lambda c: c.exists(*keys), **credentials))


@click.command()
@click.argument("pattern", default="*")
@connect_option
@timeout_option
@errors_to_exit_codes
def keys(pattern: str, connect: str, timeout: float, **credentials: str) -> None:
    """Print every key matching the Redis glob PATTERN (default: all), one a line."""
    for key in sorted(_client_call(connect, timeout, lambda c: c.keys(pattern), **credentials)):
        click.echo(key)


@click.command()
@click.option("--match", default=None, help="Only keys matching this Redis glob.")
@click.option("--count", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@connect_option
@timeout_option
@errors_to_exit_codes
def scan(match: str | None, count: int, connect: str, timeout: float, **credentials: str) -> None:
    """Print every key (matching --match), a SCAN page at a time."""

    def every(client: object) -> None:
        for key in client.scan_iter(match, count):  # type: ignore[attr-defined]
            click.echo(key)

    _client_call(connect, timeout, every, **credentials)


@click.command()
@click.option("--yes", is_flag=True, help="Really delete every key of the cluster.")
@connect_option
@timeout_option
@errors_to_exit_codes
def flush(yes: bool, connect: str, timeout: float, **credentials: str) -> None:
    """Delete EVERY key (replicated to every node); needs --yes."""
    if not yes:
        raise click.UsageError("flush deletes every key of the cluster: add --yes to confirm")
    _client_call(connect, timeout, lambda c: c.flushall(), **credentials)
    click.echo("OK")


#: the commands, in the order ``pycache --help`` lists them
COMMANDS = [mget, exists, keys, scan, flush]
