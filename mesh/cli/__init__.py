"""The command line (the top layer): ``pycache`` and its subcommands.

:mod:`mesh.cli.main` holds the group and the process roles (``node``,
``balancer``, ``edge``, ``up``); :mod:`mesh.cli.client_commands` the commands
that talk to a running cluster; :mod:`mesh.cli.exits` the exit codes.
"""

from mesh.cli.main import main

__all__ = ["main"]
