"""An inbound MX filter: DNSBL, SPF, a rate limit, greylisting, DMARC, rspamd and ClamAV.

Use it as the MX listener's ``script = "inbound_filter.py"`` (with ``trusted_networks`` holding
only your own hosts). Each phase refuses as early as it can, with a reply that says why:

* ``connect``: a client listed by one of ``DNSBL_ZONES`` gets ``554 5.7.1 <ip> listed by
  <zone>: <reason>`` (RFC 5782). A list that does not answer is skipped (it is one signal
  among several, and a list being down must not stop all mail); ``stat("inbound-dnsbl")``
  counts it as ``error``.
* ``mail_from``: more than ``RATE_LIMIT`` transactions per ``RATE_INTERVAL`` seconds from one
  client address: ``451 4.7.1`` (``rate()``, shared by every worker). Then SPF (RFC 7208):
  ``fail`` is ``550 5.7.23`` with the domain's explanation when ``REJECT_SPF_FAIL`` is on
  (turn it off to let DMARC decide, e.g. for mail forwarded without SRS: RFC 7489 §10.1), a
  DNS failure (``temperror``) ``451 4.4.3``; other results are only recorded.
* ``rcpt_to``: greylisting of (client /24 or /64, sender, recipient) triplets, kept in the
  datastore as ``examples/greylisting.py`` does (so it works with several workers and across
  ``mailwarden reload``): ``451 4.7.1`` until a retry ``GREYLIST_DELAY`` seconds later.
* ``data``: DKIM verification and DMARC evaluation (RFC 7489): the sender domain's ``reject``
  policy is ``550 5.7.1``, ``quarantine`` holds the message; then ClamAV and rspamd, both at
  once. A virus is ``554 5.7.1 Virus found: NAME``; rspamd's ``reject`` action (or a score of
  ``SPAM_SCORE`` and more, when set) is ``550 5.7.1``; its ``soft reject`` ``451 4.7.1``;
  borderline mail (an action in ``HOLD_ACTIONS``, or a score of ``HOLD_SCORE`` and more, when
  set) is accepted and **held**: ``mailwarden queue list state=held`` shows it, ``mailwarden
  queue update release id=…`` lets it go. Everything accepted or held gets an
  Authentication-Results field (RFC 8601) for ``AUTHSERV_ID``, forged ones of that id removed.

**Nothing needs to be running for the script to load**: the scanners are asked per message, at
the addresses of ``[library] clamd_address`` and ``rspamd_url``. A scanner that is down, slow
(``[library] scanner_timeout``) or answering nonsense raises ``ScannerError``, which this script
answers with ``451 4.7.0``: the sender retries later, and no mail goes through unscanned. The
datastore failing (greylisting) or the rate backend failing answers ``451 4.3.0``; DNS trouble
in DMARC ``451 4.7.5``.

Authenticated clients and ``trusted_networks`` skip the DNSBL, SPF, rate, greylisting and
DMARC checks (they are your users and your hosts); their mail is still scanned.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from mailwarden.lib import (
    BackendError,
    ScannerError,
    authres,
    clamav,
    datastore,
    dkim,
    dmarc,
    dns,
    rate,
    rspamd,
    spf,
    stat,
)
from mailwarden.policy.actions import Defer, Hold, Reject
from mailwarden.policy.context import Connection, Message, Recipient, Sender, Transaction

# -- configuration ---------------------------------------------------------------------------
DNSBL_ZONES: tuple[str, ...] = ("zen.spamhaus.org",)  # RFC 5782 lists asked at connect
DNSBL_TIMEOUT = 2.0  # seconds per list
RATE_LIMIT = 100  # transactions per client IP ...
RATE_INTERVAL = 3600  # ... per this many seconds
REJECT_SPF_FAIL = True  # False: record an SPF fail, and let DMARC decide
GREYLIST_DELAY = 300  # seconds before a retry is accepted (RFC 6647 §2.1)
GREYLIST_RETRY_WINDOW = 4 * 3600  # seconds a first attempt waits for its retry
GREYLIST_KNOWN_FOR = 36 * 24 * 3600  # seconds a passed triplet is accepted at once
GREYLIST_NAMESPACE = "greylisting"  # datastore namespace: `mailwarden datastore list greylisting`
SPAM_SCORE: float | None = None  # reject at this rspamd score; None: rspamd's "reject" action
HOLD_SCORE: float | None = None  # hold at this rspamd score; None: only HOLD_ACTIONS
HOLD_ACTIONS = frozenset({"add header", "rewrite subject"})  # rspamd's "probably spam"
AUTHSERV_ID = socket.getfqdn()  # this MX's name in Authentication-Results
# ---------------------------------------------------------------------------------------------


def exempt(conn: Connection) -> bool:
    return conn.trusted or conn.auth is not None


async def _listed(ip: str, zone: str) -> dns.DnsblResult | None:
    try:
        return await dns.dnsbl(ip, zone, timeout=DNSBL_TIMEOUT)
    except dns.DnsError:
        stat("inbound-dnsbl", {"error": True})
        return None  # skipped: see the module docstring


async def connect(conn: Connection) -> None:
    if exempt(conn) or not DNSBL_ZONES:
        return
    results = await asyncio.gather(*(_listed(conn.remote_ip, zone) for zone in DNSBL_ZONES))
    for zone, listed in zip(DNSBL_ZONES, results, strict=True):
        if listed:
            stat("inbound-dnsbl", {"listed": True})
            reason = listed.reason or ",".join(listed.codes)
            # At connect any 5xx goes out as 554 (RFC 5321 §3.1).
            raise Reject(f"{conn.remote_ip} listed by {zone}: {reason}", code=554, enhanced="5.7.1")


async def mail_from(conn: Connection, tx: Transaction, sender: Sender) -> None:
    conn.state.pop("spf", None)  # a new transaction: the last one's result is not this one's
    if exempt(conn):
        return
    try:
        within = await rate("inbound-per-client", conn.remote_ip, RATE_LIMIT, RATE_INTERVAL)
    except BackendError:
        raise Defer("Try again later", code=451, enhanced="4.3.0") from None
    if not within:
        raise Defer("Too many messages from your address, slow down", code=451, enhanced="4.7.1")
    result = await spf.check(conn.remote_ip, sender.address, conn.helo_name or "")
    conn.state["spf"] = result
    tx.metadata["spf"] = result.result
    if result.result == "fail" and REJECT_SPF_FAIL:
        # RFC 7208 §8.4: a fail may be rejected; 5.7.23 is "SPF validation failed" (RFC 7372).
        raise Reject(f"SPF: {result.explanation}", code=550, enhanced="5.7.23")
    if result.result == "temperror":
        raise Defer("SPF: temporary DNS failure, try again later", code=451, enhanced="4.4.3")


def client_network(address: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) of the client: large senders retry from another address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a Unix socket peer
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 64}", strict=False))


async def rcpt_to(conn: Connection, tx: Transaction, recipient: Recipient) -> None:
    if exempt(conn):
        return
    sender = tx.sender.address.lower() if tx.sender is not None else ""
    key = f"{client_network(conn.remote_ip)} {sender} {recipient.address.lower()}"
    greylisted = Defer("Greylisted, please try again later", code=451, enhanced="4.7.1")
    now = time.time()
    try:
        seen = await datastore.get(GREYLIST_NAMESPACE, key)
        if seen is None:
            entry = {"first": now, "passed": False}
            await datastore.set(GREYLIST_NAMESPACE, key, entry, ttl=GREYLIST_RETRY_WINDOW)
            raise greylisted
        if not seen["passed"] and now - seen["first"] < GREYLIST_DELAY:
            raise greylisted
        entry = {"first": seen["first"], "passed": True}
        await datastore.set(GREYLIST_NAMESPACE, key, entry, ttl=GREYLIST_KNOWN_FOR)
    except BackendError:
        raise Defer(
            "Greylisting unavailable, try again later", code=451, enhanced="4.3.0"
        ) from None


async def _scan(
    conn: Connection, tx: Transaction, message: Message
) -> tuple[clamav.ClamResult, rspamd.RspamdResult]:
    """Both scanners at once (the message waits for the slower one, not for the sum)."""
    virus, spam = await asyncio.gather(
        clamav.scan(message), rspamd.check(message, conn=conn, tx=tx), return_exceptions=True
    )
    for outcome in (virus, spam):
        if isinstance(outcome, ScannerError):
            raise Defer(
                f"Content scanner unavailable ({outcome.scanner}: {outcome.reason}), "
                "try again later",
                code=451,
                enhanced="4.7.0",
            )
        if isinstance(outcome, BaseException):
            raise outcome
    assert isinstance(virus, clamav.ClamResult) and isinstance(spam, rspamd.RspamdResult)
    return virus, spam


async def data(conn: Connection, tx: Transaction, message: Message) -> Hold | None:
    spf_result: spf.SpfResult | None = conn.state.get("spf")
    dkim_results: list[dkim.DkimResult] | None = None
    verdict: dmarc.DmarcResult | None = None
    if not exempt(conn):
        dkim_results = await dkim.verify(message)
        verdict = await dmarc.evaluate(message, spf=spf_result, dkim=dkim_results)
        if verdict.result == "temperror":
            raise Defer("DMARC policy lookup failed, try again later", code=451, enhanced="4.7.5")
        if verdict.disposition == "reject":
            raise Reject(
                f"DMARC policy of {verdict.from_domain} rejects this message",
                code=550,
                enhanced="5.7.1",
            )
    virus, spam = await _scan(conn, tx, message)
    if not virus.clean:
        stat("inbound-verdict", {"virus": True})
        raise Reject(f"Virus found: {virus.virus}", code=554, enhanced="5.7.1")
    if spam.action == "reject" or (SPAM_SCORE is not None and spam.score >= SPAM_SCORE):
        stat("inbound-verdict", {"spam": True})
        raise Reject(
            f"Message refused as spam (score {spam.score:.1f})", code=550, enhanced="5.7.1"
        )
    if spam.action == "soft reject":
        raise Defer("Try again later", code=451, enhanced="4.7.1")
    # Forged fields claiming to be us go first (RFC 8601 §5); exempt clients get "none".
    authres.add(message, AUTHSERV_ID, spf=spf_result, dkim=dkim_results, dmarc=verdict)
    message.headers.add("X-Spam-Score", f"{spam.score:.2f} / {spam.required_score:.2f}")
    if verdict is not None and verdict.disposition == "quarantine":
        stat("inbound-verdict", {"held": True})
        return Hold(f"DMARC quarantine policy of {verdict.from_domain}")
    borderline = HOLD_SCORE is not None and spam.score >= HOLD_SCORE
    if spam.action in HOLD_ACTIONS or borderline:
        stat("inbound-verdict", {"held": True})
        return Hold(f"probably spam (rspamd {spam.action}, score {spam.score:.1f})")
    stat("inbound-verdict", {"accepted": True})
    return None
