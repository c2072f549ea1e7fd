"""Active expiry: the keys with a deadline sampled at random, as Redis does.

The store lists every key written with a deadline in an array (a write only
appends; stale items go when sampled, or by :func:`still_timed`) beside the
``expires`` map of deadlines; reads expire due keys lazily too.
"""

from __future__ import annotations

import random
from collections.abc import Callable


def expire_sampled(
    keys: list[bytes],
    expires: dict[bytes, int],
    now: int,
    rng: random.Random,
    samples: int,
    max_rounds: int,
    expire: Callable[[bytes], None],
) -> int:
    """Expire due keys sampled from ``keys``; returns how many.

    Each round samples up to ``samples`` items and calls ``expire`` on the due
    keys; another round follows while more than a quarter of the sample was
    due, up to ``max_rounds``.  Sampled items that are stale or expired are
    removed from ``keys`` (in place).
    """
    expired = 0
    for _ in range(max_rounds):
        if not keys:
            break
        picked = rng.sample(range(len(keys)), min(samples, len(keys)))
        picked.sort(reverse=True)  # so removing one index leaves the others in place
        valid = due = 0
        for i in picked:
            key = keys[i]
            deadline = expires.get(key)
            if deadline is not None:
                valid += 1
                if deadline > now:
                    continue
                expire(key)
                due += 1
            last = keys.pop()  # drop index i: stale, or expired just now
            if i < len(keys):
                keys[i] = last
        expired += due
        if valid and due * 4 <= valid:
            break
    return expired


def still_timed(keys: list[bytes], expires: dict[bytes, int]) -> list[bytes]:
    """``keys`` without repeats and without keys that no longer have a deadline,
    when more than half of them are such (else ``keys`` itself)."""
    if len(keys) <= 2 * len(expires):
        return keys
    return [key for key in dict.fromkeys(keys) if key in expires]
