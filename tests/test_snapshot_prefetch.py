"""A full sync keeps two snapshot chunks in flight: the next is asked for before one is staged."""

from __future__ import annotations

from mesh.core.catchup import Batch
from mesh.core.peerview import FETCH_TIMEOUT_MS
from mesh.core.replication import Replica
from tests.test_simulation import mut, replica


def serving(n: int, chunk: int) -> Replica:
    """A replica ``s`` holding ``n`` keys that serves snapshots in chunks of ``chunk``."""
    s = replica("s", ["x"], fetch_entries=chunk)
    s.receive([mut(i, f"k{i}", b"v%d" % i) for i in range(1, n + 1)], 0)
    return s


def test_each_chunk_is_followed_by_the_fetch_of_the_next_before_it_is_staged() -> None:
    s = serving(10, 3)
    x = replica("x", ["s"])
    [(_, fetch)] = x.poll(0)  # holds nothing: a full fetch
    assert fetch.full
    cursors = []
    for t in range(1, 20):
        batch = s.serve("x", fetch, t)
        ahead = x.prefetch("s", batch)
        assert x.prefetch("s", batch) is None, "a second fetch ahead"
        if not batch.more:
            assert ahead is None
            x.on_batch("s", batch, t)
            break
        assert ahead is not None and ahead.full and ahead.session == batch.session
        cursors.append(ahead.cursor)
        assert x.on_batch("s", batch, t) == []  # staged, not applied yet
        assert x.peers["s"].fetching is ahead and x.peers["s"].next_fetch is None
        assert x.poll(t) == [], "the fetch ahead is already the one in flight"
        fetch = ahead
    assert cursors == [3, 6, 9]
    assert x.vv == {"o/1": 10} and len(x.store) == 10
    assert x.counters["full_syncs"] == 1 and x.take_snapshot_due()
    assert x.peers["s"].ahead is None and x.peers["s"].staged == []


def test_a_chunk_that_does_not_carry_on_drops_the_fetch_ahead() -> None:
    """A chunk out of line starts the snapshot over; the reply to the fetch sent
    ahead of it is then stale and dropped, and nothing of it is staged."""
    s = serving(10, 3)
    x = replica("x", ["s"])
    [(_, fetch)] = x.poll(0)
    first = s.serve("x", fetch, 1)
    ahead = x.prefetch("s", first)
    assert ahead is not None
    x.on_batch("s", first, 1)
    second = s.serve("x", ahead, 2)
    out_of_line = Batch(second.request_id, second.entries, second.vv, True, True, 1, 99)
    sent_ahead = x.prefetch("s", out_of_line)
    assert sent_ahead is not None
    assert x.on_batch("s", out_of_line, 2) == []
    peer = x.peers["s"]
    assert peer.ahead is None and peer.staged == [] and peer.fetching is None
    assert peer.next_fetch is not None and peer.next_fetch.full and peer.next_fetch.cursor == 0
    [(_, again)] = x.poll(3)
    stale = s.serve("x", sent_ahead, 3)
    assert x.on_batch("s", stale, 3) == [], "the reply to the fetch ahead is stale"
    assert peer.fetching is again and peer.staged == []
    assert x.vv == {} and len(x.store) == 0


def test_a_chunk_fetched_ahead_that_times_out_is_asked_for_again_from_the_start() -> None:
    s = serving(10, 3)
    x = replica("x", ["s"])
    [(_, fetch)] = x.poll(0)
    first = s.serve("x", fetch, 0)
    ahead = x.prefetch("s", first)
    x.on_batch("s", first, 0)
    later = 5 * FETCH_TIMEOUT_MS + 1
    [(_, again)] = x.poll(later)  # the chunk ahead expired
    assert x.peers["s"].ahead is None and again.full
    assert x.on_batch("s", s.serve("x", ahead, later), later) == [], "a late reply is dropped"
    fetch = again
    for t in range(later, later + 20):
        batch = s.serve("x", fetch, t)
        nxt = x.prefetch("s", batch)
        x.on_batch("s", batch, t)
        if not batch.more:
            break
        fetch = nxt
    assert x.vv == {"o/1": 10} and len(x.store) == 10
