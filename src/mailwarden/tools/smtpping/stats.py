"""Per-phase timing statistics in bounded memory.

min, max, mean and standard deviation are exact. Percentiles come from a
log-scale histogram with buckets 1% wide, so a run of millions of pings costs a
few kilobytes, and any percentile is within 1% of the true sample value.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

# Order and names of the 1.1 statistics block.
PHASES = ("connect", "banner", "helo", "mailfrom", "rcptto", "data", "datasent", "quit")

_BUCKET_GROWTH = math.log(1.01)


@dataclass(slots=True)
class PhaseStats:
    """Samples of one phase, in nanoseconds."""

    count: int = 0
    total_ns: int = 0
    total_sq_ms: float = 0.0
    min_ns: int = -1
    max_ns: int = -1
    buckets: Counter[int] = field(default_factory=Counter)

    def add(self, ns: int) -> None:
        self.count += 1
        self.total_ns += ns
        ms = ns / 1e6
        self.total_sq_ms += ms * ms
        if self.min_ns < 0 or ns < self.min_ns:
            self.min_ns = ns
        if ns > self.max_ns:
            self.max_ns = ns
        # Bucket 0 holds everything under a microsecond.
        self.buckets[int(math.log(ns / 1000) / _BUCKET_GROWTH) + 1 if ns >= 1000 else 0] += 1

    def merge(self, other: PhaseStats) -> None:
        if not other.count:
            return
        if self.min_ns < 0 or other.min_ns < self.min_ns:
            self.min_ns = other.min_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        self.count += other.count
        self.total_ns += other.total_ns
        self.total_sq_ms += other.total_sq_ms
        self.buckets.update(other.buckets)

    @property
    def min_ms(self) -> float:
        """1.1 prints -1.00 for a phase never reached."""
        return self.min_ns / 1e6 if self.count else -1.0

    @property
    def max_ms(self) -> float:
        return self.max_ns / 1e6 if self.count else -1.0

    @property
    def mean_ms(self) -> float:
        return self.total_ns / self.count / 1e6 if self.count else 0.0

    @property
    def stddev_ms(self) -> float:
        if self.count < 2:
            return 0.0
        mean = self.mean_ms
        variance = (self.total_sq_ms - self.count * mean * mean) / (self.count - 1)
        return math.sqrt(max(0.0, variance))

    def percentile_ms(self, fraction: float) -> float:
        """The sample at rank ceil(fraction * count), to 1%; 0.0 when there are none."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                if bucket == 0:
                    return min(self.max_ms, 0.001)
                # Middle of the bucket, clamped to the exact extremes.
                ms = math.exp((bucket - 0.5) * _BUCKET_GROWTH) / 1000
                return min(max(ms, self.min_ms), self.max_ms)
        return self.max_ms  # pragma: no cover - ranks never exceed count

    def summary(self) -> dict[str, float | int]:
        return {
            "count": self.count,
            "min": round(self.min_ms, 3),
            "avg": round(self.mean_ms, 3),
            "max": round(self.max_ms, 3),
            "stddev": round(self.stddev_ms, 3),
            "p50": round(self.percentile_ms(0.50), 3),
            "p90": round(self.percentile_ms(0.90), 3),
            "p99": round(self.percentile_ms(0.99), 3),
        }


@dataclass(slots=True)
class RunStats:
    """Everything a run counts: phase timings, outcomes, failures by reply code."""

    phases: dict[str, PhaseStats] = field(
        default_factory=lambda: {name: PhaseStats() for name in PHASES}
    )
    transmitted: int = 0  # 1.1's "e-mail messages transmitted": pings attempted
    completed: int = 0
    failed: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def merge(self, other: RunStats) -> None:
        for name, phase in other.phases.items():
            self.phases[name].merge(phase)
        self.transmitted += other.transmitted
        self.completed += other.completed
        self.failed += other.failed
        self.errors.update(other.errors)
