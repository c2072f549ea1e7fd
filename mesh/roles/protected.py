"""Protected mode, as Redis has it: what may listen beyond loopback, and on what terms.

On loopback, clients need no credentials.  A client-facing socket (a node's
api ROUTER, a balancer's front, a node's HTTP API, the edge) bound to any
other address needs client credentials (CURVE client keys for ZeroMQ, bearer
tokens for HTTP) or an explicit ``--insecure``.  The configs call
:func:`check_protected` in ``validate()``, so a misconfigured process stops at
once with one line.

An address is loopback when it is ``127.x.x.x``, ``localhost`` or ``::1``;
``*``, ``0.0.0.0``, ``::`` and every other address or name are not (names are
never resolved: only ``localhost`` counts).  ``ipc://`` and ``inproc://``
endpoints are local.

HTTP credentials live here too: the token file (one token per line, blank
lines and ``#`` comments ignored), the constant-time check of an
``Authorization: Bearer`` header, and the TLS context for ``--tls-cert`` and
``--tls-key``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
from collections.abc import Sequence
from pathlib import Path

from mesh.core.errors import ConfigError

logger = logging.getLogger(__name__)

#: HTTP paths served without a token: liveness and readiness probes.
OPEN_PATHS = frozenset({"/api/health", "/api/live", "/api/ready"})
BEARER = "Bearer "


def host_is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name, never resolved) is a loopback address."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, an interface or '*': not provably loopback


def endpoint_is_local(endpoint: str) -> bool:
    """Whether a ZeroMQ endpoint is reachable only from this host (loopback, ipc, inproc)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    if ";" in host:  # a source address: 'tcp://src;dest:port' connects, never binds
        return False
    return host_is_loopback(host)


def check_protected(what: str, where: str, local: bool, has_credentials: bool, hint: str) -> None:
    """Raise ConfigError when ``what`` listens beyond loopback with no credentials.

    ``hint`` names the flag that gives the credentials; ``--insecure`` is
    handled by the caller (it passes ``has_credentials=True``).
    """
    if not local and not has_credentials:
        raise ConfigError(
            f"{what} {where} listens beyond loopback: give client credentials ({hint}) "
            "or --insecure"
        )


# --------------------------------------------------------------------------- HTTP tokens


def load_tokens(path: str | Path) -> tuple[bytes, ...]:
    """The tokens of a token file; ConfigError if it is unreadable or holds none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file {path}: {exc}") from None
    tokens = []
    for line in text.splitlines():
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if any(c.isspace() for c in token):
            raise ConfigError(f"token file {path}: a token must not contain spaces")
        tokens.append(token.encode())
    if not tokens:
        raise ConfigError(f"token file {path} holds no token")
    return tuple(tokens)


def make_token_file(path: str | Path) -> bool:
    """Write a token file with one new random token, unless ``path`` exists; return
    whether it wrote one.  The file is readable by its owner only."""
    target = Path(path)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    import secrets  # only here: its imports (hmac, hashlib) cost a node's start-up ~5 ms

    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return True


def bearer_ok(authorization: str | None, tokens: Sequence[bytes]) -> bool:
    """Whether an ``Authorization`` header carries one of ``tokens`` (constant-time compare)."""
    if not authorization or authorization[: len(BEARER)].lower() != BEARER.lower():
        return False
    import hmac  # here, not at the top: hashlib's import costs a node's start-up ~5 ms

    given = authorization[len(BEARER) :].strip().encode(errors="replace")
    found = False
    for token in tokens:  # every token compared: the time says nothing about which matched
        found |= hmac.compare_digest(given, token)
    return found


def is_open_path(path: str) -> bool:
    """Whether an HTTP path is served without a token (the probes)."""
    return path.split("?", 1)[0].rstrip("/") in OPEN_PATHS


# --------------------------------------------------------------------------- TLS


def check_tls(cert: str, key: str) -> None:
    """ConfigError unless the TLS cert and key are both given (or neither) and load."""
    if bool(cert) != bool(key):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    if cert:
        tls_context(cert, key)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context (Tornado's ``ssl_options``) from a PEM cert chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS cert {cert} and key {key}: {exc}") from None
    return context


def warn_if_open(host: str, token_file: str, what: str) -> None:
    """The loud line of ``--insecure``: HTTP beyond loopback that anyone may use."""
    if not token_file and not host_is_loopback(host):
        logger.warning(
            "INSECURE: %s on %s serves anyone who can reach it, with no token (--insecure)",
            what,
            host,
        )
