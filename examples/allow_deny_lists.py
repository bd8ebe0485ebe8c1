"""Allow and deny lists for client IP addresses, senders and recipients.

Use it as a server's ``script = "allow_deny_lists.py"`` and edit the list files in ``lists/``
beside it. An edited file takes effect within a second, without a reload (``mailwarden.lib``
``load_list``); a file saved with a typo keeps its previous entries and the node logs the file
and line. A typo in a file when the script loads fails the load, so ``mailwarden config check``
finds it before any client does.

Decisions, in the order the SMTP phases come:

* connect: a client in ``denied_networks.txt`` gets ``554 5.7.1`` and nothing else but 503 until
  it quits (RFC 5321 §3.1). A client in ``allowed_networks.txt`` skips every deny list below.
* MAIL FROM: a sender in ``denied_senders.txt`` gets ``550 5.7.1``, unless it is also in
  ``allowed_senders.txt`` (the allow list wins, so one partner address can be let through a
  denied domain).
* RCPT TO: a recipient in ``denied_recipients.txt`` gets ``550 5.7.1``; other recipients of the
  same transaction are unaffected.

The built-in relay rule runs before ``rcpt_to`` and cannot be switched off here: allow-listing a
client does not let it relay. Use ``trusted_networks`` in the configuration for that.

Network entries are addresses or CIDR blocks, IPv4 or IPv6 (an IPv4 client seen as
``::ffff:a.b.c.d`` matches IPv4 entries). Address entries (compared case-insensitively):

* ``user@example.com``: that address;
* ``example.com``: every address at that domain, and only that domain;
* ``.example.com``: every address at any subdomain of example.com (not example.com itself).

The null sender ``<>`` (bounces) is on no list.
"""

from __future__ import annotations

from pathlib import Path

from mailwarden.lib import load_list
from mailwarden.policy.actions import Reject
from mailwarden.policy.context import Connection, Recipient, Sender, Transaction

# --- the lists: edit the files -------------------------------------------------------------

LISTS = Path(__file__).resolve().parent / "lists"

ALLOWED_NETWORKS = load_list(LISTS / "allowed_networks.txt", "ip")
DENIED_NETWORKS = load_list(LISTS / "denied_networks.txt", "ip")

ALLOWED_SENDERS = load_list(LISTS / "allowed_senders.txt", "address")
DENIED_SENDERS = load_list(LISTS / "denied_senders.txt", "address")

DENIED_RECIPIENTS = load_list(LISTS / "denied_recipients.txt", "address")

# --- the hooks -------------------------------------------------------------------------------


async def connect(conn: Connection) -> Reject | None:
    if conn.remote_ip in ALLOWED_NETWORKS:
        # Remembered for the later hooks of this connection only.
        conn.state["allow_listed"] = True
        return None
    if conn.remote_ip in DENIED_NETWORKS:
        return Reject("Your address is blocked by local policy", code=554, enhanced="5.7.1")
    return None  # default: 220 greeting


async def mail_from(conn: Connection, tx: Transaction, sender: Sender) -> Reject | None:
    if conn.state.get("allow_listed") or sender.address in ALLOWED_SENDERS:
        return None  # default: 250 2.1.0 Sender OK
    if sender.address in DENIED_SENDERS:
        return Reject("Sender address rejected: access denied", code=550, enhanced="5.7.1")
    return None


async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> Reject | None:
    if conn.state.get("allow_listed"):
        return None
    if recipient.address in DENIED_RECIPIENTS:
        return Reject("Recipient address rejected: access denied", code=550, enhanced="5.7.1")
    return None  # default: 250 2.1.5 Recipient OK
