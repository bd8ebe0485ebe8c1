"""Server side of the SASL mechanisms offered with AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN.

Sans-I/O: each mechanism takes the client's decoded data and answers with a challenge to send,
the credentials to check, or a failure reply. Checking the credentials is the policy's job.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailwarden.policy.context import Credentials
from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply


@dataclass(frozen=True, slots=True)
class Challenge:
    data: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    reply: Reply


Step = Challenge | Credentials | Failed

_MALFORMED = Failed(replies.SYNTAX_ERROR_PARAMETERS.with_text("Malformed SASL response"))


def _text(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


class PlainMechanism:
    """RFC 4616: one message ``authzid NUL authcid NUL passwd``, sent at once or after ``334 ``."""

    name = "PLAIN"

    def step(self, data: bytes | None) -> Step:
        if data is None:
            return Challenge(b"")
        parts = data.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            return _MALFORMED
        texts = [_text(part) for part in parts]
        if any(text is None for text in texts):
            return _MALFORMED
        authzid, username, password = texts
        return Credentials(self.name, username or "", password or "", authzid or "")


class LoginMechanism:
    """The de-facto LOGIN mechanism: ``Username:`` then ``Password:`` challenges."""

    name = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def step(self, data: bytes | None) -> Step:
        if self._username is None:
            if data is None or data == b"":
                return Challenge(b"Username:")
            return self._got_username(data)
        password = _text(data or b"")
        if password is None:
            return _MALFORMED
        return Credentials(self.name, self._username, password)

    def _got_username(self, data: bytes) -> Step:
        username = _text(data)
        if username is None or not username:
            return _MALFORMED
        self._username = username
        return Challenge(b"Password:")


def mechanism_for(name: str) -> PlainMechanism | LoginMechanism:
    """The mechanism object for an advertised name; raises KeyError for any other."""
    return {"PLAIN": PlainMechanism, "LOGIN": LoginMechanism}[name.upper()]()
