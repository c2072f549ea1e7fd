"""Network partitions between real node processes, in network namespaces.

Three hosts on one bridge (:mod:`tests.netns`), a ``pycache node`` in each, and
a client agent in each host's namespace (the test process itself opens no
socket into the namespaces).  Host 3 is cut off while both sides take writes:
keys unique to each side, the same keys on both sides (one side after the
other in real time, and concurrently), overwrites and deletes of keys written
before the cut.  Then the cut is healed and the checks are Jepsen's:

- every node converges: equal digests, equal version vectors, the same value
  for every key read, and no extra keys;
- every acknowledged write is in its origin's log, and every key holds, on
  every node, the write with the highest ``(hlc, origin)`` among all the
  nodes' logs (last-writer-wins), which is one of the acknowledged writes;
- of writes made one after the other in real time (all hosts share one
  clock), the later one wins, so the cut-off node's acknowledged writes
  survive everywhere unless a later write replaced them.

Faults: the switch port of host 3 goes down (silent drop both ways);
nftables inside host 3 drops what arrives from the others (it hears nothing)
or what leaves for them (it says nothing), or answers both ways with TCP
resets (connections break; what is published meanwhile is lost and must be
fetched).  And host 3 loses power while unplugged: its kernel forgets every
connection without a packet going out, then it reboots with its disk.

Needs root and iproute2 (nftables for the one-way cuts): CI runs these as root
after ``.ci/run`` installs them; elsewhere they are skipped with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mesh.core.mutation import Mutation
from mesh.roles.trust import keygen
from mesh.storage.log import Log
from tests.conftest import NodeProcess, Processes, wait_for
from tests.netns import Agent, Network, nft_command, sweep_stale, unavailable_reason

pytestmark = [pytest.mark.processes, pytest.mark.slow]

HOSTS = 3
CUT = 3  # the host that is cut off
API_PORT, REPL_PORT, PUB_PORT = 7001, 7101, 7201  # fixed: the namespaces are ours
PARTITION_S = 2.5  # longer than the fetch timeout, the startup timeout and many heartbeats
CONVERGE_S = 15.0
ROUND_GAP_S = 0.02  # between rounds, so later rounds get later wall-clock milliseconds


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def namespaces_usable() -> None:
    """Skip when namespaces cannot be made; sweep those left by dead runs (once)."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    sweep_stale()


@pytest.fixture
def net(namespaces_usable: None) -> Iterator[Network]:
    """Three hosts on a bridge, deleted at teardown (also when the test fails)."""
    network = Network(HOSTS).create()
    try:
        yield network
    finally:
        network.destroy()


class NetnsNode(NodeProcess):
    """A node process inside host ``index``'s namespace, on that host's address."""

    def __init__(self, net: Network, index: int, data_dir: Path, keys: Path) -> None:
        # The api listens on the host's address, beyond loopback: the agents in
        # the namespaces are its clients, with no credentials (--insecure); the
        # peer plane has its keys.
        super().__init__(data_dir, f"n{index}", ["--insecure"], keys)
        self.net, self.index = net, index
        address = net.address(index)
        self.api = f"tcp://{address}:{API_PORT}"
        self.repl = f"tcp://{address}:{REPL_PORT}"
        self.pub = f"tcp://{address}:{PUB_PORT}"

    @property
    def argv(self) -> list[str]:
        return self.net.exec_argv(self.index, super().argv)


class Cluster:
    """The nodes and agents; index ``i`` (1-based) is host ``i``."""

    def __init__(self, net: Network, nodes: list[NetnsNode], agents: list[Agent]) -> None:
        self.net, self.nodes, self.agents = net, nodes, agents

    def node(self, i: int) -> NetnsNode:
        return self.nodes[i - 1]

    def agent(self, i: int) -> Agent:
        return self.agents[i - 1]

    def on_all(self, op: str, **args: Any) -> list[Any]:
        """Run ``op`` on every host at once; the answers in host order."""
        for agent in self.agents:
            agent.send(op, **args)
        return [agent.receive() for agent in self.agents]

    def stats(self) -> list[dict]:
        return self.on_all("stats")

    def mget(self, i: int, keys: list[str]) -> list[str | None]:
        return self.agent(i).call("mget", keys=keys)

    def describe(self) -> str:
        """Each node's replication state and the end of its stderr, for failure messages."""
        lines = []
        try:
            for s in self.stats():
                keep = ("node_id", "state", "digest", "keys", "tombstones", "vv", "lag")
                lines.append(repr({k: s.get(k) for k in keep} | {"repl": s.get("replication")}))
        except Exception as exc:
            lines.append(f"(STATS failed: {exc})")
        for node in self.nodes:
            lines.append(f"--- {node.node_id} stderr (end):\n{node.stderr()[-1500:]}")
            lines.append(f"--- TCP sockets in {self.net.host(node.index)}:")
            lines.append(self.net.sockets(node.index))
        return "\n".join(lines)


@pytest.fixture
def cluster(net: Network, procs: Processes, tmp_path: Path) -> Iterator[Cluster]:
    """A node and an agent in each host; all killed at teardown."""
    keys = tmp_path / "keys"
    keygen(keys, [f"n{i}" for i in range(1, HOSTS + 1)])
    nodes = [NetnsNode(net, i, tmp_path / f"n{i}", keys) for i in range(1, HOSTS + 1)]
    for node in nodes:
        node.peers = [other.repl for other in nodes if other is not node]
        procs.nodes.append(node)  # killed by the procs fixture too
    agents: list[Agent] = []
    try:
        for node in nodes:
            node.start(wait=False)
        for node in nodes:
            node.wait_ready()
        for node in nodes:
            log_path = tmp_path / f"agent{node.index}.stderr.log"
            agents.append(Agent(net, node.index, node.api, log_path))
        for agent in agents:
            assert agent.call("ping") == "PONG"
        yield Cluster(net, nodes, agents)
    finally:
        for agent in agents:
            agent.close()
        for node in nodes:
            node.kill()


# --------------------------------------------------------------------------- history


@dataclass(frozen=True)
class Write:
    """One write a client asked for: a SET (``value``) or a DEL (``value`` None)."""

    key: str
    value: str | None
    node: int
    round: int
    outcome: str  # ok, fail (refused), unknown (timed out: may or may not have applied)
    detail: Any


class History:
    """Every write asked for, with its outcome, round by round."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.writes: list[Write] = []
        self.rounds = 0

    def round(self, plan: dict[int, list[tuple[str, str]]]) -> None:
        """Run one round: ``{host: [("set" | "del", key), ...]}``, hosts concurrently.

        Each host's writes run in order; the round ends when every host has
        answered, and the next one starts later in real time.
        """
        self.rounds += 1
        r = self.rounds
        ops: dict[int, list[list]] = {}
        for i, items in plan.items():
            ops[i] = [
                ["set", key, f"{key}|n{i}|r{r}"] if kind == "set" else ["del", key]
                for kind, key in items
            ]
        for i, items in ops.items():
            self.cluster.agent(i).send("write", ops=items)
        for i, items in ops.items():
            outcomes = self.cluster.agent(i).receive()
            for item, (outcome, detail) in zip(items, outcomes, strict=True):
                if item[0] == "del" and outcome == "ok" and detail == 0:
                    continue  # the key did not exist there: no write happened
                value = item[2] if item[0] == "set" else None
                self.writes.append(Write(item[1], value, i, r, outcome, detail))
        time.sleep(ROUND_GAP_S)

    def acked(self) -> list[Write]:
        return [w for w in self.writes if w.outcome == "ok"]

    def keys(self) -> list[str]:
        return sorted({w.key for w in self.writes})

    def expected(self) -> dict[str, set[str | None]]:
        """Per key: the values it may end with (the acknowledged writes of its last round).

        Only keys whose every write was acknowledged are listed.
        """
        out: dict[str, set[str | None]] = {}
        by_key: dict[str, list[Write]] = {}
        for w in self.writes:
            by_key.setdefault(w.key, []).append(w)
        for key, writes in by_key.items():
            if all(w.outcome == "ok" for w in writes):
                last = max(w.round for w in writes)
                out[key] = {w.value for w in writes if w.round == last}
        return out


def logged(data_dir: Path) -> list[Mutation]:
    """Every mutation in a stopped node's latest snapshot and log."""
    with Log(data_dir) as log:
        found = log.load_snapshot()
        entries = list(found[1]) if found is not None else []
        entries += list(log.replay(log.first_offset()))
    return entries


# --------------------------------------------------------------------------- checks


def wait_converged(cluster: Cluster, timeout: float, after: str = "the heal") -> list[dict]:
    """Poll STATS until every node is ready with equal digests and version vectors."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = cluster.stats()
        if (
            all(s["state"] == "ready" for s in stats)
            and len({s["digest"] for s in stats}) == 1
            and all(s["vv"] == stats[0]["vv"] for s in stats)
        ):
            return stats
        time.sleep(0.1)
    pytest.fail(f"the nodes did not converge within {timeout} s of {after}:\n{cluster.describe()}")


def read_everywhere(cluster: Cluster, keys: list[str]) -> dict[str, list[str | None]]:
    """``{key: [value on host 1, host 2, host 3]}``."""
    per_host = [cluster.mget(i, keys) for i in range(1, HOSTS + 1)]
    return {key: [values[n] for values in per_host] for n, key in enumerate(keys)}


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    name: str
    cut: Callable[[Network], None]
    heal: Callable[[Network], None]
    majority_blind: bool  # hosts 1 and 2 cannot see host 3's writes until the heal
    minority_blind: bool  # host 3 cannot see theirs
    repairs: bool = False  # what was published during the cut is lost: catch-up must fetch it


_NO_NFT = pytest.mark.skipif(
    nft_command() is None, reason="nftables cuts need `nft` (package nftables); .ci/run installs it"
)

FAULTS = [
    pytest.param(
        Fault("port-down", lambda n: n.port_down(CUT), lambda n: n.port_up(CUT), True, True),
        id="switch-port-down",
    ),
    pytest.param(
        Fault(
            "deaf",
            lambda n: n.drop(CUT, inbound=[1, 2]),
            lambda n: n.undrop(CUT),
            majority_blind=False,
            minority_blind=True,
        ),
        id="h3-drops-inbound",
        marks=_NO_NFT,
    ),
    pytest.param(
        Fault(
            "mute",
            lambda n: n.drop(CUT, outbound=[1, 2]),
            lambda n: n.undrop(CUT),
            majority_blind=True,
            minority_blind=False,
        ),
        id="h3-drops-outbound",
        marks=_NO_NFT,
    ),
    pytest.param(
        Fault(
            "reset",
            lambda n: n.drop(CUT, inbound=[1, 2], outbound=[1, 2], reset=True),
            lambda n: n.undrop(CUT),
            majority_blind=True,
            minority_blind=True,
            repairs=True,
        ),
        id="h3-resets-connections",
        marks=_NO_NFT,
    ),
]


def _keys(prefix: str, n: int) -> list[str]:
    return [f"{prefix}:{i:02d}" for i in range(n)]


def _sets(keys: list[str]) -> list[tuple[str, str]]:
    return [("set", k) for k in keys]


def _dels(keys: list[str]) -> list[tuple[str, str]]:
    return [("del", k) for k in keys]


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("fault", FAULTS)
def test_cut_off_host_converges_by_last_writer_wins(
    fault: Fault, net: Network, cluster: Cluster
) -> None:
    assert "default" not in net.routes(CUT), "a host must have no default route"
    history = History(cluster)

    # Round 1, before the cut: a baseline written on every node, replicated everywhere.
    base = _keys("base", 30)
    history.round({1: _sets(base[0:10]), 2: _sets(base[10:20]), 3: _sets(base[20:30])})
    wait_converged(cluster, CONVERGE_S)
    missing = {k: v for k, v in read_everywhere(cluster, base).items() if None in v}
    assert not missing, f"baseline not everywhere before the cut: {missing}"

    fault.cut(net)
    cut_at = time.monotonic()
    majority, minority = _keys("maj", 20), _keys("min", 20)
    first_maj, first_min = _keys("lww-a", 10), _keys("lww-b", 10)  # written twice, in order
    both = _keys("lww-c", 10)  # written on both sides in the same round
    # Round 2: both sides take writes.
    history.round(
        {
            1: _sets(majority[:10] + first_maj + both) + _dels(base[10:20]),
            2: _sets(majority[10:]),
            3: _sets(minority + first_min + both + base[0:5] + base[20:25]) + _dels(base[5:10]),
        }
    )
    # Round 3, later in real time: the other side writes the same keys again.
    history.round(
        {
            3: _sets(first_maj + base[15:20]),  # set after the majority's delete
            2: _sets(first_min) + _dels(base[20:25]),  # delete after the minority's set
        }
    )
    not_acked = [w for w in history.writes if w.outcome != "ok"]
    assert not not_acked, f"writes during the partition were not acknowledged: {not_acked}"

    # The majority keeps replicating between its two nodes during the cut.
    wait_for(
        lambda: all(
            len(set(values[:2])) == 1 and values[0] is not None
            for values in read_everywhere(cluster, majority).values()
        ),
        CONVERGE_S,
        "hosts 1 and 2 to replicate to each other during the partition",
    )
    # The cut is real: the blind side has seen none of the other side's writes.
    if fault.minority_blind:
        seen = [v for v in cluster.mget(CUT, majority) if v is not None]
        assert not seen, f"host {CUT} saw majority writes through the cut: {seen}"
    if fault.majority_blind:
        for i in (1, 2):
            seen = [v for v in cluster.mget(i, minority) if v is not None]
            assert not seen, f"host {i} saw host {CUT}'s writes through the cut: {seen}"

    time.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))
    before = {s["node_id"]: s["replication"] for s in cluster.stats()}
    fault.heal(net)
    after = converge_and_check(cluster, history)
    print(f"{fault.name}: converged {after['seconds']:.2f} s after the heal")
    if fault.repairs:
        # Each side lacked what the other published during the cut and fetched it.
        for side, servers in (("majority", ["n1", "n2"]), ("minority", [f"n{CUT}"])):
            served = sum(after[n]["served"] - before[n]["served"] for n in servers)
            assert served > 0, f"the {side} served no catch-up after the heal: {after}"


def test_a_host_that_loses_power_while_cut_off_is_heard_again(
    net: Network, cluster: Cluster, tmp_path: Path
) -> None:
    """Host 3 is unplugged, loses power (its kernel forgets every TCP connection
    without a packet going out), reboots with its disk, is plugged back in and
    takes writes: the others must hear of them, as after any partition."""
    history = History(cluster)
    base = _keys("base", 30)
    history.round({1: _sets(base[0:10]), 2: _sets(base[10:20]), 3: _sets(base[20:30])})
    wait_converged(cluster, CONVERGE_S)

    net.port_down(CUT)
    cluster.node(CUT).kill()
    cluster.agent(CUT).close()
    net.remove_host(CUT)
    history.round({1: _sets(_keys("maj", 10)), 2: _sets(_keys("maj2", 10))})
    net.add_host(CUT)
    cluster.node(CUT).start()  # same data folder: a reboot, not a new node
    agent = Agent(net, CUT, cluster.node(CUT).api, tmp_path / f"agent{CUT}.again.stderr.log")
    cluster.agents[CUT - 1] = agent
    assert agent.call("ping") == "PONG"
    # It is the one that connects out to the others, so it catches up with them...
    history.round({3: _sets(_keys("min", 20) + base[0:5]) + _dels(base[5:10])})
    not_acked = [w for w in history.writes if w.outcome != "ok"]
    assert not not_acked, f"writes were not acknowledged: {not_acked}"
    # ...and the others must hear of what it writes now.
    converge_and_check(cluster, history, f"host {CUT}'s reboot and its writes")


# --------------------------------------------------------------------------- the checks


def converge_and_check(
    cluster: Cluster, history: History, after: str = "the heal"
) -> dict[str, Any]:
    """After a heal: converge, then check every key against the history and the logs.

    Stops the nodes (cleanly: they must exit 0) to read their logs.  Returns
    each node's replication counters after convergence, and ``seconds``: how
    long convergence took.
    """
    started = time.monotonic()
    stats = wait_converged(cluster, CONVERGE_S, after)
    seconds = time.monotonic() - started
    time.sleep(0.3)  # quiet: nothing more arrives
    again = cluster.stats()
    assert [s["digest"] for s in again] == [s["digest"] for s in stats], cluster.describe()

    keys = history.keys()
    final = read_everywhere(cluster, keys)
    diverged = {k: v for k, v in final.items() if len(set(v)) != 1}
    assert not diverged, f"equal digests but different values: {diverged}"
    value = {k: v[0] for k, v in final.items()}
    live = sum(1 for v in value.values() if v is not None)
    assert [s["keys"] for s in again] == [live] * HOSTS, (
        f"{live} live keys expected on every node, STATS say {[s['keys'] for s in again]}"
    )

    # Last-writer-wins in real time: the later round's write is the one left.
    expected = history.expected()
    wrong = {k: (value[k], sorted(e, key=str)) for k, e in expected.items() if value[k] not in e}
    assert not wrong, f"keys not holding their last write (key: (value, expected)): {wrong}"
    lost = [
        w
        for w in history.acked()
        if w.node == CUT and expected.get(w.key) == {w.value} and value[w.key] != w.value
    ]
    assert not lost, f"the cut-off node's acknowledged writes were lost: {lost}"

    # Stop cleanly, then compare with the logs: the highest (hlc, origin) wins.
    origins = {s["node_id"]: s["origin"] for s in again}
    for node in cluster.nodes:
        assert node.stop() == 0, f"{node.node_id} did not stop cleanly:\n{node.stderr()[-2000:]}"
    logs = {node.node_id: logged(node.data_dir) for node in cluster.nodes}
    for w in history.acked():
        origin = origins[f"n{w.node}"]
        mine = [
            m
            for m in logs[f"n{w.node}"]
            if m.origin == origin and m.key == w.key and _text(m.value) == w.value
        ]
        assert mine, f"acknowledged {w} is not in its origin's log"
    by_key: dict[str, Mutation] = {}
    for entries in logs.values():
        for m in entries:
            if m.key not in by_key or m.version() > by_key[m.key].version():
                by_key[m.key] = m
    acked_values = {(origins[f"n{w.node}"], w.key, w.value) for w in history.acked()}
    for key in keys:
        winner = by_key.get(key)
        assert winner is not None, f"{key} is in no log"
        assert _text(winner.value) == value[key], (
            f"{key} holds {value[key]!r} on every node, but the highest version in the logs "
            f"is {winner} ({_text(winner.value)!r})"
        )
        assert (winner.origin, key, _text(winner.value)) in acked_values, (
            f"{key}: the winning version {winner} is not an acknowledged write"
        )
    return {s["node_id"]: s["replication"] for s in again} | {"seconds": seconds}


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "surrogateescape")
