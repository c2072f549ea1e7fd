"""Shared plumbing for the benchmark scripts: medians, a table, JSON output.

Also percentiles, and child processes (nodes, a balancer, an edge; started
and waited for by :mod:`mesh.roles.launcher`) that die with the script and are
ended by pid (``spawn``, ``end_all``).

Benchmarks quote medians of several runs and put each figure next to a
ceiling measured in the same run, as a ratio: absolute numbers drift from
machine to machine, ratios much less.
"""

from __future__ import annotations

import json
import math
import os
import platform
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mesh.core.errors import PyCacheError
from mesh.roles.launcher import ChildProcess, die_with_parent, mesh_argv
from mesh.roles.trust import keygen

RESULTS = Path(__file__).resolve().parent / "results"

# A child started as ``python -m mesh ...`` puts its working directory first on
# its path: run from a checkout, it imported that checkout's ``mesh``, not the
# one this script imported (so a comparison with another tree on PYTHONPATH,
# run from this checkout, ran this checkout's nodes on both sides).  Children
# inherit this and import what the script does: PYTHONPATH, else the install.
os.environ["PYTHONSAFEPATH"] = "1"


def compile_mesh() -> None:
    """Byte-compile the mesh package, as a regular ``pip install`` does.

    The figures that time a node from process start would otherwise include
    compiling every module again on each start wherever ``.pyc`` files cannot
    be written or are stale (an editable install under
    PYTHONDONTWRITEBYTECODE, say): about 0.1 s on this machine.
    """
    import compileall

    import mesh

    compileall.compile_dir(Path(mesh.__file__).parent, quiet=1)


def median_of(runs: int, measure: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``measure`` ``runs`` times; return the median and every sample."""
    samples = [measure() for _ in range(runs)]
    return statistics.median(samples), samples


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a plain aligned table with a title line."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, results: dict, path: str | None = None) -> Path:
    """Write ``results`` with machine facts to ``path`` or ``bench/results/<name>.json``."""
    target = Path(path) if path else RESULTS / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        **results,
    }
    target.write_text(json.dumps(document, indent=2))
    print(f"\nwrote {target}")
    return target


def _fmt(cell: object) -> str:
    if isinstance(cell, float):
        return f"{cell:,.2f}" if cell < 100 else f"{cell:,.0f}"
    if isinstance(cell, int):
        return f"{cell:,}"
    return str(cell)


# ---------------------------------------------------------------------- percentiles


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100, nearest rank) of ``samples``; NaN when empty."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


# ---------------------------------------------------------------------- child processes
#
# Every child is started in its own session with PR_SET_PDEATHSIG (it dies
# with this process, however that ends) and remembered by pid, so that a
# ``finally: end_all()`` ends exactly the processes the script started.

ANY = "tcp://127.0.0.1:*"
_CHILDREN: dict[int, subprocess.Popen] = {}


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid``, or by its thread
    ``thread`` (the main thread's id is ``pid``) (Linux /proc; 0 elsewhere)."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """Start ``argv`` as a tracked child that dies with this process."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(
        list(argv), start_new_session=True, preexec_fn=die_with_parent, **kwargs
    )
    _CHILDREN[proc.pid] = proc
    return proc


def end(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send ``sig`` to ``proc`` (by pid), wait for it, SIGKILL after ``timeout``; its exit code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            if sig != signal.SIGKILL:
                proc.send_signal(signal.SIGCONT)  # a paused process cannot act on SIGTERM
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _CHILDREN.pop(proc.pid, None)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    return proc.returncode


def end_all(timeout: float = 5.0) -> None:
    """End every child still tracked: SIGTERM, then SIGKILL after ``timeout``."""
    for proc in list(_CHILDREN.values()):
        end(proc, signal.SIGTERM, timeout)


def _launch(child: ChildProcess, argv: Sequence[str]) -> subprocess.Popen:
    """Start ``child`` with ``argv`` and track it like :func:`spawn` does."""
    child.start(argv)
    assert child.process is not None
    _CHILDREN[child.process.pid] = child.process
    return child.process


def _wait_status(child: ChildProcess, done: Callable[[dict], bool], timeout: float) -> dict:
    """Poll ``child``'s status file until ``done(info)``; exit the script if it never is."""
    try:
        return child.wait_status(done, timeout, interval=0.002)
    except PyCacheError as exc:  # it exited, or the wait timed out
        raise SystemExit(str(exc)) from None


class NodeProc:
    """One ``python -m mesh node`` child, restartable on the endpoints it bound first."""

    def __init__(self, node_id: str, root: Path, extra: Sequence[str] = ()) -> None:
        self.node_id = node_id
        self.data_dir = root / node_id
        self.log_path = root / f"{node_id}.log"
        self.extra = list(extra)
        self.endpoints = {"api": ANY, "repl": ANY, "pub": ANY}
        self.child = ChildProcess(
            f"node {node_id} (log {self.log_path})", self.data_dir / "node.json", self.log_path
        )

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.child.process

    @property
    def started(self) -> float:
        """perf_counter() at the last start."""
        return self.child.started

    @property
    def api(self) -> str:
        return self.endpoints["api"]

    @property
    def repl(self) -> str:
        return self.endpoints["repl"]

    def start(self, peers: Sequence[str] = ()) -> NodeProc:
        argv = mesh_argv("node", "--id", self.node_id, "--data-dir", str(self.data_dir))
        argv += ["--peers", ",".join(peers), *self.extra]
        if "--insecure" not in self.extra:  # the peer plane's keys: one folder per mesh
            keys = self.data_dir.parent / "keys"
            keygen(keys, [self.node_id])
            argv += ["--keys", str(keys)]
        for name, endpoint in self.endpoints.items():
            argv += [f"--{name}", endpoint]
        _launch(self.child, argv)
        return self

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Wait for ``node.json`` to say ready; seconds since :meth:`start`."""
        info = _wait_status(self.child, lambda i: i.get("state") == "ready", timeout)
        took = time.perf_counter() - self.started
        self.endpoints = {name: info[name] for name in self.endpoints}
        return took

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.proc is not None:
            end(self.proc, signal.SIGKILL)


def start_mesh(root: Path, size: int = 3, extra: Sequence[str] = ()) -> list[NodeProc]:
    """``size`` ready replicating nodes; each names the repl endpoints of those before it."""
    nodes: list[NodeProc] = []
    for i in range(1, size + 1):
        node = NodeProc(f"n{i}", root, extra).start([n.repl for n in nodes])
        node.wait_ready()
        nodes.append(node)
    return nodes


def start_balancer(
    root: Path, apis: Sequence[str], log_level: str = "WARNING", extra: Sequence[str] = ()
) -> tuple[subprocess.Popen, str, Path]:
    """A ``pycache balancer`` child in front of ``apis``: (process, front endpoint, log path)."""
    status, log_path = root / "balancer.json", root / "balancer.log"
    argv = mesh_argv("balancer", "--front", ANY, "--nodes", ",".join(apis))
    argv += ["--status-file", str(status), "--log-level", log_level, *extra]
    child = ChildProcess("balancer", status, log_path)
    proc = _launch(child, argv)
    info = _wait_status(child, lambda i: "front" in i, 30)
    return proc, info["front"], log_path


def start_edge(root: Path, backend: str, extra: Sequence[str] = ()) -> tuple[subprocess.Popen, str]:
    """A ``pycache edge`` child on an OS-picked port: (process, base URL)."""
    status = root / "edge.json"
    argv = mesh_argv("edge", "--host", "127.0.0.1", "--port", "0")
    argv += ["--backend", backend, "--status-file", str(status), "--log-level", "WARNING", *extra]
    child = ChildProcess("edge", status, root / "edge.log")
    proc = _launch(child, argv)
    info = _wait_status(child, lambda i: "http" in i, 30)
    return proc, info["http"]
