"""Seqs held past a hole: what a node whose log lost records still holds beyond the loss.

:mod:`mesh.storage.salvage` keeps every record it can verify after a bad one,
and replay then counts each origin's version vector as its contiguous run of
seqs, so that the hole is fetched from the peers.  The seqs the log holds past
the hole are handed to :class:`HeldSeqs`: once the peers refill the hole, the
vv carries on over them.  Were it not raised, the records past the hole that
only this node holds would never be announced in its heartbeats nor fetched by
its peers, and the digests would differ until the node restarted.

A hole no peer can refill (its record was only ever on this node) is given up
once every member the trust keys name is a known peer (a node that knows no
peer yet would give up every hole at once: the simulator found it, seed
3200003752), a heartbeat of every peer has been heard and every one holds
exactly as much of that origin as this node (:meth:`HeldSeqs.skip_lost`), and
no PUB of an origin gone can still be on its way
(:func:`mesh.core.peerview.origins_settled`: the lost record's own PUB may be,
late, and reach every node but this one): the vv then counts the held seqs
anyway, and peers get them by a full sync from this node (its log cannot
serve the hole).  A peer behind this node on that origin may hold the lost
record in its buffer, past a gap of its own (it heard the PUB but not what
came before): the hole is kept until it has caught up, or the record would
reach every node but this one.  A peer that is down then and held
the lost record keeps it: wait for it, or ``pycache forget`` it first.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Protocol

log = logging.getLogger(__name__)


class _Peer(Protocol):
    origin: str  # "" until its first heartbeat
    vv: dict[str, int]


class HeldSeqs:
    """Per origin, the seqs applied from the log past a hole in it."""

    def __init__(self, held: Mapping[str, Iterable[int]] | None = None) -> None:
        self._held = {origin: set(seqs) for origin, seqs in (held or {}).items() if seqs}
        self._low = {origin: min(seqs) for origin, seqs in self._held.items()}

    def __bool__(self) -> bool:
        return bool(self._held)

    def as_lists(self) -> dict[str, list[int]]:
        """Per origin, the held seqs in order (a snapshot's meta keeps them)."""
        return {origin: sorted(seqs) for origin, seqs in self._held.items()}

    def add(self, held: Mapping[str, Iterable[int]], vv: Mapping[str, int]) -> None:
        """Hold ``held``'s seqs too (those past ``vv``): a snapshot's store held them."""
        for origin, seqs in held.items():
            past = {s for s in seqs if s > vv.get(origin, 0)}
            if past:
                mine = self._held.setdefault(origin, set())
                mine |= past
                self._low[origin] = min(mine)

    def top(self, origin: str) -> int:
        """The highest seq held for ``origin``, 0 for none."""
        seqs = self._held.get(origin)
        return max(seqs) if seqs else 0

    def raise_vv(self, vv: dict[str, int]) -> list[str]:
        """Raise ``vv`` over the held seqs that now carry on from it; the origins raised.

        Called on every receive while a hole is open: an origin whose vv has not
        reached the seq before its lowest held one is passed over without looking
        at its seqs (with 100,000 held, that look took 1.25 ms a call).
        """
        raised = []
        for origin, seqs in list(self._held.items()):
            have = seq = vv.get(origin, 0)
            if have + 1 < self._low[origin]:  # the hole before them is still open
                continue
            while seq + 1 in seqs:
                seq += 1
            if seq > have:
                vv[origin] = seq
                raised.append(origin)
            seqs.difference_update([s for s in seqs if s <= seq])
            if seqs:
                self._low[origin] = min(seqs)
            else:
                del self._held[origin], self._low[origin]
        return raised

    def skip_lost(self, vv: dict[str, int], peers: Collection[_Peer]) -> list[str]:
        """Give up the holes no peer can refill: every peer's heartbeat heard, each at
        ``vv`` for the origin (none past it, none behind); ``vv`` then counts all the
        held seqs of those origins, which are returned (what the buffer holds after
        them is next in line)."""
        if not all(p.origin for p in peers):  # a HELLO answer alone carries no vv
            return []
        lost = [
            origin
            for origin in self._held
            if all(p.vv.get(origin, 0) == vv.get(origin, 0) for p in peers)
        ]
        for origin in lost:
            vv[origin] = max(vv.get(origin, 0), *self._held.pop(origin))
            del self._low[origin]
        return lost
