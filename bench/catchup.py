"""Catch-up and full sync of a restarted node, and replication lag under a steady load.

    python bench/catchup.py [--mutations 200000] [--runs 5] [--json PATH]
        [--stop term|kill] [--fsync always|interval|never] [--lag-rate 10000]
        [--lag-seconds 10] [--lag-runs 1] [--redis-runs N] [--busy-rate 6000]
        [--busy-runs 3] [--skip idle,catchup,busy,lag]
        [--peer-plane curve|insecure|curve,insecure]

Every run starts a fresh three-node mesh (separate ``python -m mesh node``
processes on 127.0.0.1, ``--fsync always`` by default) and writes 1,000 keys
to each node, so that every version vector names every origin (a node that
holds nothing at all is given a full sync, not a catch-up).  Then:

1. **Catch-up**: node 3 is stopped (SIGTERM, or SIGKILL with ``--stop
   kill``); ``--mutations`` SETs of distinct keys with 100-byte values land
   on nodes 1 and 2 (one thread each, ``Client.pipeline()`` batches of
   ``--batch``); node 3 is restarted on the endpoints it had bound and timed
   from process start to ``ready`` (its ``node.json`` polled every 2 ms).
   entries/s = mutations / that time.  Also shown: the time from
   ``catching-up`` to ``ready`` (the network part), the replay of its own log
   (its ``recovered ... in X s`` log line), how many entries the peers sent
   per missed entry, and entries per CPU-second of node 3 (its user + system
   time at ready, from /proc): a figure that other load on the machine
   changes much less than wall-clock time.
2. **Full sync**: node 3 is killed, its data folder wiped, and it is
   restarted: it gets a snapshot of the same data from its peers, then the
   tail.  entries/s = live keys / time to ready.  The snapshots it writes
   meanwhile are taken from its ``snapshot ... in X s`` log lines.

After each, node 3's digest, key count and version vector must equal nodes 1
and 2's or the benchmark stops with DIVERGED; a WARNING is printed when they
were not equal yet at the first STATS after ready.

3. **Catch-up under load** (``busy``): as the catch-up above, but while node 3
   is down and catching up a load process (the lag's, below) keeps sending
   ``--busy-rate`` SETs/s to nodes 1 and 2 (from a second before the restart
   until ready), so node 3 catches up to a moving target and buffers the
   PUB entries that arrive meanwhile.  Shown: seconds to ready, missed
   entries per second of it, the SETs/s the others took meanwhile (their
   seqs at ready), node 3's CPU seconds.  ``--busy-runs`` runs (3).

4. **Lag**: on a fresh mesh, a separate load process drives ``--lag-rate``
   SETs/s spread evenly over the three nodes, paced by the clock, for
   ``--lag-warmup`` + ``--lag-seconds`` (the warm-up is not counted).  An
   observer subscribes to every node's PUB socket: an origin publishes a
   batch of its writes after its fsync and before its replies; a peer
   publishes a progress beat (a heartbeat that only observers subscribe to)
   with its version vector right after it has applied a batch (then fsyncs
   it within 20 ms; or, when the origin waits on acks for it, fsyncs first
   and sends a heartbeat).  So, for every write and each of its
   two peers, lag = (first heartbeat of the peer whose vv covers the write's
   seq) - (the batch seen on the origin's PUB): the time until the write is
   applied, readable, on the peer, without adding a request to the load.  A light
   active probe checks it end to end: every 50 ms a SET on one node, then GETs
   on the two others until they return the new value; lag = GET reply with
   the value - SET acknowledgement.

``fdatasync`` latency of the disk under the data folders is measured at the
start (and after the lag runs): under ``fsync=always`` each hop pays one.

If ``redis-server`` is on PATH, a Redis master and replica are measured on
the same data, side by side, one Redis run after each mesh run (so that both
see the same load on the machine): the partial resync (PSYNC from the
backlog) of a replica restarted after missing ``--mutations`` writes, and the
full sync of a replica with an empty folder, both timed from process start
to in sync.  Otherwise the quoted Redis figures are shown.

The nodes' peer plane runs on CURVE (``--peer-plane curve``, the default: what
users get; the lag observer subscribes with an observer key) or without it
(``--peer-plane insecure``: the nodes get ``--insecure``, the observer a plain
SUB).  With both, ``--peer-plane curve,insecure``, every catch-up run and every
lag run is made once per side, the sides alternating (A B, B A, A B, ...),
each on a fresh mesh; the first side's table is printed as usual, then one
comparing the two (medians, min and max per side, and the ratio CURVE /
insecure of the medians; issue 17: goal >= 0.9x).  The idle restart and Redis
are measured on the first side only.

The nodes get ``--snapshot-mib`` sized like Redis's backlog (``--snapshot-mib
auto``: no snapshot, so no compaction, within the missed writes; with the
default policy the log kept would hold half a snapshot's worth and the
restarted node would get a full sync; a run line says WAS A FULL SYNC then).

Targets (issue 3, item 10): catch-up >= 200,000 entries/s, full sync >=
150,000 entries/s, lag p99 < 10 ms at 10,000 writes/s over three nodes.  For
reference, a Redis replica measured when the targets were set resyncs 1M keys
at about 900,000 entries/s partially and 500,000/s fully.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from anchors import read_reply, resp  # noqa: E402
from common import compile_mesh, cpu_seconds, median_of, print_table, write_json  # noqa: E402

from mesh.client import Client  # noqa: E402
from mesh.core import peerwire, wire  # noqa: E402
from mesh.core.errors import PyCacheError  # noqa: E402
from mesh.roles.launcher import ChildProcess, die_with_parent, mesh_argv  # noqa: E402
from mesh.roles.trust import keygen, load_observer_keys  # noqa: E402

VALUE = b"v" * 100
#: The observer key the lag meter subscribes to the nodes' PUB sockets with.
LAG_METER = "lag-meter"
ANY = "tcp://127.0.0.1:*"
WARMUP_PER_NODE = 1000
#: seconds the busy phase's load runs before node 3 is restarted
BUSY_WARMUP_S = 1.0
POLL_S = 0.002
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
STATS_TIMEOUT_S = 10.0

TARGET_CATCHUP = 200_000
TARGET_FULL = 150_000
TARGET_LAG_P99_MS = 10.0
TARGET_CURVE = 0.9  # issue 17: with CURVE on the peer plane / without
PLANES = ("curve", "insecure")
REDIS_REFERENCE = {"partial": 900_000, "full": 500_000}

RECOVERED_RE = re.compile(r"recovered (\d+) entries in ([0-9.]+) s")
SNAPSHOT_RE = re.compile(r"snapshot \S+ (?:\(\d+ bytes\) )?in ([0-9.]+) s")


class Diverged(Exception):
    """The nodes did not converge (or one stopped answering) after a phase."""


# Every process this script starts, so that it can be ended by pid whatever happens.
_CHILDREN: dict[int, subprocess.Popen] = {}


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen:
    proc = subprocess.Popen(argv, preexec_fn=die_with_parent, **kwargs)
    _CHILDREN[proc.pid] = proc
    return proc


def _end(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT_S) -> int:
    """Signal ``proc``, wait for it (SIGKILL after ``timeout``), forget it; return its code."""
    if proc.poll() is None:
        try:
            proc.send_signal(sig)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _CHILDREN.pop(proc.pid, None)
    return proc.returncode


def _end_all() -> None:
    for proc in list(_CHILDREN.values()):
        _end(proc, signal.SIGKILL if proc.poll() is None else signal.SIGTERM, 5)


def fsync_latency_ms(folder: Path, count: int = 200) -> dict[str, float]:
    """p50/p99 of ``fdatasync`` after a 3 KB append in ``folder``: the disk under the logs."""
    path = folder / "fsync-probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    samples = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 3000)
            started = time.perf_counter()
            os.fdatasync(fd)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return {"p50": _percentile(samples, 50), "p99": _percentile(samples, 99)}


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# ---------------------------------------------------------------------- mesh nodes


def node_extra(args: argparse.Namespace) -> list[str]:
    """The nodes' ``--snapshot-mib``: with ``auto``, room for every missed write in
    the log, as Redis's backlog is sized below (the default policy of issue 13
    keeps at most half a snapshot's size of log: 200,000 missed writes would be
    a full sync, not a catch-up); ``default``: the node's own default."""
    if args.snapshot_mib == "default":
        return []
    mib = (
        args.mutations * 200 // (1 << 20) + 64 if args.snapshot_mib == "auto" else args.snapshot_mib
    )
    return ["--snapshot-mib", str(mib)]


class NodeProc:
    """One ``python -m mesh node`` process, restartable on the endpoints it bound."""

    def __init__(
        self,
        node_id: str,
        root: Path,
        log_level: str,
        fsync: str,
        keys: Path | None,
        extra: list[str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.extra = extra or []
        self.keys = keys
        self.fsync = fsync
        self.data_dir = root / node_id
        self.log_path = root / f"{node_id}.log"
        self.log_level = log_level
        self.endpoints = {"api": ANY, "repl": ANY, "pub": ANY}
        self.child = ChildProcess(
            node_id, self.data_dir / "node.json", self.log_path, stdout_to_log=True
        )
        self.proc: subprocess.Popen | None = None
        self._log_from = 0

    @property
    def api(self) -> str:
        return self.endpoints["api"]

    @property
    def started(self) -> float:
        """perf_counter() at the last start."""
        return self.child.started

    def start(self, peers: list[str]) -> None:
        """Start the process (on the endpoints of its last run, if any)."""
        argv = mesh_argv("node", "--id", self.node_id)
        argv += ["--data-dir", str(self.data_dir), "--log-level", self.log_level]
        argv += ["--fsync", self.fsync, *self.extra]
        argv += ["--keys", str(self.keys)] if self.keys is not None else ["--insecure"]
        for name in ("api", "repl", "pub"):
            argv += [f"--{name}", self.endpoints[name]]
        if peers:
            argv += ["--peers", ",".join(peers)]
        self._log_from = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.child.start(argv)
        self.proc = self.child.process
        assert self.proc is not None
        _CHILDREN[self.proc.pid] = self.proc

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> dict[str, float | None]:
        """Poll ``node.json``; return seconds from process start to catching-up and ready."""
        assert self.proc is not None
        seen: dict[str, float | None] = {"catching-up": None, "ready": None}

        def ready(info: dict) -> bool:
            now = time.perf_counter() - self.started
            state = info.get("state")
            if state in seen and seen[state] is None:
                seen[state] = now
            return state == "ready"

        remaining = self.started + timeout - time.perf_counter()
        try:
            info = self.child.wait_status(ready, remaining, interval=POLL_S)
        except PyCacheError as exc:  # it exited, or it was not ready in time
            raise SystemExit(f"{exc}; see {self.log_path}") from None
        seen["cpu_s"] = cpu_seconds(self.proc.pid)
        self.endpoints = {k: info[k] for k in ("api", "repl", "pub")}
        return seen

    def stop(self, how: str = "term") -> None:
        if self.proc is not None:
            _end(self.proc, signal.SIGKILL if how == "kill" else signal.SIGTERM)
            self.proc = None

    def new_log(self) -> str:
        """What the node logged since its last start."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_from)
            return f.read().decode(errors="replace")

    def snapshots(self) -> list[float]:
        """Seconds of each snapshot written since the last start, from the log lines."""
        return [float(s) for s in SNAPSHOT_RE.findall(self.new_log())]

    def recovered(self) -> tuple[int, float] | None:
        """(entries, seconds) of the last start's log replay, from its log line."""
        found = RECOVERED_RE.search(self.new_log())
        return (int(found[1]), float(found[2])) if found else None


class Mesh:
    """Three nodes; node i names the repl endpoints of the nodes before it.

    Their peer plane is CURVE with a keys folder of the mesh's own, or, with
    ``plane="insecure"``, unauthenticated and plain (``keys`` is then None).
    """

    def __init__(
        self, root: Path, args: argparse.Namespace, size: int = 3, plane: str = "curve"
    ) -> None:
        ids = [f"n{i + 1}" for i in range(size)]
        self.keys: Path | None = None
        if plane == "curve":
            self.keys = root / "keys"
            keygen(self.keys, ids, observers=[LAG_METER])
        extra = node_extra(args)
        self.nodes = [NodeProc(i, root, args.log_level, args.fsync, self.keys, extra) for i in ids]

    def start(self) -> None:
        for i, node in enumerate(self.nodes):
            node.start(self.peers_of(i))
            node.wait_ready()

    def peers_of(self, index: int) -> list[str]:
        ends = [n.endpoints["repl"] for j, n in enumerate(self.nodes) if j != index]
        return [e for e in ends if not e.endswith("*")]  # only nodes that have run

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def stats(self) -> list[dict]:
        return stats_of(self.nodes)

    def check_converged(self, what: str, settle_s: float = 0.0) -> dict:
        """Fail loudly unless every node has the same digest, key count and version vector.

        Asks again for up to ``settle_s``; returns every node's stats, whether
        they agreed at the first asking, and after how long they did.
        """
        started, first_try = time.perf_counter(), True
        while True:
            try:
                stats = self.stats()
            except PyCacheError as exc:  # a node too busy to answer STATS
                stats, problem = [], f"  STATS failed: {exc}"
            else:
                views = [(s["digest"], s["keys"], s["vv"]) for s in stats]
                if all(v == views[0] for v in views):
                    elapsed = time.perf_counter() - started
                    return {"stats": stats, "after_s": elapsed, "first_try": first_try}
                problem = "\n".join(
                    f"  {s['node_id']}: state {s['state']} digest {s['digest']} "
                    f"keys {s['keys']} vv {s['vv']} replication {s['replication']}"
                    for s in stats
                )
            if time.perf_counter() - started >= settle_s:
                raise Diverged(f"DIVERGED {settle_s:g} s after the {what}:\n{problem}")
            first_try = False
            time.sleep(0.05)


def stats_of(nodes: list[NodeProc]) -> list[dict]:
    """STATS of each node."""
    out = []
    for node in nodes:
        with Client(node.api, timeout=STATS_TIMEOUT_S) as client:
            out.append(client.stats())
    return out


def write_mutations(apis: list[str], count: int, batch: int, prefix: str) -> float:
    """SET ``count`` distinct keys spread over ``apis`` (one pipelining thread each); return s."""
    errors: list[BaseException] = []
    share = [count // len(apis) + (1 if i < count % len(apis) else 0) for i in range(len(apis))]

    def writer(index: int, api: str) -> None:
        try:
            with Client(api, timeout=60) as client:
                first = sum(share[:index])
                for start in range(first, first + share[index], batch):
                    pipe = client.pipeline()
                    for i in range(start, min(start + batch, first + share[index])):
                        pipe.set(f"{prefix}:{i:08d}", VALUE)
                    if not all(r is True for r in pipe.execute()):
                        raise RuntimeError(f"a SET on {api} was not applied")
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i, a)) for i, a in enumerate(apis)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"writing failed: {errors[0]!r}")
    return time.perf_counter() - started


# ---------------------------------------------------------------------- catch-up and full sync


def start_warm(mesh: Mesh, args: argparse.Namespace) -> None:
    """Start ``mesh`` and write ``WARMUP_PER_NODE`` keys to each node, so that every
    version vector names every origin; fail unless the nodes converge."""
    mesh.start()
    for i, node in enumerate(mesh.nodes):
        write_mutations([node.api], WARMUP_PER_NODE, args.batch, f"warm{i}")
    mesh.check_converged("warm-up", settle_s=10)


def _folder(name: str, plane: str) -> str:
    return name if plane == "curve" else f"{name}-{plane}"


def one_run(root: Path, args: argparse.Namespace, run: int, plane: str = "curve") -> dict:
    """A fresh mesh: warm up, catch-up of node 3, then a full sync of node 3.

    A phase after which the nodes do not converge is recorded as ``{"error": ...}``.
    """
    mesh = Mesh(root / _folder(f"run{run}", plane), args, plane=plane)
    result: dict[str, dict] = {}
    try:
        start_warm(mesh, args)
        n1, n2, n3 = mesh.nodes

        n3.stop(args.stop)
        write_s = write_mutations([n1.api, n2.api], args.mutations, args.batch, "key")
        result["catchup"] = catchup = restart_timed(mesh, "catch-up", args.mutations)
        recovered = n3.recovered()
        catchup.update(
            replayed=recovered[0] if recovered else None,
            replay_s=recovered[1] if recovered else None,
            write_s=write_s,
            write_ops_s=args.mutations / write_s,
        )

        n3.stop("kill")
        shutil.rmtree(n3.data_dir)
        result["full"] = restart_timed(mesh, "full sync", catchup["keys"])
    except Diverged as exc:
        print(f"run {run + 1}: {exc}", flush=True)
        result["full" if "catchup" in result else "catchup"] = {"error": str(exc)}
    finally:
        mesh.stop()
    return result


def restart_timed(mesh: Mesh, what: str, entries: int) -> dict:
    """(Re)start the stopped last node; time it to ready; check it converged."""
    *peers, node = mesh.nodes
    before = stats_of(peers)
    peer_cpu = [cpu_seconds(p.proc.pid) for p in peers if p.proc is not None]
    node.start(mesh.peers_of(len(mesh.nodes) - 1))
    seen = node.wait_ready()
    peer_cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(peers, peer_cpu, strict=True)]
    converged = mesh.check_converged(what, settle_s=10)
    if not converged["first_try"]:
        print(
            f"  WARNING: {node.node_id} was ready before it had converged after the {what} "
            f"(equal {converged['after_s']:.2f} s later)",
            flush=True,
        )
    ready_s, caught = seen["ready"], seen["catching-up"]
    assert ready_s is not None
    return {
        "ready_s": ready_s,
        "entries": entries,
        "entries_s": entries / ready_s,
        "keys": converged["stats"][0]["keys"],
        "catching_up_at_s": caught,
        "network_s": ready_s - caught if caught is not None else None,
        "cpu_s": seen["cpu_s"],
        "peer_cpu_s": peer_cpu,
        "replication": converged["stats"][-1]["replication"],
        "served": [
            s["replication"]["served"] - b["replication"]["served"]
            for s, b in zip(converged["stats"][: len(peers)], before, strict=True)
        ],
        "converged_at_ready": converged["first_try"],
        "snapshots_s": node.snapshots(),
    }


def busy_run(root: Path, args: argparse.Namespace, run: int) -> dict:
    """Catch-up of node 3 while nodes 1 and 2 take ``--busy-rate`` SETs/s (see the docstring)."""
    mesh = Mesh(root / f"busy{run}", args)
    load = None
    try:
        start_warm(mesh, args)
        n1, n2, n3 = mesh.nodes
        n3.stop(args.stop)
        write_mutations([n1.api, n2.api], args.mutations, args.batch, "key")
        argv = [sys.executable, __file__, "--load", json.dumps([n1.api, n2.api])]
        argv += ["--lag-rate", str(args.busy_rate), "--lag-seconds", str(READY_TIMEOUT_S)]
        load = _spawn(argv, stdout=subprocess.DEVNULL)
        time.sleep(BUSY_WARMUP_S)  # the load is running when node 3 starts
        seqs = sum(s["seq"] for s in stats_of([n1, n2]))
        n3.start(mesh.peers_of(2))
        seen = n3.wait_ready()
        took = sum(s["seq"] for s in stats_of([n1, n2])) - seqs
        _end(load)
        load = None
        mesh.check_converged("catch-up under load", settle_s=10)
        ready_s = seen["ready"]
        assert ready_s is not None
        return {
            "ready_s": ready_s,
            "entries_s": args.mutations / ready_s,
            "load_writes_s": took / ready_s,
            "cpu_s": seen["cpu_s"],
        }
    except Diverged as exc:
        print(f"busy run {run + 1}: {exc}", flush=True)
        return {"error": str(exc)}
    finally:
        if load is not None:
            _end(load)
        mesh.stop()


def idle_restart(root: Path, args: argparse.Namespace, plane: str = "curve") -> dict:
    """The fixed cost: restart a node that missed nothing (interpreter, imports, HELLOs)."""
    mesh = Mesh(root / _folder("idle", plane), args, plane=plane)
    try:
        start_warm(mesh, args)
        n3 = mesh.nodes[2]
        samples = []
        for _ in range(3):
            n3.stop(args.stop)
            n3.start(mesh.peers_of(2))
            samples.append(n3.wait_ready())
        return {
            "ready_s": statistics.median(s["ready"] for s in samples),  # type: ignore[misc]
            "catching_up_at_s": statistics.median(s["catching-up"] or 0.0 for s in samples),
        }
    finally:
        mesh.stop()


# ---------------------------------------------------------------------- lag


def run_load(apis: list[str], rate: float, seconds: float, keyspace: int) -> None:
    """The load process: ``rate`` SETs/s round-robin over ``apis`` for ``seconds``.

    Paced by the clock in ticks of about 1 ms (no waiting for replies, which
    are drained as they come); prints a JSON summary on stdout.
    """
    ctx = zmq.Context()
    socks = []
    for api in apis:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1_000_000)
        sock.setsockopt(zmq.SNDHWM, 1_000_000)
        sock.connect(api)
        sock.send(wire.encode_request(0, "PING"))
        sock.recv()
        socks.append(sock)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    total = int(rate * seconds)
    sent = acked = errors = 0
    late_max = 0.0
    started = time.perf_counter()
    while acked + errors < total:
        now = time.perf_counter()
        if now - started > seconds + 30:
            break
        due = min(total, int((now - started) * rate))
        if due - sent > 1:
            late_max = max(late_max, (due - sent) / rate)
        while sent < due:
            i = sent
            sent += 1
            frame = wire.encode_request(i + 1, "SET", f"load:{i % keyspace:08d}", VALUE)
            socks[i % len(socks)].send(frame)
        # Sleep at least 1 ms: writes go out in ticks of rate/1000, not in a busy loop.
        next_due = started + (sent + 1) / rate
        wait_ms = max(1, round((next_due - time.perf_counter()) * 1000)) if sent < total else 100
        for sock, _ in poller.poll(wait_ms):
            while True:
                try:
                    frame = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                _, code, _ = wire.decode_reply(frame)
                if code == wire.OK:
                    acked += 1
                else:
                    errors += 1
    elapsed = time.perf_counter() - started
    for sock in socks:
        sock.close()
    ctx.term()
    summary = {"sent": sent, "acked": acked, "errors": errors, "elapsed_s": elapsed}
    summary["behind_max_ms"] = late_max * 1000
    print(json.dumps(summary), flush=True)


class LagObserver:
    """Subscribes to every node's PUB; turns batches and heartbeats into per-write lags."""

    def __init__(
        self,
        ctx: zmq.Context,
        pubs: list[str],
        apis: list[str],
        warmup_s: float,
        keys: Path | None,
    ) -> None:
        self.sub = ctx.socket(zmq.SUB)
        if keys is not None:  # a plain SUB for a mesh started with --insecure
            # The PUB sockets admit members and observers only (mesh.roles.trust).
            public, secret, server = load_observer_keys(keys, LAG_METER)
            self.sub.curve_publickey, self.sub.curve_secretkey = public, secret
            self.sub.curve_serverkey = server
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.setsockopt(zmq.RCVHWM, 1_000_000)
        self.sub.setsockopt(zmq.LINGER, 0)
        for pub in pubs:
            self.sub.connect(pub)
        self.apis = apis
        self.node_of: dict[str, str] = {}  # origin -> node id
        self.vv: dict[str, dict[str, int]] = {}  # node id -> last heartbeat vv
        # (origin, peer node) -> deque of (last seq, entries, seen at)
        self.pending: dict[tuple[str, str], deque] = {}
        self.lags_ms: list[float] = []
        self.entries_seen = 0
        self.warmup_s = warmup_s
        self.measure_from: float | None = None  # set by the first batch seen
        # active probe
        self.probe_socks = [ctx.socket(zmq.DEALER) for _ in apis]
        for sock, api in zip(self.probe_socks, apis, strict=True):
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(api)
        self.probe_lags_ms: list[float] = []
        self._probe: dict[str, Any] | None = None
        self._probe_n = 0
        self._next_probe = 0.0
        self._ids = 0

    def learn(self, timeout: float = 10.0) -> None:
        """Wait until every node's heartbeat has been seen (origin -> node)."""
        deadline = time.perf_counter() + timeout
        while len(self.node_of) < len(self.apis):
            if time.perf_counter() > deadline:
                raise SystemExit("lag observer: no heartbeat from every node")
            if self.sub.poll(100):
                self._on_frame(self.sub.recv(), time.perf_counter())

    def _on_frame(self, frame: bytes, now: float) -> None:
        # ["H" or "P", node, origin, state, vv, ...] and ["E", origin, [record, ...]]
        # (mesh.core.peerwire; "P" is the progress beat a node sends right after applying)
        body = msgpack.unpackb(memoryview(frame)[1:], raw=False)
        if body[0] in (peerwire.HEARTBEAT, peerwire.PROGRESS):
            node, origin, vv = body[1], body[2], body[4]
            self.node_of[origin] = node
            self.vv[node] = vv
            for (o, peer), queue in self.pending.items():
                if peer != node:
                    continue
                have = vv.get(o, 0)
                while queue and queue[0][0] <= have:
                    _, count, at = queue.popleft()
                    self.lags_ms.extend([(now - at) * 1000] * count)
        elif body[0] == peerwire.ENTRIES:
            origin, records = body[1], body[2]
            if self.measure_from is None:
                self.measure_from = now + self.warmup_s
            if not records or now < self.measure_from:
                return
            self.entries_seen += len(records)
            last_seq = records[-1][1]  # each record: [origin, seq, ...]
            origin_node = self.node_of.get(origin)
            for peer in self.vv:
                if peer == origin_node:
                    continue
                if self.vv[peer].get(origin, 0) >= last_seq:  # heartbeat came first
                    self.lags_ms.extend([0.0] * len(records))
                    continue
                queue = self.pending.setdefault((origin, peer), deque())
                queue.append((last_seq, len(records), now))

    def _probe_step(self, now: float) -> None:
        if self._probe is None and now >= self._next_probe:
            self._probe_n += 1
            self._ids += 1
            source = self._probe_n % len(self.apis)
            token = f"probe-{self._probe_n}".encode()
            self._probe = {"source": source, "token": token, "id": self._ids, "acked": None}
            self._probe["waiting"] = {}
            frame = wire.encode_request(self._ids, "SET", "lag-probe", token)
            self.probe_socks[source].send(frame)
            self._next_probe = now + 0.05

    def _ask(self, target: int) -> None:
        assert self._probe is not None
        self._ids += 1
        self._probe["waiting"][target] = self._ids
        self.probe_socks[target].send(wire.encode_request(self._ids, "GET", "lag-probe"))

    def _on_probe_reply(self, index: int, frame: bytes, now: float) -> None:
        probe = self._probe
        request_id, code, result = wire.decode_reply(frame)
        if probe is None:
            return
        if request_id == probe["id"] and index == probe["source"]:
            probe["acked"] = now
            for target in range(len(self.apis)):
                if target != probe["source"]:
                    self._ask(target)
        elif probe["waiting"].get(index) == request_id:
            if code == wire.OK and result == probe["token"]:
                del probe["waiting"][index]
                if self.measure_from is not None and probe["acked"] >= self.measure_from:
                    self.probe_lags_ms.append((now - probe["acked"]) * 1000)
                if not probe["waiting"]:
                    self._probe = None
            else:
                self._ask(index)

    def run_until(self, done: threading.Event, probe: bool) -> None:
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        if probe:
            for sock in self.probe_socks:
                poller.register(sock, zmq.POLLIN)
        while not done.is_set():
            now = time.perf_counter()
            if probe:
                self._probe_step(now)
            for sock, _ in poller.poll(5):
                while True:
                    try:
                        frame = sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    now = time.perf_counter()
                    if sock is self.sub:
                        self._on_frame(frame, now)
                    else:
                        self._on_probe_reply(self.probe_socks.index(sock), frame, now)

    def unresolved(self) -> int:
        return sum(count for q in self.pending.values() for _, count, _ in q)

    def close(self) -> None:
        self.sub.close()
        for sock in self.probe_socks:
            sock.close()


def lag_run(root: Path, args: argparse.Namespace, run: int, plane: str = "curve") -> dict:
    mesh = Mesh(root / _folder(f"lag{run}", plane), args, plane=plane)
    ctx = zmq.Context()
    load = None
    observer = None
    try:
        mesh.start()
        mesh.check_converged("start", settle_s=10)
        apis = [n.api for n in mesh.nodes]
        pubs = [n.endpoints["pub"] for n in mesh.nodes]
        observer = LagObserver(ctx, pubs, apis, args.lag_warmup, mesh.keys)
        observer.learn()
        seconds = args.lag_seconds + args.lag_warmup
        argv = [sys.executable, __file__, "--load", json.dumps(apis)]
        argv += ["--lag-rate", str(args.lag_rate), "--lag-seconds", str(seconds)]
        node_cpu = [cpu_seconds(n.proc.pid) for n in mesh.nodes if n.proc is not None]
        own_cpu, started = time.process_time(), time.perf_counter()
        load = _spawn(argv, stdout=subprocess.PIPE, text=True)
        done = threading.Event()

        def wait_load() -> None:
            load.wait()
            time.sleep(0.5)  # the last batches' heartbeats
            done.set()

        waiter = threading.Thread(target=wait_load)
        waiter.start()
        observer.run_until(done, probe=not args.no_probe)
        waiter.join()
        wall = time.perf_counter() - started
        own_cpu = time.process_time() - own_cpu
        node_cpu = [
            cpu_seconds(n.proc.pid) - c
            for n, c in zip(mesh.nodes, node_cpu, strict=True)
            if n.proc is not None
        ]
        assert load.stdout is not None
        summary = json.loads(load.stdout.read() or "{}")
        load.stdout.close()
        _CHILDREN.pop(load.pid, None)
        if load.returncode != 0 or not summary:
            raise SystemExit(f"load process failed with {load.returncode}")
        converged = mesh.check_converged("lag load", settle_s=10)
        lags, probes = observer.lags_ms, observer.probe_lags_ms
        return {
            "load": summary,
            "achieved_writes_s": summary["acked"] / summary["elapsed_s"],
            "samples": len(lags),
            "expected_samples": observer.entries_seen * (len(apis) - 1),
            "entries_seen": observer.entries_seen,
            "unresolved": observer.unresolved(),
            "p50_ms": _percentile(lags, 50),
            "p99_ms": _percentile(lags, 99),
            "p999_ms": _percentile(lags, 99.9),
            "max_ms": max(lags) if lags else float("nan"),
            "probe_samples": len(probes),
            "probe_p50_ms": _percentile(probes, 50),
            "probe_p99_ms": _percentile(probes, 99),
            "replication": [s["replication"] for s in converged["stats"]],
            "node_cpu_share": [c / wall for c in node_cpu],
            "observer_cpu_share": own_cpu / wall,
        }
    finally:
        if observer is not None:
            observer.close()
        if load is not None:
            _end(load)
        ctx.term()
        mesh.stop()


# ---------------------------------------------------------------------- Redis (optional)


class Redis:
    """A redis-server process spoken to in raw RESP."""

    def __init__(self, root: Path, name: str, port: int, extra: list[str]) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        self.argv += ["--dir", str(self.dir), "--save", "", "--appendonly", "no", *extra]
        self.proc: subprocess.Popen | None = None
        self._conn: tuple[socket.socket, Any] | None = None

    def start(self) -> float:
        started = time.perf_counter()
        self.proc = _spawn(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 30
        while time.perf_counter() < deadline:
            try:
                if self.call("PING") == "PONG":
                    return started
            except (OSError, RuntimeError):  # not listening yet, or still loading
                time.sleep(0.002)
        raise SystemExit("redis-server did not start")

    def call(self, *args: str) -> Any:
        """One command on a kept connection (reopened after an error)."""
        try:
            if self._conn is None:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
                self._conn = (sock, sock.makefile("rb"))
            self._conn[0].sendall(resp(args))
            return _text(read_reply(self._conn[1]))
        except OSError:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn[1].close()
            self._conn[0].close()
            self._conn = None

    def info(self, section: str = "replication") -> dict[str, str]:
        text = self.call("INFO", section)
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def load(self, count: int, prefix: str) -> None:
        """SET ``count`` keys through one pipelined connection."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            reader = sock.makefile("rb")
            for start in range(0, count, 1000):
                chunk = b"".join(
                    resp(("SET", f"{prefix}:{i:08d}", VALUE))
                    for i in range(start, min(start + 1000, count))
                )
                sock.sendall(chunk)
                for _ in range(min(1000, count - start)):
                    if reader.readline() != b"+OK\r\n":
                        raise SystemExit("redis SET failed")

    def stop(self, save: bool = False) -> None:
        if self.proc is None:
            return
        if save:
            try:
                self.call("SHUTDOWN", "SAVE")
            except (OSError, RuntimeError):
                pass  # the connection closes as it shuts down
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self._disconnect()
        _end(self.proc)
        self.proc = None


def _text(reply: Any) -> Any:
    """A RESP reply with its byte strings decoded (the INFO text, "PONG")."""
    if isinstance(reply, bytes):
        return reply.decode()
    return [_text(r) for r in reply] if isinstance(reply, list) else reply


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_synced(master: Redis, replica: Redis, started: float) -> float:
    """Seconds from ``started`` until the replica's link is up at the master's offset."""
    target = int(master.info()["master_repl_offset"])
    while time.perf_counter() - started < 300:
        try:
            info = replica.info()
        except (OSError, RuntimeError):
            info = {}
        if (
            info.get("master_link_status") == "up"
            and info.get("master_sync_in_progress") == "0"
            and int(info.get("slave_repl_offset", -1)) >= target
        ):
            return time.perf_counter() - started
        time.sleep(POLL_S)
    raise SystemExit("redis replica did not sync within 300 s")


def redis_run(root: Path, args: argparse.Namespace, run: int) -> dict:
    """Redis master + replica: a restarted replica's partial resync, then a full sync."""
    base = root / f"redis{run}"
    backlog = f"{args.mutations * 200 // (1 << 20) + 64}mb"  # room for every missed write
    master_args = ["--repl-backlog-size", backlog, "--repl-diskless-sync-delay", "0"]
    master = Redis(base, "master", _free_port(), master_args)
    replica_args = ["--replicaof", "127.0.0.1", str(master.port)]
    replica = Redis(base, "replica", _free_port(), replica_args)
    try:
        master.start()
        master.load(WARMUP_PER_NODE * 3, "warm")
        _wait_synced(master, replica, replica.start())
        replica.stop(save=True)  # its RDB keeps the replication id and offset: PSYNC works
        master.load(args.mutations, "key")
        partial_ok = int(master.info("stats")["sync_partial_ok"])
        partial_s = _wait_synced(master, replica, replica.start())
        partial = int(master.info("stats")["sync_partial_ok"]) > partial_ok
        keys = int(master.call("DBSIZE"))
        replica.stop()
        shutil.rmtree(replica.dir)
        replica.dir.mkdir()
        full_s = _wait_synced(master, replica, replica.start())
        if int(replica.call("DBSIZE")) != keys:
            raise SystemExit("redis replica key count differs after the full sync")
        return {
            "partial_s": partial_s,
            "partial_entries_s": args.mutations / partial_s,
            "partial_was": "partial" if partial else "full",
            "full_s": full_s,
            "keys": keys,
            "full_entries_s": keys / full_s,
        }
    finally:
        replica.stop()
        master.stop()


# ---------------------------------------------------------------------- main


def main() -> None:
    compile_mesh()  # time the node, not the bytecode compiler
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mutations", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="SETs per pipeline")
    parser.add_argument("--stop", choices=["term", "kill"], default="term")
    parser.add_argument("--fsync", choices=["always", "interval", "never"], default="always")
    parser.add_argument("--lag-rate", type=float, default=10_000)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--lag-warmup", type=float, default=1.0, help="seconds not counted")
    parser.add_argument("--lag-runs", type=int, default=1)
    parser.add_argument("--no-probe", action="store_true", help="skip the active lag probe")
    parser.add_argument(
        "--redis-runs", type=int, default=None, help="default: --runs, one after each; 0: none"
    )
    parser.add_argument("--busy-rate", type=float, default=6_000, help="SETs/s, busy phase")
    parser.add_argument("--busy-runs", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma list of: idle,catchup,busy,lag")
    parser.add_argument(
        "--snapshot-mib",
        default="auto",
        help="the nodes' --snapshot-mib: auto (log room for every missed write), default, or N",
    )
    parser.add_argument("--log-level", default="INFO", help="of the nodes")
    parser.add_argument("--keep", action="store_true", help="keep the data folders and logs")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--peer-plane",
        default="curve",
        help="the nodes' peer plane: curve (default), insecure, or curve,insecure (A/B)",
    )
    parser.add_argument("--load", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        run_load(json.loads(args.load), args.lag_rate, args.lag_seconds, keyspace=100_000)
        return

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that finally: runs
    skip = set(filter(None, args.skip.split(",")))
    planes = [p.strip() for p in args.peer_plane.split(",") if p.strip()]
    if not planes or len(set(planes)) != len(planes) or not set(planes) <= set(PLANES):
        raise SystemExit("--peer-plane: curve, insecure, or both (comma-separated)")
    ab = len(planes) > 1
    first = planes[0]

    def turn(n: int) -> list[str]:
        """The sides' order in round ``n``: A B, B A, A B, ..."""
        return planes if n % 2 == 0 else planes[::-1]

    def tag(plane: str) -> str:
        return f" [{plane}]" if ab else ""

    root = Path(tempfile.mkdtemp(prefix="pycache-catchup-"))
    began = time.perf_counter()
    results: dict[str, Any] = {
        "mutations": args.mutations,
        "runs": args.runs,
        "value_bytes": len(VALUE),
        "stop": args.stop,
        "fsync": args.fsync,
        "loadavg_at_start": os.getloadavg(),
        "peer_plane": first,
    }
    by_plane: dict[str, dict[str, Any]] = {plane: {} for plane in planes[1:]}
    use_redis = args.redis_runs != 0 and shutil.which("redis-server") is not None
    redis_runs = args.runs if args.redis_runs is None else args.redis_runs
    redis: list[dict] = []

    def redis_once() -> float:
        redis.append(redis_run(root, args, len(redis)))
        r = redis[-1]
        print(
            f"Redis {len(redis)}: partial resync {r['partial_s']:.2f} s = "
            f"{r['partial_entries_s']:,.0f}/s ({r['partial_was']}); full sync "
            f"{r['full_s']:.2f} s = {r['full_entries_s']:,.0f}/s",
            flush=True,
        )
        return r["partial_entries_s"]

    try:
        results["fsync_ms"] = fsync_latency_ms(root)
        if "idle" not in skip:
            results["idle_restart"] = idle_restart(root, args, first)
            print(
                f"restart with nothing missed: ready in {results['idle_restart']['ready_s']:.3f} s"
            )
        if "catchup" not in skip:
            runs_of: dict[str, list[dict]] = {plane: [] for plane in planes}

            def catchup_run(plane: str) -> None:
                runs = runs_of[plane]
                runs.append(one_run(root, args, len(runs), plane))
                c, f = runs[-1].get("catchup", {}), runs[-1].get("full", {})
                if "ready_s" in c:
                    print(
                        f"run {len(runs)}/{args.runs}{tag(plane)}: wrote "
                        f"{c['write_ops_s']:,.0f} SETs/s; "
                        f"catch-up {c['ready_s']:.2f} s = {c['entries_s']:,.0f}/s (replay "
                        f"{c['replay_s']} s, peers sent {c['served']})"
                        + (" WAS A FULL SYNC" if c["replication"].get("full_syncs") else ""),
                        flush=True,
                    )
                if "ready_s" in f:
                    print(
                        f"run {len(runs)}/{args.runs}{tag(plane)}: full sync "
                        f"{f['ready_s']:.2f} s = {f['entries_s']:,.0f}/s "
                        f"(peers sent {f['served']})",
                        flush=True,
                    )
                # interleaved: same machine load
                if plane == first and use_redis and len(redis) < redis_runs:
                    redis_once()

            for n in range(args.runs):
                for plane in turn(n):
                    catchup_run(plane)
            results["catchup_runs"] = runs_of[first]
            for plane in planes[1:]:
                by_plane[plane]["catchup_runs"] = runs_of[plane]
        if "busy" not in skip:
            busy = results["busy_runs"] = []
            for n in range(args.busy_runs):
                busy.append(busy_run(root, args, n))
                if "ready_s" in busy[-1]:
                    b = busy[-1]
                    print(
                        f"busy run {n + 1}/{args.busy_runs}: catch-up {b['ready_s']:.2f} s while "
                        f"the others took {b['load_writes_s']:,.0f} SETs/s",
                        flush=True,
                    )
        if "lag" not in skip:
            lags_of: dict[str, list[dict]] = {plane: [] for plane in planes}

            def lag_once(plane: str) -> None:
                lags = lags_of[plane]
                try:
                    lags.append(lag_run(root, args, len(lags), plane))
                except Diverged as exc:
                    print(f"lag run {len(lags) + 1}{tag(plane)}: {exc}", flush=True)
                    lags.append({"error": str(exc)})
                    return
                lr = lags[-1]
                print(
                    f"lag run {len(lags)}/{args.lag_runs}{tag(plane)}: "
                    f"{lr['achieved_writes_s']:,.0f} "
                    f"writes/s; p50 {lr['p50_ms']:.2f} ms, p99 {lr['p99_ms']:.2f} ms, max "
                    f"{lr['max_ms']:.1f} ms ({lr['samples']:,} samples); probe p50 "
                    f"{lr['probe_p50_ms']:.2f} ms, p99 {lr['probe_p99_ms']:.2f} ms",
                    flush=True,
                )

            for n in range(args.lag_runs):
                for plane in turn(n):
                    lag_once(plane)
            results["lag_runs"] = lags_of[first]
            for plane in planes[1:]:
                by_plane[plane]["lag_runs"] = lags_of[plane]
            results["fsync_ms_after_lag"] = fsync_latency_ms(root)
        if use_redis and len(redis) < redis_runs:
            median_of(redis_runs - len(redis), redis_once)
        if redis:
            results["redis_runs"] = redis
        elif args.redis_runs != 0:
            print("redis-server not on PATH: the Redis figures shown are the quoted ones")
    finally:
        _end_all()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if ab:
        results["ab"] = {
            "planes": planes,
            "order": [turn(n) for n in range(max(args.runs, args.lag_runs))],
            "by_plane": by_plane,
        }
    results["runtime_s"] = time.perf_counter() - began
    results["loadavg_at_end"] = os.getloadavg()
    if report(results, args):
        sys.exit(1)


#: issue 15: catch-up and full sync against Redis's partial and full resync, same run
TARGET_REDIS_15 = {"catchup": 0.5, "full": 0.6}


def _median(runs: list[dict], *path: str) -> float:
    """The median of a figure over runs; NaN when no run has it (a log line not
    written at the nodes' ``--log-level``, say)."""
    values = []
    for run in runs:
        for key in path:
            run = run[key]
        if run is not None:
            values.append(run)
    return statistics.median(values) if values else math.nan  # type: ignore[type-var]


def _verdict(ok: bool) -> str:
    return "ok" if ok else "BELOW"


def report(results: dict, args: argparse.Namespace) -> list[str]:
    """Print the table (mesh beside target and Redis), write the JSON; return the failures.

    With two peer planes, the first's table, then one comparing the two.
    """
    rows, summary, failures = plane_rows(results, args)
    disk = results["fsync_ms"]
    rows.insert(0, ("disk: fdatasync p50 / p99 ms", f"{disk['p50']:.2f} / {disk['p99']:.2f}"))
    load = results["loadavg_at_start"][0]
    ab = results.get("ab")
    plane = f", peer plane {results['peer_plane']}" if ab else ""
    print_table(
        f"catch-up, full sync, lag: medians of {args.runs} runs (lag: {args.lag_runs} x "
        f"{args.lag_seconds:g} s), {len(VALUE)}-byte values, fsync={args.fsync}, {os.cpu_count()} "
        f"CPUs, load average {load:.1f} at start, runtime {results['runtime_s']:.0f} s{plane}",
        ["measure", "mesh", "target", "mesh/target", "verdict", "Redis", "mesh/Redis"],
        [tuple(r) + ("",) * (7 - len(r)) for r in rows],
    )
    redis = results.get("redis_runs")
    if redis:
        kinds = ", ".join(r["partial_was"] for r in redis)
        print(f"(Redis: {len(redis)} runs; the restarted replica's resyncs were: {kinds})")
    if ab:
        sides = {results["peer_plane"]: results, **ab["by_plane"]}
        for name, side in ab["by_plane"].items():
            _, side["summary"], side_failures = plane_rows(side, args)
            failures += [f"{name}: {f}" for f in side_failures]
        ab["comparison"] = compare_planes(sides, args, ab["order"])
    results["summary"] = summary
    results["failures"] = failures
    results["targets"] = {
        "catchup_entries_s": TARGET_CATCHUP,
        "full_entries_s": TARGET_FULL,
        "lag_p99_ms": TARGET_LAG_P99_MS,
        "lag_writes_s": args.lag_rate,
        "redis_quoted": REDIS_REFERENCE,
    }
    if ab:
        results["targets"]["curve_over_insecure"] = TARGET_CURVE
    write_json("catchup", results, args.json)
    for failure in failures:
        print(f"FAILED {failure}")
    return failures


def plane_rows(results: dict, args: argparse.Namespace) -> tuple[list[tuple], dict, list[str]]:
    """The table's rows for one peer plane's runs, their summary, and what failed."""
    rows: list[tuple] = []
    summary: dict[str, Any] = {}
    failures: list[str] = []
    redis = results.get("redis_runs")

    def vs_redis(key: str, quoted: str) -> tuple[object, float]:
        if redis:
            value = _median(redis, key)
            return value, value
        return f"~{REDIS_REFERENCE[quoted]:,} (quoted)", REDIS_REFERENCE[quoted]

    if "idle_restart" in results:
        rows.append(("restart, nothing missed: s to ready", results["idle_restart"]["ready_s"]))
    runs = results.get("catchup_runs", [])
    phases = (
        (f"catch-up of {args.mutations:,} missed", "catchup", TARGET_CATCHUP, "partial"),
        ("full sync of the same data", "full", TARGET_FULL, "full"),
    )
    for label, key, target, quoted in phases if runs else ():
        ok = [r[key] for r in runs if "ready_s" in r.get(key, {})]
        failed = [r[key]["error"] for r in runs if "error" in r.get(key, {})]
        failures += [f"{key}: {e}" for e in failed]
        late = sum(1 for r in ok if not r["converged_at_ready"])
        if late:
            failures.append(f"{key}: node 3 was ready before it had converged in {late} run(s)")
        if not ok:
            rows.append((f"{label}: FAILED in every run",))
            continue
        rate, ready = _median(ok, "entries_s"), _median(ok, "ready_s")
        per_cpu = statistics.median(r["entries"] / r["cpu_s"] for r in ok)
        sent = statistics.median(sum(r["served"]) / r["entries"] for r in ok)
        summary[key] = {"entries_s": rate, "ready_s": ready, "entries_per_cpu_s": per_cpu}
        r_rate, r_value = vs_redis(f"{quoted}_entries_s", quoted)
        note = f", {len(failed)} of {len(runs)} runs FAILED" if failed else ""
        rows += [
            (
                f"{label}: s to ready{note}",
                ready,
                "",
                "",
                "",
                _median(redis, f"{quoted}_s") if redis else "",
            ),
            (
                f"  entries/s ({_median(ok, 'entries'):,.0f} entries)",
                rate,
                f">= {target:,}",
                rate / target,
                _verdict(rate >= target),
                r_rate,
                rate / r_value,
            ),
            ("  entries per CPU-second of node 3", per_cpu, f">= {target:,}", per_cpu / target),
            (
                f"  issue 15: mesh / Redis {quoted} resync",
                rate / r_value,
                f">= {TARGET_REDIS_15[key]}x",
                "",
                _verdict(rate / r_value >= TARGET_REDIS_15[key]),
            ),
            ("  entries sent by the peers per entry", sent, "1.00"),
            ("  catching-up -> ready s", _median(ok, "network_s")),
            (
                "  snapshots written by node 3, s",
                statistics.median(sum(r["snapshots_s"]) for r in ok),
                "",
                "",
                f"{statistics.median(len(r['snapshots_s']) for r in ok):g} of them",
            ),
        ]
        if key == "catchup":
            rows.append(("  own log replay s", _median(ok, "replay_s")))
            rows.append(("SETs/s written while node 3 was down", _median(ok, "write_ops_s")))
    busy = [r for r in results.get("busy_runs", []) if "error" not in r]
    failures += [f"busy: {r['error']}" for r in results.get("busy_runs", []) if "error" in r]
    if busy:
        summary["busy"] = {
            "ready_s": _median(busy, "ready_s"),
            "entries_s": _median(busy, "entries_s"),
        }
        rows += [
            (
                f"catch-up of {args.mutations:,} missed under load: s to ready",
                _median(busy, "ready_s"),
            ),
            ("  missed entries/s", _median(busy, "entries_s")),
            ("  SETs/s the others took meanwhile", _median(busy, "load_writes_s")),
            ("  CPU seconds of node 3", _median(busy, "cpu_s")),
        ]
    lags = [r for r in results.get("lag_runs", []) if "error" not in r]
    failures += [f"lag: {r['error']}" for r in results.get("lag_runs", []) if "error" in r]
    if lags:
        p50, p99 = _median(lags, "p50_ms"), _median(lags, "p99_ms")
        summary["lag"] = {"p50_ms": p50, "p99_ms": p99}
        rows += [
            (
                "lag: writes/s achieved over 3 nodes",
                _median(lags, "achieved_writes_s"),
                f"{args.lag_rate:,.0f}",
            ),
            ("  p50 ms, every write (PUB)", p50),
            (
                "  p99 ms, every write (PUB)",
                p99,
                f"< {TARGET_LAG_P99_MS:g}",
                p99 / TARGET_LAG_P99_MS,
                _verdict(p99 < TARGET_LAG_P99_MS),
            ),
            ("  p99.9 ms, every write (PUB)", _median(lags, "p999_ms")),
        ]
        if not args.no_probe:
            rows += [
                ("  p50 ms, probe SET ack -> GET", _median(lags, "probe_p50_ms")),
                ("  p99 ms, probe SET ack -> GET", _median(lags, "probe_p99_ms")),
            ]
    return rows, summary, failures


def compare_planes(sides: dict[str, dict], args: argparse.Namespace, order: list) -> dict:
    """Print each figure's median, min and max per peer plane and CURVE / insecure; return them.

    The ratio is of the medians.  For the entries/s (wall clock), >= 0.9x is
    issue 17's goal; the entries per CPU-second show where the cost lands, and
    lags (lower is better) are shown without a verdict.
    """
    figures: list[tuple[str, str, Any]] = []  # (label, kind, value of one run or None)

    def ok_runs(side: dict, key: str) -> list[dict]:
        return [r[key] for r in side.get("catchup_runs", []) if "ready_s" in r.get(key, {})]

    for key, label in (("catchup", f"catch-up of {args.mutations:,}"), ("full", "full sync")):
        figures += [
            (f"{label}: entries/s", "rate", lambda r, k=key: _phase(r, k, "entries_s")),
            (
                f"{label}: entries per CPU-s of node 3",
                "cpu",
                lambda r, k=key: _phase(r, k, "entries", "cpu_s"),
            ),
            (
                f"{label}: entries per CPU-s of the 2 peers",
                "cpu",
                lambda r, k=key: _phase(r, k, "entries", "peer_cpu_s"),
            ),
        ]
    figures += [
        ("lag p50 ms (lower is better)", "lag", lambda r: r.get("p50_ms")),
        ("lag p99 ms (lower is better)", "lag", lambda r: r.get("p99_ms")),
    ]
    rows: list[tuple] = []
    out: dict[str, Any] = {}
    a, b = "curve", "insecure"
    for label, kind, value in figures:
        per: dict[str, list[float]] = {}
        for name, side in sides.items():
            runs = side.get("lag_runs", []) if kind == "lag" else side.get("catchup_runs", [])
            per[name] = [v for v in (value(r) for r in runs) if v is not None]
        if not all(per.get(name) for name in (a, b)):
            continue
        med = {name: statistics.median(per[name]) for name in (a, b)}
        ratio = med[a] / med[b]
        verdict = f">= {TARGET_CURVE}x {_verdict(ratio >= TARGET_CURVE)}" if kind == "rate" else ""
        out[label] = {
            "ratio": ratio,
            **{name: {"median": med[name], "runs": per[name]} for name in (a, b)},
        }
        rows.append(
            (
                label,
                med[a],
                min(per[a]),
                max(per[a]),
                med[b],
                min(per[b]),
                max(per[b]),
                ratio,
                verdict,
            )
        )
    print_table(
        f"peer plane A/B (issue 17): CURVE against --insecure, fresh mesh per run, "
        f"sides alternating ({' '.join('/'.join(o) for o in order)})",
        ["measure", "CURVE", "min", "max", "insecure", "min", "max", "CURVE/insecure", "goal"],
        rows,
    )
    return out


def _phase(run: dict, phase: str, numerator: str, cpu: str | None = None) -> float | None:
    """One run's ``phase`` figure: ``numerator`` itself, or per CPU-second of ``cpu``."""
    part = run.get(phase, {})
    if "ready_s" not in part:
        return None
    if cpu is None:
        return part[numerator]
    seconds = part[cpu] if isinstance(part[cpu], float) else sum(part[cpu])
    return part[numerator] / seconds if seconds else None


if __name__ == "__main__":
    main()
