"""How long the supervisor waits before restarting a worker that died (mailwarden.node.backoff).

The end-to-end test (tests/server/test_node_lifecycle.py) sees the first four delays in the log;
these cover the cap and when the count starts over, which would take minutes to watch live.
"""

from __future__ import annotations

from mailwarden.node.backoff import (
    BACKOFF_MAX,
    STABLE_AFTER,
    deaths_before,
    restart_delay,
)


def delays(history: list[tuple[bool, float]]) -> list[float]:
    """The delays the supervisor chooses for deaths given as (was ready, seconds up)."""
    deaths, chosen = 0, []
    for was_ready, uptime in history:
        deaths = deaths_before(deaths, was_ready, uptime)
        chosen.append(restart_delay(deaths))
        deaths += 1
    return chosen


def test_delay_doubles_from_half_a_second_up_to_the_cap() -> None:
    assert [restart_delay(n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 32, BACKOFF_MAX, 60]
    assert BACKOFF_MAX == 60.0


def test_quick_deaths_in_a_row_back_off() -> None:
    # A worker that dies during start-up again and again (a broken spool, say).
    assert delays([(False, 0.1)] * 5) == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_a_worker_that_served_long_enough_starts_over() -> None:
    stable = (True, STABLE_AFTER)
    assert delays([(False, 0.1), (False, 0.1), (False, 0.1), stable, (True, 1.0)]) == [
        0.5,
        1.0,
        2.0,
        0.5,
        1.0,
    ]


def test_a_short_or_never_ready_life_does_not_reset_the_count() -> None:
    # Ready but up for less than STABLE_AFTER: the problem goes on.
    assert deaths_before(3, True, STABLE_AFTER - 0.1) == 3
    # Up for long but never ready (hung while starting): not healthy either.
    assert deaths_before(3, False, STABLE_AFTER * 10) == 3
    assert deaths_before(3, True, STABLE_AFTER) == 0


def test_a_worker_failing_for_days_keeps_the_capped_delay() -> None:
    # Each death after the cap waits a minute, so ~1,024 deaths are ~17 hours of a broken
    # spool; 0.5 * 2**1024 does not fit a float, and the OverflowError ended the supervisor.
    assert restart_delay(1_024) == BACKOFF_MAX
    assert restart_delay(100_000) == BACKOFF_MAX
