"""A node's data folder and the identity stored in it.

Layout::

    <data-dir>/identity.json   {"node_id": str, "incarnation": str, "created_ms": int}
    <data-dir>/LOCK            flock()ed by the one process using the folder
    <data-dir>/clean-shutdown  present only while the node is stopped cleanly
    <data-dir>/node.json       pid, state and bound endpoints of the running node
    <data-dir>/peers.json      peers learned by HELLO (see mesh.roles.peering)
    <data-dir>/log/            segments (see mesh.storage.log); damage.json and
                               *.corrupt after a corrupt log (mesh.storage.salvage)
    <data-dir>/snapshots/      snapshots (see mesh.storage.log)

The *incarnation* is drawn once, when the folder is created.  A node that lost
its disk comes back with a new incarnation, so its new ``seq`` 1, 2, 3 ... is
never confused with the old ones: the origin of a mutation is
``"<node id>/<incarnation>"``.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from pathlib import Path

from mesh.core.errors import ConfigError

IDENTITY_FILE = "identity.json"
LOCK_FILE = "LOCK"
CLEAN_FILE = "clean-shutdown"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a create, rename or delete inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path, data: bytes, *, sync_dir: bool = True, durable: bool = True
) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the folder.

    With ``sync_dir`` False the caller fsyncs the folder (once for several files).
    With ``durable`` False nothing is fsynced: readers still see the old or the
    new file whole, but a power loss may leave either.  For status files,
    which only say what a running process is doing: an fsync there can wait
    for the journal to write out every other file's dirty data.
    """
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir and durable:
        fsync_dir(path.parent)


#: An incarnation as peers accept it in an origin (``<node id>/<incarnation>``).
_INCARNATION_RE = re.compile(r"[0-9A-Za-z]{1,64}")


def make_folder(data_dir: str | Path) -> Path:
    """The data folder, made if missing; ConfigError when a file (or a file on its
    path) stands where it should be."""
    folder = Path(data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"data folder {folder}: a file is in the way") from None
    return folder


def open_identity(data_dir: str | Path, node_id: str, *, rotate: bool = False) -> str:
    """Create or check the data folder for ``node_id``; return the origin string.

    ``rotate`` draws a new incarnation (after an unclean stop under a lax fsync
    policy).  Raises ConfigError when the folder belongs to another node or its
    identity file is unreadable.
    """
    folder = make_folder(data_dir)
    path = folder / IDENTITY_FILE
    if path.exists():
        try:
            identity = json.loads(path.read_text())
            owner, incarnation = identity["node_id"], identity["incarnation"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable identity file ({exc})") from exc
        if owner != node_id:
            raise ConfigError(f"{folder} holds the data of node {owner!r}, not {node_id!r}")
        if type(incarnation) is not str or not _INCARNATION_RE.fullmatch(incarnation):
            # peers would refuse every message under it (mesh.core.peerfields.ORIGIN_RE)
            raise ConfigError(f"{path}: malformed incarnation {incarnation!r:.80}")
    if not path.exists() or rotate:
        import secrets  # only here: a restart need not import it (and hmac), ~2 ms

        incarnation = secrets.token_hex(8)
        identity = {
            "node_id": node_id,
            "incarnation": incarnation,
            "created_ms": time.time_ns() // 1_000_000,
        }
        write_atomically(path, json.dumps(identity).encode())
    return f"{node_id}/{incarnation}"


def mark_clean_shutdown(data_dir: str | Path) -> None:
    """Record that the node stopped cleanly, its log fsynced."""
    write_atomically(Path(data_dir) / CLEAN_FILE, b"{}")


def take_clean_shutdown(data_dir: str | Path) -> bool:
    """Whether the last stop was clean; removes the mark (a crash leaves none)."""
    path = Path(data_dir) / CLEAN_FILE
    if not path.exists():
        return False
    path.unlink()
    fsync_dir(path.parent)
    return True


def lock_data_dir(data_dir: str | Path) -> int:
    """Take the folder's exclusive lock; return the fd to keep open while in use.

    Raises ConfigError when another process holds it: two nodes appending to
    one log would corrupt it.
    """
    folder = make_folder(data_dir)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(f"{folder} is in use by another process") from None
    return fd
