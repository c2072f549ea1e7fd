"""A node's data folder and the identity stored in it.

Layout::

    <data-dir>/identity.json   {"node_id": str, "incarnation": str, "created_ms": int}
    <data-dir>/log/            segments (see mesh.log)
    <data-dir>/snapshots/      snapshots (see mesh.log)

The *incarnation* is drawn once, when the folder is created.  A node that lost
its disk comes back with a new incarnation, so its new ``seq`` 1, 2, 3 ... is
never confused with the old ones: the origin of a mutation is
``"<node id>/<incarnation>"``.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path

from mesh.errors import ConfigError

IDENTITY_FILE = "identity.json"


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a create, rename or delete inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync the folder."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def open_identity(data_dir: str | Path, node_id: str) -> str:
    """Create or check the data folder for ``node_id``; return the origin string.

    Raises ConfigError when the folder belongs to another node or its identity
    file is unreadable.
    """
    folder = Path(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / IDENTITY_FILE
    if not path.exists():
        identity = {
            "node_id": node_id,
            "incarnation": secrets.token_hex(8),
            "created_ms": time.time_ns() // 1_000_000,
        }
        write_atomically(path, json.dumps(identity).encode())
    try:
        identity = json.loads(path.read_text())
        owner, incarnation = identity["node_id"], identity["incarnation"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable identity file ({exc})") from exc
    if owner != node_id:
        raise ConfigError(f"{folder} holds the data of node {owner!r}, not {node_id!r}")
    return f"{node_id}/{incarnation}"
