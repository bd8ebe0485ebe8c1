"""The ``stat()`` time series as pure functions: buckets, roll-ups, counter deltas, retention.

A point is ``(name, legend, start, value)``: ``value`` events counted in the bucket that starts
at ``start`` (Unix seconds, UTC; a bucket is ``[start, start + width)``). Minute buckets are
made from the workers' counters (their growth since the previous reading); hours and days are
roll-ups of minutes, so every resolution holds the same total over the same span.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MINUTE = 60
HOUR = 3600
DAY = 86400
RESOLUTIONS: dict[str, int] = {"minute": MINUTE, "hour": HOUR, "day": DAY}

Key = tuple[str, str, int]  # name, legend, bucket start
Point = tuple[str, str, int, int]  # name, legend, bucket start, value


def bucket_start(moment: float, width: int) -> int:
    """The start of the ``width``-second bucket holding ``moment`` (UTC: days start at 00:00)."""
    return int(moment // width) * width


def rollup(points: Iterable[Point], width: int) -> dict[Key, int]:
    """Points added up per ``width``-second bucket (buckets with nothing in them are left out).
    ``width`` must be a multiple of the points' own width for the result to be exact."""
    rolled: dict[Key, int] = {}
    for name, legend, start, value in points:
        key = (name, legend, bucket_start(start, width))
        rolled[key] = rolled.get(key, 0) + value
    return {key: value for key, value in rolled.items() if value}


def as_points(buckets: Mapping[Key, int]) -> list[Point]:
    return [(name, legend, start, value) for (name, legend, start), value in buckets.items()]


Reading = tuple[int, dict[str, dict[str, int]]]  # the publishing process's pid, its counters


def counter_deltas(
    previous: Mapping[int, Reading], current: Mapping[int, Reading]
) -> dict[tuple[str, str], int]:
    """What the counters grew by since ``previous``, summed over the workers (keyed by worker
    index). A worker with a new pid, or a counter that went down, started again from zero (a
    restart): its whole value is new. A worker missing from ``current`` adds nothing."""
    grown: dict[tuple[str, str], int] = {}
    for worker, (pid, counters) in current.items():
        before_pid, before = previous.get(worker, (pid, {}))
        if before_pid != pid:
            before = {}
        for name, legends in counters.items():
            old = before.get(name, {})
            for legend, value in legends.items():
                was = old.get(legend, 0)
                delta = value - was if value >= was else value
                if delta:
                    grown[(name, legend)] = grown.get((name, legend), 0) + delta
    return grown


def readings(documents: Iterable[Mapping[str, Any]]) -> dict[int, Reading]:
    """The script counters of the workers' published documents (see mailwarden.stats)."""
    found: dict[int, Reading] = {}
    for document in documents:
        worker, pid, script = document.get("worker"), document.get("pid"), document.get("script")
        if not isinstance(worker, int) or not isinstance(pid, int) or not isinstance(script, dict):
            continue
        counters = {
            str(name): {
                str(legend): value
                for legend, value in legends.items()
                if isinstance(value, int) and value >= 0
            }
            for name, legends in script.items()
            if isinstance(legends, dict)
        }
        found[worker] = (pid, counters)
    return found


def oldest_kept(now: float, width: int, retention: float) -> int:
    """The start of the oldest bucket of ``width`` seconds kept ``retention`` seconds: buckets
    that start earlier are removed."""
    return bucket_start(now - retention, width)
