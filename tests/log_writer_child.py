"""A writer for test_log's kill -9 test: appends batches forever under fsync=always.

Usage: ``python -m tests.log_writer_child DATA_DIR SEGMENT_BYTES [big]``.  After
each batch is flushed (the group-commit point) it prints the batch's last
offset: that record and every one before it are acknowledged.  The record at
offset ``i`` is :func:`record` ``(i)`` (:func:`big_record` with ``big``: one
in 8 has a value of about 300 KB, so that batches take the log's path for
large writes), so the test can check every record's content.
"""

from __future__ import annotations

import sys

from mesh.core.mutation import Mutation
from mesh.storage.log import Log


def record(i: int) -> Mutation:
    """The mutation the writer appends at offset ``i``."""
    value = None if i % 11 == 0 else f"{i};".encode() * (i % 7 + 1)
    return Mutation(f"node-{i % 3}/inc", i // 3 + 1, 10_000 + i, f"key-{i}-ü", value, i % 5)


def big_record(i: int) -> Mutation:
    """Like :func:`record`, with a value of about 300 KB at every 8th offset."""
    small = record(i)
    if i % 8:
        return small
    return small._replace(value=f"{i};".encode() * (300_000 // len(f"{i};")))


def main() -> None:
    log = Log(sys.argv[1], fsync="always", segment_bytes=int(sys.argv[2]))
    make = big_record if sys.argv[3:] == ["big"] else record
    offset, batch = log.next_offset, 0
    while True:
        size = batch % 16 + 1
        last = log.append([make(i) for i in range(offset, offset + size)])
        log.flush()
        sys.stdout.write(f"{last}\n")
        sys.stdout.flush()
        offset, batch = last + 1, batch + 1


if __name__ == "__main__":
    main()
