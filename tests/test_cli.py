"""The pycache CLI: client commands against a real node, exit codes, `pycache up`."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import click
import pytest
import zmq
import zmq.auth
from click.testing import CliRunner

import mesh
from mesh.cli import main
from mesh.client import Client
from mesh.core import peerwire
from mesh.core.catchup import Fetch
from mesh.roles.launcher import die_with_parent
from tests.conftest import wait_for


@pytest.fixture
def run(node):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [*args, "--connect", node.endpoint, "--timeout", "5"])

    return invoke


@pytest.mark.processes
def test_set_get_del_expire_ttl_stats(run):
    assert run("get", "k").exit_code == 1
    assert run("get", "k").output == ""
    result = run("set", "k", "hello world")
    assert (result.exit_code, result.output) == (0, "OK\n")
    assert run("get", "k").output == "hello world\n"
    assert run("ttl", "k").output == "-1\n"
    assert run("expire", "k", "100").output == "1\n"
    assert run("ttl", "k").output == "100\n"
    assert run("persist", "k").output == "1\n"
    assert run("set", "t", "v", "--ttl", "30").exit_code == 0
    assert run("ttl", "t").output == "30\n"
    assert run("set", "k", "x", "--nx").output == "(nil)\n"
    assert run("del", "k", "t", "nope").output == "2\n"
    assert run("expire", "k", "5").output == "0\n"
    assert run("ttl", "k").output == "-2\n"
    stats = json.loads(run("stats").output)
    assert stats["state"] == "ready" and stats["keys"] == 0


@pytest.mark.processes
def test_errors_print_one_line_and_exit_2_or_more(run):
    result = run("get", "k" * 600)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert run("set", "k", "v", "--ttl", "-1").exit_code == 2
    assert run("expire", "k", "abc").exit_code == 2


def test_unreachable_node_exits_3():
    result = CliRunner().invoke(
        main, ["get", "k", "--connect", "tcp://127.0.0.1:1", "--timeout", "0.2"]
    )
    assert result.exit_code == 3
    assert result.output.startswith("error: ")


def test_help_everywhere():
    runner = CliRunner()
    for command in (
        [],
        ["node"],
        ["up"],
        ["get"],
        ["set"],
        ["del"],
        ["expire"],
        ["ttl"],
        ["stats"],
    ):
        result = runner.invoke(main, [*command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


def test_every_subcommand_is_named_where_it_loads():
    """The lazy group's table names every command of every CLI module, under its own name."""
    import importlib

    from mesh.cli.main import SUBCOMMANDS

    for name, (module, attribute) in SUBCOMMANDS.items():
        command = getattr(importlib.import_module(module), attribute)
        assert command.name == name and main.get_command(click.Context(main), name) is command
    modules = {module for module, _ in SUBCOMMANDS.values()} - {"mesh.cli.node"}
    defined = {c.name for m in modules for c in importlib.import_module(m).COMMANDS}
    assert defined | {"node"} == set(SUBCOMMANDS) == set(main.commands)
    assert main.commands["up"].name == "up" and main.commands.get("nope") is None


def test_a_node_loads_no_client_metrics_or_resp_code():
    """What ``pycache node`` imports before serving (without --http-port or --resp)."""
    code = (
        "import sys, click; from mesh.cli import main; "
        "main.get_command(click.Context(main), 'node'); import mesh.roles.node_main; "
        "print(' '.join(sorted(sys.modules)))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(mesh.__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = set(out.stdout.split())
    assert "mesh.roles.node" in loaded
    unwanted = {
        "mesh.cli.client_commands",
        "mesh.cli.keyspace_commands",
        "mesh.cli.processes",
        "mesh.cli.keys",
        "mesh.roles.node_families",
        "mesh.roles.resp_server",
        "prometheus_client",
        "tornado",
        "hiredis",
        "statistics",
        "shutil",
        "hmac",
    }
    assert not unwanted & loaded


def test_node_rejects_bad_config(tmp_path):
    result = CliRunner().invoke(main, ["node", "--id", "bad id!", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "node_id" in result.output


def test_node_takes_flags_from_environment(tmp_path):
    env = {"PYCACHE_NODE_ID": "bad id!", "PYCACHE_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["node"], env=env)
    assert result.exit_code == 2 and "node_id" in result.output


def _start_up(data):
    """Start ``pycache up`` on OS-picked ports; return it once it printed its layout."""
    argv = [sys.executable, "-m", "mesh", "up", "--data-dir", str(data), "--api-port", "0"]
    up = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    assert up.stdout is not None
    lines = []
    for line in up.stdout:
        lines.append(line)
        if line.startswith("layout:"):
            break
    assert any("PyCache is up" in line for line in lines), lines
    return up, json.loads((data / "cluster.json").read_text())["processes"]


def _stop_up(up) -> int:
    try:
        up.send_signal(signal.SIGTERM)
        return up.wait(30)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up.stdout.close()


def _follow(up) -> queue.Queue:
    """The lines ``up`` prints from now on, each with when it came, read by a thread."""
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in up.stdout:
            lines.put((time.monotonic(), line))
        lines.put(None)  # the end

    threading.Thread(target=read, daemon=True).start()
    return lines


def _expect_line(lines: queue.Queue, text: str, timeout: float) -> float:
    """When the next line holding ``text`` came, within ``timeout`` s (others are skipped)."""
    deadline = time.monotonic() + timeout
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            item = lines.get(timeout=left)
        except queue.Empty:
            break
        if item is None:
            break
        seen.append(item[1])
        if text in item[1]:
            return item[0]
    pytest.fail(f"up did not print {text!r} within {timeout} s; it printed {seen}")


@pytest.mark.processes
@pytest.mark.timeout(180)
def test_up_starts_reports_restarts_a_dead_child_and_comes_back(tmp_path):
    data = tmp_path / "cluster"
    up, procs = _start_up(data)
    try:
        assert [p["role"] for p in procs] == ["node"] * 3 + ["balancer", "edge"]
        assert all(p["argv"][:3] == [sys.executable, "-m", "mesh"] for p in procs)
        assert all("*" not in " ".join(p["argv"]) for p in procs)  # pinned to bound ports
        with Client(procs[0]["endpoints"]["api"], timeout=5) as c:
            assert c.set("k", "v") is True
        with Client(procs[2]["endpoints"]["api"], timeout=5) as c:
            wait_for(lambda: c.get("k") == b"v", 5, "the write to reach n3")
        edge = procs[4]["endpoints"]["http"]
        with urllib.request.urlopen(f"{edge}/api/cache/k/", timeout=5) as reply:
            assert json.loads(reply.read())["payload"]["value"] == "v"
        lines = _follow(up)
        # A node that dies is started again within 2 s, with its own argv; it catches up.
        killed = time.monotonic()
        os.kill(procs[1]["pid"], signal.SIGKILL)
        _expect_line(lines, "node n2 exited with code -9; restarting (attempt 1)", 5)
        with Client(procs[3]["endpoints"]["front"], timeout=5) as c:
            assert c.set("k2", "v2") is True
        assert _expect_line(lines, "node n2 restarted: pid", 5) - killed <= 2.0
        with Client(procs[1]["endpoints"]["api"], timeout=1) as n2:
            wait_for(lambda: n2.get("k2") == b"v2", 15, "the restarted n2 to catch up")
        # So is the balancer, on its port: the edge serves again.
        killed = time.monotonic()
        os.kill(procs[3]["pid"], signal.SIGKILL)
        _expect_line(lines, "balancer exited with code -9; restarting (attempt 1)", 5)
        assert _expect_line(lines, "balancer restarted: pid", 5) - killed <= 2.0

        def edge_serves() -> bool:
            with urllib.request.urlopen(f"{edge}/api/cache/k2/", timeout=2) as reply:
                return json.loads(reply.read())["payload"]["value"] == "v2"

        wait_for(edge_serves, 15, "the edge to serve again through the restarted balancer")
        now = json.loads((data / "cluster.json").read_text())["processes"]
        assert [p["argv"] for p in now] == [p["argv"] for p in procs]
        assert [p["pid"] == q["pid"] for p, q in zip(now, procs, strict=True)] == [
            True,
            False,
            True,
            False,
            True,
        ]
        assert _stop_up(up) == 0  # a clean stop restarts nothing
        for p in now:
            wait_for(lambda p=p: not _alive(p["pid"]), 10, f"{p['id']} to be gone")
    finally:
        if up.poll() is None:
            _stop_up(up)
    # The same data folder comes back with the data.
    up, procs = _start_up(data)
    try:
        with Client(procs[3]["endpoints"]["front"], timeout=5) as c:
            assert c.mget("k", "k2") == [b"v", b"v2"]
    finally:
        assert _stop_up(up) == 0


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_up_makes_the_peer_keys_once_and_strangers_get_nothing(tmp_path):
    """The attacks of issue 17 against a default ``pycache up``: a stranger's SUB on a
    PUB socket and a FETCH to a repl socket get nothing; restarts keep the keys."""
    data = tmp_path / "cluster"
    up, procs = _start_up(data)
    try:
        server_key = (data / "keys" / "server.key_secret").read_text()
        assert sorted(p.stem for p in (data / "keys" / "members").glob("*.key")) == [
            "n1",
            "n2",
            "n3",
        ]
        n1 = next(p for p in procs if p["id"] == "n1")["endpoints"]
        node_status = json.loads((data / "n1" / "node.json").read_text())
        ctx = zmq.Context()
        try:
            sub = ctx.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"")
            dealer = ctx.socket(zmq.DEALER)
            for sock in (sub, dealer):
                sock.setsockopt(zmq.LINGER, 0)
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
                sock.curve_serverkey = zmq.auth.load_certificate(data / "keys" / "server.key")[0]
            sub.connect(node_status["pub"])
            dealer.connect(node_status["repl"])
            with Client(n1["api"]) as c:
                c.set("secret", b"value")
            with contextlib.suppress(zmq.Again):
                dealer.send(peerwire.encode_fetch("n2", Fetch(1, {}, True)), zmq.NOBLOCK)
            assert not sub.poll(1000) and not dealer.poll(100)
            sub.close(0)
            dealer.close(0)
        finally:
            ctx.term()
    finally:
        assert _stop_up(up) == 0
    up, _ = _start_up(data)
    try:
        assert (data / "keys" / "server.key_secret").read_text() == server_key
    finally:
        assert _stop_up(up) == 0


@pytest.mark.processes
def test_incr(run):
    """Counters (issue 18): ``pycache incr KEY [--by N]``."""
    assert (run("incr", "c").exit_code, run("incr", "c").output) == (0, "2\n")
    assert run("incr", "c", "--by", "-5").output == "-3\n"
    assert run("get", "c").output == "-3\n"
    run("set", "s", "text")
    result = run("incr", "s")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "not an integer" in result.output
    assert run("incr", "c", "--by", str(2**63)).exit_code == 2
    assert CliRunner().invoke(main, ["incr", "--help"]).exit_code == 0


@pytest.mark.processes
@pytest.mark.timeout(120)
def test_a_second_up_on_the_same_data_dir_fails_and_leaves_the_running_one_alone(tmp_path):
    data = tmp_path / "cluster"
    up, processes = _start_up(data)
    try:
        before = sorted(data.glob("n*/node.json"))
        assert len(before) == 3
        cluster = (data / "cluster.json").read_bytes()
        argv = [sys.executable, "-m", "mesh", "up", "--data-dir", str(data), "--api-port", "0"]
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert "in use by another process" in second.stderr.strip().splitlines()[-1]
        assert "Traceback" not in second.stderr
        assert sorted(data.glob("n*/node.json")) == before  # the running nodes' status files
        assert (data / "cluster.json").read_bytes() == cluster
    finally:
        assert _stop_up(up) == 0


@pytest.mark.timeout(30)
def test_a_signal_while_up_starts_its_children_ends_the_start_at_once(tmp_path, monkeypatch):
    """``up`` waited for every child to be ready (up to --ready-timeout, 60 s) before
    it looked at SIGTERM or SIGINT."""
    from mesh.roles.supervisor import Cluster

    cluster = Cluster(str(tmp_path / "cluster"), nodes=1)
    starting = threading.Event()

    def slow_start(timeout: float) -> None:
        starting.set()
        time.sleep(timeout)  # a child that never gets ready

    stopped: list[bool] = []
    monkeypatch.setattr(cluster, "start", slow_start)
    monkeypatch.setattr(cluster, "stop", lambda: stopped.append(True))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    timer = threading.Thread(
        target=lambda: starting.wait(5) and os.kill(os.getpid(), signal.SIGTERM)
    )
    timer.start()
    try:
        started = time.monotonic()
        lines: list[str] = []
        assert cluster.run(20, lines.append) == 0
        assert time.monotonic() - started < 5
        assert stopped == [True] and "during the start" in lines[0]
    finally:
        timer.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
