"""Start the disk write-out of a file range without waiting: ``sync_file_range``.

Under ``--fsync always`` a batch of large values is written and then
fdatasynced; the kernel starts writing dirty pages back only when asked.  A
node that takes in more requests before its fsync (:mod:`mesh.roles.groupcommit`)
first asks the kernel to start writing what it appended, so that the disk
works while the loop decodes: the final fdatasync has less left to wait for.

Only ``SYNC_FILE_RANGE_WRITE`` is used: it starts write-out and waits for
nothing, promises nothing durable, and (no ``WAIT`` flag) does not consume a
write-back error, which the log's own fdatasync still reports.  Where the call
does not exist (not Linux, not glibc) this is a no-op.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

#: linux/fs.h: start write-out of the dirty pages of the range not already under write-out
SYNC_FILE_RANGE_WRITE = 2


def _load() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load()


def write_out(fd: int, offset: int, size: int) -> bool:
    """Ask the kernel to start writing ``size`` bytes of ``fd`` from ``offset`` to disk;
    True when it was asked.  Never raises: a failure (EIO) is the next fsync's to report."""
    if _sync_file_range is None or size <= 0:
        return False
    return _sync_file_range(fd, offset, size, SYNC_FILE_RANGE_WRITE) == 0
