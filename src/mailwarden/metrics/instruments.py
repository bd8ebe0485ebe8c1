"""The hot-path instruments of one worker: plain integers and lists, no lock, no clock of their
own. Callers time what they measure (``time.perf_counter``) and add; the worker publishes a
snapshot with its counters (:mod:`mailwarden.stats`), and the node sums the workers' snapshots
when Prometheus scrapes (:mod:`mailwarden.metrics.exposition`).

A worker's event loop is one thread, so ``+=`` on these needs no lock; the spool's commit
thread never touches them (commit latency is observed on the loop, after the commit returned).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

__all__ = [
    "LATENCY_BUCKETS",
    "Histogram",
    "hook_latency",
    "observe_hook",
    "observe_scanner",
    "replies",
    "scanner_latency",
    "snapshot",
    "spool_commit",
]

# Upper bounds (seconds, "le" in Prometheus terms) shared by every latency histogram: from a
# fast hook (0.1 ms) to a scanner near its time-out. Fixed, so that the workers' counts add up.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum of the values."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket ("le").
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def as_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.total}


# Replies sent, by code (every reply the SMTP core emits, and the refusals sent before it).
replies: dict[int, int] = {}
hook_latency: dict[str, Histogram] = {}
scanner_latency: dict[str, Histogram] = {}
spool_commit = Histogram()

# A scanner name becomes a label; bound how many a worker keeps, as stat() bounds its names.
MAX_SCANNERS = 100


def observe_hook(name: str, seconds: float) -> None:
    """One call of policy hook ``name`` took ``seconds`` (the hook registry bounds the names)."""
    histogram = hook_latency.get(name)
    if histogram is None:
        histogram = hook_latency[name] = Histogram()
    histogram.observe(seconds)


def observe_scanner(name: str, seconds: float) -> None:
    """One call of scanner ``name`` (``"rspamd"``, ``"clamav"`` …) took ``seconds``, whether it
    answered or failed; exported as ``mailwarden_scanner_duration_seconds{scanner=name}``.
    Raises ValueError for a negative duration or an empty name, and when a worker would keep
    more than MAX_SCANNERS names (a name is a label: keep it a fixed word)."""
    histogram = scanner_latency.get(name)
    if histogram is None:
        if not isinstance(name, str) or not name or not name.isprintable():
            raise ValueError(f"observe_scanner: invalid scanner name {name!r}")
        if len(scanner_latency) >= MAX_SCANNERS:
            raise ValueError(f"observe_scanner: more than {MAX_SCANNERS} scanner names")
        histogram = scanner_latency[name] = Histogram()
    if not seconds >= 0:  # NaN too
        raise ValueError(f"observe_scanner({name!r}, {seconds!r}): a duration is ≥ 0")
    histogram.observe(seconds)


def snapshot() -> dict[str, Any]:
    """This worker's instruments as plain JSON-able data, for publishing."""
    return {
        "replies": {str(code): count for code, count in replies.items()},
        "hooks": {name: h.as_dict() for name, h in hook_latency.items()},
        "scanners": {name: h.as_dict() for name, h in scanner_latency.items()},
        "spool_commit": spool_commit.as_dict(),
    }
