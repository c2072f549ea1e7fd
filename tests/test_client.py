"""The Python client (issue 18, point 3): threads, fork, URLs, str replies, error classes."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import sys
import threading
import time

import pytest

from mesh.client import AsyncClient, Client, ConnectionFailed, NotInteger, Timeout
from mesh.core.errors import ConfigError, DeadlinePassed, PyCacheError, ServerError
from mesh.roles.clientsock import parse_url


def test_eight_threads_share_one_client(node):
    """The acceptance line: 8 threads x 200 set+get on one Client, no error."""
    errors: list[BaseException] = []
    with node.client(timeout=10.0) as client:

        def work(t: int) -> None:
            try:
                for i in range(200):
                    assert client.set(f"t{t}:{i}", f"v{t}:{i}") is True
                    assert client.get(f"t{t}:{i}") == f"v{t}:{i}".encode()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)
        assert client.get("t7:199") == b"v7:199"


def _in_child(client: Client) -> int:
    """What a forked child does with the client it inherited; its exit code."""
    try:
        client.set("from-child", str(os.getpid()))
        ok = client.get("from-child") == str(os.getpid()).encode()
        client.close()
        return 0 if ok else 3
    except PyCacheError:
        return 4


@pytest.mark.skipif(sys.platform == "win32", reason="no fork")
def test_a_forked_child_gets_its_own_socket_at_once(node):
    with node.client(timeout=5.0) as client:
        assert client.set("before", "fork") is True  # the parent's socket is in use
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child: never return into pytest
            code = 5
            try:
                code = _in_child(client)
            finally:
                os._exit(code)
        status = _wait(pid, 10.0)
        assert time.monotonic() - start < 2.0
        assert os.waitstatus_to_exitcode(status) == 0
        assert client.get("from-child") == str(pid).encode()  # the parent's still works
        assert client.get("before") == b"fork"


def _wait(pid: int, timeout: float) -> int:
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, 9)
        return os.waitpid(pid, 0)[1]
    finally:
        os.close(fd)


def test_from_url_and_decode_responses(node):
    port = node.endpoint.rsplit(":", 1)[1]
    with Client.from_url(f"pycache://127.0.0.1:{port}?timeout=2.5&decode_responses=1") as c:
        assert c.timeout == 2.5 and c.endpoints == [f"tcp://127.0.0.1:{port}"]
        c.set("k", "välue")
        c.set("n", 7)
        assert c.get("k") == "välue"
        assert c.mget("k", "missing", "n") == ["välue", None, "7"]
        assert c.incr("n", 3) == 10 and c.get("n") == "10"
        with c.pipeline() as pipe:
            assert pipe.get("k").ping("hi").execute() == ["välue", "hi"]
        assert c.get_meta("k")[0] == "välue"
    with Client.from_url(f"tcp://127.0.0.1:{port}", timeout=1.0) as c:
        assert c.timeout == 1.0 and c.get("k") == "välue".encode()


def test_the_async_client_has_the_same_options(node):
    port = node.endpoint.rsplit(":", 1)[1]

    async def run() -> list:
        async with AsyncClient.from_url(f"pycache://127.0.0.1:{port}?decode_responses=yes") as c:
            await c.set("a", "x")
            return await asyncio.gather(c.get("a"), c.incr("ac"), c.decr("ac", 5))

    got = asyncio.run(run())
    assert got[0] == "x" and sorted(got[1:]) == [-4, 1]


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1",
        "pycache://",
        "pycache://127.0.0.1",
        "pycache://127.0.0.1:0",
        "pycache://127.0.0.1:99999",
        "pycache://127.0.0.1:1/db",
        "pycache://127.0.0.1:1?timeout=soon",
        "pycache://127.0.0.1:1?timeout=0",
        "pycache://127.0.0.1:1?decode_responses=maybe",
        "pycache://127.0.0.1:1?frobnicate=1",
    ],
)
def test_a_bad_url_is_one_clear_error(url):
    with pytest.raises(ConfigError) as info:
        Client.from_url(url)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


def test_url_lists_several_endpoints():
    endpoints, options = parse_url("pycache://a:1,b:2?timeout=0.5&server_key=s.key")
    assert endpoints == ["tcp://a:1", "tcp://b:2"]
    assert options == {"timeout": 0.5, "server_key": "s.key"}


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_errors_are_typed_and_built_in_where_they_mean_that():
    assert issubclass(Timeout, TimeoutError) and issubclass(Timeout, PyCacheError)
    assert issubclass(ConnectionFailed, ConnectionError)
    assert issubclass(DeadlinePassed, TimeoutError) and issubclass(DeadlinePassed, ServerError)
    assert issubclass(NotInteger, ServerError) and not issubclass(NotInteger, OSError)
    client = Client(f"tcp://127.0.0.1:{_unused_port()}", timeout=0.3)  # nobody listens
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        client.get("k")
    assert time.monotonic() - start < 2.0
    client.close()
    with pytest.raises(ConnectionError):
        client.get("k")


def test_a_thread_that_ended_leaves_no_socket_behind(node):
    with node.client() as client:
        for _ in range(5):
            t = threading.Thread(target=client.ping)
            t.start()
            t.join(10)
        client.ping()
        assert len(client._pool._socks) <= 2  # the ended threads' were closed


@pytest.mark.skipif(sys.platform == "win32", reason="no fork")
def test_an_async_client_used_after_fork_fails_at_once(node):
    client = AsyncClient(node.endpoint, timeout=5.0)
    asyncio.run(client.ping())
    pid = os.fork()
    if pid == 0:  # the child: a clear error at once, never a hang
        code = 5
        try:
            asyncio.run(client.get("k"))
            code = 3
        except ConnectionFailed:
            code = 0
        finally:
            os._exit(code)
    start = time.monotonic()
    assert os.waitstatus_to_exitcode(_wait(pid, 10.0)) == 0
    assert time.monotonic() - start < 2.0
    asyncio.run(client.close())
