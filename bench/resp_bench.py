"""PyCache's RESP front side by side with Redis: ``redis-benchmark`` against three targets.

    python bench/resp_bench.py [--requests N] [--runs R] [--fsync always|interval|never]

Starts, in one run: a redis-server (no persistence), three PyCache nodes with
``--resp`` and a balancer with ``--resp`` in front of them; then runs
``redis-benchmark -t set,get,incr -P 16`` and ``-P 1`` (50 clients, 100-byte
values, 10,000 random keys) against the balancer's RESP port, one node's RESP
port and Redis, ``--runs`` times each (median).  Prints requests/s and the
ratio to Redis; writes ``bench/results/resp_bench.json``.  Goal (issue 18):
SET through the balancer >= 0.25x Redis with pipelining.

INCR goes to the nodes' ``INCRBY`` op: before that op exists (the counters
branch), it is reported as skipped.  Redis writes nothing to disk here; the
nodes' fsync policy is ``--fsync`` (default ``interval``, the closest to it).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (  # noqa: E402
    end_all,
    median_of,
    print_table,
    spawn,
    start_balancer,
    start_mesh,
    write_json,
)

TESTS = ("SET", "GET", "INCR")
PIPELINES = (16, 1)
CLIENTS = 50


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis(root: Path) -> int:
    """A redis-server with no persistence; its port."""
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root)]
    spawn([*argv, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    wait_ping(port)
    return port


def wait_ping(port: int, timeout: float = 30) -> None:
    """Wait until ``PING`` on ``port`` answers ``+PONG``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                if sock.recv(100) == b"+PONG\r\n":
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"nothing answers PING on port {port}")


def resp_port(status: Path) -> int:
    """The RESP port in a node.json or balancer status file."""
    return int(json.loads(status.read_text())["resp"].rsplit(":", 1)[1])


def benchmark(port: int, test: str, pipeline: int, requests: int) -> float:
    """One ``redis-benchmark`` run: requests/s (SystemExit on an error reply)."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(CLIENTS)]
    argv += ["-n", str(requests), "-d", "100", "-r", "10000", "-P", str(pipeline)]
    done = subprocess.run(
        [*argv, "-t", test.lower(), "--csv"], capture_output=True, text=True, timeout=600
    )
    rows = [r for r in csv.DictReader(io.StringIO(done.stdout)) if r.get("test") == test]
    if done.returncode or not rows or "rror" in done.stderr:
        raise SystemExit(f"redis-benchmark {test} on {port} failed:\n{done.stdout}{done.stderr}")
    return float(rows[0]["rps"])


def has_incrby(port: int) -> bool:
    """Whether the node behind ``port`` has the INCRBY op yet."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*2\r\n$4\r\nINCR\r\n$9\r\n__probe__\r\n")
        return sock.recv(200).startswith(b":")


def main() -> None:
    """Run the comparison; print the table; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fsync", default="interval", choices=("always", "interval", "never"))
    parser.add_argument("--json", default=None, help="where to write the results")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="resp-bench-") as tmp:
        root = Path(tmp)
        try:
            redis_port = start_redis(root)
            extra = ["--resp", "127.0.0.1:*", "--fsync", args.fsync, "--log-level", "WARNING"]
            nodes = start_mesh(root, 3, extra)
            start_balancer(root, [n.api for n in nodes], extra=["--resp", "127.0.0.1:*"])
            targets = {
                "balancer": resp_port(root / "balancer.json"),
                "node": resp_port(nodes[0].data_dir / "node.json"),
                "redis": redis_port,
            }
            for port in targets.values():
                wait_ping(port)
            results = measure(targets, args.requests, args.runs)
        finally:
            end_all()
    rows, summary = [], {}
    for key, by_target in results.items():
        test, pipeline = key
        redis_rps = by_target.get("redis") or 0.0
        row = [test, pipeline]
        for name in ("balancer", "node", "redis"):
            rps = by_target.get(name)
            row.append("skipped" if rps is None else round(rps))
        for name in ("balancer", "node"):
            rps = by_target.get(name)
            row.append("-" if rps is None or not redis_rps else round(rps / redis_rps, 3))
        rows.append(row)
        summary[f"{test} -P {pipeline}"] = {
            **{f"{n}_rps": by_target.get(n) for n in ("balancer", "node", "redis")},
            "balancer_ratio": (by_target.get("balancer") or 0) / redis_rps if redis_rps else None,
            "node_ratio": (by_target.get("node") or 0) / redis_rps if redis_rps else None,
        }
    header = ["test", "-P", "balancer/s", "node/s", "redis/s", "bal/redis", "node/redis"]
    print_table(
        f"redis-benchmark, {CLIENTS} clients, {args.requests} requests, median of {args.runs};"
        f" nodes --fsync {args.fsync}",
        header,
        rows,
    )
    goal = summary.get("SET -P 16", {}).get("balancer_ratio")
    print(f"\nSET -P 16 through the balancer: {goal:.3f}x Redis (goal: >= 0.25x)" if goal else "")
    meta = {"requests": args.requests, "runs": args.runs, "clients": CLIENTS, "fsync": args.fsync}
    path = write_json("resp_bench", {"config": meta, "results": summary}, args.json)
    print(f"results: {path}")


def measure(targets: dict[str, int], requests: int, runs: int) -> dict:
    """{(test, pipeline): {target: median requests/s, or None when skipped}}."""
    incr = has_incrby(targets["node"])
    results: dict = {}
    for pipeline in PIPELINES:
        for test in TESTS:
            by_target: dict[str, float | None] = {}
            for name, port in targets.items():
                if test == "INCR" and name != "redis" and not incr:
                    by_target[name] = None
                    continue
                n = requests if pipeline > 1 else max(requests // 5, 1000)
                run = functools.partial(benchmark, port, test, pipeline, n)
                by_target[name] = median_of(runs, run)[0]
                print(f"  {test} -P {pipeline} {name}: {by_target[name]:.0f}/s", flush=True)
            results[(test, pipeline)] = by_target
    return results


if __name__ == "__main__":
    main()
