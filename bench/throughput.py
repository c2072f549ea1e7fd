"""Throughput and latency through the edge, the balancer and straight to a node, beside ceilings.

    python bench/throughput.py [--runs 3] [--seconds 4] [--connections 64] [--window 64]
        [--http-client auto|wrk|python] [--skip http,zmq,redis] [--json PATH]
        [--peer-plane curve|insecure|curve,insecure]

One run of the script starts, as separate processes on 127.0.0.1 (OS-picked
ports): three replicating nodes (``fsync=always``, the default), a balancer
in front of them and an edge in front of the balancer; and the ceilings,
measured in the same run with the same load generators:

- **HTTP**: a bare Tornado app whose handler does one ``zmq.asyncio`` round
  trip to a bare pyzmq echo server (``node_bench.py --serve-echo``) and
  answers a small JSON body.  The edge and it get the very same load: ``wrk``
  with ``--connections`` keep-alive connections (``-t 2``), GET and POST of
  random keys out of 10,000 (100-byte values); without ``wrk`` a Python
  asyncio client with as many connections (its ceiling is lower, so the
  ratio still compares like with like, but absolute rates are not wrk's).
- **ZeroMQ**: ``zmq.proxy(ROUTER, DEALER)`` (libzmq's C forwarder) in its own
  process, in front of the same three nodes; the balancer and it get the
  same synchronous DEALER client with ``--window`` requests in flight, SET
  and GET.  The same client also talks straight to one node.
- **Redis** (when ``redis-server`` and ``redis-benchmark`` are on PATH): a
  master with two replicas on loopback (no persistence), ``redis-benchmark
  -c 50 -d 100 -r 10000`` SET and GET, beside our replicated SETs through
  the balancer.  Skipped with a note otherwise.

Every figure is the median of ``--runs`` runs of ``--seconds`` each; ours and
its ceiling are measured alternately within each run and the ratio is the
median of the per-run ratios.  Latency p50/p99 are medians over runs of each
run's percentiles (client-side, from send to reply).

The nodes' peer plane (replication: repl ROUTER/DEALER and PUB/SUB) runs on
CURVE, as users get it (``--peer-plane curve``, the default), or without it
(``--peer-plane insecure``: the nodes get ``--insecure``).  With both,
``--peer-plane curve,insecure``, the figures above are measured on the
first's mesh, and a second mesh with its own balancer runs beside it: the
replicated SET through the balancer is then measured ``--runs`` times on each,
the two sides alternating (A B, B A, A B, ...), and the table adds their ratio
of medians (issue 17: goal >= 0.9x).  ``--skip http,zmq,redis --peer-plane
curve,insecure`` measures that alone.

Targets (issue 4, item 7): the edge >= 0.8x the bare Tornado handler; the
balancer >= 0.6x ``zmq.proxy``; replicated SETs through the balancer with 64
in flight >= 0.2x a Redis master with two replicas at 50 connections.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import itertools
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ANY,
    NodeProc,
    cpu_seconds,
    end,
    end_all,
    median_of,
    percentile,
    print_table,
    spawn,
    start_balancer,
    start_edge,
    start_mesh,
    write_json,
)

from mesh.core import envelope, wire  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # the ``bench`` extra is optional
    tqdm = None

VALUE = b"v" * 100
KEYS = 10_000
POOL = 50_000  # distinct request frames (and ids) the ZeroMQ client cycles through
REDIS_CLIENTS = 50
TARGET_EDGE = 0.8
TARGET_BALANCER = 0.6
TARGET_REDIS = 0.2
TARGET_CURVE = 0.9  # issue 17: replicated SETs with CURVE on the peer plane / without
PLANES = ("curve", "insecure")
TARGET_NODE_CPU_US = 10  # issue 15: CPU per replicated SET, per node
TARGET_REDIS_15 = 0.5  # issue 15: replicated SETs through the balancer / Redis 1+2
HERE = Path(__file__).resolve().parent

# ---------------------------------------------------------------------- ceilings (child modes)


def serve_proxy(nodes: list[str]) -> None:
    """The balancer's ceiling: libzmq's own forwarder in front of the same nodes."""
    ctx = zmq.Context()
    front, back = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (front, back):
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.setsockopt(zmq.RCVHWM, 100_000)
    front.bind(ANY)
    for endpoint in nodes:
        back.connect(endpoint)
    print(front.getsockopt(zmq.LAST_ENDPOINT).decode(), flush=True)
    zmq.proxy(front, back)  # until killed


def serve_tornado(echo: str) -> None:
    """The edge's ceiling: a Tornado handler doing one zmq.asyncio round trip to an echo server."""
    import tornado.httpserver
    import tornado.netutil
    import tornado.web
    import zmq.asyncio

    body = (
        b'{"message":"Cache key get success","payload":{"key":"key:000000","value":"'
        + VALUE
        + b'","last_updated_at":"2026-01-01T00:00:00.000Z","ttl":null}}'
    )

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(echo)
        ids = itertools.count(1)
        waiting: dict[int, asyncio.Future] = {}
        loop = asyncio.get_running_loop()

        async def read_replies() -> None:
            while True:
                frame = await sock.recv()
                future = waiting.pop(int.from_bytes(frame[:8], "big"), None)
                if future is not None and not future.done():
                    future.set_result(frame)

        class Handler(tornado.web.RequestHandler):
            async def get(self, key: str) -> None:
                await self.round_trip(wire.encode_request(0, "GET", key))

            async def post(self, key: str) -> None:
                await self.round_trip(wire.encode_request(0, "SET", key, self.request.body))

            async def round_trip(self, request: bytes) -> None:
                request_id = next(ids)
                waiting[request_id] = future = loop.create_future()
                await sock.send(request_id.to_bytes(8, "big") + request)
                await future
                self.set_header("Content-Type", "application/json; charset=UTF-8")
                self.finish(body)

        reader = asyncio.create_task(read_replies())  # noqa: F841 (kept alive)
        app = tornado.web.Application(
            [(r"/api/cache/([^/]+)/?", Handler)], log_function=lambda handler: None
        )
        server = tornado.httpserver.HTTPServer(app)
        sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
        server.add_sockets(sockets)
        print(f"http://127.0.0.1:{sockets[0].getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_child(argv: list[str]) -> tuple[subprocess.Popen, str]:
    """A helper child that prints its endpoint on its first line of output."""
    proc = spawn(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line:
        raise SystemExit(f"{argv[2:]} did not start (exit {proc.poll()})")
    return proc, line


# ---------------------------------------------------------------------- ZeroMQ load


def frames_for(op: str, seed: int) -> list[bytes]:
    """``POOL`` request frames with ids 1..POOL over random keys out of ``KEYS``."""
    rng = random.Random(seed)
    keys = [f"key:{rng.randrange(KEYS):06d}" for _ in range(POOL)]
    if op == "SET":
        return [wire.encode_request(i, "SET", k, VALUE) for i, k in enumerate(keys, 1)]
    return [wire.encode_request(i, "GET", k) for i, k in enumerate(keys, 1)]


def zmq_load(endpoint: str, frames: list[bytes], window: int, seconds: float) -> dict:
    """One DEALER keeps ``window`` requests in flight for ``seconds``: ops/s, p50/p99, errors."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.connect(endpoint)
    perf, peek, send, recv = time.perf_counter, envelope.peek_head, sock.send, sock.recv
    sent_at = [0.0] * (len(frames) + 1)
    latencies: list[float] = []
    errors = done = 0
    try:
        send(wire.encode_request(0, "PING"))
        recv()  # connected and warm
        total = len(frames)
        started = perf()
        stop_at = started + seconds
        for i in range(window):
            sent_at[i + 1] = perf()
            send(frames[i])
        nxt, in_flight, sending = window, window, True
        while in_flight:
            reply = recv()
            now = perf()
            request_id, code = peek(reply)
            latencies.append(now - sent_at[request_id])
            errors += code != wire.OK
            done += 1
            in_flight -= 1
            if sending:
                if not done & 255 and now >= stop_at:
                    sending = False
                    continue
                index = nxt % total
                sent_at[index + 1] = perf()
                send(frames[index])
                nxt += 1
                in_flight += 1
        elapsed = perf() - started
    except zmq.Again:
        raise SystemExit(f"no reply from {endpoint} within 10 s ({done:,} done)") from None
    finally:
        sock.close()
        ctx.term()
    return _sample(done, elapsed, latencies, errors)


def with_cpu(pid: int, measure: Callable[[], dict]) -> dict:
    """``measure()``, plus the CPU time process ``pid`` spent per request meanwhile (us)."""
    before = cpu_seconds(pid)
    sample = measure()
    sample["cpu_us_per_op"] = (cpu_seconds(pid) - before) / max(1, sample["requests"]) * 1e6
    return sample


def with_cpus(pids: list[int], measure: Callable[[], dict]) -> dict:
    """``measure()``, plus the CPU time each of ``pids`` spent per request meanwhile
    (``procs_cpu_us_per_op``, us, in the order of ``pids``), and of that its main
    thread's, the one that runs Python (``procs_main_thread_us_per_op``; the rest is
    libzmq's I/O threads: the sockets, CURVE)."""
    before = [(cpu_seconds(pid), cpu_seconds(pid, pid)) for pid in pids]
    sample = measure()
    per_op = 1e6 / max(1, sample["requests"])
    spent = [
        ((cpu_seconds(pid) - b[0]) * per_op, (cpu_seconds(pid, pid) - b[1]) * per_op)
        for pid, b in zip(pids, before, strict=True)
    ]
    sample["procs_cpu_us_per_op"] = [whole for whole, _ in spent]
    sample["procs_main_thread_us_per_op"] = [python for _, python in spent]
    return sample


def _sample(done: int, elapsed: float, latencies: list[float], errors: int) -> dict:
    return {
        "ops_s": done / elapsed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "errors": errors,
        "requests": done,
    }


def fill(endpoint: str) -> None:
    """Give every key a value, so that GETs hit."""
    frames = [wire.encode_request(i + 1, "SET", f"key:{i:06d}", VALUE) for i in range(KEYS)]
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 10_000)
    sock.connect(endpoint)
    try:
        for start in range(0, KEYS, 1000):
            batch = frames[start : start + 1000]
            for frame in batch:
                sock.send(frame)
            for _ in batch:
                if envelope.peek_head(sock.recv())[1] != wire.OK:
                    raise SystemExit("filling the key space failed")
    finally:
        sock.close()
        ctx.term()


# ---------------------------------------------------------------------- HTTP load

WRK_SCRIPT = """
local body = '"' .. string.rep("v", 100) .. '"'
local headers = {["Content-Type"] = "application/json"}
local method = "%s"
request = function()
  local path = string.format("/api/cache/key:%%06d/", math.random(0, 9999))
  if method == "POST" then
    return wrk.format("POST", path, headers, body)
  end
  return wrk.format("GET", path)
end
"""

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_load(url: str, method: str, seconds: float, connections: int, scratch: Path) -> dict:
    """``wrk -t2 -c connections --latency``: requests/s, p50/p99, errors (non-2xx and socket)."""
    script = scratch / f"wrk-{method}.lua"
    script.write_text(WRK_SCRIPT % method)
    argv = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
    argv += ["--latency", "-s", str(script), url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    if rate is None:
        raise SystemExit(f"cannot read wrk's output:\n{out}")
    pcts = {
        q: float(v) * _UNIT[u]
        for q, v, u in re.findall(r"^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m)\b", out, re.M)
    }
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses:\s+(\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    done = re.search(r"(\d+) requests in", out)
    return {
        "ops_s": float(rate[1]),
        "p50_ms": pcts.get("50", float("nan")),
        "p99_ms": pcts.get("99", float("nan")),
        "errors": errors,
        "requests": int(done[1]) if done else 0,
    }


def python_http_load(url: str, method: str, seconds: float, connections: int) -> dict:
    """The wrk stand-in: ``connections`` keep-alive asyncio connections, one request each."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()  # type: ignore[union-attr]
    body = b'"' + VALUE + b'"'
    latencies: list[float] = []
    counts = {"done": 0, "errors": 0}

    def request(rng: random.Random) -> bytes:
        path = f"/api/cache/key:{rng.randrange(KEYS):06d}/".encode()
        if method == "POST":
            return (
                b"POST " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode()
                + b"\r\n\r\n"
                + body
            )
        return b"GET " + path + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n"

    async def connection(seed: int, stop_at: float) -> None:
        rng = random.Random(seed)
        reader, writer = await asyncio.open_connection(host, int(port))
        perf = time.perf_counter
        try:
            while perf() < stop_at:
                started = perf()
                writer.write(request(rng))
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                await reader.readexactly(int(length[1]) if length else 0)
                latencies.append(perf() - started)
                counts["done"] += 1
                counts["errors"] += head[9:10] != b"2"
        finally:
            writer.close()

    async def run() -> float:
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(connection(i, stop_at) for i in range(connections)))
        return time.perf_counter() - started

    elapsed = asyncio.run(run())
    return _sample(counts["done"], elapsed, latencies, counts["errors"])


# ---------------------------------------------------------------------- Redis side by side


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redis_info(port: int) -> dict[str, str]:
    """``INFO replication`` of the Redis on ``port`` (raw RESP); {} when it does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n")
            data = b""
            while not data.endswith(b"\r\n") or data.count(b"\r\n") < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return {}
    text = data.decode(errors="replace")
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def start_redis(root: Path) -> tuple[int, list[subprocess.Popen]]:
    """A Redis master with two replicas (no persistence); the master's port and the processes."""
    ports = [_free_port() for _ in range(3)]
    procs = []
    for n, port in enumerate(ports):
        folder = root / f"redis{n}"
        folder.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)]
        argv += ["--save", "", "--appendonly", "no"]
        if n:
            argv += ["--replicaof", "127.0.0.1", str(ports[0])]
        procs.append(spawn(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _redis_info(ports[0]).get("connected_slaves") == "2" and all(
            _redis_info(p).get("master_link_status") == "up" for p in ports[1:]
        ):
            return ports[0], procs
        time.sleep(0.05)
    raise SystemExit("redis replicas did not connect within 30 s")


def redis_benchmark(port: int, op: str, requests: int) -> dict:
    """``redis-benchmark -c 50 -d 100 -r 10000 -t op --csv``: requests/s, p50/p99."""
    argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(REDIS_CLIENTS)]
    argv += ["-n", str(requests), "-d", str(len(VALUE)), "-r", str(KEYS), "-t", op.lower()]
    out = subprocess.run(argv + ["--csv"], capture_output=True, text=True, timeout=600).stdout
    rows = [r for r in csv.DictReader(io.StringIO(out)) if r.get("test", "").startswith(op)]
    if not rows:
        raise SystemExit(f"cannot read redis-benchmark's output:\n{out}")
    row = rows[0]
    return {
        "ops_s": float(row["rps"]),
        "p50_ms": float(row.get("p50_latency_ms", "nan")),
        "p99_ms": float(row.get("p99_latency_ms", "nan")),
        "errors": 0,
        "requests": requests,
    }


# ---------------------------------------------------------------------- runs and medians


class Progress:
    """A tqdm bar over the planned measurement seconds (plain lines without tqdm)."""

    def __init__(self, total: float) -> None:
        self.bar = tqdm(total=round(total), unit="s", desc="measuring") if tqdm else None

    def step(self, what: str, seconds: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(what)
            self.bar.update(round(seconds))
        else:
            print(f"  measured {what}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(samples: list[dict]) -> dict:
    """Medians over runs of each figure; every run kept."""
    return {
        "ops_s": statistics.median(s["ops_s"] for s in samples),
        "p50_ms": statistics.median(s["p50_ms"] for s in samples),
        "p99_ms": statistics.median(s["p99_ms"] for s in samples),
        "errors": sum(s["errors"] for s in samples),
        "cpu_us_per_op": statistics.median(s.get("cpu_us_per_op", math.nan) for s in samples),
        "runs": samples,
    }


def paired(runs: int, ours: Callable[[], dict], ceiling: Callable[[], dict]) -> dict:
    """Measure ours then its ceiling, ``runs`` times; medians and the median per-run ratio."""
    a: list[dict] = []
    b: list[dict] = []

    def one() -> float:
        a.append(ours())
        b.append(ceiling())
        return a[-1]["ops_s"] / b[-1]["ops_s"]

    ratio, ratios = median_of(runs, one)
    return {"ours": summary(a), "ceiling": summary(b), "ratio": ratio, "ratios": ratios}


def single(runs: int, measure: Callable[[], dict]) -> dict:
    samples: list[dict] = []

    def one() -> float:
        samples.append(measure())
        return samples[-1]["ops_s"]

    median_of(runs, one)
    return summary(samples)


def verdict(ratio: float, target: float) -> str:
    return f">= {target}x {'ok' if ratio >= target else 'BELOW'}"


# ---------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each run")
    parser.add_argument("--connections", type=int, default=64, help="HTTP connections")
    parser.add_argument("--window", type=int, default=64, help="ZeroMQ requests in flight")
    parser.add_argument("--http-client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--skip", default="", help="comma-separated: http, zmq, redis")
    parser.add_argument("--json", default=None, help="output (default bench/results/...)")
    parser.add_argument(
        "--peer-plane",
        default="curve",
        help="the nodes' peer plane: curve (default), insecure, or curve,insecure (A/B)",
    )
    parser.add_argument("--serve-proxy", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--serve-tornado", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy)
    if args.serve_tornado:
        return serve_tornado(args.serve_tornado)

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    planes = [p.strip() for p in args.peer_plane.split(",") if p.strip()]
    if not planes or len(set(planes)) != len(planes) or not set(planes) <= set(PLANES):
        raise SystemExit("--peer-plane: curve, insecure, or both (comma-separated)")
    client = args.http_client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"
    elif client == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not on PATH (apt-get install -y wrk, or --http-client python)")
    redis_ok = bool(shutil.which("redis-server") and shutil.which("redis-benchmark"))
    if "redis" not in skip and not redis_ok:
        print("redis-server or redis-benchmark not on PATH: skipping the Redis side by side")
    do_redis = "redis" not in skip and redis_ok and "zmq" not in skip

    measurements = 4 * ("http" not in skip) + 6 * ("zmq" not in skip) + 2 * do_redis
    measurements += len(planes) * (len(planes) > 1)
    planned = measurements * args.runs * args.seconds + 2 * ("http" not in skip)  # + warm-ups
    print(
        f"{measurements} figures x {args.runs} runs x {args.seconds:g} s "
        f"(about {planned / 60:.1f} min of load); {os.cpu_count()} CPUs, HTTP load: {client}; "
        f"peer plane: {' and '.join(planes)}"
    )
    wall = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pycache-throughput-") as tmp:
        root = Path(tmp)
        try:
            meshes = {plane: start_plane(root, plane, len(planes) > 1) for plane in planes}
            nodes, balancer, front = meshes[planes[0]]
            apis = [n.api for n in nodes]
            progress = Progress(planned)
            if len(planes) > 1:
                results["peer_plane"] = peer_plane_part(meshes, args, progress)
            if "http" not in skip:
                results["http"] = http_part(root, front, args, client, progress)
            if "zmq" not in skip:
                results["zmq"] = zmq_part(nodes, balancer.pid, apis, front, args, progress)
            if do_redis:
                results["redis"] = redis_part(root, args, progress)
            progress.close()
        finally:
            end_all()
    report(results, args, client)
    write_json(
        "throughput",
        {
            "runs": args.runs,
            "seconds": args.seconds,
            "connections": args.connections,
            "window": args.window,
            "http_client": client,
            "peer_plane": planes[0] if len(planes) == 1 else planes,
            "value_bytes": len(VALUE),
            "keys": KEYS,
            "wall_s": time.perf_counter() - wall,
            "results": results,
        },
        args.json,
    )
    print(f"total {time.perf_counter() - wall:.0f} s")


def start_plane(
    root: Path, plane: str, own_folder: bool
) -> tuple[list[NodeProc], subprocess.Popen, str]:
    """Three nodes with ``plane`` as their peer plane, a balancer, every key filled."""
    if own_folder:  # two meshes side by side
        root = root / plane
        root.mkdir()
    extra = ["--log-level", "WARNING"] + (["--insecure"] if plane == "insecure" else [])
    nodes = start_mesh(root, 3, extra)
    balancer, front, _ = start_balancer(root, [n.api for n in nodes])
    fill(front)
    return nodes, balancer, front


def peer_plane_part(
    meshes: dict[str, tuple[list[NodeProc], subprocess.Popen, str]],
    args: argparse.Namespace,
    progress: Progress,
) -> dict:
    """Replicated SETs through each mesh's balancer, the meshes taking turns (A B, B A, ...).

    Besides the balancer's CPU per request, the three nodes' CPU per request
    (summed): where the peer plane's cost shows.
    """
    frames = frames_for("SET", seed=7)
    planes = list(meshes)
    samples: dict[str, list[dict]] = {plane: [] for plane in planes}
    for run in range(args.runs):
        for plane in planes if run % 2 == 0 else planes[::-1]:
            nodes, balancer, front = meshes[plane]
            pids = [n.proc.pid for n in nodes if n.proc is not None]
            before = [cpu_seconds(pid) for pid in pids]
            sample = with_cpu(
                balancer.pid, lambda f=front: zmq_load(f, frames, args.window, args.seconds)
            )
            used = sum(cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True))
            sample["nodes_cpu_us_per_op"] = used / max(1, sample["requests"]) * 1e6
            samples[plane].append(sample)
            progress.step(f"replicated SET, {plane}", args.seconds)
    out: dict[str, Any] = {plane: summary(samples[plane]) for plane in planes}
    for plane in planes:
        out[plane]["nodes_cpu_us_per_op"] = statistics.median(
            s["nodes_cpu_us_per_op"] for s in samples[plane]
        )
    curve, insecure = samples["curve"], samples["insecure"]
    out["ratio"] = out["curve"]["ops_s"] / out["insecure"]["ops_s"]  # CURVE / insecure, of medians
    out["ratios"] = [c["ops_s"] / i["ops_s"] for c, i in zip(curve, insecure, strict=True)]
    out["order"] = [planes if run % 2 == 0 else planes[::-1] for run in range(args.runs)]
    return out


def http_part(
    root: Path, front: str, args: argparse.Namespace, client: str, progress: Progress
) -> dict:
    edge, edge_url = start_edge(root, front)
    echo, echo_endpoint = start_child([sys.executable, str(HERE / "node_bench.py"), "--serve-echo"])
    tornado, tornado_url = start_child([sys.executable, __file__, "--serve-tornado", echo_endpoint])
    try:

        def load(url: str, pid: int, method: str, what: str, seconds: float = args.seconds) -> dict:
            if client == "wrk":
                sample = with_cpu(
                    pid, lambda: wrk_load(url, method, seconds, args.connections, root)
                )
            else:
                sample = with_cpu(
                    pid, lambda: python_http_load(url, method, seconds, args.connections)
                )
            progress.step(what, seconds)
            return sample

        for url, pid in ((edge_url, edge.pid), (tornado_url, tornado.pid)):  # warm up
            load(url, pid, "GET", "warm-up", 1.0)
        out = {}
        for method in ("GET", "POST"):
            out[method] = paired(
                args.runs,
                lambda m=method: load(edge_url, edge.pid, m, f"edge {m}"),
                lambda m=method: load(tornado_url, tornado.pid, m, f"tornado {m}"),
            )
        return out
    finally:
        for proc in (tornado, echo):
            end(proc, signal.SIGKILL)
        end(edge)


def zmq_part(
    nodes: list[NodeProc],
    balancer_pid: int,
    apis: list[str],
    front: str,
    args: argparse.Namespace,
    progress: Progress,
) -> dict:
    proxy, proxy_endpoint = start_child([sys.executable, __file__, "--serve-proxy", *apis])
    node = nodes[0]
    assert node.proc is not None
    node_pids = [n.proc.pid for n in nodes if n.proc is not None]
    try:
        out: dict[str, Any] = {"balancer": {}, "node": {}}
        for op in ("SET", "GET"):
            frames = frames_for(op, seed=7)

            def run(endpoint: str, pid: int, what: str, f: list[bytes] = frames) -> dict:
                # each node's CPU too: issue 15's CPU per replicated SET, per node
                sample = with_cpus(
                    node_pids,
                    lambda: with_cpu(pid, lambda: zmq_load(endpoint, f, args.window, args.seconds)),
                )
                progress.step(what, args.seconds)
                return sample

            out["balancer"][op] = paired(
                args.runs,
                lambda o=op, r=run: r(front, balancer_pid, f"balancer {o}"),
                lambda o=op, r=run: r(proxy_endpoint, proxy.pid, f"zmq.proxy {o}"),
            )
            out["node"][op] = single(
                args.runs, lambda o=op, r=run: r(node.api, node.proc.pid, f"node {o}")
            )
        return out
    finally:
        end(proxy, signal.SIGKILL)


def redis_part(root: Path, args: argparse.Namespace, progress: Progress) -> dict:
    port, procs = start_redis(root)
    try:
        pilot = redis_benchmark(port, "SET", 20_000)  # warm-up, and the size of a run
        requests = max(20_000, int(pilot["ops_s"] * args.seconds))
        out = {"requests_per_run": requests}
        for op in ("SET", "GET"):

            def run(o: str = op) -> dict:
                sample = with_cpus(
                    [p.pid for p in procs],
                    lambda: with_cpu(procs[0].pid, lambda: redis_benchmark(port, o, requests)),
                )
                progress.step(f"redis {o}", args.seconds)
                return sample

            out[op] = single(args.runs, run)
        return out
    finally:
        for proc in procs:
            end(proc)


def report(results: dict, args: argparse.Namespace, client: str) -> None:
    header = ["path", "op", "ops/s", "p50 ms", "p99 ms", "errors", "ceiling", "ceiling ops/s"]
    header += ["c. p50 ms", "c. p99 ms", "c. errors", "ratio", "target"]
    rows: list[list[object]] = []
    cpu_rows: list[list[object]] = []

    def row(
        path: str,
        op: str,
        ours: dict,
        ceiling: dict | None = None,
        name: str = "",
        ratio: float | None = None,
        target: str = "-",
        process: str = "",
    ) -> None:
        rows.append([path, op, ours["ops_s"], ours["p50_ms"], ours["p99_ms"], ours["errors"]])
        if ceiling is None:
            rows[-1] += ["-", "-", "-", "-", "-", "-", target]
            cpu_rows.append([path, op, process, ours["cpu_us_per_op"], "-", "-"])
            return
        rows[-1] += [name, ceiling["ops_s"], ceiling["p50_ms"], ceiling["p99_ms"]]
        rows[-1] += [ceiling["errors"], ratio, target]
        ours_cpu, ceiling_cpu = ours["cpu_us_per_op"], ceiling["cpu_us_per_op"]
        cpu_rows.append([path, op, process, ours_cpu, ceiling_cpu, ceiling_cpu / ours_cpu])

    for method, pair in results.get("http", {}).items():
        row(
            f"edge (HTTP, {args.connections} conns)",
            method,
            pair["ours"],
            pair["ceiling"],
            "tornado+zmq echo",
            pair["ratio"],
            verdict(pair["ratio"], TARGET_EDGE),
            "edge / tornado",
        )
    zmq_results = results.get("zmq", {})
    for op, pair in zmq_results.get("balancer", {}).items():
        row(
            f"balancer ({args.window} in flight)",
            op,
            pair["ours"],
            pair["ceiling"],
            "zmq.proxy",
            pair["ratio"],
            verdict(pair["ratio"], TARGET_BALANCER),
            "balancer / proxy",
        )
    for op, sample in zmq_results.get("node", {}).items():
        row(f"one node ({args.window} in flight)", op, sample, process="node")
    redis = results.get("redis")
    if redis:
        name = f"redis 1+2 replicas, {REDIS_CLIENTS} c"
        for op in ("SET", "GET"):
            ours = zmq_results["balancer"][op]["ours"]
            redis[f"ratio_{op.lower()}"] = ours["ops_s"] / redis[op]["ops_s"]
            target = verdict(redis["ratio_set"], TARGET_REDIS) if op == "SET" else "-"
            row(
                f"balancer ({args.window} in flight)",
                op,
                ours,
                redis[op],
                name,
                redis[f"ratio_{op.lower()}"],
                target,
                "balancer / redis master",
            )
    peer = results.get("peer_plane")
    ab_rows: list[list[object]] = []
    if peer:
        for plane in PLANES:
            ours = peer[plane]
            rows.append([f"balancer ({args.window} in flight), peer plane {plane}", "SET"])
            rows[-1] += [ours["ops_s"], ours["p50_ms"], ours["p99_ms"], ours["errors"]]
            rows[-1] += ["-", "-", "-", "-", "-", "-", "-"]
            where = f"balancer, peer plane {plane}"
            cpu_rows.append([where, "SET", "balancer", ours["cpu_us_per_op"], "-", "-"])
            cpu_rows.append([where, "SET", "3 nodes", ours["nodes_cpu_us_per_op"], "-", "-"])
            ops = [r["ops_s"] for r in ours["runs"]]
            ab_rows.append([plane, ours["ops_s"], min(ops), max(ops), ours["nodes_cpu_us_per_op"]])
        rows.append(["CURVE / insecure (ratio of medians)", "SET", "-", "-", "-", "-", "-", "-"])
        rows[-1] += ["-", "-", "-", peer["ratio"], verdict(peer["ratio"], TARGET_CURVE)]
        ratios = peer["ratios"]
        ab_rows.append(
            ["CURVE / insecure", peer["ratio"], min(ratios), max(ratios), "per-run ratios"]
        )
    print_table(
        f"throughput: medians of {args.runs} runs x {args.seconds:g} s, {len(VALUE)}-byte values, "
        f"{KEYS:,} keys, 3 nodes fsync=always, HTTP load {client}, {os.cpu_count()} CPUs",
        header,
        rows,
    )
    print_table(
        "CPU time per request of the process in the middle (us; the ratio is ceiling / ours: "
        "what the throughput ratio would be if that process alone were the bottleneck)",
        ["path", "op", "process (ours / ceiling)", "ours us/op", "ceiling us/op", "ratio"],
        cpu_rows,
    )
    per_node_cpu_table(results, args.window)
    if ab_rows:
        print_table(
            f"peer plane A/B (issue 17): replicated SETs through the balancer, {args.runs} runs "
            f"per side, alternating; order {' '.join('/'.join(o) for o in peer['order'])}",
            ["peer plane", "median ops/s", "min", "max", "3 nodes' CPU us/op"],
            ab_rows,
        )


def per_node_cpu_table(results: dict, window: int) -> None:
    """Issue 15's first row: each node's CPU per replicated SET (through the balancer,
    ``window`` in flight) beside each Redis process's per SET (master + 2 replicas),
    medians over runs.  The issue's row is at a window of 64."""
    ours = results.get("zmq", {}).get("balancer", {}).get("SET", {}).get("ours")
    if not ours:
        return
    redis = results.get("redis", {}).get("SET")
    theirs = (
        [
            statistics.median(c)
            for c in zip(*(r["procs_cpu_us_per_op"] for r in redis["runs"]), strict=True)
        ]
        if redis
        else []
    )
    rows: list[list[object]] = []
    per_node = zip(*(r["procs_cpu_us_per_op"] for r in ours["runs"]), strict=True)
    main_threads = zip(*(r["procs_main_thread_us_per_op"] for r in ours["runs"]), strict=True)
    for n, (samples, python) in enumerate(zip(per_node, main_threads, strict=True), 1):
        us = statistics.median(samples)
        anchor = theirs[0 if n == 1 else min(n - 1, len(theirs) - 1)] if theirs else math.nan
        rows.append([f"node n{n}", us, f"{min(samples):.1f}-{max(samples):.1f}"])
        rows[-1].append(statistics.median(python))
        rows[-1] += [f"redis {'master' if n == 1 else 'replica'}", anchor, us / anchor]
        rows[-1] += [
            f"<= {TARGET_NODE_CPU_US} us: {'met' if us <= TARGET_NODE_CPU_US else 'not met'}"
        ]
    ours["per_node_cpu_us_per_op"] = [r[1] for r in rows]
    if redis:
        ratio = ours["ops_s"] / redis["ops_s"]
        rows.append(["replicated SET/s, balancer", ours["ops_s"], "-", "-", "redis 1+2, -c 50"])
        rows[-1] += [f"{redis['ops_s']:,.0f} SET/s", ratio]
        rows[-1] += [f">= {TARGET_REDIS_15}x: {'met' if ratio >= TARGET_REDIS_15 else 'not met'}"]
    print_table(
        f"issue 15: CPU per replicated SET, per node (balancer SET, {window} in flight;"
        " the issue's row: 64; medians over runs)"
        " beside each Redis process per SET (redis-benchmark -c 50, master + 2 replicas)",
        ["process", "us/SET", "range", "of it Python thread", "anchor", "anchor us/SET"]
        + ["ours / anchor", "target"],
        rows,
    )


if __name__ == "__main__":
    main()
