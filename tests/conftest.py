"""Fixtures that start real PyCache processes on OS-picked loopback ports.

Every process is started by :class:`mesh.roles.launcher.ChildProcess` (its
own session, ``PR_SET_PDEATHSIG``, stderr to a log file) and is tracked by the
``procs`` fixture, which kills every process it started when the test ends,
also when it fails, and then fails the test if one of them printed a
``Traceback`` (a process that died of a bug must not pass silently).  Waits
poll with a deadline and say what they saw when they give up.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest
import zmq
import zmq.auth

from mesh.client import Client
from mesh.core.errors import PyCacheError, Timeout
from mesh.roles import launcher
from mesh.roles.launcher import ChildExited, ChildProcess, mesh_argv
from mesh.roles.trust import curve_client, keygen, load_peer_keys

ANY = "tcp://127.0.0.1:*"
CONVERGE_S = 15.0
"""Deadline for convergence after a fault heals (the healthy case is asserted tighter)."""


def wait_for(
    condition: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.02,
    describe: Callable[[], object] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``.

    An exception raised by ``condition`` counts as "not yet" (and is reported
    as what was last seen); ``pytest.fail`` inside it fails at once.  On
    failure the message also holds ``describe()``, when given.
    """
    try:
        return launcher.wait_for(condition, timeout, what, interval, retry_on=Exception)
    except Timeout as exc:
        message = str(exc) if describe is None else f"{exc}\n{describe()}"
    pytest.fail(message)


@contextmanager
def failing_the_test() -> Iterator[None]:
    """Turn a launcher error (a child exited, a wait timed out) into a test failure."""
    try:
        yield
    except (ChildExited, Timeout) as exc:
        message = str(exc)
    else:
        return
    pytest.fail(message)


class NodeProcess:
    """A ``pycache node`` child: start, kill, pause, stop, restart on the same port."""

    def __init__(
        self,
        data_dir: Path,
        node_id: str = "n1",
        extra: list[str] | None = None,
        keys: Path | None = None,
    ):
        self.data_dir = data_dir
        self.node_id = node_id
        self.extra = extra or []
        self.keys = keys
        self.api = ANY
        self.repl = ANY
        self.pub = ANY
        self.peers: list[str] = []
        self.log_path = data_dir.parent / f"{data_dir.name}.stderr.log"
        self.child = ChildProcess(f"node {node_id}", data_dir / "node.json", self.log_path)

    @property
    def argv(self) -> list[str]:
        return mesh_argv(
            "node",
            "--id",
            self.node_id,
            "--data-dir",
            str(self.data_dir),
            "--api",
            self.api,
            "--repl",
            self.repl,
            "--pub",
            self.pub,
            "--peers",
            ",".join(self.peers),
            *(["--keys", str(self.keys)] if self.keys else []),
            *self.extra,
        )

    @property
    def process(self) -> subprocess.Popen | None:
        return self.child.process

    def start(self, wait: bool = True) -> NodeProcess:
        self.child.start(self.argv)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        with failing_the_test():
            info = self.child.wait_status(lambda i: i.get("state") == "ready", timeout)
        # keep the OS-picked ports across restarts
        self.api, self.repl, self.pub = info["api"], info["repl"], info["pub"]

    @property
    def endpoint(self) -> str:
        return self.api

    def client(self, timeout: float = 5.0) -> Client:
        return Client(self.endpoint, timeout=timeout)

    def signal(self, sig: int) -> None:
        self.child.signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        self.child.kill()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        return self.child.stop(timeout)

    def stderr(self) -> str:
        return self.child.stderr()


class BalancerProcess:
    """A ``pycache balancer`` child in front of some nodes; keeps its port on restart."""

    def __init__(self, folder: Path, nodes: list[NodeProcess], extra: list[str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.status = folder / "balancer.json"
        self.log_path = folder / "balancer.stderr.log"
        self.nodes = nodes
        self.extra = extra or []
        self.front = ANY
        self.child = ChildProcess("balancer", self.status, self.log_path)

    @property
    def process(self) -> subprocess.Popen | None:
        return self.child.process

    def start(self) -> BalancerProcess:
        argv = mesh_argv(
            "balancer",
            "--front",
            self.front,
            "--nodes",
            ",".join(n.endpoint for n in self.nodes),
            "--status-file",
            str(self.status),
            *self.extra,
        )
        self.child.start(argv)
        with failing_the_test():
            self.front = self.child.wait_status(lambda i: "front" in i, 15)["front"]
        return self

    @property
    def endpoint(self) -> str:
        return self.front

    def client(self, timeout: float = 5.0) -> Client:
        return Client(self.front, timeout=timeout)

    def wait_ready(self, timeout: float = 10.0) -> None:
        with self.client(timeout=1) as c:
            wait_for(
                lambda: c.health()["state"] == "ready", timeout, "a ready node behind the balancer"
            )

    def kill(self) -> None:
        self.child.kill()

    def stderr(self) -> str:
        return self.child.stderr()


class Tracked(Protocol):
    """What :class:`Processes` needs of a process wrapper."""

    child: ChildProcess


class Processes:
    """Tracks every process a test starts, kills them all at teardown, reads their stderr."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.keys = tmp_path / "keys"
        self.sockets: list[zmq.Socket] = []
        self.nodes: list[NodeProcess] = []
        self.balancers: list[BalancerProcess] = []
        self.others: list[Tracked] = []
        self._may_crash: list[ChildProcess] = []

    def node(
        self,
        node_id: str = "n1",
        extra: list[str] | None = None,
        start: bool = True,
        peers: list[str] | None = None,
    ) -> NodeProcess:
        keys = None if "--insecure" in (extra or []) else self.member_keys(node_id)
        proc = NodeProcess(self.tmp_path / node_id, node_id, extra, keys)
        proc.peers = list(peers or [])
        self.nodes.append(proc)
        return proc.start() if start else proc

    def cluster(self, size: int = 3, extra: list[str] | None = None) -> list[NodeProcess]:
        """``size`` replicating nodes: each new one names the earlier ones as peers."""
        nodes: list[NodeProcess] = []
        for i in range(1, size + 1):
            nodes.append(self.node(f"n{i}", extra, peers=[n.repl for n in nodes]))
        return nodes

    def balancer(
        self, nodes: list[NodeProcess], extra: list[str] | None = None, name: str = "balancer"
    ) -> BalancerProcess:
        """A started balancer in front of ``nodes`` (ready: at least one node serves)."""
        proc = BalancerProcess(self.tmp_path / name, nodes, extra)
        self.balancers.append(proc)
        proc.start()
        proc.wait_ready()
        return proc

    def member_keys(self, *node_ids: str) -> Path:
        """The keys folder of this test's cluster, with a member key for each of ``node_ids``."""
        keygen(self.keys, list(node_ids))
        return self.keys

    def peer_socket(
        self, ctx: zmq.Context, kind: int, as_member: str | None = None, curve: bool = True
    ) -> zmq.Socket:
        """A raw socket onto the nodes' peer plane, closed at teardown: as member
        ``as_member`` (admitted, like a member with a bug), else as a stranger, with
        a key of no member (``curve``) or with no CURVE at all."""
        sock = ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        if as_member is not None:
            curve_client(sock, load_peer_keys(self.member_keys(as_member), as_member))
        elif curve:
            sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
            sock.curve_serverkey = zmq.auth.load_certificate(self.member_keys() / "server.key")[0]
        return sock

    def track(self, proc: Tracked) -> None:
        """Kill ``proc`` at teardown and check its stderr, like the processes started here."""
        self.others.append(proc)

    def expect_traceback(self, proc: Tracked) -> None:
        """Mark ``proc`` as expected to crash: a Traceback in its stderr fails nothing."""
        self._may_crash.append(proc.child)

    def _all(self) -> list[ChildProcess]:
        return [p.child for p in [*self.others, *self.balancers, *self.nodes]]

    def cleanup(self) -> None:
        for sock in self.sockets:
            sock.close(0)
        for child in self._all():
            try:
                child.kill()
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    def unexpected_tracebacks(self) -> list[str]:
        """For each process that printed a Traceback it was not expected to: who, and its stderr."""
        return [
            f"{child.name} printed a Traceback; its stderr ends:\n{child.stderr_tail(3000)}"
            for child in self._all()
            if child not in self._may_crash and "Traceback" in child.stderr()
        ]


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start real processes with ``procs.node(...)``; all are killed at teardown.

    The test then fails if any of them printed a ``Traceback`` on stderr
    (unless marked with :meth:`Processes.expect_traceback`).
    """
    tracker = Processes(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()
    crashed = tracker.unexpected_tracebacks()
    if crashed:
        pytest.fail("\n\n".join(crashed))


@pytest.fixture
def paused() -> Iterator[list[NodeProcess]]:
    """Nodes appended here get SIGCONT at teardown, so a failing test leaves none stopped."""
    stopped: list[NodeProcess] = []
    yield stopped
    for node in stopped:
        if node.process is not None and node.process.poll() is None:
            node.signal(signal.SIGCONT)


@pytest.fixture
def node(procs: Processes) -> NodeProcess:
    """One running node on an OS-picked loopback port, fsync=always."""
    return procs.node()


# ---------------------------------------------------------------------- convergence


def stats_of(node: NodeProcess) -> dict:
    """The node's STATS."""
    with node.client(timeout=2.0) as c:
        return c.stats()


def converged(nodes: Sequence[NodeProcess]) -> list[dict] | None:
    """Every node ready with the same digest, live keys and version vector; else None."""
    stats = [stats_of(n) for n in nodes]
    same = (
        all(s["state"] == "ready" for s in stats)
        and len({s["digest"] for s in stats}) == 1
        and len({s["keys"] for s in stats}) == 1
        and all(s["vv"] == stats[0]["vv"] for s in stats)
    )
    return stats if same else None


def convergence_summary(nodes: Sequence[NodeProcess]) -> list[tuple]:
    """What a failed convergence wait reports: per node its state, digest, keys, vv."""
    out = []
    for n in nodes:
        try:
            s = stats_of(n)
            out.append((n.node_id, s["state"], s["digest"], s["keys"], s["vv"], s["replication"]))
        except PyCacheError as exc:
            out.append((n.node_id, repr(exc)))
    return out


def wait_converged(nodes: Sequence[NodeProcess], timeout: float = CONVERGE_S) -> list[dict]:
    """Wait until every node is ready with equal digests, keys and version vectors."""
    return wait_for(
        lambda: converged(nodes),
        timeout,
        "every node ready with equal digests, keys and version vectors",
        describe=lambda: convergence_summary(nodes),
    )
