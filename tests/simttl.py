"""Keys with a time to live in the simulation (``tests/sim.py``): SET with a TTL,
EXPIRE and PERSIST on the plain keys ``k0``.., under every fault of the run.

``ttls`` such writes at random nodes and times, drawn from a stream of their
own (``Sim.trng``, seeded ``sim-ttl/<seed>``), so a seed with ``ttls`` 0
replays as before.  Each is run as :class:`mesh.core.commands.CommandExecutor`
runs it: the deadline is the node's wall clock (skewed, as the node's own)
plus the TTL; EXPIRE and PERSIST write the held value again with the new
deadline, and change nothing on a missing key (PERSIST: nor on a key without
one).  When the run has counters, a quarter of the EXPIREs and PERSISTs go
to a counter key instead: that rebases the counter (a new base at the
write's version, its value then, no slots; increments that had not seen it
are lost, by design), which ``tests/simcounters.py``'s exact sums do not
model, so that key is checked for equal values on every node only
(``Sim.rebased``).  Not in a run that may drop tombstones (``Sim.forgets``):
an expired counter's tombstone collected on one node before another is
docs/counters.md's "known limit" (a counter started then on the first loses
to the tombstone on the second, and the two disagree until it is
incremented again), which this run could end in.

The stores expire keys by the simulation's wall clock (unskewed), every node
alike, so digests still agree after the heal.  An expired key leaves a
tombstone of its version, so the checkers need nothing new: an acknowledged
write's version stays held (live, or as that tombstone) unless collection
or a memory limit may drop tombstones (``Sim.forgets``), as for a DEL.  What
this adds is the paths a deadline takes: expiry tombstones (queued without a
seq) meeting collection, replay of records already due, full syncs carrying
deadlines, TTLs in the digest.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from mesh.core.counters import CounterValue, rebased
from tests import simcounters

if TYPE_CHECKING:
    from tests.sim import Sim

TTLS_MS = (20, 150, 600, 2000)
"""The TTLs drawn: some run out mid-run, some while a node is down, some after the heal."""


def ttl_params(rng: random.Random) -> dict[str, Any]:
    """The params of the TTL writes, drawn from their own stream."""
    return {"ttls": rng.choice((0, 0, 0, 5, 15))}


def schedule(sim: Sim) -> None:
    """Draw the TTL writes (from ``sim.trng`` only)."""
    p, rng, ids = sim.p, sim.trng, sorted(sim.nodes)
    keys = [f"k{i}" for i in range(p.keys)]
    for _ in range(p.ttls):
        t, node_id, key = rng.randint(0, p.duration_ms), rng.choice(ids), rng.choice(keys)
        op = rng.choice(("set", "set", "expire", "persist"))
        if op != "set" and p.incrs and not sim.forgets and rng.random() < 0.25:
            key = rng.choice(simcounters.KEYS)
        sim.at(t, ttl_write, sim, node_id, op, key, rng.choice(TTLS_MS))
    sim.scheduled += p.ttls
    sim.unwritten += p.ttls


def ttl_write(sim: Sim, node_id: str, op: str, key: str, ttl_ms: int, tries: int = 0) -> None:
    """A client SET with a TTL, EXPIRE or PERSIST: at ``node_id`` if ready, else at a
    ready node; retried later when none is (``Sim.writable_node``)."""

    def again(t: int) -> None:
        ttl_write(sim, node_id, op, key, ttl_ms, t)

    node = sim.writable_node(node_id, sim.trng, again, tries)
    if node is None:
        return
    deadline = node.clock.wall() + ttl_ms
    if op == "set":
        sim.client_write(node.id, [(key, sim.value(node.id), deadline)])
        return
    entry = node.store.get(key, record_stats=False)
    if entry is None or (op == "persist" and not entry.deadline):
        sim.stats["writes_noop"] += 1  # as the executor: nothing to write
        return
    value, until = entry.value, deadline if op == "expire" else 0
    if type(value) is CounterValue:  # as CommandExecutor._rewrite: rebased at the write's hlc
        counter, origin = value, node.origin
        sim.rebased.add(key)
        sim.client_write(node.id, [(key, lambda hlc: rebased(counter, hlc, origin), until)])
    else:
        sim.client_write(node.id, [(key, bytes(value or b""), until)])
    sim.stats["ttl_rewrites"] += 1
