"""The operator's CLI (issue 14): ``status --json``, ``stats --all``, one ``--connect``
default, every env var in ``--help``; ``pycache up``'s cluster.json metrics URLs and JSON logs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request

import click
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from mesh.cli import main
from mesh.cli.client_commands import COMMANDS as CLIENT_COMMANDS
from mesh.roles.config import DEFAULT_FRONT
from mesh.roles.launcher import die_with_parent


def test_help_shows_the_env_var_of_every_option():
    runner = CliRunner()
    for name, command in main.commands.items():
        output = runner.invoke(main, [name, "--help"], terminal_width=200).output
        for param in command.params:
            if isinstance(param, click.Option) and param.envvar:
                assert f"env var: {param.envvar}" in output, (name, param.name)


def test_every_client_command_takes_connect_with_one_default():
    for command in CLIENT_COMMANDS:
        connect = next(p for p in command.params if p.name == "connect")
        assert (connect.default, connect.envvar) == (DEFAULT_FRONT, "PYCACHE_CONNECT"), command


@pytest.mark.processes
def test_status_json_through_a_node_and_a_balancer(procs):
    nodes = procs.cluster(2, extra=["--insecure"])
    balancer = procs.balancer(nodes)
    runner = CliRunner()
    result = runner.invoke(main, ["status", "--json", "--connect", nodes[0].endpoint])
    assert result.exit_code == 0, result.output
    seen = json.loads(result.output)["nodes"]
    assert [n["node_id"] for n in seen] == ["n1", "n2"] and seen[0]["state"] == "ready"
    result = runner.invoke(main, ["status", "--json"], env={"PYCACHE_CONNECT": balancer.endpoint})
    assert result.exit_code == 0, result.output
    seen = json.loads(result.output)["nodes"]
    assert sorted(n["node_id"] for n in seen) == ["n1", "n2"]
    assert all(n["in_rotation"] for n in seen)
    table = runner.invoke(main, ["status", "--connect", balancer.endpoint]).output
    assert table.splitlines()[0].split()[:3] == ["node_id", "state", "in_rotation"]


def test_stats_all_without_a_cluster_file_is_one_line(tmp_path):
    missing = str(tmp_path / "cluster.json")
    result = CliRunner().invoke(main, ["stats", "--all", "--cluster-file", missing])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {missing}: no such file (pycache up writes it in its --data-dir)"
    ]


@pytest.mark.processes
def test_up_lists_metrics_urls_stats_all_reads_every_process_and_logs_are_json(tmp_path):
    data = tmp_path / "cluster"
    argv = [sys.executable, "-m", "mesh", "up", "--data-dir", str(data), "--api-port", "0"]
    argv += ["--nodes", "2", "--log-format", "json"]
    up = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if line.startswith("layout:"):
                break
        processes = json.loads((data / "cluster.json").read_text())["processes"]
        assert [p["role"] for p in processes] == ["node", "node", "balancer", "edge"]
        for process in processes:
            url = process["endpoints"]["metrics"]
            with urllib.request.urlopen(url, timeout=5) as reply:
                names = {f.name for f in text_string_to_metric_families(reply.read().decode())}
            assert names, url
        result = CliRunner().invoke(
            main, ["stats", "--all", "--cluster-file", str(data / "cluster.json")]
        )
        assert result.exit_code == 0, result.output
        everything = json.loads(result.output)
        assert sorted(everything) == ["balancer", "edge", "n1", "n2"]
        assert everything["n1"]["stats"]["node_id"] == "n1"
        assert everything["n2"]["stats"]["state"] == "ready"
        balancer = everything["balancer"]["metrics"]
        assert balancer["pycache_balancer_requests_total"] >= 0
        api = processes[0]["endpoints"]["api"]
        assert balancer[f'pycache_balancer_node_up{{endpoint="{api}",node="n1"}}'] == 1
        assert 'pycache_http_responses_total{code="200"}' in everything["edge"]["metrics"]
    finally:
        up.send_signal(signal.SIGTERM)
        _, stderr = up.communicate(timeout=30)
    assert up.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    names = {line["process_name"] for line in lines}
    assert {"n1", "n2", "balancer", "edge"} <= names, names
