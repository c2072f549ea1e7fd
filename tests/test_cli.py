"""The pycache CLI: client commands against a real node, exit codes, `pycache up`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import pytest
from click.testing import CliRunner

from mesh.cli import main
from mesh.client import Client
from tests.conftest import _die_with_parent, wait_for


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


def test_node_rejects_bad_config(tmp_path):
    result = CliRunner().invoke(main, ["node", "--id", "bad id!", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "node_id" in result.output


def test_node_takes_flags_from_environment(tmp_path):
    env = {"PYCACHE_NODE_ID": "bad id!", "PYCACHE_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(main, ["node"], env=env)
    assert result.exit_code == 2 and "node_id" in result.output


@pytest.mark.processes
def test_up_starts_reports_and_stops_cleanly(tmp_path):
    data = tmp_path / "cluster"
    argv = [sys.executable, "-m", "mesh", "up", "--data-dir", str(data), "--api-port", "0"]
    up = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        assert up.stdout is not None
        lines = []
        for line in up.stdout:
            lines.append(line)
            if line.startswith("layout:"):
                break
        assert any("PyCache is up" in line for line in lines), lines
        layout = json.loads((data / "cluster.json").read_text())
        procs = layout["processes"]
        assert [p["role"] for p in procs] == ["node"] * 3 + ["balancer", "edge"]
        assert all(p["argv"][:3] == [sys.executable, "-m", "mesh"] for p in procs)
        assert all("*" not in " ".join(p["argv"]) for p in procs)  # pinned to bound ports
        with Client(procs[0]["endpoints"]["api"], timeout=5) as c:
            assert c.set("k", "v") is True
        with Client(procs[2]["endpoints"]["api"], timeout=5) as c:
            wait_for(lambda: c.get("k") == b"v", 5, "the write to reach n3")
        with Client(procs[3]["endpoints"]["front"], timeout=5) as c:
            assert c.get("k") == b"v"
        edge = procs[4]["endpoints"]["http"]
        with urllib.request.urlopen(f"{edge}/api/cache/k/", timeout=5) as reply:
            assert json.loads(reply.read())["payload"]["value"] == "v"
        up.send_signal(signal.SIGTERM)
        assert up.wait(20) == 0
        for p in procs:
            wait_for(lambda p=p: not _alive(p["pid"]), 10, f"{p['id']} to be gone")
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        up.stdout.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
