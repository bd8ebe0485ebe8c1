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

PUBLISH_INTERVAL = 2.0


@dataclass(slots=True)
class Counters:
    connections: int = 0
    connections_refused: int = 0
    messages_queued: int = 0
    messages_held: int = 0
    messages_discarded: int = 0
    messages_rejected: int = 0
    spool_errors: int = 0
    script_errors: int = 0
    auth_failures: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


counters = Counters()


def stats_dir(data_dir: Path) -> Path:
    return Path(data_dir) / "stats"


def publish(data_dir: Path, worker: int) -> None:
    """Write this process's counters for ``mailwarden stats``. Raises OSError on failure."""
    directory = stats_dir(data_dir)
    directory.mkdir(parents=True, exist_ok=True)
    document = {"worker": worker, "pid": os.getpid(), "updated": time.time()}
    document["counters"] = counters.as_dict()
    temporary = directory / f".worker-{worker}.json.tmp"
    temporary.write_text(json.dumps(document))
    temporary.replace(directory / f"worker-{worker}.json")


def collect(data_dir: Path) -> dict[str, int]:
    """The sum of every worker's published counters (zeros when none were published)."""
    total = dict.fromkeys((f.name for f in fields(Counters)), 0)
    directory = stats_dir(data_dir)
    if not directory.is_dir():
        return total
    for path in sorted(directory.glob("worker-*.json")):
        try:
            published = json.loads(path.read_text())["counters"]
        except (OSError, ValueError, KeyError):
            continue  # a worker that never finished writing: skip it rather than fail
        for name in total:
            total[name] += int(published.get(name, 0))
    return total
