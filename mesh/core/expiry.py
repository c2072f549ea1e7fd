"""Active expiry: the keys with a deadline sampled at random, as Redis does.

The store lists every key written with a deadline in an array (a write only
appends; stale items go when sampled, or by :func:`still_timed`) beside the
``expires`` map of deadlines; reads expire due keys lazily too.  The digest,
which must not count a key past its deadline, expires every due key first:
for that the keys are also bucketed by deadline (:func:`expire_due`), so it
looks at the keys due since it last did, not at every key with a deadline.
"""

from __future__ import annotations

import heapq
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


#: Deadlines are bucketed by ``deadline >> DUE_SHIFT`` (1,024 ms) so that the keys
#: due by now are found without a pass over every key with a deadline.
DUE_SHIFT = 10


def due_buckets(expires: dict[bytes, int]) -> tuple[dict[int, list[bytes]], list[int]]:
    """Every key of ``expires`` in its deadline's bucket, and the buckets as a heap."""
    due: dict[int, list[bytes]] = {}
    for key, deadline in expires.items():
        due.setdefault(deadline >> DUE_SHIFT, []).append(key)
    order = list(due)
    heapq.heapify(order)
    return due, order


def expire_due(
    due: dict[int, list[bytes]],
    order: list[int],
    expires: dict[bytes, int],
    now: int,
    expire: Callable[[bytes], None],
) -> int:
    """Expire every key whose deadline is at or before ``now``; returns how many.

    ``due`` holds each key written with a deadline in that deadline's bucket
    (stale items too: a key since rewritten, deleted or expired, checked
    against ``expires`` here), ``order`` its bucket ids as a heap.  Only the
    buckets up to now's are looked at; the keys of now's bucket not due yet
    stay in it.
    """
    top, expired, kept = now >> DUE_SHIFT, 0, []
    while order and order[0] <= top:
        bucket_id = heapq.heappop(order)
        keys = due.pop(bucket_id, None)
        if keys is None:
            continue
        later = []
        for key in keys:
            deadline = expires.get(key)
            if deadline is None or deadline >> DUE_SHIFT != bucket_id:
                continue  # stale: the key is gone, or has another deadline now
            if deadline <= now:
                expire(key)
                expired += 1
            else:
                later.append(key)
        if later:
            due[bucket_id] = later
            kept.append(bucket_id)
    for bucket_id in kept:
        heapq.heappush(order, bucket_id)
    return expired
