"""The ``mailwarden`` command: run the node, reload it, check the configuration, look at the queue.

Every command takes ``--config FILE`` (or the MAILWARDEN_CONFIG environment variable); with
neither, the embedded defaults apply (SMTP on 127.0.0.1:2525, data in the default data
directory: ``$MAILWARDEN_DATA_DIR``, else ``/var/lib/mailwarden`` for root, else the user's
data directory such as ``~/.local/share/mailwarden``), so every command a user runs finds the
same node wherever it is started.
"""

from __future__ import annotations

import codecs
import datetime
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mailwarden.cli.datastore import datastore_app
from mailwarden.config import Config, ConfigError, load_config
from mailwarden.policy.script import ScriptError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mailwarden.spool.reader import (
        QueuedMessage,
        QueuedRecipient,
        QueueSummary,
        StoredMessage,
    )

app = typer.Typer(
    help="Mailwarden, the scriptable mail transfer agent.",
    no_args_is_help=True,
    add_completion=False,
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
queue_app = typer.Typer(help="Look at the messages in the spool.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(queue_app, name="queue")
app.add_typer(datastore_app, name="datastore")

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
        err.print(f"[red]configuration error[/red]\n{escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def run(config: ConfigOption = None) -> None:
    """Run the node in the foreground until SIGTERM or SIGINT (SIGHUP reloads)."""
    from mailwarden import node

    try:
        code = node.run(config)
    except ConfigError as error:
        err.print(f"[red]configuration error[/red]\n{escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    except ScriptError as error:
        err.print(f"[red]policy script error[/red]\n{escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    except node.StartupError as error:
        err.print(f"[red]cannot start[/red]: {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    except OSError as error:
        err.print(f"[red]cannot start[/red]: {escape(str(error))}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


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
    return problems


def _checked(config_path: str | None) -> Config:
    """The configuration, validated as ``config check`` does; exit 1 listing every problem."""
    settings = _load(config_path)
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
    from mailwarden.node import pid_file

    # The node would refuse the same problems, but only in its own log; checking here first
    # puts the file and line on the operator's terminal and an exit code on the command.
    settings = _checked(config)
    path = pid_file(settings)
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGHUP)
    except (FileNotFoundError, ValueError, ProcessLookupError):
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
) -> None:
    """Counters summed over the node's workers (connections, messages, script errors, …, and
    the scripts' own stat() counters), counted since each worker started and published every
    few seconds."""
    from mailwarden.stats import collect, collect_script, stats_dir

    settings = _load(config)
    data_dir = Path(settings.node.data_dir)
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


# --- the queue ------------------------------------------------------------------------------

IdArgument = Annotated[str, typer.Argument(help="The message id (from `queue list`).")]


def _spool_dir(settings: Config) -> Path:
    return Path(settings.spool.path)


def _recipient_document(r: QueuedRecipient) -> dict[str, Any]:
    return {
        "address": r.address,
        "params": r.params,
        "state": r.state,
        "reason": r.reason,
        "metadata": r.metadata,
        "retry_count": r.retry_count,
        "next_attempt": r.next_attempt,
    }


def _message_document(m: QueuedMessage, *, envelope: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": m.id,
        "server": m.server_id,
        "received_at": m.received_at,
        "sender": m.sender,
        "client_ip": m.client_ip,
        "size": m.size,
        "state": m.state,
        "metadata": m.metadata,
    }
    if envelope:
        document |= {
            "sender_params": m.sender_params,
            "client_port": m.client_port,
            "helo": m.helo,
            "tls": m.tls,
            "auth": m.auth,
            "retry_count": m.retry_count,
            "next_attempt": m.next_attempt,
        }
    document["recipients"] = [_recipient_document(r) for r in m.recipients]
    return document


def _print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _count_note(count: int, spool: Path) -> str:
    # An empty spool names its directory: that tells an operator at once when a command read
    # another spool than the node writes (another configuration, another user's data
    # directory). A long path would not fit the table's 80 columns, hence only then.
    return f"{count} message(s)" if count else f"0 message(s) in {spool}"


# The table's columns other than the envelope's, and the space box.SIMPLE_HEAD without its
# outer edge puts between columns; the envelope column gets what is left of the terminal.
_COLUMN_GAP = 3
_MIN_ENVELOPE_WIDTH = 16
_RECEIVED_FORMAT = "%m-%d %H:%M"  # the full time is in `queue show` and --json


@queue_app.command("list")
def queue_list(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """The messages in the spool: id, received time, size, state, sender and recipients.

    The table fits the terminal (80 columns too): long addresses are cut with an ellipsis and
    further recipients counted ("+2 more"); ids are never cut. ``--json`` has every value in
    full, with per-recipient state, metadata, retry count and next attempt.
    """
    from mailwarden.spool.errors import SpoolError
    from mailwarden.spool.reader import iter_messages, queue_summary

    settings = _load(config)
    spool = _spool_dir(settings)
    try:
        if as_json:
            _stream_json(_message_document(m) for m in iter_messages(spool))
            return
        count = _print_queue_table(spool, queue_summary(spool))
    except SpoolError as error:
        err.print(str(error), highlight=False, markup=False)
        raise typer.Exit(1) from None
    typer.echo(_count_note(count, spool))


def _stream_json(documents: Iterator[dict[str, Any]]) -> None:
    """A JSON array written one element at a time (a spool of 100,000 messages is never held
    in memory), byte for byte what ``json.dump(list, indent=2)`` writes."""
    out = sys.stdout
    separator = "[\n  "
    for document in documents:
        out.write(separator + json.dumps(document, indent=2).replace("\n", "\n  "))
        separator = ",\n  "
    out.write("[]\n" if separator == "[\n  " else "\n]\n")


# Rows per rendered table: the columns are sized from the summary, so the pieces line up.
_TABLE_PAGE = 500


def _print_queue_table(spool: Path, summary: QueueSummary) -> int:
    """The queue as a table, rendered a page of rows at a time; returns the rows printed."""
    from mailwarden.spool.reader import iter_messages

    if summary.count == 0:
        return 0
    console = Console()
    fixed = _fixed_widths(summary)
    envelope_width = max(console.width - sum(fixed) - _COLUMN_GAP * len(fixed), _MIN_ENVELOPE_WIDTH)
    width = sum(fixed) + _COLUMN_GAP * len(fixed) + envelope_width
    # Rendered at least as wide as the columns that are never cut: on a terminal too narrow
    # for them the lines wrap, but no id loses a character.
    out = console if width <= console.width else Console(width=width)
    count = 0
    page: list[QueuedMessage] = []
    for message in iter_messages(spool):
        page.append(message)
        if len(page) == _TABLE_PAGE:
            out.print(_queue_table(page, fixed, envelope_width, header=count == 0))
            count += len(page)
            page = []
    if page or count == 0:
        out.print(_queue_table(page, fixed, envelope_width, header=count == 0))
        count += len(page)
    return count


_HEADERS = ("id", "received", "size", "state")
_RECEIVED_WIDTH = len(datetime.datetime(2000, 12, 31, 23, 59).strftime(_RECEIVED_FORMAT))


def _fixed_widths(summary: QueueSummary) -> list[int]:
    values = (
        summary.longest_id,
        _RECEIVED_WIDTH,
        len(str(summary.largest_size)),
        summary.longest_state,
    )
    return [max(cell_len(h), v) for h, v in zip(_HEADERS, values, strict=True)]


def _queue_table(
    messages: list[QueuedMessage], fixed: list[int], envelope_width: int, *, header: bool
) -> Table:
    """One page of the table, its columns ``fixed`` wide and then the envelope's."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_header=header)
    for name, column_width in zip(_HEADERS, fixed, strict=True):
        # Operators copy ids: no column is ever cut but the envelope.
        justify: JustifyMethod = "right" if name == "size" else "left"
        table.add_column(name, width=column_width, no_wrap=True, justify=justify)
    table.add_column("sender / recipients", width=envelope_width, no_wrap=True, overflow="ellipsis")
    for m in messages:
        received = datetime.datetime.fromtimestamp(m.received_at).strftime(_RECEIVED_FORMAT)
        table.add_row(m.id, received, str(m.size), m.state, _envelope_cell(m, envelope_width))
    return table


def _envelope_cell(m: QueuedMessage, width: int) -> Text:
    """Two lines: the sender, then the first recipient and how many more, each cut to fit."""
    sender = _cut(f"from {m.sender or '<>'}", width)
    more = f" +{len(m.recipients) - 1} more" if len(m.recipients) > 1 else ""
    first = m.recipients[0].address if m.recipients else "(none)"
    recipients = _cut(f"to {first}", max(width - cell_len(more), 4))
    recipients.append(more)
    return Text("\n").join([sender, recipients])


def _cut(value: str, width: int) -> Text:
    """``value`` as plain text (no markup), cut with an ellipsis to ``width`` cells."""
    text = Text(_printable(value), no_wrap=True)
    text.truncate(width, overflow="ellipsis")
    return text


@queue_app.command("show")
def queue_show(
    message_id: IdArgument,
    config: ConfigOption = None,
    raw: Annotated[
        bool,
        typer.Option("--raw", help="Write exactly the stored bytes (what delivery will send)."),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="The envelope and recipients as JSON.")
    ] = False,
) -> None:
    """One message: its envelope, each recipient's state and the stored message.

    ``--raw`` writes the stored header section and body byte for byte to standard output, for
    piping to a file or another tool. Exit 1 if no message has this id.
    """
    from mailwarden.spool.errors import SpoolError
    from mailwarden.spool.reader import find_message, stored_message

    settings = _load(config)
    spool = _spool_dir(settings)
    try:
        message = find_message(spool, message_id)
        stored = stored_message(spool, message_id) if message is not None else None
    except SpoolError as error:  # a shard newer than this version knows
        err.print(str(error), highlight=False, markup=False)
        raise typer.Exit(1) from None
    if message is None or stored is None:
        err.print(f"no message {message_id!r} in {spool}", highlight=False, markup=False)
        raise typer.Exit(1)
    try:
        if raw:
            _write_raw(stored)
        elif as_json:
            _print_json(_message_document(message, envelope=True))
        else:
            _show(message, stored)
    except OSError as error:
        err.print(f"cannot read message {message_id}: {error}", highlight=False, markup=False)
        raise typer.Exit(1) from None


def _write_raw(stored: StoredMessage) -> None:
    out = sys.stdout.buffer
    for chunk in stored.chunks():
        out.write(chunk)
    out.flush()


def _show(m: QueuedMessage, stored: StoredMessage) -> None:
    lines = [f"message {m.id}", *_fields(_envelope_fields(m))]
    for position, r in enumerate(m.recipients, start=1):
        lines += ["", f"recipient {position}", *_fields(_recipient_fields(r))]
    lines += ["", "stored message (headers and body)", ""]
    typer.echo("\n".join(lines))
    _echo_message(stored)


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"  {name:<14}{_printable(value)}" for name, value in pairs]


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp).astimezone()
    return moment.isoformat(timespec="seconds")


def _params(params: dict[str, Any]) -> str:
    """ESMTP parameters as they were given: ``KEY=value`` or a bare ``KEY``."""
    return " ".join(k if v is None else f"{k}={v}" for k, v in params.items())


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else "none"


def _envelope_fields(m: QueuedMessage) -> list[tuple[str, str]]:
    sender = f"<{m.sender}>"
    if m.sender_params:
        sender += " " + _params(m.sender_params)
    tls = "none"
    if m.tls:
        tls = " ".join(str(m.tls.get(k, "")) for k in ("protocol", "cipher")).strip()
        if m.tls.get("bits"):
            tls += f" ({m.tls['bits']} bits)"
    auth = "none"
    if m.auth:
        auth = f"{m.auth.get('username', '')} ({m.auth.get('mechanism', '')})"
    return [
        ("server", m.server_id),
        ("received", _when(m.received_at)),
        ("size", f"{m.size} bytes"),
        ("state", m.state),
        ("sender", sender),
        ("client", f"{m.client_ip} port {m.client_port}"),
        ("helo", m.helo or "none"),
        ("tls", tls),
        ("auth", auth),
        ("metadata", _json_text(m.metadata)),
    ]


def _recipient_fields(r: QueuedRecipient) -> list[tuple[str, str]]:
    address = f"<{r.address}>"
    if r.params:
        address += " " + _params(r.params)
    fields = [("address", address), ("state", r.state)]
    if r.reason:
        fields.append(("reason", r.reason))
    fields += [
        ("retries", str(r.retry_count)),
        ("next attempt", _when(r.next_attempt)),
        ("metadata", _json_text(r.metadata)),
    ]
    return fields


def _echo_message(stored: StoredMessage) -> None:
    """The message as text for a terminal: decoded as UTF-8 where it is (anything else shown
    as escapes), line ends as newlines, and no control character reaches the terminal (an
    escape sequence in a message must not drive the operator's terminal)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
    out = sys.stdout
    out.flush()
    encoding = out.encoding or "utf-8"
    pending_cr = ""  # a CR at the end of a chunk may be the first half of a CRLF

    def write(text: str) -> None:
        text = _printable(text.replace("\r\n", "\n"), keep_newlines=True)
        out.buffer.write(text.encode(encoding, errors="backslashreplace"))

    for chunk in stored.chunks(64 * 1024):
        text = pending_cr + decoder.decode(chunk)
        pending_cr = "\r" if text.endswith("\r") else ""
        write(text.removesuffix(pending_cr) if pending_cr else text)
    write(pending_cr + decoder.decode(b"", final=True))
    out.buffer.flush()


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _printable(value: str, *, keep_newlines: bool = False) -> str:
    """``value`` with every control character but tab (and newline if asked) as an escape."""
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(lambda match: repr(match.group())[1:-1], value)


if __name__ == "__main__":  # pragma: no cover
    app()
