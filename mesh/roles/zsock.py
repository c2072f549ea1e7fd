"""Lean non-blocking multipart receive and send on pyzmq sockets.

pyzmq's ``recv_multipart`` / ``send_multipart`` are written in Python on top
of the Cython socket: each call re-checks every part's type and turns the
option and flag arguments into ``enum`` members, which costs more than the
receive or send itself (about 5.6 us against 2.4 us to receive a two-frame
message here, and 3.3 us against 0.6 us to send one).  The hot loops of the
node and the balancer call the Cython methods directly through these helpers.
Frames are copied into ``bytes``, but for :func:`drain` with ``views=True``
(the node's request socket): there the last frame of a message, when at
least ``VIEW_BYTES`` long, is a ``memoryview`` of the received message, not
a copy (a 1 MB value was copied once more between the socket and the store).
Typed as ``bytes``: whatever reads it (the request decode, a bundle's
unpack, a retry after a full disk) takes any bytes-like object.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import zmq
from zmq.backend import Socket as _CSocket

NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE) | NOBLOCK
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_recv = _CSocket.recv
_send = _CSocket.send
_get = _CSocket.get
#: with ``views``, a last frame of at least this many bytes is not copied
VIEW_BYTES = 64 * 1024


def recv_frames(sock: zmq.Socket) -> list[bytes]:
    """Receive one whole multipart message without blocking; raises ``zmq.Again`` if none."""
    # A zero-copy Frame knows whether more parts follow, which spares the
    # getsockopt(RCVMORE) call (1.3 us: pyzmq checks the option through enums).
    frame = _recv(sock, NOBLOCK, False)
    frames = [frame.bytes]
    while frame.more:
        frame = _recv(sock, NOBLOCK, False)
        frames.append(frame.bytes)
    return frames


def recv_frames_view(sock: zmq.Socket) -> list[bytes]:
    """Like :func:`recv_frames`, a large last frame as a memoryview (see above)."""
    frame = _recv(sock, NOBLOCK, False)
    frames = []
    while frame.more:
        frames.append(frame.bytes)
        frame = _recv(sock, NOBLOCK, False)
    frames.append(frame.bytes if len(frame) < VIEW_BYTES else cast(bytes, frame.buffer))
    return frames


def drain(sock: zmq.Socket, limit: int, views: bool = False) -> list[list[bytes]]:
    """Up to ``limit`` whole messages waiting on ``sock``, without blocking; with
    ``views``, a large last frame of each is a memoryview (see above)."""
    messages: list[list[bytes]] = []
    recv = recv_frames_view if views else recv_frames
    while len(messages) < limit:
        try:
            messages.append(recv(sock))
        except zmq.Again:
            break
    return messages


def drain_with_user_ids(sock: zmq.Socket, limit: int) -> list[tuple[list[bytes], str]]:
    """Like :func:`drain`, each message with the ``User-Id`` its connection's ZAP gave.

    Only for sockets whose every connection went through ZAP (a CURVE server).
    """
    messages: list[tuple[list[bytes], str]] = []
    while len(messages) < limit:
        try:
            frame = _recv(sock, NOBLOCK, False)
        except zmq.Again:
            break
        frames = [frame.bytes]
        while frame.more:
            frame = _recv(sock, NOBLOCK, False)
            frames.append(frame.bytes)
        messages.append((frames, str(frame.get("User-Id"))))
    return messages


def send_frames(sock: zmq.Socket, frames: Sequence[bytes]) -> None:
    """Send ``frames`` (bytes, at least one) as one message without blocking.

    Raises ``zmq.Again`` when the socket cannot take it now, or another
    ``zmq.ZMQError`` (a ROUTER_MANDATORY peer that is gone, say).
    """
    last = len(frames) - 1
    for i in range(last):
        _send(sock, frames[i], _SNDMORE_NOBLOCK)
    _send(sock, frames[last], NOBLOCK)


def readable(sock: zmq.Socket) -> bool:
    """Whether a message waits on ``sock`` (ZMQ_EVENTS; also re-arms ZMQ_FD's edge)."""
    return bool(_get(sock, _EVENTS) & _POLLIN)  # type: ignore[operator]


def socket_events(sock: zmq.Socket) -> int:
    """ZMQ_EVENTS (POLLIN | POLLOUT bits); reading it also re-arms ZMQ_FD's edge."""
    return _get(sock, _EVENTS)  # type: ignore[return-value]


def socket_fd(sock: zmq.Socket) -> int:
    """The socket's ZMQ_FD: readable, edge-triggered, when ZMQ_EVENTS may have changed."""
    fd = sock.get(zmq.FD)
    assert isinstance(fd, int)
    return fd
