"""The configuration schema: one pydantic model per TOML table.

Every model forbids unknown keys, is frozen, and validates strictly (TOML has real integers,
floats and booleans, so ``"30"`` where a number belongs is an error, not a conversion).
Relative paths are resolved against the directory of the configuration file, passed in the
validation context as ``base_dir`` (the working directory when there is no file).

Validation failures raise pydantic's ``ValidationError``; :func:`mailwarden.config.load_config`
turns them into a :class:`~mailwarden.config.ConfigError` naming file, line and key.
Cross-field checks report through :func:`_problems`, which carries each problem's key path
relative to the model so the loader can point at the right line.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from mailwarden.config.errors import ConfigError, format_problem
from mailwarden.config.library import LibrarySettings
from mailwarden.config.listen import (
    address_family,
    format_listen_address,
    is_hostname,
    is_wildcard,
    parse_listen_address,
)
from mailwarden.config.locations import KeyPath, line_of
from mailwarden.config.metrics import MetricsSettings
from mailwarden.config.queue import QueueSettings, ShapingRules
from mailwarden.smtp.address import Limits
from mailwarden.smtp.protocol import BareLineEndings, ProtocolSettings

DATA_DIR_ENV = "MAILWARDEN_DATA_DIR"
SYSTEM_DATA_DIR = Path("/var/lib/mailwarden")
SERVER_ID_PATTERN = "^[a-z0-9][a-z0-9_-]*$"

_MODEL = ConfigDict(extra="forbid", frozen=True, strict=True)

# Error type for problems found by Mailwarden's own checks (as opposed to pydantic's).
PROBLEM_TYPE = "mailwarden_config"
# Error type for a cross-field check that found one or more problems at given sub-paths.
PROBLEMS_TYPE = "mailwarden_config_problems"


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError(PROBLEM_TYPE, "{message}", {"message": message})


def _problems(found: list[tuple[tuple[str | int, ...], str]]) -> PydanticCustomError:
    """One error carrying several problems, each with its key path relative to the model."""
    summary = "; ".join(".".join(map(str, path)) + ": " + text for path, text in found)
    return PydanticCustomError(PROBLEMS_TYPE, "{summary}", {"summary": summary, "problems": found})


# -- field types ----------------------------------------------------------------------------


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return Path(os.path.normpath(Path(base) / value.expanduser()))


# A path in the file, resolved against the configuration file's directory.
RelativePath = Annotated[Path, Field(strict=False), AfterValidator(_resolve_path)]


def _check_listen(value: str) -> str:
    try:
        return format_listen_address(*parse_listen_address(value))
    except ValueError as err:
        raise _invalid(f"invalid listen address {value!r}: {err}") from None


ListenAddress = Annotated[str, AfterValidator(_check_listen)]


def _check_hostname(value: str) -> str:
    if not is_hostname(value):
        raise _invalid(f"expected a host name such as 'mx.example.com', got {value!r}")
    return value.rstrip(".")


HostName = Annotated[str, AfterValidator(_check_hostname)]


def _check_domain(value: str) -> str:
    if not is_hostname(value):
        raise _invalid(f"expected a domain name such as 'example.com', got {value!r}")
    return value.lower().rstrip(".")


DomainName = Annotated[str, AfterValidator(_check_domain)]


def _check_certificate_name(value: str) -> str:
    """A host name a certificate is served for, or ``*.`` and a domain (RFC 6125 §6.4.3)."""
    bare = value[2:] if value.startswith("*.") else value
    if not is_hostname(bare):
        raise _invalid(
            f"expected a host name such as 'mx.example.com' or '*.example.com', got {value!r}"
        )
    return value.lower().rstrip(".")


CertificateName = Annotated[str, AfterValidator(_check_certificate_name)]


def _check_network(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as err:
        hint = ""
        with contextlib.suppress(ValueError):
            hint = f"; did you mean '{ipaddress.ip_network(value, strict=False)}'?"
        raise _invalid(
            f"expected a network in CIDR notation such as '10.0.0.0/8' or '2001:db8::/32', "
            f"got {value!r} ({err}){hint}"
        ) from None


Network = Annotated[str, AfterValidator(_check_network)]


def _check_server_id(value: str) -> str:
    if not value or len(value) > 64 or not value.isascii():
        ok = False
    else:
        ok = value[0] in "abcdefghijklmnopqrstuvwxyz0123456789" and all(
            c in "abcdefghijklmnopqrstuvwxyz0123456789_-" for c in value
        )
    if not ok:
        raise _invalid(
            "expected an id of at most 64 lower-case letters, digits, '-' and '_', starting "
            f"with a letter or digit, got {value!r}"
        )
    return value


def _check_banner(value: str) -> str:
    # The banner goes into the 220 greeting; a CR or LF would let it inject reply lines, and
    # the whole reply line must stay within RFC 5321 §4.5.3.1.5's 512 octets.
    if not value.isascii() or not value.isprintable() or len(value) > 200:
        raise _invalid(
            f"expected at most 200 printable ASCII characters (no line breaks), got {value!r}"
        )
    return value


def _check_account_name(value: str) -> str:
    # A user or group name as useradd(8) accepts it; looked up when the node starts, since
    # the file may be checked on a machine where the account does not exist yet.
    if not value or len(value) > 32 or not value.isascii() or value.startswith("-"):
        ok = False
    else:
        ok = all(c.isalnum() or c in "._-$" for c in value) and not value.isdigit()
    if not ok:
        raise _invalid(f"expected a user or group name such as 'mailwarden', got {value!r}")
    return value


def _check_dns_server(value: str) -> str:
    # A resolver is reached by address: naming it by host name would need a resolver first.
    try:
        host, port = parse_listen_address(value)
        ipaddress.ip_address(host)
    except ValueError:
        raise _invalid(
            f"expected a DNS server as 'ip:port', as in '127.0.0.1:53' or '[::1]:53', got {value!r}"
        ) from None
    if port == 0:
        raise _invalid(f"expected a DNS server port from 1 to 65535, got {value!r}")
    return value


# -- defaults -------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """Where the node keeps its spool and databases unless ``node.data_dir`` says otherwise.

    The same for every command a user runs, wherever it is started, so that ``mailwarden
    queue list`` finds the spool ``mailwarden run`` writes: ``$MAILWARDEN_DATA_DIR`` (a relative
    value is taken against the working directory), else ``/var/lib/mailwarden`` for root (the
    FHS place for a service's state), else the user's data directory
    (``platformdirs.user_data_dir``: ``$XDG_DATA_HOME/mailwarden``, by default
    ``~/.local/share/mailwarden`` on Linux).
    """
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser().absolute()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return SYSTEM_DATA_DIR
    return Path(platformdirs.user_data_dir("mailwarden", appauthor=False))


@functools.cache
def default_hostname() -> str:
    """This machine's fully qualified name (looked up once per process)."""
    return socket.getfqdn()


# -- tables ---------------------------------------------------------------------------------


class NodeSettings(BaseModel):
    """``[node]``: settings of this machine as a whole."""

    model_config = _MODEL

    data_dir: RelativePath = Field(
        default_factory=default_data_dir,
        validate_default=True,
        description="Directory for the spool and local databases.",
    )
    workers: int = Field(
        0, ge=0, le=1024, description="Worker processes sharing the listeners; 0: one per core."
    )
    pin_workers: bool = Field(
        True, description="With several workers, keep each on its own CPU core."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Least severe log level written."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text, or one JSON object per line."
    )
    shutdown_grace: float = Field(
        30.0,
        ge=0,
        allow_inf_nan=False,
        description="Seconds transactions in flight get to finish on SIGTERM/SIGINT.",
    )
    hostname: HostName = Field(
        default_factory=default_hostname,
        description="This node's name: default greeting and Received: host name.",
    )
    user: Annotated[str, AfterValidator(_check_account_name)] | None = Field(
        None, description="Unprivileged user the node serves as once its ports are bound."
    )
    group: Annotated[str, AfterValidator(_check_account_name)] | None = Field(
        None, description="Group the node serves as; default: node.user's primary group."
    )
    dns_servers: list[Annotated[str, AfterValidator(_check_dns_server)]] = Field(
        default_factory=list,
        description="DNS servers of the script library ('ip:port'); empty: /etc/resolv.conf.",
    )
    dns_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Seconds a script library DNS lookup may take before it fails (4xx).",
    )

    @property
    def worker_count(self) -> int:
        """The number of worker processes to run: ``workers``, or when 0 one per CPU this
        process may run on (its affinity mask, which containers and cpusets narrow)."""
        if self.workers:
            return self.workers
        try:
            return len(os.sched_getaffinity(0)) or 1
        except (AttributeError, OSError):  # no affinity call on this OS
            return os.cpu_count() or 1


class SpoolSettings(BaseModel):
    """``[spool]``: the durable message store."""

    model_config = _MODEL

    path: RelativePath = Field(
        default_factory=lambda: default_data_dir() / "spool",
        validate_default=True,
        description="Spool directory (default: data_dir/spool).",
    )
    memory_threshold: int = Field(
        131072,
        ge=0,
        description="Message bytes kept in memory before spilling to a file.",
    )
    group_commit_max_batch: int = Field(
        256, ge=1, description="Most transactions that share one fsync."
    )
    fsync: bool = Field(True, description="fsync before acknowledging. False is unsafe.")


class LimitSettings(BaseModel):
    """``[servers.limits]``: RFC 5321 §4.5.3 limits and timeouts of one listener.

    The §4.5.3.1 sizes are minimum maximums every server must accept: they may be raised but
    never set below the RFC value.
    """

    model_config = _MODEL

    command_line: int = Field(512, ge=512, description="Octets per command line, CRLF included.")
    text_line: int = Field(
        1000, ge=1000, description="Octets per line of message text, when strict_line_length."
    )
    strict_line_length: bool = Field(
        False, description="Refuse a message with a line longer than text_line (500 5.5.2)."
    )
    local_part: int = Field(64, ge=64, description="Octets in the local part of an address.")
    domain: int = Field(255, ge=255, description="Octets in a domain name.")
    path: int = Field(256, ge=256, description="Octets in a reverse- or forward-path.")
    recipients: int = Field(1000, ge=1, description="Recipients per transaction.")
    message_size: int = Field(52428800, ge=1, description="Octets per message (SIZE).")
    errors: int = Field(10, ge=1, description="Errors and unknown commands before 421.")
    auth_failures: int = Field(3, ge=1, description="Failed AUTH attempts before disconnect.")
    connections: int = Field(10000, ge=1, description="Concurrent connections in total.")
    connections_per_ip: int = Field(100, ge=1, description="Concurrent connections per IP.")
    command_timeout: float = Field(
        300.0, gt=0, allow_inf_nan=False, description="Seconds to wait for a command."
    )
    data_timeout: float = Field(
        180.0, gt=0, allow_inf_nan=False, description="Seconds to wait for each data block."
    )
    hook_timeout: float = Field(
        60.0, gt=0, allow_inf_nan=False, description="Seconds a script hook may run (then 451)."
    )


AuthMechanism = Literal["PLAIN", "LOGIN", "EXTERNAL"]
TlsVersion = Literal["TLSv1.2", "TLSv1.3"]
ClientCertificateMode = Literal["off", "request", "require"]


class TlsCertificateSettings(BaseModel):
    """``[[servers.tls_certificates]]``: one certificate, served to clients that ask for one of
    its names by SNI (RFC 6066 §3)."""

    model_config = _MODEL

    certificate: RelativePath = Field(description="PEM certificate chain.")
    key: RelativePath = Field(description="PEM private key.")
    names: list[CertificateName] | None = Field(
        None, description="SNI names it is served for; default the certificate's DNS names."
    )


class TlsCertificate(BaseModel):
    """A certificate pair as the listener uses it (the single ``tls_certificate`` pair or one
    of ``tls_certificates``), with where it came from for error messages."""

    model_config = _MODEL

    certificate: Path
    key: Path
    names: tuple[str, ...] | None
    where: tuple[str | int, ...]


class ServerSettings(BaseModel):
    """``[[servers]]``: one listener with its own addresses, policy, TLS and limits."""

    model_config = _MODEL

    id: Annotated[str, AfterValidator(_check_server_id)] = Field(
        description="Unique name of the listener (logs, scripts, metrics).",
        examples=["inbound"],
    )
    listen: list[ListenAddress] = Field(
        default_factory=lambda: ["127.0.0.1:2525"],
        min_length=1,
        description="Addresses to listen on.",
    )
    hostname: HostName | None = Field(None, description="Greeting name; default node.hostname.")
    script: RelativePath | None = Field(None, description="Policy script; default built-in.")
    local_domains: list[DomainName] = Field(
        default_factory=lambda: ["localhost"], description="Domains this listener receives for."
    )
    trusted_networks: list[Network] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Client networks allowed to relay without AUTH.",
    )
    tls_certificate: RelativePath | None = Field(None, description="PEM certificate chain.")
    tls_key: RelativePath | None = Field(None, description="PEM private key.")
    tls_certificates: list[TlsCertificateSettings] = Field(
        default_factory=list, description="More certificates, chosen by SNI."
    )
    tls_implicit: bool = Field(
        False, description="TLS from the first byte (RFC 8314), no STARTTLS."
    )
    tls_min_version: TlsVersion = Field("TLSv1.2", description="Oldest TLS version accepted.")
    tls_ciphers: str | None = Field(
        None, description="OpenSSL cipher list for TLS 1.2; default OpenSSL's."
    )
    tls_client_certificate: ClientCertificateMode = Field(
        "off", description="Ask clients for a certificate: off, request or require."
    )
    tls_client_ca: RelativePath | None = Field(
        None, description="PEM bundle client certificates are verified against."
    )
    auth_mechanisms: list[AuthMechanism] = Field(
        default_factory=lambda: ["PLAIN", "LOGIN"], description="SASL mechanisms offered."
    )
    auth_requires_tls: bool = Field(True, description="Offer AUTH only after STARTTLS.")
    auth_password_file: RelativePath | None = Field(
        None, description="File of user:argon2-hash lines checked for PLAIN and LOGIN."
    )
    bare_line_endings: BareLineEndings = Field(
        BareLineEndings.REJECT, strict=False, description="Bare CR or LF in DATA."
    )
    reject_early_talkers: bool = Field(True, description="554 to clients that talk first.")
    greeting_delay: float = Field(
        0.0,
        ge=0.0,
        le=300.0,
        description="Seconds to wait before the 220, the window in which early talkers show.",
    )
    greeting_banner: Annotated[str, AfterValidator(_check_banner)] = Field(
        "ESMTP Mailwarden", description="Text after the host name in the 220 greeting."
    )
    limits: LimitSettings = Field(default_factory=LimitSettings)

    @field_validator("auth_mechanisms")
    @classmethod
    def _no_repeated_mechanism(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise _invalid(f"expected each mechanism at most once, got {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if self.tls_certificate is not None and self.tls_key is None:
            raise _problems(
                [(("tls_certificate",), "expected tls_key as well; set both or neither")]
            )
        if self.tls_key is not None and self.tls_certificate is None:
            raise _problems(
                [(("tls_key",), "expected tls_certificate as well; set both or neither")]
            )
        if self.tls_implicit and not self.certificates:
            raise _problems(
                [(("tls_implicit",), "expected a certificate (tls_certificate and tls_key)")]
            )
        if self.tls_client_certificate != "off" and not self.certificates:
            raise _problems([(("tls_client_certificate",), "expected a certificate for TLS first")])
        if "EXTERNAL" in self.auth_mechanisms and self.tls_client_ca is None:
            # RFC 4422 appendix A: EXTERNAL stands on a verified client certificate.
            raise _problems(
                [
                    (
                        ("auth_mechanisms",),
                        "expected tls_client_ca (and tls_client_certificate) for EXTERNAL",
                    )
                ]
            )
        if "EXTERNAL" in self.auth_mechanisms and self.tls_client_certificate == "off":
            raise _problems(
                [
                    (
                        ("auth_mechanisms",),
                        'EXTERNAL needs tls_client_certificate = "request" or "require"',
                    )
                ]
            )
        if self.tls_client_certificate == "require" and self.tls_client_ca is None:
            raise _problems(
                [(("tls_client_ca",), "expected a CA file when tls_client_certificate = require")]
            )
        return self

    @property
    def certificates(self) -> list[TlsCertificate]:
        """Every certificate of the listener; the first is served when SNI matches none."""
        found = []
        if self.tls_certificate is not None and self.tls_key is not None:
            found.append(
                TlsCertificate(
                    certificate=self.tls_certificate,
                    key=self.tls_key,
                    names=None,
                    where=("tls_certificate",),
                )
            )
        for index, entry in enumerate(self.tls_certificates):
            found.append(
                TlsCertificate(
                    certificate=entry.certificate,
                    key=entry.key,
                    names=None if entry.names is None else tuple(entry.names),
                    where=("tls_certificates", index, "certificate"),
                )
            )
        return found

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``listen`` as ``(host, port)`` pairs, IPv6 hosts without brackets."""
        return [parse_listen_address(text) for text in self.listen]

    @property
    def networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """``trusted_networks`` as :mod:`ipaddress` networks."""
        return [ipaddress.ip_network(text) for text in self.trusted_networks]

    def protocol_settings(self, node_hostname: str) -> ProtocolSettings:
        """The settings the SMTP core runs this listener with."""
        limits = self.limits
        return ProtocolSettings(
            hostname=self.hostname or node_hostname,
            max_command_line=limits.command_line,
            max_text_line=limits.text_line,
            strict_line_length=limits.strict_line_length,
            address_limits=Limits(
                local_part=limits.local_part, domain=limits.domain, path=limits.path
            ),
            max_recipients=limits.recipients,
            max_message_size=limits.message_size,
            max_errors=limits.errors,
            bare_line_endings=self.bare_line_endings,
            reject_early_talkers=self.reject_early_talkers,
            # Implicit TLS never offers STARTTLS (RFC 8314 §3.3): TLS is already there.
            tls_available=bool(self.certificates) and not self.tls_implicit,
            auth_mechanisms=tuple(self.auth_mechanisms),
            auth_requires_tls=self.auth_requires_tls,
            max_auth_failures=limits.auth_failures,
            tls_required=self.tls_client_certificate == "require",
        )

    def file_problems(self) -> list[tuple[KeyPath, str]]:
        """``(key path, problem)`` for each configured file that is missing or unreadable."""
        named: list[tuple[KeyPath, Path | None]] = [
            ((key,), getattr(self, key))
            for key in (
                "script",
                "tls_certificate",
                "tls_key",
                "tls_client_ca",
                "auth_password_file",
            )
        ]
        for index, entry in enumerate(self.tls_certificates):
            named.append((("tls_certificates", index, "certificate"), entry.certificate))
            named.append((("tls_certificates", index, "key"), entry.key))
        found: list[tuple[KeyPath, str]] = []
        for key, path in named:
            if path is None:
                continue
            if not path.is_file():
                what = "is not a regular file" if path.exists() else "does not exist"
                found.append((key, f"expected a readable file, but {path} {what}"))
            elif not os.access(path, os.R_OK):
                found.append((key, f"expected a readable file, but {path} cannot be read"))
        return found

    def _delivery_file_problems(self) -> list[tuple[KeyPath, str]]:
        found: list[tuple[KeyPath, str]] = [
            (("delivery", key), text) for key, text in self.delivery.file_problems()
        ]
        for index, route in enumerate(self.routes):
            found += [(("routes", index, key), text) for key, text in route.file_problems()]
        return found

    def check_files(self) -> None:
        """Check that the script, certificate and key files exist and can be read.

        Raises :class:`ConfigError` listing every missing or unreadable file.
        """
        found = self.file_problems()
        if found:
            raise ConfigError(
                [f"servers[{self.id}].{'.'.join(map(str, key))}: {text}" for key, text in found]
            )


def _listeners_overlap(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Would binding both fail (or silently split traffic under SO_REUSEPORT)?"""
    (host_a, port_a), (host_b, port_b) = a, b
    if port_a != port_b or port_a == 0:
        return False
    if host_a == host_b:
        return True
    family_a, family_b = address_family(host_a), address_family(host_b)
    if family_a != family_b or family_a == 0:
        return False
    return is_wildcard(host_a) or is_wildcard(host_b)


# Here rather than at the top: config.delivery builds on the field types above.
from mailwarden.config.delivery import DeliverySettings, RouteSettings  # noqa: E402
from mailwarden.config.tlsrpt import TlsRptSettings  # noqa: E402


class Config(BaseModel):
    """A whole configuration: the node, its spool, its listeners, delivery and routes."""

    model_config = _MODEL

    source: Path | None = Field(None, strict=False, exclude=True)
    node: NodeSettings = Field(default_factory=NodeSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    servers: list[ServerSettings] = Field(
        default_factory=lambda: [ServerSettings(id="default")], min_length=1
    )
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    routes: list[RouteSettings] = Field(default_factory=list)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    shaping: ShapingRules = Field(default_factory=list)
    library: LibrarySettings = Field(default_factory=LibrarySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tlsrpt: TlsRptSettings = Field(default_factory=TlsRptSettings)
    # Set by the loader: the file name as the user gave it, and where each key sits in it.
    _file_name: str | None = PrivateAttr(None)
    _key_lines: dict[KeyPath, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _spool_under_data_dir(cls, data: Any) -> Any:
        """Default ``spool.path`` to ``<node.data_dir>/spool``."""
        if not isinstance(data, dict):
            return data
        node, spool = data.get("node", {}), data.get("spool", {})
        if not isinstance(spool, dict) or "path" in spool:
            return data
        if isinstance(node, NodeSettings):
            data_dir: object = node.data_dir
        elif isinstance(node, dict):
            data_dir = node.get("data_dir", default_data_dir())
        else:
            return data
        if not isinstance(data_dir, str | os.PathLike):
            return data  # node.data_dir is reported as wrong; no spool path to derive
        return {**data, "spool": {**spool, "path": Path(data_dir) / "spool"}}

    @model_validator(mode="after")
    def _servers_distinct(self) -> Config:
        found: list[tuple[tuple[str | int, ...], str]] = []
        first_with_id: dict[str, int] = {}
        bound: list[tuple[tuple[str, int], int, int]] = []  # (address, server, listen index)
        for index, server in enumerate(self.servers):
            if server.id in first_with_id:
                found.append(
                    (
                        ("servers", index, "id"),
                        f"expected a unique id, but {server.id!r} is also "
                        f"servers[{first_with_id[server.id]}].id",
                    )
                )
            else:
                first_with_id[server.id] = index
            for position, address in enumerate(server.addresses):
                for other, other_index, other_position in bound:
                    if _listeners_overlap(address, other):
                        found.append(
                            (
                                ("servers", index, "listen", position),
                                f"{format_listen_address(*address)} overlaps "
                                f"servers[{other_index}].listen[{other_position}] "
                                f"({format_listen_address(*other)}); expected distinct addresses",
                            )
                        )
                        break
                bound.append((address, index, position))
        if found:
            raise _problems(found)
        return self

    @model_validator(mode="after")
    def _routes_reachable(self) -> Config:
        """A ``[[routes]]`` pattern an earlier route already matches (the same pattern, or
        ``*``) can never be used: routes are tried in order, so it is a mistake in the file."""
        found: list[tuple[tuple[str | int, ...], str]] = []
        first: dict[str, int] = {}
        for index, route in enumerate(self.routes):
            for position, pattern in enumerate(route.domains):
                earlier = first.get("*", first.get(pattern))
                if earlier is not None and earlier != index:
                    found.append(
                        (
                            ("routes", index, "domains", position),
                            f"{pattern!r} is never used: routes[{earlier}] before it already "
                            f"matches {'every domain' if '*' in first else 'it'}",
                        )
                    )
            for pattern in route.domains:
                first.setdefault(pattern, index)
        if found:
            raise _problems(found)
        return self

    def server(self, server_id: str) -> ServerSettings:
        """The listener with this id; raises ``KeyError`` if there is none."""
        for server in self.servers:
            if server.id == server_id:
                return server
        raise KeyError(server_id)

    def describe_problem(self, path: KeyPath, text: str) -> str:
        """One problem line naming this file, the line of ``path`` (when it is in the file)
        and the dotted key, as :class:`ConfigError` lines do."""
        return format_problem(self._file_name, line_of(self._key_lines, path), path, text)

    def _delivery_file_problems(self) -> list[tuple[KeyPath, str]]:
        found: list[tuple[KeyPath, str]] = [
            (("delivery", key), text) for key, text in self.delivery.file_problems()
        ]
        for index, route in enumerate(self.routes):
            found += [(("routes", index, key), text) for key, text in route.file_problems()]
        return found

    def check_files(self) -> None:
        """Check that every listener's script, certificate and key files, and the CA files
        of ``[delivery]`` and ``[[routes]]``, can be read.

        Raises :class:`ConfigError` listing each missing or unreadable file with the line of
        the key that names it.
        """
        problems = []
        for index, server in enumerate(self.servers):
            for key, text in server.file_problems():
                path = ("servers", index, *key)
                line = line_of(self._key_lines, path)
                problems.append(format_problem(self._file_name, line, path, text))
        for path, text in self._delivery_file_problems():
            problems.append(self.describe_problem(path, text))
        if problems:
            raise ConfigError(problems)
