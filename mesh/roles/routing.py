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
    """A client request in flight (or waiting for a ready node)."""

    frames: list[bytes]
    request_id: int | None = None
    write: bool = True  # reads carry no deadline: one running late changes nothing
    attempts: int = 0
    waiting_since: int = 0
    run_by_ms: int = 0  # wall-clock deadline of the latest send (see envelope.DEADLINE_MAGIC)


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
    inflight: dict[tuple[bytes, int | None], Pending] = field(default_factory=dict)

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

    def any_ready(self) -> bool:
        """True when at least one node can take traffic."""
        return any(link.usable for link in self.links)


def inflight_key(pending: Pending) -> tuple[bytes, int | None]:
    """A request's key in ``Link.inflight``: (client routing id, request id)."""
    return pending.frames[0], pending.request_id


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
