"""Who a verified TLS client certificate names, for AUTH EXTERNAL (RFC 4422 appendix A).

A small accessor over ``conn.tls``, so that EXTERNAL does not depend on how the TLS side spells
each fact. It expects ``conn.tls.peer_certificate`` (None when the client sent none) with
``verified`` (True only when the chain verified against the listener's client CA) and
``subject``, whose common name is read from, in this order: a ``common_name`` attribute, a
``"CN"`` / ``"commonName"`` key of a mapping, or the ``CN=`` part of an RFC 4514 string.
A connection without those facts (no TLS, no certificate, an unverified one, no CN) names nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def verified_client_name(conn: Any) -> str | None:
    """The common name of the client's verified certificate, or None."""
    tls = getattr(conn, "tls", None)
    certificate = getattr(tls, "peer_certificate", None)
    if certificate is None or getattr(certificate, "verified", False) is not True:
        return None
    name = _common_name(getattr(certificate, "subject", None))
    return name or None


def _common_name(subject: object) -> str | None:
    value = getattr(subject, "common_name", None)
    if isinstance(value, str):
        return value
    if isinstance(subject, Mapping):
        for key in ("CN", "commonName"):
            found = subject.get(key)
            if isinstance(found, str):
                return found
        return None
    if isinstance(subject, str):
        # RFC 4514: "CN=alice,O=Example"; escaped commas inside a value are not split on.
        for part in _split_rdns(subject):
            key, _, text = part.partition("=")
            if key.strip().upper() in ("CN", "COMMONNAME"):
                return text.strip()
    return None


def _split_rdns(text: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",+":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts
