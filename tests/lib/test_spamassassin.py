"""spamassassin.check against a real spamd (Debian's spamassassin, its shipped rules, our site
configuration): a clean message, GTUBE, the message as edited, the size limit, error replies,
and spamd down, hanging or replaced by something else."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.scanners import (
    GTUBE,
    SpamdServer,
    answering,
    as_message,
    build,
    closed_port,
    silent_server,
)

from mailwarden.config.library import LibrarySettings
from mailwarden.lib import ScannerError, backends, scanners, spamassassin


async def test_clean_message_is_not_spam(spamd: SpamdServer) -> None:
    text = "Hi Bob,\n\nthe meeting moved to Thursday at ten.\n\nAlice\n"
    result = await spamassassin.check(as_message(build(text)), address=spamd.address)
    assert not result.is_spam and not result.skipped
    assert result.threshold == 5.0
    assert result.score < result.threshold
    assert "GTUBE" not in result.rules


async def test_gtube_is_spam(spamd: SpamdServer) -> None:
    result = await spamassassin.check(
        as_message(build(f"Buy now!\n{GTUBE}\n")), address=spamd.address
    )
    assert result.is_spam
    assert result.score >= 1000.0  # GTUBE alone scores 1000 in SpamAssassin's rules
    assert result.threshold == 5.0
    assert "GTUBE" in result.rules
    assert all(rule and rule == rule.strip() for rule in result.rules)


async def test_raw_bytes_and_the_message_as_edited(spamd: SpamdServer) -> None:
    raw = build("Quarterly figures attached.\n")
    assert not (await spamassassin.check(raw, address=spamd.address)).is_spam
    message = as_message(raw)
    await message.append_text(f"\n{GTUBE}\n")  # what the script changed is what spamd sees
    assert (await spamassassin.check(message, address=spamd.address)).is_spam


async def test_a_message_over_max_bytes_is_not_sent(spamd: SpamdServer) -> None:
    raw = build(f"{GTUBE}\n" + "padding line\n" * 2000)
    result = await spamassassin.check(as_message(raw), address=spamd.address, max_bytes=10_000)
    assert result == spamassassin.SpamResult(0.0, 0.0, False, (), skipped=True)
    # Nothing is sent at all: even with spamd down the answer is "skipped".
    result = await spamassassin.check(raw, address=closed_port(), max_bytes=10_000)
    assert result.skipped
    assert (await spamassassin.check(raw, address=spamd.address, max_bytes=None)).is_spam


async def test_user_preferences_are_asked_for(spamd: SpamdServer) -> None:
    # This spamd runs with --nouser-config: the header is accepted, the verdict is the same.
    raw = build(f"{GTUBE}\n")
    assert (await spamassassin.check(raw, address=spamd.address, user="bob")).is_spam
    with pytest.raises(ValueError, match="one line"):
        await spamassassin.check(raw, address=spamd.address, user="bob\r\nX: y")


async def test_daemon_down_is_a_scanner_error(tmp_path: Path) -> None:
    with pytest.raises(scanners.ScannerUnavailable, match="cannot connect") as caught:
        await spamassassin.check(build("hi"), address=closed_port())
    assert caught.value.scanner == "spamd"
    with pytest.raises(ScannerError, match="cannot connect"):
        await spamassassin.check(build("hi"), address=str(tmp_path / "spamd.sock"))


async def test_silent_daemon_times_out_within_the_timeout() -> None:
    with silent_server() as address:
        started = time.monotonic()
        with pytest.raises(scanners.ScannerTimeout, match=r"no verdict within 0\.5s"):
            await spamassassin.check(build("hi"), address=address, timeout=0.5)
        assert time.monotonic() - started < 2


async def test_error_and_garbage_answers() -> None:
    async with answering(b"SPAMD/1.0 76 Bad header line: (oops)\r\n") as address:
        with pytest.raises(scanners.ScannerRefused, match="error 76: Bad header line"):
            await spamassassin.check(build("hi"), address=address)
    async with answering(b"220 mx.example ESMTP\r\n") as address:
        with pytest.raises(scanners.ScannerProtocolError, match="not a spamd answer"):
            await spamassassin.check(build("hi"), address=address)
    async with answering(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n") as address:
        with pytest.raises(scanners.ScannerProtocolError, match="Spam header"):
            await spamassassin.check(build("hi"), address=address)
    async with answering(b"") as address:
        with pytest.raises(scanners.ScannerUnavailable, match="without a verdict"):
            await spamassassin.check(build("hi"), address=address)


async def test_address_comes_from_library_settings(spamd: SpamdServer, tmp_path: Path) -> None:
    backends.configure(LibrarySettings(spamd_address=spamd.address), tmp_path)
    try:
        assert (await spamassassin.check(build(GTUBE))).is_spam
    finally:
        scanners.configure(None)


def test_parse_symbols_answer() -> None:
    reply = (
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 29\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n"
        b"GTUBE,MSGID_SHORT,NO_RECEIVED"
    )
    assert spamassassin.parse_reply(reply, "test") == spamassassin.SpamResult(
        1000.0, 5.0, True, ("GTUBE", "MSGID_SHORT", "NO_RECEIVED")
    )
    older = b"SPAMD/1.1 0 EX_OK\r\nSpam: No ; -0.5 / 5.0\r\n\r\n"
    assert spamassassin.parse_reply(older, "test") == spamassassin.SpamResult(-0.5, 5.0, False)
    short = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 40\r\nSpam: True ; 9.0 / 5.0\r\n\r\nA,B"
    with pytest.raises(scanners.ScannerProtocolError, match="Content-length 40 but 3"):
        spamassassin.parse_reply(short, "test")


rule_name = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True)


@given(
    st.lists(rule_name, max_size=8),
    st.decimals(-100, 2000, places=1, allow_nan=False),
    st.decimals(0, 100, places=1, allow_nan=False),
    st.booleans(),
)
def test_symbols_answers_parse_back(
    rules: list[str], score: object, threshold: object, spam: bool
) -> None:
    body = ",".join(rules).encode()
    reply = b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: %s ; %s / %s\r\n\r\n%s" % (
        len(body),
        b"True" if spam else b"False",
        str(score).encode(),
        str(threshold).encode(),
        body,
    )
    result = spamassassin.parse_reply(reply, "test")
    assert result == spamassassin.SpamResult(float(score), float(threshold), spam, tuple(rules))  # type: ignore[arg-type]


@given(st.binary(max_size=300))
def test_any_answer_is_a_verdict_or_a_scanner_error(reply: bytes) -> None:
    try:
        result = spamassassin.parse_reply(reply, "test")
    except ScannerError:
        return
    assert not result.skipped and all("," not in rule for rule in result.rules)
