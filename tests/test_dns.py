"""A peer whose name resolves slowly must not slow a healthy node (issue 16.3).

libzmq resolves ``tcp://name:port`` on every reconnect in its I/O thread,
which the node's API socket shares: while a peer's name took seconds to
resolve, every GET waited for it.  Names are now resolved in threads of
:mod:`mesh.roles.dialer` and sockets connect to addresses.

The node under test runs in its own mount namespace (``unshare -m``) with
``/etc/resolv.conf`` bind-mounted to a file naming ``DNS_ADDRESS``, a
loopback address where this test's UDP "DNS server" takes the queries and
never answers: each lookup of ``peer.test`` lasts the resolver's timeout.
No DNS traffic leaves 127.0.0.0/8.  Needs root (``unshare -m``, port 53).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import NodeProcess, Processes, wait_for

pytestmark = pytest.mark.processes

DNS_ADDRESS = "127.0.0.77"
SLOW_PEER = "tcp://peer.test:7101"
MEASURE_S = 4.0


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root: unshare -m and a DNS server on port 53"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "true"], capture_output=True, text=True, timeout=10, check=False
    )
    if probe.returncode != 0:
        return f"unshare -m does not work here: {probe.stderr.strip()}"
    return None


class SilentDns(threading.Thread):
    """Takes DNS queries on ``DNS_ADDRESS``:53 and never answers; counts them."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="silent-dns")
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((DNS_ADDRESS, 53))
        self.sock.settimeout(0.2)
        self.queries: list[bytes] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                query, _ = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries.append(query)

    def asked_for(self, label: bytes) -> int:
        return sum(1 for q in self.queries if label in q)

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.close()


@pytest.fixture
def silent_dns() -> Iterator[SilentDns]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    server = SilentDns()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class IsolatedResolverNode(NodeProcess):
    """A node in its own mount namespace whose /etc/resolv.conf is ``resolv_conf``."""

    def __init__(self, resolv_conf: Path, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.resolv_conf = resolv_conf

    @property
    def argv(self) -> list[str]:
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(self.resolv_conf), *super().argv]


def test_gets_stay_fast_while_a_peer_name_resolves_slowly(
    procs: Processes, silent_dns: SilentDns, tmp_path: Path
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {DNS_ADDRESS}\noptions timeout:2 attempts:1\n")
    keys = procs.member_keys("n1", "n2")
    n2 = procs.node("n2")
    n1 = IsolatedResolverNode(resolv, tmp_path / "n1", "n1", None, keys)
    n1.peers = [n2.repl, SLOW_PEER]
    procs.nodes.append(n1)
    n1.start()
    wait_for(lambda: silent_dns.asked_for(b"\x04peer\x04test"), 10, "a lookup of peer.test")

    latencies: list[float] = []
    with n1.client(timeout=5.0) as c:
        c.set("k", b"v")
        started = time.monotonic()
        while time.monotonic() - started < MEASURE_S:
            t0 = time.perf_counter()
            assert c.get("k") == b"v"
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.002)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99)]
    asked = silent_dns.asked_for(b"\x04peer\x04test")
    print(
        f"{len(latencies)} GETs: p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms; {asked} lookups"
    )
    assert asked >= 2, "peer.test was not looked up again while the GETs ran"
    assert p99 < 0.050, f"GET p99 {p99 * 1000:.0f} ms (max {latencies[-1] * 1000:.0f} ms)"


def test_dialer_connects_by_address_and_follows_a_name_that_moves(monkeypatch) -> None:
    import zmq

    from mesh.roles import dialer as dialer_module
    from mesh.roles.dialer import Dialer, name_of

    assert name_of("tcp://127.0.0.1:7101") is None
    assert name_of("tcp://*:7101") is None
    assert name_of("ipc:///tmp/x") is None
    assert name_of("tcp://n2:7101") == ("n2", 7101)
    addresses = iter(["tcp://127.0.0.1:7101", "tcp://127.0.0.2:7101"])
    monkeypatch.setattr(dialer_module, "resolve", lambda host, port: next(addresses))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    dialer = Dialer(reresolve_ms=100)
    try:
        dialer.connect(sock, "tcp://n2:7101", now=0)
        wait_for(
            lambda: (dialer.poll(1), dialer.address_of(sock, "tcp://n2:7101"))[1], 5, "a connect"
        )
        assert dialer.address_of(sock, "tcp://n2:7101") == "tcp://127.0.0.1:7101"
        dialer.poll(200)  # due again: the name now says 127.0.0.2
        wait_for(
            lambda: (
                (dialer.poll(201), dialer.address_of(sock, "tcp://n2:7101"))[1]
                == "tcp://127.0.0.2:7101"
            ),
            5,
            "a reconnect to the new address",
        )
        dialer.disconnect(sock, "tcp://n2:7101")
        assert dialer.address_of(sock, "tcp://n2:7101") is None
    finally:
        dialer.close()
        sock.close(0)
        ctx.term()


def test_the_balancer_reaches_nodes_named_by_host_name(procs: Processes) -> None:
    """``--nodes tcp://localhost:PORT``: the balancer's dialer resolves the name (from
    /etc/hosts, no DNS traffic) in a thread and connects by address."""
    node = procs.node("n1")
    port = node.endpoint.rsplit(":", 1)[1]
    named = SimpleNamespace(endpoint=f"tcp://localhost:{port}")
    front = procs.balancer([named])  # type: ignore[list-item]
    with front.client() as c:
        assert c.set("k", b"v") and c.get("k") == b"v"
