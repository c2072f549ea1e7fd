"""Protected mode on the client plane (issue 17, point 4).

- loopback clients need nothing: mesh.client, the raw pyzmq script of
  docs/protocol.md, and HTTP with no token;
- a node, balancer or edge asked to listen beyond loopback with no client
  credentials exits 2 with one line; with ``--insecure`` it starts and warns;
- with client keys (CURVE) an admitted key works, no key or an unknown key
  gets nothing; through the balancer and the edge too;
- HTTP with a token file: the cache needs the token, the probes do not;
- HTTPS with ``--tls-cert``/``--tls-key``.

Sockets bound to every interface (``0.0.0.0``) are reached through
127.0.0.1 only.  Every process is tracked and killed at teardown.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import zmq

from mesh.client import Client, Credentials
from mesh.core.errors import ConfigError, Timeout
from mesh.roles.clientplane import client_keygen
from mesh.roles.launcher import mesh_argv
from mesh.roles.protected import bearer_ok, endpoint_is_local, host_is_loopback, load_tokens
from tests.conftest import ANY, BalancerProcess, Processes, failing_the_test, wait_for
from tests.test_edge import EdgeProcess
from tests.test_protocol_doc import run_complete_script

EVERYWHERE = "tcp://0.0.0.0:*"
TOKEN = "s3cret-token"
START_S = 20.0


def via_loopback(address: str) -> str:
    """An endpoint or URL bound on every interface, as reached through 127.0.0.1."""
    return address.replace("0.0.0.0", "127.0.0.1")


def http_call(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict, dict[str, str]]:
    """One request on a fresh connection: (status, JSON body, headers by lower-case name)."""
    parts = urllib.parse.urlsplit(via_loopback(url))
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        headers = {name.lower(): value for name, value in resp.getheaders()}
        return resp.status, json.loads(resp.read()), headers
    finally:
        conn.close()


def refused_at_start(argv: list[str]) -> subprocess.CompletedProcess:
    """Run a role that must refuse to start: it exits within seconds."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=START_S)


def node_http(node) -> str:
    return json.loads((node.data_dir / "node.json").read_text())["http"]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A client keys folder admitting ``alice`` and ``balancer``; ``mallory`` is made elsewhere."""
    folder = tmp_path / "client-keys"
    client_keygen(folder, ["alice", "balancer"])
    client_keygen(tmp_path / "other-keys", ["mallory"])
    return folder


def credentials(keys: Path, name: str = "alice", server: Path | None = None) -> Credentials:
    """``name``'s key from ``keys``, toward the server key of ``server`` (default: ``keys``)."""
    server_key = (server or keys) / "server.key"
    return Credentials.load(keys / "secrets" / f"{name}.key_secret", server_key)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(f"# who may use the HTTP API\n\nold-token\n{TOKEN}\n")
    return path


def start_edge(procs: Processes, backend: str, extra: list[str]) -> EdgeProcess:
    proc = EdgeProcess(procs.tmp_path / f"edge{len(procs.others)}", backend, extra)
    procs.track(proc)
    return proc.start()


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("*", False),
        ("::", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("lo", False),
        ("", False),
    ],
)
def test_loopback_hosts_are_never_resolved(host, loopback):
    assert host_is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("endpoint", "local"),
    [
        ("tcp://127.0.0.1:7001", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://localhost:7001", True),
        ("ipc:///tmp/pycache.sock", True),
        ("inproc://api", True),
        ("tcp://0.0.0.0:7001", False),
        ("tcp://*:7001", False),
        ("tcp://eth0:7001", False),
        ("tcp://n1:7001", False),
    ],
)
def test_local_endpoints(endpoint, local):
    assert endpoint_is_local(endpoint) is local


def test_token_file_and_bearer_check(tmp_path, token_file):
    tokens = load_tokens(token_file)
    assert tokens == (b"old-token", TOKEN.encode())
    assert bearer_ok(f"Bearer {TOKEN}", tokens) and bearer_ok("bearer old-token", tokens)
    for header in (None, "", TOKEN, f"Bearer {TOKEN}x", "Basic abc", "Bearer "):
        assert not bearer_ok(header, tokens), header
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no token"):
        load_tokens(empty)
    with pytest.raises(ConfigError, match="cannot read the token file"):
        load_tokens(tmp_path / "missing")


# --------------------------------------------------------------------------- loopback


@pytest.mark.processes
def test_loopback_clients_need_no_credentials(procs, tmp_path):
    node = procs.node("n1", extra=["--http-port", "*"])
    with Client(node.endpoint, timeout=2) as client:
        assert client.set("k", "v") is True and client.get("k") == b"v"
    run_complete_script(node.endpoint, tmp_path)
    url = node_http(node)
    assert http_call(url, "POST", "/api/cache/h/", b'"v"')[0] == 201
    assert http_call(url, "GET", "/api/cache/h/")[0] == 200


# --------------------------------------------------------------------------- refused


@pytest.mark.processes
@pytest.mark.parametrize(
    ("role", "args", "what"),
    [
        ("node", ["--api", EVERYWHERE], "api tcp://0.0.0.0:*"),
        ("node", ["--http-port", "*", "--http-host", "0.0.0.0"], "HTTP on 0.0.0.0"),
        ("balancer", ["--front", "tcp://*:*", "--nodes", "tcp://127.0.0.1:1"], "front tcp://*:*"),
        ("edge", ["--host", "0.0.0.0", "--port", "0"], "HTTP on 0.0.0.0"),
    ],
)
def test_beyond_loopback_without_credentials_exits_2_with_one_line(tmp_path, role, args, what):
    if role == "node":  # later flags win: the case's --api overrides the base's
        args = ["--id", "n1", "--data-dir", str(tmp_path / "n1"), "--api", ANY, *args]
    done = refused_at_start(mesh_argv(role, *args))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {what} listens beyond loopback: give client credentials "
        f"({'--token-file FILE' if what.startswith('HTTP') else '--client-keys DIR'}) "
        "or --insecure"
    ]
    assert "Traceback" not in done.stderr


@pytest.mark.processes
def test_bad_credentials_options_exit_2(tmp_path, keys):
    node = ["--id", "n1", "--data-dir", str(tmp_path / "n1")]
    cases = [
        (mesh_argv("node", *node, "--client-keys", str(tmp_path / "nope")), "does not exist"),
        (mesh_argv("edge", "--tls-cert", str(keys / "server.key")), "both --tls-cert"),
        (mesh_argv("edge", "--token-file", str(tmp_path / "nope")), "cannot read the token"),
        (
            mesh_argv("get", "k", "--client-key", str(keys / "secrets" / "alice.key_secret")),
            "give both --client-key and --server-key",
        ),
    ]
    for argv, message in cases:
        done = refused_at_start(argv)
        assert done.returncode == 2, (argv, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.processes
def test_insecure_listens_beyond_loopback_and_says_so(procs, tmp_path):
    node = procs.node("n1", extra=["--api", EVERYWHERE, "--insecure"])
    assert node.api.startswith("tcp://0.0.0.0:")
    with Client(via_loopback(node.api), timeout=2) as client:
        assert client.set("k", "v") is True
    assert "WARNING" in node.stderr() and "INSECURE: api" in node.stderr()
    edge = start_edge(procs, via_loopback(node.api), ["--host", "0.0.0.0", "--insecure"])
    assert http_call(edge.url, "GET", "/api/cache/k/")[0] == 200
    assert "INSECURE: the edge on 0.0.0.0" in edge.child.stderr()


# --------------------------------------------------------------------------- CURVE


@pytest.mark.processes
def test_node_admits_only_known_client_keys(procs, keys, tmp_path):
    node = procs.node(
        "n1", extra=["--api", EVERYWHERE, "--client-keys", str(keys), "--http-port", "*"]
    )
    endpoint = via_loopback(node.api)
    with Client(endpoint, timeout=2, credentials=credentials(keys)) as client:
        assert client.set("k", "v") is True and client.get("k") == b"v"
    with Client(endpoint, timeout=1) as anonymous, pytest.raises(Timeout):
        anonymous.get("k")
    with (
        Client(
            endpoint, timeout=1, credentials=credentials(tmp_path / "other-keys", "mallory", keys)
        ) as stranger,
        pytest.raises(Timeout),
    ):
        stranger.get("k")
    assert "is not admitted" in node.stderr()
    # the CLI, with its key files
    secret = str(keys / "secrets" / "alice.key_secret")
    got = subprocess.run(
        mesh_argv("get", "k", "--connect", endpoint, "--timeout", "2"),
        capture_output=True,
        env={"PYCACHE_CLIENT_KEY": secret, "PYCACHE_SERVER_KEY": str(keys / "server.key")}
        | _path_env(),
        timeout=START_S,
    )
    assert (got.returncode, got.stdout) == (0, b"v\n"), got.stderr
    # the node's own HTTP API still reaches its api socket (in-process)
    assert http_call(node_http(node), "GET", "/api/cache/k/")[1]["payload"]["value"] == "v"


@pytest.mark.processes
def test_a_key_added_while_running_is_admitted(procs, keys):
    node = procs.node("n1", extra=["--api", EVERYWHERE, "--client-keys", str(keys)])
    client_keygen(keys, ["carol"])
    with Client(via_loopback(node.api), timeout=2, credentials=credentials(keys, "carol")) as c:
        assert c.ping() == "PONG"


@pytest.mark.processes
def test_balancer_and_edge_with_client_keys(procs, keys):
    node = procs.node("n1", extra=["--client-keys", str(keys)])
    own_key = str(keys / "secrets" / "balancer.key_secret")
    balancer_extra = ["--client-keys", str(keys), "--client-key", own_key]
    balancer = BalancerProcess(procs.tmp_path / "balancer", [node], balancer_extra)
    balancer.front = EVERYWHERE
    procs.balancers.append(balancer)
    with failing_the_test():
        balancer.start()
    front = via_loopback(balancer.front)
    with Client(front, timeout=2, credentials=credentials(keys)) as client:
        wait_for(lambda: client.health()["state"] == "ready", 10, "a ready node behind it")
        assert client.set("k", "v") is True and client.get("k") == b"v"
    with Client(front, timeout=1) as anonymous, pytest.raises(Timeout):
        anonymous.get("k")
    alice = [
        "--client-key",
        str(keys / "secrets" / "alice.key_secret"),
        "--server-key",
        (keys / "server.key").read_text().split('public-key = "')[1].split('"')[0],  # Z85
    ]
    edge = start_edge(procs, front, alice)
    wait_for(lambda: http_call(edge.url, "GET", "/api/ready/")[0] == 200, 10, "edge ready")
    assert http_call(edge.url, "GET", "/api/cache/k/")[1]["payload"]["value"] == "v"


def _path_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in ("PATH", "PYTHONPATH", "HOME")}


# --------------------------------------------------------------------------- HTTP tokens


@pytest.mark.processes
def test_http_beyond_loopback_needs_a_token_except_for_probes(procs, token_file):
    extra = ["--http-port", "*", "--http-host", "0.0.0.0", "--token-file", str(token_file)]
    node = procs.node("n1", extra=extra)
    url = node_http(node)
    for token in (None, "wrong"):
        for method, path, body in (
            ("GET", "/api/cache/k/", None),
            ("POST", "/api/cache/k/", b'"v"'),
            ("POST", "/api/cache/k/?ttl=5", b'"v"'),
            ("DELETE", "/api/cache/k/", None),
            ("GET", "/api/cluster/", None),
            ("GET", "/api/nothing/", None),
        ):
            status, answer, headers = http_call(url, method, path, body, token)
            assert status == 401, (method, path, token)
            assert headers["www-authenticate"].startswith("Bearer")
            assert answer == {"message": answer["message"], "payload": {}}
    assert http_call(url, "POST", "/api/cache/k/?ttl=60", b'"v"', TOKEN)[0] == 201
    assert http_call(url, "GET", "/api/cache/k/", token="old-token")[1]["payload"]["value"] == "v"
    for probe in ("/api/live/", "/api/health/", "/api/ready/"):
        assert http_call(url, "GET", probe)[0] == 200, probe
    with node.client() as client:  # the ZeroMQ API is on loopback: open as before
        assert client.get("k") == b'"v"'


# --------------------------------------------------------------------------- TLS


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (openssl: the cryptography package is not here)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@pytest.mark.processes
def test_edge_serves_https_with_tokens(procs, tmp_path, token_file):
    cert, key = self_signed(tmp_path)
    node = procs.node("n1")
    tls = ["--tls-cert", str(cert), "--tls-key", str(key), "--token-file", str(token_file)]
    edge = start_edge(procs, node.endpoint, tls)
    assert edge.url.startswith("https://127.0.0.1:")
    trusting = ssl.create_default_context(cafile=str(cert))
    assert http_call(edge.url, "GET", "/api/live/", context=trusting)[0] == 200
    assert http_call(edge.url, "POST", "/api/cache/t/", b'"v"', TOKEN, trusting)[0] == 201
    status, answer, _ = http_call(edge.url, "GET", "/api/cache/t/", None, TOKEN, trusting)
    assert (status, answer["payload"]["value"]) == (200, "v")
    assert http_call(edge.url, "GET", "/api/cache/t/", context=trusting)[0] == 401
    with pytest.raises(ssl.SSLError):  # a client that does not trust the cert
        http_call(edge.url, "GET", "/api/live/", context=ssl.create_default_context())


def test_zmq_has_curve():
    assert zmq.has("curve")
