"""RESP through the mesh: replication seen on another node's RESP port, the balancer's
RESP front (a connection reads its own writes; failover with no error), redis-benchmark,
and AUTH / protected mode.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from tests.resp_helpers import (
    RESP_ANY,
    balancer_resp_port,
    client,
    has_op,
    node_resp_port,
    wait_until,
)


def test_replication_is_seen_on_another_nodes_resp_port(procs):
    n1, n2 = procs.cluster(2, extra=RESP_ANY)
    one, two = client(node_resp_port(n1)), client(node_resp_port(n2))
    one.mset({"a": 1, "b": 2})
    one.set("t", "x", ex=100)
    wait_until(lambda: two.mget("a", "b", "t") == [b"1", b"2", b"x"], 10, "the writes on n2")
    assert 0 < two.ttl("t") <= 100
    assert one.getdel("a") == b"1"
    wait_until(lambda: two.exists("a") == 0, 10, "GETDEL on n2")
    one.flushall()
    wait_until(lambda: two.dbsize() == 0, 10, "FLUSHALL on n2")
    assert two.keys("*") == []


def test_two_threads_incr_one_key_on_two_nodes_and_every_node_reads_the_sum(procs):
    """redis-py INCRs on n1 and n2 at once lose no increment once replicated (the
    PN-counter of docs/counters.md, where last-writer-wins would lose some)."""
    nodes = procs.cluster(3, extra=RESP_ANY)
    ports = [node_resp_port(node) for node in nodes]
    errors: list[BaseException] = []

    def incr(port: int) -> None:
        try:
            conn = client(port)
            for _ in range(5000):
                conn.incr("hits")
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=incr, args=(port,)) for port in ports[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors and not any(t.is_alive() for t in threads), errors
    for port in ports:
        conn = client(port)
        wait_until(lambda conn=conn: conn.get("hits") == b"10000", 20, "10000 on every node")


@pytest.fixture
def fronted(procs):
    """Three nodes with RESP, a balancer with RESP in front; (nodes, balancer RESP port)."""
    nodes = procs.cluster(3, extra=RESP_ANY)
    balancer = procs.balancer(nodes, extra=RESP_ANY)
    port = balancer_resp_port(balancer)
    wait_until(lambda: client(port).ping(), 10, "the balancer's RESP front")
    return nodes, port


def test_a_connection_through_the_balancer_reads_its_own_writes(fronted):
    nodes, port = fronted
    conn = client(port)
    for i in range(300):
        conn.set("k", i)
        assert conn.get("k") == str(i).encode()
    conn.mset({f"m{i}": i for i in range(50)})
    conn.flushdb()
    assert conn.dbsize() == 0 and conn.get("k") is None
    pipe = conn.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"p{i}", i).get(f"p{i}")
    assert pipe.execute()[1::2] == [str(i).encode() for i in range(200)]
    # connections are spread over the nodes, each pinned to one
    pins = {client(port).info("server")["pycache_node"].split()[0] for _ in range(9)}
    assert len(pins) >= 2, pins


def _pinned_node(conn: redis.Redis, nodes):
    name = conn.info("server")["pycache_node"].split()[0]
    return next(n for n in nodes if n.node_id == name)


@pytest.mark.parametrize("failure", ["kill", "SIGSTOP"])
def test_failover_under_a_redis_py_load_gives_no_error(fronted, paused, failure):
    """A crashed node (kill -9) or a hung one (SIGSTOP): the connections pinned to it
    move to another ready node, and no command fails."""
    nodes, port = fronted
    conns = [client(port, socket_timeout=10) for _ in range(3)]
    errors: list[str] = []
    done = [0] * len(conns)
    stop = threading.Event()

    def load(index: int) -> None:
        conn, i = conns[index], 0
        try:
            while not stop.is_set():
                i += 1
                conn.set(f"c{index}:{i}", i)
                got = conn.get(f"c{index}:{i}")
                if got != str(i).encode():
                    errors.append(f"conn {index}: read {got!r} after writing {i}")
                done[index] = i
        except Exception as exc:  # the test fails on any error
            errors.append(f"conn {index}: {exc!r}")

    victim = _pinned_node(conns[0], nodes)
    threads = [threading.Thread(target=load, args=(i,)) for i in range(len(conns))]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: min(done) > 50, 10, "the load to run")
        if failure == "kill":
            victim.kill()
        else:
            paused.append(victim)
            victim.signal(signal.SIGSTOP)
        before = list(done)
        wait_until(
            lambda: all(d > b + 100 for d, b in zip(done, before, strict=True)),
            15,
            "load after kill",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    assert not errors, errors[:5]
    assert _pinned_node(conns[0], nodes) is not victim


def test_redis_benchmark_gets_no_error_reply(fronted):
    nodes, port = fronted
    tests = "set,get,mset" + (",incr" if has_op(port, "INCRBY") else "")
    for target in (port, node_resp_port(nodes[0])):
        done = subprocess.run(
            [
                "redis-benchmark",
                "-p",
                str(target),
                "-t",
                tests,
                "-n",
                "3000",
                "-P",
                "8",
                "-c",
                "8",
                "-q",
            ],  # fmt: skip
            capture_output=True,
            text=True,
            timeout=60,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, output
        assert "error" not in output.lower().replace("could not fetch server config", ""), output
        assert output.count("requests per second") == len(tests.split(",")), output


TOKEN = "resp-s3cret"


def test_auth_with_a_token(procs, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# RESP tokens\n{TOKEN}\n")
    node = procs.node(extra=[*RESP_ANY, "--token-file", str(tokens)])
    port = node_resp_port(node)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n")
        assert sock.recv(100) == b"-NOAUTH Authentication required.\r\n"
        sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n")
        assert sock.recv(100).startswith(b"-WRONGPASS")
        sock.sendall(
            b"*3\r\n$4\r\nAUTH\r\n$4\r\nbob!\r\n" + b"$%d\r\n%s\r\n" % (len(TOKEN), TOKEN.encode())
        )
        assert sock.recv(100).startswith(b"-WRONGPASS")  # only the default user
        sock.sendall(b"*2\r\n$4\r\nAUTH\r\n" + b"$%d\r\n%s\r\n" % (len(TOKEN), TOKEN.encode()))
        assert sock.recv(100) == b"+OK\r\n"
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(100) == b"+PONG\r\n"
    conn = client(port, password=TOKEN)
    assert conn.set("k", "v") and conn.get("k") == b"v"
    with pytest.raises(redis.AuthenticationError):
        client(port).get("k")


@pytest.mark.parametrize("role", ["node", "balancer"])
def test_resp_beyond_loopback_needs_a_token(tmp_path, role):
    argv = [sys.executable, "-m", "mesh", role]
    if role == "node":
        argv += ["--id", "n1", "--data-dir", str(tmp_path / "n1"), "--keys", str(tmp_path)]
    else:
        argv += ["--nodes", "tcp://127.0.0.1:1"]
    done = subprocess.run(
        [*argv, "--resp", "0.0.0.0:0"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0
    assert "RESP on 0.0.0.0 listens beyond loopback" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_taken_resp_port_is_one_line(procs, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [sys.executable, "-m", "mesh", "balancer", "--nodes", "tcp://127.0.0.1:1"]
        start = time.monotonic()
        done = subprocess.run(
            [*argv, "--resp", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30
        )
    assert done.returncode != 0 and time.monotonic() - start < 20
    assert f"cannot listen for RESP on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
