"""The HTTP edge (mesh/roles/edge.py): the seed's REST API on both HTTP doors.

Three layers:

- the pure value, TTL and time helpers, and ``EdgeConfig.validate``;
- the Tornado app in this process against a scripted ZeroMQ backend, for the
  error mapping that real nodes rarely produce (NOT_READY, INTERNAL, silence);
- real processes: a node serving HTTP itself (``pycache node --http-port '*'``)
  and a ``pycache edge`` in front of a node or a balancer; the seed contract
  runs against both doors.  A fake peer that holds its catch-up replies keeps a
  node catching up for as long as a test needs.

Every process is tracked and killed at teardown; waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.simple_httpclient
import zmq
import zmq.asyncio
from click.testing import CliRunner

from mesh.cli import main
from mesh.client import Client
from mesh.core import peerwire, wire
from mesh.core.catchup import Batch
from mesh.core.errors import ConfigError
from mesh.core.limits import Limits
from mesh.roles import cacheapi, edge
from mesh.roles.config import EdgeConfig
from mesh.roles.launcher import ChildProcess, mesh_argv
from tests.conftest import NodeProcess, Processes, failing_the_test, wait_for

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MIB = 1024 * 1024
NODE_BODY_LIMIT = 8 * MIB + 64 * 1024  # a node's request limit: its HTTP body limit


# --------------------------------------------------------------------------- HTTP helpers


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


def call(
    url: str,
    method: str,
    path: str,
    body: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Response:
    """One request on a fresh connection; the body must be JSON."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.getheader("Content-Type") == "application/json; charset=UTF-8", raw[:200]
        return Response(resp.status, json.loads(raw), dict(resp.getheaders()))
    finally:
        conn.close()


def raw_exchange(url: str, request: bytes, timeout: float = 10.0) -> Response:
    """Send ``request`` as bytes, read the answer until the server closes."""
    parts = urllib.parse.urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Response(int(lines[0].split()[1]), json.loads(body), headers)


# --------------------------------------------------------------------------- values, unit


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        (b'"hello"', b'"hello"'),
        (b" 42 ", b"42"),
        (b"-1.5e3", b"-1500.0"),
        (b"0", b"0"),
        (b'[1, 2, {"a": null}]', b'[1,2,{"a":null}]'),
        (b"{}", b"{}"),  # the seed's schema: any object
        (b'{"b": [true, false], "a": "x"}', b'{"b":[true,false],"a":"x"}'),
        ('"héllo ✓"'.encode(), '"héllo ✓"'.encode()),  # UTF-8, not \\u escapes
        (b'"\\u00e9"', '"é"'.encode()),
        (b"123456789012345678901234567890", b"123456789012345678901234567890"),
    ],
)
def test_accepted_values_are_stored_as_compact_json_text(body, stored):
    assert cacheapi.encode_value(body) == stored


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"null", "Invalid value"),
        (b"true", "Invalid value"),
        (b"false", "Invalid value"),
        (b'""', "Invalid value"),
        (b"[]", "Invalid value"),
        (b"", "Invalid JSON body"),
        (b"{", "Invalid JSON body"),
        (b"hello", "Invalid JSON body"),
        (b"NaN", "Invalid JSON body"),
        (b"[Infinity]", "Invalid JSON body"),
        (b"[1e999]", "Invalid JSON body"),  # parses to an infinite float
        (b'"\\ud800"', "Invalid JSON body"),  # a lone surrogate is no text
        (b'"caf\xe9"', "Invalid JSON body"),  # Latin-1, not UTF-8
        (b"[" * 100_000 + b"]" * 100_000, "Invalid JSON body"),  # too deep
        (b'"a" "b"', "Invalid JSON body"),
    ],
)
def test_rejected_bodies_are_400(body, why):
    with pytest.raises(cacheapi.ApiError) as info:
        cacheapi.encode_value(body)
    assert info.value.status_code == 400 and info.value.message.startswith(why)


@pytest.mark.parametrize(
    ("stored", "text"),
    [
        (b'{"a":[1,2]}', '{"a":[1,2]}'),
        (b" 42\n", "42"),
        (b"null", "null"),  # JSON text, though POST would refuse it
        (b"hello", '"hello"'),
        (b"", '""'),
        (b"NaN", '"NaN"'),
        (b"1 2", '"1 2"'),
        ("tschüß".encode(), '"tschüß"'),
        (b"\xff\xfeab", '"\ufffd\ufffdab"'),
    ],
)
def test_stored_values_read_back_as_json(stored, text):
    assert cacheapi.value_text(stored) == text
    json.loads(text)


def test_iso_utc_and_ttl_arguments():
    assert cacheapi.iso_utc(0) == "1970-01-01T00:00:00.000Z"
    assert cacheapi.iso_utc(1_795_835_045_123) == "2026-11-28T03:04:05.123Z"
    assert cacheapi.ttl_ms(None) is None
    assert cacheapi.ttl_ms("60") == 60_000
    assert cacheapi.ttl_ms("1.5") == 1500
    assert cacheapi.ttl_ms("0.0001") == 1
    # -9.5e307 and 1e308: finite, but infinite in ms (a 500 found by schemathesis)
    for bad in ("0", "-1", "abc", "nan", "inf", "", "1e20", "-9.46787193208957e+307", "1e308"):
        with pytest.raises(cacheapi.ApiError):
            cacheapi.ttl_ms(bad)


def test_edge_config_validate():
    assert EdgeConfig().validate().backend == ("tcp://127.0.0.1:7000",)
    for bad in (
        {"port": 70000},
        {"port": -1},
        {"backend": ()},
        {"backend": ("localhost:7000",)},
        {"timeout": 0},
        {"timeout": float("nan")},
        {"timeout": True},
        {"max_body_bytes": 0},
        {"host": ""},
    ):
        with pytest.raises(ConfigError):
            EdgeConfig(**bad).validate()


def test_cli_rejects_bad_http_options(tmp_path):
    runner = CliRunner()
    node = ["node", "--id", "n1", "--data-dir", str(tmp_path / "n1")]
    for port in ("abc", "70000", "-1"):
        result = runner.invoke(main, [*node, "--http-port", port])
        assert result.exit_code == 2 and "--http-port" in result.output
    result = runner.invoke(main, ["edge", "--backend", "localhost:7000"])
    assert result.exit_code == 2 and result.output.startswith("error: backend")
    result = runner.invoke(main, ["edge", "--timeout", "0"])
    assert result.exit_code == 2 and result.output.startswith("error: timeout")
    help_text = runner.invoke(main, ["edge", "--help"]).output
    for flag in ("--host", "--port", "--backend", "--timeout", "--max-body-bytes", "--status-file"):
        assert flag in help_text


# ------------------------------------------------------------- in process, scripted backend

Answer = tuple[int, Any] | Callable[[wire.Request], tuple[int, Any]] | None


def run_app(
    answers: dict[str, Answer], requests: list[tuple[str, str, bytes | None]], timeout: float = 2.0
) -> list[Response]:
    """Serve the app against a scripted ROUTER (op -> (code, result); None: silence)."""

    async def main() -> list[Response]:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        router.bind("inproc://scripted-backend")

        async def answer() -> None:
            while True:
                frames = await router.recv_multipart()
                request = wire.decode_request(frames[-1], Limits())
                reply = answers.get(request.op)
                if callable(reply):
                    reply = reply(request)
                if reply is None:
                    continue
                code, result = reply
                frame = (
                    wire.encode_reply(request.id, result)
                    if code == wire.OK
                    else wire.encode_error(request.id, code, result)
                )
                await router.send_multipart([*frames[:-1], frame])

        task = asyncio.create_task(answer())
        server = edge.serve(
            "inproc://scripted-backend",
            "127.0.0.1",
            0,
            timeout=timeout,
            max_body_bytes=4096,
            context=ctx,
        )
        client = tornado.simple_httpclient.SimpleAsyncHTTPClient(force_instance=True)
        try:
            out = []
            for method, path, body in requests:
                resp = await client.fetch(
                    server.url + path,
                    method=method,
                    body=body,
                    raise_error=False,
                    allow_nonstandard_methods=True,
                    request_timeout=10,
                )
                out.append(Response(resp.code, json.loads(resp.body), dict(resp.headers)))
            return out
        finally:
            client.close()
            await server.stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            router.close()
            ctx.term()

    return asyncio.run(main())


def test_backend_catching_up_gives_503_with_retry_after():
    not_ready = (wire.E_NOT_READY, "node n1 is catching-up")
    ready, get, post, delete, health = run_app(
        {
            "HEALTH": (wire.OK, {"node_id": "n1", "state": "catching-up"}),
            "GETMETA": not_ready,
            "SET": not_ready,
            "DEL": not_ready,
        },
        [
            ("GET", "/api/ready/", None),
            ("GET", "/api/cache/k/", None),
            ("POST", "/api/cache/k/", b'"v"'),
            ("DELETE", "/api/cache/k/", None),
            ("GET", "/api/health/", None),
        ],
    )
    assert (ready.status, ready.body) == (
        503,
        {"message": "not ready", "payload": {"node_id": "n1", "state": "catching-up"}},
    )
    for resp in (get, post, delete):
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert resp.body == {"message": "Not ready: node n1 is catching-up", "payload": {}}
    assert (health.status, health.body) == (200, {"message": "alive", "payload": {}})


def test_backend_errors_map_to_statuses_and_internals_stay_in_the_log(caplog):
    get, post, delete = run_app(
        {
            "GETMETA": (wire.E_BAD_KEY, "key of 600 bytes is over 512"),
            "SET": (wire.E_TOO_LARGE, "value of 9 bytes is over 8"),
            "DEL": (wire.E_INTERNAL, "secret stack detail"),
        },
        [
            ("GET", "/api/cache/k/", None),
            ("POST", "/api/cache/k/", b'"v"'),
            ("DELETE", "/api/cache/k/", None),
        ],
    )
    assert (get.status, get.body["message"]) == (400, "key of 600 bytes is over 512")
    assert (post.status, post.body["message"]) == (413, "value of 9 bytes is over 8")
    assert (delete.status, delete.body) == (
        500,
        {"message": "Internal server error", "payload": {}},
    )
    assert "secret stack detail" in caplog.text


def test_not_acknowledged_write_is_503():
    (post,) = run_app(
        {"SET": (wire.E_NOT_ACKNOWLEDGED, "logged on 1 of the 3 nodes required")},
        [("POST", "/api/cache/k/", b"[1]")],
    )
    assert post.status == 503
    assert post.body["message"] == "Write not acknowledged: logged on 1 of the 3 nodes required"


def test_silent_backend_gives_503_after_the_timeout():
    started = time.monotonic()
    ready, get, cluster = run_app(
        {},
        [
            ("GET", "/api/ready/", None),
            ("GET", "/api/cache/k/", None),
            ("GET", "/api/cluster/", None),
        ],
        timeout=0.2,
    )
    assert time.monotonic() - started < 5
    assert ready.status == 503 and ready.body["message"].startswith("not ready: Cache unavailable")
    assert get.status == 503 and get.body["message"].startswith("Cache unavailable: no reply")
    assert cluster.status == 503


def test_values_set_elsewhere_read_back_as_json_and_ttl_and_time_are_reported():
    stored = {
        "text": [b"plain text", 5_000, 1_795_835_045_123],
        "num": [b"42", -1, 1_795_835_045_123],
        "bin": [b"\xff\x00", -1, 0],
    }

    def meta(request: wire.Request) -> tuple[int, Any]:
        return wire.OK, stored.get(request.args[0])

    text, num, binary, missing = run_app(
        {"GETMETA": meta},
        [
            ("GET", "/api/cache/text/", None),
            ("GET", "/api/cache/num", None),  # the trailing slash is optional
            ("GET", "/api/cache/bin/", None),
            ("GET", "/api/cache/gone/", None),
        ],
    )
    assert (text.status, text.body) == (
        200,
        {
            "message": "Cache key get success",
            "payload": {
                "key": "text",
                "value": "plain text",
                "last_updated_at": "2026-11-28T03:04:05.123Z",
                "ttl": 5.0,
            },
        },
    )
    assert num.body["payload"]["value"] == 42 and num.body["payload"]["ttl"] is None
    assert binary.body["payload"]["value"] == "\ufffd\x00"
    assert (missing.status, missing.body) == (
        404,
        {"message": "Cache key not found", "payload": {}},
    )


def test_cluster_lists_every_node_with_the_documented_fields():
    nodes = [
        {"node_id": "n1", "state": "ready", "keys": 3, "digest": "00ff", "lag": {"entries": 0}},
        {"node_id": "n2", "state": "catching-up", "lag": {"entries": 7, "ms": 40}},
    ]
    (cluster,) = run_app({"CLUSTER": (wire.OK, {"nodes": nodes})}, [("GET", "/api/cluster/", None)])
    assert cluster.status == 200 and cluster.body["message"] == "cluster"
    assert cluster.body["payload"]["nodes"] == [
        nodes[0],
        {**nodes[1], "keys": None, "digest": None},
    ]


def test_unknown_paths_methods_and_bad_ttl_are_json_errors():
    nowhere, method, ttl, bad_key = run_app(
        {"SET": (wire.OK, True)},
        [
            ("GET", "/api/nowhere/", None),
            ("PUT", "/api/cache/k/", b'"v"'),
            ("POST", "/api/cache/k/?ttl=0", b'"v"'),
            ("GET", "/api/cache/%ff/", None),  # not UTF-8 once decoded
        ],
    )
    assert (nowhere.status, nowhere.body) == (404, {"message": "No such endpoint", "payload": {}})
    assert (method.status, method.body["message"]) == (405, "Method Not Allowed")
    assert ttl.status == 400 and ttl.body["message"].startswith("Invalid ttl")
    assert bad_key.status == 400


# --------------------------------------------------------------------------- real processes


class EdgeProcess:
    """A ``pycache edge`` child on an OS-picked port, found through its status file."""

    def __init__(self, folder: Path, backend: str, extra: list[str] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.status = folder / "edge.json"
        self.log_path = folder / "edge.stderr.log"
        self.argv = mesh_argv(
            "edge",
            "--port",
            "0",
            "--backend",
            backend,
            "--status-file",
            str(self.status),
            *(extra or []),
        )
        self.child = ChildProcess("edge", self.status, self.log_path)
        self.url = ""

    @property
    def process(self) -> subprocess.Popen | None:
        return self.child.process

    def start(self) -> EdgeProcess:
        self.child.start(self.argv)
        with failing_the_test():
            self.url = self.child.wait_status(lambda i: "http" in i, 15)["http"]
        return self

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        return self.child.stop(timeout)

    def kill(self) -> None:
        self.child.kill()

    def stderr(self) -> str:
        return self.child.stderr_tail()


@pytest.fixture
def edges(procs: Processes) -> Iterator[Callable[..., EdgeProcess]]:
    """``edges(backend, extra)`` starts a ``pycache edge``; ``procs`` kills all at teardown."""
    started: list[EdgeProcess] = []

    def start(backend: str, extra: list[str] | None = None) -> EdgeProcess:
        proc = EdgeProcess(procs.tmp_path / f"edge{len(started)}", backend, extra)
        started.append(proc)
        procs.track(proc)
        return proc.start()

    yield start


def http_url(node: NodeProcess) -> str:
    return json.loads((node.data_dir / "node.json").read_text())["http"]


@dataclass
class Door:
    """An HTTP door onto a node: the node's own HTTP API, or an edge in front of it."""

    url: str
    node: NodeProcess


@pytest.fixture(params=["node-http", "edge"])
def door(request, procs: Processes, edges) -> Door:
    if request.param == "node-http":
        node = procs.node("n1", extra=["--http-port", "*"])
        return Door(http_url(node), node)
    node = procs.node("n1")
    return Door(edges(node.endpoint).url, node)


@pytest.mark.processes
def test_seed_api_set_get_delete(door):
    posted = call(door.url, "POST", "/api/cache/greeting/", b'"hello"')
    assert posted.status == 201
    assert posted.body["message"] == "Cache key set success"
    payload = posted.body["payload"]
    assert ISO_UTC.match(payload.pop("last_updated_at"))
    assert payload == {"key": "greeting", "value": "hello", "ttl": None}

    got = call(door.url, "GET", "/api/cache/greeting/")
    assert got.status == 200 and got.body["message"] == "Cache key get success"
    assert set(got.body["payload"]) == {"key", "value", "last_updated_at", "ttl"}
    assert got.body["payload"]["value"] == "hello" and got.body["payload"]["ttl"] is None
    assert ISO_UTC.match(got.body["payload"]["last_updated_at"])

    for value in (7, -2.5, [1, "two", {"three": 3}], {"nested": {"list": [True, None]}}, {}):
        body = json.dumps(value)
        assert call(door.url, "POST", "/api/cache/v/", body).body["payload"]["value"] == value
        assert call(door.url, "GET", "/api/cache/v/").body["payload"]["value"] == value

    deleted = call(door.url, "DELETE", "/api/cache/greeting/")
    assert (deleted.status, deleted.body) == (200, {"message": "Cache key expired", "payload": {}})
    missing = call(door.url, "GET", "/api/cache/greeting/")
    assert (missing.status, missing.body) == (
        404,
        {"message": "Cache key not found", "payload": {}},
    )
    again = call(door.url, "DELETE", "/api/cache/greeting/")  # idempotent, as in the seed
    assert (again.status, again.body) == (200, {"message": "Cache key expired", "payload": {}})


@pytest.mark.processes
def test_keys_come_from_the_url_path_percent_decoded(door):
    for key, path in (("a/b c", "a%2Fb%20c"), ("ключ", urllib.parse.quote("ключ")), ("k+1", "k+1")):
        assert call(door.url, "POST", f"/api/cache/{path}/", b"1").body["payload"]["key"] == key
        with Client(door.node.endpoint) as c:
            assert c.get(key) == b"1"
    too_long = call(door.url, "GET", f"/api/cache/{'k' * 600}/")
    assert too_long.status == 400 and "512" in too_long.body["message"]


@pytest.mark.processes
def test_ttl_is_set_reported_and_expires(door):
    posted = call(door.url, "POST", "/api/cache/t/?ttl=60", b'"x"')
    assert posted.status == 201 and posted.body["payload"]["ttl"] == 60.0
    ttl = call(door.url, "GET", "/api/cache/t/").body["payload"]["ttl"]
    assert 59 < ttl <= 60
    with Client(door.node.endpoint) as c:
        assert 59_000 < c.pttl("t") <= 60_000
    call(door.url, "POST", "/api/cache/short/?ttl=0.2", b'"x"')
    wait_for(
        lambda: call(door.url, "GET", "/api/cache/short/").status == 404, 5, "the key to expire"
    )
    for bad in ("0", "-5", "soon"):
        resp = call(door.url, "POST", f"/api/cache/t/?ttl={bad}", b'"x"')
        assert resp.status == 400 and resp.body["message"].startswith("Invalid ttl")
    assert call(door.url, "GET", "/api/cache/t/").body["payload"]["ttl"] > 59  # untouched


@pytest.mark.processes
def test_invalid_json_and_rejected_values_are_400(door):
    for body in (b"", b"{", b"'single'", b"NaN", b"\xff"):
        resp = call(door.url, "POST", "/api/cache/k/", body)
        assert resp.status == 400 and resp.body["message"].startswith("Invalid JSON body")
        assert resp.body["payload"] == {}
    for body in (b"null", b"true", b"false", b'""', b"[]"):
        resp = call(door.url, "POST", "/api/cache/k/", body)
        assert resp.status == 400 and resp.body["message"].startswith("Invalid value")
    assert call(door.url, "GET", "/api/cache/k/").status == 404  # nothing was stored


@pytest.mark.processes
def test_too_large_bodies_are_413(door):
    declared = raw_exchange(
        door.url,
        b"POST /api/cache/big/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n"
        b"Expect: 100-continue\r\n\r\n",
    )
    assert declared.status == 413 and declared.headers["Connection"] == "close"
    assert declared.body == {
        "message": f"Request body of 100000000 bytes is over the limit of {NODE_BODY_LIMIT} bytes",
        "payload": {},
    }
    # Within the body limit but over the node's 8 MiB value limit: the node says so.
    value = b'"' + b"v" * (8 * MIB) + b'"'
    resp = call(door.url, "POST", "/api/cache/big/", value)
    assert resp.status == 413 and "over" in resp.body["message"]
    ok = call(door.url, "POST", "/api/cache/big/", value[: 8 * MIB - 1] + b'"')
    assert ok.status == 201
    assert len(call(door.url, "GET", "/api/cache/big/").body["payload"]["value"]) == 8 * MIB - 2


@pytest.mark.processes
def test_both_doors_see_the_same_keys(door):
    call(door.url, "POST", "/api/cache/j/", b'{"a": [1, 2.5, "x"], "b": null}')
    with Client(door.node.endpoint) as c:
        assert c.get("j") == b'{"a":[1,2.5,"x"],"b":null}'
        assert c.get("k") is None
        c.set("plain", b"not json at all")
        c.set("number", b"42")
        c.set("object", b'{"via": "zmq"}')
        c.set("binary", b"\x00\xff")
    values = {
        key: call(door.url, "GET", f"/api/cache/{key}/").body["payload"]["value"]
        for key in ("plain", "number", "object", "binary", "j")
    }
    assert values == {
        "plain": "not json at all",
        "number": 42,
        "object": {"via": "zmq"},
        "binary": "\x00\ufffd",
        "j": {"a": [1, 2.5, "x"], "b": None},
    }


@pytest.mark.processes
def test_health_ready_and_cluster(door):
    assert call(door.url, "GET", "/api/health/").body == {"message": "alive", "payload": {}}
    ready = call(door.url, "GET", "/api/ready/")
    assert (ready.status, ready.body) == (
        200,
        {"message": "ready", "payload": {"node_id": "n1", "state": "ready"}},
    )
    call(door.url, "POST", "/api/cache/a/", b"1")
    cluster = call(door.url, "GET", "/api/cluster/")
    assert cluster.status == 200 and cluster.body["message"] == "cluster"
    (me,) = cluster.body["payload"]["nodes"]
    assert me["node_id"] == "n1" and me["state"] == "ready" and me["keys"] == 1
    assert re.match(r"^[0-9a-f]{16}$", me["digest"]) and me["lag"] == {"entries": 0, "ms": 0}


@pytest.mark.processes
def test_concurrent_requests_all_get_answers(door):
    """64 connections at once through the one shared backend client, 5 rounds."""

    async def load() -> list[int]:
        client = tornado.simple_httpclient.SimpleAsyncHTTPClient(
            force_instance=True, max_clients=64
        )
        try:
            codes = []
            for round_ in range(5):
                method, body = ("POST", b'"v"') if round_ % 2 else ("GET", None)
                responses = await asyncio.gather(
                    *(
                        client.fetch(
                            f"{door.url}/api/cache/k{i}/",
                            method=method,
                            body=body,
                            raise_error=False,
                            request_timeout=15,
                        )
                        for i in range(64)
                    )
                )
                codes += [r.code for r in responses]
            return codes
        finally:
            client.close()

    codes = asyncio.run(load())
    assert codes.count(404) == 64 and codes.count(201) == 128 and codes.count(200) == 128


@pytest.mark.processes
def test_edge_with_backend_down_is_alive_but_not_ready_and_stops_cleanly(edges):
    proc = edges("tcp://127.0.0.1:1", ["--timeout", "0.3"])  # nothing listens on port 1
    assert call(proc.url, "GET", "/api/health/").status == 200
    ready = call(proc.url, "GET", "/api/ready/")
    assert ready.status == 503 and ready.headers["Retry-After"] == "1"
    for method, body in (("GET", None), ("POST", b'"v"'), ("DELETE", None)):
        resp = call(proc.url, method, "/api/cache/k/", body)
        assert resp.status == 503 and resp.body["message"].startswith("Cache unavailable")
    assert call(proc.url, "GET", "/api/cluster/").status == 503
    assert proc.stop() == 0
    assert "Traceback" not in proc.stderr()


@pytest.mark.processes
def test_edge_refuses_an_oversized_chunked_body(procs, edges):
    node = procs.node("n1")
    proc = edges(node.endpoint, ["--max-body-bytes", "1000"])
    body = b'"' + b"x" * 1500 + b'"'
    chunk = f"{len(body):x}\r\n".encode() + body  # no chunk end: the edge reads it all
    resp = raw_exchange(
        proc.url,
        b"POST /api/cache/k/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk,
    )
    assert resp.status == 413
    assert resp.body["message"] == "Request body is over the limit of 1000 bytes"
    small = call(proc.url, "POST", "/api/cache/k/", b'"' + b"x" * 900 + b'"')
    assert small.status == 201


@pytest.mark.processes
def test_edge_forwards_through_the_balancer(procs, edges):
    nodes = procs.cluster(2)
    balancer = procs.balancer(nodes)
    proc = edges(balancer.endpoint)
    assert call(proc.url, "POST", "/api/cache/k/?ttl=30", b'{"via": "balancer"}').status == 201
    got = call(proc.url, "GET", "/api/cache/k/")
    assert got.body["payload"]["value"] == {"via": "balancer"}
    assert call(proc.url, "GET", "/api/ready/").status == 200
    cluster = call(proc.url, "GET", "/api/cluster/").body["payload"]["nodes"]
    assert sorted(n["node_id"] for n in cluster) == ["n1", "n2"]
    for node in nodes:  # every node has the key once replication caught up
        with node.client() as c:
            wait_for(lambda c=c: c.get("k") == b'{"via":"balancer"}', 5, "replication")
    assert proc.stop() == 0


class HoldingPeer(threading.Thread):
    """A fake peer: answers HELLO, holds every FETCH until ``release`` is set.

    A node that names it as a peer stays catching-up until then (up to the
    node's ready deadline), then gets "nothing more" and becomes ready.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.release = threading.Event()
        self.done = threading.Event()
        self.bound = threading.Event()
        self.repl = self.pub = ""

    def run(self) -> None:
        ctx = zmq.Context()
        repl, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
        try:
            for sock in (repl, pub):
                sock.setsockopt(zmq.LINGER, 0)
                sock.bind("tcp://127.0.0.1:*")
            self.repl = repl.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.pub = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
            self.bound.set()
            held: list[tuple[list[bytes], Any]] = []
            while not self.done.is_set():
                if repl.poll(20):
                    frames = repl.recv_multipart()
                    kind, payload = peerwire.parse_request(peerwire.decode(frames[-1], MIB))
                    if kind == peerwire.HELLO:
                        hello = peerwire.encode_hello("fake", self.repl, self.pub, "fake/1")
                        repl.send_multipart([*frames[:-1], hello])
                    else:
                        held.append((frames[:-1], payload[1]))
                if self.release.is_set():
                    for envelope, fetch in held:
                        batch = Batch(fetch.request_id, [], {}, snapshot=fetch.full, session=1)
                        repl.send_multipart([*envelope, peerwire.encode_batch(batch)])
                    held = []
        finally:
            repl.close()
            pub.close()
            ctx.term()


@pytest.fixture
def holding_peer() -> Iterator[HoldingPeer]:
    peer = HoldingPeer()
    peer.start()
    try:
        assert peer.bound.wait(5)
        yield peer
    finally:
        peer.done.set()
        peer.join(5)


@pytest.mark.processes
def test_node_http_is_not_ready_until_caught_up(procs, holding_peer):
    node = procs.node("n1", extra=["--http-port", "*"], start=False, peers=[holding_peer.repl])
    node.start(wait=False)
    status = node.data_dir / "node.json"

    def catching_up() -> dict | None:
        assert node.process is not None
        if node.process.poll() is not None:
            pytest.fail(f"node exited with {node.process.returncode}: {node.stderr()}")
        info = json.loads(status.read_text()) if status.exists() else {}
        if info.get("pid") != node.process.pid:
            return None
        if info.get("state") == "ready":  # it should wait for the peer that holds its fetch
            pytest.fail(f"node ready without its peer: {info}; {node.stderr()}")
        return info if info.get("state") == "catching-up" else None

    url = wait_for(catching_up, 15, "the node to catch up with its HTTP API up")["http"]
    ready = call(url, "GET", "/api/ready/")
    assert (ready.status, ready.body) == (
        503,
        {"message": "not ready", "payload": {"node_id": "n1", "state": "catching-up"}},
    )
    assert call(url, "GET", "/api/health/").status == 200
    for method, body in (("GET", None), ("POST", b'"v"')):
        resp = call(url, method, "/api/cache/k/", body)
        assert resp.status == 503
        assert resp.body == {"message": "Not ready: node n1 is catching-up", "payload": {}}

    holding_peer.release.set()
    wait_for(lambda: call(url, "GET", "/api/ready/").status == 200, 10, "/api/ready/ to say 200")
    assert call(url, "POST", "/api/cache/k/", b'"v"').status == 201
    assert node.stop() == 0
    assert "Traceback" not in node.stderr()
