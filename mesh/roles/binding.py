"""Binding a listening address; a failure is one line naming the address.

``bind(sock, "api", endpoint)`` binds a ZeroMQ socket; on failure it closes
the socket, runs ``on_error`` (close what else was opened: a context with an
open socket or a running ZAP handler blocks ``ctx.term()`` forever) and raises
:class:`AddressError`, whose text is e.g. ``api tcp://127.0.0.1:7001: address
already in use``; the command line prints it as one line and exits 2.
:func:`address_error` makes the same error from an ``OSError`` (HTTP ports).
"""

from __future__ import annotations

from collections.abc import Callable

import zmq

from mesh.core.errors import PyCacheError


class AddressError(PyCacheError):
    """An address could not be bound (taken, not local, malformed)."""


def address_error(name: str, address: str, exc: OSError | zmq.ZMQError) -> AddressError:
    """``<name> <address>: <reason>``, the reason without the library's decorations."""
    errno = exc.errno
    reason = zmq.strerror(errno) if errno else str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    return AddressError(f"{name} {address}: {reason[:1].lower()}{reason[1:]}")


def bind(
    sock: zmq.Socket, name: str, endpoint: str, on_error: Callable[[], object] | None = None
) -> None:
    """Bind ``sock`` to ``endpoint``; on failure close it, ``on_error()``, :class:`AddressError`."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close(0)
        if on_error is not None:
            on_error()
        raise address_error(name, endpoint, exc) from None
