"""MTA-STS for outbound delivery (RFC 8461): discovery, HTTPS fetch, the policy cache, and
what a policy makes of each MX target's TLS policy.

- :mod:`.policy`: the TXT record and policy file grammars, MX pattern matching (pure);
- :mod:`.fetch`: the ``_mta-sts`` TXT look-up and the HTTPS fetch;
- :mod:`.store`: the SQLite file that keeps policies across restarts;
- :mod:`.cache`: :class:`MtaSts`, the per-worker cache the selector asks;
- :func:`target_policy` (here): a policy applied to one MX host.
"""

from __future__ import annotations

from dataclasses import replace

from mailwarden.delivery.mta_sts.cache import MtaSts, StsLookup
from mailwarden.delivery.mta_sts.policy import Policy, PolicyError, parse_policy, parse_txt
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import TlsMode, TlsPolicy

__all__ = [
    "MX_NOT_ALLOWED",
    "MtaSts",
    "Policy",
    "PolicyError",
    "StsLookup",
    "parse_policy",
    "parse_txt",
    "target_policy",
]

# RFC 8460 §4.3 has no result type of its own for an MX host the policy does not list; it
# is a failure to validate the host under the policy, the general "validation-failure".
MX_NOT_ALLOWED = "validation-failure"


def target_policy(
    lookup: StsLookup, domain: str, target: Target, base: TlsPolicy
) -> TlsPolicy | None:
    """The TLS policy MTA-STS gives ``target`` (an MX host of ``domain``) when the route's
    policy is ``base``; None when MTA-STS has nothing to say (no policy, mode ``none``).

    - ``enforce`` (§5): TLS with a certificate valid for the MX host name, chaining to the
      route's CA (``base.ca_file``, else the system store): mode ``required_verify``, source
      ``mta-sts``. An MX host no ``mx`` pattern matches must not be used: the policy's
      ``refused`` says why and the attempt skips the host without connecting.
    - ``testing``: delivered as ``base`` says, with the policy's report fields (RFC 8460
      §4.4), so outcomes are counted under the STS policy; an MX host not matching is
      noted in ``policy_failure``, reported but not enforced.
    - a failed fetch with nothing cached: ``base`` with policy type ``sts`` and the fetch's
      result type in ``policy_failure`` (``sts-policy-fetch-error`` and kin)."""
    cached = lookup.cached
    if cached is None:
        if lookup.failure is None:
            return None
        return replace(base, policy_type="sts", policy_domain=domain, policy_failure=lookup.failure)
    policy = cached.policy
    if policy.mode == "none":
        return None
    report = replace(
        base,
        policy_type="sts",
        policy_domain=domain,
        policy_strings=policy.lines,
        mx_patterns=policy.mx,
    )
    allowed = policy.allows(target.host)
    if policy.mode == "testing":
        return report if allowed else replace(report, policy_failure=MX_NOT_ALLOWED)
    enforced = replace(
        report, mode=TlsMode.REQUIRED_VERIFY, verify_name=target.host, source="mta-sts"
    )
    if not allowed:
        patterns = ", ".join(policy.mx)
        return replace(
            enforced,
            refused=f"MTA-STS policy of {domain} allows MX hosts {patterns}, not {target.host}",
        )
    return enforced
