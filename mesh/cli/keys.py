"""``pycache keygen`` and ``pycache forget``: the peer plane's keys (mesh.roles.trust)."""

from __future__ import annotations

import click

from mesh.cli.exits import errors_to_exit_codes


def _folder(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.strip():  # "" would write the keys into the current folder
        raise click.BadParameter("name a folder")
    return value


keys_option = click.option(
    "--keys",
    "folder",
    required=True,
    callback=_folder,
    envvar="PYCACHE_KEYS",
    help="The keys folder (shared by the members, or copied to each: see docs/security.md).",
)


@click.command()
@keys_option
@click.option(
    "--observer",
    "observers",
    multiple=True,
    help="Also a read-only subscriber key of this name (admitted to PUB sockets only).",
)
@click.argument("node_ids", nargs=-1)
@errors_to_exit_codes
def keygen(folder: str, observers: tuple[str, ...], node_ids: tuple[str, ...]) -> None:
    """Create the cluster's server key and a key for each NODE_ID that has none yet.

    Run it again with a new id to admit a new member; existing keys are kept.
    """
    from mesh.roles.trust import keygen as make_keys

    for path in make_keys(folder, list(node_ids), list(observers)):
        click.echo(f"wrote {path}")


@click.command()
@keys_option
@click.argument("node_id")
@errors_to_exit_codes
def forget(folder: str, node_id: str) -> None:
    """Retire member NODE_ID for good: its key is refused from now on.

    Running nodes drop it within a second; w=quorum then counts the members left.
    """
    from mesh.roles.trust import forget as retire

    click.echo(f"retired {node_id}: its key is now {retire(folder, node_id)}")


COMMANDS = (keygen, forget)
