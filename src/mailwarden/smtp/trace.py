"""The ``Received:`` trace field the server puts at the top of every message it accepts
(RFC 5321 §4.4), with the protocol names of RFC 3848. Pure but for the clock."""

from __future__ import annotations

import time
from email.utils import formatdate

from mailwarden.policy.context import Connection
from mailwarden.smtp.replies import quote_for_reply


def with_protocol(conn: Connection, utf8: bool) -> str:
    """The ``with`` clause's protocol name (RFC 3848 §2; UTF8SMTP from RFC 6531 §3.7.3)."""
    if not conn.esmtp:
        return "SMTP"
    protocol = "UTF8SMTP" if utf8 else "ESMTP"
    if conn.tls:
        protocol += "S"
    if conn.auth:
        protocol += "A"
    return protocol


def received_header(
    conn: Connection,
    message_id: str,
    recipient: str | None,
    hostname: str,
    utf8: bool,
    date: str | None = None,
) -> bytes:
    """The whole field, CRLF-terminated. ``recipient`` is the transaction's only recipient, or
    None when it has several: the ``for`` clause names one at most (RFC 5321 §4.4 warns that
    listing several discloses Bcc recipients); ``date`` defaults to now."""
    helo = quote_for_reply(conn.helo_name or "unknown", 255)
    ip = conn.remote_ip
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [f"Received: from {helo} ([{literal}])", f"\tby {hostname} (Mailwarden)"]
    tls = conn.tls
    if tls:
        lines.append(f"\t(using {tls.protocol} with cipher {tls.cipher} ({tls.bits} bits))")
    lines.append(f"\twith {with_protocol(conn, utf8)} id {message_id}")
    if recipient is not None:
        lines.append(f"\tfor <{recipient}>")
    lines[-1] += f"; {date if date is not None else received_date()}"
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "replace")


_date_cache: tuple[int, str] = (0, "")


def received_date() -> str:
    """RFC 5322 date for trace fields, formatted once per second (it shows in the profile)."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, localtime=True))
    return _date_cache[1]
