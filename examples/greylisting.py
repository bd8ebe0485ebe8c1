"""Greylisting (triplets of client network, sender and recipient), kept in the datastore.

Use it as a server's ``script = "greylisting.py"``. The first time a triplet is seen the
recipient gets ``451 4.7.1`` ("try again later"); a real MTA retries, and a retry at least
``DELAY`` seconds later (and within ``RETRY_WINDOW``) is accepted. The triplet is then known
for ``KNOWN_FOR`` seconds, renewed by each accepted message, so regular correspondents are not
delayed again. Spam software that never retries never gets through.

The state lives in the datastore (``mailwarden.lib.datastore``, namespace ``greylisting``),
not in a module-level dict: every worker of the node reads the same triplets (a retry often
reaches another worker), and ``mailwarden reload`` (which loads this script afresh) forgets
nothing. With ``[library] datastore = "redis"`` or ``"postgresql"`` all nodes share them.
Operators can look at and edit the triplets: ``mailwarden datastore list greylisting``.

Decisions:

* authenticated clients and ``trusted_networks`` are never greylisted (they relay anyway);
* the client address is taken per network (IPv4 /24, IPv6 /64), as large senders retry from
  another address of the same pool;
* addresses are compared case-insensitively; the null sender ``<>`` is a triplet like any;
* the datastore failing answers ``451 4.3.0`` (the sender retries) rather than accepting.
"""

from __future__ import annotations

import ipaddress
import time

from mailwarden.lib import BackendError, datastore
from mailwarden.policy.actions import Defer
from mailwarden.policy.context import Connection, Recipient, Transaction

NAMESPACE = "greylisting"
DELAY = 300  # seconds before a retry is accepted (RFC 6647 §2.1: a few minutes)
RETRY_WINDOW = 4 * 3600  # seconds a first attempt waits for its retry
KNOWN_FOR = 36 * 24 * 3600  # seconds a passed triplet is accepted at once


def client_network(address: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network of the client (an IPv4-mapped address as IPv4)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a Unix socket peer: as it is
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def triplet(conn: Connection, tx: Transaction, recipient: Recipient) -> str:
    sender = tx.sender.address.lower() if tx.sender is not None else ""
    return f"{client_network(conn.remote_ip)} {sender} {recipient.address.lower()}"


async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> Defer | None:
    if conn.trusted or conn.auth is not None:
        return None
    key = triplet(conn, tx, recipient)
    now = time.time()
    try:
        seen = await datastore.get(NAMESPACE, key)
        if seen is None:
            await datastore.set(NAMESPACE, key, {"first": now, "passed": False}, ttl=RETRY_WINDOW)
            return Defer("Greylisted, please try again later", code=451, enhanced="4.7.1")
        if not seen["passed"] and now - seen["first"] < DELAY:
            return Defer("Greylisted, please try again later", code=451, enhanced="4.7.1")
        await datastore.set(NAMESPACE, key, {"first": seen["first"], "passed": True}, ttl=KNOWN_FOR)
    except BackendError:
        return Defer("Greylisting unavailable, try again later", code=451, enhanced="4.3.0")
    return None
