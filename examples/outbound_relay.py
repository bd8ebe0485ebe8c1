"""An outbound relay (submission): AUTH required, per-user rate limits, DKIM, blocked attachments.

Use it as the submission listener's ``script = "outbound_relay.py"`` (port 587 with STARTTLS,
or 465 with ``tls_implicit``; keep ``auth_requires_tls = true`` so passwords never cross the
network in clear). What it decides, phase by phase:

* ``auth``: the user's scrypt hash is in the datastore, namespace ``USERS_NAMESPACE``::

      mailwarden datastore set relay-users alice@example.org \\
          "$(python examples/outbound_relay.py 'the password')" --string

  The right password answers ``235 2.7.0``; anything else ``535 5.7.8`` (after the server's
  growing delay); the datastore failing ``454 4.7.0`` (RFC 4954 §6: try again later).
* ``mail_from``: a client that has not authenticated gets ``530 5.7.0 Authentication required``
  (RFC 4954 §6), so nothing is relayed for it (``trusted_networks`` too, unless
  ``RELAY_TRUSTED_WITHOUT_AUTH``). Then the user's rate limit: ``RATE_LIMIT`` messages per
  ``RATE_INTERVAL`` seconds, or the user's own limit from the datastore::

      mailwarden datastore set relay-limits alice@example.org 1000

  Over it: ``451 4.7.1`` (the client's MTA retries later). A value that is not a whole
  number ≥ 0 is ignored (the default applies) and logged.
* ``data``: every attachment is hashed (SHA-256 and SHA-512, ``dlp``) and one listed in
  ``BLOCKED_HASHES_FILE`` (``sha256sum`` output; read when the script loads, so run
  ``mailwarden reload`` after editing it) refuses the message with ``550 5.7.1``. Last, the
  message is DKIM-signed (RFC 6376) for the domain of its From address, with the key of
  ``DKIM_KEYS`` (domain → selector and PEM file) or else of the datastore, namespace
  ``KEYS_NAMESPACE``, key the domain, value ``{"selector": "...", "key": "-----BEGIN ..."}``::

      mailwarden datastore set dkim-keys example.org \\
          "$(jq -n --arg key "$(cat example.org.pem)" '{selector: "mw2026", key: $key}')"

  A domain without a key is sent unsigned. A key that cannot be used (unreadable file, bad
  PEM) answers ``451 4.3.5`` rather than sending mail its domain expects signed unsigned.

The rate backend or the datastore failing answers ``451 4.3.0``.

Not checked here: which From addresses a user may send as. Every authenticated user's mail is
signed for its From domain; add that check in ``mail_from`` (e.g. a list of domains per user
in the datastore) where users must not speak for each other's domains.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import sys
from email.utils import getaddresses
from pathlib import Path

from mailwarden.lib import BackendError, datastore, dkim, dlp, rate
from mailwarden.policy.actions import Accept, Defer, Reject
from mailwarden.policy.context import Connection, Credentials, Message, Sender, Transaction

# -- configuration ---------------------------------------------------------------------------
USERS_NAMESPACE = "relay-users"  # user name (lower case) → "scrypt$n$r$p$salt$hash"
LIMITS_NAMESPACE = "relay-limits"  # user name → messages per RATE_INTERVAL (an override)
KEYS_NAMESPACE = "dkim-keys"  # domain → {"selector": ..., "key": PEM}
RATE_LIMIT = 200  # messages per user ...
RATE_INTERVAL = 3600  # ... per this many seconds, unless the user has an override
RELAY_TRUSTED_WITHOUT_AUTH = False  # True: trusted_networks relay without AUTH
DKIM_KEYS: dict[str, tuple[str, str]] = {
    # "example.org": ("mw2026", "/etc/mailwarden/dkim/example.org.pem"),
}
BLOCKED_HASHES_FILE = "/etc/mailwarden/blocked-attachments.sha256"
# ---------------------------------------------------------------------------------------------

log = logging.getLogger("mailwarden.script.outbound_relay")

# scrypt cost of new hashes (RFC 7914): 16 MiB and tens of milliseconds per check, on purpose.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _load_rules(path: str) -> dlp.Rules:
    """The hash list, read once per load; no file yet means nothing is blocked."""
    if not Path(path).exists():
        return dlp.Rules()
    return dlp.Rules(hashes=dlp.HashList.from_file(path))


RULES = _load_rules(BLOCKED_HASHES_FILE)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r, dklen=32
    )


def make_password_hash(password: str, n: int = SCRYPT_N) -> str:
    """A ``relay-users`` value for ``password``, with a fresh random salt."""
    salt = os.urandom(16)
    digest = _scrypt(password, salt, n, SCRYPT_R, SCRYPT_P)
    encoded = base64.b64encode
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${encoded(salt).decode()}${encoded(digest).decode()}"


# Checked for unknown users too: the answer time does not tell which user names exist.
_DUMMY_HASH = make_password_hash(os.urandom(16).hex())


def password_matches(password: str, stored: object) -> bool:
    """Whether ``password`` fits ``stored``; a malformed entry never matches."""
    try:
        scheme, n, r, p, salt, expected = str(stored).split("$")
        digest = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
        # Constant time: how many bytes matched does not show in the answer time.
        return scheme == "scrypt" and hmac.compare_digest(digest, base64.b64decode(expected))
    except ValueError:
        return False


async def auth(conn: Connection, credentials: Credentials) -> Accept | Defer | None:
    # Acting as someone else (PLAIN's authorization identity, RFC 4616 §2) is not offered.
    if credentials.authzid and credentials.authzid != credentials.username:
        return None
    try:
        stored = await datastore.get(USERS_NAMESPACE, credentials.username.lower())
    except BackendError:
        return Defer("Temporary authentication failure", code=454, enhanced="4.7.0")
    # The hash costs tens of milliseconds: off the event loop, so other clients are served.
    matches = await asyncio.to_thread(
        password_matches, credentials.password, stored if stored is not None else _DUMMY_HASH
    )
    return Accept() if matches and stored is not None else None


async def user_limit(username: str) -> int:
    override = await datastore.get(LIMITS_NAMESPACE, username)
    if override is None:
        return RATE_LIMIT
    if isinstance(override, bool) or not isinstance(override, int) or override < 0:
        log.warning(
            "%s %s: %r is not a limit, using %d", LIMITS_NAMESPACE, username, override, RATE_LIMIT
        )
        return RATE_LIMIT
    return override


async def mail_from(conn: Connection, tx: Transaction, sender: Sender) -> None:
    if conn.auth is None:
        if conn.trusted and RELAY_TRUSTED_WITHOUT_AUTH:
            return
        raise Reject("Authentication required", code=530, enhanced="5.7.0")
    username = conn.auth.username.lower()
    try:
        limit = await user_limit(username)
        within = await rate("relay-per-user", username, limit, RATE_INTERVAL)
    except BackendError:
        raise Defer("Try again later", code=451, enhanced="4.3.0") from None
    if not within:
        raise Defer(
            f"{username} sent more than {limit} messages in {RATE_INTERVAL} s, try again later",
            code=451,
            enhanced="4.7.1",
        )


def from_domain(message: Message) -> str | None:
    """The domain of the one From address (RFC 5322 §3.6.2), lower case; None if not one."""
    addresses = getaddresses(message.headers.get_all("From"))
    if len(addresses) != 1 or "@" not in addresses[0][1]:
        return None
    return addresses[0][1].rpartition("@")[2].lower()


async def signing_key(domain: str) -> tuple[str, str] | None:
    """(selector, key) for ``domain``: the key's file path from DKIM_KEYS, else the PEM from
    the datastore; None when the domain has none."""
    if domain in DKIM_KEYS:
        return DKIM_KEYS[domain]
    entry = await datastore.get(KEYS_NAMESPACE, domain)
    if not isinstance(entry, dict):
        return None
    selector, key = entry.get("selector"), entry.get("key")
    if not isinstance(selector, str) or not isinstance(key, str):
        log.warning("%s %s: needs a selector and a key, sent unsigned", KEYS_NAMESPACE, domain)
        return None
    return selector, key


async def data(conn: Connection, tx: Transaction, message: Message) -> None:
    scan = await dlp.scan(message)
    for finding in dlp.check(scan, RULES):
        part = next((p for p in scan.parts if p.path == finding.part), None)
        name = part.filename if part is not None and part.filename else f"part {finding.part}"
        # finding.detail names the listed digest; the sender only needs to know which file.
        raise Reject(f"Attachment {name} is blocked by policy", code=550, enhanced="5.7.1")
    domain = from_domain(message)
    if domain is None:
        return
    try:
        key = await signing_key(domain)
    except BackendError:
        raise Defer("Try again later", code=451, enhanced="4.3.0") from None
    if key is None:
        return
    selector, pem = key
    try:
        # The last edit of the message: the signature covers what is stored and delivered.
        await dkim.sign(message, domain=domain, selector=selector, key=pem)
    except (OSError, ValueError) as error:
        log.error("DKIM key for %s (selector %s) unusable: %s", domain, selector, error)
        raise Defer(
            "Cannot sign the message, try again later", code=451, enhanced="4.3.5"
        ) from None


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python outbound_relay.py PASSWORD  (prints a relay-users value)")
    print(make_password_hash(sys.argv[1]))
