"""Queue filters: the grammar an operator types, which recipients it selects, and that no input,
however garbled, crashes the parser or gives an error that does not name the filter."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.queue_spool import Rcpt, message

from mailwarden.queue.filters import (
    FilterContext,
    FilterError,
    group_field,
    group_value,
    parse_filter,
    parse_filters,
)

NOW = 1_800_000_000.0


def positions(texts: list[str], record, *, now: float = NOW, hop=lambda d: None):  # type: ignore[no-untyped-def]
    return parse_filters(texts).positions(record, FilterContext(now, hop))


def aged(record, seconds: float):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(record, received_at=NOW - seconds)


MIXED = message(
    "m1",
    Rcpt("a@One.example", state="deferred", retries=3, last_reply="451 4.7.1 greylisted"),
    Rcpt("b@two.example", state="held", metadata={"tenant": "acme"}),
    Rcpt("c@one.example", state="active", metadata={"next_hop": "[10.0.0.5]:2525"}),
    sender="Sender@Client.test",
    metadata={"tenant": "globex", "priority": 3},
)


def test_fields_of_the_message_and_of_each_recipient() -> None:
    assert positions([], MIXED) == (0, 1, 2)
    assert positions(["recipient_domain=one.example"], MIXED) == (0, 2)  # case-insensitive
    assert positions(["domain=ONE.example", "state=active"], MIXED) == (2,)  # AND
    assert positions(["state=deferred,held"], MIXED) == (0, 1)  # alternatives
    assert positions(["state!=held"], MIXED) == (0, 2)
    assert positions(["sender=sender@client.test"], MIXED) == (0, 1, 2)
    assert positions(["sender_domain=other.test"], MIXED) == ()
    assert positions(["recipient=*@one.example"], MIXED) == (0, 2)  # wildcard
    assert positions(["id=m1", "retries>2"], MIXED) == (0,)
    assert positions(["retries=0..2"], MIXED) == (1, 2)


def test_metadata_recipient_first_then_message() -> None:
    assert positions(["metadata.tenant=acme"], MIXED) == (1,)
    assert positions(["metadata.tenant=globex"], MIXED) == (0, 2)
    assert positions(["metadata.priority=3"], MIXED) == (0, 1, 2)  # JSON text of a number
    assert positions(["metadata.missing=x"], MIXED) == ()
    assert positions(["metadata.missing!=x"], MIXED) == (0, 1, 2)


def test_next_hop_from_metadata_then_route_then_domain() -> None:
    routes = {"two.example": "[192.0.2.7]:25"}.get
    assert positions(["next_hop=[10.0.0.5]:2525"], MIXED, hop=routes) == (2,)
    assert positions(["transport=[192.0.2.7]:25"], MIXED, hop=routes) == (1,)
    assert positions(["next_hop=one.example"], MIXED, hop=routes) == (0,)  # an MX lookup
    transport = message("t", Rcpt("x@y.example", metadata={"transport": "lmtp-store"}))
    assert positions(["transport=lmtp-store"], transport) == (0,)


def test_age_comparisons_and_units() -> None:
    hour_old = aged(message("h", "x@y.example"), 3600)
    assert positions(["age>3599"], hour_old) == (0,)
    assert positions(["age>3600"], hour_old) == ()
    assert positions(["age>=1h"], hour_old) == (0,)
    assert positions(["age<1d"], hour_old) == (0,)
    assert positions(["age=30m..2h"], hour_old) == (0,)
    assert positions(["age!=30m..2h"], hour_old) == ()
    assert positions(["age<10"], hour_old) == ()


def test_sending_is_a_live_lease_on_a_deliverable_recipient() -> None:
    from dataclasses import replace

    leased = replace(MIXED, leased_by="w0", lease_until=NOW + 60)
    assert positions(["state=sending"], leased) == (0, 2)  # the held one is not being sent
    assert positions(["state=active"], leased) == ()
    expired = replace(MIXED, leased_by="w0", lease_until=NOW - 1)
    assert positions(["state=sending"], expired) == ()
    assert positions(["state=active"], expired) == (2,)


def test_null_sender() -> None:
    bounce = message("b", "x@y.example", sender="")
    assert positions(["sender="], bounce) == (0,)
    assert positions(["sender=<>"], bounce) == (0,)
    assert positions(["sender=<>"], MIXED) == ()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("colour=red", "unknown field 'colour'"),
        ("state=stuck", "unknown state 'stuck'"),
        ("age>soon", "age needs seconds"),
        ("retries>1h", "retries needs a whole number"),
        ("sender>a", "sender is not numeric"),
        ("age=10..5", "empty range"),
        ("metadata.=x", "metadata needs a key"),
        ("state", "expected an operator"),
        ("=x", "expected FIELD=VALUE"),
        ("", "expected FIELD=VALUE"),
    ],
)
def test_errors_name_the_filter_and_the_problem(text: str, says: str) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert str(caught.value).startswith(f"bad filter {text!r}: ")
    assert says in str(caught.value)


GARBAGE = st.text(string.printable + "éß→\x00\u200b", max_size=40)
FIELDY = st.builds(
    lambda f, op, v: f + op + v,
    st.sampled_from(["age", "retries", "size", "state", "sender", "metadata.k", "domain", "x"]),
    st.sampled_from(["=", "!=", ">", "<", ">=", "<=", "==", "=>", ""]),
    GARBAGE,
)


@given(st.one_of(GARBAGE, FIELDY))
def test_parsing_never_crashes_and_errors_name_the_filter(text: str) -> None:
    try:
        parsed = parse_filter(text)
    except FilterError as error:
        assert str(error).startswith(f"bad filter {text!r}: ")
        assert error.problem
        return
    # A filter that parses can be matched against any message without raising.
    parse_filters([parsed.text]).positions(MIXED, FilterContext(NOW))


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6))
def test_ranges_are_inclusive_bounds(low: int, high: int, retries: int) -> None:
    record = message("r", Rcpt("x@y.example", retries=retries))
    text = f"retries={low}..{high}"
    if low > high:
        with pytest.raises(FilterError):
            parse_filter(text)
        return
    assert positions([text], record) == ((0,) if low <= retries <= high else ())
    assert positions([f"retries>{low}"], record) == ((0,) if retries > low else ())
    assert positions([f"retries<={high}"], record) == ((0,) if retries <= high else ())


def test_group_values() -> None:
    ctx = FilterContext(NOW)
    old = aged(MIXED, 2 * 3600)
    assert [group_value("age", old, r, ctx) for r in old.recipients] == ["1h-6h"] * 3
    field = group_field("domain")
    assert [group_value(field, MIXED, r, ctx) for r in MIXED.recipients] == [
        "one.example",
        "two.example",
        "one.example",
    ]
    tenant = group_field("metadata.tenant")
    assert [group_value(tenant, MIXED, r, ctx) for r in MIXED.recipients] == [
        "globex",
        "acme",
        "globex",
    ]
    with pytest.raises(FilterError, match="cannot group by id"):
        group_field("id")
    with pytest.raises(FilterError, match="unknown field 'nope'"):
        group_field("nope")
