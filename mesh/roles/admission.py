"""What the balancer's front refuses, and its answer: the node's limits, checked at the door.

A client may send the balancer whatever docs/protocol.md lets it send a node,
and a message that a node would refuse as a whole (too many frames, a frame
over the request limit) is refused by the balancer itself, answered to its
sender alone: it never reaches a node, so it can spoil no bundle of other
clients' requests and cannot make a node drop the balancer's connection.
Only frame counts and sizes are looked at, plus the id of a refused request
(:func:`mesh.core.wire.peek_id`): the check costs nothing measurable per message.
"""

from __future__ import annotations

from mesh.core import wire
from mesh.core.limits import DEFAULT_MAX_FRAMES, Limits

#: Most frames in one client message, routing id included: a node's default (16).
MAX_FRAMES = DEFAULT_MAX_FRAMES
#: The front's ZMQ_MAXMSGSIZE is this many times the request limit, as a node's
#: api socket: a larger frame drops the sender's connection, without a reply.
CEILING_FACTOR = 2


def request_limit(max_request_bytes: int) -> int:
    """The request limit a balancer starts with: its setting, or a node's default."""
    return max_request_bytes or Limits().request_bytes


def refusal(frames: list[bytes], request_bytes: int) -> list[bytes] | None:
    """The reply to a message (routing id first) a node would refuse; None when it may go on.

    Too many frames: MALFORMED with a nil id, without the envelope, as a node
    answers.  A frame over ``request_bytes``: TOO_LARGE with the id read from
    the request frame's first bytes, envelope echoed.
    """
    count = len(frames)
    if count > MAX_FRAMES:
        reason = (
            f"a message of {count} frames (routing id included) is over the limit of {MAX_FRAMES}"
        )
        return [frames[0], wire.encode_error(None, wire.E_MALFORMED, reason)]
    for frame in frames[1:]:  # the routing id is libzmq's own
        if len(frame) > request_bytes:
            reason = f"a frame of {len(frame)} bytes is over the request limit of {request_bytes}"
            request_id = wire.peek_id(frames[-1])
            return [*frames[:-1], wire.encode_error(request_id, wire.E_TOO_LARGE, reason)]
    return None
