"""Queue filters: which recipients of which queued messages an operator's command means.

Pure: parsing and matching touch no file, socket or clock (``now`` and the next-hop lookup
come in a :class:`FilterContext`), so the grammar is property-tested on its own.

A filter is one word, ``FIELD OP VALUE``; every filter of a command must match (AND)::

    state=deferred            sender_domain=example.com    recipient=*@slow.example
    'age>3600'  'age>1h'      'retries>=3'  retries=2..5   metadata.tenant=acme
    state=deferred,held       (alternatives after "=": any of them)
    next_hop=[10.0.0.5]:2525  id=18c3f0a2b4e5f60001        sender=     (the null sender)

Fields of the message: ``id``, ``sender``, ``sender_domain``, ``age`` (seconds since it was
received; suffix ``s``, ``m``, ``h``, ``d``), ``size`` (octets). Fields of each recipient:
``recipient``, ``recipient_domain`` (alias ``domain``), ``state``, ``retries`` (alias
``retry_count``), ``next_hop`` (alias ``transport``). ``metadata.KEY`` looks in the recipient's
metadata, then the message's. Operators: ``=`` and ``!=`` for every field, ``>``, ``<``,
``>=``, ``<=`` and ranges ``=a..b`` (inclusive) for the numeric ones. Text values take the
shell-style wildcards ``*`` and ``?``; addresses and domains compare case-insensitively.

``state`` is the recipient's spool state (active, deferred, held, delivered, bounced,
discarded) except that a deliverable recipient of a message whose lease is live
(``lease_until > now``: a worker is delivering it right now) is ``sending``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.states import DELIVERABLE, RecipientState

SENDING = "sending"  # not a stored state: a deliverable recipient under a live lease
STATES = (*(state.value for state in RecipientState), SENDING)

# Canonical field name for every name an operator may type.
_ALIASES = {
    "id": "id",
    "sender": "sender",
    "sender_domain": "sender_domain",
    "age": "age",
    "size": "size",
    "recipient": "recipient",
    "recipient_domain": "recipient_domain",
    "domain": "recipient_domain",
    "state": "state",
    "retries": "retries",
    "retry_count": "retries",
    "next_hop": "next_hop",
    "transport": "next_hop",
}
NUMERIC_FIELDS = frozenset({"age", "size", "retries"})
# Compared without regard to case: RFC 5321 §2.4 domains; local parts are in practice too.
_FOLDED_FIELDS = frozenset({"sender", "sender_domain", "recipient", "recipient_domain", "next_hop"})
FIELD_NAMES = (*_ALIASES, "metadata.KEY")

_OPERATORS = (">=", "<=", "!=", "=", ">", "<")  # longest first: ">=" before ">"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[^\s=!<>]*)?")
_NUMBER = re.compile(r"([0-9]+(?:\.[0-9]+)?)([a-z]?)")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class FilterError(ValueError):
    """A filter that cannot be parsed; the message names it and says what is wrong."""

    def __init__(self, text: str, problem: str) -> None:
        super().__init__(f"bad filter {text!r}: {problem}")
        self.text = text
        self.problem = problem


@dataclass(frozen=True, slots=True)
class FilterContext:
    """What matching needs from outside: the time, and the next hop of a recipient domain
    when neither the recipient nor the message metadata names one (the route table)."""

    now: float
    route_hop: Callable[[str], str | None] = lambda domain: None


@dataclass(frozen=True, slots=True)
class Filter:
    """One parsed filter. ``values`` are the alternatives (text fields) or, for numeric
    fields, ``(low, high)`` bounds with ``None`` for an open end (``low_open`` and
    ``high_open`` make a bound strict)."""

    text: str
    field: str  # canonical name, or "metadata.KEY"
    negate: bool = False
    values: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    @property
    def numeric(self) -> bool:
        return self.field in NUMERIC_FIELDS

    def matches(
        self, message: SpoolRecord, recipient: SpooledRecipient, ctx: FilterContext
    ) -> bool:
        value = field_value(self.field, message, recipient, ctx)
        if self.numeric:
            found = self._in_bounds(float(value))  # type: ignore[arg-type]
        else:
            found = any(_text_matches(self.field, str(value), v) for v in self.values)
        return found != self.negate

    def _in_bounds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (
            self.high is not None and (value >= self.high if self.high_open else value > self.high)
        )


def _text_matches(field: str, value: str, pattern: str) -> bool:
    if field in _FOLDED_FIELDS:
        value, pattern = value.lower(), pattern.lower()
    if "*" in pattern or "?" in pattern:
        # fnmatchcase: no platform case folding, and "[" is taken literally (IPv6 next hops)
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return value == pattern


def canonical_field(name: str, *, text: str | None = None) -> str:
    """The canonical name of a field an operator typed; FilterError naming ``text`` (the
    whole filter, default the name) if there is no such field."""
    shown = name if text is None else text
    if name.startswith("metadata."):
        if len(name) == len("metadata.") or not name[len("metadata.") :].strip():
            raise FilterError(shown, "metadata needs a key: metadata.KEY=VALUE")
        return name
    field = _ALIASES.get(name)
    if field is None:
        raise FilterError(shown, f"unknown field {name!r}; fields: {', '.join(FIELD_NAMES)}")
    return field


def parse_filter(text: str) -> Filter:
    """One filter from its text. Raises FilterError (naming ``text``) for anything else."""
    match = _NAME.match(text)
    if match is None:
        raise FilterError(text, "expected FIELD=VALUE, FIELD!=VALUE or FIELD>N (e.g. state=held)")
    name = match.group()
    rest = text[match.end() :]
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise FilterError(text, f"expected an operator (=, !=, >, <, >=, <=) after {name!r}")
    field = canonical_field(name, text=text)
    value = rest[len(operator) :]
    if field in NUMERIC_FIELDS:
        return _numeric_filter(text, field, operator, value)
    if operator not in ("=", "!="):
        raise FilterError(text, f"{name} is not numeric: use = or !=")
    values = tuple(value.split(","))
    if field == "state":
        unknown = [v for v in values if v not in STATES]
        if unknown:
            raise FilterError(text, f"unknown state {unknown[0]!r}; states: {', '.join(STATES)}")
    if field == "sender":
        values = tuple("" if v == "<>" else v for v in values)  # the null sender, as shown
    return Filter(text, field, negate=operator == "!=", values=values)


def _numeric_filter(text: str, field: str, operator: str, value: str) -> Filter:
    if operator in ("=", "!=") and ".." in value:
        low_text, _, high_text = value.partition("..")
        low, high = _number(text, field, low_text), _number(text, field, high_text)
        if low > high:
            raise FilterError(text, f"empty range: {low_text} is above {high_text}")
        return Filter(text, field, negate=operator == "!=", low=low, high=high)
    number = _number(text, field, value)
    bounds: dict[str, Any] = {
        "=": {"low": number, "high": number},
        "!=": {"low": number, "high": number, "negate": True},
        ">": {"low": number, "low_open": True},
        ">=": {"low": number},
        "<": {"high": number, "high_open": True},
        "<=": {"high": number},
    }[operator]
    return Filter(text, field, **bounds)


def _number(text: str, field: str, value: str) -> float:
    match = _NUMBER.fullmatch(value.strip())
    units = _AGE_UNITS if field == "age" else {"": 1}
    if match is None or match.group(2) not in units:
        what = "seconds, or a number with s, m, h or d" if field == "age" else "a whole number"
        raise FilterError(text, f"{field} needs {what}, got {value!r}")
    number = float(match.group(1)) * units[match.group(2)]
    if not math.isfinite(number):
        raise FilterError(text, f"{field}: {value!r} is out of range")
    return number


@dataclass(frozen=True, slots=True)
class QueueFilter:
    """Every filter of a command; a recipient matches when all of them do. No filters match
    every recipient (``empty``: commands that change the queue then want ``--all``)."""

    filters: tuple[Filter, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.filters

    def positions(self, message: SpoolRecord, ctx: FilterContext) -> tuple[int, ...]:
        """The RCPT-order positions of the message's recipients that match."""
        return tuple(
            position
            for position, recipient in enumerate(message.recipients)
            if all(f.matches(message, recipient, ctx) for f in self.filters)
        )

    def __str__(self) -> str:
        return " ".join(f.text for f in self.filters)


def parse_filters(texts: Sequence[str]) -> QueueFilter:
    """All the filters of one command. Raises FilterError on the first bad one."""
    return QueueFilter(tuple(parse_filter(text) for text in texts))


# --- what a field is for one recipient (filters and groupby share it) -----------------------


def domain_of(address: str) -> str:
    """The domain of an address, lower case; empty for the null sender or a bare local part."""
    return address.rpartition("@")[2].lower() if "@" in address else ""


def effective_state(message: SpoolRecord, recipient: SpooledRecipient, now: float) -> str:
    """The recipient's state as an operator sees it: ``sending`` while a worker holds a live
    lease on a message it may deliver, else the stored state."""
    if recipient.state in DELIVERABLE and lease_live(message, now):
        return SENDING
    return recipient.state.value


def lease_live(message: SpoolRecord, now: float) -> bool:
    return message.lease_until is not None and message.lease_until > now


def metadata_value(message: SpoolRecord, recipient: SpooledRecipient, key: str) -> str | None:
    """``key`` in the recipient's metadata, else the message's, as text (JSON for
    non-strings: ``true``, ``3``), or None when neither has it."""
    for metadata in (recipient.metadata, message.metadata):
        if key in metadata:
            value = metadata[key]
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return None


def next_hop(message: SpoolRecord, recipient: SpooledRecipient, ctx: FilterContext) -> str:
    """Where the recipient goes: metadata ``next_hop`` (set by a script), else metadata
    ``transport``, else the route for its domain, else its domain (an MX lookup of it)."""
    for key in ("next_hop", "transport"):
        value = metadata_value(message, recipient, key)
        if value:
            return value
    domain = domain_of(recipient.address)
    return ctx.route_hop(domain) or domain


def field_value(
    field: str, message: SpoolRecord, recipient: SpooledRecipient, ctx: FilterContext
) -> str | float:
    """The value of canonical ``field`` for one recipient of ``message``."""
    if field.startswith("metadata."):
        value = metadata_value(message, recipient, field[len("metadata.") :])
        return "" if value is None else value
    getter = _GETTERS[field]
    return getter(message, recipient, ctx)


_GETTERS: dict[str, Callable[[SpoolRecord, SpooledRecipient, FilterContext], str | float]] = {
    "id": lambda m, r, c: m.id,
    "sender": lambda m, r, c: m.sender,
    "sender_domain": lambda m, r, c: domain_of(m.sender),
    "age": lambda m, r, c: max(c.now - m.received_at, 0.0),
    "size": lambda m, r, c: float(m.size),
    "recipient": lambda m, r, c: r.address,
    "recipient_domain": lambda m, r, c: domain_of(r.address),
    "state": lambda m, r, c: effective_state(m, r, c.now),
    "retries": lambda m, r, c: float(r.retry_count),
    "next_hop": next_hop,
}


# --- groupby: which group a recipient counts in ----------------------------------------------

# Upper bounds (seconds) of the age buckets `queue groupby age` counts in, with their labels;
# roughly the retry schedule's steps, so a bucket says how far along its retries mail is.
AGE_BUCKETS: tuple[tuple[float, str], ...] = (
    (300, "< 5m"),
    (3600, "5m-1h"),
    (6 * 3600, "1h-6h"),
    (86400, "6h-1d"),
    (3 * 86400, "1d-3d"),
    (math.inf, ">= 3d"),
)
GROUP_FIELDS = (*(name for name in _ALIASES if name not in ("id", "size")), "metadata.KEY")


def group_field(name: str) -> str:
    """The canonical field of ``queue groupby NAME``; FilterError if one cannot group by it."""
    field = canonical_field(name)
    if field in ("id", "size"):
        raise FilterError(name, f"cannot group by {name}; fields: {', '.join(GROUP_FIELDS)}")
    return field


def group_value(
    field: str, message: SpoolRecord, recipient: SpooledRecipient, ctx: FilterContext
) -> str:
    """The group of one recipient: the field's value as text, ages in buckets."""
    if field == "age":
        age = max(ctx.now - message.received_at, 0.0)
        return next(label for bound, label in AGE_BUCKETS if age < bound)
    value = field_value(field, message, recipient, ctx)
    if field == "retries":
        return str(int(value))
    if field in ("sender", "sender_domain") and not value:  # the null sender
        return "<>"
    if field.startswith("metadata.") and metadata_value(message, recipient, field[9:]) is None:
        return "(none)"
    return str(value).lower() if field in _FOLDED_FIELDS else str(value)


def group_order(field: str, group: str) -> int:
    """Where an age bucket sorts (oldest last); 0 for every other field."""
    if field != "age":
        return 0
    return next(i for i, (_, label) in enumerate(AGE_BUCKETS) if label == group)
