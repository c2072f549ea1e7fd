"""A node paused again and again under write load must survive (issue 16.1).

libzmq 4.3 (bundled with pyzmq 27) aborts a process with ``Assertion failed:
!_io_error (src/stream_engine_base.cpp:310)`` when a ZMTP heartbeat timer
fires on a connection whose input is stopped after an error was seen on it,
as after a SIGSTOP/SIGCONT under load (:mod:`mesh.roles.liveness` has the
details and the libzmq references).  The sockets therefore set no ZMTP
heartbeats, and dead hosts are noticed by TCP keepalive instead.

The process test pauses one of three nodes ``PYCACHE_PAUSE_CYCLES`` times
(default 8, for CI) for 1 to ``PYCACHE_PAUSE_MAX_S`` seconds (default 2.5)
while pipelining clients write to every node, the paused one too, directly and
through a balancer, with ``--fsync never`` so that thousands of small PUB
messages queue up during each pause.  The full check of the issue is
``PYCACHE_PAUSE_CYCLES=25 PYCACHE_PAUSE_MAX_S=5 pytest tests/test_pause.py``.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import zmq

import mesh
from mesh.roles.balancer import Balancer
from mesh.roles.config import BalancerConfig
from mesh.roles.liveness import KEEPALIVE_IDLE_S, USER_TIMEOUT_MS
from tests.conftest import NodeProcess, wait_converged, wait_for
from tests.test_mesh import Writer, merged, missing_on, wait_count, wait_mesh

CYCLES = int(os.environ.get("PYCACHE_PAUSE_CYCLES", "8"))
MAX_PAUSE_S = float(os.environ.get("PYCACHE_PAUSE_MAX_S", "2.5"))
RUN_S = 0.7  # between pauses: long enough for the node to drain what queued


def test_no_socket_sets_zmtp_heartbeats() -> None:
    """No module arms libzmq's heartbeat timer (the path of the abort)."""
    package = Path(mesh.__file__).parent
    setting = re.compile(r"setsockopt\(\s*zmq\.HEARTBEAT_(IVL|TIMEOUT|TTL)")
    found = [str(p) for p in package.rglob("*.py") if setting.search(p.read_text())]
    assert not found, f"ZMTP heartbeats set in {found}: see mesh/roles/liveness.py"


def test_balancer_links_use_tcp_keepalive() -> None:
    config = BalancerConfig(front="tcp://127.0.0.1:*", nodes=("tcp://127.0.0.1:9",))
    ctx = zmq.Context()
    balancer = Balancer(config, ctx)
    try:
        sock = balancer.links[0].sock
        assert sock is not None
        assert sock.getsockopt(zmq.HEARTBEAT_IVL) == 0
        assert sock.getsockopt(zmq.TCP_KEEPALIVE) == 1
        assert sock.getsockopt(zmq.TCP_KEEPALIVE_IDLE) == KEEPALIVE_IDLE_S
        assert sock.getsockopt(zmq.TCP_MAXRT) == USER_TIMEOUT_MS
    finally:
        balancer.close()
        ctx.term()


@pytest.mark.processes
@pytest.mark.timeout(40 + CYCLES * (MAX_PAUSE_S + RUN_S + 1))
def test_node_survives_repeated_pauses_under_write_load(procs):
    nodes = procs.cluster(3, extra=["--fsync", "never"])
    n1, n2, n3 = nodes
    wait_mesh(nodes)
    balancer = procs.balancer(nodes)
    writers = [
        Writer(n, f"{n.node_id}w{i}", batch=5, value_size=8) for n in nodes for i in range(2)
    ]
    front = NodeProcess(n1.data_dir, "front")  # a stand-in: Writer only needs .client()
    front.api = balancer.endpoint
    writers += [Writer(front, f"lb{i}", batch=5, value_size=8) for i in range(2)]
    rng = random.Random(CYCLES)
    pauses: list[float] = []
    for w in writers:
        w.start()
    try:
        wait_count(writers[:4], lambda w: 100, "writes before the first pause")
        for cycle in range(CYCLES):
            pause_s = rng.uniform(1.0, MAX_PAUSE_S)
            n3.signal(signal.SIGSTOP)
            try:
                time.sleep(pause_s)
            finally:
                n3.signal(signal.SIGCONT)
            pauses.append(round(pause_s, 2))
            time.sleep(RUN_S)
            alive(n3, f"after pause {cycle + 1} of {CYCLES} ({pause_s:.1f} s)")
    finally:
        for w in writers:
            w.stopping.set()
    for w in writers:
        w.stop()
    print(f"{CYCLES} pauses of n3 (s): {pauses}")
    for node in nodes:
        alive(node, "at the end")
    # Not after every pause: a resumed n3 sometimes answers nothing for over 10 s
    # (seen before the liveness change too; it is not this abort), see the report.
    with n3.client(timeout=5.0) as c:
        wait_for(c.ping, 30, "n3 answering after the last pause")
    wait_converged(nodes)
    acked = merged(writers)
    assert len(acked) > 1000, f"too little write load: {len(acked)} writes acknowledged"
    for node in nodes:
        wrong = missing_on(node, acked)
        assert not wrong, f"{node.node_id} lacks {len(wrong)} acknowledged writes: {wrong[:5]}"


def alive(node: NodeProcess, when: str) -> None:
    process = node.process
    assert process is not None
    code = process.poll()
    assert code is None, f"{node.node_id} died {when} (exit {code}):\n{node.stderr()[-2000:]}"
