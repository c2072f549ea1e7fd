"""The ``pycache`` group: the process roles and the client commands under one name.

Process roles: ``pycache node`` (:mod:`mesh.cli.node`), ``balancer``,
``edge`` and ``up`` (:mod:`mesh.cli.processes`); the peer plane's keys,
``keygen`` and ``forget`` (:mod:`mesh.cli.keys`); the client plane's keys,
``client-keygen`` (:mod:`mesh.cli.credentials`).  The client commands
(``get``, ``set``, ``status``, ...) live in :mod:`mesh.cli.client_commands`;
exit codes in :mod:`mesh.cli.exits`.
"""

from __future__ import annotations

import click

from mesh.cli import client_commands, credentials, keys, keyspace_commands, processes
from mesh.cli.node import node


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pycache-mesh")
def main() -> None:
    """PyCache: a brokerless ZeroMQ mesh of in-memory key-value cache nodes."""


def show_envvars(command: click.Command) -> click.Command:
    """Make ``--help`` show the environment variable of every option that has one."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            param.show_envvar = True
    return command


for _command in (
    node,
    *processes.COMMANDS,
    *keys.COMMANDS,
    *credentials.COMMANDS,
    *client_commands.COMMANDS,
    *keyspace_commands.COMMANDS,
):
    main.add_command(show_envvars(_command))


if __name__ == "__main__":
    main()
