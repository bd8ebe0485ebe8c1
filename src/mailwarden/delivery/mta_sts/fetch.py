"""Finding and fetching a domain's MTA-STS policy: the ``_mta-sts`` TXT record (RFC 8461
§3.1) and ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (§3.3).

The policy host is resolved through the node's resolver (:mod:`mailwarden.lib.dns`, the
``[node] dns_servers``), and httpx connects to each of its addresses in turn while sending
SNI and ``Host: mta-sts.<domain>`` and verifying the certificate for that name (WebPKI:
the system store, or the ``[delivery] mta_sts_ca_file`` bundle). Redirects are not followed
and nothing is cached by HTTP (§3.3); only a 2xx ``text/plain`` answer of at most
:data:`MAX_POLICY_BYTES` counts.

Failures are :class:`FetchError` carrying the RFC 8460 §4.3.2.1 result type a TLS report
counts them under: ``sts-webpki-invalid`` (the certificate did not verify),
``sts-policy-invalid`` (the file does not parse) or ``sts-policy-fetch-error`` (anything else).
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import httpx

from mailwarden.delivery.mta_sts.policy import Policy, PolicyError, parse_policy, parse_txt
from mailwarden.lib import dns

__all__ = ["FETCH_TIMEOUT", "MAX_POLICY_BYTES", "FetchError", "discover", "fetch_policy"]

MAX_POLICY_BYTES = 64 * 1024  # §3.3: "senders SHOULD impose a limit", 64 KiB suggested
FETCH_TIMEOUT = 60.0  # seconds for the whole fetch (§3.3 suggests waiting up to a minute)
POLICY_PATH = "/.well-known/mta-sts.txt"


class FetchError(Exception):
    """The policy could not be fetched or is malformed; ``result_type`` is the RFC 8460
    result type (``sts-policy-fetch-error``, ``sts-webpki-invalid``, ``sts-policy-invalid``)."""

    def __init__(self, result_type: str, detail: str) -> None:
        super().__init__(f"{result_type}: {detail}")
        self.result_type = result_type
        self.detail = detail


async def discover(domain: str, *, timeout: float | None = None) -> str | None:
    """The policy id the domain's ``_mta-sts`` TXT record announces, or None when it has no
    usable record: records not starting ``v=STSv1`` are discarded, and anything but exactly
    one remaining valid record means no policy (§3.1). Raises dns.DnsError on a temporary
    DNS failure (then a cached policy still applies, §5.1)."""
    records = await dns.txt(f"_mta-sts.{domain}", timeout=timeout)
    candidates = [r for r in records if r.startswith("v=STSv1")]
    if len(candidates) != 1:
        return None
    try:
        return parse_txt(candidates[0])
    except PolicyError:
        return None


async def _addresses(host: str, timeout: float) -> list[str]:
    try:
        found = [*await dns.aaaa(host, timeout=timeout), *await dns.a(host, timeout=timeout)]
    except dns.DnsError as error:
        raise FetchError("sts-policy-fetch-error", str(error)) from None
    if not found:
        raise FetchError("sts-policy-fetch-error", f"{host} has no address")
    return found


def _url(address: str, port: int) -> str:
    literal = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"https://{literal}:{port}{POLICY_PATH}"


def _context(ca_file: Path | None) -> ssl.SSLContext:
    # CERT_REQUIRED and check_hostname: the name checked is the SNI name httpx is given.
    return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)


async def fetch_policy(
    domain: str,
    *,
    ca_file: Path | None = None,
    port: int = 443,
    timeout: float = FETCH_TIMEOUT,
) -> tuple[Policy, str]:
    """Fetch and parse ``domain``'s policy; returns it with the file's text.

    Each address of ``mta-sts.<domain>`` is tried until one answers over verified TLS;
    raises FetchError (see the module docstring) when none gives a valid policy."""
    host = f"mta-sts.{domain}"
    addresses = await _addresses(host, min(timeout, dns.timeout()))
    errors: list[FetchError] = []
    async with httpx.AsyncClient(
        verify=_context(ca_file), follow_redirects=False, timeout=timeout, trust_env=False
    ) as client:
        for address in addresses:
            try:
                text = await _get(client, _url(address, port), host)
            except FetchError as error:
                errors.append(error)
                continue
            try:
                return parse_policy(text), text
            except PolicyError as error:
                raise FetchError("sts-policy-invalid", f"{host}: {error}") from None
    # A certificate problem is the more telling one when addresses differ in their failures.
    errors.sort(key=lambda e: e.result_type != "sts-webpki-invalid")
    raise errors[0]


async def _get(client: httpx.AsyncClient, url: str, host: str) -> str:
    headers = {"Host": host, "Cache-Control": "no-cache", "Accept": "text/plain"}
    try:
        async with client.stream(
            "GET", url, headers=headers, extensions={"sni_hostname": host}
        ) as response:
            if not 200 <= response.status_code < 300:
                # 3xx included: redirects MUST NOT be followed (§3.3).
                raise FetchError(
                    "sts-policy-fetch-error", f"{host} answered {response.status_code}"
                )
            media = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise FetchError(
                    "sts-policy-fetch-error",
                    f"{host} sent {media or 'no'} media type, not text/plain",
                )
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_POLICY_BYTES:
                    raise FetchError(
                        "sts-policy-fetch-error",
                        f"{host}: policy larger than {MAX_POLICY_BYTES} bytes",
                    )
    except httpx.ConnectError as error:
        if _is_verification_error(error):
            raise FetchError("sts-webpki-invalid", f"{host}: {error}") from None
        raise FetchError("sts-policy-fetch-error", f"{host}: {error}") from None
    except httpx.HTTPError as error:
        raise FetchError("sts-policy-fetch-error", f"{host}: {error!r}") from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise FetchError("sts-policy-invalid", f"{host}: policy is not UTF-8") from None


def _is_verification_error(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)
