"""Start-up time of a node process: from exec to its first status file and to ``ready``.

    python bench/startup.py [--runs 7] [--compare DIR] [--json PATH]

Each run times, for this tree (and, with ``--compare``, for the tree at DIR,
e.g. ``git worktree add /tmp/start-before <commit>``), one after the other so
that both see the same load on the machine:

- ``python -c pass``: the interpreter alone (the floor; the same for both);
- ``python -c "import mesh.cli.main"``: the ``pycache`` command's imports;
- ``python -m mesh node`` with no peers, a fresh data folder, CURVE keys and
  OS-picked loopback ports, from process start to its ``node.json`` first
  appearing (recovered, bound: ``catching-up``) and to ``state: ready``
  (polled every 2 ms), then SIGTERM; and the node's CPU time (user +
  system, from /proc, in 10 ms ticks) at ready, which other load on the
  machine moves much less than wall-clock time;
- the same node restarted on the folder it left (the catch-up row's
  restart, without the catch-up): exec to ready, and CPU time.

Both trees are byte-compiled first (as a ``pip install`` does) and run with
``PYTHONPATH`` set to the tree, so only the code differs.  Medians of
``--runs`` runs; the ratio is this tree's median over the other's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ANY, cpu_seconds, end, end_all, print_table, spawn, write_json  # noqa: E402

from mesh.roles.trust import keygen  # noqa: E402

HERE = Path(__file__).resolve().parent.parent
POLL_S = 0.002
LABELS = {
    "python": "python -c pass",
    "import": "import mesh.cli.main",
    "status_file": "node: exec to node.json",
    "ready": "node: exec to ready",
    "cpu": "node: CPU at ready",
    "restart_ready": "restart: exec to ready",
    "restart_cpu": "restart: CPU at ready",
}
TIMEOUT_S = 60.0


def tree_env(tree: Path) -> dict[str, str]:
    """This process's environment with ``PYTHONPATH`` naming only ``tree``."""
    return dict(os.environ, PYTHONPATH=str(tree))


def compile_tree(tree: Path) -> None:
    """Byte-compile ``tree``'s mesh package (stale or missing ``.pyc`` would be timed)."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "mesh")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def time_command(tree: Path, code: str) -> float:
    """Seconds for ``python -c code`` to exit (it must exit 0)."""
    started = time.perf_counter()
    proc = spawn([sys.executable, "-c", code], env=tree_env(tree), cwd=tempfile.gettempdir())
    if proc.wait() != 0:
        raise SystemExit(f"python -c {code!r} failed under {tree}")
    took = time.perf_counter() - started
    end(proc)
    return took


def time_node(tree: Path, data_dir: Path, keys: Path) -> tuple[float, float, float]:
    """Seconds from exec of a node to its first status file and to ``ready``; its
    CPU seconds at ready."""
    argv = [sys.executable, "-m", "mesh", "node", "--id", "n1", "--data-dir", str(data_dir)]
    argv += ["--keys", str(keys), "--api", ANY, "--repl", ANY, "--pub", ANY]
    argv += ["--log-level", "WARNING"]
    status = data_dir / "node.json"
    log = open(data_dir.parent / f"{data_dir.name}.log", "ab")  # noqa: SIM115 (closed below)
    started = time.perf_counter()
    proc = spawn(argv, env=tree_env(tree), stdout=log, stderr=log, cwd=tempfile.gettempdir())
    first = 0.0
    try:
        while True:
            now = time.perf_counter() - started
            info = _status(status)
            if info is not None and info.get("pid") == proc.pid:
                first = first or now
                if info.get("state") == "ready":
                    return first, now, cpu_seconds(proc.pid)
            if proc.poll() is not None:
                raise SystemExit(f"the node under {tree} exited; see {log.name}")
            if now > TIMEOUT_S:
                raise SystemExit(f"the node under {tree} was not ready in {TIMEOUT_S} s")
            time.sleep(POLL_S)
    finally:
        end(proc)
        log.close()


def _status(path: Path) -> dict | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another tree, run interleaved")
    parser.add_argument("--json", help="output path (default bench/results/startup.json)")
    args = parser.parse_args()
    trees = {"this": HERE}
    if args.compare is not None:
        trees["compare"] = args.compare.resolve()
    for tree in trees.values():
        compile_tree(tree)
    samples: dict[str, dict[str, list[float]]] = {name: {k: [] for k in LABELS} for name in trees}
    with tempfile.TemporaryDirectory(prefix="pycache-startup-") as tmp:
        root = Path(tmp)
        keys = root / "keys"
        keygen(keys, ["n1"])
        try:
            for run in range(args.runs):
                for name, tree in trees.items():
                    got = samples[name]
                    got["python"].append(time_command(tree, "pass"))
                    got["import"].append(time_command(tree, "import mesh.cli.main"))
                    data_dir = root / f"{name}-{run}"
                    first, ready, cpu = time_node(tree, data_dir, keys)
                    got["status_file"].append(first)
                    got["ready"].append(ready)
                    got["cpu"].append(cpu)
                    _, ready, cpu = time_node(tree, data_dir, keys)  # a restart
                    got["restart_ready"].append(ready)
                    got["restart_cpu"].append(cpu)
                print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        finally:
            end_all()
    medians = {name: {k: median(v) for k, v in got.items()} for name, got in samples.items()}
    header = ["ms (median)", "this tree"]
    if "compare" in trees:
        header += ["compare tree", "this / compare"]
    rows = []
    for key, label in LABELS.items():
        row: list[object] = [label, medians["this"][key] * 1000]
        if "compare" in trees:
            other = medians["compare"][key]
            row += [other * 1000, round(medians["this"][key] / other, 2)]
        rows.append(row)
    print_table(f"Start-up, {args.runs} runs each (interleaved)", header, rows)
    write_json(
        "startup",
        {
            "runs": args.runs,
            "trees": {name: str(tree) for name, tree in trees.items()},
            "median_s": medians,
            "samples_s": samples,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
