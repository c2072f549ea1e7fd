"""Unit tests of mesh/core/clockguard.py: judging this node's clock, refusing future entries."""

from __future__ import annotations

from mesh.core.clock import pack
from mesh.core.clockguard import REFUSE_BACKOFF_MS, STALL_MS, ClockGuard, FutureGate

MAX_OFFSET = 1000
WALL = 1_700_000_000_000


def guard_with(offsets: dict[str, int], now: int = 10_000) -> ClockGuard:
    guard = ClockGuard(MAX_OFFSET)
    for peer, offset in offsets.items():
        guard.observe(peer, WALL + offset, WALL, now)
    return guard


def test_a_clock_off_the_majority_of_the_members_is_bad():
    guard = guard_with({"n2": -3_600_000, "n3": -3_600_000})  # both peers an hour behind us
    verdict = guard.judge(members=3, now_ms=10_000)
    assert verdict.bad and verdict.offset_ms == 3_600_000 and verdict.far == 2


def test_one_far_peer_of_three_members_is_its_problem_not_ours():
    verdict = guard_with({"n2": 5_000, "n3": 10}).judge(members=3, now_ms=10_000)
    assert not verdict.bad and verdict.far == 1


def test_two_nodes_cannot_tell_which_clock_is_wrong():
    assert not guard_with({"n2": 5_000}).judge(members=2, now_ms=10_000).bad


def test_peers_not_heard_lately_do_not_count():
    guard = guard_with({"n2": -5_000, "n3": -5_000}, now=0)
    assert not guard.judge(members=3, now_ms=10_000).bad


def test_after_a_stall_queued_heartbeats_do_not_make_a_verdict():
    """A node resumed after SIGSTOP reads beats that waited in its queues: every
    peer looks behind by the pause until fresh beats arrive."""
    guard = ClockGuard(MAX_OFFSET)
    now = 10_000
    guard.observe("n2", WALL, WALL, now)
    guard.observe("n3", WALL, WALL, now)
    assert not guard.judge(3, now).bad
    pause = 4_000
    now += pause  # no judgement meanwhile: the node was stopped
    for peer in ("n2", "n3"):
        guard.observe(peer, WALL, WALL + pause, now)  # stale beats, delivered now
    assert not guard.judge(3, now).bad
    assert not guard.judge(3, now + pause - 100).bad
    for peer in ("n2", "n3"):  # the queue drained: fresh beats say the clocks agree
        guard.observe(peer, WALL + pause, WALL + pause, now + pause - 50)
    assert not guard.judge(3, now + pause).bad


def test_a_real_offset_is_still_found_after_a_stall():
    guard = guard_with({"n2": -3_600_000, "n3": -3_600_000}, now=10_000)
    guard.judge(3, 10_000)
    later = 10_000 + STALL_MS + 500
    for peer in ("n2", "n3"):
        guard.observe(peer, WALL - 3_600_000, WALL, later)
    assert not guard.judge(3, later).bad  # quiet for as long as the stall lasted
    now = later
    while now < later + STALL_MS + 500:  # judged every 100 ms, as a node does
        now += 100
        for peer in ("n2", "n3"):
            guard.observe(peer, WALL - 3_600_000, WALL, now)
        verdict = guard.judge(3, now)
    assert verdict.bad


def test_future_entries_are_refused_with_their_origin_s_later_ones():
    gate = FutureGate(MAX_OFFSET)
    limit = gate.limit(WALL)
    ok, ahead = pack(WALL, 0), pack(WALL + 2 * MAX_OFFSET, 0)
    entries = [("a", 1, ok), ("a", 2, ahead), ("a", 3, ok), ("b", 1, ok)]
    kept = gate.split(entries, limit, now_ms=0)
    assert kept == [("a", 1, ok), ("b", 1, ok)] and gate.refused == 2
    assert gate.holding("a", REFUSE_BACKOFF_MS - 1) and not gate.holding("a", REFUSE_BACKOFF_MS)
    gate.accepted({"a"})
    assert not gate.active


def test_busy_time_is_no_stall_for_the_clock_guard():
    guard = guard_with({"n2": -3_600_000, "n3": -3_600_000}, now=10_000)
    guard.judge(3, 10_000)
    guard.busy(10_000 + 2 * STALL_MS)  # a long snapshot in the loop
    assert guard.judge(3, 10_000 + 2 * STALL_MS + 100).bad  # judged at once, no quiet
