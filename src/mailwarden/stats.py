"""Per-process counters, cheap enough for the hot path (plain attribute increments).

Each worker publishes its counters to ``<data_dir>/stats/worker-N.json`` every few seconds and
when it stops (written to a temporary file, then renamed, so a reader never sees half a file);
``mailwarden stats`` adds them up. Counters count since the worker started.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from mailwarden.metrics import instruments

PUBLISH_INTERVAL = 2.0


@dataclass(slots=True)
class Counters:
    """What ``mailwarden stats`` shows (the list is documented in docs/policy.md, "Logging and
    counters"). A refusal is any 4xx/5xx reply that refuses what the client asked for on a
    policy ground: the script's Reject or Defer, the built-in relay rule, or a script error."""

    connections: int = 0  # admitted (got past the connection limits)
    connections_refused: int = 0  # turned away by the limits or shutdown, before any script
    messages_queued: int = 0
    messages_held: int = 0
    messages_discarded: int = 0
    messages_rejected: int = 0  # messages refused at (or while reaching) end of data
    spool_errors: int = 0
    script_errors: int = 0
    auth_failures: int = 0
    refused_connect: int = 0  # the greeting was a 554 or 421 from the connect hook
    refused_helo: int = 0
    refused_auth: int = 0  # every AUTH that did not log in (the script's answer or no hook)
    refused_mail: int = 0
    refused_rcpt: int = 0  # relay rule, script Reject/Defer, script errors
    refused_vrfy: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


counters = Counters()

# The script counters of mailwarden.lib.stat: {name: {legend: value}}, published beside the
# built-in ones. Owned here so that publishing needs no import of the script library.
script_counters: dict[str, dict[str, int]] = {}


def stats_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "stats"


def publish(data_dir: Path, worker: int, gauges: dict[str, Any] | None = None) -> None:
    """Write this process's counters for ``mailwarden stats`` and ``/metrics``, with
    ``gauges`` (what the worker reads off its servers and queue when it publishes) beside the
    instruments of :mod:`mailwarden.metrics.instruments`. Raises OSError on failure."""
    directory = stats_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"worker": worker, "pid": os.getpid(), "updated": time.time()}
    document["counters"] = counters.as_dict()
    document["script"] = script_counters
    document["metrics"] = {**instruments.snapshot(), **(gauges or {})}
    temporary = directory / f".worker-{worker}.json.tmp"
    temporary.write_text(json.dumps(document))
    temporary.replace(directory / f"worker-{worker}.json")


def documents(data_dir: Path) -> list[dict]:
    """Every worker's published document that could be read whole."""
    directory = stats_dir(data_dir)
    if not directory.is_dir():
        return []
    documents = []
    for path in sorted(directory.glob("worker-*.json")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a worker that never finished writing: skip it rather than fail
        if isinstance(document, dict):
            documents.append(document)
    return documents


def collect(data_dir: Path) -> dict[str, int]:
    """The sum of every worker's published counters (zeros when none were published)."""
    total = dict.fromkeys((f.name for f in fields(Counters)), 0)
    for document in documents(data_dir):
        published = document.get("counters")
        if not isinstance(published, dict):
            continue
        for name in total:
            total[name] += int(published.get(name, 0))
    return total


def collect_script(data_dir: Path) -> dict[str, dict[str, int]]:
    """The sum of every worker's script counters, ``{name: {legend: value}}``, sorted by name
    and legend (empty when no script called ``stat()``)."""
    total: dict[str, dict[str, int]] = {}
    for document in documents(data_dir):
        published = document.get("script")
        if not isinstance(published, dict):
            continue  # a file written before script counters existed
        for name, legends in published.items():
            if not isinstance(legends, dict):
                continue
            into = total.setdefault(str(name), {})
            for legend, value in legends.items():
                into[str(legend)] = into.get(str(legend), 0) + int(value)
    return {name: dict(sorted(total[name].items())) for name in sorted(total)}
