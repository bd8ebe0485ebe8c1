"""From a message to attempts: which recipients go together, where, and how.

Recipients of one message are grouped by destination domain; each group is one attempt. The
attempt's route (``[[routes]]``, else MX of the domain) gives the next hop, protocol, TLS
policy, AUTH and source addresses; ``pre_delivery`` may change any of them; the result is a
:class:`Destination` key — attempts with the same key share connections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailwarden.delivery.connection import ConnectOptions
from mailwarden.delivery.errors import DeliveryError, DeliveryReply
from mailwarden.delivery.routes import (
    NextHop,
    Route,
    RouteTable,
    SourceAddress,
    format_next_hop,
    parse_next_hop,
)
from mailwarden.delivery.tls import MIN_VERSIONS, TlsMode, TlsPolicy
from mailwarden.policy.delivery import AttemptRecipient, DeliveryAttempt
from mailwarden.smtp.client import TIMEOUTS, Timeouts
from mailwarden.spool.records import SpoolRecord
from mailwarden.tlsrpt.recorder import REPORT_METADATA, REPORT_TLS_SOURCE


@dataclass(frozen=True, slots=True)
class DestinationKey:
    """Everything that decides whether two attempts may share a connection."""

    domain: str  # the MX lookup name when ``hop`` is None; else "" unless shaping needs it
    hop: NextHop | None
    protocol: str
    tls: TlsPolicy
    source: SourceAddress | None
    helo: str
    auth: tuple[str, str] | None
    shaping: tuple[tuple[str, str], ...]  # the metadata values the shaping rules group by

    @property
    def name(self) -> str:
        """How logs and the CLI name the destination."""
        return self.domain if self.hop is None else format_next_hop(self.hop)

    def options(self, connect_timeout: float, timeouts: Timeouts = TIMEOUTS) -> ConnectOptions:
        return ConnectOptions(
            helo=self.helo,
            source_ip=self.source.address if self.source else None,
            tls=self.tls,
            lmtp=self.protocol == "lmtp",
            auth=self.auth,
            connect_timeout=connect_timeout,
            timeouts=timeouts,
        )


def recipient_domain(address: str) -> str:
    """The domain of a forward-path, lower case ("" for a bare postmaster)."""
    _, at, domain = address.rpartition("@")
    return domain.lower() if at else ""


def group_by_domain(record: SpoolRecord, positions: Sequence[int]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for position in positions:
        groups.setdefault(recipient_domain(record.recipients[position].address), []).append(
            position
        )
    return groups


@dataclass(frozen=True, slots=True)
class Planner:
    """The node's delivery settings, turned into attempts and destination keys."""

    routes: RouteTable
    helo: str
    shaping_metadata: tuple[str, ...] = ()  # metadata keys some [[shaping]] rule groups by
    # Some [[shaping]] rule groups by or matches on the recipient domain: then even attempts to
    # one next hop keep apart by domain, so that a connection's slots are those of its domain.
    shaping_by_domain: bool = False

    def attempt(
        self, record: SpoolRecord, domain: str, positions: Sequence[int], route: Route
    ) -> DeliveryAttempt:
        """The attempt for ``positions`` of ``record`` (all of ``domain``, which ``route``
        serves), with the route's settings filled in for pre_delivery to read and change."""
        hop = route.next_hop
        # Stable per destination: every worker sends one destination's mail from one address.
        source = route.source_for(route.destination(domain))
        recipients = tuple(
            AttemptRecipient(
                address=record.recipients[p].address,
                params=dict(record.recipients[p].params),
                metadata=dict(record.recipients[p].metadata),
                retry_count=record.recipients[p].retry_count,
                position=p,
            )
            for p in positions
        )
        tls = route.tls
        if REPORT_METADATA in record.metadata and tls.mode is not TlsMode.NONE:
            # A TLS report is delivered despite TLS failures (RFC 8460 §5.3): opportunistic,
            # whatever the route asks (pre_delivery may still change it).
            tls = TlsPolicy(TlsMode.OPTIONAL, tls.verify_name, tls.ca_file, tls.source)
        return DeliveryAttempt(
            message_id=record.id,
            sender=record.sender,
            recipients=recipients,
            domain=domain,
            metadata=dict(record.metadata),
            size=record.size,
            received_at=record.received_at,
            retry_count=max(r.retry_count for r in recipients),
            next_hop=format_next_hop(hop) if hop else None,
            port=hop.port if hop else None,
            protocol=route.protocol,
            source_ip=source.address if source else None,
            helo=route.helo_for(source),
            tls=tls.mode.value,
            tls_verify_name=tls.verify_name,
            tls_sni=tls.sni,
            tls_min_version=tls.min_version,
            tls_client_certificate=str(tls.client_certificate) if tls.client_certificate else None,
            tls_client_key=str(tls.client_key) if tls.client_key else None,
            auth=route.auth,
        )

    def destination(self, attempt: DeliveryAttempt, ca_file: Path | None) -> DestinationKey:
        """The destination key of ``attempt`` as pre_delivery left it.

        Raises DeliveryError (stage ``policy``, 4.3.5) when a field the script set is not
        valid: a temporary failure, since fixing the script fixes it."""
        try:
            hop = _hop(attempt.next_hop, attempt.port)
            mode = TlsMode(attempt.tls)
            client = _client_pair(attempt)
            if attempt.tls_min_version not in MIN_VERSIONS:
                raise ValueError(f"tls_min_version {attempt.tls_min_version!r}")
        except ValueError as error:
            reply = DeliveryReply(451, "4.3.5", f"pre_delivery set an invalid value: {error}")
            raise DeliveryError(reply, stage="policy") from None
        source_name = REPORT_TLS_SOURCE if REPORT_METADATA in attempt.metadata else "route"
        tls = TlsPolicy(
            mode,
            attempt.tls_verify_name,
            ca_file,
            source=source_name,
            client_certificate=client[0],
            client_key=client[1],
            sni=attempt.tls_sni,
            min_version=attempt.tls_min_version,
        )
        source = None
        if attempt.source_ip:
            source = SourceAddress(attempt.source_ip, attempt.helo)
        shaping = tuple((key, str(attempt.metadata.get(key, ""))) for key in self.shaping_metadata)
        # A next hop of the route's own (a smarthost, a mail store) takes every domain's mail
        # over the same connections, as Postfix's relayhost does; only an MX lookup needs it.
        keep_domain = hop is None or self.shaping_by_domain
        return DestinationKey(
            domain=attempt.domain if keep_domain else "",
            hop=hop,
            protocol=attempt.protocol if attempt.protocol in ("smtp", "lmtp") else "smtp",
            tls=tls,
            source=source,
            helo=attempt.helo or self.helo,
            auth=tuple(attempt.auth) if attempt.auth else None,  # type: ignore[arg-type]
            shaping=shaping,
        )


def _client_pair(attempt: DeliveryAttempt) -> tuple[Path | None, Path | None]:
    """The client certificate and key pre_delivery left; ValueError unless both or neither."""
    certificate, key = attempt.tls_client_certificate, attempt.tls_client_key
    if (certificate is None) != (key is None):
        raise ValueError("tls_client_certificate and tls_client_key go together")
    if certificate is None or key is None:
        return (None, None)
    return (Path(certificate), Path(key))


def _hop(text: str | None, port: int | None) -> NextHop | None:
    if not text:
        return None
    hop = parse_next_hop(text)
    if port is not None and port != hop.port:
        return NextHop(hop.host, port, hop.mx_lookup)
    return hop


def metadata_keys(fields: Sequence[str]) -> Mapping[str, str]:
    """The metadata keys among shaping fields (``metadata.tenant`` → ``tenant``)."""
    return {f: f.split(".", 1)[1] for f in fields if f.startswith("metadata.")}
