"""The snapshot a node writes right after a full sync, taken from the image it received.

A full sync ends with a snapshot of the store
(:meth:`mesh.core.replication.Replica.take_snapshot_due`): the log does not
hold what the image brought.  When the store held nothing
before, is unbounded (nothing is evicted) and the image carries no counter,
and completing it drained nothing from the buffer, the store then holds
exactly the image's entries (one per key, seq 0; an entry past its deadline
becomes a tombstone when the snapshot is loaded, as it did here).  That
snapshot is then written from those entries, which spares reading every
entry back out of the store (``Store.entries``: about 40% of writing it).

Better still, from the bytes they came in: while such a full sync is
received, each chunk's entries are kept as the msgpack array the peer sent
(``Batch.packed``, checked field by field like every entry when it was
parsed), and the snapshot is written from those arrays, one block each, with
no entry encoded again (:func:`packed_image`).
"""

from __future__ import annotations

from operator import itemgetter

from mesh.core.catchup import Batch, first_chunk, stage
from mesh.core.mutation import PackedRecords, Record
from mesh.core.replication import Replica

_PLAIN_VALUES = {bytes, type(None)}


def store_takes_image(replica: Replica) -> bool:
    """Whether a full sync would leave ``replica``'s store holding exactly the image:
    it holds nothing (no tombstone either) and is unbounded."""
    if len(replica.store):
        return False
    stats = replica.store.stats()
    return not (stats["tombstones"] or stats["max_keys"] or stats["max_memory"])


def last_chunk_image(replica: Replica, node_id: str, batch: Batch) -> list[Record] | None:
    """Called before ``replica.on_batch(node_id, batch)``: the entries of the image
    ``batch`` completes, when it is a snapshot's last chunk that carries on from
    what was staged, the store is empty and unbounded and no entry is a
    counter's; else None.  (Whether the image is then applied is ``on_batch``'s
    call: use it only when a snapshot is due right after.)"""
    peer = replica.peers.get(node_id)
    if peer is None or not batch.snapshot or batch.more or not store_takes_image(replica):
        return None
    image = stage(list(peer.staged), batch)  # a copy: stage() extends what it is given
    if image is None or not set(map(type, map(itemgetter(4), image))) <= _PLAIN_VALUES:
        return None
    return image


def packed_image(
    replica: Replica, node_id: str, batch: Batch, image: list[Record] | None
) -> PackedRecords | None:
    """Called with :func:`last_chunk_image`'s ``image``: the same entries as the
    arrays the peer sent them in, when every staged chunk and ``batch`` kept
    theirs (``Batch.packed``), else None."""
    peer = replica.peers.get(node_id)
    if image is None or peer is None:
        return None
    chunks = [*([] if first_chunk(batch) else peer.packed), (len(batch.entries), batch.packed)]
    blobs = [blob for _, blob in chunks if blob is not None]
    if len(blobs) < len(chunks) or sum(count for count, _ in chunks) != len(image):
        return None
    return PackedRecords(blobs, len(image))


def snapshot_entries(
    image: list[Record] | PackedRecords | None, drained: list[Record]
) -> list[Record] | PackedRecords | None:
    """What to write the snapshot due after a full sync from: ``image``
    (:func:`last_chunk_image` or :func:`packed_image`) when completing it drained
    nothing more into the store (``drained``: what ``on_batch`` returned), else
    None (from the store)."""
    return None if drained else image
