"""``mailwarden queue``: look at the spool and act on it, as ``halonctl queue`` does.

``list``, ``groupby``, ``show`` read the shards (never migrating them); ``update`` changes them
in IMMEDIATE transactions from this process (see :mod:`mailwarden.queue.operations`);
``suspend``, ``resume`` and ``suspended`` keep the node-wide suspensions the queue manager
reads (:mod:`mailwarden.cli.suspensions`). Filters are words after the command
(``state=deferred 'age>1h'``), their grammar in :mod:`mailwarden.queue.filters`.
"""

from __future__ import annotations

import codecs
import collections
import datetime
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.table import Table
from rich.text import Text

from mailwarden.cli.common import ConfigOption, err, fail, load, printable
from mailwarden.config import Config
from mailwarden.queue.filters import (
    SENDING,
    FilterContext,
    FilterError,
    QueueFilter,
    effective_state,
    group_field,
    group_order,
    group_value,
    lease_live,
    parse_filters,
)
from mailwarden.queue.operations import Action
from mailwarden.queue.retention import HoldTerms, retention_end
from mailwarden.spool.states import RecipientState

if TYPE_CHECKING:
    from mailwarden.spool.reader import (
        QueuedMessage,
        QueuedRecipient,
        QueueSummary,
        StoredMessage,
    )

queue_app = typer.Typer(help="Look at and act on the messages in the spool.", no_args_is_help=True)

IdArgument = Annotated[str, typer.Argument(help="The message id (from `queue list`).")]
FiltersArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[FILTER]...",
        help="Filters, all of which must match: FIELD=VALUE, FIELD!=VALUE, 'age>3600',"
        " 'retries>=3', retries=2..5, metadata.KEY=VALUE (see docs/queue-cli.md).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON document.")]


def _spool_dir(settings: Config) -> Path:
    return Path(settings.spool.path)


def _filters(texts: list[str] | None) -> QueueFilter:
    try:
        return parse_filters(texts or [])
    except FilterError as error:
        raise fail(str(error)) from None


def route_hop(settings: Config) -> Callable[[str], str | None]:
    """The next hop of a recipient domain by the configured routes, as the filters and
    groupby show it (``[10.0.0.5]:2525``, ``relay.example:587``); None for an MX lookup of
    the domain itself, or when this version has no route table."""
    try:
        from mailwarden.delivery.routes import RouteTable
    except ImportError:
        return lambda domain: None
    table = RouteTable.from_config(settings)

    def hop(domain: str) -> str | None:
        next_hop = table.route_for(domain).next_hop
        if next_hop is None:
            return None
        host = next_hop.host if next_hop.mx_lookup else f"[{next_hop.host}]"
        return f"{host}:{next_hop.port}"

    return hop


def _context(settings: Config) -> FilterContext:
    return FilterContext(time.time(), route_hop(settings))


# --- what a message looks like through the filters -------------------------------------------


@dataclass(frozen=True, slots=True)
class View:
    """A message and the positions of its recipients the filters matched."""

    message: QueuedMessage
    positions: tuple[int, ...]

    def recipients(self) -> list[tuple[int, QueuedRecipient]]:
        return [(p, self.message.recipients[p]) for p in self.positions]

    def state(self, now: float) -> str:
        """The state of the matched recipients when they agree (``sending`` while a worker
        delivers the message), else ``mixed``."""
        states = {effective_state(self.message, r, now) for _, r in self.recipients()}
        return states.pop() if len(states) == 1 else "mixed"


def _views(spool: Path, query: QueueFilter, ctx: FilterContext) -> Iterator[View]:
    """Every message with a matching recipient (all, without filters), a page at a time."""
    from mailwarden.spool.reader import iter_messages

    for message in iter_messages(spool):
        if query.empty:
            yield View(message, tuple(range(len(message.recipients))))
            continue
        positions = query.positions(message, ctx)
        if positions:
            yield View(message, positions)


def _retention_until(r: QueuedRecipient) -> float | None:
    """A held recipient's retention end as JSON shows it (None: until released, or not
    held); its stored next attempt is that end (queue/retention.py), not an attempt."""
    end = retention_end(r.state, r.next_attempt)
    return None if end is None or math.isinf(end) else end


def _recipient_document(
    m: QueuedMessage, position: int, r: QueuedRecipient, now: float
) -> dict[str, Any]:
    held = r.state is RecipientState.HELD
    return {
        "position": position,
        "address": r.address,
        "params": r.params,
        "state": effective_state(m, r, now),
        "spool_state": r.state,
        "reason": r.reason,
        "metadata": r.metadata,
        "retry_count": r.retry_count,
        "next_attempt": None if held else r.next_attempt,
        "retention_until": _retention_until(r),
        "on_expiry": r.on_expiry if held else None,
        "last_reply": r.last_reply,
    }


def _message_document(view: View, now: float, *, envelope: bool = False) -> dict[str, Any]:
    m = view.message
    document: dict[str, Any] = {
        "id": m.id,
        "server": m.server_id,
        "received_at": m.received_at,
        "sender": m.sender,
        "client_ip": m.client_ip,
        "size": m.size,
        "state": view.state(now),
        "sending": lease_live(m, now),
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
            "leased_by": m.leased_by,
            "lease_until": m.lease_until,
        }
    document["recipients"] = [_recipient_document(m, p, r, now) for p, r in view.recipients()]
    return document


def _print_json(document: object) -> None:
    json.dump(document, sys.stdout, indent=2)
    sys.stdout.write("\n")


def _count_note(count: int, spool: Path, query: QueueFilter) -> str:
    # An empty spool names its directory: that tells an operator at once when a command read
    # another spool than the node writes (another configuration, another user's data
    # directory). A long path would not fit the table's 80 columns, hence only then.
    matching = f" match {query}" if not query.empty else ""
    note = f"{count} message(s){matching}"
    return note if count else f"{note} in {spool}"


# --- queue list ---------------------------------------------------------------------------------

# The table's columns other than the envelope's, and the space box.SIMPLE_HEAD without its
# outer edge puts between columns; the envelope column gets what is left of the terminal.
_COLUMN_GAP = 3
_MIN_ENVELOPE_WIDTH = 16
_RECEIVED_FORMAT = "%m-%d %H:%M"  # the full time is in `queue show` and --json


@queue_app.command("list")
def queue_list(
    filters: FiltersArgument = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """The messages in the spool: id, received time, size, state, sender and recipients.

    With filters (``mailwarden queue list state=deferred recipient_domain=example.net``),
    only the messages with a matching recipient, and of those only the matching recipients.
    The table fits the terminal (80 columns too): long addresses are cut with an ellipsis and
    further recipients counted ("+2 more"); ids are never cut. ``--json`` has every value in
    full, with per-recipient state, metadata, retry count, next attempt and last reply.
    """
    from mailwarden.spool.errors import SpoolError

    query = _filters(filters)
    settings = load(config)
    spool = _spool_dir(settings)
    ctx = _context(settings)
    try:
        if as_json:
            _stream_json(_message_document(v, ctx.now) for v in _views(spool, query, ctx))
            return
        count = _print_queue_table(spool, query, ctx)
    except SpoolError as error:
        raise fail(str(error)) from None
    typer.echo(_count_note(count, spool, query))


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


def _summary(spool: Path, query: QueueFilter, ctx: FilterContext) -> QueueSummary:
    """Column widths before the first page: SQLite's aggregate over every shard, or with
    filters a first pass over the matching messages (none is kept in memory)."""
    from mailwarden.spool.reader import QueueSummary, queue_summary

    if query.empty:
        found = queue_summary(spool)
        # A live lease shows as "sending", which the stored states do not count.
        return QueueSummary(
            found.count, found.longest_id, found.largest_size, max(found.longest_state, 7)
        )
    count = longest_id = largest = longest_state = 0
    for view in _views(spool, query, ctx):
        count += 1
        longest_id = max(longest_id, len(view.message.id))
        largest = max(largest, view.message.size)
        longest_state = max(longest_state, len(view.state(ctx.now)))
    return QueueSummary(count, longest_id, largest, longest_state)


def _print_queue_table(spool: Path, query: QueueFilter, ctx: FilterContext) -> int:
    """The queue as a table, rendered a page of rows at a time; returns the rows printed."""
    summary = _summary(spool, query, ctx)
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
    page: list[View] = []
    for view in _views(spool, query, ctx):
        page.append(view)
        if len(page) == _TABLE_PAGE:
            out.print(_queue_table(page, fixed, envelope_width, ctx.now, header=count == 0))
            count += len(page)
            page = []
    if page or count == 0:
        out.print(_queue_table(page, fixed, envelope_width, ctx.now, header=count == 0))
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
    views: list[View], fixed: list[int], envelope_width: int, now: float, *, header: bool
) -> Table:
    """One page of the table, its columns ``fixed`` wide and then the envelope's."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, show_header=header)
    for name, column_width in zip(_HEADERS, fixed, strict=True):
        # Operators copy ids: no column is ever cut but the envelope.
        justify: JustifyMethod = "right" if name == "size" else "left"
        table.add_column(name, width=column_width, no_wrap=True, justify=justify)
    table.add_column("sender / recipients", width=envelope_width, no_wrap=True, overflow="ellipsis")
    for view in views:
        m = view.message
        received = datetime.datetime.fromtimestamp(m.received_at).strftime(_RECEIVED_FORMAT)
        table.add_row(
            m.id, received, str(m.size), view.state(now), _envelope_cell(view, envelope_width)
        )
    return table


def _envelope_cell(view: View, width: int) -> Text:
    """Two lines: the sender, then the first recipient and how many more, each cut to fit;
    a third when matched recipients are held: the earliest end of their retention."""
    recipients = view.recipients()
    sender = _cut(f"from {view.message.sender or '<>'}", width)
    more = f" +{len(recipients) - 1} more" if len(recipients) > 1 else ""
    first = recipients[0][1].address if recipients else "(none)"
    line = _cut(f"to {first}", max(width - cell_len(more), 4))
    line.append(more)
    lines = [sender, line]
    held = [r for _, r in recipients if r.state is RecipientState.HELD]
    if held:
        lines.append(_cut(_held_note(held), width))
    return Text("\n").join(lines)


def _held_note(held: list[QueuedRecipient]) -> str:
    """``held until 12-10 14:05, then discard``: the first retention of ``held`` to end."""
    ends = [(_retention_until(r), r.on_expiry) for r in held]
    ending = [(end, then) for end, then in ends if end is not None]
    if not ending:
        return "held until released"
    end, then = min(ending)
    when = datetime.datetime.fromtimestamp(end).strftime(_RECEIVED_FORMAT)
    return f"held until {when}, then {then}"


def _cut(value: str, width: int) -> Text:
    """``value`` as plain text (no markup), cut with an ellipsis to ``width`` cells."""
    text = Text(printable(value), no_wrap=True)
    text.truncate(width, overflow="ellipsis")
    return text


# --- queue groupby ------------------------------------------------------------------------------


@dataclass(slots=True)
class Group:
    """One group of ``queue groupby``: counts, the oldest message, and the replies seen."""

    messages: int = 0
    recipients: int = 0
    oldest: float = float("inf")  # received_at of the oldest message
    replies: collections.Counter[str] = field(default_factory=collections.Counter)

    def last_reply(self) -> tuple[str, int]:
        """The commonest last reply of the group's recipients and how many share it; the
        answer to "why does this mail wait" (empty when none was tried yet)."""
        if not self.replies:
            return "", 0
        return self.replies.most_common(1)[0]


def group(views: Iterable[View], name: str, ctx: FilterContext) -> dict[str, Group]:
    groups: dict[str, Group] = {}
    for view in views:
        seen: set[str] = set()
        for _, recipient in view.recipients():
            key = group_value(name, view.message, recipient, ctx)
            entry = groups.setdefault(key, Group())
            entry.recipients += 1
            if recipient.last_reply:
                entry.replies[recipient.last_reply] += 1
            if key not in seen:
                seen.add(key)
                entry.messages += 1
                entry.oldest = min(entry.oldest, view.message.received_at)
    return groups


def _ordered(name: str, groups: dict[str, Group]) -> list[tuple[str, Group]]:
    """Age buckets youngest first; any other field by recipients, most first."""
    return sorted(
        groups.items(), key=lambda item: (group_order(name, item[0]), -item[1].recipients, item[0])
    )


def duration(seconds: float) -> str:
    """A short age: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


@queue_app.command("groupby")
def queue_groupby(
    field_name: Annotated[
        str,
        typer.Argument(
            metavar="FIELD",
            help="recipient_domain (domain), sender_domain, state, age, next_hop (transport),"
            " sender, recipient, retries or metadata.KEY.",
        ),
    ],
    filters: FiltersArgument = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Counts per value of FIELD, with the oldest message and the commonest last reply.

    Queued recipients (and their messages) are counted per group: why mail waits.

    ``mailwarden queue groupby domain state=deferred`` shows which destinations hold deferred
    mail and what they answered. Ages are counted in buckets (< 5m, 5m-1h, 1h-6h, 6h-1d,
    1d-3d, >= 3d). A recipient counts in one group, a message in each group one of its
    recipients is in.
    """
    from mailwarden.spool.errors import SpoolError

    try:
        name = group_field(field_name)
    except FilterError as error:
        raise fail(str(error)) from None
    query = _filters(filters)
    settings = load(config)
    spool = _spool_dir(settings)
    ctx = _context(settings)
    try:
        groups = _ordered(name, group(_views(spool, query, ctx), name, ctx))
    except SpoolError as error:
        raise fail(str(error)) from None
    if as_json:
        _print_json([_group_document(name, key, g, ctx.now) for key, g in groups])
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column(field_name, overflow="fold")
    table.add_column("messages", justify="right", no_wrap=True)
    table.add_column("recipients", justify="right", no_wrap=True)
    table.add_column("oldest", justify="right", no_wrap=True)
    table.add_column("last reply (commonest)", overflow="fold")
    for key, g in groups:
        reply, shared = g.last_reply()
        shown = f"{reply} ({shared})" if reply else ""
        oldest = duration(ctx.now - g.oldest)
        table.add_row(
            Text(printable(key)), str(g.messages), str(g.recipients), oldest, Text(printable(shown))
        )
    if groups:
        Console().print(table)
    total = sum(g.recipients for _, g in groups)
    typer.echo(f"{total} recipient(s) in {len(groups)} group(s)")


def _group_document(name: str, key: str, g: Group, now: float) -> dict[str, Any]:
    reply, shared = g.last_reply()
    return {
        "field": name,
        "value": key,
        "messages": g.messages,
        "recipients": g.recipients,
        "oldest_received_at": g.oldest,
        "oldest_age": max(now - g.oldest, 0.0),
        "last_reply": reply,
        "last_reply_recipients": shared,
    }


# --- queue show ---------------------------------------------------------------------------------


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
    """One message: envelope, lease, recipients and the stored message.

    The lease says ``sending`` while a worker delivers it; each recipient shows its state,
    retries, next attempt and last reply.

    ``--raw`` writes the stored header section and body byte for byte to standard output, for
    piping to a file or another tool. Exit 1 if no message has this id.
    """
    from mailwarden.spool.errors import SpoolError
    from mailwarden.spool.reader import find_message, stored_message

    settings = load(config)
    spool = _spool_dir(settings)
    try:
        message = find_message(spool, message_id)
        stored = stored_message(spool, message_id) if message is not None else None
    except SpoolError as error:  # a shard newer than this version knows
        raise fail(str(error)) from None
    if message is None or stored is None:
        raise fail(f"no message {message_id!r} in {spool}")
    now = time.time()
    view = View(message, tuple(range(len(message.recipients))))
    try:
        if raw:
            _write_raw(stored)
        elif as_json:
            _print_json(_message_document(view, now, envelope=True))
        else:
            _show(view, stored, now)
    except OSError as error:
        raise fail(f"cannot read message {message_id}: {error}") from None


def _write_raw(stored: StoredMessage) -> None:
    out = sys.stdout.buffer
    for chunk in stored.chunks():
        out.write(chunk)
    out.flush()


def _show(view: View, stored: StoredMessage, now: float) -> None:
    m = view.message
    lines = [f"message {m.id}", *_fields(_envelope_fields(view, now))]
    for position, r in enumerate(m.recipients, start=1):
        lines += ["", f"recipient {position}", *_fields(_recipient_fields(m, r, now))]
    lines += ["", "stored message (headers and body)", ""]
    typer.echo("\n".join(lines))
    _echo_message(stored)


def _fields(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"  {name:<14}{printable(value)}" for name, value in pairs]


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp).astimezone()
    return moment.isoformat(timespec="seconds")


def _params(params: dict[str, Any]) -> str:
    """ESMTP parameters as they were given: ``KEY=value`` or a bare ``KEY``."""
    return " ".join(k if v is None else f"{k}={v}" for k, v in params.items())


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else "none"


def _lease(m: QueuedMessage, now: float) -> str:
    if m.lease_until is None:
        return "none"
    owner = m.leased_by or "?"
    if lease_live(m, now):
        return f"{SENDING}: leased by {owner} until {_when(m.lease_until)}"
    return f"expired (was {owner} until {_when(m.lease_until)})"


def _envelope_fields(view: View, now: float) -> list[tuple[str, str]]:
    m = view.message
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
        ("state", view.state(now)),
        ("lease", _lease(m, now)),
        ("sender", sender),
        ("client", f"{m.client_ip} port {m.client_port}"),
        ("helo", m.helo or "none"),
        ("tls", tls),
        ("auth", auth),
        ("metadata", _json_text(m.metadata)),
    ]


def _recipient_fields(m: QueuedMessage, r: QueuedRecipient, now: float) -> list[tuple[str, str]]:
    address = f"<{r.address}>"
    if r.params:
        address += " " + _params(r.params)
    fields = [("address", address), ("state", effective_state(m, r, now))]
    if r.reason:
        fields.append(("reason", r.reason))
    fields.append(("retries", str(r.retry_count)))
    if r.state is RecipientState.HELD:
        fields.append(("retention", _retention_text(r)))
    else:
        fields.append(("next attempt", _when(r.next_attempt)))
    fields += [
        ("last reply", r.last_reply or "none"),
        ("metadata", _json_text(r.metadata)),
    ]
    return fields


def _retention_text(r: QueuedRecipient) -> str:
    """``until 2026-12-10T14:05:00+00:00, then discard`` (or ``bounce``), or ``until
    released``."""
    end = _retention_until(r)
    if end is None:
        return "until released"
    return f"until {_when(end)}, then {r.on_expiry}"


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
        text = printable(text.replace("\r\n", "\n"), keep_newlines=True)
        out.buffer.write(text.encode(encoding, errors="backslashreplace"))

    for chunk in stored.chunks(64 * 1024):
        text = pending_cr + decoder.decode(chunk)
        pending_cr = "\r" if text.endswith("\r") else ""
        write(text.removesuffix(pending_cr) if pending_cr else text)
    write(pending_cr + decoder.decode(b"", final=True))
    out.buffer.flush()


# --- queue update -------------------------------------------------------------------------------


@queue_app.command("update")
def queue_update(
    action: Annotated[
        Action,
        typer.Argument(help="hold, release, delete, bounce or retry-now.", case_sensitive=False),
    ],
    filters: FiltersArgument = None,
    config: ConfigOption = None,
    every: Annotated[
        bool, typer.Option("--all", help="Act on every message (required without filters).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Also change messages a worker is delivering right now (live lease); that"
            " attempt still finishes and may overwrite the change (see docs/queue-cli.md).",
        ),
    ] = False,
    reason: Annotated[
        str,
        typer.Option(
            "--reason", help="Why: shown as the recipients' reason (bounce: the DSN's text)."
        ),
    ] = "",
    retention: Annotated[
        str | None,
        typer.Option(
            "--retention",
            help="hold: how long from now ('7d', '12h', seconds; 0 or 'forever': until"
            " released); default [queue] hold_retention. Held recipients take it too.",
            show_default=False,
        ),
    ] = None,
    on_expiry: Annotated[
        str | None,
        typer.Option(
            "--on-expiry",
            help="hold: what the end of the retention does: discard (default) or bounce (a"
            " DSN to the sender). Held recipients take it too.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Hold, release, delete, bounce or retry-now the matching recipients.

    hold: quarantine, for ``--retention`` (default ``[queue] hold_retention``), then
    discarded or, with ``--on-expiry bounce``, bounced; release: due now; delete; bounce: a
    DSN to the sender, queued in the same transaction; retry-now: due now.

    ``mailwarden queue update retry-now recipient_domain=example.net --yes``. Refuses to act
    on the whole queue without a filter unless ``--all``; asks before changing anything unless
    ``--yes`` (and refuses without ``--yes`` when standard input is not a terminal). Messages a
    worker is delivering (``sending``) are skipped and counted unless ``--force``.
    """
    from mailwarden.queue.operations import run, select
    from mailwarden.spool.errors import SpoolError

    query = _filters(filters)
    if query.empty and not every:
        raise fail(
            f"refusing to {action.value} every message in the queue: give filters"
            " (e.g. state=deferred) or --all"
        )
    if action is not Action.HOLD and (retention is not None or on_expiry is not None):
        raise fail(f"--retention and --on-expiry are for hold, not {action.value}")
    settings = load(config)
    hold = _hold_terms(retention, on_expiry, settings)
    spool = _spool_dir(settings)
    ctx = _context(settings)
    try:
        selection = select(spool, query, ctx)
        if selection.messages and not yes:
            _confirm(action, selection.recipients, selection.messages)
        with _progress(selection.messages) as advance:
            outcome = run(
                spool,
                action,
                query,
                selection,
                route_hop=ctx.route_hop,
                force=force,
                reason=reason,
                reporting_mta=settings.node.hostname,
                progress=(
                    _waking(advance, settings, len(selection.shards))
                    if action in _MAKES_DUE
                    else advance
                ),
                hold=hold,
                explicit=retention is not None or on_expiry is not None,
            )
    except SpoolError as error:
        raise fail(str(error)) from None
    if outcome.recipients and action in _MAKES_DUE:
        from mailwarden.control import wake_queue

        wake_queue(settings)  # deliver now, not at the node's next poll
    if as_json:
        _print_json(outcome.document())
        return
    lines = [
        f"{action.value}: {outcome.recipients} recipient(s) of {outcome.messages} message(s)"
        f" changed, {outcome.removed} message(s) removed from the spool"
    ]
    if outcome.bounces:
        lines.append(f"bounce(s) queued: {' '.join(outcome.bounces)}")
    if outcome.unchanged:
        lines.append(
            f"{outcome.unchanged} matching message(s) unchanged: no recipient in a state"
            f" {action.value} applies to"
        )
    if outcome.skipped_lease:
        lines.append(
            f"{len(outcome.skipped_lease)} message(s) skipped: being delivered right now"
            f" (live lease; try again shortly, or --force): {' '.join(outcome.skipped_lease)}"
        )
    if not selection.messages:
        lines = [_count_note(0, spool, query)]
    typer.echo("\n".join(lines))


def _hold_terms(retention: str | None, on_expiry: str | None, settings: Config) -> HoldTerms:
    """The terms of a hold from the options, the configured retention by default."""
    from mailwarden.queue.retention import OnExpiry, parse_on_expiry, parse_retention

    try:
        seconds = settings.queue.hold_retention if retention is None else parse_retention(retention)
    except ValueError as error:
        raise fail(f"bad --retention: {error}") from None
    try:
        expiry = OnExpiry.DISCARD if on_expiry is None else parse_on_expiry(on_expiry.lower())
    except ValueError as error:
        raise fail(f"bad --on-expiry: {error}") from None
    return HoldTerms(seconds, expiry)


# The actions after which the node has mail due now (bounce: the DSN it queued).
_MAKES_DUE = frozenset({Action.RELEASE, Action.RETRY_NOW, Action.BOUNCE})


def _waking(advance: Callable[[int], None], settings: Config, shards: int) -> Callable[[int], None]:
    """``advance``, which also wakes the node once the first batch of every shard is
    committed (the shards take turns), then every WAKE_EVERY seconds: the workers deliver
    those while the next batches are written. The wake after the last batch finds the rest."""
    from mailwarden.control import wake_queue

    batches = 0
    next_wake = 0.0

    def progress(done: int) -> None:
        nonlocal batches, next_wake
        advance(done)
        batches += 1
        now = time.monotonic()
        if batches >= shards and now >= next_wake:
            wake_queue(settings)
            next_wake = now + WAKE_EVERY

    return progress


WAKE_EVERY = 0.25  # seconds between wakes while a large update is written


def _confirm(action: Action, recipients: int, messages: int) -> None:
    question = f"{action.value} {recipients} recipient(s) of {messages} message(s)?"
    if not sys.stdin.isatty():
        raise fail(f"{question} Not confirmed: add --yes (standard input is not a terminal)")
    if not typer.confirm(question, default=False):
        raise fail("nothing changed")


class _progress:
    """A progress bar on stderr for updates of more than one batch, on a terminal only."""

    def __init__(self, total: int) -> None:
        from mailwarden.queue.operations import BATCH_SIZE

        self._bar: Any = None
        if total > BATCH_SIZE and err.is_terminal:
            from rich.progress import Progress

            self._bar = Progress(console=err, transient=True)
            self._task = self._bar.add_task("updating", total=total)

    def __enter__(self) -> Callable[[int], None]:
        if self._bar is None:
            return lambda done: None
        self._bar.start()
        return lambda done: self._bar.update(self._task, advance=done)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


# --- queue suspend / resume / suspended ---------------------------------------------------------


@queue_app.command("suspend")
def queue_suspend(
    target: Annotated[
        str,
        typer.Argument(
            metavar="FIELD=VALUE",
            help="domain, destination, mx, ip, source_ip or metadata.KEY, and a value or"
            " pattern (*.example.net, 192.0.2.0/24).",
        ),
    ],
    config: ConfigOption = None,
    seconds: Annotated[
        float | None,
        typer.Option("--for", min=1, help="Resume by itself after this many seconds."),
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="Shown as why mail waits.")] = "",
) -> None:
    """Stop delivery attempts to FIELD=VALUE on every worker of the node.

    Queued mail stays queued and nothing bounces, until ``queue resume`` or the end of
    ``--for``."""
    from mailwarden.cli import suspensions

    field_name, value = _suspension_target(target)
    settings = load(config)
    until = time.time() + seconds if seconds is not None else None
    try:
        suspensions.suspend(settings, field_name, value, until=until, reason=reason)
    except ValueError as error:
        raise fail(f"bad suspension {target!r}: {error}") from None
    except suspensions.Unavailable as error:
        raise fail(str(error)) from None
    end = f" until {_when(until)}" if until is not None else " until resumed"
    typer.echo(f"suspended {field_name}={value}{end}")


@queue_app.command("resume")
def queue_resume(
    target: Annotated[str, typer.Argument(metavar="FIELD=VALUE")],
    config: ConfigOption = None,
) -> None:
    """End a suspension made by ``queue suspend``; exit 1 if there was none."""
    from mailwarden.cli import suspensions

    field_name, value = _suspension_target(target)
    settings = load(config)
    try:
        resumed = suspensions.resume(settings, field_name, value)
    except suspensions.Unavailable as error:
        raise fail(str(error)) from None
    if not resumed:
        raise fail(f"{field_name}={value} is not suspended")
    typer.echo(f"resumed {field_name}={value}")


@queue_app.command("suspended")
def queue_suspended(config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """The node's suspensions in force: what, until when, why."""
    from mailwarden.cli import suspensions

    settings = load(config)
    try:
        current = suspensions.current(settings, time.time())
    except suspensions.Unavailable as error:
        raise fail(str(error)) from None
    if as_json:
        _print_json(current)
        return
    for entry in current:
        until = _when(entry["until"]) if entry["until"] is not None else "resumed"
        why = f"  ({entry['reason']})" if entry["reason"] else ""
        typer.echo(printable(f"{entry['field']}={entry['value']}  until {until}{why}"))
    typer.echo(f"{len(current)} suspension(s)")


def _suspension_target(text: str) -> tuple[str, str]:
    from mailwarden.cli.suspensions import parse_target

    try:
        return parse_target(text)
    except ValueError as error:
        raise fail(str(error)) from None
