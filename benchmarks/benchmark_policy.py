"""The policy the throughput benchmark runs: every phase does a small lookup, as a real
deny-list or routing policy would, so the benchmark measures scripting, not an empty server."""

from __future__ import annotations

from mailwarden.policy.actions import Accept, Reject
from mailwarden.policy.context import Connection, Helo, Message, Recipient, Sender, Transaction

BLOCKED_IPS = frozenset({"192.0.2.1", "198.51.100.7"})
BLOCKED_HELO = frozenset({"localhost.localdomain.invalid"})
BLOCKED_SENDERS = frozenset({"spammer@example.net"})
ROUTES = {"example.org": "local", "example.com": "relay"}


async def connect(conn: Connection) -> Reject | None:
    if conn.remote_ip in BLOCKED_IPS:
        return Reject("Your address is blocked", code=554, enhanced="5.7.1")
    conn.state["connected"] = True
    return None


async def helo(conn: Connection, helo: Helo) -> Reject | None:
    if helo.name.lower() in BLOCKED_HELO:
        return Reject("Bad HELO", enhanced="5.7.1")
    return None


async def mail_from(conn: Connection, tx: Transaction, sender: Sender) -> Reject | None:
    if sender.address.lower() in BLOCKED_SENDERS:
        return Reject("Sender blocked", enhanced="5.7.1")
    return None


async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> Accept | Reject:
    route = ROUTES.get(recipient.address.rpartition("@")[2].lower())
    if route is None:
        return Reject("No such domain here", code=550, enhanced="5.1.2")
    return Accept(metadata={"route": route})


async def data(conn: Connection, tx: Transaction, message: Message) -> Reject | None:
    if message.headers.get("X-Spam-Flag", "").upper() == "YES":
        return Reject("Spam", enhanced="5.7.1")
    return None
