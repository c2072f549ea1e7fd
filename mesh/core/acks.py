"""Write acknowledgement levels, and writes waiting for ``w`` nodes to log them:
state only, no I/O.

``w`` is a node count 1..MAX_W, ``"quorum"`` or ``"all"``; :func:`parse_w` is
the one check of it, for the wire (a request's ``w`` option) and the node's
config (its default) alike.  A write asked with ``w`` > 1 is logged and
applied at its origin at once; its reply waits here until enough peers report
(in their heartbeats) that they have logged this origin's ``seq``, or until its
deadline, when it becomes a NOT_ACKNOWLEDGED error that says how many had it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Acknowledgement levels a write may ask for besides a node count.
W_LEVELS = ("quorum", "all")
#: Largest node count a write may ask for.
MAX_W = 64
_LEVEL_NAMES: dict[str | bytes, str] = {
    **{level: level for level in W_LEVELS},
    **{level.encode(): level for level in W_LEVELS},
}


def parse_w(raw: object) -> int | str:
    """``raw`` as an acknowledgement level: an int 1..MAX_W as it is, a level of
    W_LEVELS (str or bytes, any case) as its lower-case str.

    Raises ``ValueError`` for anything else, bools included.
    """
    if type(raw) is int and 1 <= raw <= MAX_W:
        return raw
    if isinstance(raw, (str, bytes)):
        level = _LEVEL_NAMES.get(raw.lower())
        if level is not None:
            return level
    raise ValueError(f'w must be 1..{MAX_W}, "quorum" or "all"')


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
    op: str = ""  # the request's op, for the metrics of a write never acknowledged


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
