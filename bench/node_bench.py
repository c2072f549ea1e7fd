"""Single-node SET and GET throughput beside a bare pyzmq DEALER/ROUTER echo server.

    python bench/node_bench.py [--requests 50000] [--runs 5] [--json PATH]

Both servers run as separate processes on 127.0.0.1 and get the very same
request frames from the same synchronous DEALER client, with 1 and with 64
requests in flight; the echo server sends each frame straight back (draining
its socket in batches, as the node does).  The node runs with its default
``fsync=always``: every batch of writes is fsynced before it is acknowledged.
The node and the echo server take turns, run by run; the table shows the
medians of each and the median of the per-run node/echo ratios, and the
script writes JSON.

Targets (issue 2): SET with 64 in flight >= 0.5x echo, GET >= 0.6x echo.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

from mesh.core import wire  # noqa: E402
from mesh.roles.trust import keygen  # noqa: E402

VALUE = b"v" * 100
KEYS = 10_000


def serve_echo() -> None:
    """The ceiling: a ROUTER that returns every message as it came."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    sock.bind("tcp://127.0.0.1:*")
    print(sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        sock.poll()
        while True:
            try:
                sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK), zmq.NOBLOCK)
            except zmq.Again:
                break


def start_echo() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo"], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def keygen_for(data_dir: str) -> Path:
    """The peer plane's keys of the one-node mesh, beside its data folder."""
    keys = Path(data_dir).parent / "keys"
    keygen(keys, ["bench"])
    return keys


def start_node(data_dir: str, extra: Sequence[str] = ()) -> tuple[subprocess.Popen, dict]:
    """A node (``extra``: more options) on an OS-picked API port; it and its ready node.json."""
    argv = [sys.executable, "-m", "mesh", "node", "--id", "bench", "--data-dir", data_dir]
    argv += ["--api", "tcp://127.0.0.1:*", "--log-level", "WARNING"]
    argv += ["--keys", str(keygen_for(data_dir)), *extra]
    proc = subprocess.Popen(argv)
    status = Path(data_dir) / "node.json"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if status.exists():
            info = json.loads(status.read_text())
            if info["pid"] == proc.pid and info["state"] == "ready":
                return proc, info
        if proc.poll() is not None:
            raise SystemExit(f"node exited with {proc.returncode}")
        time.sleep(0.05)
    raise SystemExit("node not ready within 30 s")


def frames_for(op: str, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    keys = [f"key:{rng.randrange(KEYS):06d}" for _ in range(count)]
    if op == "SET":
        return [wire.encode_request(i, "SET", k, VALUE) for i, k in enumerate(keys, 1)]
    return [wire.encode_request(i, "GET", k) for i, k in enumerate(keys, 1)]


def round_trips_per_s(endpoint: str, frames: list[bytes], window: int) -> float:
    """Send every frame keeping ``window`` in flight; return completed round trips/s."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    try:
        sock.send(wire.encode_request(0, "PING"))
        sock.recv()  # connected and warm
        total, sent = len(frames), 0
        started = time.perf_counter()
        while sent < min(window, total):
            sock.send(frames[sent])
            sent += 1
        for _ in range(total):
            sock.recv()
            if sent < total:
                sock.send(frames[sent])
                sent += 1
        return total / (time.perf_counter() - started)
    finally:
        sock.close()
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", default=None)
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo()
        return

    targets = {("SET", 64): 0.5, ("GET", 64): 0.6}
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="pycache-bench-") as data_dir:
        node, info = start_node(data_dir)
        node_api = info["api"]
        echo, echo_api = start_echo()
        try:
            # Fill the key space so GETs hit.
            fill = frames_for("SET", KEYS * 3, seed=99)
            round_trips_per_s(node_api, fill, 64)
            for op in ("SET", "GET"):
                for window in (1, 64):
                    count = args.requests if window > 1 else max(2000, args.requests // 10)
                    frames = frames_for(op, count, seed=7)
                    # Node and echo take turns, so that a change in the load on
                    # the machine hits both; the ratio is the median of the pairs'.
                    node_runs, echo_runs = [], []
                    for _ in range(args.runs):
                        node_runs.append(round_trips_per_s(node_api, frames, window))
                        echo_runs.append(round_trips_per_s(echo_api, frames, window))
                    node_rate, echo_rate = median(node_runs), median(echo_runs)
                    ratio = median(n / e for n, e in zip(node_runs, echo_runs, strict=True))
                    target = targets.get((op, window))
                    verdict = "" if target is None else ("ok" if ratio >= target else "BELOW")
                    rows.append(
                        (
                            op,
                            window,
                            node_rate,
                            echo_rate,
                            ratio,
                            f">= {target}x {verdict}" if target else "-",
                        )
                    )
                    results.append(
                        {
                            "op": op,
                            "in_flight": window,
                            "node_ops_s": node_rate,
                            "echo_ops_s": echo_rate,
                            "ratio": ratio,
                            "target": target,
                            "node_runs": node_runs,
                            "echo_runs": echo_runs,
                        }
                    )
        finally:
            for proc in (node, echo):
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
            if echo.stdout:
                echo.stdout.close()
    print_table(
        f"node vs bare echo: medians of {args.runs} runs, {args.requests:,} requests, "
        f"{len(VALUE)}-byte values, fsync=always, {os.cpu_count()} CPUs",
        ["op", "in flight", "node ops/s", "echo ops/s", "ratio", "target"],
        rows,
    )
    write_json(
        "node_bench", {"runs": args.runs, "requests": args.requests, "results": results}, args.json
    )


if __name__ == "__main__":
    main()
