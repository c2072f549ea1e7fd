"""The unit of change that is logged, applied and (later) replicated.

Every write a client makes (SET, DEL, EXPIRE, PERSIST, MSET) is turned by the
node that accepts it (its *origin*) into one or more full-state mutations: the
key's whole new value and deadline, or a tombstone.  Because a mutation never
depends on what the key held before, applying any permutation of the same
mutations with last-writer-wins on ``(hlc, origin)`` gives the same state.

Record layout (a msgpack array, the payload of one log record and one entry of
a replication batch)::

    [origin: str, seq: uint, hlc: uint, key: str, value: bin | nil | array, deadline: uint]

``value`` nil is a tombstone (a DEL); an array is a counter's state, which
merges instead of last-writer-wins (:mod:`mesh.core.counters`).  ``deadline``
is an absolute wall-clock time in milliseconds since the epoch, 0 for "no TTL".  ``origin`` is
``"<node id>/<incarnation>"``.  ``hlc`` is a packed hybrid logical clock value
(see :mod:`mesh.core.clock`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import NamedTuple

import msgpack

from mesh.core.bigbin import BIG_VALUE, joined
from mesh.core.counters import canonical, is_state


class Mutation(NamedTuple):
    """One full-state change of one key, stamped by its origin."""

    origin: str
    seq: int
    hlc: int
    key: str
    value: bytes | tuple | None  # a tuple: a counter's state
    deadline: int = 0

    @property
    def is_delete(self) -> bool:
        """True when this mutation is a tombstone."""
        return self.value is None

    def to_record(self) -> list:
        """The msgpack-ready list form (see the module docstring)."""
        return [self.origin, self.seq, self.hlc, self.key, self.value, self.deadline]

    @classmethod
    def from_record(cls, record: list | tuple) -> Mutation:
        """Build a mutation from its list form; raises ValueError when malformed."""
        if not isinstance(record, (list, tuple)) or len(record) != 6:
            raise ValueError("a mutation record is a 6-element array")
        origin, seq, hlc, key, value, deadline = record
        if not (
            isinstance(origin, str)
            and isinstance(seq, int)
            and isinstance(hlc, int)
            and isinstance(key, str)
            and (value is None or isinstance(value, bytes) or is_state(value))
            and isinstance(deadline, int)
        ):
            raise ValueError("a mutation record field has the wrong type")
        if isinstance(value, list):
            value = canonical(value)
        return cls(origin, seq, hlc, key, value, deadline)

    def version(self) -> tuple[int, str]:
        """The last-writer-wins order key: later ``(hlc, origin)`` wins."""
        return (self.hlc, self.origin)


Record = tuple[str, int, int, str, "bytes | tuple | None", int]
"""A mutation's fields as a plain tuple, in :class:`Mutation`'s order (every
Mutation is one): how entries from peers arrive (:mod:`mesh.core.peerwire`), since
decoding straight into tuples skips a copy of each.  Code that takes entries
from peers indexes them (``m[1]`` is the seq) instead of naming fields."""

_pack_record = msgpack.Packer().pack


class PackedRecords(NamedTuple):
    """Entries as msgpack, chunk by chunk: each chunk one array of records (the
    layout above) as a peer sent it in a snapshot chunk, ``total`` entries in all.
    A full sync's snapshot is written from these bytes as they came
    (:mod:`mesh.core.snapimage`, :mod:`mesh.storage.snapshot`)."""

    chunks: list[bytes]
    total: int


def record_prefix(origin: str) -> bytes:
    """The first bytes of every encoded record of ``origin``: the array header and
    the origin string, by which a log finds an origin's records without decoding."""
    return b"\x96" + _pack_record(origin)


def raise_seqs(seqs: dict[str, int], entries: Iterable[Record]) -> dict[str, int]:
    """A copy of ``seqs`` (origin -> seq) raised to the highest seq of each origin in
    ``entries``.

    Entries come in runs of one origin (a PUB message is one run; a catch-up
    batch one per origin), so each run is looked at with C-level calls.
    """
    out = dict(seqs)
    for origin, run in groupby(entries, key=itemgetter(0)):
        top = max(map(itemgetter(1), run))
        if top > out.get(origin, -1):
            out[origin] = top
    return out


def encode_records(mutations: Sequence[Record]) -> list[bytes]:
    """Each mutation's record as msgpack bytes: the payload of its log record.
    An origin encodes its own writes once, for its log and its PUB messages
    (:func:`mesh.core.peerwire.encode_entries` puts these bytes inline).

    A large value is not packed but joined between the msgpack of the fields
    around it (:mod:`mesh.core.bigbin`): the same bytes, one copy of it instead
    of a Packer's two.
    """
    pack = _pack_record
    return [  # a Mutation packs as its record array
        joined(m[:4], v, m[5:]) if type(v := m[4]) is bytes and len(v) >= BIG_VALUE else pack(m)
        for m in mutations
    ]
