"""The store's digest: the XOR of a hash per live entry, hashed lazily.

A hash costs more than the rest of a write, so a write only notes its key
(``dirty``); :func:`fold` hashes noted keys later (a bounded number per TTL
sweep, all of them when the digest is asked for) and marks each entry as
folded (:mod:`mesh.core.entry`).  An overwrite or delete takes out the share
of a folded entry (:func:`folded_share`: hashed again for a small value, kept
in the entry for a large one or a counter); an unfolded one costs nothing.

So the sweep hashes only entries that have settled (``settled``: written at or
before that hlc): a key written again within a second would make it hash
the old entry twice for nothing (once to fold, once to take it out), and
hot keys are where the writes are.  Whatever is asked for, hashing or not,
the digest comes out the same: only the work moves.
"""

from __future__ import annotations

from typing import Any

import msgpack
from xxhash import xxh3_64
from xxhash import xxh3_64_intdigest as _xxh3_64

from mesh.core.bigbin import BIG_VALUE, parts
from mesh.core.entry import HLC_SHIFT, META_BYTES, ORIGIN_MASK

_pack = msgpack.Packer().pack


def entry_digest(key: bytes, value: bytes | tuple, hlc: int, origin: str, deadline: int) -> int:
    """A non-zero 64-bit hash of one live entry, the same on every node and run.

    ``key`` is the key's UTF-8 (the store keys its live map by it).  XXH3 of
    the entry's msgpack (0.65 us here against 1.5 us for an 8-byte blake2b).
    It must not be linear like a CRC: the digest XORs these, and two nodes
    holding swapped values of two keys would then agree.  A large value is
    hashed in place, between the msgpack of the fields around it
    (:mod:`mesh.core.bigbin`): the same hash, without packing a copy of it.
    """
    if type(value) is bytes and len(value) >= BIG_VALUE:
        hasher = xxh3_64()
        for part in parts((key,), value, (hlc, origin, deadline)):
            hasher.update(part)
        return hasher.intdigest() or 1
    return _xxh3_64(_pack((key, value, hlc, origin, deadline))) or 1


def folded_share(key: bytes, raw: Any, names: list[str], expires: dict[bytes, int]) -> int:
    """The share of a held compact entry in the digest: 0 if not folded yet."""
    if type(raw) is not bytes:
        return raw[3]
    meta = int.from_bytes(raw[-META_BYTES:], "big")
    if not meta & 1:
        return 0
    origin = names[(meta >> 1) & ORIGIN_MASK]
    return entry_digest(key, raw[:-META_BYTES], meta >> HLC_SHIFT, origin, expires.get(key, 0))


#: ``settled`` for :func:`fold` that every hlc is at or before: hash them all.
EVERY_HLC = 1 << 96
#: An hlc more than this past ``settled`` is no recent write but a clock ahead of
#: ours (ours set back since, say): hashed at once rather than left until our
#: clock catches up.  In hlc units (ms << 16): 10 s.
FRESH_SPAN = 10_000 << 16


def fold(
    live: dict[bytes, Any],
    dirty: list[bytes],
    names: list[str],
    expires: dict[bytes, int],
    budget: int,
    settled: int = EVERY_HLC,
    later: list[bytes] | None = None,
) -> int:
    """Hash up to ``budget`` noted keys of ``dirty`` (popped) whose entries are
    not folded yet, mark them folded in ``live``; returns the XOR of their shares.

    An entry written after the hlc ``settled`` (by less than :data:`FRESH_SPAN`)
    is not hashed: its key is noted again in ``later`` (it must be given
    whenever ``settled`` is).
    """
    fresh_until = settled + FRESH_SPAN
    folded, from_bytes = 0, int.from_bytes
    for _ in range(min(budget, len(dirty))):
        key = dirty.pop()
        raw = live.get(key)
        if raw is None:
            continue
        if type(raw) is bytes:
            meta = from_bytes(raw[-META_BYTES:], "big")
            if meta & 1:
                continue
            hlc = meta >> HLC_SHIFT
            if settled < hlc <= fresh_until:
                later.append(key)  # type: ignore[union-attr]
                continue
            value = raw[:-META_BYTES]
            origin = names[(meta >> 1) & ORIGIN_MASK]
            share = entry_digest(key, value, hlc, origin, expires.get(key, 0))
            live[key] = value + (meta | 1).to_bytes(META_BYTES, "big")
        else:
            value, hlc, oid, share = raw
            if share:
                continue
            if settled < hlc <= fresh_until:
                later.append(key)  # type: ignore[union-attr]
                continue
            state = value if type(value) is bytes else value.state  # a counter's, merged
            share = entry_digest(key, state, hlc, names[oid], expires.get(key, 0))
            live[key] = (value, hlc, oid, share)
        folded ^= share
    return folded


def unfolded(dirty: list[bytes], live: dict[bytes, Any]) -> list[bytes]:
    """``dirty`` without repeats and without keys that are gone or folded."""
    return [
        key
        for key in dict.fromkeys(dirty)
        if (raw := live.get(key)) is not None
        and not (raw[3] if type(raw) is not bytes else raw[-1] & 1)
    ]
