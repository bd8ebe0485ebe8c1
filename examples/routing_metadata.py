"""Per-recipient routing metadata, and hold / discard decisions at end of data.

* RCPT TO: each accepted recipient gets ``metadata["transport"]`` chosen by its domain
  (``TRANSPORTS_BY_DOMAIN``, else ``DEFAULT_TRANSPORT``). The metadata is stored with that
  recipient in the spool, for the delivery phase to read.
* End of data, in order:

  1. a message from a sender in ``DISCARD_SENDERS`` is discarded: the client gets 250, nothing
     is queued (for noisy robots whose mail nobody reads; rejecting would make them retry);
  2. a message an upstream filter flagged (``X-Spam-Flag: YES``) is held: kept in the spool in
     quarantine, for every recipient, until an operator releases or deletes it, or for
     ``SPAM_RETENTION``, after which it is discarded without a bounce (the sender of spam is
     usually forged: a bounce would be backscatter);
  3. otherwise recipients in ``QUARANTINED_RECIPIENTS`` are held one by one
     (``recipient.hold()``), for ever: a legal hold ends only when someone releases it,
     while the others are queued;
  4. ``Queue(metadata=...)`` adds the same metadata to every recipient (here: which listener
     took the message), merged over what RCPT TO stored.

The client cannot tell these outcomes apart: each is ``250 2.0.0``. That is the point of hold and
discard: the sender learns nothing about the quarantine.
"""

from __future__ import annotations

from mailwarden.policy.actions import Accept, Discard, Hold, Queue
from mailwarden.policy.context import Connection, Message, Recipient, Transaction

# Domain → transport. What a transport string means is up to the delivery phase; these follow
# the "method:destination" convention of other MTAs' transport maps.
TRANSPORTS_BY_DOMAIN = {
    "example.com": "lmtp:unix:/run/dovecot/lmtp",
    "lists.example.com": "smtp:[10.0.0.25]:25",
}
DEFAULT_TRANSPORT = "mx"  # look up the recipient domain's MX records

DISCARD_SENDERS = frozenset({"cron@monitoring.example.net"})
QUARANTINED_RECIPIENTS = frozenset({"legal-hold@example.com"})
SPAM_RETENTION = "14d"  # then discarded; [queue] hold_retention (30 days) if left out


def transport_for(address: str) -> str:
    domain = address.rpartition("@")[2].lower().rstrip(".")
    return TRANSPORTS_BY_DOMAIN.get(domain, DEFAULT_TRANSPORT)


async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> Accept:
    # Accept(metadata=...) merges into recipient.metadata; the reply stays 250 2.1.5.
    return Accept(metadata={"transport": transport_for(recipient.address)})


async def data(conn: Connection, tx: Transaction, message: Message) -> Discard | Hold | Queue:
    sender = tx.sender.address.lower() if tx.sender is not None else ""
    if sender in DISCARD_SENDERS:
        return Discard(f"discarded: sender {sender} is on DISCARD_SENDERS")

    if (message.headers.get("X-Spam-Flag") or "").strip().upper() == "YES":
        # Holds every recipient still active, each with this reason.
        return Hold("spam flag set by the upstream filter", retention=SPAM_RETENTION)

    for recipient in tx.recipients:
        if recipient.address.lower() in QUARANTINED_RECIPIENTS:
            recipient.hold("legal hold: kept for review", retention="forever")

    return Queue(metadata={"received_by": conn.server_id})
