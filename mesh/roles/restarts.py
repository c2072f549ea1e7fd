"""When ``pycache up`` starts a dead child again: exponential backoff, as compose does.

A child that exits is started again after :data:`FIRST_DELAY_S`, then after
twice as long at each further exit, up to :data:`MAX_DELAY_S`; a child that
ran :data:`RESET_AFTER_S` or longer before it exited starts the count again
(its crash was not part of a loop).  No I/O here: the supervisor passes the
monotonic clock in.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
RESET_AFTER_S = 30.0


@dataclass
class Backoff:
    """One child's restart schedule."""

    first_delay: float = FIRST_DELAY_S
    max_delay: float = MAX_DELAY_S
    reset_after: float = RESET_AFTER_S
    attempts: int = 0  # restarts since the child last ran for reset_after
    started_at: float = 0.0  # when the child was last started
    due_at: float | None = None  # when to start it again; None while it runs

    def started(self, now: float) -> None:
        """The child was (re)started at ``now``."""
        self.started_at = now
        self.due_at = None

    def exited(self, now: float) -> tuple[int, float]:
        """The child exited at ``now``: the attempt number and the delay before it."""
        if now - self.started_at >= self.reset_after:
            self.attempts = 0
        self.attempts += 1
        delay = min(self.max_delay, self.first_delay * 2 ** (self.attempts - 1))
        self.due_at = now + delay
        return self.attempts, delay

    def due(self, now: float) -> bool:
        """Is a restart scheduled and its time come?"""
        return self.due_at is not None and now >= self.due_at
