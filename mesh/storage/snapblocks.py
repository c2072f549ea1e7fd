"""Snapshot entries in CRC-checked blocks: the lean layout of snapshot files.

A snapshot written by this version (:mod:`mesh.storage.snapshot`, format
version 2 with the ``BLOCKS`` flag) holds its entries in *blocks* rather than
one framed record per entry.  A block is framed like a log record (u32
payload length N, u32 CRC32C of the payload, N bytes, integers big-endian)
and its payload is one msgpack array: the block's origin table, then one
array per entry::

    [[origin, ...],
     [origin index, hlc delta, key, value, deadline],       an entry with seq 0
     [origin index, hlc delta, key, value, deadline, seq],  one with another seq
     ...]

``origin index`` indexes the block's table; ``hlc delta`` is the entry's hlc
minus the previous entry's in the block (the first entry's: minus 0), a
signed int: the store yields its entries about in write order, so most
deltas take one byte where an hlc takes nine.  ``value`` and ``deadline`` are
as in a log record (:mod:`mesh.core.mutation`); the store's entries all
carry seq 0, which is left out.  Each block is whole on its own (its own
origin table and hlc base), holds at most :data:`BLOCK_ENTRIES` entries and
stops growing past :data:`BLOCK_BYTES` of payload (one larger entry is a
block of its own).  For 100-byte values an entry takes about 119 bytes
against 155 as one framed log record (origin string, seq, full hlc
and an 8-byte frame each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import msgpack

from mesh.core.mutation import Mutation, Record
from mesh.storage.checksum import crc32c
from mesh.storage.records import DECODE_ERRORS, FRAME, LogCorruptError

#: at most this many entries in a block
BLOCK_ENTRIES = 4096
#: a block takes no more entries once its payload reaches this size
BLOCK_BYTES = 256 * 1024


def encode(entries: Iterable[Mutation]) -> Iterator[tuple[bytes, int]]:
    """The framed blocks of ``entries``, each with how many entries it holds."""
    pack = msgpack.Packer().pack
    parts: list[bytes] = []
    add = parts.append
    index: dict[str, int] = {}
    size = prev = 0
    for origin, seq, hlc, key, value, deadline in entries:
        i = index.get(origin)
        if i is None:
            i = index[origin] = len(index)
        delta, prev = hlc - prev, hlc
        entry = (i, delta, key, value, deadline, seq) if seq else (i, delta, key, value, deadline)
        record = pack(entry)
        add(record)
        size += len(record)
        if size >= BLOCK_BYTES or len(parts) >= BLOCK_ENTRIES:
            yield _frame(pack(list(index)), parts), len(parts)
            parts.clear()
            index.clear()
            size = prev = 0
    if parts:
        yield _frame(pack(list(index)), parts), len(parts)


def _frame(table: bytes, parts: list[bytes]) -> bytes:
    """One framed block: the array of ``table`` and the packed entries ``parts``."""
    n = len(parts) + 1
    head = bytes([0x90 | n]) if n < 16 else b"\xdc" + n.to_bytes(2, "big")  # n <= 4097
    payload = b"".join((head, table, *parts))
    return FRAME.pack(len(payload), crc32c(payload)) + payload


def decode(payload: bytes) -> list[Mutation]:
    """The entries of one block's payload; one of
    :data:`~mesh.storage.records.DECODE_ERRORS` or ``IndexError`` when it is not one."""
    block = msgpack.unpackb(payload, use_list=False)  # raises on a cut or extra byte
    origins = block[0]
    if not isinstance(origins, tuple) or not all(isinstance(o, str) for o in origins):
        raise ValueError("a block starts with its origin table")
    new, mutation = tuple.__new__, Mutation
    out: list[Mutation] = []
    add = out.append
    hlc = 0
    for record in islice(block, 1, None):
        if len(record) == 5:
            i, delta, key, value, deadline = record
            seq = 0
        else:
            i, delta, key, value, deadline, seq = record
        hlc += delta
        add(new(mutation, (origins[i], seq, hlc, key, value, deadline)))
    return out


def decode_records(payload: bytes) -> Sequence[Record]:
    """The entries of one block of whole records (one msgpack array of
    ``Mutation.to_record()`` arrays: flag RECORD_BLOCKS of
    :mod:`mesh.storage.snapshot`), as plain tuples; one of
    :data:`~mesh.storage.records.DECODE_ERRORS` when it is not one."""
    block = msgpack.unpackb(payload, use_list=False)  # raises on a cut or extra byte
    if type(block) is not tuple or set(map(type, block)) - {tuple}:
        raise ValueError("a block of records is an array of arrays")
    if set(map(len, block)) - {6}:
        raise ValueError("a record is a 6-element array")
    return block


def read(
    path: Path,
    start: int,
    stop: int,
    decode_block: Callable[[bytes], Sequence[Record]] = decode,
) -> Iterator[Record]:
    """The entries of the blocks between file positions ``start`` and ``stop`` of
    ``path`` (blocks as :func:`decode` reads them, or ``decode_block``); a block
    that is torn, fails its CRC or does not decode raises
    :class:`~mesh.storage.records.LogCorruptError` before any of its entries is
    yielded (the snapshot changed after it was validated)."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError as exc:
        raise LogCorruptError(path, start, "file deleted (compacted?) while being read") from exc
    with f:
        f.seek(start)
        pos = start
        while pos < stop:
            head = f.read(FRAME.size)
            length, crc = FRAME.unpack(head) if len(head) == FRAME.size else (stop, 0)
            if pos + FRAME.size + length > stop:
                raise LogCorruptError(path, pos, "torn block")
            payload = f.read(length)
            if len(payload) != length:
                raise LogCorruptError(path, pos, "file shorter than expected")
            if crc32c(payload) != crc:
                raise LogCorruptError(path, pos, "CRC mismatch")
            try:
                block = decode_block(payload)
            except (*DECODE_ERRORS, IndexError) as exc:
                raise LogCorruptError(path, pos, "undecodable block") from exc
            pos += FRAME.size + length
            yield from block
