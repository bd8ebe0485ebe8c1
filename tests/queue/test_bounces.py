"""DSN bounces (RFC 3464 / RFC 3461): what the original sender receives, read back with the
stdlib ``email`` package as a mail client would, and the record the queue gets to deliver."""

from __future__ import annotations

import asyncio
import email
import re
import smtplib
import time
from email import policy
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.sink import smtp_sink

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.bounces import (
    RETURN_SIZE_LIMIT,
    DsnRecipient,
    bounce_record,
    build_dsn,
    dsn_wanted,
)
from mailwarden.spool.reader import read_message_bytes
from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.spool.store import SpoolStore

RECEIVED = 1700000000.0  # Tue, 14 Nov 2023 22:13:20 +0000
NOW = RECEIVED + 3600
HOST = "mail.example.org"
HEADERS = (
    b"From: Sender <sender@client.test>\r\n"
    b"To: rcpt@remote.test\r\n"
    b"Subject: quarterly figures\r\n"
    b"Message-ID: <m1@client.test>\r\n"
    b"\r\n"
)
BODY = b"Hello,\r\nthe figures are attached.\r\n"
USER_UNKNOWN = DeliveryReply(550, "5.1.1", "<rcpt@remote.test>: User unknown", remote=True)


def spooled(
    *recipients: tuple[str, dict[str, str | None]],
    sender: str = "sender@client.test",
    sender_params: dict[str, str | None] | None = None,
    headers: bytes = HEADERS,
    body: bytes = BODY,
) -> SpoolRecord:
    """A queued message as the session stores it (params as received on the wire)."""
    return SpoolRecord(
        id="m1",
        server_id="inbound",
        received_at=RECEIVED,
        sender=sender,
        sender_params=sender_params or {},
        client_ip="192.0.2.7",
        client_port=40000,
        helo="client.test",
        tls=None,
        auth=None,
        metadata={},
        headers=headers,
        body=body,
        size=len(headers) + len(body),
        recipients=tuple(SpooledRecipient(a, p, {}) for a, p in recipients),
    )


def failed(address: str = "rcpt@remote.test", **kwargs: object) -> DsnRecipient:
    values: dict[str, object] = {
        "original": None,
        "action": "failed",
        "reply": USER_UNKNOWN,
        "remote_mta": "dns; mx1.remote.test",
        "last_attempt": NOW - 60,
    }
    values.update(kwargs)
    return DsnRecipient(address, **values)  # type: ignore[arg-type]


def parse(dsn: bytes) -> EmailMessage:
    message = email.message_from_bytes(dsn, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert message.defects == []
    return message


def parts(message: EmailMessage) -> list[Message]:
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    return list(message.iter_parts())


def fields(block: Message) -> dict[str, str]:
    """A report block's fields as written, unfolded (RFC 5322 §2.2.3: remove each CRLF)."""
    return {name: re.sub(r"\r?\n", "", value) for name, value in block.raw_items()}


def report(message: EmailMessage) -> tuple[dict[str, str], list[dict[str, str]]]:
    status = parts(message)[1]
    assert status.get_content_type() == "message/delivery-status"
    blocks = status.get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2
    return fields(blocks[0]), [fields(b) for b in blocks[1:]]


def human(message: EmailMessage) -> str:
    part = parts(message)[0]
    assert part.get_content_type() == "text/plain"
    return part.get_content()


def unescape(text: str) -> str:
    """RFC 6533 §3 EmbeddedUnicodeChar (``\\x{HHHH}``) back to the character."""
    return re.sub(r"\\x\{([0-9A-F]+)\}", lambda m: chr(int(m.group(1), 16)), text)


def xtext(text: str) -> str:
    """RFC 3461 §4 xtext, as a client puts ENVID and ORCPT on the wire."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=" else "".join(f"+{b:02X}" for b in c.encode())
        for c in text
    )


def lines_of(dsn: bytes) -> list[bytes]:
    assert dsn.endswith(b"\r\n")
    return dsn[:-2].split(b"\r\n")


# ---------------------------------------------------------------- a failure, field by field


def test_failure_dsn_is_a_multipart_report_with_the_remote_reply() -> None:
    message = spooled(("rcpt@remote.test", {}))
    dsn = build_dsn(message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW)
    parsed = parse(dsn)

    assert parsed["From"].addresses[0].display_name == "Mail Delivery System"
    assert parsed["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{HOST}"
    assert parsed["To"].addresses[0].addr_spec == "sender@client.test"
    assert "undelivered" in parsed["Subject"].lower()
    assert parsedate_to_datetime(parsed["Date"]).timestamp() == NOW
    assert re.fullmatch(r"<[^<>@\s]+@mail\.example\.org>", parsed["Message-ID"])
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["MIME-Version"] == "1.0"
    kinds = [p.get_content_type() for p in parts(parsed)]
    assert kinds == ["text/plain", "message/delivery-status", "message/rfc822"]

    per_message, (recipient,) = report(parsed)
    assert per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert parsedate_to_datetime(per_message["Arrival-Date"]).timestamp() == RECEIVED
    assert "Original-Envelope-Id" not in per_message
    assert recipient["Final-Recipient"] == "rfc822; rcpt@remote.test"
    assert "Original-Recipient" not in recipient
    assert recipient["Action"] == "failed"
    assert recipient["Status"] == "5.1.1"
    assert recipient["Remote-MTA"] == "dns; mx1.remote.test"
    assert recipient["Diagnostic-Code"] == "smtp; 550 5.1.1 <rcpt@remote.test>: User unknown"
    assert parsedate_to_datetime(recipient["Last-Attempt-Date"]).timestamp() == NOW - 60
    assert "Will-Retry-Until" not in recipient

    text = human(parsed)
    assert "rcpt@remote.test" in text and "failed" in text
    assert "mx1.remote.test said: 550 5.1.1 <rcpt@remote.test>: User unknown" in text

    returned = parts(parsed)[2].get_payload(0)
    assert returned["Subject"] == "quarterly figures"
    assert HEADERS + BODY in dsn  # the original, byte for byte


def test_a_reply_mailwarden_made_itself_has_no_remote_mta_and_an_x_type() -> None:
    null_mx = DeliveryReply(556, "5.1.10", "Recipient address has null MX", remote=False)
    message = spooled(("rcpt@remote.test", {}))
    dsn = build_dsn(
        message,
        HEADERS + BODY,
        [failed(reply=null_mx, remote_mta="dns; remote.test")],
        reporting_mta=HOST,
        now=NOW,
    )
    _, (recipient,) = report(parse(dsn))
    assert recipient["Status"] == "5.1.10"
    assert "Remote-MTA" not in recipient
    assert recipient["Diagnostic-Code"] == "x-mailwarden; 556 5.1.10 Recipient address has null MX"


def test_several_recipients_each_get_their_own_block() -> None:
    message = spooled(("a@remote.test", {}), ("b@other.test", {}))
    quota = DeliveryReply(552, "5.2.2", "Mailbox full", remote=True)
    dsn = build_dsn(
        message,
        HEADERS + BODY,
        [failed("a@remote.test"), failed("b@other.test", reply=quota, remote_mta="mx.other.test")],
        reporting_mta=HOST,
        now=NOW,
    )
    _, recipients = report(parse(dsn))
    assert [r["Final-Recipient"] for r in recipients] == [
        "rfc822; a@remote.test",
        "rfc822; b@other.test",
    ]
    assert [r["Status"] for r in recipients] == ["5.1.1", "5.2.2"]
    assert recipients[1]["Remote-MTA"] == "dns; mx.other.test"  # a bare host name: type dns


# ---------------------------------------------------------------- ENVID, ORCPT, SMTPUTF8


def test_envid_and_orcpt_are_decoded_from_xtext() -> None:
    # RFC 3461 §4: on the wire "+" is +2B and a space +20; §6.3: the DSN carries them decoded.
    message = spooled(
        ("rcpt@remote.test", {"ORCPT": "rfc822;first+2Blast@client.test"}),
        sender_params={"ENVID": "QQ314159+2Bjob+20x"},
    )
    record = bounce_record(
        message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW, new_id="b1"
    )
    assert record is not None
    per_message, (recipient,) = report(parse(record.headers + (record.body or b"")))
    assert per_message["Original-Envelope-Id"] == "QQ314159+job x"
    # bounce_record fills the ORCPT from the spooled recipient when the caller gave none.
    assert recipient["Original-Recipient"] == "rfc822; first+last@client.test"


def test_an_orcpt_the_caller_passes_wins_and_keeps_its_address_type() -> None:
    message = spooled(("rcpt@remote.test", {"ORCPT": "rfc822;other@client.test"}))
    record = bounce_record(
        message,
        HEADERS + BODY,
        [failed(original="x400;/C+3DDE/O+3DExample+2BCo/")],
        reporting_mta=HOST,
        now=NOW,
        new_id="b1",
    )
    assert record is not None
    _, (recipient,) = report(parse(record.headers + (record.body or b"")))
    assert recipient["Original-Recipient"] == "x400; /C=DE/O=Example+Co/"


def test_an_envid_with_controls_stays_in_xtext_rather_than_breaking_the_field() -> None:
    message = spooled(("rcpt@remote.test", {}), sender_params={"ENVID": "a+0D+0AInjected:+20x"})
    dsn = build_dsn(message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW)
    per_message, _ = report(parse(dsn))
    assert per_message["Original-Envelope-Id"] == "a+0D+0AInjected:+20x"
    assert "Injected" not in per_message


def test_utf8_addresses_use_the_utf8_address_type_and_the_dsn_asks_for_smtputf8() -> None:
    sender = "jürgen@bücher.test"
    rcpt = "δοκιμή@παράδειγμα.test"
    message = spooled(
        (rcpt, {"ORCPT": "utf-8;\\x{3B4}\\x{3BF}\\x{3BA}\\x{3B9}\\x{3BC}\\x{3AE}@example.test"}),
        sender=sender,
        sender_params={"SMTPUTF8": None},
    )
    record = bounce_record(
        message, HEADERS + BODY, [failed(rcpt)], reporting_mta=HOST, now=NOW, new_id="b1"
    )
    assert record is not None
    assert "SMTPUTF8" in record.sender_params
    dsn = record.headers + (record.body or b"")
    assert f"To: <{sender}>\r\n".encode() in dsn  # RFC 6532 §3.2: UTF-8 in the header
    parsed = parse(dsn)
    _, (recipient,) = report(parsed)
    kind, _, address = recipient["Final-Recipient"].partition("; ")
    assert kind == "utf-8" and address.isascii() and unescape(address) == rcpt
    kind, _, original = recipient["Original-Recipient"].partition("; ")
    assert kind == "utf-8" and unescape(original) == "δοκιμή@example.test"
    assert rcpt in human(parsed)


def test_non_ascii_reply_text_is_escaped_in_the_report_and_exact_in_the_human_part() -> None:
    reply = DeliveryReply(550, "5.7.1", "Nachricht abgelehnt: Größe \\ Inhalt", remote=True)
    message = spooled(("rcpt@remote.test", {}))
    dsn = build_dsn(message, HEADERS + BODY, [failed(reply=reply)], reporting_mta=HOST, now=NOW)
    parsed = parse(dsn)
    _, (recipient,) = report(parsed)
    code = recipient["Diagnostic-Code"]
    assert code.isascii() and "\\x{F6}" in code
    assert unescape(code) == "smtp; 550 5.7.1 Nachricht abgelehnt: Größe \\ Inhalt"
    assert "550 5.7.1 Nachricht abgelehnt: Größe \\ Inhalt" in human(parsed)
    assert dsn.isascii()  # 7bit throughout: the human part is quoted-printable


def test_an_original_with_utf8_headers_is_returned_as_message_global() -> None:
    headers = "Subject: Grüße\r\nFrom: jürgen@bücher.test\r\n\r\n".encode()
    message = spooled(("rcpt@remote.test", {}), headers=headers)
    dsn = build_dsn(message, headers + BODY, [failed()], reporting_mta=HOST, now=NOW)
    returned = parts(parse(dsn))[2]
    assert returned.get_content_type() == "message/global"  # RFC 6532 §3.7
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert headers + BODY in dsn


# ---------------------------------------------------------------- RET and the size cap


@pytest.mark.parametrize("ret", [None, "FULL", "full"])
def test_ret_full_or_absent_returns_the_whole_message(ret: str | None) -> None:
    params = {} if ret is None else {"RET": ret}
    message = spooled(("rcpt@remote.test", {}), sender_params=params)
    dsn = build_dsn(message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW)
    returned = parts(parse(dsn))[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned.get_payload(0).get_content() == BODY.decode()
    assert HEADERS + BODY in dsn


@pytest.mark.parametrize("ret", ["HDRS", "hdrs"])
def test_ret_hdrs_returns_the_headers_only(ret: str) -> None:
    message = spooled(("rcpt@remote.test", {}), sender_params={"RET": ret})
    dsn = build_dsn(message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW)
    returned = parts(parse(dsn))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert returned.get_content() == HEADERS[:-2].decode()
    assert b"the figures are attached" not in dsn


def test_a_message_over_the_size_cap_comes_back_as_headers_only() -> None:
    big = b"".join(b"line %06d of the attachment\r\n" % i for i in range(5000))
    assert len(HEADERS + big) > RETURN_SIZE_LIMIT
    message = spooled(("rcpt@remote.test", {}), body=big)
    dsn = build_dsn(message, HEADERS + big, [failed()], reporting_mta=HOST, now=NOW)
    returned = parts(parse(dsn))[2]
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"of the attachment" not in dsn
    assert len(dsn) < 8192

    small_cap = build_dsn(
        message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW, return_limit=40
    )
    assert parts(parse(small_cap))[2].get_content_type() == "text/rfc822-headers"


def test_headers_alone_over_the_cap_are_cut_after_a_whole_field() -> None:
    headers = b"".join(b"X-Trace-%05d: hop %05d\r\n" % (i, i) for i in range(9000)) + b"\r\n"
    assert len(headers) > RETURN_SIZE_LIMIT
    message = spooled(("rcpt@remote.test", {}), headers=headers)
    dsn = build_dsn(message, headers + BODY, [failed()], reporting_mta=HOST, now=NOW)
    returned = parts(parse(dsn))[2].get_content()
    assert RETURN_SIZE_LIMIT - 30 < len(returned) <= RETURN_SIZE_LIMIT
    assert re.fullmatch(r"(X-Trace-(\d{5}): hop \2\r\n)+", returned)


def test_a_delay_or_success_report_returns_only_the_headers() -> None:
    # RFC 3461 §4.3: RET concerns failure DSNs; the others carry the headers only.
    message = spooled(("rcpt@remote.test", {"NOTIFY": "SUCCESS,DELAY"}))
    ok = DeliveryReply(250, "2.0.0", "Ok: queued as 4Xk", remote=True)
    for action, reply in (("delayed", DeliveryReply(451, "4.4.1", "later")), ("delivered", ok)):
        dsn = build_dsn(
            message,
            HEADERS + BODY,
            [failed(action=action, reply=reply)],
            reporting_mta=HOST,
            now=NOW,
        )
        assert parts(parse(dsn))[2].get_content_type() == "text/rfc822-headers"


# ---------------------------------------------------------------- delay and success reports


def test_a_delay_warning_says_until_when_it_retries() -> None:
    message = spooled(("rcpt@remote.test", {}))
    later = DeliveryReply(451, "4.4.1", "Connection refused by mx1.remote.test")
    until = RECEIVED + 5 * 86400
    delayed = failed(action="delayed", reply=later, will_retry_until=until)
    dsn = build_dsn(message, HEADERS + BODY, [delayed], reporting_mta=HOST, now=NOW)
    parsed = parse(dsn)
    assert "delay" in parsed["Subject"].lower()
    _, (recipient,) = report(parsed)
    assert recipient["Action"] == "delayed"
    assert recipient["Status"] == "4.4.1"
    assert parsedate_to_datetime(recipient["Will-Retry-Until"]).timestamp() == until
    assert "Will retry until Sun, 19 Nov 2023 22:13:20 +0000" in human(parsed)


def test_will_retry_until_is_only_for_delayed_recipients() -> None:
    message = spooled(("rcpt@remote.test", {}))
    dsn = build_dsn(
        message, HEADERS + BODY, [failed(will_retry_until=NOW + 60)], reporting_mta=HOST, now=NOW
    )
    _, (recipient,) = report(parse(dsn))
    assert "Will-Retry-Until" not in recipient


def test_a_success_report_says_delivered() -> None:
    message = spooled(("rcpt@remote.test", {"NOTIFY": "SUCCESS"}))
    ok = DeliveryReply(250, "2.0.0", "Ok: queued as 4Xk", remote=True)
    record = bounce_record(
        message,
        HEADERS + BODY,
        [failed(action="delivered", reply=ok)],
        reporting_mta=HOST,
        now=NOW,
        new_id="b1",
    )
    assert record is not None
    parsed = parse(record.headers + (record.body or b""))
    assert "delivered" in parsed["Subject"].lower()
    _, (recipient,) = report(parsed)
    assert (recipient["Action"], recipient["Status"]) == ("delivered", "2.0.0")
    assert recipient["Diagnostic-Code"] == "smtp; 250 2.0.0 Ok: queued as 4Xk"


def test_a_mixed_report_is_subjected_as_a_failure() -> None:
    message = spooled(("a@remote.test", {}), ("b@remote.test", {}))
    delayed = failed("b@remote.test", action="delayed", reply=DeliveryReply(451, "4.3.0", "x"))
    dsn = build_dsn(
        message, HEADERS + BODY, [failed("a@remote.test"), delayed], reporting_mta=HOST, now=NOW
    )
    parsed = parse(dsn)
    assert "undelivered" in parsed["Subject"].lower()
    assert parts(parsed)[2].get_content_type() == "message/rfc822"


# ---------------------------------------------------------------- NOTIFY


@pytest.mark.parametrize(
    ("notify", "failure", "delay", "success"),
    [
        (None, True, True, False),  # RFC 3461 §4.1: absent = FAILURE,DELAY (our choice)
        ("NEVER", False, False, False),
        ("never", False, False, False),
        ("FAILURE", True, False, False),
        ("DELAY", False, True, False),
        ("SUCCESS", False, False, True),
        ("SUCCESS,FAILURE", True, False, True),
        ("FAILURE,DELAY", True, True, False),
        ("success,delay,failure", True, True, True),
    ],
)
def test_notify_decides_which_actions_get_a_dsn(
    notify: str | None, failure: bool, delay: bool, success: bool
) -> None:
    assert dsn_wanted("failed", notify) is failure
    assert dsn_wanted("delayed", notify) is delay
    for action in ("delivered", "relayed", "expanded"):
        assert dsn_wanted(action, notify) is success


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="bounced"):
        dsn_wanted("bounced", None)
    with pytest.raises(ValueError, match="bounced"):
        failed(action="bounced")


def test_bounce_record_reports_only_recipients_whose_notify_asks() -> None:
    message = spooled(
        ("never@remote.test", {"NOTIFY": "NEVER"}),
        ("fails@remote.test", {"NOTIFY": "FAILURE"}),
        ("plain@remote.test", {}),
        ("delay@remote.test", {"NOTIFY": "DELAY"}),
    )
    given_recipients = [
        failed("never@remote.test"),
        failed("fails@remote.test"),
        failed("plain@remote.test"),
        failed("delay@remote.test"),
    ]
    record = bounce_record(
        message, HEADERS + BODY, given_recipients, reporting_mta=HOST, now=NOW, new_id="b1"
    )
    assert record is not None
    _, recipients = report(parse(record.headers + (record.body or b"")))
    assert [r["Final-Recipient"] for r in recipients] == [
        "rfc822; fails@remote.test",
        "rfc822; plain@remote.test",
    ]


def test_no_dsn_when_notify_excludes_every_recipient() -> None:
    message = spooled(("a@remote.test", {"NOTIFY": "NEVER"}), ("b@remote.test", {}))
    ok = DeliveryReply(250, "2.0.0", "Ok", remote=True)
    recipients = [failed("a@remote.test"), failed("b@remote.test", action="delivered", reply=ok)]
    assert (
        bounce_record(message, HEADERS + BODY, recipients, reporting_mta=HOST, now=NOW, new_id="b")
        is None
    )


def test_a_bounce_is_never_bounced() -> None:
    message = spooled(("rcpt@remote.test", {"NOTIFY": "FAILURE"}), sender="")
    assert (
        bounce_record(message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW, new_id="b")
        is None
    )


# ---------------------------------------------------------------- the record to queue


def test_the_bounce_record_goes_from_the_null_sender_to_the_original_sender(
    tmp_path: Path,
) -> None:
    message = spooled(("rcpt@remote.test", {}))
    record = bounce_record(
        message, HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW, new_id="dsn-1"
    )
    assert record is not None
    assert (record.id, record.sender, record.received_at) == ("dsn-1", "", NOW)
    assert [r.address for r in record.recipients] == ["sender@client.test"]
    assert record.metadata["dsn_for"] == "m1"
    assert parse(record.headers + (record.body or b""))["Message-ID"] == f"<dsn-1@{HOST}>"

    async def queue_it() -> None:
        store = SpoolStore(tmp_path, 0, fsync=False)
        store.open()
        try:
            await store.commit(record)
        finally:
            store.close()

    asyncio.run(queue_it())
    stored = read_message_bytes(tmp_path, "dsn-1")
    assert stored == record.headers + (record.body or b"")
    assert record.size == len(stored)
    assert report(parse(stored))[1][0]["Final-Recipient"] == "rfc822; rcpt@remote.test"


def test_postfix_smtp_sink_takes_the_bounce_from_the_null_sender(tmp_path: Path) -> None:
    # A real receiving peer: the DSN goes out as any message (MAIL FROM:<>, the record's
    # recipient) and arrives as a report the stdlib reads back.
    long_reply = DeliveryReply(550, "5.7.1", "policy " * 400 + "Größe", remote=True)
    message = spooled(("rcpt@remote.test", {"ORCPT": "rfc822;rcpt@remote.test"}))
    record = bounce_record(
        message,
        HEADERS + BODY,
        [failed(reply=long_reply)],
        reporting_mta=HOST,
        now=NOW,
        new_id="dsn-2",
    )
    assert record is not None
    dsn = record.headers + (record.body or b"")
    with smtp_sink(tmp_path) as sink:
        with smtplib.SMTP("127.0.0.1", sink.port, timeout=30) as client:
            refused = client.sendmail(record.sender, [r.address for r in record.recipients], dsn)
        assert refused == {}
        for _ in range(200):  # the dump file appears once smtp-sink has written it
            if sink.messages():
                break
            time.sleep(0.05)
        (dumped,) = sink.messages()
    assert b"X-Mail-Args: <>\n" in dumped
    assert b"X-Rcpt-Args: <sender@client.test>\n" in dumped
    arrived = parse(dumped.replace(b"\n", b"\r\n"))
    _, (recipient,) = report(arrived)
    assert recipient["Original-Recipient"] == "rfc822; rcpt@remote.test"
    assert unescape(recipient["Diagnostic-Code"]) == f"smtp; {long_reply}"
    assert "Größe" in human(arrived)
    assert parts(arrived)[2].get_payload(0)["Subject"] == "quarterly figures"


# ---------------------------------------------------------------- line lengths


def test_every_line_stays_within_998_octets() -> None:
    long_word = "x" * 3000
    reply = DeliveryReply(550, "5.7.1", f"rejected {long_word} " + "because " * 300, remote=True)
    long_line_body = b"A" * 5000 + b"\r\nshort\r\n"
    message = spooled(("rcpt@remote.test", {}), body=long_line_body)
    dsn = build_dsn(
        message,
        HEADERS + long_line_body,
        [failed(reply=reply)],
        reporting_mta=HOST,
        now=NOW,
    )
    assert max(len(line) for line in lines_of(dsn)) <= 998
    assert b"\n" not in dsn.replace(b"\r\n", b"") and b"\r" not in dsn.replace(b"\r\n", b"")
    parsed = parse(dsn)
    _, (recipient,) = report(parsed)
    # Folding keeps every word; only the over-long word got spaces put into it.
    assert recipient["Diagnostic-Code"].replace(" ", "") == f"smtp;{reply}".replace(" ", "")
    assert recipient["Diagnostic-Code"].endswith(" because because")
    # The returned original: the long line broken by CRLF SP (as Postfix's smtp client).
    returned = parts(parsed)[2].get_payload(0).get_content()
    assert returned.replace("\r\n ", "").startswith("A" * 5000 + "\r\nshort\r\n")


def test_report_fields_fold_at_78_characters_where_the_words_allow() -> None:
    # RFC 5322 §2.1.1: lines SHOULD be at most 78 characters; §2.2.3: fold before a space.
    text = " ".join(f"word{i:03d}" for i in range(200))
    reply = DeliveryReply(554, "5.7.1", text, remote=True)
    message = spooled(("rcpt@remote.test", {}))
    dsn = build_dsn(message, HEADERS + BODY, [failed(reply=reply)], reporting_mta=HOST, now=NOW)
    start = dsn.index(b"Reporting-MTA:")
    report_lines = lines_of(dsn[start : dsn.index(b"\r\n--", start) + 2])
    assert len(report_lines) > 30
    assert max(len(line) for line in report_lines) <= 78
    _, (recipient,) = report(parse(dsn))
    assert recipient["Diagnostic-Code"] == f"smtp; 554 5.7.1 {text}"  # unfolds exactly


def test_bare_line_feeds_of_the_original_become_crlf() -> None:
    original = b"Subject: lf only\n\nline one\nline two\n"
    message = spooled(("rcpt@remote.test", {}), headers=b"", body=original)
    dsn = build_dsn(message, original, [failed()], reporting_mta=HOST, now=NOW)
    assert b"Subject: lf only\r\n\r\nline one\r\nline two\r\n" in dsn
    assert parts(parse(dsn))[2].get_payload(0)["Subject"] == "lf only"


def test_the_boundary_never_occurs_in_the_returned_message() -> None:
    first = build_dsn(spooled(), HEADERS + BODY, [failed()], reporting_mta=HOST, now=NOW)
    boundary = parse(first).get_boundary()
    assert boundary
    body = f"--{boundary}\r\n--{boundary}--\r\n".encode()
    message = spooled(("rcpt@remote.test", {}), body=body)
    dsn = build_dsn(message, HEADERS + body, [failed()], reporting_mta=HOST, now=NOW)
    parsed = parse(dsn)
    assert parsed.get_boundary() != boundary
    assert [p.get_content_type() for p in parts(parsed)][2] == "message/rfc822"
    assert HEADERS + body in dsn


# ---------------------------------------------------------------- property: always parses

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
_atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
_utf8_atoms = st.text(
    alphabet=st.characters(min_codepoint=0xA1, max_codepoint=0x2FFF, categories=("L",)),
    min_size=1,
    max_size=8,
)
_quoted = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\'),
    max_size=15,
).map(lambda s: f'"{s}"')
_local_parts = st.one_of(
    st.lists(st.one_of(_atoms, _utf8_atoms), min_size=1, max_size=4).map(".".join), _quoted
)
_labels = st.one_of(st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True))
_domains = st.lists(_labels, min_size=1, max_size=4).map(lambda ls: ".".join([*ls, "test"]))
addresses = st.builds(lambda lp, d: f"{lp}@{d}", _local_parts, _domains)

_words = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters=" "),
    min_size=1,
    max_size=60,
)
# Reply texts as remotes send them: words (any character, controls and non-ASCII included)
# separated by up to three spaces, from short to a few thousand octets.
reply_texts = st.lists(st.tuples(_words, st.sampled_from([" ", "  ", "   "])), max_size=80).map(
    lambda pairs: "".join(w + s for w, s in pairs).strip(" ")
)
replies = st.builds(
    lambda code, detail, text, remote: DeliveryReply(
        code, f"{code // 100}.{detail[0]}.{detail[1]}", text, remote=remote
    ),
    st.sampled_from([421, 450, 451, 452, 550, 551, 552, 553, 554]),
    st.tuples(st.integers(0, 7), st.integers(0, 99)),
    reply_texts,
    st.booleans(),
)
envids = st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=30)
notifies = st.one_of(
    st.none(),
    st.just("NEVER"),
    st.lists(st.sampled_from(["SUCCESS", "FAILURE", "DELAY"]), min_size=1, unique=True).map(
        ",".join
    ),
)


def utf8_xtext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext, as a client writes an ORCPT of type utf-8."""
    return "".join(
        c if "!" <= c <= "~" and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )


def wanted(action: str, notify: str | None) -> bool:
    """RFC 3461 §4.1 as the table above states it."""
    keywords = {"FAILURE", "DELAY"} if notify is None else set(notify.split(","))
    return {"failed": "FAILURE", "delayed": "DELAY"}[action] in keywords


def shown(value: str) -> str:
    """How a report field shows a decoded ENVID: as is if it can, else in xtext."""
    printable = all(" " <= c <= "~" for c in value) and value == value.strip(" ")
    return value if printable else xtext(value)


@st.composite
def dsn_cases(draw: st.DrawFn) -> tuple[SpoolRecord, list[DsnRecipient], str | None]:
    sender = draw(addresses)
    envid = draw(st.none() | envids)
    params: dict[str, str | None] = {}
    if envid is not None:
        params["ENVID"] = xtext(envid)
    ret = draw(st.sampled_from([None, "FULL", "HDRS", "hdrs"]))
    if ret is not None:
        params["RET"] = ret
    spooled_recipients = []
    recipients = []
    for address in draw(st.lists(addresses, min_size=1, max_size=4, unique=True)):
        reply = draw(replies)
        orcpt = draw(
            st.sampled_from([None, f"rfc822;{xtext(address)}", f"utf-8;{utf8_xtext(address)}"])
        )
        rcpt_params: dict[str, str | None] = {"NOTIFY": draw(notifies)}
        if orcpt is not None:
            rcpt_params["ORCPT"] = orcpt
        spooled_recipients.append((address, rcpt_params))
        action = "failed" if reply.permanent else draw(st.sampled_from(["failed", "delayed"]))
        recipients.append(
            DsnRecipient(
                address,
                None,  # bounce_record takes it from the spooled recipient's ORCPT
                action,
                reply,
                remote_mta=draw(st.none() | _domains.map(lambda d: f"dns; mx.{d}")),
                last_attempt=NOW - draw(st.integers(0, 86400)),
                will_retry_until=NOW + 86400 if action == "delayed" else None,
            )
        )
    message = spooled(*spooled_recipients, sender=sender, sender_params=params)
    return message, recipients, envid


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dsn_cases())
def test_every_dsn_parses_and_its_fields_round_trip(
    case: tuple[SpoolRecord, list[DsnRecipient], str | None],
) -> None:
    message, given_recipients, envid = case
    record = bounce_record(
        message, HEADERS + BODY, given_recipients, reporting_mta=HOST, now=NOW, new_id="b1"
    )
    params = {r.address: r.params for r in message.recipients}
    recipients = [r for r in given_recipients if wanted(r.action, params[r.address]["NOTIFY"])]
    if not recipients:
        assert record is None
        return
    assert record is not None
    dsn = record.headers + (record.body or b"")
    assert max(len(line) for line in lines_of(dsn)) <= 998
    parsed = parse(dsn)
    assert f"To: <{message.sender}>\r\n".encode() in dsn
    assert [p.get_content_type() for p in parts(parsed)][:2] == [
        "text/plain",
        "message/delivery-status",
    ]
    per_message, blocks = report(parsed)
    assert per_message["Reporting-MTA"] == f"dns; {HOST}"
    assert per_message.get("Original-Envelope-Id") == (None if envid is None else shown(envid))
    assert len(blocks) == len(recipients)
    text = human(parsed)
    for recipient, block in zip(recipients, blocks, strict=True):
        kind, _, address = block["Final-Recipient"].partition("; ")
        assert address.isascii()
        assert (address if kind == "rfc822" else unescape(address)) == recipient.address
        if "ORCPT" not in params[recipient.address]:
            assert "Original-Recipient" not in block
        else:
            kind, _, original = block["Original-Recipient"].partition("; ")
            assert (original if kind == "rfc822" else unescape(original)) == recipient.address
        assert block["Action"] == recipient.action
        assert block["Status"] == recipient.reply.enhanced
        diagnostic_type = "smtp" if recipient.reply.remote else "x-mailwarden"
        assert unescape(block["Diagnostic-Code"]) == f"{diagnostic_type}; {recipient.reply}"
        assert ("Remote-MTA" in block) == bool(recipient.reply.remote and recipient.remote_mta)
        assert ("Will-Retry-Until" in block) == (recipient.action == "delayed")
        printable = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", str(recipient.reply))
        assert printable in text
    returned = parts(parsed)[2].get_content_type()
    full = (message.sender_params.get("RET") or "").upper() != "HDRS" and any(
        r.action == "failed" for r in recipients
    )
    assert returned == ("message/rfc822" if full else "text/rfc822-headers")


def test_a_non_ascii_reporting_host_is_written_in_idna_and_a_bad_one_refused() -> None:
    message = spooled(("rcpt@remote.test", {}))
    dsn = build_dsn(message, HEADERS + BODY, [failed()], reporting_mta="bücher.test", now=NOW)
    parsed = parse(dsn)
    assert parsed["From"].addresses[0].addr_spec == "MAILER-DAEMON@xn--bcher-kva.test"
    assert report(parsed)[0]["Reporting-MTA"] == "dns; xn--bcher-kva.test"
    with pytest.raises(ValueError, match="reporting_mta"):
        build_dsn(message, HEADERS + BODY, [failed()], reporting_mta="a b@c", now=NOW)
    with pytest.raises(ValueError, match="at least one recipient"):
        build_dsn(message, HEADERS + BODY, [], reporting_mta=HOST, now=NOW)
