"""Envelope address and parameter grammar (RFC 5321 §4.1.2, RFC 6531 §3.3 for SMTPUTF8).

Pure functions: text in, parsed value out, or :class:`AddressError` carrying the reply to send.
Non-ASCII text is only valid when the client asked for SMTPUTF8 on this transaction; the caller
says so with ``utf8=True``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply


class AddressError(ValueError):
    """The peer sent an address or parameter that breaks the grammar; ``reply`` says why."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Limits:
    """RFC 5321 §4.5.3.1 size limits, each configurable per listener."""

    local_part: int = 64
    domain: int = 255
    path: int = 256


# RFC 5322 atext, as used by RFC 5321 Atom.
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-"
_DOT_STRING = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_DOT_STRING_UTF8 = re.compile(rf"(?:[{_ATEXT}]|[^\x00-\x7f])+(?:\.(?:[{_ATEXT}]|[^\x00-\x7f])+)*")
# qtextSMTP is %d32-33 / %d35-91 / %d93-126; quoted-pairSMTP is backslash + %d32-126.
_QUOTED = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"')
_QUOTED_UTF8 = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|[^\x00-\x7f]|\\[\x20-\x7e])*"')
_SUBDOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
_LETDIG_UTF8 = r"(?:[A-Za-z0-9]|[^\x00-\x7f])"
_SUBDOMAIN_UTF8 = re.compile(rf"{_LETDIG_UTF8}(?:(?:[A-Za-z0-9-]|[^\x00-\x7f])*{_LETDIG_UTF8})?")
_GENERAL_LITERAL = re.compile(r"[A-Za-z0-9-]*[A-Za-z0-9]:[\x21-\x5a\x5e-\x7e]+")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
# esmtp-value: any CHAR excluding "=", SP and controls; with SMTPUTF8 also UTF-8 (RFC 6531 §3.3).
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")
_VALUE_UTF8 = re.compile(r"(?:[\x21-\x3c\x3e-\x7e]|[^\x00-\x7f])+")


@dataclass(frozen=True, slots=True)
class Address:
    """A mailbox (``local@domain``) or the null reverse-path (``<>``), as the client sent it."""

    local_part: str
    domain: str

    @property
    def is_null(self) -> bool:
        return not self.local_part and not self.domain

    @property
    def is_postmaster(self) -> bool:
        return self.local_part.lower() == "postmaster" and not self.domain

    def unquoted_local_part(self) -> str:
        """The local part with RFC 5321 quoting removed (``"a\\"b"`` becomes ``a"b``)."""
        lp = self.local_part
        if len(lp) >= 2 and lp[0] == '"' and lp[-1] == '"':
            return re.sub(r"\\(.)", r"\1", lp[1:-1])
        return lp

    def __str__(self) -> str:
        if self.is_null:
            return ""
        if not self.domain:
            return self.local_part
        return f"{self.local_part}@{self.domain}"


NULL_ADDRESS = Address("", "")


@dataclass(frozen=True, slots=True)
class Path:
    """A parsed MAIL or RCPT argument: the address and its ESMTP parameters (keys upper-cased)."""

    address: Address
    parameters: dict[str, str | None] = field(default_factory=dict)
    source_route: str = ""


def _is_domain(text: str, utf8: bool) -> bool:
    pattern = _SUBDOMAIN_UTF8 if utf8 else _SUBDOMAIN
    labels = text.split(".")
    return all(pattern.fullmatch(label) and len(label.encode()) <= 63 for label in labels)


def is_address_literal(text: str) -> bool:
    """RFC 5321 §4.1.3: ``[IPv4]``, ``[IPv6:addr]`` or a general ``[tag:content]`` literal."""
    if len(text) < 3 or text[0] != "[" or text[-1] != "]":
        return False
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        if "%" in inner:
            # ipaddress accepts a zone id ("fe80::1%eth0"); RFC 5321 IPv6-addr has none.
            return False
        try:
            ipaddress.IPv6Address(inner[5:])
        except ValueError:
            return False
        return True
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3}){3}", inner):
        try:
            ipaddress.IPv4Address(inner)
        except ValueError:
            return False
        return True
    return bool(_GENERAL_LITERAL.fullmatch(inner)) and inner[:5].lower() != "ipv6:"


def is_valid_domain(text: str, utf8: bool = False) -> bool:
    """True for a syntactically valid domain name (RFC 5321 Domain)."""
    return bool(text) and len(text) <= 255 and _is_domain(text, utf8)


def is_valid_helo_argument(text: str) -> bool:
    """HELO/EHLO argument: a Domain or an address literal (RFC 5321 §4.1.1.1)."""
    return is_address_literal(text) or is_valid_domain(text.rstrip("."), utf8=False)


def parse_mailbox(text: str, *, utf8: bool = False, limits: Limits = Limits()) -> Address:
    """Parse ``local-part@domain``; raises AddressError naming the broken part."""
    at = _local_part_end(text)
    if at <= 0:
        raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Address has no domain"))
    local, domain = text[:at], text[at + 1 :]
    if local.startswith('"'):
        pattern = _QUOTED_UTF8 if utf8 else _QUOTED
    else:
        pattern = _DOT_STRING_UTF8 if utf8 else _DOT_STRING
    if not pattern.fullmatch(local):
        raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid local part"))
    if len(local.encode()) > limits.local_part:
        raise AddressError(replies.LOCAL_PART_TOO_LONG)
    if len(domain.encode()) > limits.domain:
        raise AddressError(replies.DOMAIN_TOO_LONG)
    if not (is_address_literal(domain) or _is_domain(domain, utf8)):
        raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid domain"))
    return Address(local, domain)


def _local_part_end(text: str) -> int:
    """Index of the ``@`` that ends the local part, or -1.

    The local part is a dot-string (no ``@``) or a quoted string (which may hold one), and a
    general address literal may hold ``@`` too (RFC 5321 §4.1.3 dcontent), so neither the
    first nor the last ``@`` of the text will do.
    """
    if not text.startswith('"'):
        return text.find("@")
    escaped = False
    for index in range(1, len(text)):
        char = text[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            return index + 1 if text[index + 1 : index + 2] == "@" else -1
    return -1


def mail_parameters(argument: str) -> dict[str, str | None]:
    """The parameters of a MAIL/RCPT argument, or ``{}`` when the argument does not parse.

    Used to learn whether SMTPUTF8 was asked for before the address itself is parsed.
    """
    try:
        _, param_text = _split_path(argument.lstrip(" "))
        return parse_parameters(param_text, utf8=True)
    except AddressError:
        return {}


def _split_path(argument: str) -> tuple[str, str]:
    """Split ``<path> params`` into the path text (without brackets) and the parameter text.

    The closing bracket is the first ``>`` outside a quoted local part and outside an
    address literal (RFC 5321 §4.1.3: a general literal's dcontent may hold ``>``).
    """
    if not argument.startswith("<"):
        raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Address must be in <>"))
    in_quotes = False
    in_literal = False
    escaped = False
    for index in range(1, len(argument)):
        char = argument[index]
        if escaped:
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"' and not in_literal:
            in_quotes = not in_quotes
        elif char == "[" and not in_quotes:
            in_literal = True
        elif char == "]" and not in_quotes:
            in_literal = False
        elif char == ">" and not in_quotes and not in_literal:
            rest = argument[index + 1 :]
            if rest and not rest.startswith(" "):
                raise AddressError(
                    replies.SYNTAX_ERROR_PARAMETERS.with_text("Expected space after address")
                )
            return argument[1:index], rest.strip(" ")
    raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Unterminated address"))


def parse_parameters(text: str, *, utf8: bool = False) -> dict[str, str | None]:
    """Parse ``KEY[=VALUE] ...`` (RFC 5321 §4.1.2 Mail-parameters); keywords upper-cased."""
    params: dict[str, str | None] = {}
    if not text:
        return params
    value_pattern = _VALUE_UTF8 if utf8 else _VALUE
    for item in text.split(" "):
        if not item:
            continue  # tolerate runs of spaces, as deployed clients send them
        key, sep, value = item.partition("=")
        if not _KEYWORD.fullmatch(key):
            raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid parameter"))
        if sep and not value_pattern.fullmatch(value):
            raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid parameter value"))
        upper = key.upper()
        if upper in params:
            raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Duplicate parameter"))
        params[upper] = value if sep else None
    return params


def parse_path(
    argument: str,
    *,
    utf8: bool = False,
    allow_null: bool,
    allow_postmaster: bool = False,
    limits: Limits = Limits(),
) -> Path:
    """Parse the text after ``MAIL FROM:`` or ``RCPT TO:``.

    A source route (``<@a,@b:user@c>``) is accepted and ignored as RFC 5321 §4.1.2 and
    Appendix C require: only the final mailbox counts, so a route never opens a relay path.
    """
    path_text, param_text = _split_path(argument.lstrip(" "))
    parameters = parse_parameters(param_text, utf8=utf8)
    if len(path_text.encode()) + 2 > limits.path:
        raise AddressError(replies.PATH_TOO_LONG)
    if path_text == "":
        if not allow_null:
            raise AddressError(
                replies.SYNTAX_ERROR_PARAMETERS.with_text("Null address not allowed")
            )
        return Path(NULL_ADDRESS, parameters)
    route = ""
    if path_text.startswith("@"):
        route, colon, path_text = path_text.partition(":")
        if not colon or not all(
            hop.startswith("@") and _is_domain(hop[1:], utf8) for hop in route.split(",")
        ):
            raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid source route"))
    if allow_postmaster and not route and path_text.lower() == "postmaster":
        return Path(Address(path_text, ""), parameters)
    return Path(parse_mailbox(path_text, utf8=utf8, limits=limits), parameters, route)


def parse_xtext(text: str) -> str:
    """Decode RFC 3461 §4 xtext (``+XX`` hex escapes), as used by ORCPT and ENVID."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "+":
            hexdigits = text[index + 1 : index + 3]
            if len(hexdigits) != 2 or not re.fullmatch(r"[0-9A-F]{2}", hexdigits):
                raise AddressError(
                    replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid xtext encoding")
                )
            out.append(chr(int(hexdigits, 16)))
            index += 3
            continue
        if not ("\x21" <= char <= "\x7e") or char == "=":
            raise AddressError(replies.SYNTAX_ERROR_PARAMETERS.with_text("Invalid xtext"))
        out.append(char)
        index += 1
    return "".join(out)
