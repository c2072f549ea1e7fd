"""The client plane's CURVE keys: who may talk to a node's api socket or a balancer's front.

A client keys folder (``pycache client-keygen``, ``--client-keys DIR``)::

    server.key, server.key_secret   the client plane's server key (nodes and balancers)
    clients/<name>.key              the admitted clients: one public key each
    secrets/<name>.key_secret       each client's own key: hand it to that client

With it, the socket is a CURVE server whose ZAP domain is ``clients``: a
connection is admitted only when its key is in ``clients/`` (re-read when the
folder changes, so a key added or removed counts from the next handshake on;
connections already admitted stay).  A client connects with its own key pair
and the server's public key (:class:`Credentials`: ``--client-key FILE
--server-key FILE``, or ``Client(..., credentials=...)``).

Files are ZeroMQ's certificate format (``zmq.auth``); secret files are mode
0600.  This plane is separate from the peer plane (:mod:`mesh.roles.trust`),
but a process has one ZAP handler for both: :func:`admit_clients` adds the
``clients`` domain to the handler the peer plane made, or to a new one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
import zmq.utils.z85

from mesh.core.errors import ConfigError
from mesh.roles.protected import endpoint_is_local
from mesh.roles.trust import (
    Admission,
    AnyZapHandler,
    connect_curve,
    load_key_pair,
    make_keys,
    serve_curve,
)

log = logging.getLogger(__name__)

#: ZAP domain of the client-plane server sockets (a node's api, a balancer's front).
CLIENTS_DOMAIN = "clients"
SERVER, CLIENTS, SECRETS = "server", "clients", "secrets"
_Z85_KEY_LENGTH = 40


@dataclass(frozen=True)
class ServerKeys:
    """The client plane's server key pair (Z85) and the folder it came from."""

    public: bytes
    secret: bytes
    folder: Path


@dataclass(frozen=True)
class Credentials:
    """What a client needs to connect to a CURVE-protected socket (Z85 keys)."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def load(cls, client_key: str | Path, server_key: str | bytes | Path) -> Credentials:
        """From a client's ``.key_secret`` file and the server's public key.

        ``server_key`` is a ``server.key`` file (or ``server.key_secret``) or
        the public key itself as 40 Z85 characters.
        """
        public, secret = load_key_pair(Path(client_key))
        return cls(public, secret, server_public_key(server_key))


def optional_credentials(client_key: str, server_key: str, folder: str = "") -> Credentials | None:
    """Credentials from ``--client-key``/``--server-key``; None when neither is given.

    Without ``server_key``, the server key of ``folder`` (a client keys
    folder) is used; ConfigError when only one of the two can be found.
    """
    if not server_key and client_key and folder:
        server_key = str(Path(folder) / f"{SERVER}.key")
    if not client_key and not server_key:
        return None
    if not (client_key and server_key):
        raise ConfigError("give both --client-key and --server-key, or neither")
    return Credentials.load(client_key, server_key)


def server_public_key(server_key: str | bytes | Path) -> bytes:
    """A server public key given as a certificate file or as 40 Z85 characters."""
    text = server_key.decode() if isinstance(server_key, bytes) else str(server_key)
    if len(text) == _Z85_KEY_LENGTH and not Path(text).exists():
        try:
            zmq.utils.z85.decode(text)
        except (ValueError, KeyError):
            raise ConfigError(f"server key {text!r} is not a Z85 key nor a file") from None
        return text.encode()
    try:
        public, _ = zmq.auth.load_certificate(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the server key {text}: {exc}") from None
    return public


def client_keygen(folder: str | Path, names: Sequence[str]) -> list[Path]:
    """Create what is missing of a client keys folder for ``names``; return the files written.

    Existing keys are kept: running it again with a new name adds only that client.
    """
    return make_keys(folder, {CLIENTS: names})


def load_server_keys(folder: str | Path) -> ServerKeys:
    """The server key of a client keys folder; ConfigError naming what is missing."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(
            f"client keys folder {root} does not exist (create it with `pycache client-keygen`)"
        )
    public, secret = load_key_pair(root / f"{SERVER}.key_secret")
    return ServerKeys(public, secret, root)


class ClientSet:
    """The admitted client keys of ``clients/``, re-read when the folder changes."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / CLIENTS
        self._stamp = -2.0
        self.keys: dict[bytes, str] = {}  # Z85 public key -> client name
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the folder if it changed since the last read; return whether it had."""
        try:
            stamp = self.folder.stat().st_mtime
        except OSError:
            stamp = -1.0
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        keys = {}
        for path in sorted(self.folder.glob("*.key")):
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable client key %s: %s", path, exc)
                continue
            keys[public] = path.stem
        self.keys = keys
        return True

    def admits(self, key: bytes) -> str | None:
        """The client's name when ``key`` (Z85) is admitted, else None (one stat per call)."""
        self.refresh()
        return self.keys.get(key)


def serve_clients(sock: zmq.Socket, keys: ServerKeys) -> None:
    """Make ``sock`` (before it binds) a CURVE server of the client plane."""
    serve_curve(sock, keys.public, keys.secret, CLIENTS_DOMAIN)


def connect_as(sock: zmq.Socket, credentials: Credentials) -> None:
    """Make ``sock`` (before it connects) a CURVE client with ``credentials``."""
    connect_curve(sock, credentials.public, credentials.secret, credentials.server_public)


def admit_clients(handler: Admission, keys: ServerKeys) -> None:
    """Admit the folder's client keys on the ``clients`` domain of the process's ZAP handler.

    A process has one ZAP handler per context (ZeroMQ allows one): the one
    the peer plane made, when it did, else a new :class:`ZapHandler` (a node)
    or :class:`ThreadZapHandler` (the balancer) with :func:`log_refused`,
    started before the socket binds and stopped when the process ends.
    """
    handler.admit(CLIENTS_DOMAIN, ClientSet(keys.folder).admits)


def protect(
    sock: zmq.Socket,
    what: str,
    endpoint: str,
    client_keys: str,
    zap: AnyZapHandler | None,
    make_zap: Callable[[], AnyZapHandler],
) -> AnyZapHandler | None:
    """Set up a client-plane server socket (before it binds); return the ZAP handler.

    With ``client_keys`` the socket becomes a CURVE server admitting those
    clients, on the process's one ZAP handler (``zap``, or a new one made and
    started by ``make_zap``).  Without, it stays plain, with a warning when
    it listens beyond loopback (config validation allowed that only with
    ``--insecure``).
    """
    if not client_keys:
        if not endpoint_is_local(endpoint):
            log.warning("INSECURE: %s %s serves any client that can reach it", what, endpoint)
        return zap
    keys = load_server_keys(client_keys)
    if zap is None:
        zap = make_zap()
        zap.start()
    admit_clients(zap, keys)
    serve_clients(sock, keys)
    return zap
