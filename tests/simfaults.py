"""Faults added to the simulation (``tests/sim.py``) since its first version.

They draw from a stream of their own (``Sim.frng``, seeded ``sim-faults/<seed>``),
so a seed whose params leave them off replays exactly as it did before.

Corruption mid-log (``cuts``)
    The node crashes; one record at or after its snapshot's position is cut out
    of its log, the records after it kept (a corrupt record that
    :mod:`mesh.storage.salvage` skipped); it restarts as a
    new incarnation with, per origin, the contiguous prefix of seqs it still holds as its vv
    (:mod:`mesh.storage.replay`), the records past the hole still applied; its
    peers refill the hole.  Half the time another node is down meanwhile.  A
    write acknowledged with w=1 whose only durable copy was the cut record is
    excused, as for a lost disk, and counted (``excused_cut``).

Pauses (``pauses``)
    A node is SIGSTOPped for 50 ms to 2.5 s (``Sim.pause``): its timers, the
    messages to it and the client requests sent to it wait, then run in
    order; its lag guard sees the stall.  Drawn from ``Sim.prng``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from mesh.core.mutation import Mutation
from mesh.storage.salvage import Contiguity
from tests.simmodel import held

if TYPE_CHECKING:
    from tests.sim import Sim
    from tests.simmodel import SimNode, Version, Write


def fault_params(rng: random.Random) -> dict[str, Any]:
    """The params of these faults, drawn from their own stream."""
    return {"cuts": rng.choice((0, 0, 0, 1, 2))}


def schedule(sim: Sim) -> None:
    """Draw the times of these faults (from ``sim.frng`` only)."""
    p, rng, ids = sim.p, sim.frng, sorted(sim.nodes)
    for _ in range(p.cuts):
        t, node_id = rng.randint(0, p.duration_ms), rng.choice(ids)
        down = rng.randint(10, 1500)
        other = rng.choice([i for i in ids if i != node_id]) if rng.random() < 0.5 else ""
        sim.at(t, cut_log, sim, node_id, down, rng.random(), other, rng.randint(10, 1500))


def cut_log(
    sim: Sim, node_id: str, down_ms: int, where: float, other: str = "", other_ms: int = 0
) -> None:
    """Crash ``node_id`` and cut one record out of the middle of its log (at ``where``,
    a share of the records after the snapshot); ``other`` crashes too for ``other_ms``."""
    node = sim.nodes[node_id]
    if not node.up or sim.quiet:
        return
    sim.crash(node_id, down_ms, keep=0)
    if other and sim.nodes[other].up:
        sim.crash(other, other_ms, keep=0)
    log = node.log
    first = max(log.base, node.snapshot.pos if node.snapshot else 0)
    if first >= log.end:
        return  # the snapshot covers the whole log: nothing to cut
    pos = first + min(log.end - first - 1, int(where * (log.end - first)))
    cut: Mutation = log.records.pop(pos - log.base)
    log.synced = log.end
    sim.stats["cut_records"] += 1
    node.damaged = True
    node.incarnation += 1  # salvage.rotate_if_damaged: a new origin to write under
    sim.note("cut", node_id, pos, cut[0], cut[1], cut[3])
    _excuse_cut(sim, node, cut)


def _excuse_cut(sim: Sim, node: SimNode, cut: Mutation) -> None:
    """Excuse the acknowledged writes whose only durable copy was ``cut``.

    What the cut node still holds counts (its log lost ``cut`` only): a newer
    write of the key there supersedes it (seed 3300008766).
    """
    durable = [sim._durable(n) for n in sim.nodes.values()]
    keep, excused = [], []
    for w in sim.required:
        m = w.mutation
        if (m[0], m[1]) != (cut[0], cut[1]) or any(
            d.get(m.key, (-1, "")) >= w.version for d in durable
        ):
            keep.append(w)
            continue
        holders = w.holders(sim.origins(), but=node.id)
        if (
            w.needed > 1
            and holders
            and not budget_forfeits(sim, w, holders)
            and m.key not in sim.rebased
        ):
            sim.fail(
                f"{node.id} lost {m} from its log, acknowledged with {w.needed} nodes logging "
                f"it ({w.logged_on} at {w.at_ms} ms), though {holders} kept their disks: "
                "none holds it durably"
            )
        sim.stats["excused"] += 1
        sim.stats["excused_cut"] += 1
        excused.append(w)
    sim.required = keep
    for w in excused:
        excuse_superseded(sim, w, durable)


def budget_forfeits(sim: Sim, w: Write, holders: list[str]) -> bool:
    """Whether ``w``'s copies may go: once a tombstone budget dropped tombstones
    before they were stable, a DEL (or an eviction's tombstone) may be undone
    (documented), so a DEL, a write that a newer DEL of its key superseded, or a
    write whose ``holders`` all forgot its key (a full sync's image from a node
    that had evicted it) may be gone with the last copy, the key back at an
    older value (seeds 4100008192 and 4100021710: a holder's budget dropped the
    tombstone, so its snapshot has none, and then the last other copy went;
    6400004860: the same for the SET before such a DEL; 6600044407: evicted
    at its origin).  Counted."""
    if not (sim.forgets and sim.budget_dropped()):
        return False
    key, version = w.mutation.key, w.version
    forgotten = all(key not in sim._durable(sim.nodes[h]) for h in holders)
    if (
        w.mutation.value is None
        or (holders and forgotten)
        or any(
            m.value is None and m.key == key and m.version() > version for m in sim.issued.values()
        )
    ):
        sim.stats["excused_budget"] += 1
        return True
    return False


def excuse_superseded(sim: Sim, lost: Write, durable: list[dict[str, Version]]) -> None:
    """After ``lost`` was excused, the older acknowledged writes of its key that were kept
    only because ``lost`` superseded them (their own copies went with a disk or a log
    since): excused too, when no node holds them or newer durably (seed 3700008266:
    A acknowledged on n3, B newer on n2; n3 lost its disk, A kept for B; then n2's
    log lost B).  One still held by the incarnation that logged it stays required."""
    origins, key = sim.origins(), lost.mutation.key
    keep = []
    for w in sim.required:
        if (
            w.mutation.key != key
            or w.version >= lost.version
            or any(d.get(key, (-1, "")) >= w.version for d in durable)
            or origins[w.node] == w.mutation.origin  # its origin still has its log
            or w.holders(origins)
        ):
            keep.append(w)
            continue
        sim.stats["excused"] += 1
    sim.required = keep


def damaged_vv(node: SimNode) -> tuple[dict[str, int], dict[str, set[int]]]:
    """The vv a node whose log lost records boots with (``replay._replay_damaged``):
    from the snapshot's, each origin's contiguous run of seqs in the log after it;
    and the seqs held past a hole.
    Clears the damage once no origin has a hole (the holes were refilled)."""
    log, snap = node.log, node.snapshot
    start = max(log.base, snap.pos if snap else 0)
    held = {o: set(s) for o, s in (snap.held or {}).items()} if snap else {}
    seen = Contiguity(dict(snap.vv) if snap else {}, held)
    highest = {o: max(s) for o, s in held.items()}
    for m in seen.watch(log.records[start - log.base :]):
        highest[m[0]] = max(m[1], highest.get(m[0], 0))
    if not seen.holes(highest):
        node.damaged = False
    return seen.vv, seen.held


def pause_params(rng: random.Random) -> dict[str, Any]:
    """How many pauses, drawn from a stream of their own."""
    return {"pauses": rng.choice((0, 0, 1, 2))}


def schedule_pauses(sim: Sim) -> None:
    """Draw the pauses (from ``sim.prng`` only)."""
    p, rng, ids = sim.p, sim.prng, sorted(sim.nodes)
    for _ in range(p.pauses):
        t, node_id = rng.randint(0, p.duration_ms), rng.choice(ids)
        sim.at(t, sim.pause, node_id, rng.choice((50, 300, 1000, 2500)))


def memory_params(rng: random.Random) -> dict[str, Any]:
    """Memory limit and tombstone collection, drawn from a stream of their own."""
    # As a node does (Node._sweep), tombstones are mostly collected once stable.
    memory = rng.choice((0, 0, 0, 1500, 2500, 4000))
    return {"max_memory": memory, "collect": rng.choice((0, 1, 1))}


def check_live(sim: Sim, held_by: dict[str, dict[str, Version]]) -> None:
    """Under a memory limit digests differ (eviction is local): instead every live
    version of a key on any node is the newest version any node holds of it."""
    newest: dict[str, Version] = {}
    for versions in held_by.values():
        for key, v in versions.items():
            if v > newest.get(key, (0, "")):
                newest[key] = v
    for node in sim.nodes.values():
        for key in node.store.live_keys():
            if key in sim.rebased:
                continue  # tests/simttl.py: equal values only
            live = held(node.store, key)  # a counter's: its newest write's (tests/simcounters.py)
            if live != newest[key]:
                if sim.budget_dropped():  # an older value may come back (documented)
                    sim.stats["budget_resurrections"] += 1
                    continue
                sim.fail(
                    f"{node.id} holds {key!r} live at {live}, not the newest "
                    f"{newest[key]}\n{sim.describe()}"
                )
