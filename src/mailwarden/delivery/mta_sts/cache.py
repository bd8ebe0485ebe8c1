"""A domain's current MTA-STS policy, from memory, the SQLite file, DNS and HTTPS (RFC 8461
§5.1).

:meth:`MtaSts.lookup` is asked for every new connection to a domain. Within
``recheck`` seconds of the last look it answers from memory (a dict look-up). Otherwise it
reads the ``_mta-sts`` TXT record and fetches the policy when there is none cached, when the
record's id differs from the cached policy's, when the cached one has expired (``max_age``),
or when it was fetched more than ``refresh`` seconds ago (§5.1 suggests refreshing daily).

When no live policy can be had (no TXT record, a DNS failure, a failed fetch) an unexpired
cached policy keeps applying (§5.1: "the sender MUST apply that cached policy"); without
one the domain is treated as not using MTA-STS, and a failed fetch is reported (the lookup's
``failure``, an RFC 8460 result type such as ``sts-policy-fetch-error``).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailwarden.delivery.mta_sts.fetch import FETCH_TIMEOUT, FetchError, discover, fetch_policy
from mailwarden.delivery.mta_sts.store import CachedPolicy, PolicyStore
from mailwarden.lib import dns

__all__ = ["RECHECK", "REFRESH", "MtaSts", "StsLookup"]

log = logging.getLogger("mailwarden.delivery")

RECHECK = 300.0  # seconds between TXT look-ups for one domain (RFC 8461 §10.3: limit fetches)
REFRESH = 86400.0  # seconds after which a policy is fetched again even with the same id


@dataclass(frozen=True, slots=True)
class StsLookup:
    """What applies to a domain now: ``cached`` (an unexpired policy; its mode may be
    ``none``) or nothing; ``failure`` the RFC 8460 result type of a failed fetch when no
    policy applies because of it."""

    cached: CachedPolicy | None = None
    failure: str | None = None


@dataclass(slots=True)
class _Entry:
    lookup: StsLookup
    check_after: float


class MtaSts:
    """One worker's MTA-STS policies. ``store``: the persistent layer (None: memory only);
    ``ca_file``: the bundle that policy hosts' certificates must chain to (None: the system
    store); ``port``: the policy host's HTTPS port (443; tests change it only when they
    cannot bind 443)."""

    def __init__(
        self,
        store: PolicyStore | None = None,
        *,
        ca_file: Path | None = None,
        port: int = 443,
        recheck: float = RECHECK,
        refresh: float = REFRESH,
        fetch_timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ca_file = ca_file
        self.port = port
        self.recheck = recheck
        self.refresh = refresh
        self.fetch_timeout = fetch_timeout
        self.clock = clock
        self._memory: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def in_data_dir(cls, data_dir: Path, *, ca_file: Path | None = None) -> MtaSts:
        """The node's cache, persisted in ``<data_dir>/mta-sts.sqlite`` (memory only, with a
        logged warning, when that file cannot be opened)."""
        from mailwarden.delivery.mta_sts.store import FILE_NAME

        try:
            store: PolicyStore | None = PolicyStore(Path(data_dir) / FILE_NAME)
        except (OSError, sqlite3.Error) as error:
            log.warning(
                "MTA-STS cache %s unusable, keeping policies in memory: %s", data_dir, error
            )
            store = None
        return cls(store, ca_file=ca_file)

    async def lookup(self, domain: str) -> StsLookup:
        """The policy that applies to ``domain`` now (see the module docstring). Never raises
        for DNS or HTTPS trouble: that is a lookup without a policy, or with the cached one."""
        domain = domain.lower().rstrip(".")
        entry = self._memory.get(domain)
        now = self.clock()
        if entry is not None and now < entry.check_after:
            return self._still_valid(entry.lookup, now)
        lock = self._locks.setdefault(domain, asyncio.Lock())
        async with lock:  # one TXT look-up and fetch per domain, however many connections
            entry = self._memory.get(domain)
            now = self.clock()
            if entry is not None and now < entry.check_after:
                return self._still_valid(entry.lookup, now)
            cached = entry.lookup.cached if entry is not None else self._load(domain)
            result = await self._refresh(domain, cached, now)
            self._memory[domain] = _Entry(result, self.clock() + self.recheck)
            return result

    def _still_valid(self, lookup: StsLookup, now: float) -> StsLookup:
        if lookup.cached is not None and lookup.cached.expired(now):
            return StsLookup()  # an expired policy must not be applied (§5.1)
        return lookup

    def _load(self, domain: str) -> CachedPolicy | None:
        if self.store is None:
            return None
        try:
            return self.store.load(domain)
        except sqlite3.Error as error:
            log.warning("MTA-STS cache: cannot read %s: %s", domain, error)
            return None

    async def _refresh(self, domain: str, cached: CachedPolicy | None, now: float) -> StsLookup:
        if cached is not None and cached.expired(now):
            cached = None
        try:
            policy_id = await discover(domain)
        except dns.DnsError as error:
            log.info("MTA-STS %s: %s; %s", domain, error, "cached policy" if cached else "none")
            return StsLookup(cached)
        if policy_id is None:
            return StsLookup(cached)  # no live record: the cached policy, if any (§5.1)
        if (
            cached is not None
            and cached.policy_id == policy_id
            and now - cached.fetched_at < self.refresh
        ):
            return StsLookup(cached)
        try:
            policy, text = await fetch_policy(
                domain, ca_file=self.ca_file, port=self.port, timeout=self.fetch_timeout
            )
        except FetchError as error:
            log.info("MTA-STS %s: policy fetch failed: %s", domain, error)
            return StsLookup(cached, None if cached is not None else error.result_type)
        fresh = CachedPolicy(domain, policy_id, text, policy, self.clock())
        if self.store is not None:
            try:
                self.store.save(fresh)
            except sqlite3.Error as error:
                log.warning("MTA-STS cache: cannot save %s: %s", domain, error)
        return StsLookup(fresh)
