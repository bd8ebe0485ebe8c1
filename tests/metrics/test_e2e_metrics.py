"""A real ``mailwarden run`` with two workers and ``[metrics] listen``: after real SMTP
sessions (smtplib), ``GET /metrics`` over real HTTP (httpx) shows connections, transactions,
replies by code, hook latency, spool commit latency and the scripts' stat() counters, summed
over both workers, in a text that prometheus-client's own parser reads."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tests.server.conftest import wait_until, write_script
from tests.support.node import free_port, node_process, write_config

SCRIPT = """
from mailwarden.lib import stat
from mailwarden.policy.actions import Reject


async def connect(conn):
    if conn.remote_ip != "127.0.0.1":  # not the harness's start-up probe
        stat("seen", {"yes": True})


async def rcpt_to(conn, tx, recipient):
    if recipient.address.startswith("nobody@"):
        return Reject("no such user", code=550, enhanced="5.1.1")
"""

CONNECTIONS = 30


def one_session(port: int, n: int) -> None:
    """One message queued; on odd connections a recipient refused with 550 first."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("client.example.net")
        assert client.mail("sender@sender.example")[0] == 250
        if n % 2:
            assert client.rcpt("nobody@example.org")[0] == 550
        assert client.rcpt(f"user{n}@example.org")[0] == 250
        assert client.data(b"Subject: hello\r\n\r\nbody\r\n")[0] == 250


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and labels, parsed by prometheus-client."""
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_are_summed_over_two_workers(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    config = write_config(
        tmp_path,
        port,
        server=write_script(tmp_path, SCRIPT),
        body=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n',
    )
    config.write_text(config.read_text().replace("workers = 1", "workers = 2"))
    with node_process(tmp_path, config, port) as node:
        for n in range(CONNECTIONS):
            one_session(port, n)
        refused = CONNECTIONS // 2

        def seen() -> float:
            return scrape(metrics_port).get(
                ("mailwarden_stat_total", (("legend", "yes"), ("name", "seen"))), 0
            )

        # Workers publish every 2 s; the supervisor sums what they published.
        wait_until(lambda: seen() == CONNECTIONS, "both workers' counts in /metrics", 15)
        wait_until(
            lambda: scrape(metrics_port)[("mailwarden_connections_current", ())] == 0,
            "the sessions to be closed",
            15,
        )
        samples = scrape(metrics_port)
        assert samples[("mailwarden_workers_reporting", ())] == 2
        # The harness's start-up probe is one more connection.
        assert samples[("mailwarden_connections_total", ())] == CONNECTIONS + 1
        assert samples[("mailwarden_transactions_total", (("outcome", "queued"),))] == CONNECTIONS
        assert samples[("mailwarden_refusals_total", (("phase", "rcpt"),))] == refused

        def code(c: str) -> float:
            return samples[("mailwarden_replies_total", (("class", c[0] + "xx"), ("code", c)))]

        assert code("550") == refused
        assert code("354") == CONNECTIONS
        assert code("221") == CONNECTIONS
        # Greeting of every session and the probe's.
        assert code("220") == CONNECTIONS + 1
        # Hook latency: one connect per connection (the probe's included), one rcpt_to per
        # RCPT; each histogram's +Inf bucket is its count.
        hook = lambda h, s: samples[(f"mailwarden_hook_duration_seconds_{s}", (("hook", h),))]  # noqa: E731
        assert hook("connect", "count") == CONNECTIONS + 1
        assert hook("rcpt_to", "count") == CONNECTIONS + refused
        assert 0 < hook("rcpt_to", "sum") < 5
        inf = ("mailwarden_hook_duration_seconds_bucket", (("hook", "rcpt_to"), ("le", "+Inf")))
        assert samples[inf] == CONNECTIONS + refused
        assert samples[("mailwarden_spool_commit_duration_seconds_count", ())] == CONNECTIONS

        # Both workers served some of the sessions: the totals above are really sums.
        per_worker = [
            json.loads(path.read_text())["metrics"]["replies"].get("354", 0)
            for path in sorted((tmp_path / "data" / "stats").glob("worker-*.json"))
        ]
        assert len(per_worker) == 2 and all(count > 0 for count in per_worker), per_worker

        assert httpx.get(f"http://127.0.0.1:{metrics_port}/other", timeout=5).status_code == 404
        assert node.process.poll() is None
