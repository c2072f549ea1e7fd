"""The frames around a request or reply on their way through a balancer: bundles,
deadlines, and a peek at a message's head.

A balancer forwards each client message to a node as its frames (routing
envelope, then the payload of :mod:`mesh.core.wire`), and may add:

    deadline frame  right before the payload: DEADLINE_MAGIC (4 bytes) + u64 BE
                    wall-clock ms by which the node must start the request
    bundle          a message of two frames, BUNDLE_MAGIC and the msgpack array
                    of up to BUNDLE_MAX messages, each the array of its frames

:func:`peek_head` reads a payload's id and op (or reply code) without decoding
the rest: the balancer does so on every message it forwards.
"""

from __future__ import annotations

from typing import Any

import msgpack

from mesh.core.errors import ProtocolError
from mesh.core.wire import E_MALFORMED, MAX_ID, VERSION

#: An envelope frame a balancer puts right before the payload: magic + u64 BE
#: wall-clock ms.  A node that gets the request after that time does not run it
#: and answers DEADLINE, so the balancer may safely send it elsewhere.
DEADLINE_MAGIC = b"\x00dl:"


#: First frame of a bundle: several requests (or replies) in one message, each
#: as the list of its frames (envelope and body), msgpack-packed in the next frame.
BUNDLE_MAGIC = b"\x00bundle"
#: Most requests in one bundle.
BUNDLE_MAX = 4096


def pack_bundle(messages: list[list[bytes]]) -> list[bytes]:
    """The two frames of a bundle carrying ``messages``."""
    return [BUNDLE_MAGIC, msgpack.packb(messages)]


def unpack_bundle(frame: bytes, max_frames: int) -> list[list[bytes]]:
    """The messages in a bundle's second frame; raises ProtocolError if malformed."""
    try:
        messages = msgpack.unpackb(frame, max_bin_len=len(frame), max_str_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(E_MALFORMED, f"undecodable bundle: {exc}") from None
    if (
        type(messages) is not list
        or not 0 < len(messages) <= BUNDLE_MAX
        or not all(
            type(m) is list and 0 < len(m) <= max_frames and all(type(f) is bytes for f in m)
            for m in messages
        )
    ):
        raise ProtocolError(E_MALFORMED, f"a bundle is a list of 1 to {BUNDLE_MAX} lists of frames")
    return messages


def deadline_frame(deadline_ms: int) -> bytes:
    """The envelope frame carrying a run-by deadline (wall-clock ms)."""
    return DEADLINE_MAGIC + deadline_ms.to_bytes(8, "big")


def frame_deadline(frame: bytes) -> int | None:
    """The deadline in a deadline frame, or None for any other frame."""
    if len(frame) == 12 and frame[:4] == DEADLINE_MAGIC:
        return int.from_bytes(frame[4:], "big")
    return None


_UINT = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}


def peek_head(frame: bytes) -> tuple[int | None, Any]:
    """``(id, second element)`` of a request or reply frame, without decoding the rest.

    The second element is the op (bytes) of a request or the code (int) of a
    reply.  Used by the balancer on every message, so the common encodings
    (fixarray, an unsigned id, a fixstr op or a small code) are read by hand;
    anything else goes through msgpack.  ``(None, None)`` when unreadable.
    """
    if len(frame) > 3 and frame[0] == VERSION and 0x92 <= frame[1] <= 0x9F:
        marker, pos = frame[2], 3
        if marker < 0x80:
            request_id = marker
        elif marker in _UINT:
            size = _UINT[marker]
            request_id, pos = int.from_bytes(frame[3 : 3 + size], "big"), 3 + size
        else:
            return _peek_slow(frame)
        if pos < len(frame):
            second = frame[pos]
            if second < 0x80:
                return request_id, second
            if 0xA0 <= second <= 0xBF:
                return request_id, frame[pos + 1 : pos + 1 + (second & 0x1F)]
    return _peek_slow(frame)


def _peek_slow(frame: bytes) -> tuple[int | None, Any]:
    try:
        unpacker = msgpack.Unpacker(raw=True, max_buffer_size=128)
        unpacker.feed(frame[1:129])
        if unpacker.read_array_header() < 2:
            return None, None
        request_id, second = unpacker.unpack(), unpacker.unpack()
    except Exception:  # an unreadable head simply has no id
        return None, None
    if type(request_id) is not int or not 0 <= request_id <= MAX_ID:
        return None, None
    return request_id, second
