"""``[queue]`` (retries, lifetime, leases) and ``[[shaping]]`` (traffic shaping rules).

Durations are a number of seconds (``90``, ``0.5``) or a string with a unit: ``"90s"``,
``"5m"``, ``"4h"``, ``"5d"``. A rate is ``"MESSAGES/DURATION"``: ``"100/60"`` (100 messages
per 60 seconds), ``"3000/1h"``.
"""

from __future__ import annotations

import itertools
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mailwarden.queue.retention import DEFAULT_RETENTION, DEFAULT_SWEEP_INTERVAL, parse_retention
from mailwarden.queue.schedule import DEFAULT_INTERVALS, DEFAULT_MAX_AGE, RetrySchedule
from mailwarden.queue.shaping import (
    PLAIN_FIELDS,
    Backoff,
    Rate,
    ShapingDefaults,
    ShapingRule,
    check_field,
)

_MODEL = ConfigDict(extra="forbid", frozen=True, strict=True)
_PROBLEM_TYPE = "mailwarden_config"  # as config.models.PROBLEM_TYPE (not imported: no cycle)
_PROBLEMS_TYPE = "mailwarden_config_problems"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_RULE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError(_PROBLEM_TYPE, "{message}", {"message": message})


def parse_duration(value: Any) -> float:
    """Seconds from a number or a ``"5m"``-style string; raises the config error otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (found := _DURATION.match(value)):
        seconds = float(found[1]) * _UNITS[found[2]]
    else:
        raise _invalid(
            f"expected a duration: seconds (90) or a number with a unit s, m, h or d "
            f"('90s', '5m', '4h', '5d'), got {value!r}"
        )
    if seconds != seconds or seconds in (float("inf"), float("-inf")) or seconds < 0:
        raise _invalid(f"expected a duration >= 0 seconds, got {value!r}")
    return seconds


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise _invalid("expected a duration > 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]


def parse_rate(value: Any) -> Rate:
    """A :class:`Rate` from ``"100/60"`` or ``"100/1m"``; raises the config error otherwise."""
    found = _RATE.match(value) if isinstance(value, str) else None
    interval = float(found[2]) * _UNITS[found[3] or "s"] if found else 0.0
    if found is None or int(found[1]) < 1 or interval <= 0:
        raise _invalid(
            "expected a rate 'MESSAGES/DURATION' with at least 1 message per a duration > 0, "
            f"such as '100/60' (100 per 60 seconds) or '3000/1h', got {value!r}"
        )
    return Rate(messages=int(found[1]), interval=interval)


RateText = Annotated[Rate, PlainValidator(parse_rate)]


def _field_name(value: str) -> str:
    try:
        return check_field(value)
    except ValueError as err:
        raise _invalid(str(err)) from None


FieldName = Annotated[str, AfterValidator(_field_name)]


def _patterns(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(i, str) for i in items):
        raise _invalid(f"expected a pattern string or a non-empty array of them, got {value!r}")
    if not all(items):
        raise _invalid("expected non-empty patterns ('*' matches any known value)")
    return items


Patterns = Annotated[list[str], BeforeValidator(_patterns)]


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise _invalid(f"expected a regular expression, got {value!r} ({err})") from None
    return value


def _enhanced(value: str) -> str:
    if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", value):
        raise _invalid(f"expected an enhanced status code such as '4.7.28', got {value!r}")
    return value


def _fraction(value: float) -> float:
    if not 0 < value < 1:
        raise _invalid(f"expected a number between 0 and 1 (exclusive), such as 0.5, got {value}")
    return value


class BackoffSettings(BaseModel):
    """``backoff`` of a ``[[shaping]]`` rule, or ``[queue] destination_backoff``."""

    model_config = _MODEL

    codes: list[Annotated[int, Field(ge=200, le=599)]] = Field(
        default_factory=lambda: [421], description="Reply codes that lower the limits."
    )
    enhanced_codes: list[Annotated[str, AfterValidator(_enhanced)]] = Field(
        default_factory=list, description="Enhanced status codes that lower the limits."
    )
    text: Annotated[str, AfterValidator(_regex)] | None = Field(
        None, description="Regular expression searched in the reply text."
    )
    factor: Annotated[float, AfterValidator(_fraction)] = Field(
        0.5, description="What each step multiplies limits by."
    )
    duration: PositiveDuration = Field(600.0, description="How long each step holds.")
    cooldown: Duration = Field(30.0, description="Replies this soon after a step are ignored.")

    def to_backoff(self) -> Backoff:
        return Backoff(
            codes=tuple(self.codes),
            enhanced_codes=tuple(self.enhanced_codes),
            text=self.text,
            factor=self.factor,
            duration=self.duration,
            cooldown=self.cooldown,
        )


class MatchSettings(BaseModel):
    """``match`` of a ``[[shaping]]`` rule: each field a pattern or an array of them."""

    model_config = _MODEL

    domain: Patterns | None = Field(None, description="Recipient domain.")
    destination: Patterns | None = Field(None, description="Route next hop, else domain.")
    mx: Patterns | None = Field(None, description="MX host name of the target.")
    ip: Patterns | None = Field(None, description="IP address of the target.")
    source_ip: Patterns | None = Field(None, description="Local source address.")
    metadata: dict[str, Patterns] = Field(
        default_factory=dict, description="Script metadata keys and their patterns."
    )

    def conditions(self) -> dict[str, tuple[str, ...]]:
        found = {name: tuple(getattr(self, name)) for name in PLAIN_FIELDS if getattr(self, name)}
        for key, patterns in self.metadata.items():
            found[check_field(f"metadata.{key}")] = tuple(patterns)
        return found

    @model_validator(mode="after")
    def _metadata_keys(self) -> MatchSettings:
        for key in self.metadata:
            _field_name(f"metadata.{key}")
        return self


def _distinct(value: list[str]) -> list[str]:
    if len(set(value)) != len(value):
        raise _invalid(f"expected each field at most once, got {value!r}")
    return value


def _rule_id(value: str) -> str:
    if not _RULE_ID.match(value):
        raise _invalid(
            "expected an id of at most 64 lower-case letters, digits, '-' and '_', starting "
            f"with a letter or digit, got {value!r}"
        )
    return value


class ShapingRuleSettings(BaseModel):
    """``[[shaping]]``: one traffic shaping rule."""

    model_config = _MODEL

    id: Annotated[str, AfterValidator(_rule_id)] = Field(
        description="Unique name of the rule (logs, counters, `queue` output).",
        examples=["google"],
    )
    fields: Annotated[list[FieldName], AfterValidator(_distinct)] = Field(
        default_factory=list, description="Fields to group by; [] one group for all matches."
    )
    match: MatchSettings = Field(
        default_factory=MatchSettings, description="Condition; absent: every delivery."
    )
    max_connections: int | None = Field(None, ge=1, description="Concurrent connections.")
    max_messages_per_connection: int | None = Field(
        None, ge=1, description="Messages sent over one connection before it is closed."
    )
    rate: RateText | None = Field(None, description="'MESSAGES/DURATION', e.g. '100/60'.")
    backoff: BackoffSettings = Field(default_factory=BackoffSettings)

    @model_validator(mode="after")
    def _limits_something(self) -> ShapingRuleSettings:
        if (
            self.max_connections is None
            and self.max_messages_per_connection is None
            and self.rate is None
        ):
            raise _invalid(
                "expected at least one of max_connections, max_messages_per_connection, rate"
            )
        return self

    def to_rule(self) -> ShapingRule:
        return ShapingRule(
            id=self.id,
            fields=tuple(self.fields),
            match=self.match.conditions(),
            max_connections=self.max_connections,
            max_messages_per_connection=self.max_messages_per_connection,
            rate=self.rate,
            backoff=self.backoff.to_backoff(),
        )


def _unique_ids(rules: list[ShapingRuleSettings]) -> list[ShapingRuleSettings]:
    first: dict[str, int] = {}
    found: list[tuple[tuple[str | int, ...], str]] = []
    for index, rule in enumerate(rules):
        if rule.id in first:
            found.append(
                (
                    (index, "id"),
                    f"expected a unique id, but {rule.id!r} is also shaping[{first[rule.id]}].id",
                )
            )
        else:
            first[rule.id] = index
    if found:
        summary = "; ".join(f"{path}: {text}" for path, text in found)
        raise PydanticCustomError(
            _PROBLEMS_TYPE, "{summary}", {"summary": summary, "problems": found}
        )
    return rules


ShapingRules = Annotated[list[ShapingRuleSettings], AfterValidator(_unique_ids)]


def _intervals(value: list[float]) -> list[float]:
    if any(b < a for a, b in itertools.pairwise(value)):
        raise _invalid(f"expected intervals that never shrink, got {value!r}")
    return value


def _retention(value: Any) -> float:
    try:
        return parse_retention(value)
    except ValueError as error:
        raise _invalid(str(error)) from None


def _delay_warning(value: Any) -> float | None:
    seconds = parse_duration(value)
    return seconds or None


class QueueSettings(BaseModel):
    """``[queue]``: when failed deliveries are retried, how long messages live, leases."""

    model_config = _MODEL

    deliver: bool = Field(
        True, description="Deliver what is queued; false: keep it queued and attempt nothing."
    )
    retry_intervals: Annotated[list[PositiveDuration], AfterValidator(_intervals)] = Field(
        default_factory=lambda: list(DEFAULT_INTERVALS),
        min_length=1,
        description="Waits after the 1st, 2nd, ... failure; the last repeats.",
    )
    max_age: PositiveDuration = Field(
        DEFAULT_MAX_AGE, description="Age at which a message that still fails bounces."
    )
    delay_warning: Annotated[float | None, BeforeValidator(_delay_warning)] = Field(
        None, description="Age from which a delay DSN is sent; 0 or absent: none."
    )
    lease_duration: PositiveDuration = Field(
        900.0, description="How long a worker's claim on a message it delivers lasts."
    )
    poll_interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=60)] = Field(
        1.0, description="Seconds between looks for due messages when nothing wakes."
    )
    max_bytes_in_flight: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Bytes of leased messages a worker holds in memory before it leases more.",
    )
    hold_retention: Annotated[float, BeforeValidator(_retention)] = Field(
        DEFAULT_RETENTION,
        description="How long held (quarantined) mail is kept unless the hold says;"
        " 0 or 'forever': until released.",
    )
    hold_sweep_interval: Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=3600)] = (
        Field(
            DEFAULT_SWEEP_INTERVAL,
            description="Seconds between a worker's looks for held mail whose retention ended.",
        )
    )
    destination_backoff: BackoffSettings = Field(
        default_factory=BackoffSettings,
        description="Backoff of the default per-destination concurrency.",
    )

    def retry_schedule(self) -> RetrySchedule:
        return RetrySchedule(
            intervals=tuple(self.retry_intervals),
            max_age=self.max_age,
            delay_warning=self.delay_warning,
        )

    def shaping_defaults(
        self, max_connections_per_destination: int, max_messages_per_connection: int
    ) -> ShapingDefaults:
        """The default per-destination limits (values of ``[delivery]``) with this backoff."""
        return ShapingDefaults(
            max_connections=max_connections_per_destination,
            max_messages_per_connection=max_messages_per_connection,
            backoff=self.destination_backoff.to_backoff(),
        )


def shaping_rules(settings: list[ShapingRuleSettings]) -> tuple[ShapingRule, ...]:
    """The ``[[shaping]]`` tables as rules for :func:`mailwarden.queue.shaping.limits_for`."""
    return tuple(rule.to_rule() for rule in settings)
