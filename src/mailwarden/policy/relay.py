"""The built-in anti-relay rule, which no script can switch off (docs/policy.md, "The built-in
relay rule"): a pure function of the facts the session keeps for itself, so it is tested alone
and nothing a script does to its ``Connection`` object can change what the rule sees."""

from __future__ import annotations

from collections.abc import Container

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply

# Old sender-specified routing in a local part (RFC 5321 §3.6.1 and Appendix C: "%" hack, bang
# paths, an "@" hidden in a quoted local part): refused rather than guessed at.
_ROUTING_CHARACTERS = "%!@"


def relay_refusal(
    trusted: bool, authenticated: bool, local_domains: Container[str], address: str
) -> Reply | None:
    """The refusal for relaying to ``address`` (a mailbox as parsed by
    :mod:`mailwarden.smtp.address`, a source route already stripped), or None if allowed.

    Untrusted, unauthenticated clients may only send to ``local_domains`` (lower-case, without a
    trailing dot, as the listener snapshot holds them) and to a bare ``postmaster``.
    """
    if trusted or authenticated:
        return None
    local, at, domain = address.rpartition("@")
    if not at:
        return None  # <postmaster>, which RFC 5321 §4.5.1 requires us to accept
    if domain.lower().rstrip(".") not in local_domains:
        return replies.RELAY_DENIED
    if local.startswith('"') or any(char in local for char in _ROUTING_CHARACTERS):
        return replies.ROUTING_REFUSED
    return None
