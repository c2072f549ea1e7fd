"""A node that knows it is behind its peers leaves rotation until it has caught up (issue 13.4).

The real-process test pauses one of three nodes behind a balancer (SIGSTOP)
under a steady write stream, resumes it, and checks that it is out of
``ready`` at once and until it has caught up, and that no read through the
balancer returns a counter value older than a write acknowledged before the
read began.  The unit tests drive :class:`mesh.core.lagguard.LagGuard`.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest

from mesh.client import Client
from mesh.core.lagguard import LIVE_MS, STALL_MS, LagGuard
from tests.conftest import NodeProcess, Processes, wait_for

PAUSE_S = 8.0
#: a read counts as stale when a newer value had been acknowledged this long before it
#: began (a few ms are the asynchronous replication's own delay, documented as such)
STALE_S = 0.05


class Counter:
    """Writers of ``ctr:<k>`` = 1, 2, 3, ... (one key per writer thread) and readers of
    them, all through the balancer.

    ``acked[k][v]`` is when the write of ``v`` to ``ctr:<k>`` was acknowledged;
    ``reads`` holds (key, start, value) of every read.
    """

    def __init__(self, endpoint: str, writers: int = 6, readers: int = 2) -> None:
        self.endpoint = endpoint
        self.acked: list[dict[int, float]] = [{} for _ in range(writers)]
        self.reads: list[tuple[int, float, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [
            *(threading.Thread(target=self._write, args=(k,), daemon=True) for k in range(writers)),
            *(threading.Thread(target=self._read, args=(r,), daemon=True) for r in range(readers)),
        ]

    def written(self) -> int:
        return sum(len(a) for a in self.acked)

    def _write(self, k: int) -> None:
        acked = self.acked[k]
        with Client(self.endpoint, timeout=3.0) as c:
            i = 0
            while not self._stop.is_set():
                try:
                    c.set(f"ctr:{k}", str(i + 1))
                except Exception as exc:
                    self.errors.append(f"SET: {exc!r}")
                    continue
                i += 1
                acked[i] = time.monotonic()

    def _read(self, r: int) -> None:
        with Client(self.endpoint, timeout=3.0) as c:
            n = r
            while not self._stop.is_set():
                k = n % len(self.acked)
                n += 1
                start = time.monotonic()
                try:
                    value = c.get(f"ctr:{k}")
                except Exception as exc:
                    self.errors.append(f"GET: {exc!r}")
                    continue
                self.reads.append((k, start, int(value) if value else 0))

    def stale(self) -> list[tuple[int, float, int, float]]:
        """Reads whose value had a successor acknowledged more than STALE_S before they
        began: (key, start, value, how long before)."""
        out = []
        for k, start, value in self.reads:
            newer = self.acked[k].get(value + 1)
            if newer is not None and newer < start - STALE_S:
                out.append((k, start, value, start - newer))
        return out

    def __enter__(self) -> Counter:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(8)


def health_state(node: NodeProcess) -> str:
    with node.client(timeout=1.0) as c:
        return str(c.health()["state"])


@pytest.mark.processes
def test_paused_node_stays_out_of_rotation_until_caught_up(procs: Processes, paused):
    # fsync=never: a sequential writer is not held by a disk flush per write (the
    # property is about replication lag, not durability)
    nodes = procs.cluster(3, extra=["--fsync", "never"])
    balancer = procs.balancer(nodes)
    victim = nodes[1]
    with Counter(balancer.endpoint) as counter, victim.client(timeout=2.0) as direct:
        wait_for(lambda: counter.written() >= 500, 10, "500 writes")
        paused.append(victim)
        victim.signal(signal.SIGSTOP)
        stopped_at = counter.written()
        time.sleep(PAUSE_S)
        written = counter.written() - stopped_at
        resumed = time.monotonic()
        victim.signal(signal.SIGCONT)
        # What the node says about itself from the moment it resumes until it is ready.
        seen: list[tuple[float, str, int]] = []
        deadline = resumed + 10.0
        while time.monotonic() < deadline:
            try:
                state = str(direct.health()["state"])
                entries = direct.stats().get("behind", {}).get("entries", -1)
            except Exception as exc:
                state, entries = f"error {exc!r}", -1
            seen.append((time.monotonic() - resumed, state, entries))
            if state == "ready" and any(s != "ready" for _, s, _ in seen):
                break
            time.sleep(0.02)
        wait_for(lambda: health_state(victim) == "ready", 10, "the resumed node ready")
        time.sleep(1.0)  # reads go on with the node back in rotation
    rate = written / PAUSE_S
    stale = counter.stale()
    print(
        f"\n{written} writes during the {PAUSE_S} s pause ({rate:.0f}/s), "
        f"{len(counter.reads)} reads, {len(stale)} stale (max "
        f"{max((s[3] for s in stale), default=0):.3f} s); the node after SIGCONT: {seen[:3]} ... "
        f"{seen[-3:]}"
    )
    print("\n".join(line for line in victim.stderr().splitlines() if "n2 WARNING" in line))
    assert written >= 2000, f"the write stream was too slow to show anything ({rate:.0f}/s)"
    assert not counter.errors, counter.errors[:5]
    first = seen[0]
    assert first[1] != "ready", f"the node said ready at once after SIGCONT: {seen[:5]}"
    out = [t for t, s, _ in seen if s != "ready"]
    assert out and out[0] < 1.0, f"the node did not leave ready within 1 s: {seen[:10]}"
    back = [(t, e) for t, s, e in seen if s == "ready"]
    assert back, f"the node never came back to ready within 10 s: {seen[-5:]}"
    assert 0 <= back[0][1] <= 100, f"ready again while {back[0][1]} entries behind: {seen[-5:]}"
    assert not stale, f"stale reads through the balancer: {stale[:10]}"


# ---------------------------------------------------------------------- the core class


def beats(peers: dict[str, dict[str, int]], heard: int) -> dict:
    return {p: (vv, heard) for p, vv in peers.items()}


def test_within_bounds_is_not_behind():
    g = LagGuard(1000, 1000)
    v = g.judge({"a/1": 100}, beats({"a": {"a/1": 600}}, 0), 0)
    assert (v.behind, v.entries) == (False, 500)


def test_too_many_entries_behind_and_back_with_hysteresis():
    g = LagGuard(1000, 1000, hold_ms=200)
    assert g.judge({"a/1": 0}, beats({"a": {"a/1": 1500}}, 0), 0).behind
    # within the limit but not within a tenth of it: still behind
    assert g.judge({"a/1": 1400}, beats({"a": {"a/1": 1600}}, 90), 100).behind
    assert g.judge({"a/1": 1600}, beats({"a": {"a/1": 1650}}, 190), 200).behind  # held...
    assert g.judge({"a/1": 1700}, beats({"a": {"a/1": 1710}}, 290), 300).behind
    v = g.judge({"a/1": 1800}, beats({"a": {"a/1": 1800}}, 390), 400)
    assert not v.behind and v.entries == 0  # ... for hold_ms


def test_entries_sum_over_origins_and_count_third_parties():
    """Per origin what a majority of this node and its live peers hold counts (c/1's 300
    held by both peers, though c is silent); b/1's 10, held by b alone, does not."""
    g = LagGuard(700, 0)
    peers = beats({"a": {"a/1": 600, "c/1": 300}, "b": {"a/1": 600, "b/1": 10, "c/1": 450}}, 0)
    v = g.judge({"a/1": 100, "c/1": 0}, peers, 0)
    assert v.entries == 500 + 300 and v.behind


def test_one_member_claiming_what_nobody_else_has_moves_nobody():
    """A member with a bug (its heartbeats claim seq 2**63-1) cannot make the others
    think they are behind: its word is not corroborated."""
    g = LagGuard(1000, 1000)
    for t in range(0, 3000, 100):
        peers = beats({"bad": {"bad/1": 2**63 - 1, "a/1": 5}, "a": {"a/1": 5}}, t)
        assert not g.judge({"a/1": 5}, peers, t).behind


def test_a_claim_missing_too_long_is_behind():
    g = LagGuard(0, 1000)
    vv = {"a/1": 5}
    for t in range(0, 1001, 100):
        assert not g.judge(vv, beats({"a": {"a/1": 10}}, t), t).behind
    v = g.judge(vv, beats({"a": {"a/1": 10}}, 1100), 1100)
    assert v.behind and v.ms == 1100 and "missing for 1100 ms" in g.reason()


def test_steady_small_lag_is_not_an_ever_older_claim():
    g = LagGuard(0, 1000)
    for t in range(0, 5000, 100):  # always 5 behind, but each claim met by the next beat
        v = g.judge({"a/1": t}, beats({"a": {"a/1": t + 5}}, t), t)
        assert not v.behind and v.ms == 0


def test_silent_peers_and_refused_origins_do_not_count():
    g = LagGuard(1000, 1000)
    assert not g.judge({}, beats({"a": {"a/1": 5000}}, 0), LIVE_MS + 1).behind
    assert not g.judge({}, beats({"a": {"a/1": 5000}}, 0), 0, ignore={"a/1"}).behind


def test_a_stall_is_behind_until_news_sent_after_it():
    g = LagGuard(1000, 1000, hold_ms=0)
    g.touch(0)
    g.heard("a", 50_000, 10)  # a's clock is 50 s off ours: no matter
    g.heard("b", 1_000, 20)
    assert not g.judge({}, beats({"a": {}, "b": {}}, 20), 100).behind
    assert g.touch(8_100)  # 8 s without running: a stall
    assert g.behind and not g.touch(8_110)
    # heartbeats queued during the stall are old news, however they arrive
    assert not g.heard("a", 55_000, 8_120)
    assert not g.heard("b", 8_000, 8_120)
    v = g.judge({}, beats({"a": {}, "b": {}}, 8_120), 8_130)
    assert v.behind and v.stale == ("a", "b") and "stalled for 8000 ms" in g.reason()
    assert g.heard("a", 58_100, 8_200)  # sent after the stall
    assert g.judge({}, beats({"a": {}, "b": {}}, 8_200), 8_210).stale == ("b",)
    assert g.heard("b", 9_100, 8_230)
    assert not g.judge({}, beats({"a": {}, "b": {}}, 8_230), 8_240).behind


def test_a_stall_waits_for_a_peer_still_sending_old_news_but_not_for_a_silent_one():
    g = LagGuard(1000, 1000, hold_ms=0, live_ms=1500, fresh_timeout_ms=30_000)
    g.heard("a", 0, 0)
    g.heard("b", 0, 0)
    g.touch(5_000)
    for t in range(5_000, 8_000, 100):  # a's old beats drain from the socket; b is silent
        g.heard("a", t - 5_000, t)
        v = g.judge({}, {}, t)
        assert v.behind and "a" in v.stale
        assert ("b" in v.stale) == (t - 5_000 <= 1500)
    g.heard("a", 5_100, 8_000)  # a's first beat sent after the stall
    assert not g.judge({}, {}, 8_000).behind


def test_a_stall_waits_at_most_fresh_timeout():
    g = LagGuard(1000, 1000, hold_ms=0, fresh_timeout_ms=2000)
    g.heard("a", 0, 0)
    g.touch(5_000)
    for t in range(5_000, 7_000, 100):  # a node judges every 100 ms
        g.heard("a", 1, t)  # a's clock stepped back: its news never looks fresh
        assert g.judge({}, {}, t).behind
    assert not g.judge({}, {}, 7_000).behind


def test_short_pauses_and_a_disabled_guard_are_not_stalls():
    g = LagGuard(1000, 1000)
    g.touch(0)
    assert not g.touch(STALL_MS - 1)
    off = LagGuard(0, 0)
    off.touch(0)
    assert not off.touch(60_000)
    assert not off.judge({}, beats({"a": {"a/1": 10**6}}, 60_000), 60_000).behind


def test_a_node_with_no_peer_heard_is_not_behind_after_a_stall():
    g = LagGuard(1000, 1000)
    g.touch(0)
    assert not g.touch(10_000) and not g.behind
    assert g.stalls == 1


def test_reset_forgets_a_stall():
    g = LagGuard(1000, 1000)
    g.heard("a", 0, 0)
    g.touch(5_000)
    g.reset()
    assert not g.judge({}, {}, 5_010).behind


def test_busy_time_in_the_loop_is_no_stall():
    """A snapshot written in the loop blocks it for hundreds of ms: the node was busy,
    not stopped, and must not refuse every op afterwards (as bench/catchup.py's bulk
    load saw)."""
    g = LagGuard(1000, 1000)
    g.heard("a", 1_000, 0)
    assert not g.touch(100)
    g.busy(700)  # the snapshot ended at 700 ms
    assert not g.touch(710) and not g.behind
    assert g.touch(1_100)  # 390 ms with no run at all: a stall
