"""A misconfigured process ends at once with one line (issue 16, point 4).

A port already taken (the api, repl, pub or HTTP port of a node, a balancer's
front, an edge's port, any port of ``pycache up``) and a bad ``--log-level``
each end the process with exit code 2 and one stderr line naming what is
wrong: no traceback, no hang.  Every process is started by the launcher and
tracked by ``procs`` (which fails the test on a Traceback).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mesh.cli.exits import EXIT_ERROR
from mesh.roles.launcher import ChildProcess, mesh_argv
from tests.conftest import NodeProcess, Processes, wait_for

pytestmark = pytest.mark.processes

NO_BACKEND = "tcp://127.0.0.1:1"


@dataclass
class Exited:
    """A finished child: its exit code, how long it ran, its stderr."""

    child: ChildProcess
    code: int
    seconds: float
    stderr: str

    def lines_naming(self, what: str) -> list[str]:
        return [line for line in self.stderr.splitlines() if what in line]


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port held by a listening socket for the whole test."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (bound to port 0, read, closed)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_to_exit(procs: Processes, name: str, args: list[str], limit: float) -> Exited:
    """Start ``python -m mesh <args>`` and wait (a little past ``limit``) for its exit."""
    child = ChildProcess(name, log_path=procs.tmp_path / f"{name}.stderr.log")
    procs.track(Exited(child, 0, 0.0, ""))
    started = time.monotonic()
    child.start(mesh_argv(*args))
    wait_for(
        lambda: child.poll() is not None,
        limit + 5,
        f"{name} to exit",
        describe=child.stderr_tail,
    )
    code = child.poll()
    assert code is not None
    return Exited(child, code, time.monotonic() - started, child.stderr())


def node_args(procs: Processes, *extra: str, keys: bool = False) -> list[str]:
    base = ["node", "--id", "n1", "--data-dir", str(procs.tmp_path / "n1")]
    security = ["--keys", str(procs.member_keys("n1"))] if keys else ["--insecure"]
    return [*base, *security, *extra]


def assert_one_line(exited: Exited, what: str, limit: float) -> None:
    """Exit 2 within ``limit`` s with one ``error:`` line naming ``what``, no traceback."""
    assert "Traceback" not in exited.stderr, exited.stderr
    assert exited.code == EXIT_ERROR, exited.stderr
    assert exited.seconds <= limit, f"{exited.seconds:.1f} s: {exited.stderr}"
    named = exited.lines_naming(what)
    assert len(named) == 1 and named[0].startswith("error: "), exited.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("flag", ["--api", "--repl", "--pub"])
@pytest.mark.parametrize("keys", [False, True], ids=["insecure", "keys"])
def test_a_node_whose_zmq_port_is_taken_exits_2_with_one_line(procs, taken, flag, keys):
    address = f"tcp://127.0.0.1:{taken}"
    exited = run_to_exit(procs, "node", node_args(procs, flag, address, keys=keys), 3)
    assert_one_line(exited, address, 3)
    assert exited.lines_naming(address)[0].endswith(f"{flag[2:]} {address}: address already in use")


@pytest.mark.timeout(60)
def test_a_node_whose_http_port_is_taken_names_it(procs, taken):
    exited = run_to_exit(procs, "node", node_args(procs, "--http-port", str(taken)), 3)
    assert_one_line(exited, f"127.0.0.1:{taken}", 3)
    assert "address already in use" in exited.lines_naming(f"127.0.0.1:{taken}")[0]


@pytest.mark.timeout(60)
def test_a_balancer_whose_front_is_taken_exits_2_with_one_line(procs, taken):
    address = f"tcp://127.0.0.1:{taken}"
    args = ["balancer", "--nodes", NO_BACKEND, "--insecure", "--front", address]
    assert_one_line(run_to_exit(procs, "balancer", args, 3), address, 3)


@pytest.mark.timeout(60)
def test_an_edge_whose_port_is_taken_names_it(procs, taken):
    args = ["edge", "--backend", NO_BACKEND, "--insecure", "--port", str(taken)]
    assert_one_line(run_to_exit(procs, "edge", args, 3), f"127.0.0.1:{taken}", 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["node", "balancer", "edge"])
def test_a_bad_log_level_is_one_line(procs, role):
    args = {
        "node": node_args(procs),
        "balancer": ["balancer", "--nodes", NO_BACKEND, "--front", "tcp://127.0.0.1:*"],
        "edge": ["edge", "--backend", NO_BACKEND, "--port", "0"],
    }[role]
    exited = run_to_exit(procs, role, [*args, "--log-level", "LOUD"], 3)
    assert "Traceback" not in exited.stderr and exited.code == EXIT_ERROR, exited.stderr
    assert len(exited.lines_naming("LOUD")) == 1, exited.stderr
    assert "--log-level" in exited.lines_naming("LOUD")[0]


def test_log_level_is_case_insensitive(tmp_path: Path):
    from click.testing import CliRunner

    from mesh.cli import main

    result = CliRunner().invoke(main, ["node", "--id", "bad id!", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    for level in ("debug", "Warning", "ERROR"):
        args = ["node", "--id", "bad id!", "--data-dir", str(tmp_path), "--log-level", level]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and "node_id" in result.output, result.output


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["api", "balancer", "edge"])
def test_up_with_a_taken_port_fails_fast_naming_it(procs, taken, kind):
    """``pycache up`` stops what it started and ends with one line: the child and the address."""
    kinds = ["api", "repl", "pub", "http", "balancer", "edge", "balancer-metrics", "resp"]
    kinds.append("balancer-resp")
    ports = dict(zip(kinds, free_ports(len(kinds)), strict=True))
    ports[kind] = taken
    args = ["up", "--nodes", "1", "--data-dir", str(procs.tmp_path / "cluster")]
    for name, port in ports.items():
        args += [f"--{name}-port", str(port)]
    exited = run_to_exit(procs, "up", args, 10)
    assert "Traceback" not in exited.stderr, exited.stderr
    assert exited.code == EXIT_ERROR, exited.stderr
    assert exited.seconds <= 10, f"{exited.seconds:.1f} s: {exited.stderr}"
    last = exited.stderr.strip().splitlines()[-1]
    child = {"api": "node n1", "balancer": "balancer", "edge": "edge"}[kind]
    assert last.startswith(f"error: {child} exited with code 2"), exited.stderr
    assert f"127.0.0.1:{taken}: address already in use" in last, exited.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("role", ["node", "edge"])
def test_a_bad_event_loop_choice_is_one_line(procs, monkeypatch, role):
    monkeypatch.setenv("PYCACHE_EVENT_LOOP", "tokio")  # inherited by the child
    args = {
        "node": node_args(procs),
        "edge": ["edge", "--backend", NO_BACKEND, "--insecure", "--port", "0"],
    }[role]
    assert_one_line(run_to_exit(procs, role, args, 3), "PYCACHE_EVENT_LOOP", 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["missing-dir", "a-dir"])
def test_a_balancer_status_file_it_cannot_write_is_one_line(procs, where):
    path = procs.tmp_path / "no" / "b.json" if where == "missing-dir" else procs.tmp_path
    args = ["balancer", "--nodes", NO_BACKEND, "--insecure", "--front", "tcp://127.0.0.1:*"]
    exited = run_to_exit(procs, "balancer", [*args, "--status-file", str(path)], 3)
    assert_one_line(exited, "--status-file", 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "text",
    [
        '{"peers": []}',
        "null",
        "5",
        '{"peers": 5}',
        '{"peers": {"n2": {}}}',
        '{"peers": {"n2": {"repl": 5, "pub": null}}}',
        '{"peers": {"n2": {"repl": "tcp://127.0.0.1:99999", "pub": "ipc:///tmp/x"}}}',
    ],
)
def test_a_peers_file_of_the_wrong_shape_is_ignored_with_a_warning(procs, text):
    """peers.json is the node's own cache of its peers' endpoints: a damaged one is
    logged and ignored (the configured peers and HELLO rebuild it), not a traceback."""
    (procs.tmp_path / "n1").mkdir()
    (procs.tmp_path / "n1" / "peers.json").write_text(text)
    node = procs.node("n1")  # waits for ready
    with node.client() as client:
        assert client.ping()
    assert "Traceback" not in node.log_path.read_text()
    assert "peers.json" in node.log_path.read_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args, named",
    [
        (["--api", "tcp://127.0.0.1:87537"], "tcp://127.0.0.1:87537"),  # libzmq wrapped it
        (["--w", "²"], "²"),  # a digit to str.isdigit, not to int()
        (["--pub", "ipc:///tmp/x"], "ipc:///tmp/x"),  # peers refused its HELLO
        (["--repl", "inproc://x"], "inproc://x"),
    ],
)
def test_a_node_flag_out_of_range_is_one_line(procs, args, named):
    assert_one_line(run_to_exit(procs, "node", node_args(procs, *args), 3), named, 3)


@pytest.mark.timeout(60)
def test_the_http_host_environment_variable_is_read(procs, monkeypatch):
    """It was read as PYCACHE_HTTP-HOST: PYCACHE_HTTP_HOST, as docs/api.md names it,
    was ignored silently, and the API stayed on loopback."""
    monkeypatch.setenv("PYCACHE_HTTP_HOST", "0.0.0.0")
    exited = run_to_exit(procs, "node", node_args(procs, "--http-port", "*", keys=True), 3)
    assert_one_line(exited, "0.0.0.0", 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
@pytest.mark.parametrize("command", ["get", "up"])
def test_a_number_of_seconds_that_is_none_is_refused(procs, command, value):
    args = {
        "get": ["get", "k", "--connect", "tcp://127.0.0.1:1", "--timeout", value],
        "up": ["up", "--data-dir", str(procs.tmp_path / "up"), "--ready-timeout", value],
    }[command]
    exited = run_to_exit(procs, command, args, 3)
    assert "Traceback" not in exited.stderr and exited.code == EXIT_ERROR, exited.stderr
    assert "is not a number of seconds" in exited.stderr
    assert not (procs.tmp_path / "up").exists()


@pytest.mark.timeout(60)
def test_two_nodes_with_one_id_say_so(procs):
    """Two nodes given the same --id (each with its own folder) both ran and ignored each
    other's writes without a word: each took the other's HELLO for its own."""
    first = procs.node("n1")
    twin = NodeProcess(procs.tmp_path / "twin", "n1", None, procs.member_keys("n1"))
    twin.peers = [first.repl]
    procs.nodes.append(twin)
    twin.start()
    wait_for(
        lambda: "two nodes share an id" in first.log_path.read_text() + twin.log_path.read_text(),
        10,
        "a node to log that two nodes share its id",
    )


@pytest.mark.timeout(60)
def test_a_malformed_incarnation_is_one_line(procs):
    """Peers refuse every message under an origin they cannot parse: the node went
    ready and its writes reached no one."""
    folder = procs.tmp_path / "n1"
    folder.mkdir()
    identity = {"node_id": "n1", "incarnation": "bad inc!", "created_ms": 1}
    (folder / "identity.json").write_text(json.dumps(identity))
    exited = run_to_exit(procs, "node", node_args(procs), 3)
    assert_one_line(exited, "malformed incarnation", 3)


@pytest.mark.timeout(60)
def test_a_secret_key_that_is_not_the_members_key_is_one_line(procs):
    """Its peers refused its HELLO, and the node stayed catching-up for ever."""
    keys = procs.member_keys("n1", "n2")
    (keys / "secrets" / "n1.key_secret").write_bytes(
        (keys / "secrets" / "n2.key_secret").read_bytes()
    )
    exited = run_to_exit(procs, "node", node_args(procs, keys=True), 3)
    assert_one_line(exited, "is not the secret of", 3)


@pytest.mark.timeout(60)
def test_keygen_into_an_empty_folder_name_is_refused(procs, monkeypatch):
    """``--keys ''`` wrote the keys into the current folder."""
    monkeypatch.chdir(procs.tmp_path)
    exited = run_to_exit(procs, "keygen", ["keygen", "--keys", "", "n1"], 3)
    assert exited.code == EXIT_ERROR and "name a folder" in exited.stderr, exited.stderr
    assert not list(procs.tmp_path.glob("*.key*"))


@pytest.mark.timeout(60)
def test_a_data_folder_that_is_a_file_says_so(procs):
    """It said only ``[Errno 17] File exists``."""
    (procs.tmp_path / "n1").write_text("not a folder")
    exited = run_to_exit(procs, "node", node_args(procs), 3)
    assert_one_line(exited, "a file is in the way", 3)


@pytest.mark.timeout(60)
def test_up_checks_its_port_flags_before_it_starts_anything(procs):
    """``--edge-port 70000`` started the nodes and the balancer first, then failed."""
    args = ["up", "--data-dir", str(procs.tmp_path / "up"), "--edge-port", "70000"]
    exited = run_to_exit(procs, "up", args, 3)
    assert exited.code == EXIT_ERROR and "70000" in exited.stderr, exited.stderr
    assert not (procs.tmp_path / "up").exists()


@pytest.mark.timeout(60)
def test_a_secret_key_others_can_read_is_warned_about(procs):
    keys = procs.member_keys("n1")
    (keys / "secrets" / "n1.key_secret").chmod(0o644)
    node = procs.node("n1")
    assert "can be read by any user (mode 644)" in node.log_path.read_text()
