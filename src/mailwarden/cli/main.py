"""The ``mailwarden`` command: run the node, reload it, check the configuration, list the queue.

Every command takes ``--config FILE`` (or the MAILWARDEN_CONFIG environment variable); with
neither, the embedded defaults apply (SMTP on 127.0.0.1:2525, data in ./var/mailwarden).
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mailwarden.config import Config, ConfigError, load_config
from mailwarden.policy.script import ScriptError

app = typer.Typer(
    help="Mailwarden, the scriptable mail transfer agent.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
queue_app = typer.Typer(help="Look at the messages in the spool.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(queue_app, name="queue")

ConfigOption = Annotated[
    str | None,
    typer.Option(
        "--config",
        "-c",
        envvar="MAILWARDEN_CONFIG",
        help="Configuration file (TOML). Default: the embedded defaults.",
    ),
]

# soft_wrap: never hard-wrap messages at the console width (80 columns when stderr is not a
# terminal), which split "file:line: key: problem" across lines and broke grep and CI logs.
err = Console(stderr=True, soft_wrap=True)


def _load(config_path: str | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as error:
        err.print(f"[red]configuration error[/red]\n{error}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT (SIGHUP reloads)."""
    from mailwarden import node

    try:
        code = node.run(config)
    except ConfigError as error:
        err.print(f"[red]configuration error[/red]\n{error}", highlight=False)
        raise typer.Exit(1) from None
    except ScriptError as error:
        err.print(f"[red]policy script error[/red]\n{error}", highlight=False)
        raise typer.Exit(1) from None
    except node.StartupError as error:
        err.print(f"[red]cannot start[/red]: {error}", highlight=False)
        raise typer.Exit(1) from None
    except OSError as error:
        err.print(f"[red]cannot start[/red]: {error}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def reload(config: ConfigOption = None) -> None:
    """Ask the running node to reload its configuration and scripts (sends SIGHUP)."""
    from mailwarden.node import pid_file

    settings = _load(config)
    path = pid_file(settings)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        err.print(f"no running node found (pid file {path})", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(f"reload requested from process {pid}")


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration and import every policy script; exit 1 on any problem."""
    from mailwarden.node import load_scripts

    settings = _load(config)
    problems: list[str] = []
    try:
        settings.check_files()
    except ConfigError as error:
        problems.extend(error.problems)
    try:
        load_scripts(settings)
    except ScriptError as error:
        problems.append(str(error))
    if problems:
        err.print("\n".join(problems), highlight=False)
        raise typer.Exit(1)
    source = settings.source or "embedded defaults"
    typer.echo(f"{source}: OK ({len(settings.servers)} server(s))")


@app.command("stats")
def stats_command(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Counters summed over the node's workers (connections, messages, script errors, …),
    counted since each worker started and published every few seconds."""
    from mailwarden.stats import collect

    settings = _load(config)
    totals = collect(Path(settings.node.data_dir))
    if as_json:
        json.dump(totals, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table("counter", "value")
    for name, value in totals.items():
        table.add_row(name, str(value))
    Console().print(table)


@queue_app.command("list")
def queue_list(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """The messages in the spool: id, sender, recipients and state."""
    from mailwarden.spool.reader import iter_messages

    settings = _load(config)
    messages = list(iter_messages(Path(settings.spool.path)))
    if as_json:
        document = [
            {
                "id": m.id,
                "server": m.server_id,
                "received_at": m.received_at,
                "sender": m.sender,
                "client_ip": m.client_ip,
                "size": m.size,
                "state": m.state,
                "metadata": m.metadata,
                "recipients": [
                    {
                        "address": r.address,
                        "state": r.state,
                        "reason": r.reason,
                        "metadata": r.metadata,
                        "retry_count": r.retry_count,
                        "next_attempt": r.next_attempt,
                    }
                    for r in m.recipients
                ],
            }
            for m in messages
        ]
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    table = Table()
    table.add_column("id", no_wrap=True)  # operators copy ids: never cut them
    table.add_column("received", no_wrap=True)
    for name in ("sender", "recipients"):
        table.add_column(name, overflow="fold")
    table.add_column("size", justify="right")
    table.add_column("state")
    for m in messages:
        received = datetime.datetime.fromtimestamp(m.received_at).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            m.id,
            received,
            m.sender or "<>",
            "\n".join(r.address for r in m.recipients),
            str(m.size),
            m.state,
        )
    Console().print(table)
    typer.echo(f"{len(messages)} message(s)")


if __name__ == "__main__":  # pragma: no cover
    app()
