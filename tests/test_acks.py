"""Unit tests for mesh.core.acks: how many nodes a write level needs, and held
replies completing or timing out as peers report what they logged.

No sockets: peers' logged positions are a dict the test advances, counted the
way the node's replica counts them (this node plus each peer at or past a seq).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.core.acks import PendingAcks, Waiting, nodes_needed

T0 = 1_700_000_000_000


class Peers:
    """Peers' logged seq of this origin, as heartbeats report it."""

    def __init__(self, *names: str) -> None:
        self.logged = dict.fromkeys(names, 0)

    def logged_by(self, seq: int) -> int:
        """Nodes that have logged ``seq``: this one, plus every peer at or past it."""
        return 1 + sum(1 for at in self.logged.values() if at >= seq)


def waiting(seq: int, needed: int = 2, deadline_ms: int = T0 + 1000) -> Waiting:
    """A held reply whose envelope and result name its seq."""
    return Waiting(seq, needed, deadline_ms, [b"client", f"env{seq}".encode()], 100 + seq, seq)


def seqs(held: list[Waiting]) -> list[int]:
    return [w.seq for w in held]


# -- nodes_needed ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)]
)
def test_quorum_is_a_strict_majority(size: int, quorum: int) -> None:
    assert nodes_needed("quorum", size) == quorum


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64])
def test_all_is_every_node(size: int) -> None:
    assert nodes_needed("all", size) == size


@pytest.mark.parametrize(("w", "size"), [(1, 3), (2, 3), (3, 3), (2, 1), (5, 3), (64, 2)])
def test_a_count_is_taken_as_it_is_whatever_the_cluster_size(w: int, size: int) -> None:
    """A count above the cluster size is not capped: such a write can only time out."""
    assert nodes_needed(w, size) == w


@given(st.integers(1, 1000))
def test_two_quorums_always_share_a_node_and_quorum_is_the_least_that_does(size: int) -> None:
    quorum = nodes_needed("quorum", size)
    assert quorum <= size
    assert 2 * quorum > size
    assert 2 * (quorum - 1) <= size


# -- PendingAcks -------------------------------------------------------------------


def test_nothing_held_resolves_to_nothing() -> None:
    acks = PendingAcks()
    assert len(acks) == 0
    assert acks.resolve(Peers("b").logged_by, T0) == ([], [])


def test_hold_counts_the_replies_held() -> None:
    acks = PendingAcks()
    acks.hold(waiting(1))
    acks.hold(waiting(2))
    assert len(acks) == 2


def test_a_reply_stays_held_until_enough_peers_logged_its_seq() -> None:
    acks, peers = PendingAcks(), Peers("b", "c")
    acks.hold(waiting(5, needed=3))
    peers.logged["b"] = 5
    assert acks.resolve(peers.logged_by, T0) == ([], [])
    assert len(acks) == 1
    peers.logged["c"] = 9  # past the seq counts too
    done, expired = acks.resolve(peers.logged_by, T0)
    assert seqs(done) == [5] and expired == []
    assert len(acks) == 0


def test_replies_complete_in_seq_order_as_a_peer_advances() -> None:
    acks, peers = PendingAcks(), Peers("b")
    for seq in range(1, 6):
        acks.hold(waiting(seq))
    peers.logged["b"] = 3
    done, _ = acks.resolve(peers.logged_by, T0)
    assert seqs(done) == [1, 2, 3]
    peers.logged["b"] = 5
    done, _ = acks.resolve(peers.logged_by, T0)
    assert seqs(done) == [4, 5]


def test_a_completed_reply_comes_out_once_with_what_it_held() -> None:
    acks, peers = PendingAcks(), Peers("b")
    held = waiting(1)
    acks.hold(held)
    peers.logged["b"] = 1
    (done,), _ = acks.resolve(peers.logged_by, T0)
    assert done is held
    assert (done.envelope, done.request_id, done.result) == ([b"client", b"env1"], 101, 1)
    assert acks.resolve(peers.logged_by, T0) == ([], [])


def test_a_reply_expires_at_its_deadline_saying_how_many_nodes_had_it() -> None:
    acks, peers = PendingAcks(), Peers("b", "c", "d")
    acks.hold(waiting(4, needed=4, deadline_ms=T0 + 500))
    peers.logged["b"] = 4
    assert acks.resolve(peers.logged_by, T0 + 499) == ([], [])
    done, expired = acks.resolve(peers.logged_by, T0 + 500)
    assert done == []
    assert [(w.seq, have) for w, have in expired] == [(4, 2)]
    assert len(acks) == 0


def test_a_reply_logged_by_enough_nodes_completes_even_past_its_deadline() -> None:
    acks, peers = PendingAcks(), Peers("b")
    acks.hold(waiting(1, deadline_ms=T0))
    peers.logged["b"] = 1
    done, expired = acks.resolve(peers.logged_by, T0 + 10_000)
    assert seqs(done) == [1] and expired == []


def test_more_than_the_cluster_can_give_only_ever_expires() -> None:
    acks, peers = PendingAcks(), Peers("b", "c")
    acks.hold(waiting(1, needed=nodes_needed(5, 3), deadline_ms=T0 + 100))
    peers.logged.update(b=10, c=10)
    assert acks.resolve(peers.logged_by, T0) == ([], [])
    _, expired = acks.resolve(peers.logged_by, T0 + 100)
    assert [(w.seq, have) for w, have in expired] == [(1, 3)]


def test_done_expired_and_kept_are_split_in_one_call() -> None:
    acks, peers = PendingAcks(), Peers("b", "c")
    acks.hold(waiting(1, needed=2, deadline_ms=T0 + 100))  # b has it: done
    acks.hold(waiting(2, needed=3, deadline_ms=T0 + 100))  # only b: expired
    acks.hold(waiting(3, needed=2, deadline_ms=T0 + 900))  # nobody yet: kept
    peers.logged["b"] = 2
    done, expired = acks.resolve(peers.logged_by, T0 + 100)
    assert seqs(done) == [1]
    assert [(w.seq, have) for w, have in expired] == [(2, 2)]
    assert len(acks) == 1
    peers.logged["c"] = 3
    done, _ = acks.resolve(peers.logged_by, T0 + 100)
    assert seqs(done) == [3]


# -- property: every held reply is answered once, rightly -----------------------

PEERS = ("b", "c", "d")
HELD = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 5), st.integers(0, 200)), max_size=12)
EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from(PEERS), st.integers(0, 5)),
        st.tuples(st.just("wait"), st.just(""), st.integers(0, 50)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(HELD, EVENTS)
def test_each_held_reply_is_answered_exactly_once_and_rightly(
    held: list[tuple[int, int, int]], events: list[tuple[str, str, int]]
) -> None:
    acks, peers, now = PendingAcks(), Peers(*PEERS), T0
    all_held = [waiting(seq, needed, T0 + after) for seq, needed, after in held]
    for w in all_held:
        acks.hold(w)
    answered: list[Waiting] = []
    for kind, peer, amount in [*events, ("wait", "", 1000)]:
        if kind == "advance":
            peers.logged[peer] += amount  # heartbeats only ever report more
        else:
            now += amount
        done, expired = acks.resolve(peers.logged_by, now)
        for w in done:
            assert peers.logged_by(w.seq) >= w.needed
        for w, have in expired:
            assert have == peers.logged_by(w.seq) < w.needed and now >= w.deadline_ms
        answered += done + [w for w, _ in expired]
        assert len(acks) == len(all_held) - len(answered)
    assert sorted(map(id, answered)) == sorted(map(id, all_held))
