"""Memory: a node's resident set against ``--max-memory-mib`` (issue 13, point 2).

    python bench/memory_bench.py [--limits 20,100] [--writes-per-mib 5000]

For each limit, a fresh node process (``--insecure --fsync never``, no peers)
takes, in pipelines of 1,000 from one client:

- ``sets``: ``writes-per-mib`` x limit SETs of 1 KiB values to distinct keys
  (100,000 at 20 MiB: about 5x what fits, so LRU evicts all along);
- ``pairs``: half as many SET-then-DEL pairs, then 20 fresh SETs.

After each pipeline it reads the node's VmRSS from ``/proc/<pid>/status``.
Prints the idle RSS after start, the peak, the peak over the limit, the live
keys and the store's estimated bytes at the end, whether the last SET (and
the 20 fresh ones) read back, and writes JSON.  The bound stated in
``docs/architecture.md`` (and checked by ``tests/test_memory.py``) is
RSS <= 60 MiB + 2.5 x the limit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NodeProc, end, print_table, write_json  # noqa: E402

from mesh.client import Client  # noqa: E402

MIB = 1024 * 1024
VALUE = b"x" * 1024
PIPELINE = 1_000
BOUND_BASE, BOUND_FACTOR = 60, 2.5


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def run(limit_mib: int, workload: str, writes: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="pycache-mem-"))
    extra = ["--insecure", "--max-memory-mib", str(limit_mib), "--fsync", "never"]
    node = NodeProc("n1", root, extra).start()
    try:
        node.wait_ready()
        assert node.proc is not None
        pid = node.proc.pid
        idle = peak = rss(pid)
        started = time.perf_counter()
        with Client(node.api, timeout=30.0) as c:
            count = writes if workload == "sets" else writes // 2
            for start in range(0, count, PIPELINE):
                with c.pipeline() as pipe:
                    for i in range(start, min(start + PIPELINE, count)):
                        pipe.set(f"key:{i:08d}", VALUE)
                        if workload == "pairs":
                            pipe.delete(f"key:{i:08d}")
                    pipe.execute()
                peak = max(peak, rss(pid))
            took = time.perf_counter() - started
            if workload == "sets":
                readable = c.get(f"key:{count - 1:08d}") == VALUE
            else:
                fresh = [f"fresh:{i}" for i in range(20)]
                for key in fresh:
                    c.set(key, VALUE)
                readable = all(c.get(k) == VALUE for k in fresh)
            time.sleep(0.5)  # a few sweeps: stable tombstones collected
            stats = c.stats()
        final = rss(pid)
    finally:
        if node.proc is not None:
            end(node.proc)
        shutil.rmtree(root, ignore_errors=True)
    limit = limit_mib * MIB
    return {
        "limit_mib": limit_mib,
        "workload": workload,
        "writes": writes if workload == "sets" else writes // 2 * 2,
        "writes_per_s": round((writes if workload == "sets" else count * 2) / took),
        "idle_rss_mib": round(idle / MIB, 1),
        "peak_rss_mib": round(peak / MIB, 1),
        "final_rss_mib": round(final / MIB, 1),
        "peak_over_limit": round(peak / limit, 2),
        "bound_mib": BOUND_BASE + BOUND_FACTOR * limit_mib,
        "within_bound": peak <= (BOUND_BASE + BOUND_FACTOR * limit_mib) * MIB,
        "keys": stats["keys"],
        "tombstones": stats["tombstones"],
        "estimated_mib": round(stats["bytes"] / MIB, 1),
        "readable": readable,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="20,100", help="MiB, comma-separated")
    parser.add_argument("--writes-per-mib", type=int, default=5000)
    parser.add_argument("--json", default=None, help="where to write the results")
    args = parser.parse_args()
    results = []
    for limit in map(int, args.limits.split(",")):
        for workload in ("sets", "pairs"):
            results.append(run(limit, workload, args.writes_per_mib * limit))
    rows = [
        (
            f"{r['limit_mib']} MiB",
            r["workload"],
            r["writes"],
            r["writes_per_s"],
            r["idle_rss_mib"],
            r["peak_rss_mib"],
            r["peak_over_limit"],
            r["bound_mib"],
            r["keys"],
            r["tombstones"],
            r["estimated_mib"],
            "yes" if r["readable"] else "NO",
        )
        for r in results
    ]
    header = ("limit", "load", "writes", "w/s", "idle RSS", "peak RSS", "peak/limit")
    header += ("bound", "keys", "tombs", "est. MiB", "readable")
    print_table("RSS against --max-memory-mib (1 KiB values, MiB)", header, rows)
    write_json(
        "memory",
        {"bound": f"{BOUND_BASE} MiB + {BOUND_FACTOR} x limit", "runs": results},
        args.json,
    )


if __name__ == "__main__":
    main()
