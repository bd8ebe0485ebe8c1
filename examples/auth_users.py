"""SMTP AUTH against a table of salted scrypt password hashes.

The server does the SASL exchange (PLAIN, LOGIN; see ``auth_mechanisms``) and hands the decoded
credentials to the ``auth`` hook. Returning ``Accept()`` answers ``235 2.7.0`` and makes the
client authenticated (``conn.auth``), which lets it relay. Returning None answers
``535 5.7.8 Authentication credentials invalid`` after a delay that grows with each failure on
the connection; after ``[servers.limits] auth_failures`` failures the server hangs up.

Passwords are never stored: only ``scrypt$n$r$p$salt$hash`` strings. Make one with::

    python examples/auth_users.py 'the password'

and paste the output into ``USERS``. Never commit real hashes next to code others can read.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import sys

from mailwarden.policy.actions import Accept
from mailwarden.policy.context import Connection, Credentials

# username (lower case) → "scrypt$n$r$p$salt$hash". Empty: nobody can log in until you add one.
USERS: dict[str, str] = {
    # "alice@example.com": "scrypt$16384$8$1$...$...",
}

# scrypt cost (RFC 7914): 2**14 × 8 × 128 bytes = 16 MiB of memory and tens of milliseconds of
# CPU per attempt. Expensive on purpose: a stolen table is slow to crack.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SALT_BYTES = 16
_HASH_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=_HASH_BYTES
    )


def make_password_hash(password: str) -> str:
    """A new ``USERS`` entry for ``password`` with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


# Checked for unknown users too, so a wrong user name costs as long as a wrong password and the
# answer time does not tell an attacker which user names exist.
_DUMMY_HASH = make_password_hash(os.urandom(16).hex())


def password_matches(password: str, stored: str) -> bool:
    """Whether ``password`` fits ``stored``. A malformed entry never matches."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        digest = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        # Constant-time comparison: the time taken does not leak how many bytes matched.
        return hmac.compare_digest(digest, base64.b64decode(expected))
    except ValueError:  # wrong field count, bad base64 or number, parameters scrypt refuses
        return False


async def auth(conn: Connection, credentials: Credentials) -> Accept | None:
    # PLAIN lets a client ask to act as someone else (the authorization identity, RFC 4616
    # §2). This table has no such rights, so only "act as yourself" (or empty) is accepted.
    if credentials.authzid and credentials.authzid != credentials.username:
        return None
    stored = USERS.get(credentials.username.lower())
    # scrypt takes tens of milliseconds of CPU: in a worker thread, so that the event loop keeps
    # serving every other connection meanwhile (a hook that blocks stalls them all).
    matched = await asyncio.to_thread(password_matches, credentials.password, stored or _DUMMY_HASH)
    if matched and stored is not None:
        return Accept()  # 235 2.7.0 Authentication successful
    return None  # 535 5.7.8 Authentication credentials invalid


if __name__ == "__main__":  # python auth_users.py PASSWORD → a line for USERS
    if len(sys.argv) != 2:
        sys.exit("usage: python auth_users.py PASSWORD")
    print(make_password_hash(sys.argv[1]))
