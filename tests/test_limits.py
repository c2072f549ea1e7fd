"""File descriptors and slow clients (issue 16, point 5): the HTTP doors stay up.

Real processes started under a low open-file limit (``with_nofile``: the child
sets its own limits, then execs ``python -m mesh``):

- every role raises its soft limit toward the hard one at start;
- 1,100 idle TCP connections held against a door whose hard limit is 1024 do
  not stop a new request (the cap on connections closes the oldest idle ones
  to make room; the door never spins on EMFILE), and its stderr stays small;
- an idle keep-alive connection, a request whose headers never end, one whose
  headers drip a byte at a time, and a body that stops are closed after their
  timeouts (set short by flag here).

Plus the log filter that lets a repeated line through once per interval.
"""

from __future__ import annotations

import json
import logging
import resource
import select
import socket
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import NodeProcess, Processes, failing_the_test
from tests.test_edge import EdgeProcess, call

IDLE_CONNECTIONS = 1100
LOW_LIMIT = 1024


def with_nofile(soft: int, hard: int, argv: list[str]) -> list[str]:
    """``argv`` run under RLIMIT_NOFILE ``(soft, hard)``: a wrapper sets them, then execs."""
    assert argv[0] == sys.executable and argv[1:3] == ["-m", "mesh"]
    code = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    return [sys.executable, "-c", code, *argv[1:]]


def nofile_limits(pid: int) -> tuple[int, int]:
    """The soft and hard open-file limits of process ``pid`` (``/proc/<pid>/limits``)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError(f"no 'Max open files' line for {pid}")


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This process may hold a few thousand sockets for the test (soft limit raised, restored)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = IDLE_CONNECTIONS + 500
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"the hard open-file limit {hard} is below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_node(procs: Processes, soft: int, hard: int, extra: list[str]) -> NodeProcess:
    """A node serving HTTP on an OS-picked port, under the given open-file limits."""
    node = procs.node("n1", extra=["--http-port", "*", *extra], start=False)
    node.child.start(with_nofile(soft, hard, node.argv))
    node.wait_ready()
    return node


def node_http(node: NodeProcess) -> str:
    return json.loads((node.data_dir / "node.json").read_text())["http"]


def start_edge(
    procs: Processes, backend: str, soft: int, hard: int, extra: list[str]
) -> EdgeProcess:
    proc = EdgeProcess(procs.tmp_path / "edge", backend, extra)
    proc.argv = with_nofile(soft, hard, proc.argv)
    procs.track(proc)
    return proc.start()


def door_url(procs: Processes, kind: str, soft: int, hard: int, flags: list[str]) -> str:
    """The URL of an HTTP door started with ``flags`` (given as the edge's; a node's
    HTTP flags are the same with ``--http-`` in front)."""
    if kind == "node-http":
        node_flags = [f.replace("--", "--http-", 1) if f.startswith("--") else f for f in flags]
        return node_http(start_node(procs, soft, hard, node_flags))
    node = procs.node("n1")
    return start_edge(procs, node.endpoint, soft, hard, flags).url


def address(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


def closed_within(sock: socket.socket, timeout: float) -> bool:
    """True once the peer closes ``sock`` (EOF or reset) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([sock], [], [], left)[0]:
            try:
                if sock.recv(65536) == b"":
                    return True
            except ConnectionResetError:
                return True
    return False


# --------------------------------------------------------------------------- the limit


@pytest.mark.processes
def test_every_role_raises_its_soft_open_file_limit_at_start(procs):
    node = start_node(procs, LOW_LIMIT, 4096, [])
    balancer = procs.balancer([node], name="balancer")
    balancer.child.kill()  # started by the fixture without limits: restart it under them
    balancer.child.start(with_nofile(LOW_LIMIT, 4096, balancer.child.process.args))  # type: ignore[union-attr]
    with failing_the_test():
        balancer.child.wait_status(lambda i: "front" in i, 15)
    edge = start_edge(procs, node.endpoint, LOW_LIMIT, 4096, [])
    for child in (node.child, balancer.child, edge.child):
        assert nofile_limits(child.pid) == (4096, 4096), child.name
        assert "open files" in child.stderr() and "4096" in child.stderr(), child.stderr()


# --------------------------------------------------------------------------- many connections


@pytest.mark.processes
@pytest.mark.parametrize("kind", ["node-http", "edge"])
def test_held_idle_connections_leave_room_for_a_new_request(procs, many_fds, kind):
    url = door_url(procs, kind, LOW_LIMIT, LOW_LIMIT, [])  # hard 1024: cannot be raised
    host, port = address(url)
    held: list[socket.socket] = []
    try:
        for i in range(IDLE_CONNECTIONS):
            if i % 50 == 0:
                time.sleep(0.03)  # the accept queue holds 128: let the door take them
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((host, port))  # EINPROGRESS: the kernel completes it
            held.append(sock)
        time.sleep(0.5)  # the door accepts them (or runs out of files trying)
        started = time.monotonic()
        answer = call(url, "GET", "/api/health/", timeout=5.0)
        took = time.monotonic() - started
        assert answer.status == 200 and took < 5.0
        # and again: the door keeps serving while they are held
        assert call(url, "POST", "/api/cache/k/", b'"v"', timeout=5.0).status == 201
    finally:
        for sock in held:
            sock.close()
    log = procs.tmp_path / ("n1.stderr.log" if kind == "node-http" else "edge/edge.stderr.log")
    size = log.stat().st_size
    assert size < 20_000, log.read_text()[-3000:]
    assert "Too many open files" not in log.read_text()


@pytest.mark.processes
def test_over_the_cap_the_oldest_idle_connection_makes_room(procs):
    node = procs.node("n1")
    url = start_edge(procs, node.endpoint, LOW_LIMIT, LOW_LIMIT, ["--max-connections", "3"]).url
    with (
        socket.create_connection(address(url)) as first,
        socket.create_connection(address(url)) as second,
        socket.create_connection(address(url)) as third,
    ):
        time.sleep(0.2)
        assert call(url, "GET", "/api/health/", timeout=5.0).status == 200
        assert closed_within(first, 2.0)
        assert not closed_within(third, 0.1)
        del second


@pytest.mark.processes
def test_a_cap_above_the_open_file_limit_is_lowered_with_a_warning(procs):
    node = procs.node("n1")
    edge = start_edge(procs, node.endpoint, LOW_LIMIT, LOW_LIMIT, ["--max-connections", "5000"])
    assert call(edge.url, "GET", "/api/health/", timeout=5.0).status == 200
    assert "max-connections 5000 lowered to" in edge.child.stderr()


# --------------------------------------------------------------------------- timeouts


@pytest.mark.processes
@pytest.mark.parametrize("kind", ["node-http", "edge"])
def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(procs, kind):
    url = door_url(procs, kind, LOW_LIMIT, 4096, ["--idle-timeout", "1"])
    with socket.create_connection(address(url)) as sock:
        sock.sendall(b"GET /api/health/ HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        assert b"200 OK" in sock.recv(65536)
        started = time.monotonic()
        assert closed_within(sock, 3.0)
        assert 0.7 < time.monotonic() - started < 2.5


@pytest.mark.processes
def test_headers_that_never_end_are_closed_after_the_idle_timeout(procs):
    node = procs.node("n1")
    url = start_edge(procs, node.endpoint, LOW_LIMIT, 4096, ["--idle-timeout", "1"]).url
    with (
        socket.create_connection(address(url)) as stalled,
        socket.create_connection(address(url)) as dripping,
    ):
        started = time.monotonic()
        stalled.sendall(b"GET /api/health/ HTTP/1.1\r\nHost: x\r\n")
        dripping.sendall(b"GET /api/health/ HTTP/1.1\r\n")
        for _ in range(8):  # a header byte every 0.25 s: never a whole header block
            try:
                dripping.sendall(b"X")
            except (BrokenPipeError, ConnectionResetError):
                break
            if closed_within(dripping, 0.25):
                break
        else:
            pytest.fail("the dripping connection was still open after 2 s")
        assert time.monotonic() - started < 2.5
        assert closed_within(stalled, 1.0)


@pytest.mark.processes
def test_a_body_that_stops_is_closed_after_the_body_timeout(procs):
    node = procs.node("n1")
    url = start_edge(procs, node.endpoint, LOW_LIMIT, 4096, ["--body-timeout", "1"]).url
    with socket.create_connection(address(url)) as sock:
        started = time.monotonic()
        sock.sendall(b'POST /api/cache/k/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"v')
        assert closed_within(sock, 3.0)
        assert time.monotonic() - started < 2.5


# --------------------------------------------------------------------------- repeated log lines


def test_a_repeated_log_line_passes_once_per_interval_with_a_count():
    from mesh.roles.tuning import RepeatFilter

    now = [100.0]
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    handler.addFilter(RepeatFilter(interval=10.0, clock=lambda: now[0]))
    logger = logging.getLogger("test_limits.repeats")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        for _ in range(1000):
            logger.error("accept failed: %s", "Too many open files")
        logger.error("another error")
        logger.info("info lines are never held back")
        logger.info("info lines are never held back")
        now[0] += 10.5
        logger.error("accept failed: %s", "Too many open files")
    finally:
        logger.removeHandler(handler)
    assert seen == [
        "accept failed: Too many open files",
        "another error",
        "info lines are never held back",
        "info lines are never held back",
        "accept failed: Too many open files (999 more like it suppressed in the last 10 s)",
    ]


def test_the_heap_is_trimmed_once_the_keys_moved_by_half() -> None:
    from mesh.roles.tuning import HeapTrim

    trims: list[int] = []
    heap = HeapTrim()
    heap._trim = trims.append  # the call, not glibc's work, is what is checked here
    moves = [heap.after_growth(keys) for keys in (0, 1_500, 1_536, 2_000, 2_304, 1_200, 1_100)]
    assert moves == [True, False, True, False, True, False, True]  # up by half, or down by half
    assert trims == [0, 0, 0, 0]
