"""``/metrics`` on a node, a balancer and the edge: parsed with prometheus_client's parser,
the families of issue 14 checked; the plain-int histogram behind the latencies."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mesh.cli import main
from mesh.core.errors import WriteNotAcknowledged
from mesh.core.histogram import Histogram
from mesh.roles.config import BalancerConfig
from mesh.roles.launcher import ChildProcess, mesh_argv
from tests.conftest import failing_the_test, wait_for

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy/grafana/pycache-dashboard.json"
NODE_FAMILIES = {
    "pycache_requests": "counter",
    "pycache_request_duration_seconds": "histogram",
    "pycache_replication_lag_entries": "gauge",
    "pycache_replication_lag_ms": "gauge",
    "pycache_catchup_active": "gauge",
    "pycache_catchup_entries_done": "gauge",
    "pycache_catchup_entries_left": "gauge",
    "pycache_log_fsync_duration_seconds": "histogram",
    "pycache_log_bytes": "gauge",
    "pycache_snapshot_bytes": "gauge",
    "pycache_keys": "gauge",
    "pycache_bytes": "gauge",
    "pycache_evictions": "counter",
    "pycache_expirations": "counter",
    "pycache_tombstones": "gauge",
    "pycache_curve_handshake_failures": "counter",
    "pycache_http_responses": "counter",
}
BALANCER_FAMILIES = {
    "pycache_balancer_requests": "counter",
    "pycache_balancer_retries": "counter",
    "pycache_balancer_failovers": "counter",
    "pycache_balancer_node_up": "gauge",
    "pycache_balancer_node_state": "gauge",
    "pycache_curve_handshake_failures": "counter",
}
EDGE_FAMILIES = {
    "pycache_http_responses": "counter",
    "pycache_http_request_duration_seconds": "histogram",
}


def scrape(url: str) -> dict:
    """``{family name: family}`` of a /metrics page (checks its Content-Type too)."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def value(families: dict, name: str, **labels: str) -> float:
    """The value of the sample ``name`` (with these labels) in ``families``."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise AssertionError(f"no sample {name} {labels}")


def has_families(families: dict, expected: dict[str, str]) -> None:
    missing = {n: t for n, t in expected.items() if families.get(n) is None}
    assert not missing, f"missing families {missing}; have {sorted(families)}"
    wrong = {n: families[n].type for n, t in expected.items() if families[n].type != t}
    assert not wrong, f"families of the wrong type: {wrong}"


def http_of(node) -> str:
    return json.loads((node.data_dir / "node.json").read_text())["http"]


@dataclass
class EdgeProcess:
    """A ``pycache edge`` child (tracked by ``procs``)."""

    child: ChildProcess
    url: str = ""


def start_edge(procs, backend: str, extra: list[str] | None = None) -> EdgeProcess:
    folder: Path = procs.tmp_path / "edge"
    folder.mkdir(exist_ok=True)
    status = folder / "edge.json"
    edge = EdgeProcess(ChildProcess("edge", status, folder / "edge.stderr.log"))
    procs.track(edge)
    argv = ["--port", "0", "--backend", backend, "--status-file", str(status), *(extra or [])]
    edge.child.start(mesh_argv("edge", *argv))
    with failing_the_test():
        edge.url = edge.child.wait_status(lambda i: "http" in i, 15)["http"]
    return edge


@pytest.mark.processes
def test_node_metrics_cover_requests_latency_lag_log_store_and_handshakes(procs):
    nodes = procs.cluster(2, extra=["--http-port", "*"])
    with nodes[0].client() as c:
        for i in range(20):
            c.set(f"k{i}", b"v" * 10)
        assert c.get("k1") == b"v" * 10
        c.delete("k2")
    # a stranger's CURVE key on n1's repl socket: refused by ZAP, counted
    ctx = zmq.Context()
    try:
        sock = procs.peer_socket(ctx, zmq.DEALER)
        sock.connect(nodes[0].repl)
        sock.send(b"hello?")
        url = http_of(nodes[0]) + "/metrics"
        wait_for(
            lambda: value(scrape(url), "pycache_curve_handshake_failures_total", plane="peer") >= 1,
            10,
            "the refused handshake to be counted",
        )
    finally:
        ctx.destroy(0)
    families = scrape(url)
    has_families(families, NODE_FAMILIES)
    assert value(families, "pycache_requests_total", op="SET", outcome="ok") == 20
    assert value(families, "pycache_requests_total", op="GET", outcome="ok") == 1
    assert value(families, "pycache_request_duration_seconds_count") >= 22
    assert value(families, "pycache_log_fsync_duration_seconds_count") >= 1
    assert value(families, "pycache_keys") == 19
    assert value(families, "pycache_tombstones") == 1
    assert value(families, "pycache_log_bytes") > 0
    assert value(families, "pycache_replication_lag_entries", peer="n2") == 0
    assert value(families, "pycache_replication_lag_ms", peer="n2") >= 0
    assert value(families, "pycache_node_state", state="ready") == 1
    # the scrape itself was answered 200, and counted by the next one
    assert value(scrape(url), "pycache_http_responses_total", code="200") >= 1


@pytest.mark.processes
def test_balancer_and_edge_metrics_and_the_dashboard_asks_for_nothing_else(procs):
    nodes = procs.cluster(2, extra=["--insecure", "--http-port", "*"])
    balancer = procs.balancer(nodes, extra=["--metrics-port", "*"])
    url = json.loads(balancer.status.read_text())["metrics"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
    with balancer.client() as c:
        c.set("k", b"v")
        assert c.get("k") == b"v"
    families = scrape(url)
    has_families(families, BALANCER_FAMILIES)
    assert value(families, "pycache_balancer_requests_total") >= 2
    for node in ("n1", "n2"):
        assert value(families, "pycache_balancer_node_up", node=node) == 1
        assert value(families, "pycache_balancer_node_state", node=node, state="ready") == 1
    nodes[1].kill()
    wait_for(
        lambda: value(scrape(url), "pycache_balancer_node_up", node="n2") == 0,
        10,
        "the balancer to take n2 out of rotation",
    )

    edge = start_edge(procs, balancer.endpoint)
    for path in ("/api/cache/k/", "/api/cache/nope/", "/api/nowhere"):
        try:
            urllib.request.urlopen(edge.url + path, timeout=5).close()
        except urllib.error.HTTPError as answer:
            answer.close()
    families = scrape(edge.url + "/metrics")
    has_families(families, EDGE_FAMILIES)
    assert value(families, "pycache_http_responses_total", code="200") == 1
    assert value(families, "pycache_http_responses_total", code="404") == 2
    assert value(families, "pycache_http_request_duration_seconds_count") == 3

    # Every series the Grafana dashboard queries is one these processes export.
    exported = {
        sample.name
        for page in (families, scrape(url), scrape(http_of(nodes[0]) + "/metrics"))
        for family in page.values()
        for sample in family.samples
    }
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    asked = {name for expr in exprs for name in re.findall(r"pycache_\w+", expr)}
    assert asked and asked <= exported, asked - exported


def test_balancer_metrics_are_off_by_default_and_a_bad_port_is_one_line():
    assert BalancerConfig.metrics_port == 0
    argv = ["balancer", "--nodes", "tcp://127.0.0.1:1", "--metrics-port", "x"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2 and "is not a port number" in result.output


@pytest.mark.processes
def test_a_taken_metrics_port_is_one_line_and_exit_2():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = mesh_argv("balancer", "--front", "tcp://127.0.0.1:*", "--nodes", "tcp://127.0.0.1:1")
        done = subprocess.run(
            [*argv, "--metrics-port", str(port)], capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: metrics 127.0.0.1:{port}: address already in use"
    )
    assert "Traceback" not in done.stderr


def test_histogram_buckets_are_cumulative_and_inclusive():
    hist = Histogram((0.001, 0.01, 0.1))
    hist.observe(0.001)  # on a bound: in that bucket (le is inclusive)
    hist.observe(0.005, times=3)
    hist.observe(7.0)
    assert hist.cumulative() == [("0.001", 1), ("0.01", 4), ("0.1", 4), ("+Inf", 5)]
    assert hist.count == 5
    assert hist.sum == pytest.approx(0.001 + 0.015 + 7.0)
    assert hist.time(lambda a, b: a + b, 2, 3) == 5 and hist.count == 6
    with pytest.raises(ValueError):
        Histogram((0.1, 0.01))


@pytest.mark.processes
def test_balancer_metrics_beyond_loopback_need_a_token(tmp_path):
    argv = mesh_argv("balancer", "--front", "tcp://127.0.0.1:*", "--nodes", "tcp://127.0.0.1:1")
    open_wide = [*argv, "--metrics-port", "*", "--metrics-host", "0.0.0.0"]
    done = subprocess.run(open_wide, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "/metrics 0.0.0.0 listens beyond loopback" in last and "--token-file" in last


def test_balancer_metrics_with_a_token_file_ask_for_it(procs, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-token\n")
    nodes = procs.cluster(1, extra=["--insecure"])
    balancer = procs.balancer(nodes, extra=["--metrics-port", "*", "--token-file", str(tokens)])
    url = json.loads(balancer.status.read_text())["metrics"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=5)
    refused.value.close()
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == "Bearer"
    asked = urllib.request.Request(url, headers={"Authorization": "Bearer s3cret-token"})
    with urllib.request.urlopen(asked, timeout=5) as answer:
        families = text_string_to_metric_families(answer.read().decode())
        assert any(f.name == "pycache_balancer_requests" for f in families)


def test_a_write_never_acknowledged_is_counted_so(procs, paused):
    nodes = procs.cluster(2, extra=["--http-port", "*", "--ack-timeout-ms", "300"])
    url = http_of(nodes[0]) + "/metrics"
    with nodes[0].client() as c:
        assert c.set("k", b"v", w="all") is True
        paused.append(nodes[1])
        nodes[1].signal(signal.SIGSTOP)
        with pytest.raises(WriteNotAcknowledged):
            c.set("k", b"w", w="all")
    families = scrape(url)
    assert value(families, "pycache_requests_total", op="SET", outcome="ok") == 1
    assert value(families, "pycache_requests_total", op="SET", outcome="NOT_ACKNOWLEDGED") == 1
