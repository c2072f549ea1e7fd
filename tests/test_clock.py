"""Unit tests for mesh.core.clock: packing, monotonicity, receive rule, restarts."""

from __future__ import annotations

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.core.clock import (
    LOGICAL_BITS,
    LOGICAL_MASK,
    MAX_HLC,
    HybridClock,
    pack,
    physical_ms,
    unpack,
    wall_ms,
)
from mesh.core.errors import ConfigError

T0 = 1_700_000_000_000


class FakeWall:
    """A wall clock the test moves by hand."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_pack_unpack_round_trip() -> None:
    assert pack(T0, 7) == T0 << LOGICAL_BITS | 7
    assert unpack(pack(T0, 7)) == (T0, 7)
    assert unpack(pack(0, 0)) == (0, 0)
    assert physical_ms(pack(T0, LOGICAL_MASK)) == T0
    assert pack(T0, LOGICAL_MASK) + 1 == pack(T0 + 1, 0)
    assert pack(MAX_HLC >> LOGICAL_BITS, LOGICAL_MASK) == MAX_HLC


@pytest.mark.parametrize(
    ("phys", "logical"), [(-1, 0), (0, -1), (0, LOGICAL_MASK + 1), ((MAX_HLC >> 16) + 1, 0)]
)
def test_pack_rejects_out_of_range(phys: int, logical: int) -> None:
    with pytest.raises(ValueError):
        pack(phys, logical)


def test_wall_ms_is_epoch_milliseconds() -> None:
    assert abs(wall_ms() - time.time() * 1000) < 1000


def test_now_follows_wall_clock_forward() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    assert clock.now() == pack(T0, 0)
    wall.ms += 5
    assert clock.now() == pack(T0 + 5, 0)
    assert clock.last == pack(T0 + 5, 0)


def test_now_stays_monotonic_when_wall_clock_steps_back() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    first = clock.now()
    wall.ms -= 100
    assert clock.now() == first + 1
    assert clock.now() == first + 2
    wall.ms = T0 + 1  # the wall clock passes the old reading again
    assert clock.now() == pack(T0 + 1, 0)


def test_burst_in_one_millisecond_borrows_into_physical() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    stamps = [clock.now() for _ in range(100_000)]
    assert stamps == sorted(set(stamps))
    assert stamps[LOGICAL_MASK] == pack(T0, LOGICAL_MASK)
    assert stamps[LOGICAL_MASK + 1] == pack(T0 + 1, 0)  # carried into the physical part
    assert unpack(stamps[-1]) == (T0 + 1, 100_000 - 1 - (LOGICAL_MASK + 1))
    wall.ms = T0 + 1  # the wall clock catches up but not past: keep counting
    assert clock.now() == stamps[-1] + 1
    wall.ms = T0 + 2
    assert clock.now() == pack(T0 + 2, 0)


def test_observe_remote_ahead_moves_the_clock_past_it() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    clock.now()
    remote = pack(T0 + 2_000, 5)
    clock.observe(remote)
    assert clock.last == remote + 1
    assert clock.now() == remote + 2
    wall.ms = T0 + 3_000
    assert clock.now() == pack(T0 + 3_000, 0)


def test_observe_remote_behind_keeps_following_the_wall() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    mine = clock.now()
    clock.observe(pack(T0 - 500, 3))
    assert clock.last == mine + 1  # the receive event itself is an event
    wall.ms += 1
    assert clock.now() == pack(T0 + 1, 0)


def test_observe_remote_equal_physical_takes_the_larger_counter() -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    clock.now()
    clock.observe(pack(T0, 40))
    assert clock.last == pack(T0, 41)


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "5", None, True, b"1"])
def test_observe_rejects_non_timestamps(bad: object) -> None:
    clock = HybridClock(FakeWall())
    before = clock.last
    with pytest.raises(ValueError):
        clock.observe(bad)  # type: ignore[arg-type]
    assert clock.last == before


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "5", None, True])
def test_bad_floor_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        HybridClock(FakeWall(), floor=bad)  # type: ignore[arg-type]


def test_wall_must_be_callable() -> None:
    with pytest.raises(ValueError):
        HybridClock(wall=T0)  # type: ignore[arg-type]


def test_clock_at_the_end_of_its_range_raises_instead_of_wrapping() -> None:
    clock = HybridClock(FakeWall(), floor=MAX_HLC)
    with pytest.raises(OverflowError):
        clock.now()
    with pytest.raises(OverflowError):
        HybridClock(FakeWall()).observe(MAX_HLC)


def test_restart_with_floor_never_reissues_old_values_after_wall_went_back() -> None:
    wall = FakeWall()
    old = HybridClock(wall)
    issued = [old.now() for _ in range(70_000)]  # runs ahead of the wall clock
    wall.ms = T0 - 60_000  # the machine's clock was stepped back during the restart
    new = HybridClock(wall, floor=old.last)
    stamps = [new.now() for _ in range(10)]
    assert min(stamps) > max(issued)
    assert stamps == sorted(set(stamps))


def test_restart_without_floor_would_reissue() -> None:
    """The reason ``floor`` exists: a bare clock trusts the stepped-back wall."""
    wall = FakeWall()
    old = HybridClock(wall)
    old.now()
    wall.ms -= 1
    assert HybridClock(wall).now() < old.last


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("now"), st.integers(-2_000, 2_000)),
        st.tuples(
            st.just("observe"),
            st.integers(-2_000, 2_000),
            st.integers(-5_000, 5_000),
            st.integers(0, LOGICAL_MASK),
        ),
        st.tuples(st.just("restart"), st.integers(-5_000, 5_000)),
    ),
    max_size=200,
)


@given(OPS)
def test_property_monotonic_over_random_wall_sequences(ops: list[tuple]) -> None:
    wall = FakeWall()
    clock = HybridClock(wall)
    highest = -1  # every value returned or observed so far
    max_wall = wall.ms
    for op in ops:
        wall.ms = T0 + op[1]
        max_wall = max(max_wall, wall.ms)
        if op[0] == "now":
            before = clock.last
            ts = clock.now()
            assert ts > highest
            if wall.ms > physical_ms(before):
                assert ts == pack(wall.ms, 0)  # follows a wall clock that moved forward
            else:
                assert ts == before + 1
            highest = ts
        elif op[0] == "observe":
            remote = pack(T0 + op[2], op[3])
            clock.observe(remote)
            assert clock.last > max(highest, remote)
            highest = max(highest, remote)
        else:
            clock = HybridClock(wall, floor=clock.last)
        # never runs ahead of what it saw by more than a logical carry
        assert physical_ms(clock.last) <= max(max_wall, physical_ms(highest)) + 1
