"""Quarantine retention, the pure part: reading a retention, the terms of a hold, what the end
of a retention does to a message, when a worker sweeps next (injected clock), and what the
script actions and delivery verdicts store for a held recipient."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.queue_spool import Rcpt, message

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.policy.actions import Hold
from mailwarden.policy.context import Recipient
from mailwarden.queue.retention import (
    DEFAULT_RETENTION,
    FOREVER,
    MIN_GAP,
    HoldTerms,
    OnExpiry,
    next_sweep,
    parse_retention,
    plan_expiry,
)
from mailwarden.queue.schedule import RetrySchedule
from mailwarden.queue.verdicts import apply_action, judge, override
from mailwarden.spool.records import SpoolRecord
from mailwarden.spool.states import RecipientState

NOW = 1_800_000_000.0
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# --- reading a retention ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("7d", 7 * 86400.0),
        ("12h", 43200.0),
        ("90m", 5400.0),
        ("30s", 30.0),
        ("3600", 3600.0),
        (" 1.5h ", 5400.0),
        (2, 2.0),
        (0.5, 0.5),
        (0, FOREVER),
        ("0", FOREVER),
        ("0d", FOREVER),
        ("forever", FOREVER),
        ("Forever", FOREVER),
    ],
)
def test_a_retention_is_read_as_an_operator_writes_it(text: object, seconds: float) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-1", -5, "7 weeks", "", "1e3", True, None, [], "inf"])
def test_a_retention_it_cannot_read_is_a_clear_error(bad: object) -> None:
    with pytest.raises(ValueError, match="retention"):
        parse_retention(bad)


@given(st.integers(min_value=1, max_value=10**7), st.sampled_from(sorted(UNITS)))
def test_any_number_with_a_unit_is_that_many_seconds(number: int, unit: str) -> None:
    assert parse_retention(f"{number}{unit}") == number * UNITS[unit]


@given(st.text(max_size=12))
def test_any_text_is_a_retention_or_a_value_error(text: str) -> None:
    try:
        seconds = parse_retention(text)
    except ValueError:
        return
    assert seconds > 0  # never negative, never zero: 0 means for ever


def test_a_hold_keeps_for_its_retention_from_the_time_of_the_hold() -> None:
    assert HoldTerms(3600).until(NOW) == NOW + 3600
    assert HoldTerms(FOREVER).until(NOW) == FOREVER
    assert HoldTerms().retention == DEFAULT_RETENTION == 30 * 86400
    assert HoldTerms(10, OnExpiry.BOUNCE).until(NOW) == NOW + 10
    with pytest.raises(ValueError, match="on_expiry"):
        HoldTerms(10, "keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retention"):
        HoldTerms(0)  # 0 is for ever only as text a hold is given, never as stored terms


# --- the script's actions -------------------------------------------------------------------------


def test_the_hold_action_takes_a_retention_and_what_its_end_does() -> None:
    assert Hold("spam", retention="14d").terms(DEFAULT_RETENTION) == HoldTerms(14 * 86400)
    assert Hold("spam").terms(600) == HoldTerms(600)  # the configured default
    assert Hold(retention="forever").terms(600).retention == FOREVER
    bounce = Hold("review", retention=60, on_expiry="bounce").terms(600)
    assert bounce == HoldTerms(60, OnExpiry.BOUNCE)
    with pytest.raises(ValueError, match="retention"):
        Hold("spam", retention="next week")
    with pytest.raises(ValueError, match="on_expiry"):
        Hold("spam", on_expiry="delete")


def test_a_recipient_held_by_the_script_keeps_its_terms_until_spooled() -> None:
    recipient = Recipient("u@x.test", {})
    recipient.hold("legal hold", retention="forever")
    assert (recipient.state, recipient.retention, recipient.on_expiry) == (
        RecipientState.HELD,
        FOREVER,
        "discard",
    )
    with pytest.raises(ValueError, match="on_expiry"):
        recipient.hold("x", on_expiry="later")


def test_a_delivery_hooks_hold_stores_the_retention_end_as_the_next_attempt() -> None:
    schedule = RetrySchedule()
    held = apply_action(
        0,
        "u@x.test",
        0,
        Hold("held by pre_delivery", retention="1h", on_expiry="bounce"),
        reply=None,
        schedule=schedule,
        received_at=NOW - 100,
        now=NOW,
        hold_retention=600,
    )
    assert held.state is RecipientState.HELD
    assert held.outcome().next_attempt == NOW + 3600  # from the hold, not from the arrival
    assert held.outcome().on_expiry == "bounce"
    # post_delivery's Hold overrides a deferral; without its own retention, the default.
    deferred = judge(
        0,
        "u@x.test",
        0,
        DeliveryReply(451, "4.3.0", "busy"),
        schedule=schedule,
        received_at=NOW - 100,
        now=NOW,
    )
    (overridden,) = override(
        [deferred],
        Hold("look at this"),
        schedule=schedule,
        retry_counts=[0],
        received_at=NOW - 100,
        now=NOW,
        hold_retention=600,
    )
    assert overridden.outcome().next_attempt == NOW + 600
    assert overridden.outcome().on_expiry == "discard"


# --- what the end of a retention does -------------------------------------------------------------


def no_dsn(m: SpoolRecord, positions: Sequence[int], reply: DeliveryReply) -> SpoolRecord | None:
    raise AssertionError("no DSN is due when nothing bounces")


def test_an_ended_retention_discards_silently_and_the_message_leaves() -> None:
    m = message(
        "m1",
        Rcpt("a@x.test", state="held", next_attempt=NOW - 1),
        Rcpt("b@x.test", state="delivered"),
    )
    expiry = plan_expiry(m, NOW, no_dsn)
    assert expiry is not None
    assert [(u.position, u.state) for u in expiry.change.updates] == [(0, RecipientState.DISCARDED)]
    assert expiry.change.remove and expiry.change.queue is None
    assert (expiry.discarded, expiry.bounced) == (1, 0)


def test_a_retention_not_ended_a_hold_for_ever_and_a_live_lease_change_nothing() -> None:
    later = message("m1", Rcpt("a@x.test", state="held", next_attempt=NOW + 1))
    assert plan_expiry(later, NOW, no_dsn) is None
    forever = message("m2", Rcpt("a@x.test", state="held", next_attempt=FOREVER))
    assert plan_expiry(forever, NOW + 10 * 365 * 86400, no_dsn) is None
    ended = message("m3", Rcpt("a@x.test", state="held", next_attempt=NOW - 1))
    leased = replace(ended, leased_by="w", lease_until=NOW + 60)
    assert plan_expiry(leased, NOW, no_dsn) is None
    expired_lease = replace(ended, leased_by="w", lease_until=NOW - 1)
    assert plan_expiry(expired_lease, NOW, no_dsn) is not None
    # Only held recipients end: a deferred one's next attempt is a retry, not a retention.
    deferred = message("m4", Rcpt("a@x.test", state="deferred", next_attempt=NOW - 1))
    assert plan_expiry(deferred, NOW, no_dsn) is None


def test_bounce_on_expiry_bounces_with_one_dsn_and_keeps_what_still_waits() -> None:
    asked: list[tuple[str, list[int], str]] = []
    dsn = message("dsn1", "alice@client.test", sender="")

    def make_dsn(m: SpoolRecord, positions: Sequence[int], reply: DeliveryReply) -> SpoolRecord:
        asked.append((m.id, list(positions), str(reply)))
        return dsn

    m = message(
        "m1",
        Rcpt("a@x.test", state="held", next_attempt=NOW - 5, on_expiry="bounce"),
        Rcpt("b@x.test", state="held", next_attempt=NOW, on_expiry="discard"),
        Rcpt("c@x.test", state="held", next_attempt=NOW - 1, on_expiry="bounce"),
        Rcpt("d@x.test", state="deferred", next_attempt=NOW + 60),
    )
    expiry = plan_expiry(m, NOW, make_dsn)
    assert expiry is not None
    assert [(u.position, u.state.value) for u in expiry.change.updates] == [
        (0, "bounced"),
        (1, "discarded"),
        (2, "bounced"),
    ]
    assert asked == [("m1", [0, 2], "550 5.7.1 Message held by policy and not released in time")]
    assert expiry.change.queue is dsn
    assert expiry.change.updates[0].last_reply == asked[0][2]
    assert not expiry.change.remove  # d@ still waits for its retry
    assert (expiry.discarded, expiry.bounced) == (1, 2)


# --- when the next sweep is due (injected clock) -----------------------------------------------


def test_the_next_sweep_is_at_the_earliest_end_but_at_most_an_interval_away() -> None:
    assert next_sweep(NOW, interval=60, earliest_end=None, backlog=False) == NOW + 60
    assert next_sweep(NOW, interval=60, earliest_end=NOW + 5, backlog=False) == NOW + 5
    assert next_sweep(NOW, interval=60, earliest_end=NOW + 3600, backlog=False) == NOW + 60
    # An end already past (a sweep that could not take it) is no reason to spin; ends close
    # together go in one sweep; a sweep that stopped at its batch limit goes on at once.
    assert next_sweep(NOW, interval=60, earliest_end=NOW - 5, backlog=False) == NOW + MIN_GAP
    assert next_sweep(NOW, interval=60, earliest_end=NOW + 0.01, backlog=False) == NOW + MIN_GAP
    assert next_sweep(NOW, interval=0.1, earliest_end=NOW - 5, backlog=False) == NOW + 0.1
    assert next_sweep(NOW, interval=60, earliest_end=NOW + 30, backlog=True) == NOW


@given(
    st.floats(min_value=0, max_value=1e10),
    st.floats(min_value=0.01, max_value=3600),
    st.none() | st.floats(min_value=0, max_value=1e10),
)
def test_a_sweep_is_never_in_the_past_nor_more_than_an_interval_away(
    now: float, interval: float, earliest: float | None
) -> None:
    at = next_sweep(now, interval=interval, earliest_end=earliest, backlog=False)
    assert now + min(MIN_GAP, interval) <= at <= now + interval
    if earliest is not None and now + MIN_GAP <= earliest <= now + interval:
        assert at == earliest  # on time when the end is known
