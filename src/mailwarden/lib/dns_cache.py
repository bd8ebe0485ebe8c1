"""The in-process DNS answer cache every resolver of :mod:`mailwarden.lib.dns` shares: the
script library's lookups, pyspf's thread, dkimpy's key lookups and delivery's MX resolution.

dnspython asks a resolver's ``cache`` before it sends a query and gives it every answer it gets;
this module is that cache, bounded in entries (least recently used out first) and thread-safe
(pyspf resolves in a worker thread). What it keeps, and for how long:

- an answer with records: until the smallest TTL of its CNAME chain and RRset (RFC 1035 §3.2.1,
  RFC 2181 §5.2), capped at :data:`MAX_TTL`;
- a negative answer (NXDOMAIN, or NODATA: the name has no record of that type): for the
  negative TTL, ``min(SOA TTL, SOA MINIMUM)`` of the SOA in the authority section (RFC 2308
  §5; dnspython computes it), capped at :data:`MAX_NEGATIVE_TTL`; without an SOA, not at all
  (RFC 2308 §5: "negative responses without SOA records SHOULD NOT be cached");
- a failure (SERVFAIL, REFUSED, timeout): never; dnspython does not hand those to the cache,
  and a script must see a temporary failure as temporary.

The key is the question (name, type, class) and whether the query asked for DNSSEC (the AD or
DO bit): an answer a validating resolver marked authenticated (AD, RFC 6840 §5.8) must not be
served to a query that did not ask, nor an unauthenticated one to a query that relies on AD.

The size is ``[library] dns_cache_size`` (:func:`configure`; 0 turns the cache off).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any

import dns.flags
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.resolver

__all__ = [
    "DEFAULT_SIZE",
    "MAX_NEGATIVE_TTL",
    "MAX_TTL",
    "AnswerCache",
    "attach",
    "clear",
    "configure",
    "size",
]

DEFAULT_SIZE = 10_000
# Unbound's defaults (cache-max-ttl, cache-max-negative-ttl): a record published with a TTL of
# weeks still gets looked at again daily, a negative answer hourly.
MAX_TTL = 86_400
MAX_NEGATIVE_TTL = 3_600

_Question = tuple[dns.name.Name, dns.rdatatype.RdataType, dns.rdataclass.RdataClass]
_Key = tuple[dns.name.Name, dns.rdatatype.RdataType, dns.rdataclass.RdataClass, bool]


class AnswerCache:
    """A bounded, thread-safe map from (name, type, class, dnssec) to dnspython answers, each
    kept until its expiry; the least recently used entry goes when a new one does not fit."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"a DNS cache holds at least one answer, got {max_size!r}")
        self.max_size = max_size
        self._entries: OrderedDict[_Key, tuple[float, dns.resolver.Answer]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: _Key) -> dns.resolver.Answer | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= time.time():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: _Key, answer: dns.resolver.Answer) -> None:
        expiry = _expiry(answer)
        if expiry is None:
            return
        with self._lock:
            self._entries[key] = (expiry, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)

    def flush(self) -> None:
        with self._lock:
            self._entries.clear()


def _expiry(answer: dns.resolver.Answer) -> float | None:
    """When ``answer`` stops being served, or None when it must not be kept at all."""
    now = time.time()
    if answer.rrset is not None:
        return min(answer.expiration, now + MAX_TTL)
    # Negative: dnspython's expiration is the SOA's negative TTL, or 0 without an SOA.
    has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in answer.response.authority)
    if not has_soa:
        return None
    return min(answer.expiration, now + MAX_NEGATIVE_TTL)


def _dnssec(resolver: dns.resolver.BaseResolver) -> bool:
    """Whether this resolver's queries ask for DNSSEC data: the AD bit (RFC 6840 §5.7) or the
    EDNS DO bit (RFC 3225)."""
    flags = resolver.flags or 0
    ednsflags = resolver.ednsflags or 0
    return bool(flags & dns.flags.AD) or bool(ednsflags & dns.flags.DO)


class _ResolverView:
    """What dnspython sees as one resolver's ``cache``: the shared store, with the resolver's
    DNSSEC flag added to each key at the time of the query (so a resolver whose flags change
    later still gets only answers to queries like its own)."""

    def __init__(self, resolver: dns.resolver.BaseResolver) -> None:
        self._resolver = resolver

    def __bool__(self) -> bool:  # dnspython tests ``if resolver.cache:``
        return _store is not None

    def get(self, question: _Question) -> dns.resolver.Answer | None:
        store = _store
        if store is None:
            return None
        return store.get((*question, _dnssec(self._resolver)))

    def put(self, question: _Question, answer: dns.resolver.Answer) -> None:
        store = _store
        if store is not None:
            store.put((*question, _dnssec(self._resolver)), answer)

    def flush(self, key: Any = None) -> None:
        clear()


_store: AnswerCache | None = AnswerCache(DEFAULT_SIZE)


def configure(max_size: int = DEFAULT_SIZE) -> None:
    """Keep at most ``max_size`` answers (0: cache nothing). A new size starts empty; the same
    size keeps what is cached. ValueError for a negative size."""
    global _store
    if max_size < 0:
        raise ValueError(f"the DNS cache size must be 0 or more, got {max_size!r}")
    current = 0 if _store is None else _store.max_size
    if max_size != current:
        _store = AnswerCache(max_size) if max_size else None


def size() -> int:
    """How many answers the cache may hold (0: off)."""
    return 0 if _store is None else _store.max_size


def clear() -> None:
    """Forget every cached answer (the DNS servers changed, or a test wants fresh lookups)."""
    store = _store
    if store is not None:
        store.flush()


def attach(resolver: dns.resolver.BaseResolver) -> None:
    """Make ``resolver`` use the shared cache (the hook :mod:`mailwarden.lib.dns` calls on
    every resolver it builds)."""
    resolver.cache = _ResolverView(resolver)
