"""Spam filtering with rspamd: ``result = await rspamd.check(message, conn=conn, tx=tx)``.

rspamd's normal worker takes the message as the body of ``POST /checkv2`` and what the MTA
knows of the envelope as request headers (rspamd's protocol documentation: ``IP``, ``Helo``,
``From``, ``Rcpt`` once per recipient, ``Queue-Id``, ``User`` for an authenticated client,
``Hostname`` the client's forward-confirmed reverse name), and answers a JSON object: ``score``,
``required_score``, the ``action`` it recommends (``no action``, ``greylist``, ``add header``,
``rewrite subject``, ``soft reject``, ``reject``) and the ``symbols`` that matched.

Over :mod:`mailwarden.lib.http` (httpx, one pooled client per worker); its failures become a
:class:`~mailwarden.lib.scanners.ScannerError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mailwarden.lib import http
from mailwarden.lib.scanners import (
    ScannerError,
    ScannerProtocolError,
    ScannerRefused,
    ScannerTimeout,
    ScannerUnavailable,
    check_message,
    check_timeout,
    message_bytes,
    settings,
)
from mailwarden.metrics.instruments import observe_scanner
from mailwarden.policy.context import Connection, Message, Transaction

__all__ = ["ACTIONS", "RspamdResult", "RspamdSymbol", "ScannerError", "check"]

SCANNER = "rspamd"
MAX_REPLY = 4 * 1024 * 1024  # symbols and their options; a larger answer is not rspamd's
# rspamd's actions, mildest first (rspamd's actions.conf).
ACTIONS = (
    "no action",
    "greylist",
    "add header",
    "rewrite subject",
    "soft reject",
    "reject",
)


@dataclass(frozen=True, slots=True)
class RspamdSymbol:
    """One rule that matched: its ``name``, the ``score`` it added, rspamd's ``options`` (what
    it matched, e.g. a domain) and its ``description`` when rspamd has one."""

    name: str
    score: float
    options: tuple[str, ...] = ()
    description: str | None = None


@dataclass(frozen=True, slots=True)
class RspamdResult:
    """rspamd's verdict: ``score``, ``required_score`` (the reject threshold), ``action`` (one
    of :data:`ACTIONS`, or a custom action's name), ``symbols`` by name, ``messages`` (e.g.
    ``smtp_message``, a reply text rspamd suggests) and ``skipped`` (rspamd did not scan the
    message, e.g. by its settings; it can still carry an action, as for GTUBE)."""

    score: float
    required_score: float
    action: str
    symbols: Mapping[str, RspamdSymbol] = field(default_factory=dict)
    messages: Mapping[str, str] = field(default_factory=dict)
    skipped: bool = False

    @property
    def is_spam(self) -> bool:
        """rspamd asks to refuse the message: action ``reject``."""
        return self.action == "reject"


async def check(
    message: Message | bytes,
    *,
    conn: Connection | None = None,
    tx: Transaction | None = None,
    ip: str | None = None,
    helo: str | None = None,
    sender: str | None = None,
    recipients: Iterable[str] | None = None,
    queue_id: str | None = None,
    user: str | None = None,
    hostname: str | None = None,
    url: str | None = None,
    timeout: float | None = None,
) -> RspamdResult:
    """Post the message as stored (headers and body as edited so far) to rspamd's
    ``/checkv2`` and return its verdict.

    The envelope is taken from ``conn`` (client IP, HELO name, AUTH user) and ``tx`` (MAIL FROM,
    the recipients, the transaction id as Queue-Id) when given; ``ip``, ``helo``, ``sender``,
    ``recipients``, ``queue_id``, ``user`` and ``hostname`` set or override each one (no DNS
    lookup is made here: without ``hostname`` rspamd takes the client for one without a
    reverse name). ``url``
    is the normal worker's base URL (default ``[library] rspamd_url``), ``timeout`` bounds the
    whole call in seconds (default ``[library] scanner_timeout``). Raises a
    :class:`ScannerError` when there is no verdict: rspamd down (ScannerUnavailable), too slow
    (ScannerTimeout), an error status (ScannerRefused), an answer that is not rspamd's
    (ScannerProtocolError)."""
    check_message(message)
    base = (url or settings().rspamd_url).rstrip("/")
    seconds = check_timeout(timeout)
    headers = envelope_headers(conn, tx, ip, helo, sender, recipients, queue_id, user, hostname)
    endpoint = f"{base}/checkv2"
    started = time.perf_counter()
    try:
        return await _post(message, endpoint, headers, seconds)
    finally:
        # Every call, verdict or ScannerError: a slow or failing rspamd shows on /metrics.
        observe_scanner(SCANNER, time.perf_counter() - started)


async def _post(
    message: Message | bytes, endpoint: str, headers: list[tuple[str, str]], seconds: float
) -> RspamdResult:
    try:
        response = await http.post(
            endpoint,
            content=message_bytes(message),
            headers=headers,
            timeout=seconds,
            max_bytes=MAX_REPLY,
            check=False,
        )
    except http.HttpError as error:
        raise _scanner_error(error, endpoint, seconds) from None
    if response.status != 200:
        reason = f"status {response.status}: {_error_text(response)}"
        raise ScannerRefused(SCANNER, endpoint, reason)
    try:
        answer = response.json()
    except http.HttpError:
        raise ScannerProtocolError(SCANNER, endpoint, "answer is not JSON") from None
    return parse_answer(answer, endpoint)


def envelope_headers(
    conn: Connection | None,
    tx: Transaction | None,
    ip: str | None,
    helo: str | None,
    sender: str | None,
    recipients: Iterable[str] | None,
    queue_id: str | None,
    user: str | None,
    hostname: str | None,
) -> list[tuple[str, str]]:
    """The request headers rspamd reads the envelope from; a list, since Rcpt repeats."""
    if conn is not None:
        ip = conn.remote_ip if ip is None else ip
        helo = conn.helo_name if helo is None else helo
        if user is None and conn.auth is not None:
            user = conn.auth.username
    if tx is not None:
        if sender is None and tx.sender is not None:
            sender = tx.sender.address
        if recipients is None:
            recipients = [recipient.address for recipient in tx.recipients]
        queue_id = tx.id if queue_id is None else queue_id
    headers: list[tuple[str, str]] = []
    for name, value in (("IP", ip), ("Helo", helo), ("Hostname", hostname)):
        if value is not None:
            headers.append((name, value))
    if sender is not None:
        headers.append(("From", sender or "<>"))  # the null reverse-path, RFC 5321 §4.5.5
    headers.extend(("Rcpt", recipient) for recipient in recipients or ())
    for name, value in (("Queue-Id", queue_id), ("User", user)):
        if value is not None:
            headers.append((name, value))
    for name, value in headers:
        if not value or any(c in value for c in "\r\n\0"):
            raise ValueError(f"expected {name} on one line, got {value!r}")
    return headers


def _scanner_error(error: http.HttpError, endpoint: str, seconds: float) -> ScannerError:
    if error.kind == "timeout":
        return ScannerTimeout(SCANNER, endpoint, f"no verdict within {seconds:g}s")
    if error.kind == "connect":
        return ScannerUnavailable(SCANNER, endpoint, f"cannot connect: {error.reason}")
    if error.kind == "transport":
        return ScannerProtocolError(SCANNER, endpoint, f"broken answer: {error.reason}")
    return ScannerRefused(SCANNER, endpoint, error.reason)


def _error_text(response: http.Response) -> str:
    # rspamd answers an error as {"error": "...", "error_domain": "..."}.
    try:
        answer = response.json()
    except http.HttpError:
        return response.text[:200] or "no explanation"
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        return answer["error"]
    return response.text[:200]


def _number(answer: Mapping[str, Any], key: str, endpoint: str) -> float:
    value = answer.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScannerProtocolError(SCANNER, endpoint, f"answer without a numeric {key!r}")
    return float(value)


def parse_answer(answer: object, endpoint: str) -> RspamdResult:
    """Read rspamd's JSON answer to /checkv2."""
    if not isinstance(answer, dict):
        raise ScannerProtocolError(SCANNER, endpoint, "answer is not a JSON object")
    score = _number(answer, "score", endpoint)
    required = _number(answer, "required_score", endpoint)
    action = answer.get("action")
    if not isinstance(action, str) or not action:
        raise ScannerProtocolError(SCANNER, endpoint, "answer without an action")
    raw_symbols = answer.get("symbols", {})
    raw_messages = answer.get("messages", {})
    if not isinstance(raw_symbols, dict) or not isinstance(raw_messages, dict):
        raise ScannerProtocolError(SCANNER, endpoint, "symbols or messages not an object")
    symbols = {
        str(name): _symbol(str(name), entry, endpoint) for name, entry in raw_symbols.items()
    }
    messages = {str(key): str(value) for key, value in raw_messages.items()}
    return RspamdResult(
        score,
        required,
        action,
        MappingProxyType(symbols),
        MappingProxyType(messages),
        answer.get("is_skipped") is True,
    )


def _symbol(name: str, entry: object, endpoint: str) -> RspamdSymbol:
    if not isinstance(entry, dict):
        raise ScannerProtocolError(SCANNER, endpoint, f"symbol {name!r} is not an object")
    options = entry.get("options", [])
    description = entry.get("description")
    if not isinstance(options, list):
        raise ScannerProtocolError(SCANNER, endpoint, f"options of {name!r} not a list")
    return RspamdSymbol(
        name,
        _number(entry, "score", endpoint),
        tuple(str(option) for option in options),
        description if isinstance(description, str) else None,
    )
