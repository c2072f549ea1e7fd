"""What the store holds for one key: its compact form, and its share of the digest.

The store keeps one object per live key (issue 15: memory per key):

``bytes``
    a value of at most :data:`SMALL_VALUE` bytes followed by :data:`META_BYTES`
    bytes of metadata, ``hlc << HLC_SHIFT | origin id << 1 | folded``
    big-endian: the id indexes the store's origin table, ``folded`` says the
    entry's hash is in the store's digest (:mod:`mesh.core.digest`).  One
    object: a dict slot, the key and this (about 240 bytes for a 12-byte key
    and a 100-byte value here, against 430 as a tuple of five).
``tuple``
    ``(value, hlc, origin id, digest share or 0)`` for a larger value (no copy
    of it is made to append metadata) or a counter (a
    :class:`mesh.core.counters.CounterValue`, its version its base's).

A key's TTL deadline lives in the store's ``expires`` map, as in Redis.  Reads
hand out :class:`Entry`, the unpacked form.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

from mesh.core.mutation import Mutation

SMALL_VALUE = 1024
"""Values up to this many bytes share one object with their metadata."""
META_BYTES = 11
"""Bytes of metadata after a small value: an hlc < 2**63, a 23-bit origin id, a flag."""
HLC_SHIFT = 24
"""Where the hlc starts in a small entry's metadata."""
HLC_SLICE = slice(-META_BYTES, -(HLC_SHIFT // 8))
"""Where a small entry's hlc is: the first 8 bytes of its metadata."""
ORIGIN_MASK = (1 << 23) - 1
MAX_ORIGINS = 1 << 23
"""Distinct origins (node incarnations) one store can tell apart."""


class Entry(NamedTuple):
    """A key's entry, unpacked; ``value`` None is a tombstone.

    ``deadline`` is absolute wall-clock ms (0: no TTL; always 0 on tombstones).
    ``digest`` is the entry's share of :meth:`Store.digest` where the store
    keeps it (large values and counters), else 0.  A counter's ``value`` is a
    :class:`mesh.core.counters.CounterValue` (bytes of its decimal value, with
    its state) and its version is its base's.
    """

    value: bytes | None
    hlc: int
    origin: str
    deadline: int = 0
    digest: int = 0

    def version(self) -> tuple[int, str]:
        """The last-writer-wins order key, as :meth:`Mutation.version`."""
        return (self.hlc, self.origin)


def pack_small(value: bytes, hlc: int, oid: int) -> bytes:
    """The compact form of a small value written at ``hlc`` by origin id ``oid``
    (not yet folded into the digest)."""
    return value + ((hlc << HLC_SHIFT) | (oid << 1)).to_bytes(META_BYTES, "big")


def unpack(raw: Any) -> tuple[Any, int, int]:
    """``(value, hlc, origin id)`` of a held compact entry (either form)."""
    if type(raw) is bytes:
        meta = int.from_bytes(raw[-META_BYTES:], "big")
        return raw[:-META_BYTES], meta >> HLC_SHIFT, (meta >> 1) & ORIGIN_MASK
    return raw[0], raw[1], raw[2]


def held_entries(
    live: Iterable[tuple[bytes, Any]],
    tombs: list,
    expires: dict[bytes, int],
    names: list[str],
    now: int,
) -> Iterator[Mutation]:
    """:meth:`Store.entries` over captured ``(key, compact entry)`` and ``(key,
    tombstone)`` pairs, the deadlines and the origin table; due keys come out as
    tombstones (at the version they rank at: a counter's base, as when the
    store expires it), a counter as its state at its newest write."""
    new, from_bytes = tuple.__new__, int.from_bytes  # a NamedTuple's own constructor is slower
    for kb, raw in live:
        key = kb.decode()
        if type(raw) is bytes:
            meta = from_bytes(raw[-META_BYTES:], "big")
            value, hlc, oid = raw[:-META_BYTES], meta >> HLC_SHIFT, (meta >> 1) & ORIGIN_MASK
        else:
            value, hlc, oid = raw[0], raw[1], raw[2]
        origin = names[oid]
        deadline = expires.get(kb, 0) if expires else 0
        if deadline and deadline <= now:  # at the held version: a counter's base, as expiry
            yield new(Mutation, (origin, 0, hlc, key, None, 0))
            continue
        if type(value) is not bytes:  # a counter: its state, at its newest write
            (hlc, origin), value = value.top, value.state  # type: ignore[attr-defined]
        yield new(Mutation, (origin, 0, hlc, key, value, deadline))
    for key, (_, hlc, origin, _, _) in tombs:
        yield new(Mutation, (origin, 0, hlc, key, None, 0))
