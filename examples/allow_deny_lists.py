"""Allow and deny lists for client IP addresses, senders and recipients.

Use it as a server's ``script = "allow_deny_lists.py"`` and edit the lists below. Reload with
SIGHUP or ``mailwarden reload``: connections already open keep the lists they started with.

Decisions, in the order the SMTP phases come:

* connect: a client in ``DENIED_NETWORKS`` gets ``554 5.7.1`` and nothing else but 503 until it
  quits (RFC 5321 §3.1). A client in ``ALLOWED_NETWORKS`` skips every deny list below.
* MAIL FROM: a sender in ``DENIED_SENDERS`` gets ``550 5.7.1``, unless it is also in
  ``ALLOWED_SENDERS`` (the allow list wins, so one partner address can be let through a denied
  domain).
* RCPT TO: a recipient in ``DENIED_RECIPIENTS`` gets ``550 5.7.1``; other recipients of the
  same transaction are unaffected.

The built-in relay rule runs before ``rcpt_to`` and cannot be switched off here: allow-listing a
client does not let it relay. Use ``trusted_networks`` in the configuration for that.

List entries (compared case-insensitively):

* ``"user@example.com"``: that address;
* ``"example.com"``: every address at that domain, and only that domain;
* ``".example.com"``: every address at any subdomain of example.com (not example.com itself).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from mailwarden.policy.actions import Reject
from mailwarden.policy.context import Connection, Recipient, Sender, Transaction

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# --- the lists: edit these -------------------------------------------------------------------

ALLOWED_NETWORKS = ["192.0.2.0/24", "2001:db8:1::/48"]
DENIED_NETWORKS = ["198.51.100.0/24", "203.0.113.7", "2001:db8:bad::/48"]

ALLOWED_SENDERS = ["billing@partner.example"]
DENIED_SENDERS = ["spammer@bulk.example", "partner.example", ".spam.example"]

DENIED_RECIPIENTS = ["former-employee@example.com", "noreply@example.com"]

# --- the rules -------------------------------------------------------------------------------


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDR blocks, or single addresses (a /32 or /128). A typo fails the load with the line,
    so ``mailwarden config check`` finds it before any client does."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)


_allowed_networks = parse_networks(ALLOWED_NETWORKS)
_denied_networks = parse_networks(DENIED_NETWORKS)


def ip_in(ip: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:  # not an IP (a Unix socket peer, say): never on a list
        return False
    # An IPv4 client seen through an IPv6 socket (::ffff:198.51.100.1) matches IPv4 entries.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def address_in(address: str, entries: Iterable[str]) -> bool:
    """Whether ``address`` matches one of ``entries`` (see the module docstring)."""
    if not address:  # the null sender <> (bounces) is never on an address list
        return False
    address = address.lower()
    domain = address.rpartition("@")[2]
    for entry in entries:
        entry = entry.lower()
        if "@" in entry:
            matched = address == entry
        elif entry.startswith("."):
            matched = domain.endswith(entry)
        else:
            matched = domain == entry
        if matched:
            return True
    return False


# --- the hooks -------------------------------------------------------------------------------


async def connect(conn: Connection) -> Reject | None:
    if ip_in(conn.remote_ip, _allowed_networks):
        # Remembered for the later hooks of this connection only.
        conn.state["allow_listed"] = True
        return None
    if ip_in(conn.remote_ip, _denied_networks):
        return Reject("Your address is blocked by local policy", code=554, enhanced="5.7.1")
    return None  # default: 220 greeting


async def mail_from(conn: Connection, tx: Transaction, sender: Sender) -> Reject | None:
    if conn.state.get("allow_listed") or address_in(sender.address, ALLOWED_SENDERS):
        return None  # default: 250 2.1.0 Sender OK
    if address_in(sender.address, DENIED_SENDERS):
        return Reject("Sender address rejected: access denied", code=550, enhanced="5.7.1")
    return None


async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> Reject | None:
    if conn.state.get("allow_listed"):
        return None
    if address_in(recipient.address, DENIED_RECIPIENTS):
        return Reject("Recipient address rejected: access denied", code=550, enhanced="5.7.1")
    return None  # default: 250 2.1.5 Recipient OK
