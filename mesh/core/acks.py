"""Writes waiting for ``w`` nodes to log them: state only, no I/O.

A write asked with ``w`` > 1 (a count, ``quorum`` or ``all``) is logged and
applied at its origin at once; its reply waits here until enough peers report
(in their heartbeats) that they have logged this origin's ``seq``, or until its
deadline, when it becomes a NOT_ACKNOWLEDGED error that says how many had it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def nodes_needed(w: int | str, cluster_size: int) -> int:
    """How many nodes must have logged a write for acknowledgement level ``w``."""
    if w == "all":
        return cluster_size
    if w == "quorum":
        return cluster_size // 2 + 1
    return int(w)


@dataclass
class Waiting:
    """One held reply."""

    seq: int
    needed: int
    deadline_ms: int
    envelope: list[bytes]
    request_id: int
    result: Any


class PendingAcks:
    """Held replies of this origin's writes, resolved as peers catch up."""

    def __init__(self) -> None:
        self._waiting: list[Waiting] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def hold(self, waiting: Waiting) -> None:
        """Hold a reply until ``waiting.needed`` nodes logged ``waiting.seq``."""
        self._waiting.append(waiting)

    def resolve(
        self, logged_by: Callable[[int], int], now_ms: int
    ) -> tuple[list[Waiting], list[tuple[Waiting, int]]]:
        """Split off the acknowledged and the expired (with how many nodes had them)."""
        done: list[Waiting] = []
        expired: list[tuple[Waiting, int]] = []
        keep: list[Waiting] = []
        for waiting in self._waiting:
            have = logged_by(waiting.seq)
            if have >= waiting.needed:
                done.append(waiting)
            elif now_ms >= waiting.deadline_ms:
                expired.append((waiting, have))
            else:
                keep.append(waiting)
        self._waiting = keep
        return done, expired
