"""The ``stat()`` time series in the node's SQLite file, ``<data_dir>/series.sqlite``.

One writer per node (the supervisor, or the only worker) records what the counters grew by
into the current minute, hour and day at once, in one transaction, and removes buckets past
their retention; ``mailwarden stats --series`` reads. WAL mode, so a reader never waits for
the writer. A counter's growth since the last reading before a crash (at most one recording
interval) is lost, never counted twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mailwarden.metrics.series import (
    DAY,
    HOUR,
    MINUTE,
    Point,
    bucket_start,
    oldest_kept,
    rollup,
)

FILE_NAME = "series.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    width INTEGER NOT NULL,   -- seconds: 60, 3600 or 86400
    name TEXT NOT NULL,
    legend TEXT NOT NULL,
    start INTEGER NOT NULL,   -- Unix seconds, UTC
    value INTEGER NOT NULL,
    PRIMARY KEY (width, name, start, legend)
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class Retention:
    """How long each resolution is kept, in seconds."""

    minutes: float = 48 * HOUR
    hours: float = 60 * DAY
    days: float = 730 * DAY

    def of(self, width: int) -> float:
        return {MINUTE: self.minutes, HOUR: self.hours, DAY: self.days}[width]


def series_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(_SCHEMA)
    return db


def record(
    db: sqlite3.Connection,
    grown: Mapping[tuple[str, str], int],
    now: float,
    retention: Retention,
) -> None:
    """Add what each (name, legend) grew by to the buckets holding ``now``, at every
    resolution, and remove expired buckets; one transaction. Raises sqlite3.Error."""
    minute = bucket_start(now, MINUTE)
    points: list[Point] = [(name, legend, minute, value) for (name, legend), value in grown.items()]
    db.execute("BEGIN IMMEDIATE")
    try:
        for width in (MINUTE, HOUR, DAY):
            db.executemany(
                "INSERT INTO series (width, name, legend, start, value) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (width, name, start, legend) DO UPDATE"
                " SET value = value + excluded.value",
                [
                    (width, name, legend, start, value)
                    for (name, legend, start), value in rollup(points, width).items()
                ],
            )
            db.execute(
                "DELETE FROM series WHERE width = ? AND start < ?",
                (width, oldest_kept(now, width, retention.of(width))),
            )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def read(
    path: Path, name: str, width: int, since: float | None = None
) -> list[tuple[int, str, int]]:
    """``(start, legend, value)`` of counter ``name`` at resolution ``width``, oldest first;
    empty when nothing was recorded (or no file exists yet)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        rows = db.execute(
            "SELECT start, legend, value FROM series WHERE width = ? AND name = ? AND start >= ?"
            " ORDER BY start, legend",
            (width, name, -1 if since is None else bucket_start(since, width)),
        ).fetchall()
    except sqlite3.OperationalError:  # a file without the table yet
        return []
    finally:
        db.close()
    return [(int(start), str(legend), int(value)) for start, legend, value in rows]
