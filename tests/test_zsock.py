"""mesh.roles.zsock: draining whole messages, and large last frames as views."""

from __future__ import annotations

import time

import zmq

from mesh.core import wire
from mesh.core.limits import Limits
from mesh.roles.zsock import VIEW_BYTES, drain


def drained(sock: zmq.Socket, count: int, views: bool) -> list[list[bytes]]:
    """``count`` messages from ``sock`` (polled with a deadline)."""
    got: list[list[bytes]] = []
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        sock.poll(100)
        got += drain(sock, count - len(got), views=views)
    assert len(got) == count
    return got


def test_views_only_for_large_last_frames() -> None:
    ctx = zmq.Context()
    try:
        router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
        router.bind("inproc://zsock-views")
        dealer.connect("inproc://zsock-views")
        big = wire.encode_request(7, "SET", "k", b"v" * VIEW_BYTES)
        small = wire.encode_request(8, "SET", "k", b"v")
        for views in (False, True):
            dealer.send_multipart([b"head", big])
            dealer.send(small)
            (one, two) = drained(router, 2, views)
            assert [type(f) for f in one] == [bytes, bytes, memoryview if views else bytes]
            assert [type(f) for f in two] == [bytes, bytes]
            assert bytes(one[-1]) == big and two[-1] == small
            request = wire.decode_request(one[-1], Limits())  # the decode takes a view
            assert (request.id, request.args[1]) == (7, b"v" * VIEW_BYTES)
            assert type(request.args[1]) is bytes  # a copy: the store pins no message
        router.close(0)
        dealer.close(0)
    finally:
        ctx.term()
