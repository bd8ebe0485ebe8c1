"""Which TLS policy each MX target of a recipient domain gets.

Order of precedence (RFC 8461 §2: "senders who implement MTA-STS and DANE ... SHOULD apply
DANE"; RFC 7672 §2.2): a DNSSEC-authenticated TLSA RRset of the MX host (DANE) decides for
that host; else the recipient domain's MTA-STS policy in ``enforce`` (or ``testing``) mode;
else the route's policy (``[delivery] tls``). Only MX deliveries take part: a route's own
next hop keeps the route's policy, as the operator set it.

:class:`TlsPolicySelector` is the one place the queue asks (``queue/pool.py``, when it opens
a connection); the DANE and MTA-STS lookups live in their own modules and cache their
answers, so asking again for every new connection costs a dictionary look-up.

MTA-STS (:mod:`mailwarden.delivery.mta_sts`) is asked once per domain and applied to each
target: in ``enforce`` mode an MX host the policy does not list gets a policy whose
``refused`` is set, and ``open_first`` skips it without connecting (RFC 8461 §5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mailwarden.delivery import dane
from mailwarden.delivery.mta_sts import MtaSts, StsLookup, target_policy
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy


class TlsPolicySelector:
    """The node's TLS policy selection (one per worker; holds the policy caches).

    ``mta_sts``: the worker's MTA-STS cache; None (the default) when ``[delivery] mta_sts``
    is off."""

    def __init__(self, *, mta_sts: MtaSts | None = None) -> None:
        self.mta_sts = mta_sts

    async def select(
        self, domain: str, targets: Sequence[Target], base: TlsPolicy
    ) -> list[TlsPolicy]:
        """The policy of each of ``targets`` (the MX targets of ``domain``, in order) when
        ``base`` is the route's policy. A route that says ``tls = "none"`` stays plaintext."""
        if base.mode is TlsMode.NONE:
            return [base] * len(targets)
        fallback = replace(base, policy_domain=domain)
        sts = await self._mta_sts(domain, base)
        policies = []
        for target in targets:
            dane = await self._dane(domain, target, base)
            sts_policy = target_policy(sts, domain, target, base) if sts is not None else None
            policies.append(dane or sts_policy or fallback)
        return policies

    async def _mta_sts(self, domain: str, base: TlsPolicy) -> StsLookup | None:
        """The recipient domain's MTA-STS policy (RFC 8461), or None when MTA-STS is off."""
        if self.mta_sts is None:
            return None
        return await self.mta_sts.lookup(domain)

    async def _dane(self, domain: str, target: Target, base: TlsPolicy) -> TlsPolicy | None:
        """The MX host's DANE policy (RFC 7672) when its TLSA RRset is authenticated, or None
        (:func:`mailwarden.delivery.dane.dane_policy`; ``[delivery] dane``)."""
        return await dane.dane_policy(domain, target, base)
