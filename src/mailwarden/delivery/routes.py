"""Where a recipient domain's mail goes: static routes, next hops and local source addresses.

Routes are the ``[[routes]]`` tables of the configuration, tried in the order of the file; the
first whose ``domains`` match wins. Patterns follow Postfix's transport(5) table with its
default ``parent_domain_matches_subdomains`` (which leaves transport lookups out):

- ``example.net`` matches that domain only, not its subdomains;
- ``.example.net`` matches every subdomain of example.net (``a.example.net``,
  ``b.a.example.net``), but not example.net itself: list both to route both;
- ``*`` matches every domain.

A domain no route matches takes the default route: an MX lookup of the domain with the
``[delivery]`` defaults.

Next hops use Postfix's SMTP destination syntax (smtp(8)): ``[host]`` or ``[host]:port`` means
no MX lookup (the host's own A/AAAA records, or the address when ``host`` is an IP literal;
Postfix writes IPv6 as ``[ipv6:2001:db8::1]``, which is accepted as well as
``[2001:db8::1]``); ``host`` or ``host:port`` means an MX lookup of ``host``.

The local source address of a connection is chosen from a pool by :func:`choose_source`,
stably per key (for example the destination), so that one destination always sees the same
address, and with it the same HELO name (which should be that address's PTR name).
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mailwarden.config.listen import is_hostname
from mailwarden.delivery.tls import TlsPolicy

if TYPE_CHECKING:  # config imports this module to check next hops; no cycle at run time
    from mailwarden.config.models import Config

SMTP_PORT = 25
LMTP_PORT = 24  # Postfix's lmtp_tcp_port; RFC 2033 §5 forbids LMTP on port 25


@dataclass(frozen=True, slots=True)
class NextHop:
    """A route's next hop. ``mx_lookup`` False: connect to ``host``'s own addresses (or to
    ``host`` itself when it is an IP address); True: to the mail exchangers of ``host``."""

    host: str
    port: int = SMTP_PORT
    mx_lookup: bool = True

    @property
    def is_ip(self) -> bool:
        return _ip_or_none(self.host) is not None

    def __str__(self) -> str:
        return format_next_hop(self)


def _ip_or_none(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_port(text: str, whole: str) -> int:
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 5) or not 0 < int(text) < 65536:
        raise ValueError(f"expected a port from 1 to 65535 after ':' in {whole!r}, got {text!r}")
    return int(text)


def _bracketed_host(inner: str, whole: str) -> str:
    """The host inside ``[...]``: an IP address (canonical text) or a host name."""
    literal = inner[5:] if inner[:5].lower() == "ipv6:" else inner
    address = _ip_or_none(literal)
    if address is not None:
        if inner[:5].lower() == "ipv6:" and address.version != 6:
            raise ValueError(f"{literal!r} after 'ipv6:' is not an IPv6 address in {whole!r}")
        return str(address)
    if ":" in literal or not is_hostname(literal):
        raise ValueError(
            f"expected an IP address or a host name inside the brackets of {whole!r}, got {inner!r}"
        )
    return literal.lower().rstrip(".")


def parse_next_hop(text: str, *, default_port: int = SMTP_PORT) -> NextHop:
    """Parse a next hop: ``[10.0.0.5]:2525``, ``[mx.example]``, ``[2001:db8::1]:25``,
    ``relay.example:587``, ``relay.example``. Host names come back in lower case without a
    trailing dot, IP addresses in canonical form; ``default_port`` applies without ``:port``.

    Raises ValueError saying what was expected, and nothing else."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected a next hop such as '[10.0.0.5]:2525' or 'relay.example'")
    whole = text
    text = text.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"expected ']' to close the '[' of {whole!r}")
        host = _bracketed_host(text[1:end], whole)
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"expected ':port' or nothing after the ']' of {whole!r}")
        port = _parse_port(rest[1:], whole) if rest else default_port
        return NextHop(host, port, mx_lookup=False)
    host, colon, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if ":" in host:
        raise ValueError(f"an IPv6 next hop goes in brackets, as in '[2001:db8::1]', not {whole!r}")
    if _ip_or_none(host) is not None:
        # An address has no MX records: without brackets it is a typo for the bracketed form
        # (Postfix also warns about an unbracketed numeric destination).
        raise ValueError(f"an IP address as next hop goes in brackets, as in '[{host}]'")
    if not is_hostname(host):
        raise ValueError(f"expected a host name or '[address]' as next hop, got {whole!r}")
    port = _parse_port(port_text, whole) if colon else default_port
    return NextHop(host.lower().rstrip("."), port, mx_lookup=True)


def format_next_hop(hop: NextHop) -> str:
    """The text :func:`parse_next_hop` reads back as ``hop`` (the port always written)."""
    if not hop.mx_lookup:
        return f"[{hop.host}]:{hop.port}"
    return f"{hop.host}:{hop.port}"


@dataclass(frozen=True, slots=True)
class SourceAddress:
    """A local address to send from, with the HELO name to give when sending from it.

    Receivers compare the HELO name with the address's PTR name (and the PTR name's A/AAAA
    with the address, FCrDNS): the name should be the address's PTR name."""

    address: str
    helo: str


def choose_source(
    pool: Sequence[SourceAddress], key: str, *, for_address: str | None = None
) -> SourceAddress | None:
    """The source address for ``key`` (e.g. the destination domain or MX): always the same
    one while the pool stays the same, in every process (a digest, not Python's salted
    ``hash``), and spread evenly over the pool across keys. ``for_address``: the remote
    address to connect to; only sources of its IP version can reach it. None when no source
    fits (or the pool is empty): the kernel chooses, and the route's HELO name applies.

    Rendezvous hashing: each address scores ``digest(address, key)`` and the highest wins,
    so removing one address from the pool moves only the keys that used it."""
    if for_address is not None:
        version = ipaddress.ip_address(for_address).version
        pool = [s for s in pool if ipaddress.ip_address(s.address).version == version]
    if not pool:
        return None
    return max(pool, key=lambda source: _score(source.address, key))


def _score(address: str, key: str) -> bytes:
    return hashlib.blake2b(f"{address}\0{key}".encode(), digest_size=8).digest()


@dataclass(frozen=True, slots=True)
class Route:
    """How to deliver to the domains a route matches.

    ``next_hop`` None: MX lookup of the recipient domain. ``auth``: (username, password) for
    AUTH at the next hop. ``source_ips``: the pool :func:`choose_source` picks from (empty:
    the kernel chooses). ``helo``: the EHLO name when no source address is chosen (the
    chosen address brings its own). ``index``: the position of the ``[[routes]]`` table in
    the file, None for the default route (for logs and ``queue list``)."""

    domains: tuple[str, ...]
    next_hop: NextHop | None
    protocol: str  # "smtp" | "lmtp"
    auth: tuple[str, str] | None
    tls: TlsPolicy
    source_ips: tuple[SourceAddress, ...]
    helo: str = "localhost"
    index: int | None = None

    @property
    def lmtp(self) -> bool:
        return self.protocol == "lmtp"

    def matches(self, domain: str) -> bool:
        return any(domain_matches(pattern, domain) for pattern in self.domains)

    def destination(self, domain: str) -> str:
        """What mail to ``domain`` is queued and limited under, as Postfix's "nexthop": the
        route's next hop (``[10.0.0.5]:2525``, ``relay.example:587``) when it has one, since
        every domain of the route then shares its connections; else the domain itself."""
        return format_next_hop(self.next_hop) if self.next_hop else normalise_domain(domain)

    def source_for(self, key: str, *, for_address: str | None = None) -> SourceAddress | None:
        return choose_source(self.source_ips, key, for_address=for_address)

    def helo_for(self, source: SourceAddress | None) -> str:
        """The EHLO name for a connection from ``source``."""
        return source.helo if source is not None else self.helo


def normalise_domain(domain: str) -> str:
    return domain.strip().lower().rstrip(".")


def domain_matches(pattern: str, domain: str) -> bool:
    """Postfix transport(5) matching: ``*`` everything, ``.example.net`` strict subdomains,
    anything else that domain exactly (case-insensitive, trailing dot ignored)."""
    domain = normalise_domain(domain)
    if pattern == "*":
        return True
    if pattern.startswith("."):
        return domain.endswith(pattern)  # the pattern's own dot: "badexample.net" fails
    return domain == pattern


class RouteTable:
    """The ``[[routes]]`` of a configuration, in file order, and the default route."""

    def __init__(self, routes: Sequence[Route], default: Route) -> None:
        self.routes = tuple(routes)
        self.default = default

    @classmethod
    def from_config(cls, config: Config) -> RouteTable:
        """Routes from ``[[routes]]`` and the default route from ``[delivery]``. A route
        without ``source_ips`` sends from the ``[delivery]`` pool; one of its own given by
        address alone takes the pool entry's HELO name, else ``[delivery] helo``."""
        delivery = config.delivery
        helo = delivery.helo or config.node.hostname
        pool = tuple(SourceAddress(s.address, s.helo or helo) for s in delivery.source_ips)
        helo_in_pool = {source.address: source.helo for source in pool}
        default = Route(("*",), None, "smtp", None, delivery.tls_policy(), pool, helo)
        routes = []
        for index, settings in enumerate(config.routes):
            own = tuple(
                SourceAddress(s.address, s.helo or helo_in_pool.get(s.address, helo))
                for s in settings.source_ips
            )
            routes.append(
                Route(
                    domains=tuple(settings.domains),
                    next_hop=settings.hop,
                    protocol=settings.protocol,
                    auth=settings.auth,
                    tls=settings.tls_policy(delivery),
                    source_ips=own or pool,
                    helo=helo,
                    index=index,
                )
            )
        return cls(routes, default)

    def route_for(self, domain: str) -> Route:
        """The first ``[[routes]]`` entry matching ``domain``, else the default route."""
        domain = normalise_domain(domain)
        for route in self.routes:
            if route.matches(domain):
                return route
        return self.default
