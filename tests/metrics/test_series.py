"""The stat() time series: the pure roll-ups, counter deltas and retention
(mailwarden.metrics.series), and the SQLite store built on them, as property tests."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.metrics import series, series_store
from mailwarden.metrics.series import DAY, HOUR, MINUTE, Point, bucket_start, rollup

# Three years of minutes from 2026-01-01, so that buckets cross hours, days and years.
START = 1_767_225_600
moments = st.integers(START, START + 3 * 365 * DAY)
names = st.sampled_from(["seen", "rcpt", "peer-cert"])
legends = st.sampled_from(["yes", "no", "tls"])
points = st.lists(
    st.tuples(
        names, legends, moments.map(lambda m: bucket_start(m, MINUTE)), st.integers(0, 10**6)
    ),
    max_size=60,
)


def totals(buckets: dict[tuple[str, str, int], int]) -> Counter[tuple[str, str]]:
    summed: Counter[tuple[str, str]] = Counter()
    for (name, legend, _), value in buckets.items():
        summed[(name, legend)] += value
    return summed


def point_totals(found: list[Point]) -> Counter[tuple[str, str]]:
    summed: Counter[tuple[str, str]] = Counter()
    for name, legend, _, value in found:
        summed[(name, legend)] += value
    return +summed  # legends that only ever counted 0 have no bucket


@given(points)
def test_rolling_up_keeps_every_counters_sum(found: list[Point]) -> None:
    hours = rollup(found, HOUR)
    days = rollup(found, DAY)
    assert totals(hours) == totals(days) == point_totals(found)
    # Minutes to hours to days is minutes to days: the same buckets, the same values.
    assert rollup(series.as_points(hours), DAY) == days
    for name, legend, start, _ in series.as_points(days):
        assert start % DAY == 0 and (name, legend) in point_totals(found)


@given(points)
def test_every_point_lands_in_the_bucket_holding_it(found: list[Point]) -> None:
    hours = rollup(found, HOUR)
    for name, legend, start, value in found:
        if value:
            key = (name, legend, bucket_start(start, HOUR))
            assert key in hours and hours[key] >= value
            assert key[2] <= start < key[2] + HOUR


@given(
    moment=moments, width=st.sampled_from([MINUTE, HOUR, DAY]), retention=st.integers(1, 800 * DAY)
)
def test_retention_keeps_exactly_the_buckets_overlapping_the_window(
    moment: int, width: int, retention: int
) -> None:
    oldest = series.oldest_kept(moment, width, retention)
    assert oldest % width == 0
    # The bucket holding the window's first second is kept; the one before it is not.
    assert oldest <= moment - retention < oldest + width


# A worker's published counters over time: it counts up, and sometimes restarts from zero.
steps = st.lists(
    st.tuples(
        st.integers(0, 2),  # worker
        st.booleans(),  # restarts (a new pid) before this reading
        st.dictionaries(legends, st.integers(0, 50), min_size=1),  # what it counted meanwhile
    ),
    max_size=30,
)


@given(steps)
def test_deltas_over_readings_add_up_to_everything_counted_once(history: list) -> None:
    pids = {0: 100, 1: 200, 2: 300}
    counts: dict[int, Counter[str]] = {worker: Counter() for worker in pids}
    previous: dict[int, series.Reading] = {}
    recorded: Counter[str] = Counter()
    counted: Counter[str] = Counter()
    for worker, restarts, grown in history:
        if restarts:
            pids[worker] += 1
            counts[worker] = Counter()
        counts[worker].update(grown)
        counted.update(grown)
        current = {
            w: (pids[w], {"seen": dict(counts[w])}) for w in pids if counts[w] or w in previous
        }
        for (name, legend), value in series.counter_deltas(previous, current).items():
            assert name == "seen" and value > 0
            recorded[legend] += value
        previous = current
    assert recorded == +counted


def test_a_worker_that_stopped_publishing_adds_nothing() -> None:
    before = {0: (10, {"seen": {"yes": 5}}), 1: (11, {"seen": {"yes": 7}})}
    after = {0: (10, {"seen": {"yes": 6}})}
    assert series.counter_deltas(before, after) == {("seen", "yes"): 1}


def test_readings_skip_what_is_not_a_workers_counters() -> None:
    documents = [
        {"worker": 0, "pid": 10, "script": {"seen": {"yes": 2, "bad": -1, "str": "x"}}},
        {"worker": "1", "pid": 11, "script": {}},
        {"worker": 2, "pid": 12},
        {"worker": 3, "pid": 13, "script": {"seen": "not a dict", "rcpt": {"user": 4}}},
    ]
    assert series.readings(documents) == {
        0: (10, {"seen": {"yes": 2}}),
        3: (13, {"rcpt": {"user": 4}}),
    }


recordings = st.lists(
    st.tuples(
        st.integers(0, 40 * DAY),  # seconds after the previous recording
        st.dictionaries(st.tuples(names, legends), st.integers(1, 1000), max_size=4),
    ),
    min_size=1,
    max_size=25,
)


def stored(db: sqlite3.Connection, width: int) -> dict[tuple[str, str, int], int]:
    rows = db.execute("SELECT name, legend, start, value FROM series WHERE width = ?", (width,))
    return {(name, legend, start): value for name, legend, start, value in rows}


@settings(deadline=None, max_examples=60)
@given(recordings)
def test_the_store_keeps_hours_and_days_the_sums_of_its_minutes(history: list) -> None:
    """With nothing expired yet, every resolution holds the same totals, and the hour and
    day buckets are the roll-ups of the minute buckets."""
    forever = series_store.Retention(minutes=10**10, hours=10**10, days=10**10)
    db = series_store.connect(Path(":memory:"))
    now = START
    counted: Counter[tuple[str, str]] = Counter()
    for gap, grown in history:
        now += gap
        series_store.record(db, grown, now, forever)
        counted.update(grown)
    minutes = stored(db, MINUTE)
    assert totals(minutes) == counted
    assert stored(db, HOUR) == rollup(series.as_points(minutes), HOUR)
    assert stored(db, DAY) == rollup(series.as_points(minutes), DAY)


@settings(deadline=None, max_examples=60)
@given(recordings, st.integers(1, 72), st.integers(1, 90), st.integers(1, 800))
def test_retention_drops_only_buckets_past_it(
    history: list, minute_hours: int, hour_days: int, day_days: int
) -> None:
    """What the store keeps after each recording is exactly what it kept and was recorded,
    less the buckets that started before their resolution's window."""
    retention = series_store.Retention(
        minutes=minute_hours * HOUR, hours=hour_days * DAY, days=day_days * DAY
    )
    db = series_store.connect(Path(":memory:"))
    expected: dict[int, dict[tuple[str, str, int], int]] = {MINUTE: {}, HOUR: {}, DAY: {}}
    now = START
    for gap, grown in history:
        now += gap
        series_store.record(db, grown, now, retention)
        for width in (MINUTE, HOUR, DAY):
            buckets = expected[width]
            for (name, legend), value in grown.items():
                key = (name, legend, bucket_start(now, width))
                buckets[key] = buckets.get(key, 0) + value
            oldest = series.oldest_kept(now, width, retention.of(width))
            expected[width] = {k: v for k, v in buckets.items() if k[2] >= oldest}
            assert stored(db, width) == expected[width]
            # The bucket just counted into is never the one dropped.
            current = bucket_start(now, width)
            assert all((name, legend, current) in expected[width] for name, legend in grown)


def test_reading_a_missing_file_or_name_is_empty(tmp_path: Path) -> None:
    path = series_store.series_path(tmp_path)
    assert series_store.read(path, "seen", MINUTE) == []
    db = series_store.connect(path)
    try:
        series_store.record(db, {("seen", "yes"): 3}, START + 90, series_store.Retention())
    finally:
        db.close()
    assert series_store.read(path, "other", MINUTE) == []
    assert series_store.read(path, "seen", MINUTE) == [(START + 60, "yes", 3)]
    assert series_store.read(path, "seen", DAY) == [(START, "yes", 3)]
