"""A node's group commit: a batch's writes logged with one fsync before any reply,
joined by the requests that arrive while a large write goes to disk.

A batch (the requests drained from the API socket in one go) is executed,
its writes appended to the log, the log fsynced (``--fsync always``), the
writes published, and only then are its replies sent.  With large values
a client's pipelined requests do not all arrive at once: the node woke up
for the first 1 MB SET alone, fsynced it, and fsynced the rest again, two
fsyncs of 4-8 ms for one client batch (issue 15).  So when a batch leaves
at least ``GROW_BYTES`` unsynced, the node asks the kernel to start writing
them (:meth:`mesh.storage.log.Log.write_out`) and runs the requests that
arrived meanwhile before the one fsync (it does not wait for more: waiting
1 ms measured no better, and costs a lone writer that millisecond).  A large
batch is also run in parts of about ``GROW_BYTES`` (:func:`split`), each
logged and its write-out started before the next is decoded: the disk
writes the first values while the later ones are decoded (only when a
request is that large: 10 KB values keep one write per batch).  No reply of
any of them leaves before that fsync, so the guarantee is the batch's: no
reply, for a read or a write, before every write that came before it is on
disk.  A group takes at most ``MAX_ROUNDS`` drains and stops growing past
``MAX_BYTES``.

If a part's log write fails for lack of space, what the earlier parts wrote
is committed and answered as usual, and the failed part with the parts not
run yet go to :meth:`mesh.roles.diskfull.DiskGuard.failed` (the whole group
when nothing was logged yet).
"""

from __future__ import annotations

from operator import itemgetter
from typing import TYPE_CHECKING

from mesh.core.acks import Waiting
from mesh.core.mutation import encode_records
from mesh.roles.zsock import drain, readable

if TYPE_CHECKING:
    from mesh.roles.node import Node

#: unsynced bytes from which a group commit takes in more requests before its fsync
GROW_BYTES = 256 * 1024
#: a group stops growing past this many unsynced bytes, or after this many drains
MAX_BYTES = 32 * 1024 * 1024
MAX_ROUNDS = 16
#: a batch of more requests than this is never split (many small requests: no pass over them)
SPLIT_MAX_REQUESTS = 128

Replies = list[list[bytes]]


def handle_batch(node: Node, batch: list[list[bytes]]) -> Replies:
    """Execute ``batch`` (and what arrives while its large writes go to disk, see the
    module docstring); log, fsync and publish the writes; return the replies."""
    node.clockwatch.touch()  # after a stall (SIGSTOP) not ready before answering anything
    replies: Replies = []
    held: list[Waiting] = []
    records: list[bytes] = []
    batches: list[list[bytes]] = []
    lasts: list[bytes] = []  # the requests' last frames as received: see DiskGuard
    failed: tuple[OSError, list[list[bytes]], list[bytes]] | None = None
    todo, drains = split(node, batch), 1
    while todo:
        batch = todo.pop(0)
        last = [frames[-1] for frames in batch]
        waiting: list[Waiting] = []
        done = node.run_requests(batch, waiting)
        pending = node.commands.take_pending()
        if pending:
            encoded = encode_records(pending)  # logged, then published, as they are
            try:
                node.replica.commit_local(pending, encoded)
            except OSError as exc:  # ENOSPC: nothing of this part may be seen or acked
                rest = [frames for part in todo for frames in part]
                node.counters["requests"] += len(rest)  # handed over as run
                batch, last = batch + rest, last + [frames[-1] for frames in rest]
                if not records:  # nothing logged yet: the whole group goes
                    return node.disk.failed(exc, batches + batch, lasts + last)
                failed = (exc, batch, last)
                break
            records += encoded
        replies += done
        held += waiting
        batches += batch
        lasts += last
        if todo:
            node.log.write_out()  # the disk writes this part while the next is decoded
        elif more := _more(node, drains):
            todo, drains = split(node, more), drains + 1
    if records:
        try:
            node.log.flush()
        except OSError as exc:  # nothing of this group may be seen or acked
            return node.disk.failed(exc, batches, lasts)
        node.commits += 1
        if node.peering is not None and node.replica.peers:  # nobody to tell otherwise
            node.peering.publish(node.origin, records, ack=bool(held))
        if node.snapshots.due():
            node.snapshot()
    for waiting_ack in held:
        node.hold_ack(waiting_ack)
    if failed is not None:
        replies += node.disk.failed(*failed)
    return replies


def split(node: Node, batch: list[list[bytes]]) -> list[list[list[bytes]]]:
    """``batch`` in parts of about ``GROW_BYTES`` of requests each, logged one after the
    other (their write-out started in turn); one part unless ``--fsync always`` and it
    holds a request of ``GROW_BYTES`` or more (smaller values keep one write per batch)
    and at most ``SPLIT_MAX_REQUESTS`` requests."""
    if node.log.fsync != "always" or not 2 <= len(batch) <= SPLIT_MAX_REQUESTS:
        return [batch]
    sizes = list(map(len, map(itemgetter(-1), batch)))
    if max(sizes) < GROW_BYTES or sum(sizes) < 2 * GROW_BYTES:
        return [batch]
    parts, start, size = [], 0, 0
    for i, n in enumerate(sizes, 1):
        size += n
        if size >= GROW_BYTES:
            parts.append(batch[start:i])
            start, size = i, 0
    return parts + [batch[start:]] if start < len(batch) else parts


def _more(node: Node, rounds: int) -> list[list[bytes]]:
    """The requests to run before this group's fsync: none unless it holds a large
    unsynced write (whose write-out this starts), else what has arrived."""
    raw, log = node.api_socket, node.log
    if raw is None or rounds >= MAX_ROUNDS or log.fsync != "always":
        return []
    if not GROW_BYTES <= log.unsynced_bytes <= MAX_BYTES or not readable(raw):
        return []
    log.write_out()
    more = drain(raw, node.config.batch_max, views=True)
    node.taken_more += len(more)  # for the node's batch latency histogram
    return more
