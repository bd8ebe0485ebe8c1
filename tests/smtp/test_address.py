"""Envelope address and parameter grammar (RFC 5321 §4.1.2-4.1.3, §4.5.3.1; RFC 6531; RFC 3461)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mailwarden.smtp import replies
from mailwarden.smtp.address import (
    AddressError,
    Limits,
    is_address_literal,
    is_valid_helo_argument,
    parse_mailbox,
    parse_parameters,
    parse_path,
    parse_xtext,
)

ATEXT = "ABCXYZabcxyz0189!#$%&'*+/=?^_`{|}~-"
LETDIG = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789"

atoms = st.text(alphabet=ATEXT, min_size=1, max_size=8)
dot_strings = st.lists(atoms, min_size=1, max_size=4).map(".".join)
# qtextSMTP (%d32-33 / %d35-91 / %d93-126) and quoted-pairSMTP (backslash + %d32-126).
qtext = st.sampled_from([chr(c) for c in range(32, 127) if c not in (34, 92)])
quoted_pair = st.sampled_from([chr(c) for c in range(32, 127)]).map(lambda c: "\\" + c)
quoted_strings = st.lists(qtext | quoted_pair, max_size=10).map(lambda p: '"' + "".join(p) + '"')
local_parts = (dot_strings | quoted_strings).filter(lambda lp: len(lp) <= 64)


@st.composite
def labels(draw: st.DrawFn) -> str:
    first = draw(st.sampled_from(LETDIG))
    middle = draw(st.text(alphabet=LETDIG + "-", max_size=10))
    last = draw(st.sampled_from(LETDIG))
    return first if draw(st.booleans()) else first + middle + last


domains = st.lists(labels(), min_size=1, max_size=5).map(".".join)
ipv4_literals = st.ip_addresses(v=4).map(lambda ip: f"[{ip}]")
ipv6_literals = st.ip_addresses(v=6).map(lambda ip: f"[IPv6:{ip}]")
dcontent = st.text(
    alphabet=[chr(c) for c in range(33, 127) if c not in (91, 92, 93)], min_size=1, max_size=12
)
general_literals = (
    st.tuples(labels(), dcontent)
    .filter(lambda t: t[0].lower() != "ipv6")
    .map(lambda t: f"[{t[0]}:{t[1]}]")
)
address_literals = ipv4_literals | ipv6_literals | general_literals
mail_domains = domains | address_literals
mailboxes = st.tuples(local_parts, mail_domains).map(lambda t: f"{t[0]}@{t[1]}")


def rejected(call: object, *args: object, **kwargs: object) -> AddressError:
    assert callable(call)
    with pytest.raises(AddressError) as caught:
        call(*args, **kwargs)
    assert 500 <= caught.value.reply.code < 600
    return caught.value


# --- valid input is accepted and round-trips -----------------------------------------------


@given(mailbox=mailboxes)
def test_valid_mailboxes_round_trip(mailbox: str) -> None:
    address = parse_mailbox(mailbox)
    assert str(address) == mailbox
    assert parse_path(f"<{mailbox}>", allow_null=False).address == address


@given(literal=address_literals)
def test_address_literals_are_recognised(literal: str) -> None:
    assert is_address_literal(literal)
    assert is_valid_helo_argument(literal)


@given(domain=domains)
def test_domains_are_valid_helo_arguments(domain: str) -> None:
    assert is_valid_helo_argument(domain)
    assert is_valid_helo_argument(domain + ".")


def test_quoted_local_part_unquotes() -> None:
    address = parse_mailbox('"john \\"j\\" doe"@example.com')
    assert address.unquoted_local_part() == 'john "j" doe'
    assert parse_mailbox('"a@b"@example.com').domain == "example.com"


def test_general_literal_may_contain_an_at_sign() -> None:
    """RFC 5321 §4.1.3 dcontent includes "@": the local part ends at the first @ outside
    quotes, not the last."""
    assert parse_mailbox("user@[x-tag:a@b]").domain == "[x-tag:a@b]"


def test_null_and_postmaster_paths() -> None:
    assert parse_path("<>", allow_null=True).address.is_null
    rejected(parse_path, "<>", allow_null=False)
    path = parse_path("<Postmaster>", allow_null=False, allow_postmaster=True)
    assert path.address.is_postmaster
    rejected(parse_path, "<postmaster>", allow_null=False, allow_postmaster=False)


# --- invalid input is rejected with a 5xx --------------------------------------------------

FORBIDDEN_IN_DOT_STRING = list(' ()<>[]:;,\\"\x00\r\n\t\x7f')


@given(
    local=dot_strings,
    domain=domains,
    bad=st.sampled_from(FORBIDDEN_IN_DOT_STRING),
    where=st.integers(min_value=0),
)
def test_forbidden_character_in_local_part_is_rejected(
    local: str, domain: str, bad: str, where: int
) -> None:
    position = where % (len(local) + 1)
    broken = local[:position] + bad + local[position:]
    error = rejected(parse_mailbox, f"{broken}@{domain}")
    assert error.reply.code in (501, 553)


@given(local=dot_strings, domain=domains, kind=st.sampled_from(["lead", "trail", "double"]))
def test_misplaced_dots_in_local_part_are_rejected(local: str, domain: str, kind: str) -> None:
    broken = {"lead": "." + local, "trail": local + ".", "double": local + ".." + "x"}[kind]
    rejected(parse_mailbox, f"{broken}@{domain}")


@given(
    local=dot_strings,
    domain=domains,
    bad=st.sampled_from(["-", "_", " ", "..", "@", "!", "\x00", "é"]),
    where=st.integers(min_value=0),
)
def test_broken_domains_are_rejected(local: str, domain: str, bad: str, where: int) -> None:
    labels_ = domain.split(".")
    index = where % len(labels_)
    if bad == "-":
        labels_[index] = "-" + labels_[index]  # a label may not start with a hyphen
    elif bad == "..":
        labels_[index] = labels_[index] + "."  # empty label
    else:
        labels_[index] = labels_[index] + bad
    rejected(parse_mailbox, f"{local}@{'.'.join(labels_)}")


@pytest.mark.parametrize(
    "text",
    [
        "no-at-sign",
        "@example.com",
        "user@",
        "user@[1.2.3.256]",
        "user@[1.2.3]",
        "user@[IPv6:1::2::3]",
        "user@[IPv6:fe80::1%eth0]",
        "user@[IPv6:1.2.3.4]",
        "user@[:x]",
        "user@[tag-:x]",
        "user@[tag:a]b]",
        "user@[]",
        '"unterminated@example.com',
        '"a"b@example.com',
        '"bad\x00"@example.com',
    ],
)
def test_malformed_mailboxes_are_rejected(text: str) -> None:
    rejected(parse_mailbox, text)


@pytest.mark.parametrize(
    "argument",
    ["user@example.com", "<user@example.com", "<user@example.com>x", "<<a@b.c>>", "<a@b.c"],
)
def test_malformed_paths_are_rejected(argument: str) -> None:
    rejected(parse_path, argument, allow_null=True)


# --- limits (RFC 5321 §4.5.3.1) ------------------------------------------------------------


def test_local_part_limit() -> None:
    assert str(parse_mailbox("a" * 64 + "@example.com")).startswith("a" * 64)
    error = rejected(parse_mailbox, "a" * 65 + "@example.com")
    assert error.reply == replies.LOCAL_PART_TOO_LONG


def test_domain_limit() -> None:
    domain = ".".join(["a" * 63] * 3 + ["b" * 63])  # 255 octets
    assert len(domain) == 255
    assert parse_mailbox(f"x@{domain}").domain == domain
    error = rejected(parse_mailbox, f"x@c{domain}")
    assert error.reply == replies.DOMAIN_TOO_LONG


def test_label_limit() -> None:
    assert parse_mailbox("x@" + "a" * 63 + ".com")
    rejected(parse_mailbox, "x@" + "a" * 64 + ".com")


def test_path_limit_counts_the_brackets() -> None:
    local = "l" * 64
    domain = ".".join(["d" * 63, "d" * 63, "d" * 61])  # 64 + 1 + 189 + 2 = 256
    assert len(f"<{local}@{domain}>") == 256
    assert parse_path(f"<{local}@{domain}>", allow_null=False)
    error = rejected(parse_path, f"<{local}@d{domain}>", allow_null=False)
    assert error.reply == replies.PATH_TOO_LONG


def test_limits_are_configurable() -> None:
    small = Limits(local_part=3, domain=10, path=20)
    assert parse_mailbox("abc@example.co", limits=small)
    assert rejected(parse_mailbox, "abcd@ex.com", limits=small).reply.code == 553
    assert rejected(parse_mailbox, "a@example.com.x", limits=small).reply.code == 553
    assert rejected(parse_path, "<abc@exampleexa.com>", allow_null=False, limits=small)


# --- SMTPUTF8 (RFC 6531 §3.3) --------------------------------------------------------------

NON_ASCII = ["josé@example.com", "user@bücher.example", "用户@例子.广告", '"ü ü"@example.com']


@pytest.mark.parametrize("mailbox", NON_ASCII)
def test_non_ascii_needs_smtputf8(mailbox: str) -> None:
    rejected(parse_mailbox, mailbox)
    assert str(parse_mailbox(mailbox, utf8=True)) == mailbox


def test_local_part_limit_counts_octets() -> None:
    assert parse_mailbox("é" * 32 + "@example.com", utf8=True)
    rejected(parse_mailbox, "é" * 33 + "@example.com", utf8=True)


# --- source routes (RFC 5321 §4.1.2, Appendix C) -------------------------------------------


@given(hops=st.lists(domains, min_size=1, max_size=3), mailbox=mailboxes)
def test_source_routes_are_accepted_and_stripped(hops: list[str], mailbox: str) -> None:
    route = ",".join("@" + hop for hop in hops)
    assume(len(route) + len(mailbox) + 3 <= 256)
    path = parse_path(f"<{route}:{mailbox}>", allow_null=False)
    assert str(path.address) == mailbox
    assert path.source_route == route


@pytest.mark.parametrize(
    "argument",
    ["<@a.example:>", "<@:user@example.com>", "<@a..b:user@example.com>", "<@a.b,c.d:u@e.f>"],
)
def test_malformed_source_routes_are_rejected(argument: str) -> None:
    rejected(parse_path, argument, allow_null=False)


# --- ESMTP parameters (RFC 5321 §4.1.2 Mail-parameters) ------------------------------------

keywords = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9-]{0,10}\Z")
values = st.text(alphabet=[chr(c) for c in range(33, 127) if c != 61], min_size=1, max_size=12)


@given(pairs=st.dictionaries(keywords, st.none() | values, max_size=5))
def test_parameters_parse_with_keywords_upper_cased(pairs: dict[str, str | None]) -> None:
    assume(len({k.upper() for k in pairs}) == len(pairs))
    text = " ".join(k if v is None else f"{k}={v}" for k, v in pairs.items())
    assert parse_parameters(text) == {k.upper(): v for k, v in pairs.items()}


@given(keyword=keywords, value=values)
def test_duplicate_parameters_are_rejected(keyword: str, value: str) -> None:
    rejected(parse_parameters, f"{keyword}={value} {keyword.swapcase()}")


@given(
    keyword=keywords,
    value=values,
    bad=st.sampled_from(["=", "\x00", "\x01", "\x7f", "\t", "é"]),
    where=st.integers(min_value=0),
)
def test_forbidden_characters_in_values_are_rejected(
    keyword: str, value: str, bad: str, where: int
) -> None:
    position = where % (len(value) + 1)
    rejected(parse_parameters, f"{keyword}={value[:position]}{bad}{value[position:]}")


@pytest.mark.parametrize("text", ["=x", "-KEY=1", "KEY_1=2", "KEY=", "K\x00=1", "é=1"])
def test_malformed_parameters_are_rejected(text: str) -> None:
    rejected(parse_parameters, text)


def test_utf8_values_only_with_smtputf8() -> None:
    rejected(parse_parameters, "ORCPT=rfc822;josé@example.com")
    assert parse_parameters("ORCPT=utf-8;josé@example.com", utf8=True) == {
        "ORCPT": "utf-8;josé@example.com"
    }


def test_path_keeps_parameters() -> None:
    path = parse_path("<a@example.com> size=100 body=8BITMIME smtputf8", allow_null=True)
    assert path.parameters == {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None}


# --- xtext (RFC 3461 §4) -------------------------------------------------------------------


def xtext_encode(text: str) -> str:
    return "".join(
        ch if 33 <= ord(ch) <= 126 and ch not in "+=" else f"+{ord(ch):02X}" for ch in text
    )


@given(text=st.text(alphabet=st.characters(max_codepoint=127)))
def test_xtext_round_trips(text: str) -> None:
    assert parse_xtext(xtext_encode(text)) == text


@pytest.mark.parametrize("text", ["+", "+2", "+2b", "+ZZ", "a=b", "a b", "\x00", "é"])
def test_malformed_xtext_is_rejected(text: str) -> None:
    rejected(parse_xtext, text)
