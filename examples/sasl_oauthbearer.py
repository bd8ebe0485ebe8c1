"""AUTH OAUTHBEARER (RFC 7628): an OAuth 2.0 bearer token (RFC 6750) instead of a password,
checked by this script, with the RFC's JSON error challenge.

The client's message (RFC 7628 §3.1) is a GS2 header and key/value pairs separated by ``\\x01``::

    n,a=alice@example.org,\\x01host=mx.example.org\\x01port=587\\x01auth=Bearer TOKEN\\x01\\x01

A token this script knows, for the user it names (and an ``a=`` authorization identity empty
or that user) gives ``235 2.7.0``. Any other token gets the error challenge of §3.2.2, a
``334`` with base64 of ``{"status":"invalid_token","scope":...,"openid-configuration":...}``;
the client answers with a lone ``\\x01`` and gets ``535 5.7.8`` (§3.2.3). A message that does
not parse is ``535`` at once. Channel binding is not offered (``p=`` fails; ``n`` and ``y`` are
accepted, RFC 5801 §5). Offered after TLS only (the default): a bearer token is a secret.

``check_token`` is where a real deployment asks its authorization server, for example token
introspection (RFC 7662) with ``mailwarden.lib.http``; here it reads the ``TOKENS`` dict.
"""

from __future__ import annotations

import hmac
import json

from mailwarden.auth.custom import Challenge, Failure, Success
from mailwarden.policy.context import Connection

# bearer token -> the user it was issued to. Replace with your authorization server.
TOKENS: dict[str, str] = {
    "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==": "alice@example.org",
}
SCOPE = "mail"
OPENID_CONFIGURATION = "https://auth.example.org/.well-known/openid-configuration"

_ERROR = json.dumps(
    {"status": "invalid_token", "scope": SCOPE, "openid-configuration": OPENID_CONFIGURATION},
    separators=(",", ":"),
).encode()


async def check_token(token: str) -> str | None:
    """The user ``token`` was issued to, or None when it is unknown, expired or revoked."""
    for known, user in TOKENS.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return user
    return None


def parse_message(message: bytes) -> tuple[str, str] | None:
    """``(authzid, token)`` from the client's first message (RFC 7628 §3.1), or None."""
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return None
    header, sep, rest = text.partition("\x01")
    flag, _, authzid_part = header.partition(",")
    if not sep or flag not in ("n", "y") or not authzid_part.endswith(","):
        return None
    authzid_part = authzid_part[:-1]
    if authzid_part and not authzid_part.startswith("a="):
        return None
    # RFC 5801 §4: "=2C" and "=3D" stand for "," and "=" in the authzid.
    authzid = authzid_part[2:].replace("=2C", ",").replace("=3D", "=")
    if not rest.endswith("\x01\x01"):
        return None
    pairs = dict(item.partition("=")[::2] for item in rest[:-2].split("\x01") if item)
    scheme, _, token = pairs.get("auth", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return authzid, token


class OAuthBearer:
    """One OAUTHBEARER exchange: the client's message, and after a refusal its ``\\x01``."""

    def __init__(self) -> None:
        self.refused = False

    async def step(self, conn: Connection, response: bytes | None) -> Challenge | Success | Failure:
        if self.refused:
            return Failure()  # the client's \x01 after the error challenge (§3.2.3)
        if response is None:
            return Challenge(b"")  # no initial response: ask for the message
        parsed = parse_message(response)
        if parsed is None:
            return Failure()
        authzid, token = parsed
        user = await check_token(token)
        if user is not None and authzid in ("", user):
            return Success(user)
        self.refused = True
        return Challenge(_ERROR)


SASL_MECHANISMS = {"OAUTHBEARER": OAuthBearer}
