"""The range checks of every field a peer sends, before anything uses it.

A peer is an admitted member (its CURVE key is in the keys folder), but a
member with a bug must not crash, hang or poison a node: :mod:`mesh.core.peerwire`
runs these checks on every message it parses, and a field out of range raises
:class:`~mesh.core.errors.ProtocolError`, which the socket loop logs, counts and
drops.  Entries are checked on the replication hot path, so that check is one
loop without a function call per entry, plus a few C-level passes per batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from operator import itemgetter
from typing import Any

from mesh.core.clockguard import CLOCK_OFFSET
from mesh.core.counters import is_state
from mesh.core.errors import ProtocolError
from mesh.core.lagguard import BEHIND
from mesh.core.peerview import CATCHING_UP, READY
from mesh.core.wire import E_MALFORMED

NODE_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""A node id (``fullmatch``): 1-64 letters, digits, ``_``, ``.``, ``-`` (the config's rule too)."""
ORIGIN_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}/[0-9A-Za-z]{1,64}")
"""An origin: ``<node id>/<incarnation>`` (the incarnation is hex, drawn by the data folder)."""
TCP_ENDPOINT_RE = re.compile(
    r"tcp://(?P<host>[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):(?P<port>\d{1,5})"
)
"""A peer's repl or PUB endpoint: ``tcp://host:port``, a name, IPv4 or [IPv6], no ``*``."""

NODE_STATES = frozenset({"replaying", CATCHING_UP, READY, CLOCK_OFFSET, BEHIND})
"""The states a node may report in a heartbeat."""
MAX_INT63 = (1 << 63) - 1
"""Sequence numbers, HLCs, deadlines, ids and cursors all fit in 0..2**63-1."""
MAX_KEY_CHARS = 64 * 1024
"""The largest key any node may be configured to accept (max_key_bytes' ceiling)."""
MAX_PEERS = 1024
"""Most peer ids one heartbeat may list."""
MAX_WALL_MS = MAX_INT63 >> 16
"""The largest wall-clock time an HLC can carry (its physical part), in ms."""

_TUPLE = {tuple}


def fail(what: str) -> ProtocolError:
    """The error for a malformed ``what``."""
    return ProtocolError(E_MALFORMED, f"malformed {what}")


def check(condition: bool, what: str) -> None:
    """Raise ProtocolError naming ``what`` unless ``condition``."""
    if not condition:
        raise fail(what)


def node_id(value: Any, what: str = "node id") -> str:
    """A node id, checked against :data:`NODE_ID_RE`."""
    if type(value) is not str or NODE_ID_RE.fullmatch(value) is None:
        raise fail(f"{what} {value!r:.80}")  # formatted only when it fails
    return value


def origin(value: Any) -> str:
    """An origin, checked against :data:`ORIGIN_RE`."""
    if type(value) is not str or ORIGIN_RE.fullmatch(value) is None:
        raise fail(f"origin {value!r:.80}")
    return value


def endpoint(value: Any, what: str = "endpoint") -> str:
    """A peer endpoint a node may connect to: ``tcp://host:port``, port 1..65535."""
    found = TCP_ENDPOINT_RE.fullmatch(value) if type(value) is str else None
    if found is None or not 1 <= int(found["port"]) <= 65535:
        raise fail(f"{what} {value!r:.80}")
    return value


def int63(value: Any, what: str, low: int = 0) -> int:
    """An int (not a bool) in ``low..2**63-1``."""
    check(type(value) is int and low <= value <= MAX_INT63, f"{what} {value!r:.40}")
    return value


def _by_origin(value: Any, what: str, fits: Callable[[Any], bool]) -> dict:
    """A map from origins of the right shape to what ``fits`` accepts."""
    check(type(value) is dict, what)
    for o, v in value.items():
        check(
            type(o) is str and ORIGIN_RE.fullmatch(o) is not None and fits(v),
            f"{what} entry {o!r:.80}: {v!r:.40}",
        )
    return value


def _seq(s: Any) -> bool:
    return type(s) is int and 0 <= s <= MAX_INT63


def vv(value: Any) -> dict[str, int]:
    """A version vector: origins of the right shape to seqs in 0..2**63-1."""
    return _by_origin(value, "version vector", _seq)


def _seqs(seqs: Any) -> bool:
    return type(seqs) is tuple and all(type(s) is int and 0 < s <= MAX_INT63 for s in seqs)


def held(value: Any) -> dict[str, list[int]]:
    """A snapshot's seqs held past a hole: origins to arrays of seqs in 1..2**63-1."""
    return {o: list(seqs) for o, seqs in _by_origin(value, "held seqs", _seqs).items()}


def peer_ids(value: Any) -> tuple[str, ...]:
    """A heartbeat's list of peer ids: at most MAX_PEERS node ids."""
    check(type(value) is tuple and len(value) <= MAX_PEERS, "peer list")
    for p in value:
        node_id(p, "peer id")
    return value


def entries(raw: Any) -> tuple:
    """The entries of a message, every field's type and range checked: plain tuples
    in :class:`~mesh.core.mutation.Mutation`'s field order, as decoded.

    ``seq``, ``hlc`` and ``deadline`` in 0..2**63-1 (a snapshot's entries have
    seq 0; elsewhere an entry at or below the vv is a duplicate), a key of
    1..MAX_KEY_CHARS characters, a value of bytes, nil or a counter's state, an origin of the
    right shape.  (How far ahead of this node's clock an hlc may be is the
    replica's call: :meth:`mesh.core.replication.Replica.receive`.)
    """
    check(type(raw) is tuple, "entry list")
    if not raw:
        return raw
    # the replication hot path: C-level passes per batch, one loop without calls
    if set(map(type, raw)) != _TUPLE:
        raise fail("entry: not an array")
    top = MAX_INT63
    try:
        for o, s, h, k, v, d in raw:
            if (
                type(o) is not str
                or type(s) is not int
                or not 0 <= s <= top
                or type(h) is not int
                or not 0 <= h <= top
                or type(k) is not str
                or (v is not None and type(v) is not bytes and not is_state(v))
                or type(d) is not int
                or not 0 <= d <= top
            ):
                raise fail(f"entry {s!r:.40} of {o!r:.80}: a field of the wrong type or range")
    except ValueError:  # not six fields
        raise fail("entry: not [origin, seq, hlc, key, value|nil, deadline]") from None
    for o in set(map(itemgetter(0), raw)):
        origin(o)
    lengths = list(map(len, map(itemgetter(3), raw)))
    check(min(lengths) >= 1 and max(lengths) <= MAX_KEY_CHARS, "entry key length")
    return raw
