"""A real ``mailwarden run`` with two workers whose policy script calls ``lib.stat``: the
counters of both workers are published and ``mailwarden stats`` sums them, in the table and
under ``"script"`` in ``--json``."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path
from typing import Any

from tests.server.conftest import wait_until, write_script
from tests.support.node import free_port, node_process, write_config

SCRIPT = """
from mailwarden.lib import stat


async def connect(conn):
    # The test harness's start-up probe comes from 127.0.0.1; the clients from 127.0.0.2.
    if conn.remote_ip != "127.0.0.1":
        stat("seen", {"yes": True})


async def rcpt_to(conn, tx, recipient):
    is_postmaster = recipient.address.startswith("postmaster@")
    stat("rcpt", {"postmaster": is_postmaster, "user": not is_postmaster})
"""

CONNECTIONS = 40


def one_connection(port: int, n: int) -> None:
    """EHLO, MAIL, one or two RCPTs (postmaster on even connections), RSET, QUIT."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("client.example.net")
        assert client.mail("sender@sender.example")[0] == 250
        assert client.rcpt(f"user{n}@example.org")[0] == 250
        if n % 2 == 0:
            assert client.rcpt("postmaster@example.org")[0] == 250
        client.rset()


def test_stat_counters_are_summed_over_two_workers(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, server=write_script(tmp_path, SCRIPT))
    config.write_text(config.read_text().replace("workers = 1", "workers = 2"))
    with node_process(tmp_path, config, port) as node:
        for n in range(CONNECTIONS):
            one_connection(port, n)
        expected = {
            "seen": {"yes": CONNECTIONS},
            "rcpt": {"postmaster": CONNECTIONS // 2, "user": CONNECTIONS},
        }

        def script_counters() -> dict[str, Any]:
            result = node.mailwarden("stats", "--json")
            assert result.returncode == 0, result.stderr
            return json.loads(result.stdout)["script"]

        # Workers publish every 2 s: wait until both published everything.
        wait_until(lambda: script_counters() == expected, "the summed script counters", 15)

        # Both workers served some of the connections (SO_REUSEPORT spreads them), and each
        # published its own part.
        per_worker = [
            json.loads(path.read_text())["script"].get("seen", {}).get("yes", 0)
            for path in sorted((tmp_path / "data" / "stats").glob("worker-*.json"))
        ]
        assert len(per_worker) == 2
        assert sum(per_worker) == CONNECTIONS
        assert all(count > 0 for count in per_worker), per_worker

        table = node.mailwarden("stats")
        assert table.returncode == 0, table.stderr
        assert "script counters" in table.stdout
        rows = [line.replace("│", " ").split() for line in table.stdout.splitlines()]
        assert ["seen", "yes", str(CONNECTIONS)] in rows
        assert ["rcpt", "postmaster", str(CONNECTIONS // 2)] in rows
        assert ["rcpt", "user", str(CONNECTIONS)] in rows
        assert max(len(line) for line in table.stdout.splitlines()) <= 80
