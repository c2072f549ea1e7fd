"""Counters in the simulation (``tests/sim.py``): concurrent INCRBYs on every node.

``incrs`` INCRBYs (random deltas, -5..9) on a few counter keys ``c0``..``c2``
(no plain write touches them), at random nodes and times, under every fault
of the run: drops, duplicates, partitions, crashes, lost disks, cut logs.
They draw from a stream of their own (``Sim.crng``, seeded
``sim-counters/<seed>``), so a seed with ``incrs`` 0 replays as before.

An INCRBY is run as :class:`mesh.core.commands.CommandExecutor` runs it: the
node's store gives the counter's state (:func:`mesh.core.counters.increment`),
and the new state is written, logged, acknowledged (w=1) and published as any
client write (``Sim.client_write``).

The end check, on every node after the heal: each counter's value is exactly
the sum of the increments that count.  Per slot (an origin incarnation) the
node holds the first ``ops`` INCRBYs that origin ran, with their exact sum;
all of them, unless that incarnation's history was lost (a lost disk or a cut
log: a new incarnation follows, and its w=1 increments that no other node had
yet may be gone, as any w=1 write).  Under a memory limit nothing is
checked: eviction is local (digests are not compared either), and a counter
evicted on the node that increments it next starts over (docs/counters.md).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from mesh.core.counters import CounterValue, increment

if TYPE_CHECKING:
    from tests.sim import Sim

KEYS = ("c0", "c1", "c2")


def counter_params(rng: random.Random) -> dict[str, Any]:
    """The params of the counters, drawn from their own stream."""
    return {"incrs": rng.choice((0, 0, 0, 10, 20))}


def schedule(sim: Sim) -> None:
    """Draw the INCRBYs (from ``sim.crng`` only)."""
    p, rng, ids = sim.p, sim.crng, sorted(sim.nodes)
    for _ in range(p.incrs):
        t, node_id = rng.randint(0, p.duration_ms), rng.choice(ids)
        sim.at(t, incr, sim, node_id, rng.choice(KEYS), rng.randint(-5, 9))
    sim.scheduled += p.incrs
    sim.unwritten += p.incrs


def incr(sim: Sim, node_id: str, key: str, delta: int, tries: int = 0) -> None:
    """A client INCRBY: at ``node_id`` if ready, else at a ready node; retried later
    when none is (``Sim.writable_node``)."""
    node = sim.writable_node(node_id, sim.crng, lambda t: incr(sim, node_id, key, delta, t), tries)
    if node is None:
        return
    store = node.store
    state, _, deadline = increment(
        store.get(key, record_stats=False), store.tombstone(key), node.origin, delta
    )
    before = len(sim.acked)
    # a deadline only once an EXPIRE rebased the counter (tests/simttl.py)
    sim.client_write(node.id, [(key, state, deadline)])  # type: ignore[list-item]
    if len(sim.acked) == before + 1:
        sim.issued_incrs.setdefault((key, node.origin), []).append(delta)
        sim.stats["incrs"] += 1


def check(sim: Sim) -> None:
    """After the heal: every node holds each counter's exact sum (see the module doc)."""
    if not sim.issued_incrs or sim.p.max_memory:
        return
    current = {n.origin for n in sim.nodes.values()}
    values = {}
    for node in sim.nodes.values():
        for key in KEYS:
            entry = node.store.get(key, record_stats=False)
            values[node.id, key] = None if entry is None else bytes(entry.value)
            if key not in sim.rebased:  # rebased (tests/simttl.py): equal values only
                _check_slots(sim, node.id, key, entry, count=node.id == "n1")
    for key in KEYS:
        seen = {values[n, key] for n in sim.nodes}
        if len(seen) != 1:
            sim.fail(f"counter {key} differs between nodes: {seen}")
    sim.stats["incr_slots_whole"] += sum(o in current for (_, o) in sim.issued_incrs)


def _check_slots(sim: Sim, node_id: str, key: str, entry: Any, count: bool) -> None:
    issued = {o: d for (k, o), d in sim.issued_incrs.items() if k == key}
    if entry is None:  # only right when every increment of it was lost with its history
        state: tuple = (0, "", 0, 0, (), 0, "")
    elif type(entry.value) is not CounterValue:
        sim.fail(f"{node_id} holds {key} as a plain value {entry.value!r}")
    else:
        state = entry.value.state
    slots = {name: (ops, net) for name, ops, net in state[4]}
    current = {n.origin for n in sim.nodes.values()}
    for origin, deltas in issued.items():
        ops, net = slots.pop(origin, (0, 0))
        if ops > len(deltas) or net != sum(deltas[:ops]):
            sim.fail(f"{node_id}: slot {origin} of {key} is {ops, net}, issued {deltas}")
        if ops < len(deltas):
            if origin in current:
                sim.fail(
                    f"{node_id}: slot {origin} of {key} lost increments: "
                    f"{ops} of {len(deltas)} ({deltas})"
                )
            if count:  # once, not per node
                sim.stats["excused_incrs"] += len(deltas) - ops
    if slots:
        sim.fail(f"{node_id}: slots of {key} nobody incremented: {slots}")
    if state[:4] != (0, "", 0, 0):
        sim.fail(f"{node_id}: counter {key} has a base {state[:4]}, none was written")
