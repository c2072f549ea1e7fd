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


class LazyGroup(click.Group):
    """A group that imports a subcommand's module when the subcommand is first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand's name, sorted (as ``click.Group`` lists them)."""
        return sorted({*self.commands, *SUBCOMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The subcommand ``cmd_name`` (its module imported now), or None if there is none."""
        if cmd_name not in self.commands and cmd_name in SUBCOMMANDS:
            module, attribute = SUBCOMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(show_envvars(command), cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As ``click.Group``'s, with "Did you mean" drawn from every subcommand's name."""
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            names = self.list_commands(ctx)
            raise click.exceptions.NoSuchCommand(
                exc.command_name, possibilities=names, ctx=ctx
            ) from None


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
