"""Header stamping at end of data: add, delete and set header fields.

What it does to every message, in this order:

1. Deletes ``X-Mailwarden-*`` fields that came with the message, so nobody outside can forge
   the stamps below, and ``Return-Path`` (the delivering MTA adds it, RFC 5321 §4.4).
2. Adds stamps with facts only the server knows: which listener took the message, the client's
   address and HELO name, the TLS session, and (optionally) the authenticated user.
3. Sets the Subject of mail from outside (unauthenticated clients not in ``trusted_networks``)
   to start with ``[EXTERNAL]``, a common warning against phishing.

Fields the script does not touch go to the spool byte for byte, so DKIM signatures over them
stay valid; note that rewriting the Subject breaks a DKIM signature that covers it.

The hook returns None, so the default applies: the message is queued for every recipient.
"""

from __future__ import annotations

from email.header import Header

from mailwarden.policy.context import Connection, Message, Transaction

STAMP_PREFIX = "X-Mailwarden-"
EXTERNAL_SUBJECT_TAG = "[EXTERNAL]"
# The login name of a submission user ends up in every recipient's copy. Postfix keeps this
# off by default for privacy; turn it on for internal mail only.
STAMP_AUTH_USER = True


def tls_summary(conn: Connection) -> str:
    if conn.tls is None:
        return "none"
    return f"{conn.tls.protocol} {conn.tls.cipher} ({conn.tls.bits} bits)"


def header_safe(text: str) -> str:
    """A header value from any text: RFC 2047 encoded words when it is not plain ASCII.

    ``Headers.set`` writes the value as UTF-8 bytes; in a message without SMTPUTF8 that is not
    allowed (RFC 5322 §2.2), so encode it. The encoder folds long values onto several lines;
    header values may not contain CR or LF here, so the words are kept on one line instead
    (adjacent encoded words separated by spaces decode as one text, RFC 2047 §6.2).
    """
    if text.isascii():
        return text
    encoded = Header(text, "utf-8").encode()
    return " ".join(part.strip() for part in encoded.splitlines())


async def data(conn: Connection, tx: Transaction, message: Message) -> None:
    headers = message.headers

    # 1. Delete. Collect names first: deleting while iterating would skip fields.
    forged = {name for name, _ in headers if name.lower().startswith(STAMP_PREFIX.lower())}
    for name in forged:
        headers.delete(name)
    headers.delete("Return-Path")

    # 2. Add, each at the top (the default), above the server's own Received: field.
    headers.add(f"{STAMP_PREFIX}Server", conn.server_id)
    headers.add(f"{STAMP_PREFIX}Client", f"[{conn.remote_ip}] helo={conn.helo_name or 'none'}")
    headers.add(f"{STAMP_PREFIX}TLS", tls_summary(conn))
    if STAMP_AUTH_USER and conn.auth is not None:
        headers.add(f"{STAMP_PREFIX}Auth", f"{conn.auth.username} ({conn.auth.mechanism})")
    headers.add(f"{STAMP_PREFIX}Transaction", tx.id)

    # 3. Set: replaces the first Subject in place (and drops any duplicates), or adds one.
    if conn.auth is None and not conn.trusted:
        subject = headers.get("Subject", "") or ""  # unfolded, RFC 2047 words decoded
        if not subject.startswith(EXTERNAL_SUBJECT_TAG):
            headers.set("Subject", header_safe(f"{EXTERNAL_SUBJECT_TAG} {subject}".rstrip()))
    return None  # default: queue for every recipient, 250 2.0.0 Message queued as <id>
