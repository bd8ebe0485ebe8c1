"""Delivery status notifications: RFC 3464 DSNs, as RFC 3461 asks for them. Pure functions.

What is built (decisions, with the rule each follows):

* **Structure.** ``multipart/report; report-type=delivery-status`` (RFC 6522) with three
  parts: a human-readable ``text/plain`` part (what happened to each recipient, with the
  remote's reply: the NDR), the machine-readable ``message/delivery-status`` part (RFC 3464
  §2.2 per-message and §2.3 per-recipient fields) and the returned content.
* **Returned content** (RFC 3461 §4.3). ``RET=HDRS`` → the header section as
  ``text/rfc822-headers``; ``RET=FULL`` or no RET → the whole message as ``message/rfc822``.
  A message larger than :data:`RETURN_SIZE_LIMIT` (128 KiB, the role of Postfix's
  ``bounce_size_limit``) comes back as its headers only, and headers alone larger than the
  limit are cut after the last whole field that fits. RET only concerns failures: a DSN that
  reports no failure (delay, success) returns the headers only, as §4.3 says. A message whose
  header section is not ASCII (RFC 6532) is returned as ``message/global`` /
  ``message/global-headers`` (RFC 6532 §3.7, RFC 6533 §6.3), 8-bit content with
  ``Content-Transfer-Encoding: 8bit``. Lines of the original longer than 998 octets are
  broken by inserting CRLF SP, as Postfix's smtp client does (``smtp_line_length_limit``),
  and its line ends are made CRLF, so every line of a DSN is at most 998 octets.
* **Envelope parameters.** ENVID and ORCPT are stored as received, xtext-encoded (RFC 3461
  §4); the report carries them decoded (§6.3: Original-Envelope-Id, Original-Recipient). A
  value whose decoded form a report field cannot carry (controls, non-ASCII) stays in its
  xtext form; an rfc822 or utf-8 address that is not printable ASCII is written with the
  ``utf-8`` address type in RFC 6533 §3's ASCII ``utf-8-addr-xtext`` form (``\\x{E9}``).
* **SMTPUTF8.** The report part is always ``message/delivery-status`` (ASCII): non-ASCII
  recipients use the ``utf-8`` address type as above, never ``message/global-delivery-status``
  (which stdlib ``email`` and many MUAs do not read as a report). The ``To:`` field of a DSN
  to a non-ASCII sender is raw UTF-8 (RFC 6532 §3.2): such a DSN needs SMTPUTF8 anyway, and
  :func:`bounce_record` sets the ``SMTPUTF8`` parameter on it.
* **Diagnostic-Code.** ``smtp; <code> <enhanced> <text>`` when the reply came from the remote
  (``reply.remote``), with ``Remote-MTA``; for a reply Mailwarden made itself (DNS, connection,
  TLS policy, expiry) the type is ``x-mailwarden`` (RFC 3464 §2.3.6 allows X- types) and there
  is no Remote-MTA, as :class:`~mailwarden.delivery.errors.DeliveryReply` documents. The
  field's text is ASCII: non-ASCII characters, controls and the backslash are written as
  ``\\x{HHHH}`` (RFC 6533's EmbeddedUnicodeChar form, so the text can be recovered); the
  human part carries the reply exactly (UTF-8, quoted-printable when needed).
* **Folding.** Every field is folded at spaces (RFC 5322 §2.2.3) into lines of 78 characters
  where the words allow and never more than 998 octets; a word longer than that is cut, which
  puts a space into the unfolded value. Runs of more than 64 spaces in report fields are
  shortened to 64, so that no folded line is only whitespace.
* **NOTIFY** (RFC 3461 §4.1), in :func:`dsn_wanted`: ``NEVER`` → none; no NOTIFY → failures
  and delays (whether delay warnings are sent at all is the retry schedule's setting, so the
  caller only asks about "delayed" when they are on); ``SUCCESS`` → delivered, relayed and
  expanded recipients get a DSN too.

:func:`build_dsn` reports every recipient it is given; :func:`bounce_record` first keeps the
recipients whose NOTIFY asks for their action and never answers the null sender (RFC 3461
§6.2, RFC 5321 §4.5.5: never bounce a bounce).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from quopri import encodestring

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.smtp.address import AddressError, parse_xtext
from mailwarden.spool.records import SpooledRecipient, SpoolRecord

RETURN_SIZE_LIMIT = 128 * 1024
"""Octets of the original a DSN returns whole; above it, the headers only."""

FAILED, DELAYED, DELIVERED, RELAYED, EXPANDED = (
    "failed",
    "delayed",
    "delivered",
    "relayed",
    "expanded",
)
ACTIONS = frozenset({FAILED, DELAYED, DELIVERED, RELAYED, EXPANDED})

# RFC 3461 §4.1: which NOTIFY keyword asks for a DSN with each RFC 3464 §2.3.3 action.
_NOTIFY_FOR_ACTION = {
    FAILED: "FAILURE",
    DELAYED: "DELAY",
    DELIVERED: "SUCCESS",
    RELAYED: "SUCCESS",
    EXPANDED: "SUCCESS",
}
# No NOTIFY: §4.1 lets the MTA behave as for FAILURE or FAILURE,DELAY; we take the latter.
_DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})

_MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF
_FOLD_AT = 78  # RFC 5322 §2.1.1 "SHOULD"
_MAX_SPACES = 64
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
_ATEXT_ID = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient as a DSN reports it (RFC 3464 §2.3)."""

    address: str  # Final-Recipient (rfc822; ...)
    original: str | None  # the ORCPT parameter as received ("rfc822;a+2Bb@c"), or None
    action: str  # failed | delayed | delivered | relayed | expanded
    reply: DeliveryReply  # Status from reply.enhanced; Diagnostic-Code from the reply
    remote_mta: str | None = None  # "dns; mx.example.net" (a bare host name is taken too)
    last_attempt: float | None = None
    will_retry_until: float | None = None  # delayed only

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"DSN action {self.action!r} is not one of {sorted(ACTIONS)}")


def dsn_wanted(action: str, notify: str | None) -> bool:
    """Whether a recipient whose RCPT carried ``NOTIFY=notify`` (None: no NOTIFY) wants a DSN
    for ``action`` (RFC 3461 §4.1). Raises ValueError for an unknown action."""
    if action not in ACTIONS:
        raise ValueError(f"DSN action {action!r} is not one of {sorted(ACTIONS)}")
    if notify is None:
        keywords = _DEFAULT_NOTIFY
    else:
        keywords = frozenset(k.strip().upper() for k in notify.split(","))
    if "NEVER" in keywords:
        return False
    return _NOTIFY_FOR_ACTION[action] in keywords


def build_dsn(
    message: SpoolRecord,
    original: bytes,
    recipients: Sequence[DsnRecipient],
    *,
    reporting_mta: str,
    now: float,
    message_id: str | None = None,
    return_limit: int = RETURN_SIZE_LIMIT,
) -> bytes:
    """The whole DSN message (RFC 5322, CRLF line ends) about ``recipients`` of ``message``,
    whose stored bytes are ``original``, from the mail system ``reporting_mta`` at ``now``.

    Every recipient given is reported (filtering by NOTIFY is :func:`bounce_record`'s).
    ``message_id`` is the DSN's Message-ID (``<...>``); by default one made of the original's
    id, ``now`` and ``reporting_mta``. Raises ValueError when ``recipients`` is empty or
    ``reporting_mta`` is not a valid host name."""
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    host = _ascii_host(reporting_mta)
    actions = {r.action for r in recipients}
    failed = FAILED in actions
    returned_headers, returned_body = _returned_content(
        message, original, full_allowed=failed, limit=return_limit
    )
    human = _human_part(message, recipients, host)
    report = _report_part(message, recipients, host)
    parts = [human, report, (returned_headers, returned_body)]
    boundary = _boundary(message.id, now, [p[1] for p in parts])
    if message_id is None:
        message_id = f"<{_id_text(message.id)}.{int(now * 1000)}.dsn@{host}>"
    top = [
        _fold("From", f'"Mail Delivery System" <MAILER-DAEMON@{host}>'),
        _fold("To", f"<{message.sender}>"),
        _fold("Subject", _subject(actions)),
        _fold("Date", _date(now)),
        _fold("Message-ID", message_id),
        # RFC 3834 §5: an automatic response; also what keeps vacation responders quiet.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
    ]
    out = bytearray("\r\n".join(top).encode() + b"\r\n\r\n")
    out += b"This is a MIME-encapsulated delivery status notification (RFC 3464).\r\n"
    for headers, body in parts:
        out += f"\r\n--{boundary}\r\n".encode()
        out += "\r\n".join(headers).encode() + b"\r\n\r\n"
        out += body
        if body and not body.endswith(b"\r\n"):
            out += b"\r\n"
    out += f"\r\n--{boundary}--\r\n".encode()
    return bytes(out)


def bounce_record(
    message: SpoolRecord,
    original: bytes,
    recipients: Sequence[DsnRecipient],
    *,
    reporting_mta: str,
    now: float,
    new_id: str,
    return_limit: int = RETURN_SIZE_LIMIT,
) -> SpoolRecord | None:
    """The DSN about ``recipients`` as a record to queue, or None when none is due.

    None for a message from the null sender (RFC 3461 §6.2, RFC 5321 §4.5.5: a bounce is
    never bounced) and when the NOTIFY of every recipient excludes its action (each
    recipient's NOTIFY and ORCPT come from the spooled recipient of the same address; an
    ``original`` left None is filled from its ORCPT). The record is from the null sender to
    the original sender, received ``now``, with ``metadata["dsn_for"]`` naming the original
    message; it asks for SMTPUTF8 and 8BITMIME when its content needs them."""
    if not message.sender:
        return None
    due = [r for r in (_with_params(message, r) for r in recipients) if r is not None]
    if not due:
        return None
    host = _ascii_host(reporting_mta)
    dsn = build_dsn(
        message,
        original,
        due,
        reporting_mta=reporting_mta,
        now=now,
        message_id=f"<{_id_text(new_id)}@{host}>",
        return_limit=return_limit,
    )
    end = dsn.index(b"\r\n\r\n") + 4
    params: dict[str, str | None] = {}
    if not message.sender.isascii():
        params["SMTPUTF8"] = None  # RFC 6531 §3.4: the recipient (our To:) is UTF-8
    if any(byte >= 0x80 for byte in dsn):
        params["BODY"] = "8BITMIME"  # RFC 6152: returned 8-bit content
    return SpoolRecord(
        id=new_id,
        server_id=message.server_id,
        received_at=now,
        sender="",
        sender_params=params,
        client_ip="",
        client_port=0,
        helo=None,
        tls=None,
        auth=None,
        metadata={"dsn_for": message.id, "dsn_action": _summary_action({r.action for r in due})},
        headers=dsn[:end],
        body=dsn[end:],
        size=len(dsn),
        recipients=(SpooledRecipient(message.sender, {}, {}),),
    )


def xtext_encode(text: str) -> str:
    """RFC 3461 §4 xtext: ``+``, ``=`` and anything outside ``!``..``~`` as ``+XX`` (octets of
    the UTF-8 encoding)."""
    out: list[str] = []
    for char in text:
        if "!" <= char <= "~" and char not in "+=":
            out.append(char)
        else:
            out.extend(f"+{octet:02X}" for octet in char.encode())
    return "".join(out)


def utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 ``utf-8-addr-xtext``: the address in ASCII, every character that is not a
    QCHAR (non-ASCII, controls, space, ``+``, ``=``, ``\\``) as ``\\x{HHHH}``."""
    return "".join(
        char if "!" <= char <= "~" and char not in "+=\\" else _embedded(char) for char in address
    )


def utf8_addr_decode(text: str) -> str:
    """The address that ``\\x{HHHH}`` escapes stand for (RFC 6533 §3 utf-8-addr-xtext or
    -unitext back to the plain address)."""
    return re.sub(r"\\x\{([0-9A-Fa-f]{1,6})\}", _unembed, text)


# ---------------------------------------------------------------- recipients and params


def _with_params(message: SpoolRecord, recipient: DsnRecipient) -> DsnRecipient | None:
    """``recipient`` if its NOTIFY asks for its action (with ORCPT filled in), else None."""
    params = _spooled_params(message, recipient.address)
    if not dsn_wanted(recipient.action, _param(params, "NOTIFY")):
        return None
    orcpt = _param(params, "ORCPT")
    if recipient.original is None and orcpt:
        return dataclasses.replace(recipient, original=orcpt)
    return recipient


def _spooled_params(message: SpoolRecord, address: str) -> dict[str, str | None]:
    for spooled in message.recipients:
        if spooled.address == address:
            return spooled.params
    folded = address.casefold()
    for spooled in message.recipients:
        if spooled.address.casefold() == folded:
            return spooled.params
    return {}


def _param(params: dict[str, str | None], key: str) -> str | None:
    for name, value in params.items():
        if name.upper() == key:
            return value
    return None


def _decoded_xtext(value: str) -> str:
    """The xtext ``value`` decoded, or as it is when it is not valid xtext. xtext encodes
    octets (RFC 3461 §4): a sequence that is UTF-8 is read as UTF-8."""
    try:
        octets = parse_xtext(value).encode("latin-1")
    except AddressError:
        return value
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        return octets.decode("latin-1")


def _field_text(value: str) -> str:
    """``value`` if a report field can carry it (printable ASCII), else its xtext form."""
    return value if _printable(value) else xtext_encode(value)


def _printable(value: str) -> bool:
    """Printable ASCII without leading or trailing spaces (a parser would strip them)."""
    return all(" " <= char <= "~" for char in value) and value == value.strip(" ")


def _address_field(addr_type: str, address: str) -> str:
    """``type; address`` for an address field, ASCII (RFC 3464 §2.1.2, RFC 6533 §3)."""
    kind = addr_type.strip().lower()
    if kind == "utf-8":
        address = utf8_addr_decode(address)
    if kind in ("rfc822", "utf-8"):
        if kind == "rfc822" and _printable(address):
            return f"rfc822; {address}"
        return f"utf-8; {utf8_addr_xtext(address)}"
    return f"{_field_text(addr_type.strip())}; {_field_text(address)}"


def _original_recipient(orcpt: str) -> str:
    addr_type, _, encoded = orcpt.partition(";")
    return _address_field(addr_type or "rfc822", _decoded_xtext(encoded.strip()))


# ---------------------------------------------------------------- the parts


def _subject(actions: set[str]) -> str:
    return {
        FAILED: "Undelivered mail: delivery to some recipients failed",
        DELAYED: "Delayed mail: delivery is still being tried",
    }.get(_summary_action(actions), "Delivery report: your message was delivered")


def _summary_action(actions: set[str]) -> str:
    """What the DSN is about as a whole: a failure outweighs a delay, a delay a success."""
    if FAILED in actions:
        return FAILED
    if DELAYED in actions:
        return DELAYED
    return DELIVERED


def _human_part(
    message: SpoolRecord, recipients: Sequence[DsnRecipient], host: str
) -> tuple[list[str], bytes]:
    summary = _summary_action({r.action for r in recipients})
    intro = {
        FAILED: "Your message could not be delivered to one or more recipients. The mail"
        f" system at {host} has given up on the recipients marked failed below.",
        DELAYED: "Your message has not been delivered yet to the recipients below. The mail"
        f" system at {host} keeps trying until the time given; you need not send it again.",
        DELIVERED: f"This is the delivery report you asked for: the mail system at {host}"
        " has passed your message on to the recipients below.",
    }[summary]
    lines = [
        intro,
        "",
        f"Message {message.id}, received {_date(message.received_at)}.",
        "The machine-readable report follows this part (RFC 3464).",
        "",
    ]
    for r in recipients:
        lines.append(_one_line(f"<{r.address}>: {r.action}"))
        mta = _remote_host(r.remote_mta)
        if r.reply.remote and mta:
            lines.append(_one_line(f"    {mta} said: {r.reply}"))
        elif mta:
            lines.append(_one_line(f"    {r.reply} ({mta})"))
        else:
            lines.append(_one_line(f"    {r.reply}"))
        if r.action == DELAYED and r.will_retry_until is not None:
            lines.append(f"    Will retry until {_date(r.will_retry_until)}.")
        lines.append("")
    text = "\n".join(lines)
    if text.isascii() and all(len(line) <= _MAX_LINE for line in lines):
        return _text_headers("7bit"), text.replace("\n", "\r\n").encode()
    body = encodestring(text.encode(), quotetabs=False).replace(b"\n", b"\r\n")
    return _text_headers("quoted-printable"), body


def _one_line(text: str) -> str:
    """``text`` without line breaks or other controls (tabs stay), for the human part."""
    return re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", " ", text)


def _text_headers(encoding: str) -> list[str]:
    return [
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Description: Notification",
        f"Content-Transfer-Encoding: {encoding}",
    ]


def _report_part(
    message: SpoolRecord, recipients: Sequence[DsnRecipient], host: str
) -> tuple[list[str], bytes]:
    # RFC 3464 §2.1: the per-message fields (§2.2), then a block per recipient (§2.3), the
    # blocks separated by a blank line; no blank line after the last one (a parser reads it
    # as one more, empty, block).
    blocks = [_per_message_fields(message, host)]
    blocks += [_per_recipient_fields(r) for r in recipients]
    body = "\r\n".join("".join(field + "\r\n" for field in block) for block in blocks)
    headers = [
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "Content-Transfer-Encoding: 7bit",
    ]
    return headers, body.encode("ascii")


def _per_message_fields(message: SpoolRecord, host: str) -> list[str]:
    fields = [_fold("Reporting-MTA", f"dns; {host}")]
    fields.append(_fold("X-Mailwarden-Queue-ID", _report_text(message.id)))
    envid = _param(message.sender_params, "ENVID")
    if envid:
        # RFC 3461 §6.3 (a): the ENVID, decoded from xtext.
        fields.append(_fold("Original-Envelope-Id", _field_text(_decoded_xtext(envid))))
    fields.append(_fold("Arrival-Date", _date(message.received_at)))
    return fields


def _per_recipient_fields(r: DsnRecipient) -> list[str]:
    fields = []
    if r.original:
        fields.append(_fold("Original-Recipient", _original_recipient(r.original)))
    fields.append(_fold("Final-Recipient", _address_field("rfc822", r.address)))
    fields.append(f"Action: {r.action}")
    fields.append(f"Status: {_status(r.reply)}")
    if r.reply.remote:
        if r.remote_mta:
            fields.append(_fold("Remote-MTA", _mta_field(r.remote_mta)))
        fields.append(_fold("Diagnostic-Code", f"smtp; {_report_text(str(r.reply))}"))
    else:
        fields.append(_fold("Diagnostic-Code", f"x-mailwarden; {_report_text(str(r.reply))}"))
    if r.last_attempt is not None:
        fields.append(_fold("Last-Attempt-Date", _date(r.last_attempt)))
    if r.action == DELAYED and r.will_retry_until is not None:
        fields.append(_fold("Will-Retry-Until", _date(r.will_retry_until)))
    return fields


def _status(reply: DeliveryReply) -> str:
    """RFC 3464 §2.3.4 status-code from the reply's RFC 3463 code, else its class X.0.0."""
    if _STATUS.fullmatch(reply.enhanced):
        return reply.enhanced
    return f"{reply.code // 100}.0.0"


def _remote_host(remote_mta: str | None) -> str:
    if not remote_mta:
        return ""
    return remote_mta.partition(";")[2].strip() if ";" in remote_mta else remote_mta.strip()


def _mta_field(remote_mta: str) -> str:
    """``mta-name-type; mta-name`` (RFC 3464 §2.2.2), ``dns`` when only a host is given."""
    if ";" in remote_mta:
        kind, _, name = remote_mta.partition(";")
        return f"{_report_text(kind.strip())}; {_report_text(name.strip())}"
    return f"dns; {_report_text(remote_mta.strip())}"


def _returned_content(
    message: SpoolRecord, original: bytes, *, full_allowed: bool, limit: int
) -> tuple[list[str], bytes]:
    """The third part: the original, or its headers (RFC 3461 §4.3, RFC 6522 §4)."""
    header_section = _header_section(original)
    ret = (_param(message.sender_params, "RET") or "FULL").upper()
    whole = full_allowed and ret != "HDRS" and len(original) <= limit
    content = original if whole else _cut_headers(header_section, limit)
    utf8_headers = not header_section.isascii()
    if whole:
        kind = "message/global" if utf8_headers else "message/rfc822"
        description = "Undelivered message"
    else:
        kind = "message/global-headers" if utf8_headers else "text/rfc822-headers"
        description = "Message headers"
    body = _safe_lines(content)
    encoding = "7bit" if body.isascii() else "8bit"
    headers = [
        f"Content-Type: {kind}",
        f"Content-Description: {description}",
        f"Content-Transfer-Encoding: {encoding}",
    ]
    return headers, body


def _header_section(original: bytes) -> bytes:
    """The header fields of ``original`` (without the empty line that ends them)."""
    if original.startswith((b"\r\n", b"\n")):
        return b""
    match = re.search(rb"(\r?\n)\r?\n", original)
    return original[: match.end(1)] if match else original


def _cut_headers(headers: bytes, limit: int) -> bytes:
    """``headers`` cut after the last whole field within ``limit`` octets."""
    if len(headers) <= limit:
        return headers
    kept = 0
    for match in re.finditer(rb"\n(?![ \t])", headers):
        if match.end() > limit:
            break
        kept = match.end()
    return headers[:kept]


def _safe_lines(content: bytes) -> bytes:
    """``content`` with CRLF line ends and no line over 998 octets: a longer line is broken
    by inserting CRLF SP (Postfix's smtp_line_length_limit), which keeps a header folded."""
    out = bytearray()
    for line in content.splitlines():
        out += line[:_MAX_LINE]
        rest = line[_MAX_LINE:]
        while rest:
            out += b"\r\n " + rest[: _MAX_LINE - 1]
            rest = rest[_MAX_LINE - 1 :]
        out += b"\r\n"
    return bytes(out)


# ---------------------------------------------------------------- field text and folding


def _report_text(text: str) -> str:
    """``text`` as a report field carries it: printable ASCII, other characters and the
    backslash as ``\\x{HHHH}`` (RFC 6533 §3 EmbeddedUnicodeChar), long space runs shortened."""
    escaped = "".join(
        char if " " <= char <= "~" and char != "\\" else _embedded(char) for char in text
    )
    return re.sub(f" {{{_MAX_SPACES + 1},}}", " " * _MAX_SPACES, escaped)


def _embedded(char: str) -> str:
    return f"\\x{{{ord(char):02X}}}"


def _unembed(match: re.Match[str]) -> str:
    point = int(match.group(1), 16)
    return chr(point) if point <= 0x10FFFF else match.group(0)


def _fold(name: str, value: str) -> str:
    """``name: value`` folded (RFC 5322 §2.2.3): broken before a space so that lines stay
    within 78 characters where the words allow and never exceed 998 octets. The fold keeps
    the space, so unfolding (removing each CRLF) gives the value back, except for a word
    longer than a line, which is cut and gets a space inserted."""
    lines: list[str] = []
    current, has_value = f"{name}:", False
    for token in re.findall(r" +[^ ]*", " " + value):  # each token: spaces, then a word
        if not token.strip(" "):  # trailing spaces: never a line of white space only
            current += token
            continue
        if has_value and _octets(current) + _octets(token) > _FOLD_AT:
            lines.append(current)
            current = ""
        while _octets(current) + _octets(token) > _MAX_LINE:  # a word longer than a line
            cut = _cut_point(token, _MAX_LINE - _octets(current))
            lines.append(current + token[:cut])
            current, token = "", " " + token[cut:]
        current += token
        has_value = True
    lines.append(current)
    return "\r\n".join(lines)


def _octets(text: str) -> int:
    return len(text.encode())


def _cut_point(token: str, room: int) -> int:
    """Where to cut ``token`` so that its head fits ``room`` octets, never inside an escape."""
    cut = room
    while _octets(token[:cut]) > room:
        cut -= 1
    escape = token.rfind("\\x{", 0, cut)
    if escape > 0 and token.find("}", escape) >= cut:
        cut = escape
    return cut


def _date(timestamp: float) -> str:
    """RFC 5322 §3.3 date-time, in UTC."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC))


def _ascii_host(name: str) -> str:
    """The reporting host in ASCII (IDNA for a non-ASCII name); ValueError if it is none."""
    name = name.strip()
    try:
        host = name if name.isascii() else name.encode("idna").decode("ascii")
    except UnicodeError as error:
        raise ValueError(f"reporting_mta {name!r} is not a valid host name: {error}") from None
    if not host or not all("!" <= char <= "~" for char in host) or any(c in host for c in "<>@"):
        raise ValueError(f"reporting_mta {name!r} is not a valid host name")
    return host


def _id_text(text: str) -> str:
    """``text`` usable in a Message-ID's id-left (RFC 5322 §3.6.4 dot-atom-text)."""
    return _ATEXT_ID.sub("-", text).strip(".") or "dsn"


def _boundary(seed: str, now: float, bodies: Sequence[bytes]) -> str:
    """A MIME boundary (RFC 2046 §5.1.1) that occurs in none of the parts."""
    base = f"dsn={re.sub(r'[^A-Za-z0-9]', '', seed)[:40]}={int(now)}"
    counter = 0
    while True:
        boundary = f"{base}={counter}"
        marker = b"--" + boundary.encode()
        if not any(marker in body for body in bodies):
            return boundary
        counter += 1
