"""Shaping rules: which limits hold for an attempt, under which keys, and how replies lower them.

Pure functions with an injected clock: every ``now`` here is a plain number.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.shaping import (
    Backoff,
    BackoffState,
    DeliveryFields,
    Rate,
    ShapingDefaults,
    ShapingRule,
    Suspension,
    backoff_after_reply,
    check_field,
    limits_for,
    scaled,
    value_matches,
)

DEFAULTS = ShapingDefaults(max_connections=20, max_messages_per_connection=100)
TOO_MANY = DeliveryReply(421, "4.7.0", "Too many connections, slow down", remote=True)
RATE_LIMITED = DeliveryReply(
    451, "4.7.28", "Our system has detected an unusual rate of mail", remote=True
)
MAILBOX_FULL = DeliveryReply(452, "4.2.2", "Mailbox full", remote=True)
OK = DeliveryReply(250, "2.0.0", "Queued", remote=True)


def limits(rules, fields, *, backoff=None, suspensions=(), now=1000.0, defaults=DEFAULTS):
    return limits_for(
        rules, fields, defaults=defaults, backoff=backoff or {}, suspensions=suspensions, now=now
    )


# -- matching -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pattern", "value", "expected"),
    [
        ("domain", "example.net", "example.net", True),
        ("domain", "Example.NET", "example.net", True),  # DNS names ignore case
        ("domain", "example.net", "mail.example.net", False),
        ("domain", "*.example.net", "mail.example.net", True),
        ("domain", "*.example.net", "a.b.example.net", True),
        ("domain", "*.example.net", "example.net", False),  # a glob is not the apex
        ("mx", "mx?.example.net", "mx1.example.net", True),
        ("mx", "mx?.example.net", "mx10.example.net", False),
        ("ip", "192.0.2.0/24", "192.0.2.77", True),
        ("ip", "192.0.2.0/24", "198.51.100.1", False),
        ("ip", "2001:db8::/32", "2001:db8::25", True),
        ("source_ip", "192.0.2.10", "192.0.2.10", True),
        ("metadata.tenant", "acme", "ACME", False),  # metadata compares exactly
        ("metadata.tenant", "[x]", "[x]", True),  # only * and ? are special
        ("domain", "*", "", False),  # an unknown value matches nothing
    ],
)
def test_patterns(name, pattern, value, expected):
    assert value_matches(name, pattern, value) is expected


def test_fields_are_checked():
    for name in ("domain", "destination", "mx", "ip", "source_ip", "metadata.job-id"):
        assert check_field(name) == name
    for name in ("tenant", "metadata.", "metadata.a b", "sender"):
        with pytest.raises(ValueError, match="unknown field"):
            check_field(name)
    with pytest.raises(ValueError):
        ShapingRule("bad", fields=("recipient",))


# -- limits and keys ------------------------------------------------------------------------


def test_without_rules_each_destination_gets_the_default_concurrency():
    result = limits([], DeliveryFields("Example.NET"))
    assert result.connection_keys == (("destination|destination=example.net", 20),)
    assert result.rate_keys == ()
    assert result.max_messages_per_connection == 100
    assert result.suspended is None
    # Routed through a smarthost, the next hop is the destination, as in Postfix.
    routed = limits([], DeliveryFields("example.net", destination="relay.example"))
    assert routed.connection_keys == (("destination|destination=relay.example", 20),)


def test_rules_group_by_their_fields():
    rule = ShapingRule(
        "google",
        fields=("mx",),
        match={"mx": ("*.google.com",)},
        max_connections=10,
        rate=Rate(300, 60.0),
    )
    one = limits([rule], DeliveryFields("gmail.com", mx="alt1.aspmx.l.google.com"))
    two = limits([rule], DeliveryFields("example.com", mx="aspmx.l.google.com"))
    assert one.connection_keys == (
        ("destination|destination=gmail.com", 20),
        ("shaping:google|mx=alt1.aspmx.l.google.com", 10),
    )
    assert one.rate_keys == (("shaping:google|mx=alt1.aspmx.l.google.com", 300, 60.0),)
    assert two.rate_keys == (("shaping:google|mx=aspmx.l.google.com", 300, 60.0),)
    # Not matched: only the default.
    other = limits([rule], DeliveryFields("example.org", mx="mx.example.org"))
    assert other.connection_keys == (("destination|destination=example.org", 20),)
    assert other.rate_keys == ()


def test_a_rule_without_fields_is_one_group_for_all_it_matches():
    rule = ShapingRule("all-outbound", rate=Rate(1000, 3600.0))
    for domain in ("example.net", "example.org"):
        assert limits([rule], DeliveryFields(domain)).rate_keys == (
            ("shaping:all-outbound", 1000, 3600.0),
        )


def test_two_rules_never_share_a_counter():
    first = ShapingRule("first", fields=("domain",), rate=Rate(10, 1.0))
    second = ShapingRule("second", fields=("domain",), rate=Rate(10, 1.0))
    keys = [key for key, _, _ in limits([first, second], DeliveryFields("x.example")).rate_keys]
    assert len(set(keys)) == 2


values = st.text(min_size=1, max_size=12)


@given(values, values, values, values)
@example("a|metadata.job=b", "c", "a", "b|metadata.job=c")
@example("a=b", "c", "a", "b=c")
def test_distinct_grouped_values_never_share_a_key(a, b, c, d):
    # Values are quoted in keys, so one with "|" or "=" cannot pass for two others.
    rule = ShapingRule("tenant-job", fields=("metadata.tenant", "metadata.job"), rate=Rate(1, 1.0))
    key_one = rule.key(DeliveryFields("x", metadata={"tenant": a, "job": b}))
    key_two = rule.key(DeliveryFields("x", metadata={"tenant": c, "job": d}))
    assert (key_one == key_two) == ((a, b) == (c, d))


def test_a_rule_on_a_field_not_known_yet_does_not_apply():
    by_ip = ShapingRule("per-ip", fields=("ip",), max_connections=2)
    tenant = ShapingRule("tenant", fields=("metadata.tenant",), rate=Rate(50, 60.0))
    before = limits([by_ip, tenant], DeliveryFields("example.net"))
    assert [key for key, _ in before.connection_keys] == ["destination|destination=example.net"]
    assert before.rate_keys == ()
    after = limits(
        [by_ip, tenant],
        DeliveryFields("example.net", ip="192.0.2.25", metadata={"tenant": "acme"}),
    )
    assert ("shaping:per-ip|ip=192.0.2.25", 2) in after.connection_keys
    assert after.rate_keys == (("shaping:tenant|metadata.tenant=acme", 50, 60.0),)


def test_match_needs_every_field_and_any_pattern():
    rule = ShapingRule(
        "acme-to-big",
        match={"domain": ("gmail.com", "*.outlook.com"), "metadata.tenant": ("acme",)},
        max_connections=3,
    )
    assert rule.matches(DeliveryFields("eur.outlook.com", metadata={"tenant": "acme"}))
    assert not rule.matches(DeliveryFields("gmail.com", metadata={"tenant": "other"}))
    assert not rule.matches(DeliveryFields("gmail.com"))


def test_a_domain_rule_with_max_connections_takes_the_defaults_place():
    big = ShapingRule(
        "big", fields=("domain",), match={"domain": ("gmail.com",)}, max_connections=50
    )
    result = limits([big], DeliveryFields("gmail.com"))
    assert result.connection_keys == (("shaping:big|domain=gmail.com", 50),)
    # A rule on another grouping (a tenant) holds beside the per-destination default.
    tenant = ShapingRule("tenant", fields=("metadata.tenant",), max_connections=5)
    both = limits([tenant], DeliveryFields("gmail.com", metadata={"tenant": "acme"}))
    assert both.connection_keys == (
        ("destination|destination=gmail.com", 20),
        ("shaping:tenant|metadata.tenant=acme", 5),
    )


def test_max_messages_per_connection_from_rules_replaces_the_default():
    many = ShapingRule("many", max_messages_per_connection=1000)
    few = ShapingRule("few", match={"domain": ("example.net",)}, max_messages_per_connection=10)
    assert limits([many], DeliveryFields("example.org")).max_messages_per_connection == 1000
    assert limits([many, few], DeliveryFields("example.net")).max_messages_per_connection == 10
    assert limits([few], DeliveryFields("example.org")).max_messages_per_connection == 100


# -- suspensions ----------------------------------------------------------------------------


def test_suspensions_stop_matching_deliveries_until_they_end():
    suspensions = [
        Suspension("domain", "example.net", reason="complaints"),
        Suspension("metadata.tenant", "acme", until=2000.0),
    ]
    assert limits([], DeliveryFields("example.net"), suspensions=suspensions).suspended == (
        "domain=example.net is suspended: complaints"
    )
    acme = DeliveryFields("example.org", metadata={"tenant": "acme"})
    assert limits([], acme, suspensions=suspensions, now=1999.0).suspended == (
        "metadata.tenant=acme is suspended"
    )
    assert limits([], acme, suspensions=suspensions, now=2000.0).suspended is None
    assert limits([], DeliveryFields("example.org"), suspensions=suspensions).suspended is None


# -- backoff --------------------------------------------------------------------------------

RULE = ShapingRule(
    "big",
    fields=("domain",),
    max_connections=10,
    rate=Rate(100, 60.0),
    backoff=Backoff(
        codes=(421,),
        enhanced_codes=("4.7.28",),
        text=r"(?i)too many",
        factor=0.5,
        duration=600.0,
        cooldown=30.0,
    ),
)
KEY = "shaping:big|domain=gmail.com"


def effective(state, now):
    result = limits(
        [RULE], DeliveryFields("gmail.com"), backoff={KEY: state} if state else {}, now=now
    )
    return dict(result.connection_keys)[KEY], result.rate_keys[0][1]


def test_a_421_halves_concurrency_and_rate_then_they_recover_step_by_step():
    assert effective(None, 0.0) == (10, 100)
    state = backoff_after_reply(None, RULE, TOO_MANY, now=1000.0)
    assert state == BackoffState(level=1, since=1000.0, reason=str(TOO_MANY))
    assert effective(state, 1000.0) == (5, 50)
    # Same signal from other connections in flight: no second step within the cooldown.
    assert backoff_after_reply(state, RULE, TOO_MANY, now=1029.0) is state
    # Still refused later: one more step.
    state = backoff_after_reply(state, RULE, TOO_MANY, now=1100.0)
    assert state.level == 2 and effective(state, 1100.0) == (2, 25)
    # Ten minutes without a matching reply bring one step back, ten more the full limits.
    assert effective(state, 1699.0) == (2, 25)
    assert effective(state, 1700.0) == (5, 50)
    assert effective(state, 2300.0) == (10, 100)
    assert state.recovered_at(RULE.backoff) == 2300.0
    assert backoff_after_reply(state, RULE, OK, now=2300.0) is None


def test_backoff_is_triggered_by_configured_codes_enhanced_codes_and_text():
    assert backoff_after_reply(None, RULE, RATE_LIMITED, now=0.0) is not None
    text_only = DeliveryReply(450, "4.0.0", "TOO MANY messages from your IP", remote=True)
    assert backoff_after_reply(None, RULE, text_only, now=0.0) is not None
    assert backoff_after_reply(None, RULE, MAILBOX_FULL, now=0.0) is None
    state = BackoffState(level=1, since=0.0)
    # A reply that does not match leaves the state to recover with time.
    assert backoff_after_reply(state, RULE, MAILBOX_FULL, now=10.0) is state
    never = ShapingRule("quiet", max_connections=4, backoff=Backoff(codes=()))
    assert backoff_after_reply(None, never, TOO_MANY, now=0.0) is None


def test_backoff_never_goes_below_one():
    state = None
    for step in range(20):
        state = backoff_after_reply(state, RULE, TOO_MANY, now=step * 100.0)
    assert effective(state, 1900.0) == (1, 1)
    # Deeper steps than the floor would only make recovery longer: the level stops there.
    assert state.level == 6  # floor(100 * 0.5**6) == 1


def test_the_default_destination_limit_backs_off_too():
    fields = DeliveryFields("example.net")
    [(key, rule)] = limits([], fields).rules
    state = backoff_after_reply(None, rule, TOO_MANY, now=0.0)
    result = limits([], fields, backoff={key: state}, now=0.0)
    assert result.connection_keys == (("destination|destination=example.net", 10),)


@given(st.integers(1, 10_000), st.floats(0.01, 0.99), st.integers(0, 40))
def test_scaled_limits_stay_between_one_and_the_limit(limit, factor, level):
    backoff = Backoff(factor=factor)
    value = scaled(limit, backoff, level)
    assert 1 <= value <= limit
    assert scaled(limit, backoff, level + 1) <= value


@given(st.integers(1, 32), st.floats(0, 1e6), st.floats(0, 1e7))
def test_backoff_only_recovers_with_time(level, since, later):
    state = BackoffState(level=level, since=since)
    backoff = RULE.backoff
    assert state.level_at(backoff, since) == level
    assert state.level_at(backoff, since + later) <= state.level_at(backoff, since + later / 2)
