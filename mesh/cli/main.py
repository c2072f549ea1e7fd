"""The ``pycache`` group: the process roles and the client commands under one name.

Process roles: ``pycache node`` (:mod:`mesh.cli.node`), ``balancer``,
``edge`` and ``up`` (:mod:`mesh.cli.processes`); the peer plane's keys,
``keygen`` and ``forget`` (:mod:`mesh.cli.keys`); the client plane's keys,
``client-keygen`` (:mod:`mesh.cli.credentials`).  The client commands
(``get``, ``set``, ``status``, ...) live in :mod:`mesh.cli.client_commands`;
exit codes in :mod:`mesh.cli.exits`.

A subcommand's module is imported only when that subcommand is named (or
``--help`` lists them all): ``pycache node`` loads no client, launcher or
key-making code, and starts that much sooner.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import click

#: Every subcommand: (the module that defines it, the command's name there).
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "node": ("mesh.cli.node", "node"),
    "balancer": ("mesh.cli.processes", "balancer"),
    "edge": ("mesh.cli.processes", "edge"),
    "up": ("mesh.cli.processes", "up"),
    "keygen": ("mesh.cli.keys", "keygen"),
    "forget": ("mesh.cli.keys", "forget"),
    "client-keygen": ("mesh.cli.credentials", "client_keygen"),
    "get": ("mesh.cli.client_commands", "get"),
    "set": ("mesh.cli.client_commands", "set_"),
    "del": ("mesh.cli.client_commands", "del_"),
    "expire": ("mesh.cli.client_commands", "expire"),
    "persist": ("mesh.cli.client_commands", "persist"),
    "ttl": ("mesh.cli.client_commands", "ttl"),
    "stats": ("mesh.cli.client_commands", "stats"),
    "status": ("mesh.cli.client_commands", "status"),
    "incr": ("mesh.cli.client_commands", "incr"),
    "mget": ("mesh.cli.keyspace_commands", "mget"),
    "exists": ("mesh.cli.keyspace_commands", "exists"),
    "keys": ("mesh.cli.keyspace_commands", "keys"),
    "scan": ("mesh.cli.keyspace_commands", "scan"),
    "flush": ("mesh.cli.keyspace_commands", "flush"),
}


class LazyCommands(dict[str, click.Command]):
    """A group's ``commands`` that imports a subcommand's module when the subcommand is
    looked up, and every module when they are listed (iterated, counted)."""

    def _load(self, name: str) -> click.Command:
        module, attribute = SUBCOMMANDS[name]
        command = show_envvars(getattr(importlib.import_module(module), attribute))
        dict.__setitem__(self, name, command)
        return command

    def _load_all(self) -> None:
        for name in SUBCOMMANDS:
            if not dict.__contains__(self, name):
                self._load(name)

    def __missing__(self, name: str) -> click.Command:
        if name not in SUBCOMMANDS:
            raise KeyError(name)
        return self._load(name)

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in SUBCOMMANDS

    def get(self, name: str, default: Any = None) -> Any:
        """The subcommand ``name`` (its module imported now), or ``default``."""
        try:
            return self[name]
        except KeyError:
            return default

    def __iter__(self) -> Iterator[str]:
        self._load_all()
        return dict.__iter__(self)

    def __len__(self) -> int:
        self._load_all()
        return dict.__len__(self)

    def keys(self) -> Any:
        """Every subcommand's name (every module imported)."""
        self._load_all()
        return dict.keys(self)

    def values(self) -> Any:
        """Every subcommand (every module imported)."""
        self._load_all()
        return dict.values(self)

    def items(self) -> Any:
        """Every ``(name, subcommand)`` (every module imported)."""
        self._load_all()
        return dict.items(self)


class LazyGroup(click.Group):
    """A ``click.Group`` whose :class:`LazyCommands` import subcommands as they are asked for."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = LazyCommands(self.commands)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pycache-mesh")
def main() -> None:
    """PyCache: a brokerless ZeroMQ mesh of in-memory key-value cache nodes."""


def show_envvars(command: click.Command) -> click.Command:
    """Make ``--help`` show the environment variable of every option that has one."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    return command


if __name__ == "__main__":
    main()
