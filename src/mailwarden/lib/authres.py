"""Authentication-Results (RFC 8601) for policy scripts: ``authres.build(…)`` / ``authres.add(…)``
write the field from the SPF, DKIM, DMARC and ARC results; ``authres.remove_forged(…)`` drops
fields that claim our authserv-id before we add ours (RFC 8601 §5).

The result clauses are the ``authres`` package's (the same one dkimpy's ARC sealer parses, so
what we write is what ARC-Authentication-Results copies); the field is folded one clause per
line so that it stays within RFC 5322 §2.1.1's line length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import authres as authres_pkg
import authres.arc
import authres.dmarc
from authres.core import AuthenticationResult

from mailwarden.policy.context import Message
from mailwarden.policy.headers import Headers

if TYPE_CHECKING:
    from mailwarden.lib.arc import ArcResult
    from mailwarden.lib.dkim import DkimResult
    from mailwarden.lib.dmarc import DmarcResult
    from mailwarden.lib.spf import SpfResult

__all__ = [
    "FIELD",
    "AuthservIdError",
    "add",
    "authserv_id",
    "build",
    "delete_claiming",
    "parse",
    "remove_forged",
]

FIELD = "Authentication-Results"

_CONTEXT = authres_pkg.FeatureContext(authres.arc, authres.dmarc)
# RFC 8601 §2.2: authserv-id is a "value" (RFC 2045 token or quoted-string); in practice a
# host name. We write and compare dot-atoms, what RFC 8601 §2.5 recommends.
_AUTHSERV_ID = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_COMMENT = re.compile(r"\s*\((?:[^()\\]|\\.)*\)")


class AuthservIdError(ValueError):
    """The authserv-id given is not one an Authentication-Results field can carry."""


def _check_id(text: str) -> str:
    if not _AUTHSERV_ID.fullmatch(text) or text.startswith(".") or text.endswith("."):
        raise AuthservIdError(
            f"authserv-id {text!r}: use this host's name, e.g. mx.example.org (RFC 8601 §2.5)"
        )
    return text.lower()


def _comment(text: str) -> str:
    """Text safe inside an RFC 5322 comment: printable ASCII, no parentheses or backslash."""
    return re.sub(r"[^\x20-\x7e]|[()\\]", "?", text).strip()


def _spf(result: SpfResult) -> AuthenticationResult:
    # RFC 8601 §2.7.2: smtp.mailfrom for the MAIL FROM identity, smtp.helo for HELO (the
    # null reverse-path, RFC 7208 §2.4); the domain alone is allowed (§2.7.2, RFC 7208 §9.1).
    clause = authres_pkg.SPFAuthenticationResult(result=result.result)
    if result.identity == "helo":
        clause.smtp_helo = result.domain or None
    else:
        clause.smtp_mailfrom = result.domain or None
    return clause


def _dkim(results: Sequence[DkimResult]) -> list[AuthenticationResult]:
    if not results:
        return [authres_pkg.AuthenticationResult("dkim", result="none")]
    clauses: list[AuthenticationResult] = []
    for result in results:
        clause = authres_pkg.DKIMAuthenticationResult(
            result=result.result,
            reason=result.reason or None,
            header_d=result.domain or None,
            header_s=result.selector or None,
            header_a=result.algorithm or None,
        )
        clauses.append(clause)
    return clauses


def _dmarc(result: DmarcResult) -> AuthenticationResult:
    details = [f"p={result.policy}" if result.policy else "", f"dis={result.disposition}"]
    comment = " ".join(part for part in details if part)
    clause = authres.dmarc.DMARCAuthenticationResult(
        result=result.result,
        result_comment=_comment(comment) or None,
        reason=result.reason or None if result.result != "pass" else None,
        header_from=result.from_domain or None,
    )
    return clause


def _arc(result: ArcResult) -> AuthenticationResult:
    clause = authres.arc.ARCAuthenticationResult(
        result=result.result,
        result_comment=f"i={result.instances}" if result.instances else None,
        reason=result.reason if result.result == "fail" else None,
    )
    return clause


def _clauses(
    spf: SpfResult | None,
    dkim: Sequence[DkimResult] | None,
    dmarc: DmarcResult | None,
    arc: ArcResult | None,
) -> list[AuthenticationResult]:
    clauses: list[AuthenticationResult] = []
    if spf is not None:
        clauses.append(_spf(spf))
    if dkim is not None:
        clauses += _dkim(dkim)
    if dmarc is not None:
        clauses.append(_dmarc(dmarc))
    if arc is not None:
        clauses.append(_arc(arc))
    return clauses


def build(
    authserv_id: str,
    *,
    spf: SpfResult | None = None,
    dkim: Sequence[DkimResult] | None = None,
    dmarc: DmarcResult | None = None,
    arc: ArcResult | None = None,
) -> str:
    """The Authentication-Results value (without the field name) for these results, e.g.
    ``mx.example.org; spf=pass smtp.mailfrom=example.org; dkim=pass header.d=example.org …``.

    A result left out (None) is not reported; ``dkim=[]`` (no signature) is ``dkim=none``;
    nothing at all is ``mx.example.org; none`` (RFC 8601 §2.2). Raises AuthservIdError for an
    authserv-id that is not a host name-like token."""
    header = authres_pkg.AuthenticationResultsHeader(
        authserv_id=_check_id(authserv_id), results=_clauses(spf, dkim, dmarc, arc)
    )
    return str(header.header_value())


def _fold(value: str) -> bytes:
    """One clause per line (RFC 5322 §2.2.3 folding at the ``;`` separators): the space after
    each ``;`` starts the next line, so that unfolding gives the value back unchanged."""
    return (f"{FIELD}: " + value.replace("; ", ";\r\n ") + "\r\n").encode("ascii", "replace")


def add(
    message: Message,
    authserv_id: str,
    *,
    spf: SpfResult | None = None,
    dkim: Sequence[DkimResult] | None = None,
    dmarc: DmarcResult | None = None,
    arc: ArcResult | None = None,
    remove_forged_fields: bool = True,
) -> str:
    """Add our Authentication-Results field at the top of ``message.headers`` (RFC 8601 §5:
    above the fields it reports on) and return its value (as :func:`build`).

    First, unless ``remove_forged_fields=False``, every Authentication-Results field already
    claiming ``authserv_id`` is deleted (:func:`remove_forged`)."""
    value = build(authserv_id, spf=spf, dkim=dkim, dmarc=dmarc, arc=arc)
    if remove_forged_fields:
        remove_forged(message, authserv_id)
    message.headers.add_folded(_fold(value))
    return value


def authserv_id(value: str) -> str | None:
    """The authserv-id an Authentication-Results value claims (lower-case), also for a
    field that is otherwise malformed; None when there is none to read."""
    text = _COMMENT.sub(" ", value).strip()
    match = re.match(r'"((?:[^"\\]|\\.)*)"|([^\s;()]+)', text)
    if match is None:
        return None
    found = match.group(1) if match.group(1) is not None else match.group(2)
    return found.lower() or None


def remove_forged(message: Message, authserv_ids: str | Iterable[str]) -> int:
    """Delete the Authentication-Results fields claiming one of ``authserv_ids`` (ours, and
    any other name of our ADMD): a sender can write such a field to fake a result our own
    filters or users would trust (RFC 8601 §5, §7.1). Returns how many were removed.

    Fields of other authserv-ids are kept: they are the other ADMDs' and are simply not
    trusted (RFC 8601 §5)."""
    return delete_claiming(message.headers, authserv_ids)


def delete_claiming(headers: Headers, authserv_ids: str | Iterable[str]) -> int:
    """:func:`remove_forged` on a header section (e.g. a copy of one)."""
    names = [authserv_ids] if isinstance(authserv_ids, str) else list(authserv_ids)
    ours = {name.lower() for name in names}
    return headers.delete_if(FIELD, lambda value: authserv_id(value) in ours)


def parse(value: str) -> authres_pkg.AuthenticationResultsHeader:
    """Parse an Authentication-Results value (unfolded) with the authres package: ``.authserv_id``
    and ``.results`` (each with ``.method``, ``.result``, ``.properties``). Raises ValueError
    for a value that is not RFC 8601 syntax."""
    try:
        return _CONTEXT.parse_value(value)
    except authres_pkg.AuthResError as error:
        raise ValueError(f"not an Authentication-Results value: {error}") from None
