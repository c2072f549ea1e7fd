"""STATS and CLUSTER without stalling the node: their digest hashed a slice per loop turn.

The store hashes its entries into its digest lazily (:mod:`mesh.core.digest`):
a write only notes its key, and the TTL sweep hashes a bounded number per run.
A catch-up, a full sync or a burst of new keys leaves many to hash (200,000
after the catch-up of ``bench/catchup.py``), and STATS and CLUSTER, which
report the digest, hashed them all at once on the node's loop: 0.35 s here
for 200,000, during which no other client was answered, and the node's
loop-stall guard (:mod:`mesh.core.lagguard`) then took it out of rotation.

Now a STATS or CLUSTER that finds more than :data:`FOLD_SLICE` keys to hash
is held: the node hashes that many per loop turn, serving everything else in
between, and answers it once few are left (the reply is then current as of
that moment).  In a balancer's bundle, a held request is answered later on its
own, outside the bundle, as a write waiting for acknowledgements is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from mesh.core.wire import Request

if TYPE_CHECKING:
    from mesh.core.store import Store

#: the requests that report the digest
DIGEST_OPS = frozenset({"STATS", "CLUSTER"})
#: keys hashed per loop turn (about 1.5 us each here: under 10 ms a turn)
FOLD_SLICE = 5_000

Held = tuple[list[bytes], Request]


class DigestWait:
    """Holds digest-reporting requests while the store's pending hashes are done in slices.

    ``answer`` is called with the held requests (their frames and decoded
    request) once few hashes are left; it runs and replies to them.
    """

    def __init__(self, store: Store, answer: Callable[[list[Held]], None]) -> None:
        self._store = store
        self._answer = answer
        self._held: list[Held] = []
        self._task: asyncio.Task[None] | None = None

    def hold(self, frames: list[bytes], request: Request) -> bool:
        """Hold ``request`` when it reports the digest and that would stall the loop;
        True if held (answered later through ``answer``)."""
        if request.op not in DIGEST_OPS or self._store.unhashed() <= FOLD_SLICE:
            return False
        self._held.append((frames, request))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._hash_then_answer())
        return True

    async def _hash_then_answer(self) -> None:
        try:
            while self._store.unhashed() > FOLD_SLICE:
                self._store.hash_some(FOLD_SLICE)
                await asyncio.sleep(0)  # let the node serve between slices
        finally:
            self._task = None
        held, self._held = self._held, []
        self._answer(held)

    def cancel(self) -> None:
        """Stop hashing in slices; the held requests are dropped (their clients time out)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._held.clear()
