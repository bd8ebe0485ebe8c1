"""The one family of delivery errors: every outbound failure as the reply it stands for.

A remote server's own reply is kept as it came (code, enhanced code, text); a failure of our
own (no route, DNS, connection refused, TLS policy, timeout) is given the reply a DSN would
carry for it (RFC 3463 enhanced codes), so the queue manager treats both alike: 4xx retries,
5xx bounces.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailwarden.smtp.reply_parser import ServerReply


@dataclass(frozen=True, slots=True)
class DeliveryReply:
    """A reply for one recipient or one attempt: what the remote said, or what we conclude.

    ``remote`` is False for replies Mailwarden made itself (a DSN then says so: no
    Remote-MTA, Diagnostic-Code type ``x-mailwarden`` instead of ``smtp``)."""

    code: int
    enhanced: str
    text: str
    remote: bool = False

    def __post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"reply code {self.code} is not 2xx..5xx")
        klass = self.enhanced.split(".", 1)[0]
        if klass != str(self.code // 100) and self.code >= 400:
            raise ValueError(f"enhanced code {self.enhanced} does not match {self.code}")

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def success(self) -> bool:
        return self.code < 300

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".rstrip()

    @classmethod
    def from_server(cls, reply: ServerReply) -> DeliveryReply:
        """A remote reply as received. Without an enhanced code (RFC 2034 is optional) the
        class default X.0.0 stands in, as Postfix does."""
        enhanced = reply.enhanced or f"{reply.code // 100}.0.0"
        return cls(reply.code, enhanced, " ".join(reply.lines).strip(), remote=True)


class DeliveryError(Exception):
    """An attempt failed before every recipient got its own reply.

    ``reply`` is what every recipient of the attempt gets (temporary: retry; permanent:
    bounce). ``stage`` names where it failed (``dns``, ``connect``, ``greeting``, ``ehlo``,
    ``tls``, ``auth``, ``mail``, ``data``, ``timeout``, ``route``, ``policy``) and ``host`` the
    remote it concerns, for logs and for post_delivery. ``tls_failure``: for a TLS policy
    failure, its RFC 8460 §4.3 result type (``starttls-not-supported``,
    ``certificate-host-mismatch``, ``tlsa-invalid``, ...), which TLS reports count, with
    ``source_ip`` the local address the failed session came from (RFC 8460 sending-mta-ip)."""

    def __init__(
        self,
        reply: DeliveryReply,
        *,
        stage: str,
        host: str | None = None,
        tls_failure: str | None = None,
        source_ip: str | None = None,
    ) -> None:
        super().__init__(f"{stage}{' ' + host if host else ''}: {reply}")
        self.reply = reply
        self.stage = stage
        self.host = host
        self.tls_failure = tls_failure
        self.source_ip = source_ip

    @property
    def permanent(self) -> bool:
        return self.reply.permanent
