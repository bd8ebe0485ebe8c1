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

import asyncio
import ipaddress
import logging
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Self

__all__ = ["AddressList", "DomainList", "IPList", "ListError", "from_datastore", "load_list"]

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


# An entry and where it came from ("file:line" or "datastore namespace 'ns' key 'k'"), which
# starts the message of a ListError about it.
Entries = Iterable[tuple[str, str]]


def _entries(path: Path) -> Entries:
    """(file:line, entry) for each line that has one. A ``#`` at the start of a line or
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
            yield f"{path}:{number}", words[0]


@dataclass
class _ReloadingList:
    """The reload machinery shared by the three kinds: the subclasses parse and match.

    A list comes from a file (``path``) or from a datastore namespace (``namespace``, path
    None), whose keys are the entries."""

    path: Path | None
    check_interval: float = 1.0
    _signature: tuple[int, int, int, int] | None = field(default=None, repr=False)
    _checked: float = field(default=0.0, repr=False)

    kind: str = field(default="", init=False)
    namespace: str | None = field(default=None, kw_only=True)
    _loaded: bool = field(default=False, repr=False, kw_only=True)
    _refreshing: asyncio.Future[None] | None = field(default=None, repr=False, kw_only=True)

    async def fresh(self) -> Self:
        """This list, with entries at most ``check_interval`` seconds old. A datastore list
        reads its namespace the first time (raising ListError for a key that is not a valid
        entry, BackendError when the datastore fails) and again once the interval has passed
        (then a failure keeps the previous entries and is logged). Concurrent calls share one
        read. For a file list it is the check a lookup makes anyway."""
        if self.namespace is None:
            self._maybe_reload()
            return self
        if self._loaded and time.monotonic() - self._checked < self.check_interval:
            return self
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_namespace(self.namespace))
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        except Exception as error:
            if not self._loaded:
                raise
            log.error(
                "list from datastore namespace %r not reloaded, keeping the previous entries: %s",
                self.namespace,
                error,
            )
        finally:
            if self._refreshing is refreshing and refreshing.done():
                self._refreshing = None
        return self

    async def _read_namespace(self, namespace: str) -> None:
        from mailwarden.lib.datastore import datastore

        self._checked = time.monotonic()  # a failure too waits for the next interval
        keys = await datastore.keys(namespace)
        self._parse((f"datastore namespace {namespace!r} key {key!r}", key) for key in keys)
        self._loaded = True

    def reload(self) -> None:
        """Read the file now (raises ListError or OSError; the previous entries stay then)."""
        if self.path is None:
            raise ValueError("a datastore list is read with `await lst.fresh()`")
        signature = self._stat()
        self._parse(_entries(self.path))
        self._signature = signature
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        # mtime (ns), size and inode: an in-place edit changes the first two, an editor or
        # `mv` that replaces the file changes the inode even within one mtime tick.
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)

    def _maybe_reload(self) -> None:
        if self.path is None:  # a datastore list: fresh() reads it, a lookup only matches
            if not self._loaded:
                raise RuntimeError(
                    f"the list from datastore namespace {self.namespace!r} is not loaded yet: "
                    "look up in `await lst.fresh()`"
                )
            return
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
            self._parse(_entries(self.path))
        except (ListError, OSError, UnicodeDecodeError) as error:
            log.error("list %s not reloaded, keeping the previous entries: %s", self.path, error)
            return
        log.info("list %s reloaded: %d entries", self.path, len(self))

    def _parse(self, entries: Entries) -> None:
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

    def _parse(self, entries: Entries) -> None:
        exact: set[str] = set()
        parents: set[str] = set()
        for where, entry in entries:
            entry = entry.lower()
            bare = entry[1:] if entry.startswith(".") else entry
            problem = _domain_error(bare)
            if problem:
                raise ListError(f"{where}: {problem}")
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

    def _parse(self, entries: Entries) -> None:
        addresses: set[str] = set()
        locals_: set[str] = set()
        exact: set[str] = set()
        parents: set[str] = set()
        for where, entry in entries:
            local, at, domain = entry.rpartition("@")
            domain = domain.lower()
            if at and not local:
                raise ListError(f"{where}: {entry!r} has an empty local part")
            if at and not domain:
                locals_.add(self._local(local))
                continue
            bare = domain[1:] if domain.startswith(".") else domain
            problem = _domain_error(bare)
            if problem:
                raise ListError(f"{where}: {problem}")
            if at:
                if domain.startswith("."):
                    raise ListError(f"{where}: {entry!r}: a domain cannot start with .")
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

    def _parse(self, entries: Entries) -> None:
        networks: dict[tuple[int, int], set[int]] = {}
        for where, entry in entries:
            try:
                network = ipaddress.ip_network(entry)
            except ValueError as error:
                hint = ""
                if "has host bits set" in str(error):
                    hint = f"; did you mean {ipaddress.ip_network(entry, strict=False)}?"
                raise ListError(f"{where}: {error}{hint}") from None
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


def from_datastore(
    namespace: str,
    kind: Kind = "address",
    *,
    check_interval: float = 10.0,
    case_sensitive_local: bool = False,
) -> AddressList | DomainList | IPList:
    """A list whose entries are the keys of datastore ``namespace`` (their values are free:
    a reason, a date), with the format and matching rules of a file list. Nothing is read
    here: a hook awaits ``lst.fresh()``, which reads the namespace the first time and again
    every ``check_interval`` seconds, then tests membership (``value in await lst.fresh()``).
    Editing the namespace (``mailwarden datastore set NAMESPACE ENTRY …``) takes effect
    within ``check_interval`` on every worker."""
    if kind not in _KINDS:
        raise ValueError(
            f"from_datastore(): kind must be 'address', 'domain' or 'ip', got {kind!r}"
        )
    if kind == "address":
        return AddressList(
            None,
            check_interval,
            case_sensitive_local=case_sensitive_local,
            namespace=namespace,
        )
    return _KINDS[kind](None, check_interval, namespace=namespace)  # type: ignore[return-value]
