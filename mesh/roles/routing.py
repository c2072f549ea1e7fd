"""What the balancer knows and decides, with no I/O of its own.

:class:`Pending` is a client request in flight, :class:`Link` one node as the
balancer sees it, :class:`Pool` picks the node for the next request, and
:func:`bundle_messages` packs the requests held for one node into bundles.
The loop around them, and every socket, is :mod:`mesh.roles.balancer`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

import zmq

from mesh.core import envelope

#: Bytes allowed for the msgpack framing of one request in a bundle, and of the bundle.
BUNDLE_SLACK = 16


@dataclass(slots=True)
class Pending:
    """A client request in flight (or waiting for a ready node).

    ``frames`` are the client's (routing id, envelope, request); a node gets
    only ``tag``, the balancer's own name for this send, (a deadline) and the
    request, and answers with the tag, by which the reply finds its client.
    """

    frames: list[bytes]
    request_id: int | None = None
    write: bool = True  # reads carry no deadline: one running late changes nothing
    attempts: int = 0
    waiting_since: int = 0
    run_by_ms: int = 0  # wall-clock deadline of the latest send (see envelope.DEADLINE_MAGIC)
    #: The key in ``Link.inflight``: new for each send, so a stale reply matches
    #: none, and two requests in flight with one id (one client's or two) are apart.
    tag: bytes = b""


@dataclass
class Link:
    """One node as the balancer sees it."""

    endpoint: str
    #: the DEALER to the node and its monitor; set by the balancer when it connects
    sock: zmq.Socket = field(init=False, repr=False)
    monitor: zmq.Socket = field(init=False, repr=False)
    node_id: str = ""
    connected: bool = False
    state: str = "unknown"
    probe_sent_ms: int = 0
    awaiting_since: int = 0  # oldest unanswered probe; 0 when the node answers
    bundle_bytes: int = 0  # largest bundle the node takes (its HEALTH says); 0: none
    inflight: dict[bytes, Pending] = field(default_factory=dict)  # by tag

    def take_health(self, result: dict) -> None:
        """What the node's HEALTH reply says: its id, state, and the bundles it takes."""
        self.node_id, self.state = str(result.get("node_id", "")), str(result.get("state"))
        bundle_bytes = result.get("bundle_bytes")
        self.bundle_bytes = bundle_bytes if type(bundle_bytes) is int else 0

    def cluster_entry(self, reply: dict | None) -> dict:
        """The node's entry in the balancer's CLUSTER: its own (``reply``), or what is known."""
        entry = dict(reply or {"state": self.state})
        entry.update(endpoint=self.endpoint, in_rotation=self.usable)
        entry.setdefault("node_id", self.node_id)
        return entry

    @property
    def usable(self) -> bool:
        """Connected, answering and ready."""
        return self.connected and self.state == "ready"


class Pool:
    """Which node gets the next request: round-robin over usable links (no I/O)."""

    def __init__(self, links: list[Link], batch: int = 32) -> None:
        self.links = links
        self._turn = itertools.cycle(range(len(links))) if links else None
        self._batch = batch
        self._current: Link | None = None
        self._left = 0

    def pick(self, exclude: Link | None = None) -> Link | None:
        """The next usable link, preferring one other than ``exclude``."""
        if self._turn is None:
            return None
        fallback = None
        for _ in range(len(self.links)):
            link = self.links[next(self._turn)]
            if link.usable:
                if link is not exclude:
                    return link
                fallback = link
        return fallback

    def pick_in_batch(self) -> Link | None:
        """The last link picked, while usable and for ``batch`` picks in a row; else the next."""
        link = self._current
        if link is None or self._left <= 0 or not link.usable:
            link = self._current = self.pick()
            self._left = self._batch
        self._left -= 1
        return link

    def request_limit(self, ceiling: int) -> int:
        """The smallest request limit among the nodes that told theirs, at most ``ceiling``.

        A node's ``bundle_bytes`` is its request limit (docs/protocol.md, HEALTH).
        """
        return min([ceiling, *(link.bundle_bytes for link in self.links if link.bundle_bytes > 0)])

    def any_ready(self) -> bool:
        """True when at least one node can take traffic."""
        return any(link.usable for link in self.links)


def forwarded(pending: Pending, tag: bytes, run_by_ms: int) -> list[bytes]:
    """The frames that carry ``pending`` to a node: ``tag``, a deadline if any, the request.

    The client's routing id and envelope stay with the balancer (``pending.frames``),
    so what a node gets is always 2 or 3 frames, whatever envelope the client sent.
    """
    pending.tag = tag
    if run_by_ms:
        pending.run_by_ms = run_by_ms
        return [tag, envelope.deadline_frame(run_by_ms), pending.frames[-1]]
    return [tag, pending.frames[-1]]


def client_reply(pending: Pending, reply: bytes) -> list[bytes]:
    """A node's reply frame on its way back to the client: with the client's envelope."""
    frames = pending.frames
    return [frames[0], reply] if len(frames) == 2 else [*frames[:-1], reply]


def bundle_messages(
    items: list[tuple[list[bytes], Pending]], bundle_bytes: int
) -> Iterator[tuple[int, list[bytes]]]:
    """The messages that carry ``items`` to one node: (index of the first item, frames).

    With ``bundle_bytes`` (the node takes bundles that large), consecutive
    requests go as bundles (see :data:`mesh.core.envelope.BUNDLE_MAGIC`) of at most
    that many bytes and ``envelope.BUNDLE_MAX`` requests; a lone or larger one
    goes as it is.
    """
    if bundle_bytes <= 0 or len(items) < 2:
        for i, (frames, _) in enumerate(items):
            yield i, frames
        return
    limit = bundle_bytes - BUNDLE_SLACK
    first, size = 0, 0
    bundle: list[list[bytes]] = []
    for i, (frames, _) in enumerate(items):
        cost = BUNDLE_SLACK + sum(len(f) + 9 for f in frames)  # msgpack headers, generously
        if bundle and (size + cost > limit or len(bundle) >= envelope.BUNDLE_MAX):
            yield first, bundle[0] if len(bundle) == 1 else envelope.pack_bundle(bundle)
            first, bundle, size = i, [], 0
        bundle.append(frames)
        size += cost
    yield first, bundle[0] if len(bundle) == 1 else envelope.pack_bundle(bundle)
