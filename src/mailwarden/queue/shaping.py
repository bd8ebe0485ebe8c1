"""Traffic shaping: which limits hold for one delivery attempt, and how replies lower them.

Pure functions (no clock, no I/O; the caller passes ``now`` and the node-wide state that
:class:`mailwarden.queue.limits.NodeLimits` keeps), in the manner of Halon's queue policies
and KumoMTA's shaping.

A :class:`ShapingRule` has an optional ``match`` condition and ``fields`` to group by. Every
rule that matches a delivery applies (their limits hold together, each under its own counter):
``fields = ["domain"]`` means one counter per distinct recipient domain, ``["mx",
"metadata.tenant"]`` one per MX host and tenant, ``[]`` one counter for everything the rule
matches. A counter's key names the rule and the grouped values (``shaping:google|mx=...``), so
two rules never share one.

Beside the rules there is always the default per-destination concurrency (Postfix's
``default_destination_concurrency_limit``; ``[delivery] max_connections_per_destination``),
counted per *destination*: a route's next hop, else the recipient domain. A matching rule that
sets ``max_connections`` and groups by ``domain`` or ``destination`` takes its place (so a rule
can raise the limit for a large provider); a rule that sets ``max_messages_per_connection``
replaces the default cap (the smallest of several such rules wins).

A field that is not known yet (``ip`` and ``mx`` before the target is chosen, a metadata key
the message does not have) matches no condition and makes a rule that groups by it not apply:
the manager asks again once the target is known.

Backoff: when a reply matches a rule's backoff triggers (by default code 421), its limits are
multiplied by ``factor`` (default ½, never below 1) for ``duration`` seconds; each further
``duration`` without a matching reply restores one step, until the full limits hold again. A
matching reply within ``cooldown`` seconds of the last step down counts as the same signal
(several connections in flight see the same 421), later ones lower one step more.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from mailwarden.delivery.errors import DeliveryReply

# The fields a rule can match on and group by; plus "metadata.KEY" for any script metadata.
PLAIN_FIELDS = ("domain", "destination", "mx", "ip", "source_ip")
METADATA_PREFIX = "metadata."
_METADATA_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_CASELESS = frozenset({"domain", "destination", "mx"})  # DNS names compare without case
_ADDRESSES = frozenset({"ip", "source_ip"})
MAX_LEVEL = 32  # 2**-32 of any limit is below 1: deeper levels would change nothing


def check_field(name: str) -> str:
    """``name`` if it is a field rules and suspensions can use; else ValueError saying which are."""
    if name in PLAIN_FIELDS:
        return name
    if name.startswith(METADATA_PREFIX) and _METADATA_KEY.match(name[len(METADATA_PREFIX) :]):
        return name
    raise ValueError(
        f"unknown field {name!r}; expected one of {', '.join(PLAIN_FIELDS)} or metadata.KEY"
    )


@dataclass(frozen=True, slots=True)
class DeliveryFields:
    """What rules match on for one attempt. ``destination``: the Postfix next hop (a route's
    next-hop host, or empty for the recipient domain). ``mx``/``ip``: the target chosen, empty
    before it is known; ``source_ip``: the local address, empty when the kernel chooses."""

    domain: str
    mx: str = ""
    ip: str = ""
    source_ip: str = ""
    metadata: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    destination: str = ""

    def value(self, name: str) -> str:
        """The value of field ``name`` ("" when unknown), DNS names in lower case."""
        if name.startswith(METADATA_PREFIX):
            return str(self.metadata.get(name[len(METADATA_PREFIX) :], ""))
        if name == "destination":
            return (self.destination or self.domain).lower().rstrip(".")
        text = getattr(self, name)
        return text.lower().rstrip(".") if name in _CASELESS else text


# -- patterns -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    # Only "*" (any run of characters, dots included) and "?" (one character) are special, so
    # IPv6 literals and metadata values with brackets match themselves.
    parts = (".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


@functools.lru_cache(maxsize=1024)
def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return None


def value_matches(name: str, pattern: str, value: str) -> bool:
    """Does ``value`` of field ``name`` match ``pattern``?

    Exact text or a glob (``*.example.net``: any subdomain, not example.net itself); DNS names
    without regard to case; ``ip``/``source_ip`` also as a CIDR network (``192.0.2.0/24``). An
    unknown value ("") matches nothing, not even ``*``."""
    if not value:
        return False
    if name in _CASELESS:
        pattern = pattern.lower().rstrip(".")
    if name in _ADDRESSES and "/" in pattern:
        network = _network(pattern)
        if network is not None:
            try:
                return ipaddress.ip_address(value) in network
            except ValueError:
                return False
    if "*" not in pattern and "?" not in pattern:
        return value == pattern
    return _glob(pattern).fullmatch(value) is not None


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``messages`` per ``interval`` seconds (see NodeLimits.take_rate for exactly how)."""

    messages: int
    interval: float

    def __post_init__(self) -> None:
        if self.messages < 1 or not self.interval > 0:
            raise ValueError(f"a rate needs messages >= 1 and interval > 0, got {self}")

    def __str__(self) -> str:
        return f"{self.messages}/{self.interval:g}s"


@dataclass(frozen=True, slots=True)
class Backoff:
    """What lowers a rule's limits, by how much and for how long.

    A reply triggers when its code is in ``codes``, its enhanced code in ``enhanced_codes``,
    or ``text`` (a regular expression, searched) matches its text. ``codes=()`` with no
    enhanced codes and no text: never."""

    codes: tuple[int, ...] = (421,)
    enhanced_codes: tuple[str, ...] = ()
    text: str | None = None
    factor: float = 0.5
    duration: float = 600.0
    cooldown: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.factor < 1:
            raise ValueError(f"backoff factor must be between 0 and 1, got {self.factor}")
        if not self.duration > 0 or self.cooldown < 0:
            raise ValueError("backoff duration must be > 0 and cooldown >= 0")
        if self.text is not None:
            re.compile(self.text)

    def triggered_by(self, reply: DeliveryReply) -> bool:
        if reply.code in self.codes or reply.enhanced in self.enhanced_codes:
            return True
        return self.text is not None and _regex(self.text).search(reply.text) is not None


@functools.lru_cache(maxsize=256)
def _regex(text: str) -> re.Pattern[str]:
    return re.compile(text)


@dataclass(frozen=True, slots=True)
class ShapingRule:
    """One ``[[shaping]]`` rule. ``match`` maps a field to the patterns it may have (any of
    them); every listed field must match. Limits left None do not apply."""

    id: str
    fields: tuple[str, ...] = ()
    match: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: types.MappingProxyType({}))
    max_connections: int | None = None
    max_messages_per_connection: int | None = None
    rate: Rate | None = None
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        for name in (*self.fields, *self.match):
            check_field(name)

    def matches(self, fields: DeliveryFields) -> bool:
        for name, patterns in self.match.items():
            value = fields.value(name)
            if not any(value_matches(name, pattern, value) for pattern in patterns):
                return False
        return True

    def key(self, fields: DeliveryFields) -> str | None:
        """The counter key of the group ``fields`` is in; None when a grouped field is unknown."""
        parts = [f"shaping:{self.id}"]
        for name in self.fields:
            value = fields.value(name)
            if not value:
                return None
            parts.append(f"{name}={quote(value, safe='@')}")
        return "|".join(parts)


@dataclass(frozen=True, slots=True)
class ShapingDefaults:
    """The limits every delivery gets per destination, whatever the rules say (the values of
    ``[delivery] max_connections_per_destination`` and ``max_messages_per_connection``; the
    backoff of ``[queue] destination_backoff``)."""

    max_connections: int = 20
    max_messages_per_connection: int = 100
    backoff: Backoff = Backoff()

    @property
    def rule(self) -> ShapingRule:
        """The default limit as a rule grouped by destination (its key: ``destination|...``)."""
        return _default_rule(self)


@functools.lru_cache(maxsize=64)
def _default_rule(defaults: ShapingDefaults) -> ShapingRule:
    return ShapingRule(
        id="",
        fields=("destination",),
        max_connections=defaults.max_connections,
        max_messages_per_connection=defaults.max_messages_per_connection,
        backoff=defaults.backoff,
    )


def default_key(fields: DeliveryFields) -> str:
    return f"destination|destination={quote(fields.value('destination'), safe='@')}"


# -- state ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackoffState:
    """A rule group's limits are lowered ``level`` steps (each a multiplication by the rule's
    factor) from ``since``; one step comes back every ``duration`` after that. ``reason``: the
    reply that caused the last step, for operators."""

    level: int
    since: float
    reason: str = ""

    def level_at(self, backoff: Backoff, now: float) -> int:
        """The level in force at ``now`` (0: recovered)."""
        if now < self.since:
            return self.level
        return max(0, self.level - int((now - self.since) // backoff.duration))

    def recovered_at(self, backoff: Backoff) -> float:
        return self.since + self.level * backoff.duration


@dataclass(frozen=True, slots=True)
class Suspension:
    """Nothing matching ``field`` = ``value`` (a pattern, as in rules) is attempted until
    ``until`` (None: until resumed). An operator decision (``mailwarden queue suspend``)."""

    field: str
    value: str
    until: float | None = None
    reason: str = ""

    def active(self, now: float) -> bool:
        return self.until is None or now < self.until

    def covers(self, fields: DeliveryFields) -> bool:
        return value_matches(self.field, self.value, fields.value(self.field))

    def describe(self) -> str:
        text = f"{self.field}={self.value} is suspended"
        if self.reason:
            text += f": {self.reason}"
        return text


@dataclass(frozen=True, slots=True)
class Limits:
    """The effective limits for one attempt and the node-wide keys they count under.

    ``rules``: each counter key with the rule that made it, to feed replies back
    (:func:`backoff_after_reply`) and to say why a message waits."""

    connection_keys: tuple[tuple[str, int], ...]
    rate_keys: tuple[tuple[str, int, float], ...]
    max_messages_per_connection: int
    suspended: str | None
    rules: tuple[tuple[str, ShapingRule], ...] = ()


def scaled(limit: int, backoff: Backoff, level: int) -> int:
    """``limit`` lowered ``level`` steps: ``floor(limit * factor**level)``, never below 1."""
    if level <= 0:
        return limit
    return max(1, math.floor(limit * backoff.factor**level))


def applicable(
    rules: Sequence[ShapingRule], fields: DeliveryFields, defaults: ShapingDefaults
) -> list[tuple[str, ShapingRule]]:
    """``(key, rule)`` for every rule that applies to ``fields``, the default destination
    limit first unless a rule takes its place (see the module docstring)."""
    found: list[tuple[str, ShapingRule]] = []
    replaces_default = False
    for rule in rules:
        if not rule.matches(fields):
            continue
        key = rule.key(fields)
        if key is None:
            continue
        found.append((key, rule))
        if rule.max_connections is not None and {"domain", "destination"} & set(rule.fields):
            replaces_default = True
    if not replaces_default:
        found.insert(0, (default_key(fields), defaults.rule))
    return found


def limits_for(
    rules: Sequence[ShapingRule],
    fields: DeliveryFields,
    *,
    defaults: ShapingDefaults,
    backoff: Mapping[str, BackoffState],
    suspensions: Sequence[Suspension],
    now: float,
) -> Limits:
    """The limits one attempt to ``fields`` is under at ``now``.

    ``backoff`` maps counter keys to their state (missing: none); ``suspensions`` are the
    node's current ones. When one covers ``fields``, ``suspended`` says so and nothing must
    be attempted."""
    applied = applicable(rules, fields, defaults)
    connection_keys: list[tuple[str, int]] = []
    rate_keys: list[tuple[str, int, float]] = []
    per_connection: list[int] = []
    default_rule = defaults.rule
    for key, rule in applied:
        state = backoff.get(key)
        level = state.level_at(rule.backoff, now) if state is not None else 0
        if rule.max_connections is not None:
            connection_keys.append((key, scaled(rule.max_connections, rule.backoff, level)))
        if rule.rate is not None:
            messages = scaled(rule.rate.messages, rule.backoff, level)
            rate_keys.append((key, messages, rule.rate.interval))
        if rule.max_messages_per_connection is not None and rule is not default_rule:
            per_connection.append(rule.max_messages_per_connection)
    cap = min(per_connection) if per_connection else defaults.max_messages_per_connection
    suspended = next(
        (s.describe() for s in suspensions if s.active(now) and s.covers(fields)), None
    )
    return Limits(
        connection_keys=tuple(connection_keys),
        rate_keys=tuple(rate_keys),
        max_messages_per_connection=cap,
        suspended=suspended,
        rules=tuple(applied),
    )


def _floor_level(rule: ShapingRule) -> int:
    """The level from which every limit of ``rule`` is 1 (deeper steps change nothing)."""
    largest = max(rule.max_connections or 1, rule.rate.messages if rule.rate is not None else 1)
    level = 0
    while level < MAX_LEVEL and scaled(largest, rule.backoff, level) > 1:
        level += 1
    return level


def backoff_after_reply(
    state: BackoffState | None, rule: ShapingRule, reply: DeliveryReply, now: float
) -> BackoffState | None:
    """The backoff state of one rule group after ``reply`` came at ``now``.

    A triggering reply lowers the limits one step (from the level in force now) and restarts
    the ``duration``; within ``cooldown`` of the last step it changes nothing. Any other
    reply leaves the state to recover with time. None: the full limits hold."""
    backoff = rule.backoff
    level = state.level_at(backoff, now) if state is not None else 0
    if not backoff.triggered_by(reply):
        return state if level > 0 else None
    if state is not None and level > 0 and now - state.since < backoff.cooldown:
        return state
    floor = _floor_level(rule)
    if floor == 0:
        return None  # every limit is already 1, or the rule limits nothing backoff lowers
    return BackoffState(level=min(level + 1, floor), since=now, reason=str(reply))
