"""Run a writer child against a node, SIGKILL the node mid-stream, return what was acknowledged.

For the kill -9 tests: the writer (a ``python -c`` script given the node's
endpoint) prints each acknowledged id on its own line.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def acked_until_kill(node: Any, script: str, count: int) -> list[int]:
    """Stream ``script``'s writes to ``node``, kill the node once ``count`` are
    acknowledged, and return every id acknowledged before the kill."""
    writer = subprocess.Popen(
        [sys.executable, "-c", script, node.endpoint],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    acked: list[int] = []
    try:
        assert writer.stdout is not None
        for line in writer.stdout:
            acked.append(int(line))
            if len(acked) >= count:
                node.kill()
                break
        writer.wait(10)
        acked += [int(line) for line in writer.stdout]  # anything acked before the kill
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait(10)
        if writer.stdout is not None:
            writer.stdout.close()
    return acked
