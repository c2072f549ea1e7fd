"""Real 3-node meshes on 127.0.0.1: convergence, crashes, pauses, PUB loss, acks.

Every test starts its own node processes through the ``procs`` fixture (which
kills them all at teardown), drives them through the Python client, injects
faults with real signals (SIGKILL + restart on the same ports, SIGSTOP /
SIGCONT) or with a tiny PUB high-water mark, and checks three things (the
first two are what Jepsen and the Redis replication tests check):

- no acknowledged write is lost: writers record every write that was
  acknowledged, and each one is read back from every node afterwards;
- convergence: after the faults heal and writes stop, every node reports the
  same digest, live key count and version vector;
- repair is observable: where the test forces a hole, the replication
  counters in STATS must show that it was noticed and repaired.

Waits poll with deadlines (``wait_for``); nothing sleeps to wait.
"""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import zmq

from mesh.client import Client
from mesh.core import envelope, wire
from mesh.core.errors import PyCacheError, WriteNotAcknowledged
from tests.conftest import (
    NodeProcess,
    convergence_summary,
    stats_of,
    wait_converged,
    wait_for,
)

pytestmark = pytest.mark.processes

# ---------------------------------------------------------------------- helpers


def all_stats(nodes: Sequence[NodeProcess]) -> list[dict]:
    return [stats_of(n) for n in nodes]


def wait_mesh(nodes: Sequence[NodeProcess], timeout: float = 10.0) -> None:
    """Wait until every node knows every other one and hears it as ready."""
    ids = {n.node_id for n in nodes}

    def meshed() -> bool:
        for s in all_stats(nodes):
            peers = s["lag"]
            if set(peers) != ids - {s["node_id"]} or s["state"] != "ready":
                return False
            if any(p["state"] != "ready" for p in peers.values()):
                return False
        return True

    wait_for(meshed, timeout, "every node to know and hear every other one")


def wait_has(node: NodeProcess, expected: dict[str, bytes | None], timeout: float = 10.0) -> None:
    """Wait until ``node`` holds exactly ``expected`` (None: the key is absent)."""
    keys = list(expected)

    def holds() -> bool:
        with node.client(timeout=2.0) as c:
            return c.mget(keys) == [expected[k] for k in keys]

    wait_for(holds, timeout, f"{node.node_id} to hold {len(keys)} expected values")


def missing_on(node: NodeProcess, expected: dict[str, bytes], chunk: int = 2000) -> list[str]:
    """Keys of ``expected`` whose value on ``node`` differs (read with MGET now)."""
    keys = sorted(expected)
    wrong: list[str] = []
    with node.client(timeout=10.0) as c:
        for i in range(0, len(keys), chunk):
            part = keys[i : i + chunk]
            got = c.mget(part)
            wrong += [k for k, v in zip(part, got, strict=True) if v != expected[k]]
    return wrong


def replication(node: NodeProcess) -> dict[str, int]:
    return stats_of(node)["replication"]


def set_w(client: Client, key: str, value: bytes, w: int | str) -> Any:
    """SET with an explicit write acknowledgement level."""
    return client._call("SET", key, value, {"w": w})


class Writer(threading.Thread):
    """Writes unique keys ``<prefix>:<n>`` to one node in pipelines until stopped.

    Records what was acknowledged (``acked``: key -> value) and what is in
    doubt (a timeout or a broken connection: the write may or may not have
    happened).  A refused write (NotReady) is simply not acknowledged.  Never
    raises: an unexpected exception is kept in ``error`` for the test.
    """

    def __init__(self, node: NodeProcess, prefix: str, batch: int = 10, value_size: int = 16):
        super().__init__(daemon=True, name=f"writer-{prefix}")
        self.node = node
        self.prefix = prefix
        self.batch = batch
        self.pad = b"." * value_size
        self.acked: dict[str, bytes] = {}
        self.in_doubt: set[str] = set()
        self.refused = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def snapshot(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self.acked)

    def run(self) -> None:
        try:
            with self.node.client(timeout=1.0) as c:
                n = 0
                while not self.stopping.is_set():
                    keys = [f"{self.prefix}:{n + i}" for i in range(self.batch)]
                    n += self.batch
                    values = [k.encode() + self.pad for k in keys]
                    with c.pipeline() as pipe:
                        for k, v in zip(keys, values, strict=True):
                            pipe.set(k, v)
                        try:
                            results = pipe.execute(raise_on_error=False)
                        except PyCacheError:  # timeout / connection: outcome unknown
                            self.in_doubt.update(keys)
                            self.stopping.wait(0.01)
                            continue
                    with self._lock:
                        for k, v, r in zip(keys, values, results, strict=True):
                            if r is True:
                                self.acked[k] = v
                            else:
                                self.refused += 1
                    if len(results) and results[-1] is not True:
                        self.stopping.wait(0.01)  # not ready: do not spin
        except BaseException as exc:  # report to the test instead of a thread warning
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(15)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.error is None, f"{self.name} failed: {self.error!r}"


def wait_count(
    writers: Sequence[Writer], at_least: Callable[[Writer], int], what: str, timeout: float = 15.0
) -> None:
    wait_for(
        lambda: all(w.count() >= at_least(w) and w.error is None for w in writers),
        timeout,
        what,
    )


def merged(writers: Sequence[Writer]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for w in writers:
        out.update(w.snapshot())
    return out


# ---------------------------------------------------------------------- (a) convergence


def test_concurrent_writes_on_all_nodes_converge_within_2_s(procs):
    """6 000 writes (SET, SET with TTL, DEL) on 400 shared keys, through all three at once.

    Within 2 s of the last acknowledged write every node reports the same
    digest, key count and version vector, and the same value for every key.
    """
    nodes = procs.cluster(3)
    wait_mesh(nodes)
    finished: list[float] = []
    errors: list[BaseException] = []
    overlap = [f"k{i}" for i in range(400)]

    def write(node: NodeProcess, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with node.client(timeout=10.0) as c:
                for round_ in range(40):
                    with c.pipeline() as pipe:
                        for i in range(50):
                            key = rnd.choice(overlap)
                            op = rnd.random()
                            if op < 0.8:
                                pipe.set(key, f"{node.node_id}:{round_}:{i}")
                            elif op < 0.9:
                                pipe.delete(key)
                            else:
                                pipe.set(key, f"{node.node_id}:{round_}:{i}", px=60_000)
                        pipe.execute()
            finished.append(time.monotonic())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, i)) for i, n in enumerate(nodes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(finished) == 3
    last_write = max(finished)
    stats = wait_converged(nodes, timeout=10.0)
    took = time.monotonic() - last_write
    assert took < 2.0, f"converged {took:.2f} s after the last write: {convergence_summary(nodes)}"
    assert stats[0]["keys"] > 0
    # every node applied every write of every origin (the vvs are equal, see converged)
    assert len(stats[0]["vv"]) == 3
    assert all(s["vv"][s["origin"]] == s["seq"] for s in stats), [s["vv"] for s in stats]
    # and the values agree key by key, not only the digests
    with nodes[0].client() as c0, nodes[1].client() as c1, nodes[2].client() as c2:
        assert c0.mget(overlap) == c1.mget(overlap) == c2.mget(overlap)


# ---------------------------------------------------------------------- (b) kill -9


@pytest.mark.parametrize("fsync", ["always", "never"])
def test_killed_node_restarts_with_every_acknowledged_write(procs, fsync):
    """kill -9 while writers hit all three nodes; restart on the same ports.

    Under ``--fsync never`` an acknowledged write is still in the page cache
    after a process crash, so nothing may be lost either; that node comes
    back as a new incarnation (it cannot prove what it published), which
    exercises the other recovery path.
    """
    n1, n2, n3 = nodes = procs.cluster(3, extra=["--fsync", fsync])
    wait_mesh(nodes)
    origin = stats_of(n3)["origin"]
    writers = [Writer(n, n.node_id) for n in nodes]
    for w in writers:
        w.start()
    try:
        wait_count(writers, lambda w: 300, "300 acknowledged writes per node")
        n3.kill()
        at_kill = {w.prefix: w.count() for w in writers}
        wait_count(writers[:2], lambda w: at_kill[w.prefix] + 500, "writes while n3 is down")
        # A restart is quick (0.2 s): let n3's writer see its node gone first (its
        # client times out in 1 s), or its next pipeline could simply wait for
        # the new process and never be in doubt.
        wait_for(lambda: writers[2].in_doubt or writers[2].refused, 10, "n3's writer to notice")
        before_restart = merged(writers)
        n3.start()  # same ports; returns once ready
        new_origin = stats_of(n3)["origin"]
        assert (new_origin == origin) == (fsync == "always"), (origin, new_origin)
        # the moment it is ready it holds everything acknowledged before it came back
        wrong = missing_on(n3, before_restart)
        assert not wrong, f"n3 ready without {len(wrong)} acknowledged writes, e.g. {wrong[:5]}"
        after = writers[2].count()
        wait_count(writers, lambda w: after + 200 if w is writers[2] else 0, "n3 serving again")
    finally:
        for w in writers:
            w.stopping.set()
    for w in writers:
        w.stop()
    wait_converged(nodes)
    acked = merged(writers)
    assert writers[2].in_doubt or writers[2].refused, "n3's writer never noticed the crash"
    for node in nodes:
        wrong = missing_on(node, acked)
        assert not wrong, f"{node.node_id} lost {len(wrong)} acknowledged writes: {wrong[:5]}"


# ---------------------------------------------------------------------- (c) SIGSTOP


def test_paused_node_repairs_and_converges(procs):
    """SIGSTOP n3 for 5 s while n1 and n2 take a heavy write stream, then SIGCONT.

    With the default PUB high-water mark (10 000 messages) a 5 s pause loses
    nothing: the backlog waits in the senders' queues and n3 just drains it,
    with no repair to observe.  A smaller mark (50 messages of ~40 KiB, as a
    memory-bounded deployment would set) makes the pause overflow the queues,
    so n3 must notice the hole (a gap, or peers' heartbeats ahead of it) and
    fetch what it lost: the test asserts that this happened and converged.
    """
    n1, n2, n3 = nodes = procs.cluster(3, extra=["--pub-hwm", "50"])
    wait_mesh(nodes)
    before = replication(n3)
    writers = [
        Writer(n1, "a", batch=20, value_size=2048),
        Writer(n2, "b", batch=20, value_size=2048),
    ]
    for w in writers:
        w.start()
    try:
        wait_count(writers, lambda w: 200, "writes before the pause")
        n3.signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        at_pause = {w.prefix: w.count() for w in writers}
        try:  # hold the pause 5 s; the other two keep taking writes meanwhile
            wait_for(lambda: time.monotonic() - paused_at >= 5.0, 10, "5 s of pause")
            progress = {w.prefix: w.count() - at_pause[w.prefix] for w in writers}
            assert all(p >= 1000 for p in progress.values()), f"writes stalled: {progress}"
        finally:
            n3.signal(signal.SIGCONT)
        counts = {w.prefix: w.count() for w in writers}
        wait_count(writers, lambda w: counts[w.prefix] + 200, "writes after the pause")
    finally:
        for w in writers:
            w.stopping.set()
    for w in writers:
        w.stop()
    wait_converged(nodes)
    after = replication(n3)
    grew = {k: after[k] - before[k] for k in ("gaps", "repaired", "fetches")}
    assert any(grew.values()), f"n3 caught up without any repair counted: {before} -> {after}"
    acked = merged(writers)
    for node in nodes:
        wrong = missing_on(node, acked)
        assert not wrong, f"{node.node_id} lacks {len(wrong)} acknowledged writes: {wrong[:5]}"


# ---------------------------------------------------------------------- (d) PUB loss


def test_forced_pub_loss_is_repaired_and_counted(procs):
    """``--pub-hwm 1`` and bursts bigger than one PUB message: PUB drops entries.

    Each burst of 400 writes of ~3 KB leaves its origin as two or more PUB
    messages back to back, and a queue of one message drops the rest.  Every
    acknowledged write must still reach every node, through catch-up.
    """
    # The lag guard would take a node that PUB loss leaves 1,000 entries behind
    # out of service (NOT_READY, issue 13.4); this test writes to every node.
    no_lag_guard = ["--max-lag-entries", "0", "--max-lag-ms", "0"]
    nodes = procs.cluster(3, extra=["--pub-hwm", "1", *no_lag_guard])
    wait_mesh(nodes)
    before = {n.node_id: replication(n) for n in nodes}
    acked: dict[str, bytes] = {}
    pad = b"x" * 3000  # 400 such writes are more than one 1 MiB PUB message
    with nodes[0].client(timeout=10) as c0, nodes[1].client(timeout=10) as c1:
        for burst in range(8):
            for c, name in ((c0, "a"), (c1, "b")):
                keys = [f"{name}:{burst}:{i}" for i in range(400)]
                with c.pipeline() as pipe:
                    for k in keys:
                        pipe.set(k, k.encode() + pad)
                    assert pipe.execute() == [True] * len(keys)
                acked.update({k: k.encode() + pad for k in keys})
    wait_converged(nodes)
    grew = {
        n.node_id: {k: v - before[n.node_id][k] for k, v in replication(n).items()} for n in nodes
    }
    # A lost message in the middle shows as a gap (held entries, then "repaired");
    # a lost tail only through heartbeats.  Either way a catch-up fetch must have
    # been answered with the lost entries: "served" counts entries re-sent that way.
    assert sum(g["fetches"] for g in grew.values()) > 0, f"nothing was fetched: {grew}"
    assert sum(g["served"] for g in grew.values()) > 0, f"no entry was re-sent: {grew}"
    for node in nodes:
        wrong = missing_on(node, acked)
        assert not wrong, f"{node.node_id} lacks {len(wrong)} acknowledged writes: {wrong[:5]}"


# ---------------------------------------------------------------------- (e) DEL vs late SET


def test_delete_racing_an_older_set_that_arrives_late_stays_deleted(procs):
    """C is paused while A's SET and then B's DEL of the same key go out.

    B deletes only once it holds A's SET (the DEL is causally after it), so
    the DEL's HLC is the larger one.  C receives both after SIGCONT, in
    whatever order its SUB socket delivers them or through catch-up: the key
    must end up deleted on all three.
    """
    a, b, c = nodes = procs.cluster(3)
    wait_mesh(nodes)
    with a.client() as ca, b.client() as cb:
        for i in range(20):  # several keys, so any delivery order is exercised somewhere
            ca.set(f"pre{i}", "seen-by-all")
        wait_converged(nodes)
        c.signal(signal.SIGSTOP)
        try:
            keys = [f"race{i}" for i in range(20)]
            for k in keys:
                assert ca.set(k, "old") is True
            wait_has(b, dict.fromkeys(keys, b"old"))
            assert cb.delete(*keys) == len(keys)
            assert ca.set("after", "x") is True  # A goes on writing meanwhile
        finally:
            c.signal(signal.SIGCONT)
    wait_converged(nodes)
    for node in nodes:
        wait_has(node, {**dict.fromkeys(keys), "after": b"x"}, timeout=1)


def test_delete_seen_before_an_older_set_from_a_silent_origin_stays_deleted(procs):
    """B and C get a DEL first and the older, concurrent SET only afterwards.

    A's SET is made while B and C are down (so A's PUB drops it), then A is
    paused before they come back: B and C become ready without it (A is
    silent: the startup timeout).  B deletes the key (it still holds the
    value every node had before), C applies that DEL, and only then is A
    resumed: its heartbeat shows B and C they lack its SET, they fetch it
    from A's log, and last-writer-wins must keep the later DEL.
    """
    a, b, c = nodes = procs.cluster(3)
    wait_mesh(nodes)
    with b.client() as cb:
        cb.set("k", "v0")
    wait_converged(nodes)
    b.kill()
    c.kill()
    with a.client() as ca:
        assert ca.set("k", "concurrent-old") is True
        a_stats = ca.stats()
    a_origin, set_seq = a_stats["origin"], a_stats["seq"]
    a.signal(signal.SIGSTOP)
    try:
        b.start(wait=False)
        c.start(wait=False)
        b.wait_ready()
        c.wait_ready()
        with b.client() as cb:
            assert cb.get("k") == b"v0"
            assert cb.delete("k") == 1
        wait_has(c, {"k": None})
        for node in (b, c):
            seen = stats_of(node)["vv"].get(a_origin, 0)
            assert seen < set_seq, f"{node.node_id} got A's SET before A came back"
    finally:
        a.signal(signal.SIGCONT)
    stats = wait_converged(nodes)
    assert all(s["vv"][a_origin] >= set_seq for s in stats), "A's SET never reached B and C"
    for node in nodes:
        wait_has(node, {"k": None}, timeout=1)


# ---------------------------------------------------------------------- (f) full sync


def test_node_on_an_empty_data_dir_gets_a_full_sync_with_tombstones(procs):
    n1, n2, n3 = nodes = procs.cluster(3)
    wait_mesh(nodes)
    expected: dict[str, bytes | None] = {}
    with n1.client(timeout=10) as c1, n2.client(timeout=10) as c2:
        for chunk in range(6):  # three snapshot chunks (FETCH_ENTRIES is 16,384)
            batch = {f"f{chunk}:{i}": f"v{chunk}:{i}".encode() for i in range(7000)}
            assert c1.mset(batch) is True
            expected.update(batch)
        wait_converged(nodes)
        gone = [f"f{chunk}:{i}" for chunk in range(6) for i in range(0, 7000, 10)]
        assert c2.delete(*gone) == len(gone)
        expected.update(dict.fromkeys(gone))
        wait_converged(nodes)
        old_origin = stats_of(n3)["origin"]
        n3.kill()
        shutil.rmtree(n3.data_dir)
        n3.data_dir.mkdir()
        more = {f"down:{i}": b"while n3 was gone" for i in range(300)}
        assert c1.mset(more) is True
        expected.update(more)
        assert c2.delete("f0:1", "f0:2") == 2  # tombstones made while it was gone
        expected.update({"f0:1": None, "f0:2": None})
    n3.start()
    wrong = missing_on(n3, expected)  # type: ignore[arg-type]
    assert not wrong, f"n3 ready without {len(wrong)} expected values, e.g. {wrong[:5]}"
    stats = stats_of(n3)
    assert stats["origin"] != old_origin, "an empty data folder must be a new incarnation"
    assert stats["replication"]["full_syncs"] >= 1, stats["replication"]
    # The older DELs' tombstones were collected once every member had them (n3
    # included, before it died); the two made while it was gone were kept for
    # it, so they came in the snapshot (and may be collected since: stable)
    held = stats["tombstones"] + stats["collected"]
    assert held >= 2, "tombstones did not travel in the snapshot"
    # the chunks after the first were read while n3 applied the one before
    assert sum(stats_of(n)["replication"]["prepared_used"] for n in (n1, n2)) >= 2
    # its snapshot was written from the chunks' bytes as they came (mesh.core.snapimage)
    [snap] = (n3.data_dir / "snapshots").glob("*.snap")
    assert snap.read_bytes()[4:8] == b"\x00\x02\x00\x02", "not from the chunks' bytes"
    wait_converged(nodes)
    # the state the full sync produced survives a crash: the snapshot kept its vv and floor
    n3.kill()
    n3.start()
    wrong = missing_on(n3, expected)  # type: ignore[arg-type]
    assert not wrong, f"n3 lost {len(wrong)} values over a restart, e.g. {wrong[:5]}"
    again = stats_of(n3)
    assert again["origin"] == stats["origin"]
    assert again["replication"]["full_syncs"] == 0, "the synced state was not kept on disk"
    wait_converged(nodes)


def test_node_behind_compacted_logs_gets_a_full_sync(procs):
    """Peers snapshot and drop their old log while n3 is down: it must take a snapshot.

    n3 keeps its data folder, but what it lacks is below its peers' log
    floors, so their answer to its fetch is "need full": it streams a
    snapshot (tombstones included) over its stale data, then the tail.
    """
    compacting = ["--segment-mib", "1", "--retention-mib", "0", "--snapshot-every", "2000"]
    n1, n2, n3 = nodes = procs.cluster(3, extra=compacting)
    wait_mesh(nodes)
    expected: dict[str, bytes | None] = {}
    pad = b"p" * 1000
    with n1.client(timeout=10) as c1, n2.client(timeout=10) as c2:
        first = {f"old:{i}": b"1" for i in range(1000)}
        assert c1.mset(first) is True
        expected.update(first)
        wait_converged(nodes)
        n3.kill()
        for chunk in range(6):
            for c, name in ((c1, "a"), (c2, "b")):
                batch = {f"{name}:{chunk}:{i}": pad for i in range(1000)}
                assert c.mset(batch) is True
                expected.update(batch)
        gone = [f"old:{i}" for i in range(0, 1000, 5)]
        assert c2.delete(*gone) == len(gone)
        expected.update(dict.fromkeys(gone))
        for c in (c1, c2):
            log_ = c.stats()["log"]
            assert log_["first_offset"] > 0, f"no compaction happened: {log_}"
    n3.start()
    wrong = missing_on(n3, expected)  # type: ignore[arg-type]
    assert not wrong, f"n3 ready without {len(wrong)} expected values, e.g. {wrong[:5]}"
    assert stats_of(n3)["replication"]["full_syncs"] >= 1
    with n3.client() as c3:
        assert c3.set("from-n3", "after the sync") is True
    expected["from-n3"] = b"after the sync"
    wait_converged(nodes)
    for node in nodes:
        assert not missing_on(node, expected), node.node_id  # type: ignore[arg-type]


def test_seed_node_on_an_empty_data_dir_rejoins(procs):
    """The first node names no peer (the others named it); it loses its disk.

    Restarted with the same command line, it has neither data nor
    ``peers.json``.  Its peers still list it and connect to it, so it must
    end up with their data (a full sync), not stay an empty island that
    says it is ready.
    """
    n1, n2, n3 = nodes = procs.cluster(3)
    wait_mesh(nodes)
    with n2.client() as c2:
        data = {f"k{i}": b"v" for i in range(100)}
        assert c2.mset(data) is True
    wait_converged(nodes)
    n1.kill()
    shutil.rmtree(n1.data_dir)
    n1.data_dir.mkdir()
    n1.start()
    wait_converged(nodes, timeout=5)  # a healthy full sync of 100 keys takes well under 1 s
    assert not missing_on(n1, data)
    assert stats_of(n1)["replication"]["full_syncs"] >= 1


# ---------------------------------------------------------------------- (g) TTLs


def deadline_bounds(client: Client, key: str) -> tuple[float, float]:
    """The absolute deadline (wall ms) implied by one PTTL read, as a closed interval."""
    before = time.time() * 1000
    left = client.pttl(key)
    after = time.time() * 1000
    assert left > 0, f"{key}: pttl {left}"
    return before + left - 1, after + left + 1


def test_ttl_deadlines_are_equal_everywhere_and_expire_everywhere(procs):
    nodes = procs.cluster(3)
    wait_mesh(nodes)
    ttl_ms = 2500
    clients = [n.client() for n in nodes]
    try:
        written: dict[str, tuple[float, float]] = {}
        for i, c in enumerate(clients):
            key = f"t{i}"
            start = time.time() * 1000
            assert c.set(key, f"via n{i + 1}", px=ttl_ms) is True
            written[key] = (start + ttl_ms, time.time() * 1000 + ttl_ms)
        # a TTL given later, through another node than the SET
        assert clients[0].set("e", "no ttl yet") is True
        wait_has(nodes[1], {"e": b"no ttl yet"})
        start = time.time() * 1000
        assert clients[1].pexpire("e", ttl_ms) is True
        written["e"] = (start + ttl_ms, time.time() * 1000 + ttl_ms)
        # a TTL removed through another node
        assert clients[2].set("p", "kept", px=ttl_ms) is True
        wait_has(nodes[0], {"p": b"kept"})
        assert clients[0].persist("p") is True
        wait_converged(nodes)
        for key, (low, high) in written.items():
            bounds = [deadline_bounds(c, key) for c in clients]
            lo, hi = max(b[0] for b in bounds), min(b[1] for b in bounds)
            assert lo <= hi, f"{key}: no single deadline fits the reads {bounds}"
            assert low - 1 <= hi and lo <= high + 1, f"{key}: {bounds} vs written {low}..{high}"
            widths = [b[1] - b[0] for b in bounds]
            assert max(widths) < 50, f"{key}: reads too slow to judge: {bounds}"
        assert [c.pttl("p") for c in clients] == [-1, -1, -1]
        last = max(high for _, high in written.values())
        wait_for(
            lambda: all(c.mget(list(written)) == [None] * len(written) for c in clients),
            (last - time.time() * 1000) / 1000 + 2,
            "every TTL key to expire on every node",
        )
        assert time.time() * 1000 >= min(low for low, _ in written.values())
        assert [c.get("p") for c in clients] == [b"kept"] * 3
        stats = wait_converged(nodes)
        assert all(s["keys"] == 1 for s in stats), [s["keys"] for s in stats]  # only "p"
    finally:
        for c in clients:
            c.close()


# ---------------------------------------------------------------------- (h) write acks


def test_write_acknowledgement_levels(procs):
    """w=1, 2, 3, quorum and all with three nodes up, then with n3 paused.

    A write that misses its level fails with WriteNotAcknowledged saying how
    many nodes had it, but is not undone: it stays applied and replicates.
    """
    n1, n2, n3 = nodes = procs.cluster(3, extra=["--ack-timeout-ms", "500"])
    wait_mesh(nodes)
    with n1.client() as c1, n2.client() as c2:
        for w in (1, 2, 3, "quorum", "all"):
            assert set_w(c1, f"up:{w}", b"1", w) is True
        assert set_w(c2, "up:n2", b"1", "all") is True
        assert c1._call("DEL", "up:1", {"w": "all"}) == 1
        n3.signal(signal.SIGSTOP)
        try:
            with pytest.raises(WriteNotAcknowledged) as failed:
                set_w(c1, "down:all", b"2", "all")
            assert "logged on 2 of the 3" in str(failed.value), str(failed.value)
            with pytest.raises(WriteNotAcknowledged, match="logged on 2 of the 3"):
                set_w(c2, "down:3", b"2", 3)
            assert set_w(c1, "down:quorum", b"2", "quorum") is True
            assert set_w(c1, "down:2", b"2", 2) is True
            assert set_w(c1, "down:1", b"2", 1) is True
            assert c1.set("down:default", "2") is True
            # not acknowledged is not undone: the write stays applied and replicated
            assert c1.get("down:all") == b"2"
            wait_has(n2, {"down:all": b"2", "down:3": b"2"})
        finally:
            n3.signal(signal.SIGCONT)
        wait_converged(nodes)
        wait_has(n3, {"down:all": b"2", "down:3": b"2", "down:quorum": b"2"}, timeout=1)
        assert set_w(c1, "back:all", b"3", "all") is True


def test_a_write_waiting_for_acks_in_a_bundle_is_answered_on_its_own(procs):
    """A balancer's bundle: the reads and w=1 writes come back bundled at once; a
    w=all write is held for its acks and then answered alone, with its envelope."""
    n1, n2 = nodes = procs.cluster(2, extra=["--ack-timeout-ms", "2000"])
    wait_mesh(nodes)
    with n1.client() as c1:
        assert c1.health()["bundle_bytes"] > 0
        c1.set("there", b"v0")
    messages = [
        [b"a", wire.encode_request(1, "SET", "held", b"v1", {"w": "all"})],
        [b"b", wire.encode_request(2, "GET", "there")],
        [b"c", wire.encode_request(3, "SET", "quick", b"v3")],
    ]
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(n1.endpoint)
        sock.send_multipart(envelope.pack_bundle(messages))
        got = []
        while len(got) < 2 and sock.poll(5000):
            got.append(sock.recv_multipart())
    assert len(got) == 2, got
    bundled = next(m for m in got if m[0] == envelope.BUNDLE_MAGIC)
    alone = next(m for m in got if m[0] != envelope.BUNDLE_MAGIC)
    inner = envelope.unpack_bundle(bundled[1], 16)
    assert [(m[0], wire.decode_reply(m[1])) for m in inner] == [
        (b"b", (2, wire.OK, b"v0")),
        (b"c", (3, wire.OK, True)),
    ]
    assert alone[0] == b"a" and wire.decode_reply(alone[1]) == (1, wire.OK, True)
    wait_has(n2, {"held": b"v1", "quick": b"v3"})


# ---------------------------------------------------------------------- (i) late peer


def test_peer_down_when_the_others_start_is_picked_up_when_it_comes_up(procs):
    """Restart n1 and n2 while n3 stays down, then bring n3 back on its ports.

    Ports are picked by the OS, so a node cannot name a peer that never ran;
    what can be down at start is a peer known from ``peers.json``.  n1 and n2
    must become ready without it (startup timeout), keep serving, and pick n3
    up when it returns: n3 catches up, its writes reach them, and a w=all
    write on n1 counts it again.
    """
    n1, n2, n3 = nodes = procs.cluster(3, extra=["--ack-timeout-ms", "1000"])
    wait_mesh(nodes)
    with n1.client() as c1:
        c1.mset({f"before:{i}": b"1" for i in range(100)})
    wait_converged(nodes)
    for node in nodes:
        node.kill()
    started = time.monotonic()
    n1.start(wait=False)
    n2.start(wait=False)
    n1.wait_ready()
    n2.wait_ready()
    took = time.monotonic() - started
    assert took < 10, f"n1 and n2 took {took:.1f} s to be ready without n3"
    expected = {f"before:{i}": b"1" for i in range(100)}
    with n1.client() as c1, n2.client() as c2:
        c1.mset({f"n1:{i}": b"2" for i in range(100)})
        c2.mset({f"n2:{i}": b"2" for i in range(100)})
        with pytest.raises(WriteNotAcknowledged, match="logged on 2 of the 3"):
            set_w(c1, "n1:all", b"2", "all")  # n3 is still a member, just down
    expected.update({f"n1:{i}": b"2" for i in range(100)})
    expected.update({f"n2:{i}": b"2" for i in range(100)})
    expected["n1:all"] = b"2"
    n3.start()
    wait_mesh(nodes)
    wrong = missing_on(n3, expected)
    assert not wrong, f"n3 ready without {len(wrong)} writes, e.g. {wrong[:5]}"
    with n3.client() as c3:
        c3.mset({f"n3:{i}": b"3" for i in range(100)})
    expected.update({f"n3:{i}": b"3" for i in range(100)})
    wait_converged(nodes)
    for node in nodes:
        assert not missing_on(node, expected), node.node_id
    with n1.client() as c1:
        assert set_w(c1, "n1:all-again", b"4", "all") is True
