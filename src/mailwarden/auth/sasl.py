"""Server side of the built-in SASL mechanisms offered with AUTH (RFC 4954): PLAIN (RFC 4616),
LOGIN and EXTERNAL (RFC 4422 appendix A). A script's own mechanisms follow :mod:`.custom`.

Sans-I/O: each mechanism takes the client's decoded data and answers with a challenge to send,
the credentials to check, or a failure reply. Checking the credentials is the policy's job.

Dependencies point one way: this package defines what SASL produces (:class:`Credentials`) and
imports nothing from :mod:`mailwarden.policy`; the policy contexts re-export it for scripts.
A new mechanism joins :data:`MECHANISMS` (name to factory), the one table ``mechanism_for`` reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from mailwarden.smtp import replies
from mailwarden.smtp.replies import Reply

PasswordCheck = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client sent with AUTH. ``authzid`` is the PLAIN authorization identity.

    The password is left out of ``repr``, so a script that logs its credentials (or a
    traceback that shows them) does not write the secret into the log.
    """

    mechanism: str
    username: str
    password: str = field(repr=False)
    authzid: str = ""
    # The listener's auth_password_file, when it has one (set by the server, not by SASL).
    password_check: PasswordCheck | None = field(default=None, repr=False, compare=False)

    async def password_file_matches(self) -> bool:
        """Whether the listener's ``auth_password_file`` holds ``username`` with this
        password; False when the listener has no password file."""
        if self.password_check is None or not self.password:
            return False
        return await self.password_check(self.username, self.password)


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


class ExternalMechanism:
    """RFC 4422 appendix A: the client's one message is the authorization identity it asks
    for (empty: the identity its credentials, the TLS client certificate, establish). Who the
    certificate names is the server's to fill in: ``username`` is left empty here."""

    name = "EXTERNAL"

    def step(self, data: bytes | None) -> Step:
        if data is None:
            return Challenge(b"")  # RFC 4954 §4: "334 " and the client sends its message
        authzid = _text(data)
        if authzid is None or "\x00" in authzid:
            return _MALFORMED
        return Credentials(self.name, "", "", authzid)


class Mechanism(Protocol):
    """One server-side SASL exchange: ``step`` gets each decoded client message (None when the
    client sent no initial response) and answers with the next :data:`Step`."""

    name: str

    def step(self, data: bytes | None) -> Step: ...


# Every mechanism the server can offer, by its upper-case name (RFC 4422 §3.1).
MECHANISMS: dict[str, Callable[[], Mechanism]] = {
    PlainMechanism.name: PlainMechanism,
    LoginMechanism.name: LoginMechanism,
    ExternalMechanism.name: ExternalMechanism,
}


def mechanism_for(name: str) -> Mechanism:
    """The mechanism object for an advertised name; raises KeyError for any other."""
    return MECHANISMS[name.upper()]()
