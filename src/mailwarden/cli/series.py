"""``mailwarden stats --series NAME``: one ``stat()`` counter's time series, read from the node's
``data_dir/series.sqlite`` (mailwarden.metrics.series_store), as a table or as JSON."""

from __future__ import annotations

import json
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from mailwarden.cli.common import err
from mailwarden.metrics import series_store
from mailwarden.metrics.series import RESOLUTIONS


class Resolution(StrEnum):
    minute = "minute"
    hour = "hour"
    day = "day"


def buckets(data_dir: Path, name: str, resolution: str) -> list[dict[str, Any]]:
    """The buckets of counter ``name`` at ``resolution``, oldest first, each with its start
    (RFC 3339, UTC), its start in Unix seconds and what each legend counted in it. Buckets
    in which nothing was counted are not stored, so they are not listed."""
    rows = series_store.read(series_store.series_path(data_dir), name, RESOLUTIONS[resolution])
    found: dict[int, dict[str, int]] = {}
    for start, legend, value in rows:
        found.setdefault(start, {})[legend] = value
    return [
        {
            "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
            "timestamp": start,
            "values": values,
        }
        for start, values in sorted(found.items())
    ]


def show(data_dir: Path, name: str, resolution: str, as_json: bool) -> None:
    """Print the series; with nothing recorded, say which file was read (on stderr with
    ``--json``, whose output stays one JSON object)."""
    found = buckets(data_dir, name, resolution)
    path = series_store.series_path(data_dir)
    note = f"no series {name!r} recorded in {path}"
    if as_json:
        document = {"name": name, "resolution": resolution, "buckets": found}
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        if not found:
            err.print(note, highlight=False, markup=False)
        return
    if not found:
        print(note)
        return
    legends = sorted({legend for bucket in found for legend in bucket["values"]})
    table = Table(title=f"{name} per {resolution} (UTC)")
    table.add_column("start", no_wrap=True)
    for legend in legends:
        table.add_column(Text(legend), justify="right", overflow="fold")
    for bucket in found:
        values = bucket["values"]
        table.add_row(bucket["start"], *(str(values.get(legend, 0)) for legend in legends))
    Console().print(table)
