"""The restart policy of ``pycache up`` (mesh/roles/restarts.py): backoff, cap, reset."""

from __future__ import annotations

from mesh.roles.restarts import FIRST_DELAY_S, MAX_DELAY_S, RESET_AFTER_S, Backoff


def test_the_first_restart_is_soon_then_each_waits_twice_as_long_up_to_the_cap():
    backoff = Backoff()
    backoff.started(0.0)
    now, delays = 0.0, []
    for expected_attempt in range(1, 9):
        now += 0.5  # it crashes half a second after each start
        attempt, delay = backoff.exited(now)
        assert attempt == expected_attempt and backoff.due_at == now + delay
        assert not backoff.due(now + delay - 0.01) and backoff.due(now + delay)
        delays.append(delay)
        now += delay
        backoff.started(now)
        assert backoff.due_at is None and not backoff.due(now + 100)
    assert FIRST_DELAY_S <= 2.0 and delays[0] == FIRST_DELAY_S
    assert delays == [min(MAX_DELAY_S, FIRST_DELAY_S * 2**i) for i in range(8)]
    assert delays[-1] == MAX_DELAY_S


def test_a_child_that_ran_a_while_starts_the_count_again():
    backoff = Backoff()
    backoff.started(0.0)
    for now in (1.0, 3.0, 6.0):
        backoff.exited(now)
        backoff.started(now + 0.5)
    assert backoff.attempts == 3
    assert backoff.exited(6.5 + RESET_AFTER_S) == (1, FIRST_DELAY_S)
