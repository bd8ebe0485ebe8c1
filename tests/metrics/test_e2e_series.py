"""The stat() time series on a real ``mailwarden run``: what the scripts counted (real SMTP
sessions, smtplib) is in ``mailwarden stats --series`` per minute, hour and day, with the same
totals at each, and it survives a restart of the node (two workers first, then one)."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path
from typing import Any

from tests.support.node import free_port, node_process, run_cli, write_config

SCRIPT = """
from mailwarden.lib import stat


async def connect(conn):
    if conn.remote_ip != "127.0.0.1":  # not the harness's start-up probe
        stat("seen", {"yes": True, "never": False})


async def rcpt_to(conn, tx, recipient):
    stat("rcpt", {"user": True})
"""


def sessions(port: int, count: int) -> None:
    for n in range(count):
        with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as c:
            c.ehlo("client.example.net")
            assert c.mail("sender@sender.example")[0] == 250
            assert c.rcpt(f"user{n}@example.org")[0] == 250
            c.rset()


def series(config: Path, name: str, resolution: str | None = None) -> dict[str, Any]:
    args = ["stats", "--series", name, "--json", "--config", str(config)]
    if resolution is not None:
        args += ["--resolution", resolution]
    done = run_cli(*args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def total(document: dict[str, Any], legend: str) -> int:
    return sum(bucket["values"].get(legend, 0) for bucket in document["buckets"])


def test_series_add_up_at_every_resolution_and_survive_a_restart(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "policy.py").write_text(SCRIPT)
    config = write_config(tmp_path, port, server='script = "policy.py"\n')
    one_worker = config.read_text()
    config.write_text(one_worker.replace("workers = 1", "workers = 2"))

    with node_process(tmp_path, config, port) as node:
        sessions(port, 5)
        assert node.stop() == 0  # the supervisor records the workers' last counts at stop
    for resolution in ("minute", "hour", "day"):
        document = series(config, "seen", resolution)
        assert (document["name"], document["resolution"]) == ("seen", resolution)
        assert total(document, "yes") == 5
        assert all("never" not in bucket["values"] for bucket in document["buckets"])
    minutes = series(config, "seen")  # minute is the default
    assert minutes["resolution"] == "minute"
    for bucket in minutes["buckets"]:
        assert bucket["timestamp"] % 60 == 0
        assert bucket["start"] == time.strftime(
            "%Y-%m-%dT%H:%M:%SZ", time.gmtime(bucket["timestamp"])
        )

    config.write_text(one_worker)
    with node_process(tmp_path, config, port, log_mode="ab") as node:
        # What the first run recorded is there before anything new is counted.
        assert total(series(config, "seen"), "yes") == 5
        sessions(port, 3)
        assert node.stop() == 0  # the lone worker records its own counts at stop
    for resolution in ("minute", "hour", "day"):
        assert total(series(config, "seen", resolution), "yes") == 8
        assert total(series(config, "rcpt", resolution), "user") == 8
    days = series(config, "seen", "day")["buckets"]
    assert all(bucket["timestamp"] % 86400 == 0 for bucket in days)


def test_the_table_and_an_unknown_series(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "policy.py").write_text(SCRIPT)
    config = write_config(tmp_path, port, server='script = "policy.py"\n')
    with node_process(tmp_path, config, port) as node:
        sessions(port, 2)
        assert node.stop() == 0
    table = run_cli("stats", "--series", "seen", "--resolution", "hour", "--config", str(config))
    assert table.returncode == 0, table.stderr
    assert "seen per hour (UTC)" in table.stdout
    header = next(line for line in table.stdout.splitlines() if "start" in line)
    assert "yes" in header and "never" not in header  # a legend that only counted 0 has no bucket
    rows = [line.split("│") for line in table.stdout.splitlines() if "Z │" in line]
    # One row per hour holding counts (two if the test ran across an hour's end).
    assert 1 <= len(rows) <= 2
    assert all(cells[1].strip().endswith(":00:00Z") for cells in rows)
    assert sum(int(cells[2]) for cells in rows) == 2

    unknown = run_cli("stats", "--series", "nothing", "--json", "--config", str(config))
    assert unknown.returncode == 0
    assert json.loads(unknown.stdout) == {"name": "nothing", "resolution": "minute", "buckets": []}
    assert "no series 'nothing' recorded in " in unknown.stderr

    alone = run_cli("stats", "--resolution", "day", "--config", str(config))
    assert alone.returncode == 2 and "needs --series NAME" in alone.stderr
