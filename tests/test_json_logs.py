"""``--log-format json`` (and ``PYCACHE_LOG_FORMAT``): every stderr line of a node and a
balancer is one JSON object; a long catch-up logs its progress at least every 2 s."""

from __future__ import annotations

import json
import logging
import os
from types import SimpleNamespace

import pytest

from mesh.roles import node_metrics
from mesh.roles.node_metrics import CatchUpProgress
from tests.conftest import wait_for

KEYS = ("time", "level", "pid", "process_name", "logger", "message")


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` parsed as JSON (a line that is not fails the test)."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "no log lines"
    parsed = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(record, dict), line
        assert all(key in record for key in KEYS), record
        parsed.append(record)
    return parsed


@pytest.mark.processes
def test_node_and_balancer_log_json_lines(procs, monkeypatch):
    nodes = procs.cluster(2, extra=["--log-format", "json"])
    monkeypatch.setenv("PYCACHE_LOG_FORMAT", "json")  # the balancer takes it from its env
    balancer = procs.balancer(nodes)
    with balancer.client() as c:
        c.set("k", b"v")
    for node in nodes:
        node.stop()
    n1 = json_lines(nodes[0].stderr())
    assert {r["process_name"] for r in n1} == {"n1"}
    assert all(r["pid"] == nodes[0].process.pid for r in n1)
    assert any(r["message"].startswith("node n1 ready") for r in n1)
    # a structured field where there is one: the peer n2 dialled and met
    n2 = json_lines(nodes[1].stderr())
    assert any(r.get("peer") == "n1" for r in n2), [r["message"] for r in n2]
    wait_for(lambda: "out of rotation" in balancer.stderr(), 10, "the balancer to see n1 go")
    lines = json_lines(balancer.stderr())
    assert {r["process_name"] for r in lines} == {"balancer"}
    assert any("out of rotation" in r["message"] and r["level"] == "WARNING" for r in lines)


def test_a_bad_log_format_is_refused(procs):
    from click.testing import CliRunner

    from mesh.cli import main

    result = CliRunner().invoke(
        main, ["node", "--id", "n1", "--data-dir", str(procs.tmp_path), "--log-format", "xml"]
    )
    assert result.exit_code == 2 and "--log-format" in result.output


def test_an_access_log_line_carries_its_status_and_duration(caplog):
    from mesh.roles import http_handlers

    caplog.set_level(logging.DEBUG, logger="mesh.roles.edge.access")
    before = http_handlers.RESPONSES[404]
    http_handlers.log_access(404, lambda: "GET /nope (127.0.0.1)", lambda: 1.25)
    record = caplog.records[-1]
    assert (record.status, record.duration_ms) == (404, 1.25)  # type: ignore[attr-defined]
    assert http_handlers.RESPONSES[404] == before + 1


def fake_node(state: str = "catching-up") -> SimpleNamespace:
    peer = SimpleNamespace(vv={"n2/a": 10_000})
    replica = SimpleNamespace(vv={"n2/a": 0}, peers={"n2": peer})
    return SimpleNamespace(state=state, replica=replica)


def test_a_long_catch_up_logs_progress_every_two_seconds(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(node_metrics.time, "monotonic", lambda: clock[0])
    node = fake_node()
    progress = CatchUpProgress(node)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="mesh.roles.node.catchup")
    logged_at = []
    for step in range(1, 41):  # 10 s in the node's 0.5 s timer steps
        clock[0] += node_metrics.PROGRESS_CHECK_MS / 1000
        node.replica.vv["n2/a"] = min(10_000, step * 300)
        count = len(caplog.records)
        progress.check()
        if len(caplog.records) > count:
            logged_at.append(clock[0])
        if step == 40:
            node.state = "ready"
    progress.check()  # the end: a last line
    lines = [r for r in caplog.records if r.getMessage().startswith("catch-up:")]
    assert len(lines) >= 4
    gaps = [b - a for a, b in zip([1000.0, *logged_at], logged_at, strict=False)]
    assert max(gaps) <= 2.0, gaps
    last = lines[-1]
    assert last.entries > 0 and last.entries_left > 0 and last.rate > 0  # type: ignore[attr-defined]
    assert last.eta_s is not None  # type: ignore[attr-defined]
    assert "ETA" in last.getMessage()
    assert caplog.records[-1].getMessage().startswith("catch-up done: ")
    assert not progress.active


def test_a_short_catch_up_logs_nothing(monkeypatch, caplog):
    clock = [0.0]
    monkeypatch.setattr(node_metrics.time, "monotonic", lambda: clock[0])
    node = fake_node()
    progress = CatchUpProgress(node)  # type: ignore[arg-type]
    caplog.set_level(logging.INFO, logger="mesh.roles.node.catchup")
    progress.check()
    clock[0] += 0.5
    node.replica.vv["n2/a"] = 10_000
    progress.check()
    assert not caplog.records and progress.done == 10_000 and not progress.active


@pytest.mark.skipif(not os.path.exists("/proc"), reason="Linux")
def test_env_var_is_listed_in_help():
    from click.testing import CliRunner

    from mesh.cli import main

    for command in ("node", "balancer", "edge", "up"):
        out = CliRunner().invoke(main, [command, "--help"]).output
        assert "PYCACHE_LOG_FORMAT" in out, command
