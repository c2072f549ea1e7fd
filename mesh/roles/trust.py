"""The peer plane's trust: the cluster's keys, who is a member, and the ZAP handler.

Every node's repl ROUTER and PUB socket is a CURVE server with the cluster's
**server key**, shared by the members; every member connects (its DEALERs
and its SUB) with a **member key** of its own.  A ZAP handler admits a
connection only when its member key is in the admitted set, so a node's
identity is its key, never what a message claims: the handler names the
member as the connection's ``User-Id``, which every message on it carries.

A keys folder (``pycache keygen``, ``pycache node --keys DIR``)::

    server.key, server.key_secret   the cluster's server key (every member needs both)
    members/<id>.key                the admitted set: one public key per member
    secrets/<id>.key_secret         each member's own key (a node needs only its own)
    observers/<name>.key            read-only subscribers (monitoring): admitted on PUB only
    retired/<id>.key                forgotten members (``pycache forget``): never admitted again

Files are ZeroMQ's certificate format (``zmq.auth``); secret files are mode
0600.  A node re-reads ``members/`` when it changes, so a member created or
forgotten while the cluster runs is admitted or dropped within a second.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.auth.thread import ThreadAuthenticator

from mesh.core.errors import ConfigError

if TYPE_CHECKING:
    from mesh.roles.config import NodeConfig

log = logging.getLogger(__name__)

SERVER = "server"
MEMBERS, SECRETS, OBSERVERS, RETIRED = "members", "secrets", "observers", "retired"
#: ZAP domains of the two peer-plane server sockets.
REPL_DOMAIN, PUB_DOMAIN = "repl", "pub"
#: Refused keys logged by name, at most (a flood of new keys logs no more).
REFUSED_LOGGED_MAX = 1000
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


@dataclass(frozen=True)
class PeerKeys:
    """What one member needs to join the peer plane (Z85 keys, as pyzmq takes them)."""

    node_id: str
    server_public: bytes
    server_secret: bytes
    public: bytes
    secret: bytes
    folder: Path


def keygen(
    folder: str | Path, node_ids: Sequence[str], observers: Sequence[str] = ()
) -> list[Path]:
    """Create what is missing of a keys folder for ``node_ids``; return the files written.

    Existing keys are kept (running it again for a new member adds only that
    member); a retired member gets a new key, since its old one stays retired.
    """
    (Path(folder) / RETIRED).mkdir(parents=True, exist_ok=True)
    return make_keys(folder, {MEMBERS: node_ids, OBSERVERS: observers})


def make_keys(folder: str | Path, names_by_folder: dict[str, Sequence[str]]) -> list[Path]:
    """Create what is missing of a keys folder; return the files written.

    The server key pair (``server.key*``), and for each public-key folder
    (``members/``, ``clients/``, ...) a key pair per name that has no public
    key there yet: its secret in ``secrets/`` (mode 0700), its public key in
    that folder.  Existing keys are kept.
    """
    root = Path(folder)
    (root / SECRETS).mkdir(parents=True, exist_ok=True)
    os.chmod(root / SECRETS, 0o700)
    written = []
    if not (root / f"{SERVER}.key_secret").exists():
        written += create_key_pair(root, SERVER)
    for public_folder, names in names_by_folder.items():
        (root / public_folder).mkdir(exist_ok=True)
        for name in names:
            check_name(name)
            if not (root / public_folder / f"{name}.key").exists():
                public, secret = create_key_pair(root / SECRETS, name)
                written += [_publish(public, root / public_folder), secret]
    return written


def forget(folder: str | Path, node_id: str) -> Path:
    """Retire a member for good: its key moves to ``retired/``; return where it went."""
    root = Path(folder)
    public = root / MEMBERS / f"{node_id}.key"
    if not public.exists():
        raise ConfigError(f"{node_id!r} is not a member in {root / MEMBERS}")
    (root / RETIRED).mkdir(exist_ok=True)
    target = root / RETIRED / f"{node_id}.key"
    os.replace(public, target)
    return target


def load_peer_keys(folder: str | Path, node_id: str) -> PeerKeys:
    """The keys of member ``node_id`` from a keys folder; ConfigError naming what is missing."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"keys folder {root} does not exist (create it with `pycache keygen`)")
    if not (root / MEMBERS / f"{node_id}.key").exists():
        raise ConfigError(f"{node_id!r} is not a member in {root / MEMBERS} (run `pycache keygen`)")
    server_public, server_secret = load_key_pair(root / f"{SERVER}.key_secret")
    public, secret = load_key_pair(root / SECRETS / f"{node_id}.key_secret")
    member_path = root / MEMBERS / f"{node_id}.key"
    try:
        member, _ = zmq.auth.load_certificate(member_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key {member_path}: {exc}") from None
    if member != public:  # its peers would refuse it, and it would never be ready
        raise ConfigError(
            f"{root / SECRETS / f'{node_id}.key_secret'} is not the secret of "
            f"{member_path}: another node's key?"
        )
    return PeerKeys(node_id, server_public, server_secret, public, secret, root)


def load_observer_keys(folder: str | Path, name: str) -> tuple[bytes, bytes, bytes]:
    """An observer's ``(public, secret, server public)`` keys, to SUBscribe to members' PUB."""
    root = Path(folder)
    public, secret = load_key_pair(root / SECRETS / f"{name}.key_secret")
    server_public, _ = zmq.auth.load_certificate(root / f"{SERVER}.key")
    return public, secret, server_public


class Membership:
    """The admitted set, read from ``members/`` and ``observers/``, re-read when they change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._stamp: tuple[float, float] | None = None
        self.members: dict[bytes, str] = {}  # Z85 public key -> node id
        self.observers: dict[bytes, str] = {}
        self.refresh()

    def refresh(self) -> bool:
        """Re-read the folders if they changed since the last read; return whether they had."""
        stamp = (_mtime(self.folder / MEMBERS), _mtime(self.folder / OBSERVERS))
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        self.members = _public_keys(self.folder / MEMBERS)
        self.observers = _public_keys(self.folder / OBSERVERS)
        return True

    def ids(self) -> set[str]:
        """The node ids of the members."""
        return set(self.members.values())

    def admits(self, domain: str, key: bytes) -> str | None:
        """Who ``key`` is on ``domain``'s socket: a member (or on PUB an observer), or None.

        An unknown key makes the folders be read again first: a member created
        a moment ago is admitted (libzmq never retries a refused connection).
        """
        name = self._lookup(domain, key)
        if name is None and self.refresh():
            name = self._lookup(domain, key)
        return name

    def _lookup(self, domain: str, key: bytes) -> str | None:
        name = self.members.get(key)
        if name is None and domain == PUB_DOMAIN:
            name = self.observers.get(key)
        return name


def peer_trust(config: NodeConfig) -> tuple[PeerKeys | None, Membership | None]:
    """A node's keys and the admitted set, from ``--keys``; (None, None) with ``--insecure``.

    Without either the node does not start (``NodeConfig.validate``).
    """
    if not config.keys:
        log.warning(
            "node %s runs with --insecure: its peer plane is NOT authenticated or "
            "encrypted; anyone who reaches its repl or PUB port can read and change "
            "every key. For tests only.",
            config.node_id,
        )
        return None, None
    keys = load_peer_keys(config.keys, config.node_id)
    return keys, Membership(keys.folder)


class Admission:
    """ZAP decisions by domain: each domain's rule names who a CURVE key is, or refuses it.

    pyzmq's authenticator asks :meth:`callback` and then :meth:`curve_user_id`
    for one handshake at a time, so the name found by the first is what the
    second returns: the connection's ``User-Id``, carried by every message.
    """

    def _init_admission(self, on_refused: Callable[[str, bytes], None]) -> None:
        self._rules: dict[str, Callable[[bytes], str | None]] = {}
        self._on_refused = on_refused
        self._name = ""

    def admit(self, domain: str, who: Callable[[bytes], str | None]) -> None:
        """Admit on ``domain`` the CURVE keys (Z85) that ``who`` names."""
        self._rules[domain] = who
        self.configure_curve_callback(domain=domain, credentials_provider=self)  # type: ignore[attr-defined]

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP's question for a CURVE handshake: is ``key`` (Z85) admitted on ``domain``?"""
        rule = self._rules.get(domain)
        self._name = (rule(key) if rule is not None else None) or ""
        if not self._name:
            self._on_refused(domain, key)
        return bool(self._name)

    def curve_user_id(self, client_public_key: bytes) -> str:
        """The ``User-Id`` of the connection just admitted: the name its key has."""
        return self._name


class ZapHandler(Admission, AsyncioAuthenticator):
    """The ZAP handler of a process whose sockets live in an asyncio loop (a node)."""

    def __init__(self, context: zmq.Context, on_refused: Callable[[str, bytes], None]) -> None:
        super().__init__(context)
        self._init_admission(on_refused)


class ThreadZapHandler(Admission, ThreadAuthenticator):
    """The ZAP handler of a process with plain sockets (the balancer): runs in a thread."""

    def __init__(self, context: zmq.Context, on_refused: Callable[[str, bytes], None]) -> None:
        super().__init__(context)
        self._init_admission(on_refused)


#: Either kind of ZAP handler a process runs (one per process).
AnyZapHandler = ZapHandler | ThreadZapHandler


def admit_peers(handler: Admission, membership: Membership) -> None:
    """Admit members on the repl sockets, and members and observers on the PUB sockets."""
    handler.admit(REPL_DOMAIN, lambda key: membership.admits(REPL_DOMAIN, key))
    handler.admit(PUB_DOMAIN, lambda key: membership.admits(PUB_DOMAIN, key))


def start_peer_zap(
    context: zmq.Context, membership: Membership | None, on_refused: Callable[[str, bytes], None]
) -> ZapHandler | None:
    """Start the ZAP handler admitting ``membership`` to the peer plane (None: insecure)."""
    if membership is None:
        return None

    handler = ZapHandler(context, log_refused(on_refused))
    handler.start()
    admit_peers(handler, membership)
    return handler


def log_refused(
    counted: Callable[[str, bytes], None] | None = None,
) -> Callable[[str, bytes], None]:
    """A ZAP handler's ``on_refused``: log each refused key once, and pass every refusal
    to ``counted``."""
    seen: set[bytes] = set()

    def refused(domain: str, key: bytes) -> None:
        if key not in seen and len(seen) < REFUSED_LOGGED_MAX:
            seen.add(key)
            log.warning("refused a connection on %s: key %s is not admitted", domain, key.decode())
        if counted is not None:
            counted(domain, key)

    return refused


def serve_curve(sock: zmq.Socket, public: bytes, secret: bytes, domain: str) -> None:
    """Make ``sock`` (before it binds) a CURVE server whose handshakes ZAP checks on ``domain``."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    sock.zap_domain = domain.encode()


def connect_curve(sock: zmq.Socket, public: bytes, secret: bytes, server_public: bytes) -> None:
    """Make ``sock`` (before it connects) a CURVE client with this key pair."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public


def curve_server(sock: zmq.Socket, keys: PeerKeys, domain: str) -> None:
    """Make ``sock`` (before it binds) a CURVE server of the peer plane."""
    serve_curve(sock, keys.server_public, keys.server_secret, domain)


def curve_client(sock: zmq.Socket, keys: PeerKeys) -> None:
    """Make ``sock`` (before it connects) a CURVE client of the peer plane, as this member."""
    connect_curve(sock, keys.public, keys.secret, keys.server_public)


def create_key_pair(folder: Path, name: str) -> list[Path]:
    """Write ``<name>.key`` and ``<name>.key_secret`` (mode 0600) in ``folder``."""
    public, secret = zmq.auth.create_certificates(str(folder), name)
    os.chmod(secret, 0o600)
    return [Path(public), Path(secret)]


def _publish(public: Path, folder: Path) -> Path:
    import shutil  # only here: it imports bz2 and lzma, ~5 ms of a node's start-up

    target = folder / public.name
    shutil.move(str(public), str(target))
    return target


def load_key_pair(path: Path) -> tuple[bytes, bytes]:
    """The ``(public, secret)`` Z85 keys of a ``.key_secret`` file; ConfigError if it has none."""
    try:
        public, secret = zmq.auth.load_certificate(path)
        mode = path.stat().st_mode
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key {path}: {exc}") from None
    if secret is None:
        raise ConfigError(f"{path} holds no secret key (give the .key_secret file)")
    if mode & 0o007:  # keygen writes 0600 (the Kubernetes manifests 0440, for a group)
        log.warning(
            "%s can be read by any user (mode %o), who can then act as this member: chmod 600 it",
            path,
            mode & 0o777,
        )
    return public, secret


def _public_keys(folder: Path) -> dict[bytes, str]:
    keys = {}
    for path in sorted(folder.glob("*.key")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable key %s: %s", path, exc)
            continue
        keys[public] = path.stem
    return keys


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def check_name(name: str) -> None:
    """Raise ConfigError unless ``name`` can name a key file (a member, observer or client)."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
        raise ConfigError(f"{name!r}: use 1-64 letters, digits, '_', '.', '-'")
