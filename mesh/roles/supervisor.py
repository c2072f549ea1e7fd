"""``pycache up``: start a local cluster as child processes and watch it.

Each child is started by :mod:`mesh.roles.launcher`: in its own session (so a
terminal Ctrl-C reaches only this supervisor, which then stops the children in
order) and with ``PR_SET_PDEATHSIG`` so that no child outlives a supervisor
that was killed.  The children share the supervisor's stdout, and their
stderr is copied to its stderr line by line (so that a child that exits
during the start is named with the last line it wrote: ``up`` then stops the
others and fails at once).  Once up, a child that exits is started again with
its own ``argv`` (its ports, its data folder: a node catches up as usual),
after a backoff (:mod:`mesh.roles.restarts`: 1 s, then 2, 4, ... 30 s, reset
once it ran 30 s), each restart printed; a clean stop restarts nothing.  The
layout (with the current pids) is written to ``<data-dir>/cluster.json``:
each process's role, id, pid, argv and endpoints, ``metrics`` (its
``/metrics`` URL) among them.  ``log_format`` (``--log-format``) is passed on
to every child.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mesh.core.errors import PyCacheError, Timeout
from mesh.roles.client import Client
from mesh.roles.config import DEFAULT_HOST, NodeConfig, Ports
from mesh.roles.launcher import STOP_GRACE_S, ChildExited, ChildProcess, mesh_argv, wait_for
from mesh.roles.restarts import Backoff
from mesh.roles.trust import keygen
from mesh.storage.datadir import write_atomically

log = logging.getLogger(__name__)

DEFAULT_PORTS = Ports()
#: How often the children are looked at once the cluster is up.
WATCH_S = 0.2


class _StartInterrupted(Exception):
    """SIGTERM or SIGINT arrived while ``up`` was starting its children."""


@dataclass
class Child:
    """One process of the cluster: its role, id, command line and endpoints."""

    role: str
    id: str
    argv: list[str]
    endpoints: dict[str, str]
    process: ChildProcess | None = field(default=None, repr=False)
    backoff: Backoff = field(default_factory=Backoff, repr=False)

    @property
    def name(self) -> str:
        """``node n2``, ``balancer``, ``edge``: how messages name it."""
        return self.role if self.id == self.role else f"{self.role} {self.id}"

    def exit_reason(self) -> str:
        """The last line the child wrote on stderr, without its ``error:`` prefix."""
        lines = self.process.stderr().strip().splitlines() if self.process else []
        return lines[-1].removeprefix("error: ").strip() if lines else ""

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
    """Local nodes, a balancer in front of them and an HTTP edge, under one folder.

    With fixed ports every node names all the others as peers and all start at
    once.  With ``Ports(0, 0, ...)`` the OS picks every port, so the nodes
    start one after the other, each naming the endpoints the earlier ones bound
    (they learn the later ones by HELLO); every ``argv`` in cluster.json is
    then pinned to the bound ports, so a restart comes back on them.
    """

    def __init__(
        self,
        data_dir: str,
        *,
        nodes: int = 3,
        host: str = DEFAULT_HOST,
        ports: Ports = DEFAULT_PORTS,
        fsync: str = NodeConfig.fsync,
        front_doors: bool = True,
        log_format: str = "text",
    ) -> None:
        if not 1 <= nodes <= 64:
            raise PyCacheError(f"--nodes must be in 1..64, not {nodes}")
        self.data_dir = Path(data_dir).resolve()
        self.keys = self.data_dir / "keys"
        self.host = host
        self.ports = ports
        self.fixed_ports = bool(ports.api)
        self.log_format = log_format
        self.nodes = [self._node(i, fsync) for i in range(1, nodes + 1)]
        if self.fixed_ports:
            for child in self.nodes:
                others = [c.endpoints["repl"] for c in self.nodes if c is not child]
                child.argv += ["--peers", ",".join(others)]
        self.front_doors = front_doors
        self.children = list(self.nodes)
        self._stop = threading.Event()

    def _endpoint(self, port: int, index: int = 1) -> str:
        return f"tcp://{self.host}:{port + index - 1 if port else '*'}"

    def _node(self, index: int, fsync: str) -> Child:
        node_id = f"n{index}"
        ends = {
            "api": self._endpoint(self.ports.api, index),
            "repl": self._endpoint(self.ports.repl, index),
            "pub": self._endpoint(self.ports.pub, index),
        }
        http = str(self.ports.http + index - 1) if self.ports.http else "*"
        resp = self.ports.resp + index - 1 if self.fixed_ports and self.ports.resp else "*"
        argv = mesh_argv(
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
            "--http-port",
            http,
            "--http-host",
            self.host,
            "--resp",
            f"{self.host}:{resp}",
            "--fsync",
            fsync,
            "--keys",
            str(self.keys),
            "--log-format",
            self.log_format,
        )
        return Child("node", node_id, argv, ends)

    def _balancer(self) -> Child:
        front = self._endpoint(self.ports.balancer)
        argv = mesh_argv(
            "balancer",
            "--front",
            front,
            "--nodes",
            ",".join(c.endpoints["api"] for c in self.nodes),
            "--status-file",
            str(self.data_dir / "balancer.json"),
            "--metrics-port",
            str(self.ports.metrics) if self.fixed_ports and self.ports.metrics else "*",
            "--log-format",
            self.log_format,
            "--resp",
            f"{self.host}:{self.ports.balancer_resp if self.fixed_ports else '*'}",
        )
        return Child("balancer", "balancer", argv, {"front": front})

    def _edge(self, backend: str) -> Child:
        argv = mesh_argv(
            "edge",
            "--host",
            self.host,
            "--port",
            str(self.ports.edge),
            "--backend",
            backend,
            "--status-file",
            str(self.data_dir / "edge.json"),
            "--log-format",
            self.log_format,
        )
        return Child("edge", "edge", argv, {"http": f"http://{self.host}:{self.ports.edge}"})

    def start(self, timeout: float = 60.0) -> None:
        """Start the nodes, then the balancer and the edge; wait for each; write cluster.json.

        A child that exits meanwhile ends the start at once: the error names it
        and the last line of its stderr (a port taken, say).
        """
        try:
            self._start(timeout)
        except ChildExited:
            raise self._start_failure() from None

    def _start_failure(self) -> PyCacheError:
        for child in self.children:
            code = child.process.poll() if child.process else None
            if code is not None:
                reason = child.exit_reason()
                return PyCacheError(
                    f"{child.name} exited with code {code} during start"
                    + (f": {reason}" if reason else "")
                )
        return PyCacheError("a child exited during start")

    def _start(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The peer plane's keys: made on the first start, the same ones ever after.
        keygen(self.keys, [child.id for child in self.nodes])
        deadline = time.monotonic() + timeout
        started: list[Child] = []
        for child in self.nodes:
            if not self.fixed_ports and started:
                child.argv += ["--peers", ",".join(c.endpoints["repl"] for c in started)]
            self._spawn(child, self.data_dir / child.id / "node.json")
            if not self.fixed_ports:
                self._wait_node(child, deadline)
            started.append(child)
        for child in self.nodes:
            self._wait_node(child, deadline)
        if self.front_doors:
            balancer = self._balancer()
            self.children.append(balancer)
            self._spawn(balancer, self.data_dir / "balancer.json")
            info = self._wait_status(balancer, deadline)
            self._pin(balancer, "front", info["front"])
            balancer.endpoints["metrics"] = info["metrics"]
            port = info["metrics"].rsplit(":", 1)[1].split("/")[0]
            balancer.argv[balancer.argv.index("--metrics-port") + 1] = port
            self._pin_resp(balancer, info)
            edge = self._edge(balancer.endpoints["front"])
            self.children.append(edge)
            self._spawn(edge, self.data_dir / "edge.json")
            info = self._wait_status(edge, deadline)
            edge.endpoints["http"] = info["http"]
            edge.endpoints["metrics"] = info["http"] + "/metrics"
            edge.argv[edge.argv.index("--port") + 1] = info["http"].rsplit(":", 1)[1]
            self._wait_http_ready(edge, deadline)
        self.write_layout()

    @staticmethod
    def _spawn(child: Child, status: Path) -> None:
        child.process = ChildProcess(child.name, status_path=status, tee_stderr=True)
        child.process.start(child.argv)
        child.backoff.started(time.monotonic())

    def write_layout(self) -> None:
        """Write ``<data-dir>/cluster.json`` (see the module docstring)."""
        layout = {"processes": [child.describe() for child in self.children]}
        write_atomically(self.data_dir / "cluster.json", json.dumps(layout, indent=2).encode())

    @staticmethod
    def _wait_status(child: Child, deadline: float, state: str = "") -> dict:
        """Wait until the child's status file is its own (and says ``state``, if given)."""
        assert child.process is not None
        return child.process.wait_status(
            lambda info: not state or info.get("state") == state,
            timeout=max(0.0, deadline - time.monotonic()),
            interval=0.05,
        )

    def _pin(self, child: Child, name: str, endpoint: str) -> None:
        """Record the endpoint bound and put it in the child's argv instead of ``*``."""
        flag = child.argv.index(f"--{name}") + 1
        child.argv[flag] = child.endpoints[name] = endpoint

    def _wait_node(self, child: Child, deadline: float) -> None:
        """Wait for ``state: ready`` in the node's node.json and a PING answer."""
        info = self._wait_status(child, deadline, "ready")
        for name in ("api", "repl", "pub"):
            self._pin(child, name, str(info[name]))
        self._pin_resp(child, info)
        if info.get("http"):
            child.endpoints["http"] = str(info["http"])
            child.endpoints["metrics"] = str(info["http"]) + "/metrics"
            child.argv[child.argv.index("--http-port") + 1] = str(info["http"]).rsplit(":", 1)[1]
        with Client(child.endpoints["api"], timeout=0.5) as client:
            self._wait_until(child, deadline, "a PING answer", client.ping, retry_on=Timeout)

    @staticmethod
    def _pin_resp(child: Child, info: dict) -> None:
        """Record the RESP front's ``tcp://host:port`` and pin its port in the argv."""
        if info.get("resp"):
            child.endpoints["resp"] = str(info["resp"])
            flag = child.argv.index("--resp") + 1
            child.argv[flag] = str(info["resp"]).removeprefix("tcp://")

    def _wait_http_ready(self, child: Child, deadline: float) -> None:
        url = child.endpoints["http"].rstrip("/") + "/api/ready/"

        def ready() -> bool:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return reply.status == 200

        # OSError: not listening or not ready yet (HTTPError is an OSError)
        self._wait_until(child, deadline, f"{url} to say 200", ready, retry_on=OSError)

    @staticmethod
    def _wait_until(
        child: Child,
        deadline: float,
        what: str,
        condition: Callable[[], object],
        retry_on: type[Exception],
    ) -> None:
        """Poll ``condition`` until it holds; fail at once if the child exits."""
        process = child.process
        assert process is not None

        def holds() -> object:
            process.check_running()
            return condition() is not False

        timeout = max(0.0, deadline - time.monotonic())
        wait_for(holds, timeout, f"{child.id}: {what}", interval=0.05, retry_on=retry_on)

    def stop(self) -> None:
        """SIGTERM every live child, then SIGKILL what is left after a grace period."""
        live = [c.process for c in self.children if c.process and c.process.alive()]
        for process in live:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in live:
            process.reap(deadline - time.monotonic())

    def run(self, ready_timeout: float, echo: Callable[[str], None]) -> int:
        """Start, report endpoints, watch until a signal; return the exit code.

        A signal during the start ends it at once (what was started is stopped),
        instead of after the last child is ready or ``ready_timeout``.
        """
        starting = True

        def on_signal(*_: object) -> None:
            self._stop.set()
            if starting:
                raise _StartInterrupted

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        try:
            try:
                self.start(ready_timeout)
            except _StartInterrupted:
                echo("stopped by a signal during the start")
                return 0
            starting = False
            echo(f"PyCache is up ({len(self.nodes)} node(s)); data in {self.data_dir}")
            for child in self.children:
                endpoints = ", ".join(f"{k} {v}" for k, v in child.endpoints.items())
                pid = child.process.pid  # type: ignore[union-attr]
                echo(f"  {child.role} {child.id}: pid {pid}, {endpoints}")
            echo(f"peer plane: CURVE, members' keys in {self.keys}")
            echo(f"layout: {self.data_dir / 'cluster.json'}; Ctrl-C stops everything")
            self._watch(echo)
            return 0
        finally:
            self.stop()
            echo("stopped")

    def _watch(self, echo: Callable[[str], None]) -> None:
        """Until a signal: start again every child that exited, when its backoff allows."""
        while not self._stop.wait(WATCH_S):
            for child in self.children:
                self._supervise(child, echo)

    def _supervise(self, child: Child, echo: Callable[[str], None]) -> None:
        process = child.process
        assert process is not None
        now = time.monotonic()
        if child.backoff.due_at is None:
            code = process.poll()
            if code is not None:
                attempt, delay = child.backoff.exited(now)
                echo(
                    f"{child.name} exited with code {code}; "
                    f"restarting (attempt {attempt}) in {delay:g} s"
                )
        elif child.backoff.due(now) and not self._stop.is_set():
            try:
                process.start(child.argv)
            except OSError as exc:  # could not even run it: try again later
                child.backoff.exited(now)
                echo(f"{child.name} could not be restarted: {exc}")
                return
            child.backoff.started(now)
            echo(f"{child.name} restarted: pid {process.pid}")
            self.write_layout()
