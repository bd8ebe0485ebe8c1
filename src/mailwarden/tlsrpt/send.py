"""Sending one day's reports: every policy domain with sessions that day, to each
destination its ``_smtp._tls`` record names (RFC 8460 §3, §5), each at most once.

Used by ``mailwarden tlsrpt send`` and by the node's daily run (``daily.py``); both say how a
mailed report is queued (``queue``: the worker commits into its own shard, the CLI writes into
a shard from outside). A destination is marked sent in ``tlsrpt.sqlite`` once its report was
queued or posted, so a rerun (or a node restarted the same day) sends only what is missing.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from mailwarden.config import Config
from mailwarden.lib.dns import DnsError
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.records import SpoolRecord
from mailwarden.tlsrpt import discovery, store
from mailwarden.tlsrpt.report import Report, Reporter, build_report
from mailwarden.tlsrpt.submit import SubmitError, post_report, report_record

log = logging.getLogger("mailwarden.tlsrpt")

Queue = Callable[[SpoolRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one domain's report for one destination (or of the domain, when
    ``destination`` is None: no record, or the lookup failed)."""

    domain: str
    destination: str | None
    status: str  # "queued", "posted", "would send", "sent before", "not published", "failed"
    detail: str = ""
    report: Report | None = None


def reporter(config: Config) -> Reporter:
    settings, host = config.tlsrpt, config.node.hostname
    return Reporter(
        settings.organization(host), settings.contact(host), settings.submitter_name(host)
    )


def yesterday(now: float) -> datetime.date:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date() - datetime.timedelta(days=1)


async def send_day(
    config: Config,
    day: datetime.date,
    *,
    queue: Queue | None,
    new_id: Callable[[], str],
    dry_run: bool = False,
    clock: Callable[[], float] = time.time,
) -> list[Outcome]:
    """Build and send ``day``'s reports; with ``dry_run`` only build them and say where they
    would go (nothing is sent or marked). Raises sqlite3.Error or OSError for the store."""
    path = store.store_path(Path(config.node.data_dir))
    if not path.exists():
        return []
    db = store.connect(path)
    try:
        return await _send(config, db, day, queue, new_id, dry_run, clock)
    finally:
        db.close()


async def _send(
    config: Config,
    db: sqlite3.Connection,
    day: datetime.date,
    queue: Queue | None,
    new_id: Callable[[], str],
    dry_run: bool,
    clock: Callable[[], float],
) -> list[Outcome]:
    settings, host = config.tlsrpt, config.node.hostname
    who = reporter(config)
    key = day.isoformat()
    outcomes: list[Outcome] = []
    for domain in store.domains(db, key):
        report = build_report(domain, day, store.day_counts(db, key, domain), who)
        try:
            record = await discovery.lookup(domain)
        except DnsError as error:
            outcomes.append(Outcome(domain, None, "failed", f"_smtp._tls lookup: {error}", report))
            continue
        if record is None or not record.destinations:
            outcomes.append(Outcome(domain, None, "not published", "", report))
            continue
        done = store.sent_to(db, key, domain)
        for uri in record.destinations:
            if uri in done:
                outcomes.append(Outcome(domain, uri, "sent before", "", report))
                continue
            if dry_run:
                outcomes.append(Outcome(domain, uri, "would send", "", report))
                continue
            try:
                if uri.lower().startswith("mailto:"):
                    if queue is None:
                        raise SubmitError("no spool to queue the report into")
                    await queue(
                        report_record(
                            report,
                            to=discovery.mailto_address(uri),
                            sender=settings.from_address(host),
                            submitter=who.submitter,
                            server_id=config.servers[0].id,
                            now=clock(),
                            new_id=new_id(),
                        )
                    )
                    status, detail = "queued", ""
                else:
                    code = await post_report(
                        report, uri, timeout=settings.https_timeout, ca_file=settings.https_ca_file
                    )
                    status, detail = "posted", f"HTTP {code}"
            except (SubmitError, SpoolError, OSError) as error:
                log.warning("TLS report for %s to %s not sent: %s", domain, uri, error)
                outcomes.append(Outcome(domain, uri, "failed", str(error), report))
                continue
            store.mark_sent(db, key, domain, [uri], clock())
            outcomes.append(Outcome(domain, uri, status, detail, report))
    return outcomes
