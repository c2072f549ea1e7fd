"""What the store holds for one key, and its share of the store's digest."""

from __future__ import annotations

from typing import NamedTuple

import msgpack
from xxhash import xxh3_64_intdigest as _xxh3_64

_pack = msgpack.Packer().pack


class Entry(NamedTuple):
    """What the store holds for one key; ``value`` None is a tombstone.

    ``deadline`` is absolute wall-clock ms (0: no TTL; always 0 on tombstones).
    ``digest`` is the entry's share of :meth:`Store.digest`, 0 until computed.
    A counter's ``value`` is a :class:`mesh.core.counters.CounterValue` (bytes of
    its decimal value, with its state) and its version is its base's.
    """

    value: bytes | None
    hlc: int
    origin: str
    deadline: int = 0
    digest: int = 0

    def version(self) -> tuple[int, str]:
        """The last-writer-wins order key, as :meth:`Mutation.version`."""
        return (self.hlc, self.origin)


def entry_digest(key: str, value: bytes | tuple, hlc: int, origin: str, deadline: int) -> int:
    """A non-zero 64-bit hash of one live entry, the same on every node and run.

    XXH3 of the entry's msgpack: every written key is hashed once, so the hash
    is on the write path (0.65 us here against 1.5 us for an 8-byte blake2b).
    It must not be linear like a CRC: the digest XORs these, and two nodes
    holding swapped values of two keys would then agree.
    """
    return _xxh3_64(_pack((key, value, hlc, origin, deadline))) or 1
