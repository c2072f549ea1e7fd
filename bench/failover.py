"""Failover under load: ``kill -9`` a node, restart it after missing writes, hang another.

    python bench/failover.py [--threads 4] [--warmup 3] [--writes 100000] [--pause 2]
        [--json PATH] [--png PATH]

Three replicating nodes (``fsync=always``, separate processes on 127.0.0.1)
behind a balancer (default ``--health-ms 100 --hang-ms 600``).  A load process
runs ``--threads`` synchronous clients (:class:`mesh.client.Client`, 5 s
timeout) through the balancer for the whole run, each alternating SET and GET
of random keys (100-byte values), and records every request's start time,
latency and outcome.  Meanwhile, after ``--warmup`` seconds:

1. **kill**: node n3 gets SIGKILL;
2. **writes**: ``--writes`` SETs of new keys go through the balancer (64 in
   flight) while n3 is down;
3. **restart**: n3 starts again on the endpoints it had, and is timed from
   process start to ``ready`` in its ``node.json`` (polled every 2 ms), then
   until the balancer logs it back in rotation;
4. **hang**: node n1 gets SIGSTOP; the time until the balancer takes it out
   of rotation is read from the balancer's ``out of rotation`` log line; after
   ``--pause`` seconds it gets SIGCONT and must come back in rotation.

Each phase is followed by ``--settle`` seconds of plain load.  At the end the
three nodes must hold the same data (equal STATS digests).

Printed and written (JSON, and a PNG of latency and throughput over time with
every event marked): failed requests, latency p50/p99/max per failover window
(kill: 2 s from the kill; restart: from the restart to 1 s after ready; hang:
from SIGSTOP to 1 s after SIGCONT), the hung node's time out of rotation and
the restarted node's time to ready.

Targets (issue 4, item 7): 0 failed requests, a hung node out of rotation
within 1 s, p99 latency over the failover windows under 1.5 s, the restarted
node ready within 3 s of start after missing 100,000 writes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    NodeProc,
    compile_mesh,
    end,
    end_all,
    percentile,
    print_table,
    spawn,
    start_balancer,
    start_mesh,
    write_json,
)
from throughput import fill  # noqa: E402  (the key space of bench/throughput.py)

from mesh.core import envelope, wire  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the ``bench`` extra is optional
    tqdm = None

VALUE = b"v" * 100
KEYS = 10_000
WRITE_WINDOW = 64
BIN_S = 0.1
LEAD_S = 0.5  # a fault's window starts this much earlier: requests in flight at the fault
TARGET_FAILED = 0
TARGET_HUNG_S = 1.0
TARGET_P99_S = 1.5
TARGET_READY_S = 3.0
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")


# ---------------------------------------------------------------------- the load (child mode)


def serve_load(front: str, threads: int, out: str, timeout: float) -> None:
    """Run ``threads`` clients until stdin closes; write every request's record to ``out``.

    A record is ``[start (wall s), latency (s), ok, op]``; failures also keep
    their error text.
    """
    from mesh.client import Client

    stop = threading.Event()
    records: list[list[list]] = [[] for _ in range(threads)]
    failures: list[str] = []

    def client(index: int) -> None:
        rng = random.Random(index)
        mine = records[index]
        wall, perf = time.time, time.perf_counter
        with Client(front, timeout=timeout) as cache:
            n = 0
            while not stop.is_set():
                key = f"key:{rng.randrange(KEYS):06d}"
                op = n & 1
                n += 1
                started, t0 = wall(), perf()
                try:
                    if op:
                        cache.get(key)
                    else:
                        cache.set(key, VALUE)
                    ok = True
                except Exception as exc:  # every error is a failed request
                    ok = False
                    failures.append(f"{started:.3f} {'GET' if op else 'SET'}: {exc!r}")
                mine.append([started, perf() - t0, ok, op])

    workers = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    print("started", flush=True)
    sys.stdin.read()  # until the parent closes it
    stop.set()
    for worker in workers:
        worker.join(timeout + 5)
    merged = sorted(r for mine in records for r in mine)
    Path(out).write_text(json.dumps({"records": merged, "failures": failures}))


# ---------------------------------------------------------------------- the orchestra


class Timeline:
    """Wall-clock events, phase by phase, with a progress bar over the phases."""

    def __init__(self, phases: int) -> None:
        self.events: dict[str, float] = {}
        self.bar = tqdm(total=phases, desc="failover", unit="phase") if tqdm else None

    def mark(self, name: str, when: float | None = None) -> float:
        self.events[name] = time.time() if when is None else when
        return self.events[name]

    def phase(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)
        else:
            print(f"  {name}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def write_many(front: str, count: int, prefix: str) -> tuple[float, int]:
    """``count`` SETs of new keys through ``front`` with 64 in flight: (seconds, failures)."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(front)
    bar = tqdm(total=count, desc="writes while down", unit="w", leave=False) if tqdm else None
    failures = done = 0

    def receive() -> None:
        nonlocal failures, done
        failures += envelope.peek_head(sock.recv())[1] != wire.OK
        done += 1
        if bar is not None and not done % 2000:
            bar.update(2000)

    try:
        started = time.perf_counter()
        for i in range(count):
            if i >= WRITE_WINDOW:
                receive()
            sock.send(wire.encode_request(i + 1, "SET", f"{prefix}:{i:07d}", VALUE))
        while done < count:
            receive()
        took = time.perf_counter() - started
    except zmq.Again:
        raise SystemExit("the balancer stopped answering the writes for 10 s") from None
    finally:
        if bar is not None:
            bar.close()
        sock.close()
        ctx.term()
    return took, failures


def _first(times: list[float]) -> float | None:
    return times[0] if times else None


def log_times(path: Path, pattern: str, since: float) -> list[float]:
    """Wall times (s) of the log lines of ``path`` matching ``pattern`` logged after ``since``."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        stamp = LOG_TIME.match(line)
        if stamp and re.search(pattern, line):
            when = time.mktime(time.strptime(stamp[1], "%Y-%m-%d %H:%M:%S")) + int(stamp[2]) / 1000
            if when >= since - 0.001:
                found.append(when)
    return found


def wait_log(path: Path, pattern: str, since: float, timeout: float) -> float | None:
    """The first log line matching ``pattern`` after ``since``, waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = log_times(path, pattern, since)
        if found:
            return found[0]
        time.sleep(0.02)
    return None


def digests(nodes: list[NodeProc]) -> list[Any]:
    from mesh.client import Client

    out = []
    for node in nodes:
        with Client(node.api, timeout=5) as cache:
            stats = cache.stats()
        out.append((stats["digest"], stats.get("keys")))
    return out


def wait_converged(nodes: list[NodeProc], timeout: float = 15.0) -> tuple[bool, float, list]:
    started = time.monotonic()
    seen: list = []
    while time.monotonic() - started < timeout:
        seen = digests(nodes)
        if len({d for d, _ in seen}) == 1:
            return True, time.monotonic() - started, seen
        time.sleep(0.1)
    return False, time.monotonic() - started, seen


def run(root: Path, args: argparse.Namespace) -> dict:
    timeline = Timeline(phases=8)
    nodes = start_mesh(root, 3)
    n1, _, n3 = nodes
    balancer, front, balancer_log = start_balancer(root, [n.api for n in nodes], "INFO")
    fill(front)
    out_file = root / "load.json"
    argv = [sys.executable, __file__, "--serve-load", front, "--threads", str(args.threads)]
    argv += ["--out", str(out_file), "--timeout", str(args.timeout)]
    load = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert load.stdout is not None and load.stdin is not None
    if load.stdout.readline().strip() != "started":
        raise SystemExit("the load process did not start")
    t0 = timeline.mark("load start")
    timeline.phase("warm-up")
    time.sleep(args.warmup)

    # 1. kill -9
    timeline.mark("kill -9 n3")
    n3.kill()
    timeline.phase("n3 killed")
    time.sleep(args.settle)

    # 2. writes it misses
    timeline.mark("writes start")
    writes_s, write_failures = write_many(front, args.writes, "missed")
    timeline.mark("writes end")
    timeline.phase(f"{args.writes:,} writes in {writes_s:.1f} s")

    # 3. restart on the same endpoints
    restart = timeline.mark("restart n3")
    n3.start([n.repl for n in nodes if n is not n3])
    ready_s = n3.wait_ready()
    timeline.mark("n3 ready", restart + ready_s)
    back = wait_log(balancer_log, r"node n3 \(.*\) in rotation", restart, 10)
    if back is not None:
        timeline.mark("n3 in rotation", back)
    restart_steps = {
        "first log line": _first(log_times(n3.log_path, r" n3 ", restart)),
        "replayed its log (catching up)": _first(log_times(n3.log_path, r"catching up", restart)),
        "ready": _first(log_times(n3.log_path, r"node n3 ready", restart)),
    }
    restart_steps = {k: None if v is None else v - restart for k, v in restart_steps.items()}
    timeline.phase(f"n3 ready in {ready_s:.2f} s")
    time.sleep(args.settle)

    # 4. SIGSTOP: a hung node
    assert n1.proc is not None
    paused = timeline.mark("SIGSTOP n1")
    n1.proc.send_signal(signal.SIGSTOP)
    try:
        out = wait_log(balancer_log, r"node n1 \(.*\) hung: out of rotation", paused, 5)
        if out is not None:
            timeline.mark("n1 out of rotation", out)
        timeline.phase("n1 paused")
        time.sleep(max(0.0, paused + args.pause - time.time()))
    finally:
        n1.proc.send_signal(signal.SIGCONT)
    resumed = timeline.mark("SIGCONT n1")
    back = wait_log(balancer_log, r"node n1 \(.*\) in rotation", resumed, 10)
    if back is not None:
        timeline.mark("n1 in rotation", back)
    timeline.phase("n1 resumed")
    time.sleep(args.settle)

    # the end: stop the load, read its records, check the nodes agree
    load.stdin.close()
    load.wait(args.timeout + 30)
    timeline.mark("load end")
    timeline.phase("load stopped")
    converged, converge_s, seen = wait_converged(nodes)
    timeline.phase("converged" if converged else "DIVERGED")
    timeline.close()
    end(load)
    end(balancer)
    data = json.loads(out_file.read_text())
    return analyse(
        data,
        timeline.events,
        t0,
        {
            "writes": args.writes,
            "writes_s": writes_s,
            "write_failures": write_failures,
            "ready_s": ready_s,
            "restart_steps_s": restart_steps,
            "converged": converged,
            "converge_s": converge_s,
            "digests": [d for d, _ in seen],
        },
    )


# ---------------------------------------------------------------------- figures


def window_stats(records: list[list], start: float, stop: float) -> dict:
    inside = [r for r in records if start <= r[0] < stop]
    latencies = [r[1] for r in inside]
    return {
        "from_s": start,
        "to_s": stop,
        "requests": len(inside),
        "failed": sum(1 for r in inside if not r[2]),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies, default=math.nan) * 1000,
    }


def analyse(data: dict, events: dict[str, float], t0: float, facts: dict) -> dict:
    records = data["records"]
    ev = {name: when - t0 for name, when in events.items()}
    for r in records:
        r[0] -= t0
    windows = {
        "baseline": window_stats(records, 0.5, ev["kill -9 n3"] - LEAD_S),
        "kill": window_stats(records, ev["kill -9 n3"] - LEAD_S, ev["kill -9 n3"] + 2.0),
        "writes while down": window_stats(records, ev["writes start"], ev["writes end"]),
        "restart": window_stats(
            records, ev["restart n3"], max(ev["n3 ready"], ev.get("n3 in rotation", 0)) + 1.0
        ),
        "hang": window_stats(records, ev["SIGSTOP n1"] - LEAD_S, ev["SIGCONT n1"] + 1.0),
        "whole run": window_stats(records, 0.0, math.inf),
    }
    failover = [r for r in records if _in_failover(r[0], windows)]
    failover_latencies = [r[1] for r in failover]
    hung_s = ev["n1 out of rotation"] - ev["SIGSTOP n1"] if "n1 out of rotation" in ev else None
    failed = sum(1 for r in records if not r[2]) + facts["write_failures"]
    return {
        **facts,
        "failed_requests": failed,
        "load_requests": len(records),
        "failures": data["failures"][:50],
        "hung_out_of_rotation_s": hung_s,
        "failover_p99_ms": percentile(failover_latencies, 99) * 1000,
        "failover_max_ms": max(failover_latencies, default=math.nan) * 1000,
        "restart_in_rotation_s": (
            ev["n3 in rotation"] - ev["restart n3"] if "n3 in rotation" in ev else None
        ),
        "events_s": ev,
        "windows": windows,
        "bins": bins(records),
        "_records": records,
    }


def _in_failover(start: float, windows: dict) -> bool:
    return any(
        windows[name]["from_s"] <= start < windows[name]["to_s"]
        for name in ("kill", "restart", "hang")
    )


def bins(records: list[list]) -> list[dict]:
    """Per ``BIN_S`` of start time: requests, failures, p50/p99/max latency (ms)."""
    grouped: dict[int, list[list]] = {}
    for r in records:
        grouped.setdefault(int(r[0] / BIN_S), []).append(r)
    out = []
    for index in range(min(grouped, default=0), max(grouped, default=-1) + 1):
        if index not in grouped:  # nothing started then: a stall
            out.append({"t_s": round(index * BIN_S, 3), "requests": 0, "failed": 0})
            continue
        latencies = [r[1] for r in grouped[index]]
        out.append(
            {
                "t_s": round(index * BIN_S, 3),
                "requests": len(latencies),
                "failed": sum(1 for r in grouped[index] if not r[2]),
                "p50_ms": percentile(latencies, 50) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000,
                "max_ms": max(latencies) * 1000,
            }
        )
    return out


def plot(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot")
        return None
    records, ev = result["_records"], result["events_s"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=[3, 1])
    ok = [r for r in records if r[2]]
    bad = [r for r in records if not r[2]]
    top.scatter(
        [r[0] for r in ok],
        [r[1] * 1000 for r in ok],
        s=2,
        alpha=0.35,
        lw=0,
        rasterized=True,
        label="request",
    )
    if bad:
        top.scatter(
            [r[0] for r in bad],
            [r[1] * 1000 for r in bad],
            s=18,
            c="red",
            marker="x",
            label=f"failed ({len(bad)})",
        )
    b = result["bins"]
    top.plot(
        [x["t_s"] for x in b],
        [x.get("p99_ms", math.nan) for x in b],
        c="black",
        lw=0.8,
        label="p99 per 100 ms",
    )
    top.axhline(TARGET_P99_S * 1000, c="grey", ls=":", lw=0.8)
    top.set_yscale("log")
    top.set_ylabel("latency (ms)")
    top.set_title(
        f"failover under load: {result['load_requests']:,} requests, "
        f"{result['failed_requests']} failed; n3 ready {result['ready_s']:.2f} s after restart "
        f"({result['writes']:,} writes missed); hung n1 out of rotation after "
        f"{_fmt_s(result['hung_out_of_rotation_s'])}"
    )
    bottom.plot([x["t_s"] for x in b], [x["requests"] / BIN_S for x in b], lw=0.8)
    bottom.set_ylabel("requests/s")
    bottom.set_xlabel("seconds since the load started")
    top.axvspan(ev["writes start"], ev["writes end"], color="orange", alpha=0.08)
    colors = {
        "kill": "red",
        "restart": "green",
        "ready": "green",
        "rotation": "blue",
        "SIGSTOP": "purple",
        "SIGCONT": "purple",
    }
    shown = [(n, t) for n, t in sorted(ev.items(), key=lambda e: e[1]) if "load" not in n]
    for i, (name, when) in enumerate(shown):
        color = next((c for k, c in colors.items() if k in name), "grey")
        for axis in (top, bottom):
            axis.axvline(when, c=color, lw=0.8, ls="--" if "rotation" in name else "-")
        top.text(
            when,
            0.97 - 0.06 * (i % 5),
            f" {name} ({when:.2f} s)",
            transform=top.get_xaxis_transform(),
            va="top",
            fontsize=7,
            color=color,
            bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5},
        )
    top.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def _fmt_s(value: float | None) -> str:
    return "never seen" if value is None else f"{value:.2f} s"


def report(result: dict) -> None:
    rows = [
        (
            name,
            w["requests"],
            w["failed"],
            w["p50_ms"],
            w["p99_ms"],
            w["max_ms"],
            f"{w['from_s']:.1f}-{w['to_s']:.1f}",
        )
        for name, w in result["windows"].items()
    ]
    print_table(
        "latency by window (client-side, ms; windows by request start, seconds since load start)",
        ["window", "requests", "failed", "p50 ms", "p99 ms", "max ms", "seconds"],
        rows,
    )
    hung = result["hung_out_of_rotation_s"]
    checks = [
        (
            "failed requests",
            result["failed_requests"],
            f"== {TARGET_FAILED}",
            result["failed_requests"] == TARGET_FAILED,
        ),
        (
            "hung node out of rotation (s)",
            _fmt_s(hung),
            f"< {TARGET_HUNG_S}",
            hung is not None and hung < TARGET_HUNG_S,
        ),
        (
            "p99 over the failover windows (ms)",
            result["failover_p99_ms"],
            f"< {TARGET_P99_S * 1000:.0f}",
            result["failover_p99_ms"] < TARGET_P99_S * 1000,
        ),
        (
            f"restarted node ready after {result['writes']:,} missed writes (s)",
            result["ready_s"],
            f"< {TARGET_READY_S}",
            result["ready_s"] < TARGET_READY_S,
        ),
        (
            "nodes converged (equal digests)",
            "yes" if result["converged"] else "NO",
            "yes",
            result["converged"],
        ),
    ]
    print_table(
        "failover targets",
        ["figure", "value", "target", "verdict"],
        [(name, value, target, "ok" if good else "BELOW") for name, value, target, good in checks],
    )
    print(
        f"max latency over the failover windows {result['failover_max_ms']:,.0f} ms; "
        f"restarted node back in rotation {_fmt_s(result['restart_in_rotation_s'])} after start; "
        f"{result['writes']:,} writes while down took {result['writes_s']:.1f} s "
        f"({result['writes'] / result['writes_s']:,.0f}/s)"
    )
    steps = ", ".join(f"{name} {_fmt_s(when)}" for name, when in result["restart_steps_s"].items())
    print(f"restarted node, from process start (its log lines, ms resolution): {steps}")
    for failure in result["failures"][:10]:
        print(f"  failed: {failure}")


def main() -> None:
    compile_mesh()  # time the node, not the bytecode compiler
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=4, help="load client threads")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the kill")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds of load after a phase")
    parser.add_argument("--writes", type=int, default=100_000, help="writes while n3 is down")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds n1 stays SIGSTOPped")
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout (s)")
    parser.add_argument("--json", default=None, help="output (default bench/results/...)")
    parser.add_argument("--png", default=str(RESULTS / "failover.png"))
    parser.add_argument("--keep", help="use (and keep) this folder for data and logs")
    parser.add_argument("--serve-load", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_load:
        return serve_load(args.serve_load, args.threads, args.out, args.timeout)

    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pycache-failover-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        try:
            result = run(root, args)
        finally:
            end_all()
    report(result)
    png = plot(result, Path(args.png))
    records = result.pop("_records")
    result["png"] = str(png) if png else None
    result["wall_s"] = time.perf_counter() - wall
    result["latency_ms_quantiles"] = {
        q: percentile([r[1] for r in records], q) * 1000 for q in (50, 90, 99, 99.9)
    }
    result["mean_ops_s"] = (
        len(records) / max(1e-9, records[-1][0] - records[0][0]) if records else 0
    )
    write_json(
        "failover",
        {
            "config": {k: v for k, v in vars(args).items() if not k.startswith(("serve", "out"))},
            "cpus": os.cpu_count(),
            **result,
        },
        args.json,
    )
    print(f"total {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
