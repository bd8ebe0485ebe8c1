"""``/metrics``: the workers' published documents (:mod:`mailwarden.stats`) summed and written
in Prometheus' text exposition format by prometheus-client.

Values are as fresh as the workers' last publication (every ``stats.PUBLISH_INTERVAL``
seconds, and when a worker stops). Counters count since each worker started: when a worker is
restarted its part starts again from zero, which Prometheus' ``rate()`` reads as a counter
reset, as it should.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from mailwarden import stats
from mailwarden.metrics.instruments import LATENCY_BUCKETS

PREFIX = "mailwarden"

# The built-in counters of stats.Counters as (metric, help, labels); the refusals per phase
# and the transaction outcomes become one metric each, with a label.
_REFUSALS = {f"refused_{phase}": phase for phase in ("connect", "helo", "auth", "mail", "rcpt")}
_REFUSALS["refused_vrfy"] = "vrfy"
_TRANSACTIONS = {
    "messages_queued": "queued",
    "messages_held": "held",
    "messages_discarded": "discarded",
    "messages_rejected": "rejected",
}
_PLAIN = {
    "connections": ("connections", "Connections admitted (past the connection limits)."),
    "connections_refused": ("connections_refused", "Connections turned away by the limits."),
    "spool_errors": ("spool_errors", "Messages the spool could not take (answered 451)."),
    "script_errors": ("script_errors", "Policy hooks that raised, timed out or answered nonsense."),
    "auth_failures": ("auth_failures", "AUTH attempts that failed."),
}


class Totals:
    """The sum of the workers' documents: counters, script counters and instruments."""

    def __init__(self, documents: Iterable[dict[str, Any]]) -> None:
        self.workers = 0
        self.counters: dict[str, int] = dict.fromkeys((f.name for f in fields(stats.Counters)), 0)
        self.script: dict[str, dict[str, int]] = {}
        self.replies: dict[str, int] = {}
        self.hooks: dict[str, dict[str, Any]] = {}
        self.scanners: dict[str, dict[str, Any]] = {}
        self.spool_commit = _empty_histogram()
        self.connections_current = 0
        self.delivery: dict[str, int] = {"delivered": 0, "deferred": 0, "bounced": 0}
        for document in documents:
            self._add(document)

    def _add(self, document: dict[str, Any]) -> None:
        self.workers += 1
        for name, value in _mapping(document.get("counters")).items():
            if name in self.counters:
                self.counters[name] += _int(value)
        for name, legends in _mapping(document.get("script")).items():
            into = self.script.setdefault(str(name), {})
            for legend, value in _mapping(legends).items():
                into[str(legend)] = into.get(str(legend), 0) + _int(value)
        metrics = _mapping(document.get("metrics"))
        for code, count in _mapping(metrics.get("replies")).items():
            self.replies[str(code)] = self.replies.get(str(code), 0) + _int(count)
        for name, histogram in _mapping(metrics.get("hooks")).items():
            _add_histogram(self.hooks.setdefault(str(name), _empty_histogram()), histogram)
        for name, histogram in _mapping(metrics.get("scanners")).items():
            _add_histogram(self.scanners.setdefault(str(name), _empty_histogram()), histogram)
        _add_histogram(self.spool_commit, metrics.get("spool_commit"))
        self.connections_current += _int(metrics.get("connections_current"))
        for outcome, count in _mapping(metrics.get("delivery")).items():
            if outcome in self.delivery:
                self.delivery[outcome] += _int(count)


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _empty_histogram() -> dict[str, Any]:
    return {"counts": [0] * (len(LATENCY_BUCKETS) + 1), "sum": 0.0}


def _add_histogram(into: dict[str, Any], published: object) -> None:
    """Add a published histogram; one with other buckets (another version) is skipped."""
    histogram = _mapping(published)
    counts = histogram.get("counts")
    if not isinstance(counts, list) or len(counts) != len(into["counts"]):
        return
    into["counts"] = [a + _int(b) for a, b in zip(into["counts"], counts, strict=True)]
    total = histogram.get("sum")
    if isinstance(total, int | float):
        into["sum"] += float(total)


def _buckets(histogram: dict[str, Any]) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, +Inf last, as the exposition format wants them."""
    bounds = [repr(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
    running = 0
    pairs = []
    for bound, count in zip(bounds, histogram["counts"], strict=True):
        running += count
        pairs.append((bound, float(running)))
    return pairs


def families(totals: Totals) -> Iterator[Metric]:
    """Every metric family, built from the summed documents."""
    yield GaugeMetricFamily(
        f"{PREFIX}_workers_reporting", "Workers whose counters are included.", totals.workers
    )
    yield GaugeMetricFamily(
        f"{PREFIX}_connections_current",
        "SMTP connections open now (as of the workers' last publication).",
        totals.connections_current,
    )
    for key, (name, text) in _PLAIN.items():
        yield CounterMetricFamily(f"{PREFIX}_{name}", text, totals.counters[key])
    transactions = CounterMetricFamily(
        f"{PREFIX}_transactions",
        "Transactions that reached the end of data, by outcome.",
        labels=["outcome"],
    )
    for key, outcome in _TRANSACTIONS.items():
        transactions.add_metric([outcome], totals.counters[key])
    yield transactions
    refusals = CounterMetricFamily(
        f"{PREFIX}_refusals", "Policy refusals (4xx/5xx), by SMTP phase.", labels=["phase"]
    )
    for key, phase in _REFUSALS.items():
        refusals.add_metric([phase], totals.counters[key])
    yield refusals
    replies = CounterMetricFamily(
        f"{PREFIX}_replies", "SMTP replies sent, by code.", labels=["class", "code"]
    )
    for code in sorted(totals.replies):
        replies.add_metric([f"{code[:1]}xx", code], totals.replies[code])
    yield replies
    yield _histogram_family(
        "hook_duration_seconds", "Policy hook latency, by hook.", "hook", totals.hooks
    )
    yield _histogram_family(
        "scanner_duration_seconds", "Scanner latency, by scanner.", "scanner", totals.scanners
    )
    spool = HistogramMetricFamily(
        f"{PREFIX}_spool_commit_duration_seconds",
        "Time a message waited for its durable spool commit (group commit included).",
    )
    spool.add_metric([], _buckets(totals.spool_commit), totals.spool_commit["sum"])
    yield spool
    delivery = CounterMetricFamily(
        f"{PREFIX}_delivery_recipients",
        "Recipients after a delivery attempt, by outcome.",
        labels=["outcome"],
    )
    for outcome, count in totals.delivery.items():
        delivery.add_metric([outcome], count)
    yield delivery
    script = CounterMetricFamily(
        f"{PREFIX}_stat", "The policy scripts' stat() counters.", labels=["name", "legend"]
    )
    for name in sorted(totals.script):
        for legend in sorted(totals.script[name]):
            script.add_metric([name, legend], totals.script[name][legend])
    yield script


def _histogram_family(
    name: str, text: str, label: str, histograms: dict[str, dict[str, Any]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(f"{PREFIX}_{name}", text, labels=[label])
    for key in sorted(histograms):
        family.add_metric([key], _buckets(histograms[key]), histograms[key]["sum"])
    return family


class _Collector:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def collect(self) -> Iterator[Metric]:
        return families(Totals(stats.documents(self.data_dir)))


def render(data_dir: Path) -> bytes:
    """The text exposition of everything the node's workers published under ``data_dir``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(data_dir))  # type: ignore[arg-type]
    return generate_latest(registry)
