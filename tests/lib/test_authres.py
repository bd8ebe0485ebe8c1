"""Authentication-Results (RFC 8601): the field built from the library's results, and forged
fields claiming our authserv-id removed (§5)."""

from __future__ import annotations

import pytest
from tests.support.dns_server import DnsServer

from mailwarden.lib import authres, spf
from mailwarden.lib.arc import ArcResult
from mailwarden.lib.dkim import DkimResult
from mailwarden.lib.dmarc import DmarcResult
from mailwarden.lib.spf import SpfResult
from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

HEADER = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n"


def message(header: bytes = HEADER) -> Message:
    return Message(Headers.parse(header), 4, memory_body(b"hi\r\n"))


async def test_built_from_a_real_spf_check(resolver: DnsServer) -> None:
    result = await spf.check("192.0.2.9", "alice@spf.test", "mx.example.org")
    assert result.result == "pass"
    assert authres.build("mx.example.org", spf=result) == (
        "mx.example.org; spf=pass smtp.mailfrom=spf.test"
    )


def test_every_method_in_one_field() -> None:
    value = authres.build(
        "MX.Example.ORG",
        spf=SpfResult("softfail", "", "mailfrom", "example.org"),
        dkim=[
            DkimResult("pass", "example.org", "mw2026", "ed25519-sha256"),
            DkimResult("fail", "lists.example", "s1", "rsa-sha256", "body hash did not verify"),
        ],
        dmarc=DmarcResult("pass", "none", "example.org", policy="reject"),
        arc=ArcResult("pass", 2),
    )
    assert value == (
        "mx.example.org; spf=softfail smtp.mailfrom=example.org; "
        "dkim=pass header.d=example.org header.a=ed25519-sha256 header.s=mw2026; "
        'dkim=fail reason="body hash did not verify" header.d=lists.example '
        "header.a=rsa-sha256 header.s=s1; "
        "dmarc=pass (p=reject dis=none) header.from=example.org; "
        "arc=pass (i=2)"
    )
    parsed = authres.parse(value)  # and it reads back as RFC 8601 syntax
    assert parsed.authserv_id == "mx.example.org"
    assert [(r.method, r.result) for r in parsed.results] == [
        ("spf", "softfail"),
        ("dkim", "pass"),
        ("dkim", "fail"),
        ("dmarc", "pass"),
        ("arc", "pass"),
    ]


def test_absent_results_and_the_helo_identity() -> None:
    assert authres.build("mx.example.org") == "mx.example.org; none"
    assert authres.build("mx.example.org", dkim=[]) == "mx.example.org; dkim=none"
    helo = SpfResult("pass", "", "helo", "mail.example.net")
    assert authres.build("mx.example.org", spf=helo) == (
        "mx.example.org; spf=pass smtp.helo=mail.example.net"
    )
    failed = DmarcResult("fail", "quarantine", "example.net", policy="reject", reason="x")
    assert authres.build("mx.example.org", dmarc=failed) == (
        "mx.example.org; dmarc=fail (p=reject dis=quarantine) reason=x header.from=example.net"
    )


def test_reasons_and_comments_stay_one_valid_field() -> None:
    dkim = [DkimResult("permerror", "x.test", "s", "", 'bad "key" (p=)\x07é')]
    arc = ArcResult("fail", 1, "ARC-Seal[1] did not validate")
    value = authres.build("mx.example.org", dkim=dkim, arc=arc)
    parsed = authres.parse(value)
    assert [r.result for r in parsed.results] == ["permerror", "fail"]
    assert value.isascii() and "\x07" not in value


def test_bad_authserv_id_is_refused() -> None:
    for bad in ("", "mx example.org", "mx;example", ".example.org"):
        with pytest.raises(authres.AuthservIdError, match="authserv-id"):
            authres.build(bad)


def test_add_removes_forged_fields_and_keeps_the_others() -> None:
    msg = message(
        b"Authentication-Results: mx.example.org; dkim=pass header.d=bank.test\r\n"
        b"Authentication-Results: (forged) MX.EXAMPLE.ORG;\r\n\tspf=pass\r\n"
        b'Authentication-Results: "mx.example.org"; arc=pass\r\n'
        b"Authentication-Results: mx.example.org; this is ! not ( syntax\r\n"
        b"Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=example.org\r\n"
        b"Authentication-Results: mx.example.org.evil.test; dkim=pass\r\n" + HEADER
    )
    value = authres.add(msg, "mx.example.org", spf=SpfResult("fail", "", "mailfrom", "a.test"))
    assert value == "mx.example.org; spf=fail smtp.mailfrom=a.test"
    fields = msg.headers.get_all("Authentication-Results")
    assert fields == [
        value,
        "relay.example.net; spf=pass smtp.mailfrom=example.org",
        "mx.example.org.evil.test; dkim=pass",
    ]
    raw = msg.headers.to_bytes()
    assert raw.startswith(b"Authentication-Results: mx.example.org;\r\n spf=fail")
    assert raw.endswith(HEADER)


def test_remove_forged_counts_and_takes_several_names() -> None:
    msg = message(
        b"Authentication-Results: mx1.example.org; none\r\n"
        b"Authentication-Results: mx2.example.org; spf=pass\r\n"
        b"Authentication-Results: other.example; spf=pass\r\n" + HEADER
    )
    assert authres.remove_forged(msg, ["mx1.example.org", "MX2.example.org"]) == 2
    assert msg.headers.get_all("Authentication-Results") == ["other.example; spf=pass"]
    assert authres.remove_forged(msg, "mx1.example.org") == 0


def test_add_can_keep_existing_fields() -> None:
    msg = message(b"Authentication-Results: mx.example.org; none\r\n" + HEADER)
    authres.add(msg, "mx.example.org", dkim=[], remove_forged_fields=False)
    assert len(msg.headers.get_all("Authentication-Results")) == 2


def test_long_field_is_folded_per_clause() -> None:
    dkim = [DkimResult("pass", f"d{i}.example.org", "selector", "rsa-sha256") for i in range(8)]
    msg = message()
    authres.add(msg, "mx.example.org", dkim=dkim)
    raw = msg.headers.to_bytes()
    first = raw.split(b"\r\nFrom:")[0]
    assert all(len(line) <= 78 for line in first.split(b"\r\n"))
    assert msg.headers.get("Authentication-Results") == authres.build("mx.example.org", dkim=dkim)


def test_parse_refuses_what_is_not_authentication_results() -> None:
    with pytest.raises(ValueError, match="not an Authentication-Results value"):
        authres.parse("; spf=")
    assert authres.authserv_id("(c) mx.example.org; none") == "mx.example.org"
    assert authres.authserv_id("   ") is None
