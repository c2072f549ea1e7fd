"""Shared by the RESP tests: a real redis-server to compare with, RESP ports of processes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import BalancerProcess, NodeProcess, wait_for

RESP_ANY = ["--resp", "127.0.0.1:*"]


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for redis-server, which cannot take port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    """A real redis-server on an ephemeral loopback port, no persistence; its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server, see .ci/run)")
    for _attempt in range(3):
        port = free_port()
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=port, socket_timeout=1)
            wait_for(client.ping, 10, "redis-server")
            client.close()
            break
        except BaseException:  # pytest.fail included: try another port
            proc.kill()
            proc.wait()
            if _attempt == 2:
                raise
    try:
        yield port
    finally:
        proc.kill()
        proc.wait(10)


def node_resp_port(node: NodeProcess) -> int:
    """The RESP port a node bound (from its node.json)."""
    info = json.loads((node.data_dir / "node.json").read_text())
    return int(info["resp"].rsplit(":", 1)[1])


def balancer_resp_port(balancer: BalancerProcess) -> int:
    """The RESP port a balancer bound (from its status file)."""
    info = json.loads(balancer.status.read_text())
    return int(info["resp"].rsplit(":", 1)[1])


def client(port: int, **kwargs: Any) -> redis.Redis:
    """A redis-py client on 127.0.0.1:port."""
    return redis.Redis(port=port, **{"socket_timeout": 5, **kwargs})


def outcome(conn: redis.Redis, *command: Any) -> Any:
    """A command's reply, or ("error", message) when it failed."""
    try:
        return conn.execute_command(*command)
    except (redis.ResponseError, redis.AuthenticationError) as exc:
        return ("error", str(exc))


def has_op(port: int, op: str) -> bool:
    """Whether the node behind ``port`` knows ``op`` (INCRBY lands with the counters branch)."""
    reply = outcome(client(port), "INCRBY", "__probe__", "0") if op == "INCRBY" else None
    return not (isinstance(reply, tuple) and "unknown op" in reply[1])


def wait_until(condition: Any, timeout: float, what: str) -> None:
    """Poll ``condition`` every 20 ms until true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
