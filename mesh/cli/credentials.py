"""The client plane on the command line: ``pycache client-keygen`` and the credential options.

Servers: ``--client-keys DIR`` (node, balancer: the CURVE keys clients must
have), ``--token-file FILE`` and ``--tls-cert/--tls-key`` (node HTTP, edge).
Clients: ``--client-key FILE --server-key FILE`` (the client commands, the
balancer toward its nodes, the edge toward its backend).  Each has an
environment variable; see :mod:`mesh.roles.protected` and
:mod:`mesh.roles.clientplane`.
"""

from __future__ import annotations

import click

from mesh.cli.exits import errors_to_exit_codes

client_keys_option = click.option(
    "--client-keys",
    default="",
    envvar="PYCACHE_CLIENT_KEYS",
    help="Client keys folder (`pycache client-keygen`): admit only these clients' CURVE keys.",
)
client_key_option = click.option(
    "--client-key",
    default="",
    envvar="PYCACHE_CLIENT_KEY",
    help="This client's CURVE key (a .key_secret file) for servers that require one.",
)
server_key_option = click.option(
    "--server-key",
    default="",
    envvar="PYCACHE_SERVER_KEY",
    help="The server's public CURVE key: its server.key file, or the key in Z85.",
)
token_file_option = click.option(
    "--token-file",
    default="",
    envvar="PYCACHE_TOKEN_FILE",
    help="HTTP bearer tokens, one per line: every request but the probes needs one.",
)
tls_cert_option = click.option(
    "--tls-cert", default="", envvar="PYCACHE_TLS_CERT", help="Serve HTTPS with this PEM cert."
)
tls_key_option = click.option(
    "--tls-key", default="", envvar="PYCACHE_TLS_KEY", help="The PEM key of --tls-cert."
)


@click.command(name="client-keygen")
@click.option(
    "--client-keys",
    "folder",
    required=True,
    envvar="PYCACHE_CLIENT_KEYS",
    help="The client keys folder (given to nodes and balancers as --client-keys).",
)
@click.option(
    "--token-file",
    default="",
    help="Also write a bearer token for HTTP to this file, unless it exists.",
)
@click.argument("names", nargs=-1)
@errors_to_exit_codes
def client_keygen(folder: str, token_file: str, names: tuple[str, ...]) -> None:
    """Create the client plane's server key and a key for each client NAME that has none.

    Hand secrets/NAME.key_secret and server.key to that client (--client-key,
    --server-key); run it again with a new name to admit another client.
    """
    from mesh.roles.clientplane import client_keygen as make_keys
    from mesh.roles.protected import make_token_file

    for path in make_keys(folder, list(names)):
        click.echo(f"wrote {path}")
    if token_file and make_token_file(token_file):
        click.echo(f"wrote {token_file}")


COMMANDS = (client_keygen,)
