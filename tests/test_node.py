"""A real node process, used through the Python clients: ops, durability, restarts."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from mesh.client import AsyncClient, Client
from mesh.core.errors import BadRequest, Timeout, TooLarge
from tests.conftest import wait_for
from tests.killwriter import acked_until_kill

pytestmark = pytest.mark.processes


def test_basic_ops(node):
    with node.client() as c:
        assert c.ping() == "PONG"
        assert c.ping("hi") == b"hi"
        assert c.get("missing") is None
        assert c.set("k", "v") is True
        assert c.get("k") == b"v"
        assert c.set("n", 42) is True and c.get("n") == b"42"
        assert c.ttl("k") == -1 and c.ttl("missing") == -2
        assert c.expire("k", 100) is True
        assert 99 <= c.ttl("k") <= 100 and 99_000 < c.pttl("k") <= 100_000
        assert c.persist("k") is True and c.ttl("k") == -1
        assert c.persist("k") is False
        assert c.expire("missing", 5) is False
        assert c.mset({"a": b"1", "b": "2"}) is True
        assert c.mget("a", "b", "missing") == [b"1", b"2", None]
        assert c.mget(["a"]) == [b"1"]
        assert c.delete("a", "b", "missing") == 2
        assert c.get("a") is None
        stats = c.stats()
        assert stats["state"] == "ready" and stats["keys"] == 2 and stats["node_id"] == "n1"


def test_nx_and_xx(node):
    with node.client() as c:
        assert c.set("k", "1", xx=True) is False and c.get("k") is None
        assert c.set("k", "1", nx=True) is True
        assert c.set("k", "2", nx=True) is False and c.get("k") == b"1"
        assert c.set("k", "3", xx=True) is True and c.get("k") == b"3"


def test_ttl_expires(node):
    with node.client() as c:
        c.set("short", "x", px=150)
        assert c.get("short") == b"x"
        wait_for(lambda: c.get("short") is None, 5, "the key to expire")
        wait_for(lambda: c.stats()["expired"] >= 1, 5, "expired to be counted")


def test_errors_are_typed_and_the_node_keeps_serving(node):
    with node.client() as c:
        with pytest.raises(BadRequest):
            c.get("")
        with pytest.raises(BadRequest):
            c.get("k" * 513)
        with pytest.raises(TooLarge):
            c.set("big", b"x" * (8 * 1024 * 1024 + 1))
        assert c.set("big", b"x" * (8 * 1024 * 1024)) is True
        assert len(c.get("big")) == 8 * 1024 * 1024
        assert c.stats()["bad_requests"] == 3


def test_pipeline_keeps_many_requests_in_flight(node):
    with node.client() as c:
        with c.pipeline() as pipe:
            for i in range(2000):
                pipe.set(f"k{i}", i)
            pipe.get("k1999").ttl("k0").get("").mget("k0", "k1")
            results = pipe.execute(raise_on_error=False)
        assert results[:2000] == [True] * 2000
        assert results[2000:2002] == [b"1999", -1]
        assert isinstance(results[2002], BadRequest)
        assert results[2003] == [b"0", b"1"]
        assert c.stats()["keys"] == 2000


def test_async_client_pipelines_concurrent_calls(node):
    async def scenario():
        async with AsyncClient(node.endpoint, timeout=5) as c:
            assert await c.set("a", "1") is True
            results = await asyncio.gather(*(c.set(f"k{i}", str(i)) for i in range(500)))
            assert results == [True] * 500
            values = await asyncio.gather(*(c.get(f"k{i}") for i in range(500)))
            assert values == [str(i).encode() for i in range(500)]
            assert await c.ttl("a") == -1
            with pytest.raises(BadRequest):
                await c.get("")

    asyncio.run(scenario())


def test_paused_node_gives_a_timeout_not_a_hang(node):
    with node.client(timeout=0.3) as c:
        c.set("k", "v")
        node.signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(Timeout):
                c.get("k")
            assert time.monotonic() - started < 2
        finally:
            node.signal(signal.SIGCONT)
        assert c.get("k") == b"v"  # the late reply to the timed-out call is ignored


def test_no_node_at_all_times_out(tmp_path):
    with Client("tcp://127.0.0.1:1", timeout=0.2) as c, pytest.raises(Timeout):
        c.get("k")


def test_async_client_times_out_without_a_node_and_on_a_paused_one(node):
    async def nobody() -> None:
        async with AsyncClient("tcp://127.0.0.1:1", timeout=0.2) as c:
            started = time.monotonic()
            results = await asyncio.gather(*(c.get("k") for _ in range(3)), return_exceptions=True)
            assert all(isinstance(r, Timeout) for r in results), results
            assert time.monotonic() - started < 2

    async def paused() -> None:
        async with AsyncClient(node.endpoint, timeout=0.3) as c:
            assert await c.set("k", "v") is True
            node.signal(signal.SIGSTOP)
            try:
                results = await asyncio.gather(
                    *(c.get("k") for _ in range(100)), return_exceptions=True
                )
                assert all(isinstance(r, Timeout) for r in results), results
            finally:
                node.signal(signal.SIGCONT)
            # the late replies to the timed-out calls are ignored; new calls work
            assert await asyncio.gather(*(c.get("k") for _ in range(100))) == [b"v"] * 100

    asyncio.run(nobody())
    asyncio.run(paused())


def test_sigterm_flushes_and_exits_zero_and_data_survives(procs):
    n = procs.node(extra=["--fsync", "interval", "--fsync-interval-ms", "5000"])
    with n.client() as c:
        c.mset({f"k{i}": str(i) for i in range(100)})
        c.set("ttl", "x", ttl=3600)
        c.delete("k0")
    assert n.stop() == 0
    n.start()
    with n.client() as c:
        assert c.get("k0") is None
        assert c.mget([f"k{i}" for i in range(1, 100)]) == [str(i).encode() for i in range(1, 100)]
        assert 3500 < c.ttl("ttl") <= 3600
    assert "recovered" in n.stderr()


def test_kill_9_loses_no_acknowledged_write(procs):
    """A writer streams SETs; the node is SIGKILLed mid-stream; every acked write is there."""
    n = procs.node()
    acked = acked_until_kill(n, WRITER, 300)
    assert len(acked) >= 300
    n.start()
    with n.client() as c:
        values = c.mget([f"key{i}" for i in acked])
        assert values == [f"value{i}".encode() for i in acked]
        stats = c.stats()
    assert stats["seq"] >= len(acked)


WRITER = """
import sys
from mesh.client import Client
from mesh.core.errors import PyCacheError
with Client(sys.argv[1], timeout=1) as c:
    i = 0
    while True:
        try:
            with c.pipeline() as p:
                for j in range(i, i + 10):
                    p.set(f"key{j}", f"value{j}")
                p.execute()
        except PyCacheError:
            break
        for j in range(i, i + 10):
            print(j, flush=True)
        i += 10
"""


def test_restart_resumes_seq_and_clock(procs):
    n = procs.node()
    with n.client() as c:
        for i in range(50):
            c.set("k", str(i))
        seq = c.stats()["seq"]
    n.kill()
    n.start()
    with n.client() as c:
        assert c.get("k") == b"49"
        c.set("k", "after")
        assert c.stats()["seq"] == seq + 1
        assert c.get("k") == b"after"


def test_a_second_node_on_the_same_data_folder_is_refused(node):
    second = subprocess.run(
        [
            sys.executable,
            "-m",
            "mesh",
            "node",
            "--id",
            "n1",
            "--data-dir",
            str(node.data_dir),
            "--api",
            "tcp://127.0.0.1:*",
            "--keys",
            str(node.keys),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == 2
    assert "in use by another process" in second.stderr
    with node.client() as c:
        assert c.ping() == "PONG"


def test_get_meta_and_health(node):
    with node.client() as c:
        assert c.health() == {"node_id": "n1", "state": "ready", "bundle_bytes": 8 * 2**20 + 2**16}
        (me,) = c.cluster()["nodes"]
        assert me["node_id"] == "n1" and me["state"] == "ready" and me["keys"] == 0
        assert c.get_meta("missing") is None
        before = int(time.time() * 1000)
        c.set("k", "v", ttl=60)
        value, ttl_ms, updated_ms = c.get_meta("k")
        assert value == b"v" and 59_000 < ttl_ms <= 60_000
        assert before - 5 <= updated_ms <= int(time.time() * 1000) + 5
        c.set("forever", "x")
        assert c.get_meta("forever")[1] == -1
