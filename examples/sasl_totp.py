"""AUTH X-TOTP: one-time passwords (TOTP, RFC 6238) from an authenticator app, as a policy-script
SASL mechanism, with pyotp.

The client sends one message, like PLAIN's (RFC 4616) but with the 6-digit code in place of the
password: ``authzid NUL user NUL code`` (authzid empty or the user), as the initial response or
after an empty ``334`` challenge. Codes of the previous, current and next 30-second step are
accepted (clock drift), and each code works once: a step used by a user is never accepted
again for that user, so a code seen on the wire cannot be replayed.

``SECRETS`` maps each user to the base32 secret enrolled in their app (``pyotp.random_base32()``
makes one; ``pyotp.TOTP(secret).provisioning_uri(name=user, issuer_name="Mail")`` gives the QR
code's text). Keep this file readable by the node only. Offered after TLS only (the default).

A client can speak it with any SASL-capable library, e.g. Python's smtplib::

    smtp.auth("X-TOTP", lambda challenge=None: f"\\0{user}\\0{code}")
"""

from __future__ import annotations

import datetime
import hmac

import pyotp

from mailwarden.auth.custom import Challenge, Failure, Success
from mailwarden.policy.context import Connection

# user -> base32 TOTP secret. Replace before use.
SECRETS: dict[str, str] = {
    "alice": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
}
DRIFT_STEPS = 1  # accept codes one 30-second step early or late

# user -> the last time step whose code that user spent. Module state: per worker process and
# emptied by a reload (then at most the codes of the last minute become usable again); with
# several workers or nodes keep it in the datastore (mailwarden.lib.datastore) instead.
_LAST_STEP: dict[str, int] = {}


def _matching_step(totp: pyotp.TOTP, code: str, now: datetime.datetime) -> int | None:
    """The time step (RFC 6238 §4.2) whose code is ``code``, near ``now``; or None."""
    current = totp.timecode(now)
    for step in range(current - DRIFT_STEPS, current + DRIFT_STEPS + 1):
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


class Totp:
    """One X-TOTP exchange: at most one empty challenge, then the client's message."""

    def __init__(self) -> None:
        self.asked = False

    async def step(self, conn: Connection, response: bytes | None) -> Challenge | Success | Failure:
        if response is None and not self.asked:
            self.asked = True
            return Challenge(b"")
        parts = (response or b"").split(b"\0")
        if len(parts) != 3:
            return Failure()
        try:
            authzid, user, code = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            return Failure()
        secret = SECRETS.get(user)
        if secret is None or authzid not in ("", user) or not (code.isdigit() and len(code) == 6):
            return Failure()
        step = _matching_step(pyotp.TOTP(secret), code, datetime.datetime.now(datetime.UTC))
        if step is None or step <= _LAST_STEP.get(user, -1):
            return Failure()  # wrong, or already used (RFC 6238 §5.2: once per step)
        _LAST_STEP[user] = step
        return Success(user)


SASL_MECHANISMS = {"X-TOTP": Totp}
