"""AUTH CRAM-MD5 (RFC 2195) as a policy-script SASL mechanism, users from a dict in this file.

The server sends a fresh challenge in the form of a message id (``<random.time@host>``); the
client answers ``username SP hex(HMAC-MD5(password, challenge))`` (RFC 2104), so the password
itself never crosses the wire. That is why the mechanism is marked ``safe_in_clear``: it is
offered before STARTTLS too. The price is that the server must keep each password in clear
(HMAC needs the key), so keep this file readable by the node only; and anyone who records an
exchange can try to guess the password offline, so prefer PLAIN over TLS where clients allow.

Set it as a listener's ``script`` and ``alice`` / ``wonderland`` authenticates::

    swaks --server 127.0.0.1:2525 --auth CRAM-MD5 --auth-user alice --auth-password wonderland
"""

from __future__ import annotations

import hmac
import secrets
import socket
import time

from mailwarden.auth.custom import Challenge, Failure, Success
from mailwarden.policy.context import Connection

# user name -> password (in clear: see above). Replace before use.
USERS: dict[str, str] = {
    "alice": "wonderland",
}


class CramMd5:
    """One CRAM-MD5 exchange: one challenge, one response (RFC 2195 §2)."""

    safe_in_clear = True  # only an HMAC of the password is sent

    def __init__(self) -> None:
        self.challenge: bytes | None = None

    async def step(self, conn: Connection, response: bytes | None) -> Challenge | Success | Failure:
        if self.challenge is None:
            if response:
                return Failure()  # RFC 2195: the client speaks only after the challenge
            # Unique per exchange (random and time) and naming this host, as RFC 2195 §2 asks.
            number = secrets.randbelow(10**12)
            self.challenge = f"<{number}.{int(time.time())}@{socket.gethostname()}>".encode()
            return Challenge(self.challenge)
        username, _, digest = (
            response.decode("utf-8", "replace").rpartition(" ") if response else ("", "", "")
        )
        password = USERS.get(username)
        # The same work for unknown users, so the answer does not tell which names exist.
        key = (password if password is not None else secrets.token_hex(16)).encode()
        expected = hmac.new(key, self.challenge, "md5").hexdigest()
        if password is not None and hmac.compare_digest(expected, digest.lower()):
            return Success(username)
        return Failure()


SASL_MECHANISMS = {"CRAM-MD5": CramMd5}
