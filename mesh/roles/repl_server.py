"""A node's repl ROUTER: peers' HELLOs and FETCHes, answered from the log.

A HELLO is handed to the membership (:mod:`mesh.roles.peering`), which
answers it; a FETCH gets a batch of what the peer lacks
(:meth:`mesh.core.replication.Replica.serve`), and the batch the peer will
likely ask for next is read and encoded ahead while it applies this one.

With the peer plane's keys, every connection went through ZAP, and a
request's ``User-Id`` is the member it authenticated as: a request that names
another member is dropped, so a member cannot speak for another.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from typing import Any

import zmq

from mesh.core import peerwire
from mesh.core.catchup import Batch, Fetch, served_tops
from mesh.core.errors import ProtocolError
from mesh.core.replication import Replica
from mesh.roles.zsock import drain, drain_with_user_ids, send_frames
from mesh.storage.lacking import read_lacking
from mesh.storage.log import Log

log = logging.getLogger(__name__)

DRAIN_MAX = 4096


def read_message(
    frames: list[bytes],
    parse: Callable[[tuple], tuple[str, Any]],
    max_frame: int,
    counters: dict[str, int],
) -> tuple[str, Any] | None:
    """A peer message's ``(kind, payload)``, or None (logged and counted) when it is bad."""
    try:
        return parse(peerwire.decode(frames[-1], max_frame))
    except ProtocolError as exc:
        counters["dropped_messages"] += 1
        log.warning("dropped a peer message: %s", exc.reason)
        return None


class ReplServer:
    """Answers the requests waiting on a node's repl ROUTER (its sync shadow ``sock``)."""

    def __init__(
        self,
        replica: Replica,
        sock: zmq.Socket,
        *,
        authenticated: bool,
        max_frame: int,
        on_hello: Callable[[str, str, str], bytes],
        counters: dict[str, int],
    ) -> None:
        self.replica = replica
        self.sock = sock
        self.authenticated = authenticated
        self.max_frame = max_frame
        self.on_hello = on_hello
        self.counters = counters
        # what a peer lacks of every origin, read in one pass of the log
        self._reader = partial(read_lacking, replica.log) if isinstance(replica.log, Log) else None
        # node id -> (key of the fetch it is for, batch, its entries packed)
        self._prepared: dict[str, tuple[tuple, Batch, bytes]] = {}

    def forget(self, node_id: str) -> None:
        """Drop what was prepared for a peer that left."""
        self._prepared.pop(node_id, None)

    def drain(self, now: int) -> None:
        """Answer every request waiting, then prepare the batches likely asked next."""
        answered: list[tuple[str, Fetch, Batch]] = []
        for frames, kind, payload in self._requests():
            if len(frames) != 2:
                continue
            if kind == peerwire.HELLO:
                reply = self.on_hello(*payload)
            else:
                node_id, fetch = payload
                batch, packed = self._answer_fetch(node_id, fetch, now)
                self.replica.counters["served"] += batch.count()
                reply = peerwire.encode_batch(batch, packed)
                if batch.more and not batch.need_full:
                    answered.append((node_id, fetch, batch))
            try:
                send_frames(self.sock, (frames[0], reply))
            except zmq.ZMQError:
                pass  # the peer went away; it will ask again
        for node_id, fetch, batch in answered:
            self._prepare_next(node_id, fetch, batch, now)

    def _requests(self) -> Iterator[tuple[list[bytes], str, Any]]:
        """The HELLO and FETCH requests waiting, from members who speak for themselves."""
        received: list[tuple[list[bytes], str | None]]
        if self.authenticated:
            received = list(drain_with_user_ids(self.sock, DRAIN_MAX))
        else:
            received = [(frames, None) for frames in drain(self.sock, DRAIN_MAX)]
        for frames, member in received:
            parsed = read_message(frames, peerwire.parse_request, self.max_frame, self.counters)
            if parsed is None:
                continue
            kind, payload = parsed
            if member is not None and payload[0] != member:
                self.counters["impostors"] += 1
                log.warning("dropped a %s from member %s naming %r", kind, member, payload[0])
                continue
            yield frames, kind, payload

    def _answer_fetch(self, node_id: str, fetch: Fetch, now: int) -> tuple[Batch, bytes | None]:
        """The reply to a FETCH: the batch prepared for it, if it is the one predicted."""
        prepared = self._prepared.pop(node_id, None)
        counters = self.replica.counters
        if prepared is not None:
            key, batch, packed = prepared
            if key == _fetch_key(fetch):
                counters["prepared_used"] += 1
                return replace(batch, request_id=fetch.request_id), packed
            counters["prepared_dropped"] += 1
        return self.replica.serve(node_id, fetch, now, self._reader), None

    def _prepare_next(self, node_id: str, fetch: Fetch, batch: Batch, now: int) -> None:
        """Read and encode the batch a peer will ask for next, while it applies this one.

        A peer catching up asks for the next batch only once it has applied
        the last, so the two nodes would take turns; preparing the likely next
        reply now lets them work at once.  The guess is the fetch the peer
        sends if it applies exactly this batch: its version vector advanced
        by the batch's entries, or the snapshot session's next cursor.  A
        wrong guess is dropped and costs one read of the log.
        """
        if batch.snapshot:
            guess = Fetch(0, fetch.vv, True, batch.session, batch.cursor)
        else:
            guess = Fetch(0, served_tops(fetch.vv, batch))
        ahead = self.replica.serve(node_id, guess, now, self._reader)
        self._prepared[node_id] = (_fetch_key(guess), ahead, peerwire.pack_batch_entries(ahead))


def _fetch_key(fetch: Fetch) -> tuple:
    """What makes two fetches ask for the same batch (their request ids aside)."""
    if fetch.full:
        return (True, fetch.session, fetch.cursor)
    return (False, tuple(sorted(fetch.vv.items())))
