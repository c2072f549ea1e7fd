"""The one exception tree of PyCache.

::

    PyCacheError
    ├── ConfigError            (also a ValueError) a bad option or config value
    ├── ProtocolError          a frame that cannot be decoded or is invalid
    ├── Timeout                a wait passed its deadline (also the built-in TimeoutError)
    ├── ConnectionFailed       the client could not reach any endpoint, or is closed
    │                          (also the built-in ConnectionError)
    └── ServerError            the server answered with an error reply (has .code)
        ├── BadRequest         codes 1-5: malformed frame, version, op, args, key
        │                      (a key over its limit is a bad key: code 5)
        ├── TooLarge           code 6: value, request or item count over its limit
        ├── NotReady           code 8: the node cannot serve yet
        ├── WriteNotAcknowledged code 9: the requested ack level was not met
        ├── DeadlinePassed     code 10: not run before the balancer's deadline
        │                      (also a Timeout)
        ├── NoSpace            code 11: the node's disk is full; the write was not applied
        ├── NotInteger         code 12: INCRBY on a value that is not an int64, or overflow
        └── InternalError      code 99: a bug on the server side

Library code translates zmq and msgpack errors into these at the boundary
(``raise Timeout(...) from exc``); no zmq or msgpack exception escapes the
client.  Wire codes are defined in :mod:`mesh.core.wire`.
"""

from __future__ import annotations


class PyCacheError(Exception):
    """Base of every error PyCache raises on purpose."""


class ConfigError(PyCacheError, ValueError):
    """An option or configuration value is invalid."""


class ProtocolError(PyCacheError):
    """A frame could not be decoded or broke the protocol.

    ``code`` is the wire error code that describes the problem and ``request_id``
    the id of the offending request when it could be read (else ``None``).
    """

    def __init__(self, code: int, reason: str, request_id: int | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.request_id = request_id


class Timeout(PyCacheError, TimeoutError):
    """A request or wait did not complete before its deadline (also a TimeoutError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ConnectionFailed(PyCacheError, ConnectionError):
    """No endpoint could be reached, or the client is closed (also a ConnectionError)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class ServerError(PyCacheError):
    """The server replied with an error code and a reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"[{code}] {reason}")
        self.code = code
        self.reason = reason


class BadRequest(ServerError):
    """The request was malformed: frame, version, op, arguments or key."""


class TooLarge(ServerError):
    """A value, a whole request or an item count was over its configured limit."""


class NotReady(ServerError):
    """The node is still replaying or catching up and cannot serve yet."""


class WriteNotAcknowledged(ServerError):
    """The write was applied locally but not by as many nodes as requested."""


class DeadlinePassed(ServerError, Timeout):
    """A balancer's run-by deadline passed before a node ran the request (not run)."""


class NoSpace(ServerError):
    """The node could not log the write (its disk is full): nothing was applied."""


class InternalError(ServerError):
    """The server hit a bug while handling the request."""


class NotInteger(ServerError):
    """INCRBY on a value that is not a base-10 int64, or its result would overflow."""
