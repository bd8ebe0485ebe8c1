"""Scanner latency on /metrics: a real ``mailwarden run`` whose data hook asks real clamd,
spamd and rspamd daemons (tests/support/scanners.py), and a clamd that is not there; after the
SMTP sessions ``GET /metrics`` shows one observation per call in
``mailwarden_scanner_duration_seconds{scanner=…}``, failed calls included."""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.metrics.test_e2e_metrics import scrape
from tests.server.conftest import wait_until, write_script
from tests.support.node import free_port, node_process, write_config
from tests.support.scanners import (
    ClamdServer,
    RspamdServer,
    SpamdServer,
    clamd_server,
    rspamd_server,
    spamd_server,
)

SCRIPT = """
from mailwarden.lib import ScannerError, clamav, rspamd, spamassassin
from mailwarden.policy.actions import Defer


async def data(conn, tx, message):
    await rspamd.check(message, conn=conn, tx=tx)
    await spamassassin.check(message)
    try:
        await clamav.scan(message, address=GONE)
    except ScannerError:
        pass  # a failed call is observed too
    await clamav.scan(message)
    return None
"""

MESSAGES = 3


@pytest.fixture(scope="module")
def daemons(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ClamdServer, SpamdServer, RspamdServer]]:
    with (
        clamd_server(tmp_path_factory.mktemp("clamd")) as clamd,
        spamd_server() as spamd,
        rspamd_server() as rspamd,
    ):
        yield clamd, spamd, rspamd


def test_metrics_show_each_scanners_latency(
    tmp_path: Path, daemons: tuple[ClamdServer, SpamdServer, RspamdServer]
) -> None:
    clamd, spamd, rspamd = daemons
    port, metrics_port = free_port(), free_port()
    script = SCRIPT.replace("GONE", repr(str(tmp_path / "gone.sock")))
    library = (
        f'[library]\nclamd_address = "{clamd.address}"\nspamd_address = "{spamd.address}"\n'
        f'rspamd_url = "{rspamd.url}"\nscanner_timeout = 20\n'
    )
    config = write_config(
        tmp_path,
        port,
        server=write_script(tmp_path, script),
        body=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' + library,
    )
    with node_process(tmp_path, config, port):
        before = scrape(metrics_port)
        assert not any(name.startswith("mailwarden_scanner_") for name, _ in before)
        for n in range(MESSAGES):
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.sendmail(
                    "alice@sender.example",
                    ["bob@example.org"],
                    f"Subject: scan {n}\r\n\r\nThe minutes.\r\n",
                )

        def count(scanner: str) -> float:
            key = ("mailwarden_scanner_duration_seconds_count", (("scanner", scanner),))
            return scrape(metrics_port).get(key, 0)

        # Workers publish every 2 s.
        wait_until(lambda: count("rspamd") == MESSAGES, "rspamd's calls in /metrics", 15)
        samples = scrape(metrics_port)

    def sample(suffix: str, scanner: str, *labels: tuple[str, str]) -> float:
        name = f"mailwarden_scanner_duration_seconds_{suffix}"
        return samples[(name, tuple(sorted((("scanner", scanner), *labels))))]

    assert sample("count", "spamd") == MESSAGES
    assert sample("count", "clamd") == 2 * MESSAGES  # the failed calls and the verdicts
    for scanner in ("rspamd", "spamd", "clamd"):
        assert 0 < sample("sum", scanner) < 60
        assert sample("bucket", scanner, ("le", "+Inf")) == sample("count", scanner)
