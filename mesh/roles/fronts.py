"""The extra fronts of a node (HTTP API, RESP) and of a balancer (RESP).

A node serves them in its own loop, through its own API socket (the inproc
one when its api requires CURVE): requests take the same path as any
client's.  A balancer's loop is a plain ZeroMQ poll loop, so its RESP front
runs an asyncio loop in a thread of its own (:class:`BalancerResp`), with a
connection to every node (:class:`mesh.roles.resp_backend.PinnedBackend`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import TYPE_CHECKING

import zmq

from mesh.core.errors import ConfigError
from mesh.roles.clientplane import optional_credentials
from mesh.roles.config import BalancerConfig, NodeConfig, resp_address
from mesh.roles.protected import host_is_loopback, load_tokens

if TYPE_CHECKING:
    from mesh.roles.node import Node
    from mesh.roles.resp_backend import NodeBackend, PinnedBackend
    from mesh.roles.resp_server import RespServer

log = logging.getLogger(__name__)


async def start_node_fronts(node: Node, backend: str) -> None:
    """Start the node's HTTP API (``http_port``) and RESP front (``resp``), if asked."""
    config = node.config
    if config.http_port:
        from mesh.roles.edge import serve_node_http  # tornado only where HTTP is served
        from mesh.roles.node_families import node_registry

        node.http = serve_node_http(config, backend, node.ctx, node_registry(node))
    if config.resp:
        from mesh.roles.resp_backend import NodeBackend  # hiredis and RESP only where served

        node.resp = await serve_resp(config, NodeBackend(node.ctx, backend, _timeout(config)))


async def stop_node_fronts(node: Node) -> None:
    """Stop what :func:`start_node_fronts` started."""
    try:
        if node.resp is not None:
            await node.resp.stop()
    finally:
        if node.http is not None:
            await node.http.stop()


def _timeout(config: NodeConfig) -> float:
    return max(10.0, config.ack_timeout_ms / 1000 + 1)


async def serve_resp(
    config: NodeConfig | BalancerConfig, backend: NodeBackend | PinnedBackend
) -> RespServer:
    """A RESP server on ``config.resp`` for ``backend``, listening."""
    from mesh.roles.resp_server import RespServer  # hiredis and RESP only where served

    host, port = resp_address(config.resp)
    role = "node" if isinstance(config, NodeConfig) else "balancer"
    limits = config.limits.request_bytes if isinstance(config, NodeConfig) else 8 * 1024 * 1024
    tokens = load_tokens(config.token_file) if config.token_file else ()
    server = RespServer(
        backend, host, port, tokens=tokens, role=role, max_request_bytes=limits + 65536
    )
    try:
        await server.start()
    except OSError as exc:
        backend.close()
        raise ConfigError(f"cannot listen for RESP on {host}:{port}: {exc.strerror}") from None
    if not tokens and not host_is_loopback(host):
        log.warning("RESP on %s:%d without AUTH tokens (--insecure)", host, server.port)
    log.info("%s serves RESP on %s", role, server.url)
    return server


class BalancerResp:
    """A balancer's RESP front: an asyncio loop in a thread, its own ZeroMQ context."""

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config
        self.url = ""
        self.status: dict[str, str] = {}
        self.error: Exception | None = None
        self._ctx = zmq.Context()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="resp", daemon=True)

    def start(self) -> BalancerResp:
        """With ``config.resp``, start serving (its error raised, all closed); then
        ``status`` is ``{"resp": "tcp://host:port"}`` as bound (else ``{}``)."""
        if not self.config.resp:
            return self
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            self.stop()
            raise self.error
        self.status = {"resp": self.url}
        return self

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        from mesh.roles.resp_backend import PinnedBackend  # RESP only where served

        config = self.config
        try:
            credentials = optional_credentials(
                config.client_key, config.server_key, config.client_keys
            )
            backend = PinnedBackend(
                self._ctx,
                config.nodes,
                credentials,
                health_ms=config.health_ms,
                hang_ms=config.hang_ms,
                wait_ms=max(config.wait_ms, 3000),
                deadline_ms=config.deadline_ms,
            )
            server = await serve_resp(config, backend)
        except Exception as exc:  # reported by start()
            self.error = exc
            self._ready.set()
            return
        self.url = server.url
        self._stopped = asyncio.Event()
        self._ready.set()
        await self._stopped.wait()
        await server.stop()

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread.ident is not None:
            self._thread.join(5)
        elif not self._loop.is_closed():
            self._loop.close()
        if not self._ctx.closed:
            self._ctx.term()
