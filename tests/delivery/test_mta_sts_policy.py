"""The MTA-STS TXT record and policy grammars (RFC 8461 §3.1, §3.2) and MX matching (§4.1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailwarden.delivery.mta_sts.policy import (
    MAX_AGE_LIMIT,
    PolicyError,
    mx_matches,
    parse_policy,
    parse_txt,
)

GOOD = (
    "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    "max_age: 604800\r\n"
)


def test_a_policy_parses_with_its_lines_and_patterns() -> None:
    policy = parse_policy(GOOD)
    assert policy.mode == "enforce"
    assert policy.max_age == 604800
    assert policy.mx == ("mail.example.com", "*.example.net")
    assert policy.lines == (
        "version: STSv1",
        "mode: enforce",
        "mx: mail.example.com",
        "mx: *.example.net",
        "max_age: 604800",
    )


def test_lf_line_ends_unknown_fields_and_any_order_are_accepted() -> None:
    text = (
        "max_age: 10\nfuture_thing: yes please\nmx: MX.Example.COM\nmode: testing\nversion: STSv1"
    )
    policy = parse_policy(text)
    assert (policy.mode, policy.max_age, policy.mx) == ("testing", 10, ("mx.example.com",))


def test_mode_none_needs_no_mx() -> None:
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").mx == ()


@pytest.mark.parametrize(
    "text",
    [
        "mode: enforce\nmx: a.example\nmax_age: 1\n",  # no version
        "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmax_age: 1\n",  # enforce without mx
        "version: STSv1\nmode: enforce\nmx: a.example\n",  # no max_age
        f"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: {MAX_AGE_LIMIT + 1}\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -5\n",
        "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n",
        "version: STSv1\nmode: enforce\nmode: testing\nmx: a.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: mail.*.example\nmax_age: 1\n",
        "version: STSv1\nmode: enforce\nmx: localhost\nmax_age: 1\n",
        "<html>not a policy</html>",
    ],
)
def test_malformed_policies_are_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(text)


@pytest.mark.parametrize(
    ("record", "policy_id"),
    [
        ("v=STSv1; id=20160831085700Z;", "20160831085700Z"),
        ("v=STSv1;id=abc", "abc"),
        ("v=STSv1; id=1; ext-1=anything:goes", "1"),
    ],
)
def test_txt_records_give_their_id(record: str, policy_id: str) -> None:
    assert parse_txt(record) == policy_id


@pytest.mark.parametrize(
    "record",
    [
        "v=STSv2; id=1",
        "v=STSv1",
        "v=STSv1; id=",
        "v=STSv1; id=a-b",
        "v=STSv1; id=" + "x" * 33,
        "v=STSv1; id=1; id=2",
        "id=1; v=STSv1",
    ],
)
def test_malformed_txt_records_are_refused(record: str) -> None:
    with pytest.raises(PolicyError):
        parse_txt(record)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.com.", True),
        ("mail.example.com", "mx.example.com", False),
        ("*.example.com", "mail.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "mail.example.comx", False),
    ],
)
def test_mx_patterns_match_as_section_4_1_says(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=2, max_size=4).map(".".join)


@given(
    mode=st.sampled_from(["enforce", "testing"]),
    max_age=st.integers(0, MAX_AGE_LIMIT),
    mx=st.lists(st.tuples(st.booleans(), DOMAIN), min_size=1, max_size=5),
    crlf=st.booleans(),
)
def test_any_valid_policy_round_trips(
    mode: str, max_age: int, mx: list[tuple[bool, str]], crlf: bool
) -> None:
    patterns = [("*." if wild else "") + name for wild, name in mx]
    lines = [
        "version: STSv1",
        f"mode: {mode}",
        *(f"mx: {p}" for p in patterns),
        f"max_age: {max_age}",
    ]
    policy = parse_policy(("\r\n" if crlf else "\n").join(lines))
    assert (policy.mode, policy.max_age, list(policy.mx)) == (mode, max_age, patterns)
    assert list(policy.lines) == lines


@given(st.text(max_size=300))
def test_arbitrary_text_parses_or_raises_policy_error(text: str) -> None:
    try:
        policy = parse_policy(text)
    except PolicyError:
        return
    assert policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age <= MAX_AGE_LIMIT


@given(st.text(max_size=100))
def test_arbitrary_txt_parses_or_raises_policy_error(text: str) -> None:
    try:
        policy_id = parse_txt(text)
    except PolicyError:
        return
    assert policy_id.isalnum() and len(policy_id) <= 32


@given(label=LABEL, domain=DOMAIN)
def test_a_wildcard_matches_exactly_one_more_label(label: str, domain: str) -> None:
    assert mx_matches(f"*.{domain}", f"{label}.{domain}")
    assert not mx_matches(f"*.{domain}", domain)
    assert not mx_matches(f"*.{domain}", f"{label}.{label}.{domain}")
