"""Observability: Prometheus ``/metrics``, the ``stat()`` time series, and the worker's hot-path
instruments they are made from.

- :mod:`~mailwarden.metrics.instruments`: what a worker counts (reply codes, hook, spool commit
  and scanner latency histograms); plain integers, published with :mod:`mailwarden.stats`.
- :mod:`~mailwarden.metrics.exposition`: the workers' published documents summed and written in
  Prometheus' text format (prometheus-client).
- :mod:`~mailwarden.metrics.endpoint`: the small HTTP listener of ``[metrics] listen``.
- :mod:`~mailwarden.metrics.series`: per-minute buckets and their hourly and daily roll-ups
  (pure functions); :mod:`~mailwarden.metrics.series_store` keeps them in SQLite.
- :mod:`~mailwarden.metrics.node`: the one process of a node that serves and records them.

Only ``instruments`` is imported here: the hot path must not pay for prometheus-client.
"""

from __future__ import annotations

from mailwarden.metrics.instruments import observe_scanner

__all__ = ["observe_scanner"]
