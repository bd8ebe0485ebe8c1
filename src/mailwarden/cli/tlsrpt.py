"""``mailwarden tlsrpt send``: build a day's TLS reports (RFC 8460) and send them now.

Mailed reports are written into the first spool shard (as ``queue update`` writes: an
IMMEDIATE transaction beside the running node) and the node is woken to deliver them; https
reports are posted from here. ``--dry-run`` prints every report and where it would go, and
sends and marks nothing.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sqlite3
import time
from typing import Annotated

import typer

from mailwarden.cli.common import ConfigOption, fail, load, printable
from mailwarden.config import Config
from mailwarden.spool.records import SpoolRecord

tlsrpt_app = typer.Typer(help="SMTP TLS reports (RFC 8460).", no_args_is_help=True)

CLI_WORKER = 0xFE  # the id source of messages queued from the CLI, apart from every worker's


def _day(value: str | None) -> datetime.date:
    from mailwarden.tlsrpt.send import yesterday

    if value is None:
        return yesterday(time.time())
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None


@tlsrpt_app.command("send")
def send_command(
    config: ConfigOption = None,
    date: Annotated[
        str | None,
        typer.Option("--date", help="The UTC day to report, YYYY-MM-DD. Default: yesterday."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the reports and their destinations only.")
    ] = False,
) -> None:
    """Send the TLS reports of one day to every domain that asks for them (_smtp._tls)."""
    from mailwarden.lib import dns as lib_dns
    from mailwarden.node.delivery import message_id_source
    from mailwarden.tlsrpt.send import send_day

    settings = load(config)
    day = _day(date)
    lib_dns.configure(settings.node.dns_servers, settings.node.dns_timeout)
    queued = 0

    async def queue(record: SpoolRecord) -> None:
        nonlocal queued
        _queue_into_spool(settings, record)
        queued += 1

    try:
        outcomes = asyncio.run(
            send_day(
                settings,
                day,
                queue=None if dry_run else queue,
                new_id=message_id_source(CLI_WORKER),
                dry_run=dry_run,
            )
        )
    except (sqlite3.Error, OSError) as error:
        raise fail(f"cannot read the TLS report counts: {error}") from None
    if queued:
        from mailwarden.control import wake_queue

        wake_queue(settings)
    if not outcomes:
        typer.echo(f"{day.isoformat()}: no outbound TLS sessions recorded")
        return
    printed: set[str] = set()
    for outcome in outcomes:
        where = outcome.destination or "-"
        detail = f" ({outcome.detail})" if outcome.detail else ""
        typer.echo(printable(f"{outcome.domain} {where}: {outcome.status}{detail}"))
        if dry_run and outcome.report is not None and outcome.domain not in printed:
            printed.add(outcome.domain)
            typer.echo(json.dumps(outcome.report.document, indent=2))
    if any(outcome.status == "failed" for outcome in outcomes):
        raise typer.Exit(1)


def _queue_into_spool(settings: Config, record: SpoolRecord) -> None:
    """Write ``record`` into the first shard, as a worker's commit would."""
    from mailwarden.spool.operations import MessageChange, ShardWriter
    from mailwarden.spool.reader import shard_paths

    shards = shard_paths(settings.spool.path)
    if not shards:
        raise OSError(f"no spool shard in {settings.spool.path}: start the node once")
    with ShardWriter(shards[0], settings.spool.path) as writer, writer.transaction():
        writer.apply(MessageChange(record.id, queue=record))
