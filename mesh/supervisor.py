"""``pycache up``: start a local cluster as child processes and watch it.

Each child is started with its own session (so a terminal Ctrl-C reaches only
this supervisor, which then stops the children in order) and with
``PR_SET_PDEATHSIG`` so that no child outlives a supervisor that was killed.
A child that dies is reported, not restarted: the others keep running.  The
layout is written to ``<data-dir>/cluster.json`` so that a user or a script can
kill one process and start it again with its own ``argv``.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.client import Client
from mesh.datadir import write_atomically
from mesh.errors import PyCacheError, Timeout

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
STOP_GRACE_S = 10.0


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Child:
    """One process of the cluster: its role, id, command line and endpoints."""

    role: str
    id: str
    argv: list[str]
    endpoints: dict[str, str]
    process: subprocess.Popen | None = field(default=None, repr=False)

    def describe(self) -> dict:
        """The cluster.json entry for this child."""
        pid = self.process.pid if self.process else None
        return {
            "role": self.role,
            "id": self.id,
            "pid": pid,
            "argv": self.argv,
            "endpoints": self.endpoints,
        }


class Cluster:
    """A set of local node processes under one data folder.

    With fixed ports every node names all the others as peers and all start
    at once.  With ``api_port=0`` the OS picks every port, so the nodes start
    one after the other, each naming the endpoints the earlier ones bound
    (they learn the later ones by HELLO); their ``argv`` in cluster.json is
    then pinned to the bound ports, so a restart comes back on them.
    """

    def __init__(
        self,
        data_dir: str,
        *,
        nodes: int = 3,
        host: str = "127.0.0.1",
        api_port: int = 7001,
        repl_port: int = 7101,
        pub_port: int = 7201,
        fsync: str = "always",
    ) -> None:
        if not 1 <= nodes <= 64:
            raise PyCacheError(f"--nodes must be in 1..64, not {nodes}")
        self.data_dir = Path(data_dir).resolve()
        self.fixed_ports = bool(api_port)
        ports = [(api_port, repl_port, pub_port)] * nodes
        if self.fixed_ports:
            ports = [(api_port + i, repl_port + i, pub_port + i) for i in range(nodes)]
        self.children = [self._node(i + 1, host, *ports[i], fsync) for i in range(nodes)]
        if self.fixed_ports:
            for child in self.children:
                others = [c.endpoints["repl"] for c in self.children if c is not child]
                child.argv += ["--peers", ",".join(others)]
        self._stop = threading.Event()

    def _node(self, index: int, host: str, api: int, repl: int, pub: int, fsync: str) -> Child:
        node_id = f"n{index}"
        ends = {
            name: f"tcp://{host}:{port if self.fixed_ports else '*'}"
            for name, port in (("api", api), ("repl", repl), ("pub", pub))
        }
        argv = [
            sys.executable,
            "-m",
            "mesh",
            "node",
            "--id",
            node_id,
            "--data-dir",
            str(self.data_dir / node_id),
            "--api",
            ends["api"],
            "--repl",
            ends["repl"],
            "--pub",
            ends["pub"],
            "--fsync",
            fsync,
        ]
        return Child("node", node_id, argv, ends)

    def start(self, timeout: float = 60.0) -> None:
        """Start every child, wait until all are ready, write cluster.json."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        started: list[Child] = []
        for child in self.children:
            if not self.fixed_ports and started:
                child.argv += ["--peers", ",".join(c.endpoints["repl"] for c in started)]
            self._spawn(child)
            if not self.fixed_ports:
                self._wait_ready(child, deadline)
            started.append(child)
        for child in self.children:
            self._wait_ready(child, deadline)
        self.write_layout()

    def _spawn(self, child: Child) -> None:
        status = self.data_dir / child.id / "node.json"
        status.unlink(missing_ok=True)
        child.process = subprocess.Popen(
            child.argv, start_new_session=True, preexec_fn=_die_with_parent
        )

    def write_layout(self) -> None:
        """Write ``<data-dir>/cluster.json`` (see the module docstring)."""
        layout = {"processes": [child.describe() for child in self.children]}
        write_atomically(self.data_dir / "cluster.json", json.dumps(layout, indent=2).encode())

    def _wait_ready(self, child: Child, deadline: float) -> None:
        """Wait for ``state: ready`` in the child's node.json and a PING answer.

        Pins ``*`` endpoints in the child's argv to the ports it bound.
        """
        status = self.data_dir / child.id / "node.json"
        while True:
            try:
                info = json.loads(status.read_text())
                if info["pid"] == child.process.pid and info["state"] == "ready":  # type: ignore[union-attr]
                    break
            except (OSError, ValueError, KeyError):
                pass  # not written yet
            self._check_deadline(child, deadline)
            time.sleep(0.05)
        for name in ("api", "repl", "pub"):
            flag = child.argv.index(f"--{name}") + 1
            child.argv[flag] = child.endpoints[name] = str(info[name])
        with Client(child.endpoints["api"], timeout=0.5) as client:
            while True:
                try:
                    client.ping()
                    return
                except Timeout:
                    self._check_deadline(child, deadline)

    @staticmethod
    def _check_deadline(child: Child, deadline: float) -> None:
        if child.process is not None and child.process.poll() is not None:
            raise PyCacheError(f"{child.id} exited with code {child.process.returncode}")
        if time.monotonic() > deadline:
            raise Timeout(f"{child.id} was not ready in time")

    def stop(self) -> None:
        """SIGTERM every live child, then SIGKILL what is left after a grace period."""
        live = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in live:
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in live:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def run(self, ready_timeout: float, echo: Callable[[str], None]) -> int:
        """Start, report endpoints, watch until a signal; return the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        try:
            self.start(ready_timeout)
            echo(f"PyCache is up ({len(self.children)} node(s)); data in {self.data_dir}")
            for child in self.children:
                endpoints = ", ".join(f"{k} {v}" for k, v in child.endpoints.items())
                pid = child.process.pid  # type: ignore[union-attr]
                echo(f"  {child.role} {child.id}: pid {pid}, {endpoints}")
            echo(f"layout: {self.data_dir / 'cluster.json'}; Ctrl-C stops everything")
            self._watch(echo)
            return 0
        finally:
            self.stop()
            echo("stopped")

    def _watch(self, echo: Callable[[str], None]) -> None:
        reported: set[str] = set()
        while not self._stop.wait(0.2):
            for child in self.children:
                code = child.process.poll() if child.process else None
                if code is not None and child.id not in reported:
                    reported.add(child.id)
                    echo(f"{child.role} {child.id} exited with code {code}; not restarted")
