"""Address, domain and IP/CIDR lists from files, for allow and block lists.

``load_list(path, kind=...)`` reads a file of one entry per line and returns a list object
answering ``value in lst`` in time independent of the number of entries (set lookups: per
domain label for domains, per prefix length for networks). The object notices when the file
changes (a ``stat()`` at most once per ``check_interval`` seconds, on a lookup) and reads it
again; a file that has become malformed keeps the previous entries and logs the error with
its file and line, so a typo never empties a block list. The file format and matching rules
are documented exactly in docs/library.md.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["AddressList", "DomainList", "IPList", "ListError", "load_list"]

log = logging.getLogger("mailwarden.lib")

Kind = Literal["address", "domain", "ip"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A DNS label as mail domains use it (RFC 1035 §2.3.1 letters, digits and hyphens, not at either
# end, at most 63 characters; underscores and non-ASCII letters are let through for U-labels
# and the odd _-name). Lower-cased before matching.
_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)")


class ListError(ValueError):
    """A malformed list file; the message starts with ``file:line:``."""


def _domain_error(domain: str) -> str | None:
    if not domain:
        return "empty domain"
    if len(domain) > 253:
        return "domain longer than 253 characters (RFC 1035 §2.3.4)"
    for label in domain.split("."):
        if not _LABEL.fullmatch(label):
            return f"{domain!r} is not a domain name"
    return None


def _entries(path: Path) -> Iterable[tuple[int, str]]:
    """(line number, entry) for each line that has one. A ``#`` at the start of a line or
    after white space starts a comment; more than one word on a line is an error."""
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) > 1 and not words[1].startswith("#"):
                raise ListError(
                    f"{path}:{number}: one entry per line, found {len(words)} words "
                    f"({line.strip()!r}); a comment starts with #"
                )
            yield number, words[0]


@dataclass
class _ReloadingList:
    """The reload machinery shared by the three kinds: the subclasses parse and match."""

    path: Path
    check_interval: float = 1.0
    _signature: tuple[int, int, int, int] | None = field(default=None, repr=False)
    _checked: float = field(default=0.0, repr=False)

    kind: str = field(default="", init=False)

    def reload(self) -> None:
        """Read the file now (raises ListError or OSError; the previous entries stay then)."""
        signature = self._stat()
        self._parse(self.path)
        self._signature = signature
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        # mtime (ns), size and inode: an in-place edit changes the first two, an editor or
        # `mv` that replaces the file changes the inode even within one mtime tick.
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return
        self._checked = now
        try:
            signature = self._stat()
        except OSError as error:
            if self._signature is not None:  # logged once per disappearance
                log.error(
                    "list %s: cannot stat (%s); keeping the previous entries", self.path, error
                )
                self._signature = None
            return
        if signature == self._signature:
            return
        self._signature = signature  # also when it fails: logged once per change of the file
        try:
            self._parse(self.path)
        except (ListError, OSError, UnicodeDecodeError) as error:
            log.error("list %s not reloaded, keeping the previous entries: %s", self.path, error)
            return
        log.info("list %s reloaded: %d entries", self.path, len(self))

    def _parse(self, path: Path) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


@dataclass
class DomainList(_ReloadingList):
    """``example.org`` matches that domain only; ``.example.org`` matches every subdomain of
    example.org at any depth but not example.org itself (Postfix's rule for a leading dot when
    parent_domain_matches_subdomains does not apply). A value with an ``@`` is looked up by
    the part after the last ``@``."""

    _exact: frozenset[str] = field(default=frozenset(), repr=False)
    _parents: frozenset[str] = field(default=frozenset(), repr=False)  # ".example.org"

    def __post_init__(self) -> None:
        self.kind = "domain"

    def _parse(self, path: Path) -> None:
        exact: set[str] = set()
        parents: set[str] = set()
        for number, entry in _entries(path):
            entry = entry.lower()
            bare = entry[1:] if entry.startswith(".") else entry
            problem = _domain_error(bare)
            if problem:
                raise ListError(f"{path}:{number}: {problem}")
            (parents if entry.startswith(".") else exact).add(entry)
        self._exact, self._parents = frozenset(exact), frozenset(parents)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        self._maybe_reload()
        return self._match(value.rpartition("@")[2].lower().rstrip("."))

    def _match(self, domain: str) -> bool:
        if not domain:
            return False
        if domain in self._exact:
            return True
        if not self._parents:
            return False
        # mx.mail.example.org → ".mail.example.org", ".example.org", ".org"
        start = domain.find(".")
        while start != -1:
            if domain[start:] in self._parents:
                return True
            start = domain.find(".", start + 1)
        return False

    def __len__(self) -> int:
        return len(self._exact) + len(self._parents)


@dataclass
class AddressList(DomainList):
    """Entries: ``user@example.org`` (that address), ``user@`` (that local part at any domain),
    ``example.org`` (any address at that domain) and ``.example.org`` (any address at a
    subdomain). Domains compare case-insensitively; local parts too unless
    ``case_sensitive_local`` (RFC 5321 §2.4 lets a server treat them either way; nearly every
    one ignores case). A value without ``@`` and the null sender ``""`` are on no list."""

    case_sensitive_local: bool = False
    _addresses: frozenset[str] = field(default=frozenset(), repr=False)
    _locals: frozenset[str] = field(default=frozenset(), repr=False)

    def __post_init__(self) -> None:
        self.kind = "address"

    def _local(self, local: str) -> str:
        return local if self.case_sensitive_local else local.lower()

    def _parse(self, path: Path) -> None:
        addresses: set[str] = set()
        locals_: set[str] = set()
        exact: set[str] = set()
        parents: set[str] = set()
        for number, entry in _entries(path):
            local, at, domain = entry.rpartition("@")
            domain = domain.lower()
            if at and not local:
                raise ListError(f"{path}:{number}: {entry!r} has an empty local part")
            if at and not domain:
                locals_.add(self._local(local))
                continue
            bare = domain[1:] if domain.startswith(".") else domain
            problem = _domain_error(bare)
            if problem:
                raise ListError(f"{path}:{number}: {problem}")
            if at:
                if domain.startswith("."):
                    raise ListError(f"{path}:{number}: {entry!r}: a domain cannot start with .")
                addresses.add(f"{self._local(local)}@{domain}")
            else:
                (parents if domain.startswith(".") else exact).add(domain)
        self._addresses, self._locals = frozenset(addresses), frozenset(locals_)
        self._exact, self._parents = frozenset(exact), frozenset(parents)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        self._maybe_reload()
        local, at, domain = value.rpartition("@")
        if not at or not local:
            return False
        local, domain = self._local(local), domain.lower().rstrip(".")
        return (
            f"{local}@{domain}" in self._addresses or local in self._locals or self._match(domain)
        )

    def __len__(self) -> int:
        return len(self._addresses) + len(self._locals) + super().__len__()


@dataclass
class IPList(_ReloadingList):
    """Entries: an IPv4 or IPv6 address, or a network in CIDR notation without host bits
    (``192.0.2.0/24``, ``2001:db8::/32``). Looked up by an address string or ipaddress object;
    an IPv4-mapped IPv6 address (``::ffff:192.0.2.1``, an IPv4 client on a dual-stack socket)
    matches IPv4 entries; a string that is not an IP address (a Unix socket peer) matches
    nothing."""

    # (version, prefix length) -> network addresses as integers: one set lookup per prefix
    # length present in the file, whatever the number of entries.
    _networks: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.kind = "ip"

    def _parse(self, path: Path) -> None:
        networks: dict[tuple[int, int], set[int]] = {}
        for number, entry in _entries(path):
            try:
                network = ipaddress.ip_network(entry)
            except ValueError as error:
                hint = ""
                if "has host bits set" in str(error):
                    hint = f"; did you mean {ipaddress.ip_network(entry, strict=False)}?"
                raise ListError(f"{path}:{number}: {error}{hint}") from None
            key = (network.version, network.prefixlen)
            networks.setdefault(key, set()).add(int(network.network_address))
        # Longest prefixes first only matters for speed of a hit, not for the answer.
        self._networks = {key: frozenset(values) for key, values in sorted(networks.items())}

    def __contains__(self, value: object) -> bool:
        self._maybe_reload()
        address = _address(value)
        if address is None:
            return False
        number, bits = int(address), address.max_prefixlen
        for (version, prefix), networks in self._networks.items():
            if (
                version == address.version
                and (number >> (bits - prefix)) << (bits - prefix) in networks
            ):
                return True
        return False

    def __len__(self) -> int:
        return sum(len(values) for values in self._networks.values())


def _address(value: object) -> IPAddress | None:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        address: IPAddress = value
    elif isinstance(value, str):
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            return None
    else:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


_KINDS: dict[str, type[_ReloadingList]] = {
    "address": AddressList,
    "domain": DomainList,
    "ip": IPList,
}


def load_list(
    path: str | os.PathLike[str],
    kind: Kind = "address",
    *,
    check_interval: float = 1.0,
    case_sensitive_local: bool = False,
) -> AddressList | DomainList | IPList:
    """Read ``path`` as a list of ``kind`` now; raises ListError (``file:line: why``) for a
    malformed line and OSError for a file that cannot be read. The list then reloads itself
    when the file changes, checked at most once per ``check_interval`` seconds on a lookup."""
    if kind not in _KINDS:
        raise ValueError(f"load_list(): kind must be 'address', 'domain' or 'ip', got {kind!r}")
    if kind == "address":
        lst: _ReloadingList = AddressList(
            Path(path), check_interval, case_sensitive_local=case_sensitive_local
        )
    else:
        lst = _KINDS[kind](Path(path), check_interval)
    lst.reload()
    return lst  # type: ignore[return-value]
