"""The retry schedule: when a failed message is tried again, and when it bounces."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.schedule import Bounce, Retry, RetrySchedule, next_step

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
DEFERRED = DeliveryReply(451, "4.3.0", "try again later", remote=True)
REFUSED = DeliveryReply(421, "4.4.1", "connection refused by mx.example.net")
REJECTED = DeliveryReply(550, "5.1.1", "no such user", remote=True)


def attempts(schedule: RetrySchedule, received_at: float) -> list[float]:
    """The attempt times of a message that fails every time (the first on arrival)."""
    times = [received_at]
    while (at := schedule.after_failure(len(times), received_at, times[-1])) is not None:
        times.append(at)
    return times


def test_default_schedule_is_1_5_15_30_60_minutes_then_hourly_for_5_days():
    schedule = RetrySchedule()
    assert schedule.max_age == 5 * DAY and schedule.delay_warning is None
    waits = [schedule.after_failure(n, 0.0, 1000.0) - 1000.0 for n in range(1, 9)]
    assert waits == [1 * MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, HOUR, HOUR, HOUR]


def test_a_message_that_always_fails_is_tried_until_exactly_its_expiry():
    received = 1_700_000_000.0
    times = attempts(RetrySchedule(), received)
    offsets = [at - received for at in times]
    assert offsets[:6] == [0, 60, 360, 1260, 3060, 6660]  # 1, 5, 15, 30, 60 minutes apart
    assert offsets[6] - offsets[5] == HOUR
    # Hourly until the last full hour before 5 days, then one last attempt at expiry...
    assert offsets[-2] == 6660 + 118 * HOUR
    assert offsets[-1] == 5 * DAY
    assert len(times) == 1 + 5 + 118 + 1
    # ...whose failure bounces.
    assert next_step(RetrySchedule(), DEFERRED, len(times), received, times[-1]) == Bounce(
        DEFERRED, expired=True
    )


def test_near_expiry_the_next_attempt_moves_to_the_expiry_instant():
    schedule = RetrySchedule(intervals=(600.0,), max_age=1000.0)
    assert schedule.after_failure(1, 0.0, 100.0) == 700.0
    assert schedule.after_failure(2, 0.0, 700.0) == 1000.0  # not 1300: one last try at expiry
    assert schedule.after_failure(3, 0.0, 999.999) == 1000.0
    assert schedule.after_failure(3, 0.0, 1000.0) is None
    # A message already older than max_age (clock set back, restored spool) bounces at once.
    assert schedule.after_failure(1, 0.0, 5000.0) is None


def test_next_step_retries_temporary_failures_and_bounces_permanent_ones():
    schedule = RetrySchedule()
    assert next_step(schedule, DEFERRED, 1, 0.0, 10.0) == Retry(70.0, DEFERRED)
    assert next_step(schedule, REFUSED, 3, 0.0, 10.0) == Retry(910.0, REFUSED)
    assert next_step(schedule, REJECTED, 1, 0.0, 10.0) == Bounce(REJECTED)
    with pytest.raises(ValueError):
        next_step(schedule, DeliveryReply(250, "2.0.0", "ok"), 1, 0.0, 10.0)


def test_delay_warning_is_due_once_after_its_age():
    assert not RetrySchedule().delay_warning_due(0.0, 10 * DAY, warned=False)
    schedule = RetrySchedule(delay_warning=4 * HOUR)
    assert not schedule.delay_warning_due(0.0, 4 * HOUR - 1, warned=False)
    assert schedule.delay_warning_due(0.0, 4 * HOUR, warned=False)
    assert not schedule.delay_warning_due(0.0, 5 * HOUR, warned=True)


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        ({"intervals": ()}, "at least one interval"),
        ({"intervals": (60.0, 0.0)}, "> 0"),
        ({"intervals": (300.0, 60.0)}, "never shrink"),
        ({"max_age": 0.0}, "max_age"),
        ({"delay_warning": 0.0}, "delay_warning"),
    ],
)
def test_schedules_that_make_no_sense_are_refused(arguments, problem):
    with pytest.raises(ValueError, match=problem):
        RetrySchedule(**arguments)
    with pytest.raises(ValueError):
        RetrySchedule().after_failure(0, 0.0, 0.0)


intervals = st.lists(st.floats(1.0, 10 * DAY), min_size=1, max_size=8).map(
    lambda values: tuple(sorted(values))
)
schedules = st.builds(RetrySchedule, intervals=intervals, max_age=st.floats(1.0, 30 * DAY))
instants = st.floats(0.0, 2e9)


@given(schedules, instants, st.floats(-DAY, 40 * DAY), st.integers(1, 500))
def test_property_none_only_once_expired_and_never_beyond_expiry(schedule, received, age, n):
    now = received + age
    at = schedule.after_failure(n, received, now)
    if now >= received + schedule.max_age:
        assert at is None
    else:
        assert at is not None
        assert now < at <= now + schedule.interval(n)
        assert at <= received + schedule.max_age  # so also <= max_age + the last interval


@given(
    schedules,
    instants,
    st.lists(st.floats(0.0, 40 * DAY), min_size=2, max_size=6),
    st.lists(st.integers(1, 500), min_size=6, max_size=6),
)
def test_property_monotone(schedule, received, ages, failures):
    # A later failure, with more failures behind it, is never retried earlier.
    points = list(zip(sorted(ages), sorted(failures), strict=False))
    results = [schedule.after_failure(n, received, received + age) for age, n in points]
    known = [at for at in results if at is not None]
    assert known == sorted(known)
    # Once expired, always expired.
    first_none = next((i for i, at in enumerate(results) if at is None), len(results))
    assert all(at is None for at in results[first_none:])


@given(schedules, instants)
def test_property_a_failing_message_ends_with_one_attempt_at_expiry(schedule, received):
    if schedule.max_age / schedule.intervals[0] > 2000:  # keep the simulation short
        schedule = RetrySchedule(schedule.intervals, max_age=schedule.intervals[0] * 2000)
    times = attempts(schedule, received)
    expiry = received + schedule.max_age
    assert all(b > a for a, b in itertools.pairwise(times))
    # Every wait is the schedule's own, except the last, cut short to land on the expiry...
    for n, (earlier, later) in enumerate(itertools.pairwise(times[:-1]), start=1):
        assert later - earlier == pytest.approx(schedule.interval(n))
    assert times[-1] - times[-2] <= schedule.interval(len(times) - 1) + 1e-6 * expiry
    # ...where the message gets exactly one last attempt, and its failure bounces.
    assert times[-1] == expiry
    assert schedule.after_failure(len(times), received, times[-1]) is None
