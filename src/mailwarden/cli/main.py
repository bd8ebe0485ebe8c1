"""The ``mailwarden`` command: run the node, reload it, check the configuration, look at the queue.

Every command takes ``--config FILE`` (or the MAILWARDEN_CONFIG environment variable); with
neither, the embedded defaults apply (SMTP on 127.0.0.1:2525, data in the default data
directory: ``$MAILWARDEN_DATA_DIR``, else ``/var/lib/mailwarden`` for root, else the user's
data directory such as ``~/.local/share/mailwarden``), so every command a user runs finds the
same node wherever it is started.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mailwarden.cli.auth import auth_app
from mailwarden.cli.common import ConfigOption, err, load
from mailwarden.cli.datastore import datastore_app
from mailwarden.cli.queue import queue_app
from mailwarden.cli.series import Resolution
from mailwarden.cli.tlsrpt import tlsrpt_app
from mailwarden.config import Config, ConfigError
from mailwarden.policy.script import ScriptError

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="Mailwarden, the scriptable mail transfer agent.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(queue_app, name="queue")
app.add_typer(datastore_app, name="datastore")
app.add_typer(auth_app, name="auth")
app.add_typer(tlsrpt_app, name="tlsrpt")


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT (SIGHUP reloads)."""
    from mailwarden import node

    try:
        code = node.run(config)
    except ConfigError as error:
        raise _start_failed("configuration error", "\n", error) from None
    except ScriptError as error:
        raise _start_failed("policy script error", "\n", error) from None
    except (node.StartupError, OSError) as error:
        raise _start_failed("cannot start", ": ", error) from None
    raise typer.Exit(code)


def _start_failed(title: str, separator: str, error: Exception) -> typer.Exit:
    """Say why the node did not start: as a log line once the log is JSON (so that every line
    is), else in red on stderr. The Exit(1) to raise."""
    from mailwarden import logs

    if logs.line_format() == "json":
        logging.getLogger("mailwarden.node").error("%s: %s", title, error)
        logs.flush_all()
    else:
        err.print(f"[red]{title}[/red]{separator}{escape(str(error))}", highlight=False)
    return typer.Exit(1)


def _problems(settings: Config) -> list[str]:
    """What ``config check`` finds wrong beyond the file itself: files the configuration names
    and every policy script (imported, so a syntax error is found with its file and line)."""
    from mailwarden.node import load_scripts

    problems: list[str] = []
    try:
        settings.check_files()
    except ConfigError as error:
        problems.extend(error.problems)
    try:
        load_scripts(settings)
    except ScriptError as error:
        problems.append(str(error))
    problems.extend(_password_file_problems(settings))
    return problems


def _password_file_problems(settings: Config) -> list[str]:
    """Each readable ``auth_password_file`` parsed as the node will (check_files already
    reported those that are missing)."""
    from mailwarden.auth.passwords import PasswordFileError, read_password_file

    found = []
    for index, server in enumerate(settings.servers):
        path = server.auth_password_file
        if path is None or not path.is_file():
            continue
        try:
            read_password_file(path)
        except PasswordFileError as error:
            key = ("servers", index, "auth_password_file")
            found.append(settings.describe_problem(key, str(error)))
    return found


def _checked(config_path: str | None) -> Config:
    """The configuration, validated as ``config check`` does; exit 1 listing every problem."""
    settings = load(config_path)
    problems = _problems(settings)
    if problems:
        err.print("\n".join(problems), highlight=False, markup=False)
        raise typer.Exit(1)
    return settings


@app.command()
def reload(config: ConfigOption = None) -> None:
    """Validate the configuration and scripts as ``config check`` does, then ask the running
    node to reload them (SIGHUP). On any problem nothing is sent and the node keeps running
    what it has."""
    from mailwarden.control import RELOAD_SIGNAL, pid_file, signal_node

    # The node would refuse the same problems, but only in its own log; checking here first
    # puts the file and line on the operator's terminal and an exit code on the command.
    settings = _checked(config)
    pid = signal_node(settings, RELOAD_SIGNAL)
    if pid is None:
        path = pid_file(settings)
        err.print(f"no running node found (pid file {path})", highlight=False, markup=False)
        raise typer.Exit(1) from None
    typer.echo(f"reload requested from process {pid}")


@config_app.command("check")
def config_check(config: ConfigOption = None) -> None:
    """Validate the configuration and import every policy script; exit 1 on any problem."""
    settings = _checked(config)
    source = settings.source or "embedded defaults"
    typer.echo(f"{source}: OK ({len(settings.servers)} server(s))")
    typer.echo(f"data directory: {settings.node.data_dir}")
    typer.echo(f"spool: {settings.spool.path}")


@app.command("stats")
def stats_command(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
    series: Annotated[
        str | None,
        typer.Option(
            "--series", metavar="NAME", help="Show the time series of the stat() counter NAME."
        ),
    ] = None,
    resolution: Annotated[
        Resolution | None,
        typer.Option(help="Bucket width of --series (default: minute)."),
    ] = None,
) -> None:
    """Counters summed over the node's workers (connections, messages, script errors, …, and
    the scripts' own stat() counters), counted since each worker started and published every
    few seconds; with --series, one stat() counter per minute, hour or day, kept across
    restarts."""
    from mailwarden.stats import collect, collect_script, stats_dir

    if resolution is not None and series is None:
        raise typer.BadParameter("needs --series NAME", param_hint="--resolution")
    settings = load(config)
    data_dir = Path(settings.node.data_dir)
    if series is not None:
        from mailwarden.cli import series as series_cli

        series_cli.show(data_dir, series, (resolution or Resolution.minute).value, as_json)
        return
    totals = collect(data_dir)
    script = collect_script(data_dir)
    published = any(stats_dir(data_dir).glob("worker-*.json"))
    note = f"no statistics published in {stats_dir(data_dir)} (is the node running?)"
    if as_json:
        json.dump({**totals, "script": script}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        if not published:
            err.print(note, highlight=False, markup=False)
        return
    console = Console()
    table = Table("counter", "value")
    for name, value in totals.items():
        table.add_row(name, str(value))
    console.print(table)
    if script:
        console.print(_script_stats_table(script))
    if not published:
        typer.echo(note)


def _script_stats_table(script: dict[str, dict[str, int]]) -> Table:
    """The scripts' stat() counters, one row per legend. The table takes the terminal's width
    (80 columns when not a terminal); a long name or legend (up to 64 characters, see
    mailwarden.lib.stat) folds onto more lines rather than being cut."""
    table = Table(title="script counters (stat)")
    table.add_column("name", overflow="fold")
    table.add_column("legend", overflow="fold")
    table.add_column("value", justify="right", no_wrap=True)
    for name, legends in script.items():
        for legend, value in legends.items():
            table.add_row(Text(name), Text(legend), Text(str(value)))
    return table


if __name__ == "__main__":  # pragma: no cover
    app()
