"""``[delivery]`` and ``[[routes]]``: how accepted mail leaves the node.

The schema only; :class:`mailwarden.delivery.routes.RouteTable` turns it into routes, and
:func:`mailwarden.delivery.mx.resolve_targets` applies ``allow_ip_literals`` and
``ip_version``. DNS lookups use the ``[node] dns_servers`` / ``dns_timeout`` resolver, so
delivery is pointed at a given DNS server by the same two keys as the script library.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, field_validator, model_validator

from mailwarden.config.listen import is_hostname
from mailwarden.config.models import (
    _MODEL,
    HostName,
    RelativePath,
    TlsVersion,
    _invalid,
    _problems,
)
from mailwarden.delivery import routes as _routes  # module: its names are read at validation
from mailwarden.delivery.tls import TlsMode, TlsPolicy, certificate_problem


def _check_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _invalid(
            f"expected an IP address of this machine such as '192.0.2.10' or '2001:db8::10', "
            f"got {value!r}"
        ) from None


IpAddress = Annotated[str, AfterValidator(_check_ip)]


def _check_pattern(value: str) -> str:
    # Postfix transport(5) patterns: "example.net" exactly, ".example.net" its subdomains.
    pattern = value.strip().lower().rstrip(".")
    if pattern == "*":
        return pattern
    name = pattern[1:] if pattern.startswith(".") else pattern
    if not name or name.startswith(".") or not is_hostname(name):
        raise _invalid(
            "expected a domain ('example.net'), '.example.net' for its subdomains, or '*' for "
            f"every domain, got {value!r}"
        )
    return pattern


DomainPattern = Annotated[str, AfterValidator(_check_pattern)]


class SourceAddressSettings(BaseModel):
    """A local address to send from: ``{ address = "192.0.2.10", helo = "out1.example" }``.

    In a route's ``source_ips`` the address alone (``"192.0.2.10"``) is enough: the HELO name
    is then the pool entry's with that address, else ``[delivery] helo``."""

    model_config = _MODEL

    address: IpAddress = Field(description="Local IP address to bind outgoing connections to.")
    helo: HostName | None = Field(
        None, description="EHLO name sent from this address: its PTR name. Default delivery.helo."
    )

    @model_validator(mode="before")
    @classmethod
    def _address_alone(cls, data: Any) -> Any:
        return {"address": data} if isinstance(data, str) else data


def _unique_addresses(value: list[SourceAddressSettings]) -> list[SourceAddressSettings]:
    found: list[tuple[tuple[str | int, ...], str]] = []
    first: dict[str, int] = {}
    for index, source in enumerate(value):
        if source.address in first:
            found.append(
                (
                    (index, "address"),
                    f"expected each address once, but {source.address} is also "
                    f"entry {first[source.address]}",
                )
            )
        first.setdefault(source.address, index)
    if found:
        raise _problems(found)
    return value


SourcePool = Annotated[list[SourceAddressSettings], AfterValidator(_unique_addresses)]


def _ca_file_problems(path: Path | None) -> list[tuple[str, str]]:
    """``("tls_ca_file", problem)`` when the CA file is set but cannot be read."""
    if path is None:
        return []
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        return [("tls_ca_file", f"expected a readable PEM file, but {path} {what}")]
    try:
        path.open("rb").close()
    except OSError as err:
        return [("tls_ca_file", f"expected a readable PEM file, but {path}: {err.strerror}")]
    return []


def _client_pair_problems(settings: DeliverySettings | RouteSettings) -> list[tuple[str, str]]:
    """``(key, problem)`` when the client certificate or its key cannot be presented."""
    certificate, key = settings.tls_client_certificate, settings.tls_client_key
    if certificate is None:
        return []
    for name, path in (("tls_client_certificate", certificate), ("tls_client_key", key)):
        if path is not None and not path.is_file():
            what = "is not a regular file" if path.exists() else "does not exist"
            return [(name, f"expected a readable PEM file, but {path} {what}")]
    problem = certificate_problem(certificate, key)
    if problem is None:
        return []
    return [("tls_client_key", f"expected the key of {certificate.name}, but {problem}")]


def _client_pair_check(settings: DeliverySettings | RouteSettings) -> None:
    """Set both or neither of tls_client_certificate and tls_client_key."""
    pair = "as well; set both or neither"
    if settings.tls_client_certificate is not None and settings.tls_client_key is None:
        raise _problems([(("tls_client_certificate",), f"expected tls_client_key {pair}")])
    if settings.tls_client_key is not None and settings.tls_client_certificate is None:
        raise _problems([(("tls_client_key",), f"expected tls_client_certificate {pair}")])


def _tls_policy(
    mode: TlsMode,
    ca_file: Path | None,
    verify_name: str | None,
    source: str,
    client: tuple[Path | None, Path | None] = (None, None),
    sni: str | None = None,
    min_version: str = "TLSv1.2",
) -> TlsPolicy:
    return TlsPolicy(
        mode=mode,
        verify_name=verify_name,
        ca_file=ca_file,
        source=source,
        client_certificate=client[0],
        client_key=client[1],
        sni=sni,
        min_version=min_version,
    )


class DeliverySettings(BaseModel):
    """``[delivery]``: defaults of every outbound attempt; routes override some of them."""

    model_config = _MODEL

    helo: HostName | None = Field(None, description="EHLO name; default node.hostname.")
    source_ips: SourcePool = Field(
        default_factory=list,
        description="Local addresses to send from, each with its HELO name; empty: the kernel's.",
    )
    allow_ip_literals: bool = Field(
        False, description="Deliver to user@[192.0.2.1] address literals (else bounce 5.1.2)."
    )
    ip_version: Literal["any", "ipv4", "ipv6"] = Field(
        "any", description="Which addresses of a host to connect to."
    )
    port: int = Field(25, ge=1, le=65535, description="TCP port of MX hosts and address literals.")
    connect_timeout: float = Field(
        30.0, gt=0, le=600, allow_inf_nan=False, description="Seconds a TCP connect may take."
    )
    mx_address_limit: int = Field(
        5, ge=0, description="Addresses (of all MX hosts) tried per attempt; 0: all."
    )
    mx_session_limit: int = Field(
        2, ge=0, description="Servers that greeted but failed, tried per attempt; 0: all."
    )
    tls: TlsMode = Field(TlsMode.OPTIONAL, strict=False, description="Outbound TLS mode.")
    dane: Literal["opportunistic", "off"] = Field(
        "opportunistic",
        description="DANE (RFC 7672) for MX hosts with DNSSEC-authenticated TLSA records.",
    )
    tls_ca_file: RelativePath | None = Field(
        None, description="PEM CA bundle to verify servers with; default the system store."
    )
    tls_verify_name: HostName | None = Field(
        None, description="Name the certificate must match; default the host connected to."
    )
    tls_client_certificate: RelativePath | None = Field(
        None, description="PEM certificate chain presented to servers that ask for one."
    )
    tls_client_key: RelativePath | None = Field(
        None, description="PEM private key of tls_client_certificate."
    )
    tls_sni: HostName | None = Field(
        None, description="SNI name sent; default the name verified (tls_verify_name or host)."
    )
    tls_min_version: TlsVersion = Field("TLSv1.2", description="Oldest TLS version offered.")
    mta_sts: bool = Field(
        True, description="Honour recipient domains' MTA-STS policies (RFC 8461) for MX delivery."
    )
    mta_sts_ca_file: RelativePath | None = Field(
        None, description="PEM CA bundle for MTA-STS policy hosts; default the system store."
    )
    max_connections_per_destination: int = Field(
        20, ge=1, le=10000, description="Concurrent connections to one destination."
    )
    max_messages_per_connection: int = Field(
        100, ge=1, description="Messages sent over one connection before it is closed."
    )
    idle_timeout: float = Field(
        5.0,
        ge=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds an idle connection is kept for reuse.",
    )

    @model_validator(mode="after")
    def _client_pair(self) -> DeliverySettings:
        _client_pair_check(self)
        return self

    def file_problems(self) -> list[tuple[str, str]]:
        """``(key, problem)`` for each configured file that cannot be read."""
        sts = [("mta_sts_ca_file", why) for _, why in _ca_file_problems(self.mta_sts_ca_file)]
        return _ca_file_problems(self.tls_ca_file) + _client_pair_problems(self) + sts

    def tls_policy(self) -> TlsPolicy:
        """The TLS policy of the default route."""
        return _tls_policy(
            self.tls,
            self.tls_ca_file,
            self.tls_verify_name,
            "config",
            (self.tls_client_certificate, self.tls_client_key),
            self.tls_sni,
            self.tls_min_version,
        )


_TLS_KEYS = frozenset(
    {
        "tls",
        "tls_ca_file",
        "tls_verify_name",
        "tls_client_certificate",
        "tls_client_key",
        "tls_sni",
        "tls_min_version",
    }
)


class RouteSettings(BaseModel):
    """``[[routes]]``: one static route, tried in file order."""

    model_config = _MODEL

    domains: list[DomainPattern] = Field(
        min_length=1,
        description="Recipient domains: 'example.net', '.example.net' (subdomains), '*'.",
        examples=[["example.net", ".example.net"]],
    )
    next_hop: str | None = Field(
        None,
        description="'[host]:port' (no MX lookup) or 'host:port' (MX lookup); default MX.",
        examples=["[10.0.0.5]:2525"],
    )
    protocol: Literal["smtp", "lmtp"] = Field("smtp", description="smtp, or lmtp (RFC 2033).")
    auth_username: str | None = Field(None, description="AUTH user name at the next hop.")
    auth_password: str | None = Field(None, description="AUTH password at the next hop.")
    tls: TlsMode | None = Field(None, strict=False, description="TLS mode; default delivery.tls.")
    tls_ca_file: RelativePath | None = Field(None, description="Default delivery.tls_ca_file.")
    tls_verify_name: HostName | None = Field(
        None, description="Default delivery.tls_verify_name, else the host connected to."
    )
    tls_client_certificate: RelativePath | None = Field(
        None, description="Client certificate to present; default delivery's."
    )
    tls_client_key: RelativePath | None = Field(
        None, description="Its PEM private key; default delivery.tls_client_key."
    )
    tls_sni: HostName | None = Field(None, description="SNI name sent; default delivery.tls_sni.")
    tls_min_version: TlsVersion | None = Field(
        None, description="Oldest TLS version offered; default delivery.tls_min_version."
    )
    source_ips: SourcePool = Field(
        default_factory=list,
        description="Local addresses for this route; default delivery.source_ips.",
    )

    @field_validator("next_hop")
    @classmethod
    def _valid_hop(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                _routes.parse_next_hop(value)
            except ValueError as err:
                raise _invalid(str(err)) from None
        return value

    @model_validator(mode="after")
    def _auth_pair(self) -> RouteSettings:
        found: list[tuple[tuple[str | int, ...], str]] = []
        pair = "as well; set both or neither"
        if self.auth_username is not None and self.auth_password is None:
            found.append((("auth_username",), f"expected auth_password {pair}"))
        if self.auth_password is not None and self.auth_username is None:
            found.append((("auth_password",), f"expected auth_username {pair}"))
        if (self.tls_client_certificate is None) != (self.tls_client_key is None):
            _client_pair_check(self)
        if self.protocol == "lmtp" and self.next_hop is None:
            found.append((("protocol",), "expected a next_hop: LMTP is never found by MX lookup"))
        if found:
            raise _problems(found)
        return self

    @property
    def hop(self) -> _routes.NextHop | None:
        """The parsed next hop; without ``:port`` LMTP takes port 24, SMTP 25."""
        if self.next_hop is None:
            return None
        if self.protocol == "smtp":
            return _routes.parse_next_hop(self.next_hop)
        # Postfix's lmtp(8) connects to the named host itself ("inet:host:port"), never to
        # its mail exchangers: LMTP goes to one known store, not to a domain's MX.
        hop = _routes.parse_next_hop(self.next_hop, default_port=_routes.LMTP_PORT)
        return _routes.NextHop(hop.host, hop.port, mx_lookup=False)

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.auth_username is None or self.auth_password is None:
            return None
        return (self.auth_username, self.auth_password)

    def file_problems(self) -> list[tuple[str, str]]:
        """``(key, problem)`` for each configured file that cannot be read."""
        return _ca_file_problems(self.tls_ca_file) + _client_pair_problems(self)

    def tls_policy(self, delivery: DeliverySettings) -> TlsPolicy:
        """This route's TLS policy: its own keys, else ``[delivery]``'s."""
        return _tls_policy(
            self.tls if self.tls is not None else delivery.tls,
            self.tls_ca_file if self.tls_ca_file is not None else delivery.tls_ca_file,
            self.tls_verify_name if self.tls_verify_name is not None else delivery.tls_verify_name,
            "route" if self.model_fields_set & _TLS_KEYS else "config",
            # The pair goes together: a route's certificate never with delivery's key.
            (self.tls_client_certificate, self.tls_client_key)
            if self.tls_client_certificate is not None
            else (delivery.tls_client_certificate, delivery.tls_client_key),
            self.tls_sni if self.tls_sni is not None else delivery.tls_sni,
            self.tls_min_version or delivery.tls_min_version,
        )
