"""Listen addresses: ``host:port``, ``[ipv6]:port``, or ``hostname:port``."""

from __future__ import annotations

import ipaddress
import re

# RFC 1123 §2.1 host names: letters, digits and hyphens, labels of 1-63 characters.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_IPV4_LIKE = re.compile(r"[0-9.]+")


def is_hostname(text: str) -> bool:
    """True when ``text`` is a syntactically valid DNS host name (one trailing dot allowed)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not name.isascii():
        return False
    return all(_LABEL.fullmatch(label) for label in name.split("."))


def parse_listen_address(text: str) -> tuple[str, int]:
    """Parse a listen address into ``(host, port)``.

    Accepted forms: ``127.0.0.1:25``, ``[::1]:25`` (IPv6 always in brackets) and
    ``localhost:25``. Port 0 asks the operating system for a free port. IP addresses come back
    in their canonical text form and host names in lower case, so equal addresses compare equal.

    Raises ``ValueError`` with a message saying what was expected; nothing else.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("expected ']' after the IPv6 address, as in '[::1]:2525'")
        literal, rest = text[1:end], text[end + 1 :]
        try:
            host = str(ipaddress.IPv6Address(literal))
        except ValueError:
            raise ValueError(f"{literal!r} in brackets is not an IPv6 address") from None
        if not rest.startswith(":"):
            raise ValueError("expected ':port' after the ']', as in '[::1]:2525'")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError("expected 'host:port', as in '127.0.0.1:2525'; the port is missing")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, as in '[::1]:2525'")
        if not host:
            raise ValueError("the host is missing; use 0.0.0.0 for every IPv4 address")
        if _IPV4_LIKE.fullmatch(host):
            try:
                host = str(ipaddress.IPv4Address(host))
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv4 address") from None
        elif is_hostname(host):
            host = host.lower().rstrip(".")
        else:
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError(f"expected a port number from 0 to 65535, got {port_text!r}")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"expected a port number from 0 to 65535, got {port}")
    return host, port


def format_listen_address(host: str, port: int) -> str:
    """The text form :func:`parse_listen_address` reads back: IPv6 hosts get brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_wildcard(host: str) -> bool:
    """True for the any-address hosts (``0.0.0.0`` and ``::``)."""
    return host in ("0.0.0.0", "::")


def address_family(host: str) -> int:
    """4 or 6 for IP literals, 0 for host names (their family is only known after resolving)."""
    try:
        return ipaddress.ip_address(host).version
    except ValueError:
        return 0
