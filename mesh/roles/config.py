"""One config object per process role, with named defaults and ``validate()``.

Every field has a flag of its ``pycache`` command and a ``PYCACHE_...``
environment variable (:mod:`mesh.cli`; sizes are in MiB there, bytes here),
and the flags' defaults are read from here.  ``validate()`` raises
:class:`mesh.core.errors.ConfigError` (a ``ValueError``) rather than
asserting, so ``python -O`` keeps the checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from mesh.core.acks import parse_w
from mesh.core.errors import ConfigError
from mesh.core.lagguard import DEFAULT_MAX_LAG_ENTRIES, DEFAULT_MAX_LAG_MS
from mesh.core.limits import (
    DEFAULT_MAX_VALUE_BYTES,
    MIB,
    REQUEST_OVERHEAD_BYTES,
    Limits,
    check_range,
)
from mesh.core.peerfields import NODE_ID_RE
from mesh.core.store import DEFAULT_TOMBSTONE_HORIZON_MS
from mesh.roles.clientplane import load_server_keys, optional_credentials
from mesh.roles.protected import (
    check_protected,
    check_tls,
    endpoint_is_local,
    host_is_loopback,
    load_tokens,
)
from mesh.storage.log import FSYNC_POLICIES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_API = f"tcp://{DEFAULT_HOST}:7001"
DEFAULT_REPL = f"tcp://{DEFAULT_HOST}:7101"
DEFAULT_PUB = f"tcp://{DEFAULT_HOST}:7201"
DEFAULT_FRONT = f"tcp://{DEFAULT_HOST}:7000"
DEFAULT_EDGE_HOST = DEFAULT_HOST
DEFAULT_EDGE_PORT = 5000
#: The first node's HTTP port in a local cluster (``pycache up``).
DEFAULT_NODE_HTTP_PORT = 8001
#: The balancer's ``/metrics`` port in a local cluster (``pycache up``).
DEFAULT_BALANCER_METRICS_PORT = 7300
DEFAULT_EDGE_TIMEOUT = 5.0
#: Seconds an HTTP connection may wait for a request's complete headers (idle or slowloris).
DEFAULT_HTTP_IDLE_TIMEOUT = 60.0
#: Seconds an HTTP request's body may take to arrive after its headers.
DEFAULT_HTTP_BODY_TIMEOUT = 60.0
#: ``NodeConfig.http_port`` value asking the OS for a free port (0 means no HTTP API).
HTTP_PORT_ANY = -1
#: How far a node's wall clock may drift from its peers' (as CockroachDB's --max-offset).
DEFAULT_MAX_CLOCK_OFFSET_MS = 1000
ENDPOINT_RE = re.compile(r"^(tcp://[^\s:]+:(\d{1,5}|\*)|ipc://\S+|inproc://\S+)$")


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node process needs.

    Fields:
        node_id: stable name of the node (letters, digits, ``_.-``).
        data_dir: folder for the node's identity, log and snapshots.
        api: ZeroMQ endpoint of the client ROUTER socket.
        repl: endpoint of the ROUTER socket peers fetch from (HELLO, FETCH).
        pub: endpoint of the PUB socket this node's writes go out on.
        peers: repl endpoints of other nodes (more are learned by HELLO).
        w: default write acknowledgement: a node count, "quorum" or "all".
        ack_timeout_ms: how long a write waits for w nodes before failing.
        pub_hwm: PUB send high-water mark (messages; tiny values force loss).
        fsync: ``always`` (group commit, ack after fsync), ``interval``, ``never``.
        fsync_interval_ms: period of the ``interval`` policy.
        segment_bytes: a log segment is rolled past this size.
        retention_bytes: at most this much log is kept, for peers' catch-up,
            once a snapshot covers it (and at most half the snapshot's size,
            when ``snapshot_bytes`` is set: :mod:`mesh.storage.compaction`).
        snapshot_every: write a snapshot (and compact) after this many entries.
        snapshot_bytes: ... or after this many bytes of log (or the last
            snapshot's size, when more); 0: by entries only.
        max_keys / max_memory: LRU eviction limits (0: unlimited).
        tombstone_horizon_ms: the longest a tombstone is kept (it goes sooner
            once every member has moved past it).
        sweep_interval_ms: period of the active TTL sweep.
        batch_max: most requests handled in one event-loop turn.
        limits: request size limits.
        http_port: port of the node's own HTTP API (0: none, as Redis's ``port 0``;
            ``HTTP_PORT_ANY``: the OS picks, and ``node.json`` says which).
        http_host: address the HTTP API listens on.
        keys: the peer plane's keys folder (``pycache keygen``; see
            :mod:`mesh.roles.trust`): required unless ``insecure``.
        insecure: run the peer plane without authentication or encryption, and
            let the client plane listen beyond loopback without credentials
            (tests only; logged loudly).
        max_clock_offset_ms: how far this node's wall clock may be from the
            majority of its peers' before it stops serving.
        max_lag_entries, max_lag_ms: a node lacking more entries than this
            that its live peers hold, or missing one of them longer than this,
            is ``behind``: it stops serving data until it has caught up
            (:mod:`mesh.core.lagguard`; 0 turns a check off).
        client_keys: the client plane's keys folder (``pycache client-keygen``;
            see :mod:`mesh.roles.clientplane`): the api socket admits only
            those clients' CURVE keys.  Required for an api beyond loopback
            unless ``insecure``.
        token_file: bearer tokens of the HTTP API (one per line); required
            for HTTP beyond loopback unless ``insecure``.
        tls_cert / tls_key: serve the HTTP API over TLS (PEM files, both or neither).
        http_max_connections / http_idle_timeout / http_body_timeout: the HTTP
            API's connection limits, as ``EdgeConfig``'s ``max_connections``,
            ``idle_timeout`` and ``body_timeout``.
        resp: ``HOST:PORT`` of the RESP (Redis protocol) front ('': none; port
            ``*``: the OS picks, see ``node.json``); AUTH takes a ``token_file`` token.
    """

    node_id: str
    data_dir: str
    api: str = DEFAULT_API
    repl: str = DEFAULT_REPL
    pub: str = DEFAULT_PUB
    peers: tuple[str, ...] = ()
    w: int | str = 1
    ack_timeout_ms: int = 2000
    pub_hwm: int = 10_000
    fsync: str = "always"
    fsync_interval_ms: int = 100
    segment_bytes: int = 64 * MIB
    retention_bytes: int = 1024 * MIB
    snapshot_every: int = 1_000_000
    snapshot_bytes: int = 64 * MIB
    max_keys: int = 0
    max_memory: int = 0
    tombstone_horizon_ms: int = DEFAULT_TOMBSTONE_HORIZON_MS
    sweep_interval_ms: int = 100
    batch_max: int = 1024
    limits: Limits = field(default_factory=Limits)
    http_port: int = 0
    http_host: str = DEFAULT_EDGE_HOST
    keys: str = ""
    insecure: bool = False
    max_clock_offset_ms: int = DEFAULT_MAX_CLOCK_OFFSET_MS
    max_lag_entries: int = DEFAULT_MAX_LAG_ENTRIES
    max_lag_ms: int = DEFAULT_MAX_LAG_MS
    client_keys: str = ""
    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    http_max_connections: int = 0
    http_idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT
    http_body_timeout: float = DEFAULT_HTTP_BODY_TIMEOUT
    resp: str = ""

    def validate(self) -> NodeConfig:
        """Raise ConfigError naming the first invalid field; return self."""
        if not NODE_ID_RE.fullmatch(self.node_id or ""):
            raise ConfigError(f"node_id {self.node_id!r}: use 1-64 letters, digits, '_', '.', '-'")
        if not self.data_dir:
            raise ConfigError("data_dir is required")
        for name in ("api", "repl", "pub"):
            check_endpoint(name, getattr(self, name))
        for name in ("repl", "pub"):  # peers connect to these, and take only tcp:// (HELLO)
            if not getattr(self, name).startswith("tcp://"):
                raise ConfigError(f"{name} {getattr(self, name)!r}: peers reach it over tcp://")
        for peer in self.peers:
            check_endpoint("peer", peer)
            if peer.endswith(":*"):
                raise ConfigError(f"peer {peer!r}: name the port the peer bound, not '*'")
        try:
            w = parse_w(self.w)
        except ValueError as exc:
            raise ConfigError(f"{exc}, not {self.w!r}") from None
        object.__setattr__(self, "w", w)  # frozen; "QUORUM" is kept as "quorum", like the wire's
        check_range("ack_timeout_ms", self.ack_timeout_ms, 1, 600_000)
        check_range("pub_hwm", self.pub_hwm, 0, 10_000_000)
        if self.fsync not in FSYNC_POLICIES:
            choices = ", ".join(FSYNC_POLICIES)
            raise ConfigError(f"fsync must be one of {choices}, not {self.fsync!r}")
        check_range("fsync_interval_ms", self.fsync_interval_ms, 1, 60_000)
        check_range("segment_bytes", self.segment_bytes, 4096, 4096 * MIB)
        check_range("retention_bytes", self.retention_bytes, 0, 1 << 50)
        check_range("snapshot_every", self.snapshot_every, 0, 1 << 40)
        check_range("snapshot_bytes", self.snapshot_bytes, 0, 1 << 50)
        check_range("max_keys", self.max_keys, 0, 1 << 40)
        check_range("max_memory", self.max_memory, 0, 1 << 50)
        check_range("tombstone_horizon_ms", self.tombstone_horizon_ms, 1000, 1 << 40)
        check_range("sweep_interval_ms", self.sweep_interval_ms, 1, 60_000)
        check_range("batch_max", self.batch_max, 1, 1_000_000)
        check_range("http_port", self.http_port, HTTP_PORT_ANY, 65535)
        if self.http_port and not self.http_host:
            raise ConfigError("http_host is required with http_port")
        check_range("max_clock_offset_ms", self.max_clock_offset_ms, 1, 3_600_000)
        check_range("max_lag_entries", self.max_lag_entries, 0, 1 << 40)
        check_range("max_lag_ms", self.max_lag_ms, 0, 3_600_000)
        check_http_limits(
            "http_", self.http_max_connections, self.http_idle_timeout, self.http_body_timeout
        )
        self.limits.validate()
        self._validate_client_plane()
        if not self.keys and not self.insecure:
            raise ConfigError(
                "no peer credentials: give --keys DIR (create it with `pycache keygen`), "
                "or --insecure (tests only)"
            )
        return self

    def _validate_client_plane(self) -> None:
        if self.client_keys:
            load_server_keys(self.client_keys)
        check_protected(
            "api",
            self.api,
            endpoint_is_local(self.api),
            bool(self.client_keys) or self.insecure,
            "--client-keys DIR",
        )
        if self.token_file:
            load_tokens(self.token_file)
        check_tls(self.tls_cert, self.tls_key)
        if self.http_port:
            check_protected(
                "HTTP on",
                self.http_host,
                host_is_loopback(self.http_host),
                bool(self.token_file) or self.insecure,
                "--token-file FILE",
            )
        check_resp(self.resp, bool(self.token_file) or self.insecure)


def resp_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``tcp://HOST:PORT`` of a RESP front (port ``*`` or 0: the OS picks)."""
    rest = value[len("tcp://") :] if value.startswith("tcp://") else value
    host, sep, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if (
        not sep
        or not host
        or not (port == "*" or port.isdigit())
        or int(port.strip("*") or 0) > 65535
    ):
        raise ConfigError(f"resp {value!r}: give HOST:PORT or tcp://HOST:PORT (port '*': any)")
    return host, 0 if port == "*" else int(port)


def check_resp(resp: str, has_credentials: bool) -> None:
    """A RESP front's address, and protected mode: beyond loopback only with tokens."""
    if resp:
        host, _ = resp_address(resp)
        check_protected(
            "RESP on", host, host_is_loopback(host), has_credentials, "--token-file FILE"
        )


@dataclass(frozen=True)
class BalancerConfig:
    """Everything one balancer process needs.

    Fields:
        front: ROUTER endpoint clients connect to.
        nodes: the nodes' client API endpoints.
        health_ms: period of the HEALTH probe to each node.
        hang_ms: a node silent this long is out of rotation (a hung node).
        wait_ms: how long a request waits for a ready node before NOT_READY.
        max_attempts: sends of one request, retries on failover included.
        deadline_ms: a node must start a forwarded request within this long,
            else it refuses it; a failed node's requests are resent after it.
        batch_per_node: requests in a row sent to one node before the turn
            moves on (1: strict round robin, request by request).
        max_request_bytes: the front's request limit (0: a node's default,
            8 MiB + 64 KiB); the nodes' own, when lower, applies; a frame over
            twice it drops the sender's connection.
        insecure: let the front listen beyond loopback without client
            credentials (tests only; logged loudly).
        client_keys: the client plane's keys folder: the front admits only
            those clients' CURVE keys (required beyond loopback unless ``insecure``).
        client_key / server_key: the balancer's own client key (a
            ``.key_secret`` file) and the nodes' server key (file or Z85), when
            the nodes' api sockets require CURVE (``server_key`` defaults to
            ``client_keys``'s server key).
        metrics_host / metrics_port: where ``/metrics`` is served (port 0:
            nowhere, the default; ``HTTP_PORT_ANY``: the OS picks, and the
            status file says which).
        resp: ``HOST:PORT`` of the RESP front ('': none); each connection is
            pinned to one ready node.
        token_file: tokens, one per line: RESP AUTH and the ``/metrics`` bearer
            token (required for either beyond loopback unless ``insecure``).
    """

    front: str = DEFAULT_FRONT
    nodes: tuple[str, ...] = ()
    health_ms: int = 100
    hang_ms: int = 600
    wait_ms: int = 1000
    max_attempts: int = 3
    deadline_ms: int = 400
    batch_per_node: int = 32
    max_request_bytes: int = 0  # 0: a node's default request limit
    insecure: bool = False
    client_keys: str = ""
    client_key: str = ""
    server_key: str = ""
    metrics_host: str = DEFAULT_HOST
    metrics_port: int = 0
    resp: str = ""
    token_file: str = ""

    def validate(self) -> BalancerConfig:
        """Raise ConfigError naming the first invalid field; return self."""
        check_endpoint("front", self.front)
        if not self.nodes:
            raise ConfigError("a balancer needs at least one node endpoint")
        for node in self.nodes:
            check_endpoint("node", node)
        check_range("health_ms", self.health_ms, 10, 10_000)
        check_range("hang_ms", self.hang_ms, 50, 60_000)
        check_range("wait_ms", self.wait_ms, 0, 600_000)
        check_range("max_attempts", self.max_attempts, 1, 100)
        check_range("deadline_ms", self.deadline_ms, 10, 600_000)
        check_range("batch_per_node", self.batch_per_node, 1, 4096)
        check_range("max_request_bytes", self.max_request_bytes, 0, 1024 * MIB)
        check_range("metrics_port", self.metrics_port, HTTP_PORT_ANY, 65535)
        if self.metrics_port and not self.metrics_host:
            raise ConfigError("metrics_host is required with metrics_port")
        if self.token_file:
            load_tokens(self.token_file)
        if self.metrics_port:
            local, tokens = host_is_loopback(self.metrics_host), bool(self.token_file)
            check_protected(
                "/metrics", self.metrics_host, local, tokens or self.insecure, "--token-file FILE"
            )
        if self.client_keys:
            load_server_keys(self.client_keys)
        check_protected(
            "front",
            self.front,
            endpoint_is_local(self.front),
            bool(self.client_keys) or self.insecure,
            "--client-keys DIR",
        )
        optional_credentials(self.client_key, self.server_key, self.client_keys)
        check_resp(self.resp, bool(self.token_file) or self.insecure)
        return self


@dataclass(frozen=True)
class EdgeConfig:
    """Everything one HTTP edge process needs.

    Fields:
        host: address to listen on.
        port: TCP port to listen on (0: the OS picks; ``status_file`` says which).
        backend: ZeroMQ endpoint(s) requests go to: the balancer's front.
        timeout: seconds one backend request may take before the answer is 503.
        max_body_bytes: largest request body; a larger one is answered 413.
        status_file: where to write ``{"pid", "http", "backend"}`` once listening
            (empty: nowhere).
        insecure: listen beyond loopback without client credentials (tests
            only; logged loudly).
        token_file: bearer tokens (one per line); required beyond loopback
            unless ``insecure``.
        tls_cert / tls_key: serve HTTPS (PEM files, both or neither).
        client_key / server_key: the edge's client key (a ``.key_secret``
            file) and the backend's server key (file or Z85), when the backend
            requires CURVE.
        max_connections: most open HTTP connections (0: the open-file limit
            less 128; a larger value is lowered to that, with a warning).
        idle_timeout: seconds a connection may wait for a request's complete
            headers (an idle keep-alive connection, or slowloris headers).
        body_timeout: seconds a request's body may take after its headers.
    """

    host: str = DEFAULT_EDGE_HOST
    port: int = DEFAULT_EDGE_PORT
    backend: tuple[str, ...] = (DEFAULT_FRONT,)
    timeout: float = DEFAULT_EDGE_TIMEOUT
    max_body_bytes: int = DEFAULT_MAX_VALUE_BYTES + REQUEST_OVERHEAD_BYTES
    status_file: str = ""
    insecure: bool = False
    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    client_key: str = ""
    server_key: str = ""
    max_connections: int = 0
    idle_timeout: float = DEFAULT_HTTP_IDLE_TIMEOUT
    body_timeout: float = DEFAULT_HTTP_BODY_TIMEOUT

    def validate(self) -> EdgeConfig:
        """Raise ConfigError naming the first invalid field; return self."""
        if not self.host:
            raise ConfigError("host is required")
        check_range("port", self.port, 0, 65535)
        if not self.backend:
            raise ConfigError("an edge needs a backend endpoint")
        for endpoint in self.backend:
            check_endpoint("backend", endpoint)
        check_seconds("timeout", self.timeout)
        check_http_limits("", self.max_connections, self.idle_timeout, self.body_timeout)
        check_range("max_body_bytes", self.max_body_bytes, 1, 1024 * MIB)
        if self.token_file:
            load_tokens(self.token_file)
        check_tls(self.tls_cert, self.tls_key)
        check_protected(
            "HTTP on",
            self.host,
            host_is_loopback(self.host),
            bool(self.token_file) or self.insecure,
            "--token-file FILE",
        )
        optional_credentials(self.client_key, self.server_key)
        return self


def _port(endpoint: str) -> int:
    """The port of a ``tcp://host:port`` endpoint."""
    return int(endpoint.rsplit(":", 1)[1])


#: ``pycache up``'s RESP ports: the balancer's is Redis's own, so clients need no
#: change; node i listens on 6381 + i - 1 (6380 is left to a Redis replica's habit).
DEFAULT_BALANCER_RESP_PORT = 6379
DEFAULT_NODE_RESP_PORT = 6381


@dataclass(frozen=True)
class Ports:
    """First ports of each kind in a local cluster (``pycache up``).

    Node i gets first + i - 1.  0 everywhere: the OS picks every port.
    """

    api: int = _port(DEFAULT_API)
    repl: int = _port(DEFAULT_REPL)
    pub: int = _port(DEFAULT_PUB)
    http: int = DEFAULT_NODE_HTTP_PORT
    balancer: int = _port(DEFAULT_FRONT)
    edge: int = DEFAULT_EDGE_PORT
    metrics: int = DEFAULT_BALANCER_METRICS_PORT  # the balancer's /metrics
    resp: int = DEFAULT_NODE_RESP_PORT
    balancer_resp: int = DEFAULT_BALANCER_RESP_PORT


def check_endpoint(name: str, endpoint: str) -> None:
    """Raise ConfigError unless ``endpoint`` looks like a ZeroMQ endpoint."""
    found = ENDPOINT_RE.match(endpoint) if isinstance(endpoint, str) else None
    if found is None or (found[2] not in (None, "*") and int(found[2]) > 65535):
        raise ConfigError(f"{name} {endpoint!r} is not an endpoint like tcp://127.0.0.1:7001")


def check_seconds(name: str, seconds: object) -> None:
    """Raise ConfigError unless ``seconds`` is a number in (0, 3600]."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ConfigError(f"{name} must be a number of seconds, not {seconds!r}")
    if not 0 < seconds <= 3600:
        raise ConfigError(f"{name} must be in (0, 3600] seconds, not {seconds!r}")


def check_http_limits(prefix: str, max_connections: int, idle: float, body: float) -> None:
    """Raise ConfigError on an HTTP connection cap or timeout out of range."""
    check_range(prefix + "max_connections", max_connections, 0, 1 << 24)
    check_seconds(prefix + "idle_timeout", idle)
    check_seconds(prefix + "body_timeout", body)
