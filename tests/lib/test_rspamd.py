"""rspamd.check against a real rspamd (Debian's package and rules, a normal worker of our own):
a clean message, GTUBE, the envelope as rspamd saw it, the message as edited, and rspamd down,
hanging, answering errors or not being rspamd at all."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.support.scanners import (
    GTUBE,
    RspamdServer,
    answering,
    as_message,
    build,
    closed_port,
    silent_server,
)

from mailwarden.config.library import LibrarySettings
from mailwarden.lib import ScannerError, backends, rspamd, scanners
from mailwarden.policy.context import AuthIdentity, Connection, Recipient, Sender, Transaction


def wait_for_log(server: RspamdServer, text: str, timeout: float = 5.0) -> str:
    """rspamd logs each task's line just after it answers."""
    deadline = time.monotonic() + timeout
    while text not in (log := server.log()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in rspamd's log: {log[-2000:]}")
        time.sleep(0.05)
    return log


async def test_clean_message_is_no_action(rspamd_daemon: RspamdServer) -> None:
    text = "Hi Bob,\n\nthe meeting moved to Thursday at ten.\n\nAlice\n"
    result = await rspamd.check(as_message(build(text)), url=rspamd_daemon.url, ip="127.0.0.1")
    assert result.action == "no action" and not result.is_spam
    assert result.required_score == 15.0  # Debian's actions.conf: reject at 15
    assert result.score < result.required_score
    assert "GTUBE" not in result.symbols
    assert "MIME_GOOD" in result.symbols  # rspamd's rules did look at the message
    assert result.symbols["MIME_GOOD"].options == ("text/plain",)
    assert not result.skipped


async def test_gtube_is_rejected(rspamd_daemon: RspamdServer) -> None:
    result = await rspamd.check(as_message(build(f"Buy now!\n{GTUBE}\n")), url=rspamd_daemon.url)
    assert result.action == "reject" and result.is_spam
    assert "GTUBE" in result.symbols
    assert result.score >= result.required_score
    assert result.messages["smtp_message"] == "Gtube pattern"


async def test_the_envelope_reaches_rspamd(rspamd_daemon: RspamdServer) -> None:
    conn = Connection(
        "c1",
        "inbound",
        "192.0.2.7",
        40000,
        "127.0.0.1",
        25,
        helo_name="mx.sender.example",
        auth=AuthIdentity("alice", "PLAIN"),
    )
    tx = Transaction(
        "Q7EST1",
        Sender("alice@sender.example", {}),
        [Recipient("bob@example.org", {}), Recipient("carol@example.org", {})],
    )
    raw = build("Hello both.\n")
    result = await rspamd.check(as_message(raw), conn=conn, tx=tx, url=rspamd_daemon.url)
    assert "FROM_EQ_ENVFROM" in result.symbols  # the envelope sender was given
    # An unauthenticated client (rspamd's hfilter skips authenticated ones) without and with
    # its reverse name.
    unnamed = await rspamd.check(
        raw, ip="192.0.2.7", helo="mx.sender.example", url=rspamd_daemon.url
    )
    assert "HFILTER_HOSTNAME_UNKNOWN" in unnamed.symbols
    named = await rspamd.check(
        raw,
        ip="192.0.2.7",
        helo="mx.sender.example",
        hostname="mx.sender.example",
        url=rspamd_daemon.url,
    )
    assert "HFILTER_HOSTNAME_UNKNOWN" not in named.symbols
    log = wait_for_log(rspamd_daemon, "qid: <Q7EST1>")
    line = next(line for line in log.splitlines() if "qid: <Q7EST1>" in line)
    assert "ip: 192.0.2.7" in line and "user: alice" in line
    assert "from: <alice@sender.example>" in line
    assert "rcpts: <bob@example.org,carol@example.org>" in line
    # Keywords override what conn and tx say; rspamd logs no sender for the null one ("<>").
    await rspamd.check(raw, conn=conn, tx=tx, queue_id="Q7EST2", sender="", url=rspamd_daemon.url)
    log = wait_for_log(rspamd_daemon, "qid: <Q7EST2>")
    line = next(line for line in log.splitlines() if "qid: <Q7EST2>" in line)
    assert "from: <" not in line


async def test_raw_bytes_and_the_message_as_edited(rspamd_daemon: RspamdServer) -> None:
    raw = build("Quarterly figures attached.\n")
    assert (await rspamd.check(raw, url=rspamd_daemon.url)).action != "reject"
    message = as_message(raw)
    await message.append_text(f"\n{GTUBE}\n")
    assert (await rspamd.check(message, url=rspamd_daemon.url)).is_spam


async def test_daemon_down_is_a_scanner_error() -> None:
    with pytest.raises(scanners.ScannerUnavailable, match="cannot connect") as caught:
        await rspamd.check(build("hi"), url=f"http://{closed_port()}")
    assert caught.value.scanner == "rspamd"
    assert caught.value.address.endswith("/checkv2")


async def test_silent_daemon_times_out_within_the_timeout() -> None:
    with silent_server() as address:
        started = time.monotonic()
        with pytest.raises(scanners.ScannerTimeout, match=r"no verdict within 0\.5s"):
            await rspamd.check(build("hi"), url=f"http://{address}", timeout=0.5)
        assert time.monotonic() - started < 2


def http_reply(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


async def test_error_and_garbage_answers(rspamd_daemon: RspamdServer) -> None:
    # rspamd's own error for a path it does not serve.
    with pytest.raises(scanners.ScannerRefused, match="status 500: invalid command"):
        await rspamd.check(build("hi"), url=f"{rspamd_daemon.url}/nothing")
    async with answering(b"220 mx.example ESMTP ready\r\n") as address:
        with pytest.raises(scanners.ScannerProtocolError, match="broken answer"):
            await rspamd.check(build("hi"), url=f"http://{address}")
    async with answering(http_reply("200 OK", b"<html>hello</html>", "text/html")) as address:
        with pytest.raises(scanners.ScannerProtocolError, match="not JSON"):
            await rspamd.check(build("hi"), url=f"http://{address}")
    async with answering(http_reply("200 OK", b'{"score": "high"}')) as address:
        with pytest.raises(scanners.ScannerProtocolError, match="numeric 'score'"):
            await rspamd.check(build("hi"), url=f"http://{address}")
    async with answering(http_reply("503 Service Unavailable", b"busy", "text/plain")) as address:
        with pytest.raises(scanners.ScannerRefused, match="status 503: busy"):
            await rspamd.check(build("hi"), url=f"http://{address}")


async def test_url_comes_from_library_settings(rspamd_daemon: RspamdServer, tmp_path: Path) -> None:
    backends.configure(LibrarySettings(rspamd_url=rspamd_daemon.url + "/"), tmp_path)
    try:
        assert (await rspamd.check(build(GTUBE))).is_spam
    finally:
        scanners.configure(None)


async def test_bad_envelope_values_are_the_scripts_bug() -> None:
    with pytest.raises(ValueError, match="Helo on one line"):
        await rspamd.check(build("hi"), helo="a\r\nb", url="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="Rcpt on one line"):
        await rspamd.check(build("hi"), recipients=[""], url="http://127.0.0.1:1")


symbol = st.fixed_dictionaries(
    {"score": st.floats(-50, 50, allow_nan=False)},
    optional={
        "options": st.lists(st.text(max_size=10), max_size=3),
        "description": st.text(max_size=20),
    },
)


@given(
    st.floats(-100, 100, allow_nan=False),
    st.floats(0, 100, allow_nan=False),
    st.sampled_from(rspamd.ACTIONS),
    st.dictionaries(st.from_regex(r"[A-Z_]{1,12}", fullmatch=True), symbol, max_size=5),
)
def test_answers_parse_back(score: float, required: float, action: str, symbols: dict) -> None:
    answer = {"score": score, "required_score": required, "action": action, "symbols": symbols}
    result = rspamd.parse_answer(json.loads(json.dumps(answer)), "test")
    assert (result.score, result.required_score, result.action) == (score, required, action)
    assert set(result.symbols) == set(symbols)
    for name, entry in symbols.items():
        assert result.symbols[name].score == entry["score"]
        assert result.symbols[name].options == tuple(entry.get("options", ()))


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_any_json_is_a_verdict_or_a_scanner_error(answer: object) -> None:
    try:
        result = rspamd.parse_answer(answer, "test")
    except ScannerError:
        return
    assert isinstance(result.score, float) and result.action
