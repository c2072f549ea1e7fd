"""Peers found by HELLO (``hello=1``) rather than given up front, for ``tests/sim.py``.

As ``pycache up`` with OS-picked ports starts them, node k is configured with
n1..n(k-1) only.  At each start it says HELLO to every peer it knows (its
configured ones and those in ``peers.json``, which survives a crash but not a
disk loss), again every ``HELLO_RETRY_MS`` until each answered; a HELLO from an
unknown node makes it a peer, and so does the answer.  A node receives PUB
messages and heartbeats only from peers it knows (it subscribes to those); a
heartbeat from a peer that does not know this node (it lost its disk) makes it
say HELLO again (``Peering._hello_again``).  The end check: every node knows
every other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.sim import Sim
    from tests.simmodel import SimNode

HELLO, HELLO_REPLY = "hello", "hello_reply"
HELLO_RETRY_MS = 200


def install(sim: Sim) -> None:
    """Configure each node with the nodes before it; HELLO handlers and the hook."""
    ids = list(sim.nodes)
    for i, node_id in enumerate(ids):
        node = sim.nodes[node_id]
        node.configured = set(ids[:i])
        node.known = set(node.configured)
    sim.handlers[HELLO] = lambda node, src, life: _on_hello(sim, node, src, life)
    sim.handlers[HELLO_REPLY] = lambda node, src, _: _on_reply(sim, node, src)
    sim.hooks.append(_hello_again)


def boot(sim: Sim, node: SimNode) -> None:
    """At a start: HELLO every known peer, then again until each answered."""
    node.unanswered = set(node.known)
    sim.at(sim.now, _say_hello, sim, node, node.life)


def lose_disk(node: SimNode) -> None:
    node.known = set(node.configured)  # peers.json is gone with the disk


def _learn(sim: Sim, node: SimNode, peer: str) -> None:
    if peer not in node.known:
        node.known.add(peer)
        sim.note("learn", node.id, peer)
    node.replica.add_peer(peer)


def _say_hello(sim: Sim, node: SimNode, life: int) -> None:
    if not node.up or node.life != life:
        return
    for peer in sorted(node.unanswered):
        sim.send(HELLO, node.id, peer, node.life)
    if node.unanswered:
        sim.at(sim.now + HELLO_RETRY_MS, _say_hello, sim, node, life)


def _on_hello(sim: Sim, node: SimNode, src: str, src_life: int) -> None:
    _learn(sim, node, src)
    sim.send(HELLO_REPLY, node.id, src, None, life=src_life)


def _on_reply(sim: Sim, node: SimNode, src: str) -> None:
    _learn(sim, node, src)
    node.unanswered.discard(src)


def _hello_again(sim: Sim, kind: str, src: str, dst: str) -> None:
    """A heartbeat from a peer that does not know us: HELLO it (until it answers)."""
    if kind != "hb" or src not in sim.nodes:
        return
    node = sim.nodes[dst]
    if dst not in sim.nodes[src].known and src not in node.unanswered:
        start = not node.unanswered
        node.unanswered.add(src)
        if start:
            sim.at(sim.now, _say_hello, sim, node, node.life)


def check(sim: Sim) -> None:
    """Every node knows every other (and its replica has it as a peer)."""
    for node in sim.nodes.values():
        others = set(sim.nodes) - {node.id}
        if node.known != others or not others <= set(node.replica.peers):
            sim.fail(f"{node.id} knows {sorted(node.known)}, not all of {sorted(others)}")


def complete(sim: Sim) -> bool:
    return all(len(n.known) == len(sim.nodes) - 1 for n in sim.nodes.values())
