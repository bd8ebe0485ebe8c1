"""The one process of a node that serves ``/metrics`` and records the ``stat()`` time series:
the supervisor when there are several workers, else the only worker. Either way it reads what
the workers published (:mod:`mailwarden.stats`), so the values are summed over all of them and
no worker pays anything per event beyond its own integer increments.

Failure behaviour: a listen address that cannot be bound is a start-up error naming
``metrics.listen``; a time series that cannot be written is logged (once per failure kind) and
tried again at the next interval; neither ever stops mail.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from mailwarden import stats
from mailwarden.config import Config
from mailwarden.metrics import endpoint, exposition, series, series_store
from mailwarden.metrics.endpoint import MetricsEndpoint, Watcher
from mailwarden.node.errors import StartupError

log = logging.getLogger("mailwarden.node")

# Seconds between two recordings of the time series; a crash loses at most this much growth.
SERIES_INTERVAL = 10.0


class NodeMetrics:
    """Serves ``[metrics] listen`` (when set) and records the series (unless ``series`` is
    false). ``refresh`` runs before every reading: a lone worker publishes its own counters
    first, so that what it serves is current."""

    def __init__(
        self,
        config: Config,
        watcher: Watcher,
        refresh: Callable[[], None] = lambda: None,
        owner: tuple[int, int] | None = None,
    ) -> None:
        settings = config.metrics
        self.data_dir = Path(config.node.data_dir)
        self.refresh = refresh
        self.owner = owner  # uid, gid the series file is given (a root supervisor's workers')
        self.series = settings.series
        self.retention = series_store.Retention(
            minutes=settings.minute_retention_hours * series.HOUR,
            hours=settings.hour_retention_days * series.DAY,
            days=settings.day_retention_days * series.DAY,
        )
        self._previous: dict[int, series.Reading] = {}
        self._failed: str | None = None
        self.next_tick = time.monotonic() + SERIES_INTERVAL
        self.endpoint: MetricsEndpoint | None = None
        if settings.listen is not None:
            try:
                sock = endpoint.bind(settings.listen)
            except OSError as error:
                raise StartupError(
                    config.describe_problem(
                        ("metrics", "listen"),
                        f"cannot listen on {settings.listen}: {error.strerror or error}",
                    )
                ) from None
            self.endpoint = MetricsEndpoint(sock, self._render, watcher)
            log.info("metrics: serving /metrics on %s", settings.listen)

    def _render(self) -> bytes:
        self.refresh()
        return exposition.render(self.data_dir)

    def tick(self) -> None:
        """Record the series now; drop stalled HTTP clients. Called every SERIES_INTERVAL."""
        self.next_tick = time.monotonic() + SERIES_INTERVAL
        if self.endpoint is not None:
            self.endpoint.expire()
        if self.series:
            self.refresh()
            self.record()

    def record(self) -> None:
        current = series.readings(stats.documents(self.data_dir))
        grown = series.counter_deltas(self._previous, current)
        path = series_store.series_path(self.data_dir)
        try:
            db = series_store.connect(path)  # per recording: nothing open across a fork
            try:
                series_store.record(db, grown, time.time(), self.retention)
            finally:
                db.close()
        except (OSError, sqlite3.Error) as error:
            if str(error) != self._failed:
                log.error("metrics: cannot record the stat() series in %s: %s", path, error)
            self._failed = str(error)
            return  # the growth stays unrecorded: it is counted at the next try
        self._failed = None
        self._previous.update(current)
        self._give_to_owner(path)

    def _give_to_owner(self, path: Path) -> None:
        if self.owner is None:
            return
        for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(OSError):
                if name.stat().st_uid != self.owner[0]:
                    os.chown(name, *self.owner)

    def close(self) -> None:
        """A last recording (after the workers' final publication), then stop listening."""
        if self.series:
            self.refresh()
            self.record()
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    def forget(self) -> None:
        """In a forked child: close the inherited sockets, touching nothing else."""
        if self.endpoint is not None:
            for sock in self.endpoint.sockets():
                sock.close()
            self.endpoint = None
