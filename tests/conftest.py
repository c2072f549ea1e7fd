"""Fixtures that start real PyCache processes on OS-picked loopback ports.

Every process is started in its own session with ``PR_SET_PDEATHSIG`` and is
tracked by the ``procs`` fixture, which kills every process group it started
when the test ends, also when it fails.  Waits poll with a deadline and say
what they saw when they give up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mesh.client import Client
from mesh.roles.launcher import die_with_parent


def wait_for(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # keep polling; report the last failure
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; last saw {last!r}")


class NodeProcess:
    """A ``pycache node`` child: start, kill, pause, stop, restart on the same port."""

    def __init__(self, data_dir: Path, node_id: str = "n1", extra: list[str] | None = None):
        self.data_dir = data_dir
        self.node_id = node_id
        self.extra = extra or []
        self.api = "tcp://127.0.0.1:*"
        self.repl = "tcp://127.0.0.1:*"
        self.pub = "tcp://127.0.0.1:*"
        self.peers: list[str] = []
        self.process: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.stderr.log"

    @property
    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mesh",
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
            *self.extra,
        ]

    def start(self, wait: bool = True) -> NodeProcess:
        status = self.data_dir / "node.json"
        if status.exists():
            status.unlink()
        with open(self.log_path, "ab") as err:
            self.process = subprocess.Popen(
                self.argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        status = self.data_dir / "node.json"

        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"node exited with {self.process.returncode}: {self.stderr()[-2000:]}")
            if not status.exists():
                return False
            info = json.loads(status.read_text())
            if info["pid"] != self.process.pid or info["state"] != "ready":
                return False
            # keep the OS-picked ports across restarts
            self.api, self.repl, self.pub = info["api"], info["repl"], info["pub"]
            return True

        wait_for(ready, timeout, f"node {self.node_id} to be ready")

    @property
    def endpoint(self) -> str:
        return self.api

    def client(self, timeout: float = 5.0) -> Client:
        return Client(self.endpoint, timeout=timeout)

    def signal(self, sig: int) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process and self.process.poll() is None:
            self.signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class BalancerProcess:
    """A ``pycache balancer`` child in front of some nodes; keeps its port on restart."""

    def __init__(self, folder: Path, nodes: list[NodeProcess], extra: list[str] | None = None):
        folder.mkdir(parents=True, exist_ok=True)
        self.status = folder / "balancer.json"
        self.log_path = folder / "balancer.stderr.log"
        self.nodes = nodes
        self.extra = extra or []
        self.front = "tcp://127.0.0.1:*"
        self.process: subprocess.Popen | None = None

    def start(self) -> BalancerProcess:
        self.status.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "mesh",
            "balancer",
            "--front",
            self.front,
            "--nodes",
            ",".join(n.endpoint for n in self.nodes),
            "--status-file",
            str(self.status),
            *self.extra,
        ]
        with open(self.log_path, "ab") as err:
            self.process = subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

        def bound() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                pytest.fail(f"balancer exited: {self.stderr()[-2000:]}")
            if not self.status.exists():
                return False
            info = json.loads(self.status.read_text())
            self.front = info["front"]
            return info["pid"] == self.process.pid

        wait_for(bound, 15, "the balancer to bind")
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
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stderr(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Processes:
    """Tracks every process a test starts and kills them all at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: list[NodeProcess] = []
        self.balancers: list[BalancerProcess] = []

    def node(
        self,
        node_id: str = "n1",
        extra: list[str] | None = None,
        start: bool = True,
        peers: list[str] | None = None,
    ) -> NodeProcess:
        proc = NodeProcess(self.tmp_path / node_id, node_id, extra)
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

    def cleanup(self) -> None:
        for proc in [*self.balancers, *self.nodes]:
            try:
                proc.kill()
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    """Start real processes with ``procs.node(...)``; all are killed at teardown."""
    tracker = Processes(tmp_path)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture
def node(procs: Processes) -> NodeProcess:
    """One running node on an OS-picked loopback port, fsync=always."""
    return procs.node()
