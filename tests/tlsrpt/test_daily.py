"""The daily run: when it happens (RFC 8460 §4.1: after the UTC day, spread by a random
delay), and that it sends yesterday's reports once, even when run again."""

from __future__ import annotations

import datetime
from pathlib import Path

from tests.support.dns_server import dns_server

from mailwarden.config import Config
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.lib import dns as lib_dns
from mailwarden.spool.reader import iter_messages, read_message_bytes
from mailwarden.spool.store import SpoolStore
from mailwarden.tlsrpt.daily import DailyReports, seconds_until_run, seconds_until_tomorrow
from mailwarden.tlsrpt.recorder import TlsReportRecorder

MIDNIGHT = datetime.datetime(2026, 5, 2, tzinfo=datetime.UTC).timestamp()


def test_the_run_is_after_midnight_plus_the_days_delay() -> None:
    # Ahead of today's moment: wait for it.
    assert seconds_until_run(MIDNIGHT + 600, 1800, catch_up=30) == 1200
    # Past it (the node was down then): catch up soon.
    assert seconds_until_run(MIDNIGHT + 3600, 1800, catch_up=30) == 30
    assert seconds_until_tomorrow(MIDNIGHT + 3600, 120) == 86400 - 3600 + 120


async def test_yesterdays_reports_are_queued_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    recorder = TlsReportRecorder(clock=lambda: MIDNIGHT - 3600)  # yesterday, 23:00
    recorder.start(data, 60)
    policy = TlsPolicy(mode=TlsMode.REQUIRED, policy_domain="example.net")
    recorder.failure(policy, "starttls-not-supported", mx_host="mx.example.net")
    await recorder.stop()
    config = Config.model_validate(
        {"node": {"data_dir": str(data), "hostname": "mx.sender.example"}}
    )
    spool = SpoolStore(data / "spool", 0, fsync=False)
    spool.open()
    zone = {"example.net": '_smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tls@example.net"\n'}
    ids = iter(["report-1", "report-2"])
    daily = DailyReports(
        config, spool.commit, lambda: next(ids), clock=lambda: MIDNIGHT + 900, draw=lambda: 0.5
    )
    try:
        with dns_server(tmp_path / "dns", zone) as server:
            lib_dns.configure([server.address], timeout=2.0)
            await daily.run_once()
            await daily.run_once()  # a second run (a restart that day) sends nothing again
    finally:
        lib_dns.configure()
        spool.close()
    (record,) = list(iter_messages(data / "spool"))
    assert record.id == "report-1"
    assert [r.address for r in record.recipients] == ["tls@example.net"]
    assert record.sender == "tlsrpt-noreply@mx.sender.example"
    message = read_message_bytes(data / "spool", record.id)
    assert message is not None
    assert b"Subject: Report Domain: example.net\r\n Submitter: mx.sender.example\r\n" in message
    assert b"Report-ID: <2026-05-01.example.net@mx.sender.example>" in message
