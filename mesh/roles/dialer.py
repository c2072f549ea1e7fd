"""Connect sockets to ``tcp://name:port`` without libzmq resolving the name.

libzmq resolves a ``tcp://name:port`` endpoint on every (re)connect inside
its I/O thread, which every socket of the context shares: a peer whose name
takes seconds to resolve (a container that is down, a slow resolver) stalls
the node's API and HTTP sockets for those seconds, on every retry (issue
16.3).  A :class:`Dialer` resolves names in its own threads instead, connects
the sockets to the address, and resolves each name again every
``RERESOLVE_MS`` (a name may move to a new address, as a restarted container
does): when the address changed, the socket is disconnected from the old one
and connected to the new one.  Addresses (``tcp://127.0.0.1:7101``) and other
transports are connected at once, as before.  :meth:`poll` is called from the
owner's loop; it never waits for a lookup.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import threading
from concurrent.futures import Future

import zmq

log = logging.getLogger(__name__)

#: How often a name is looked up again (ms); a failed lookup is retried as often.
RERESOLVE_MS = 5000
_TCP = re.compile(r"^tcp://(?P<host>[^\[\]:/;]+):(?P<port>\d{1,5})$")


def name_of(endpoint: str) -> tuple[str, int] | None:
    """``(host, port)`` when ``endpoint`` is ``tcp://name:port`` with a name, else None."""
    match = _TCP.match(endpoint)
    if match is None or match["host"] == "*":
        return None
    try:
        ipaddress.ip_address(match["host"])
        return None  # an address: nothing to resolve
    except ValueError:
        return match["host"], int(match["port"])


def resolve(host: str, port: int) -> str:
    """``tcp://address:port`` for ``host`` (IPv4 preferred); blocks: call from a thread."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    address = str(infos[0][4][0])
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


class _Target:
    """One name a socket should be connected to, and where it is connected now."""

    def __init__(self, sock: zmq.Socket, endpoint: str, host: str, port: int) -> None:
        self.sock, self.endpoint, self.host, self.port = sock, endpoint, host, port
        self.address: str | None = None  # connected to this, if anything
        self.lookup: Future[str] | None = None
        self.next_lookup = 0  # monotonic ms
        self.failed = False


class Dialer:
    """Connects sockets to endpoints, resolving names off the caller's thread."""

    def __init__(self, reresolve_ms: int = RERESOLVE_MS) -> None:
        self.reresolve_ms = reresolve_ms
        self._targets: dict[tuple[int, str], _Target] = {}

    def connect(self, sock: zmq.Socket, endpoint: str, now: int = 0) -> None:
        """Connect ``sock`` to ``endpoint``: at once for an address, after a lookup for a name.

        Raises :class:`zmq.ZMQError` for an endpoint libzmq refuses, as
        ``sock.connect`` does.
        """
        named = name_of(endpoint)
        if named is None:
            sock.connect(endpoint)
            return
        key = (id(sock), endpoint)
        if key not in self._targets:
            self._targets[key] = target = _Target(sock, endpoint, *named)
            self._start(target, now)

    def disconnect(self, sock: zmq.Socket, endpoint: str) -> None:
        """Undo :meth:`connect`."""
        target = self._targets.pop((id(sock), endpoint), None)
        if target is None:
            sock.disconnect(endpoint)
        elif target.address is not None:
            target.sock.disconnect(target.address)

    def forget(self, sock: zmq.Socket) -> None:
        """Drop every target of ``sock`` (about to be closed)."""
        for key in [k for k in self._targets if k[0] == id(sock)]:
            del self._targets[key]

    def address_of(self, sock: zmq.Socket, endpoint: str) -> str | None:
        """Where ``sock`` is connected for ``endpoint`` (``endpoint`` itself for an address)."""
        if name_of(endpoint) is None:
            return endpoint
        target = self._targets.get((id(sock), endpoint))
        return None if target is None else target.address

    def poll(self, now: int) -> None:
        """Connect the sockets whose lookups finished; start the lookups that are due."""
        for target in list(self._targets.values()):
            if target.lookup is not None and target.lookup.done():
                self._finish(target, target.lookup)
                target.lookup = None
            if target.lookup is None and now >= target.next_lookup:
                self._start(target, now)

    def _start(self, target: _Target, now: int) -> None:
        # A daemon thread per lookup (at most one per target at a time): a
        # lookup that hangs must not hold up the process's exit, as a pool's would.
        lookup: Future[str] = Future()
        target.lookup = lookup
        threading.Thread(
            target=_run_lookup, args=(lookup, target.host, target.port), daemon=True
        ).start()
        target.next_lookup = now + self.reresolve_ms

    def _finish(self, target: _Target, lookup: Future[str]) -> None:
        try:
            address = lookup.result()
        except OSError as exc:
            if not target.failed:
                log.warning("cannot resolve %s (%s): retried", target.endpoint, exc)
            target.failed = True
            return
        target.failed = False
        if address == target.address:
            return
        try:
            if target.address is not None:
                target.sock.disconnect(target.address)
            if address.startswith("tcp://["):
                target.sock.setsockopt(zmq.IPV6, 1)
            target.sock.connect(address)
        except zmq.ZMQError as exc:
            log.warning("cannot connect to %s at %s: %s", target.endpoint, address, exc)
            target.address = None
            return
        log.info("%s is at %s", target.endpoint, address)
        target.address = address

    def close(self) -> None:
        """Stop looking names up (a lookup under way is left to finish on its own)."""
        self._targets.clear()


def _run_lookup(lookup: Future[str], host: str, port: int) -> None:
    try:
        lookup.set_result(resolve(host, port))
    except OSError as exc:
        lookup.set_exception(exc)
