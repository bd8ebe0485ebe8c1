"""The persistent layer of the MTA-STS policy cache: ``<data_dir>/mta-sts.sqlite``.

RFC 8461 §5.1 wants a fetched policy kept for its ``max_age`` across restarts (that is what
protects the first connection after a restart from a downgrade). One row per policy domain;
WAL mode so the workers of a node share the file, each writing the policies it fetched
(the last writer wins, which is fine: both fetched a valid policy of the domain).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from mailwarden.delivery.mta_sts.policy import Policy, PolicyError, parse_policy

__all__ = ["FILE_NAME", "CachedPolicy", "PolicyStore"]

FILE_NAME = "mta-sts.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (
    domain TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,   -- the TXT record's id when the policy was fetched
    text TEXT NOT NULL,        -- the policy file as fetched
    fetched_at REAL NOT NULL   -- Unix seconds
) WITHOUT ROWID
"""


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    """A policy with the TXT id it was fetched under and when (Unix seconds)."""

    domain: str
    policy_id: str
    text: str
    policy: Policy
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.policy.max_age

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class PolicyStore:
    """The SQLite file of cached policies. Raises sqlite3.Error when the file cannot be used;
    the caller then works from memory only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def load(self, domain: str) -> CachedPolicy | None:
        row = self._db.execute(
            "SELECT policy_id, text, fetched_at FROM policies WHERE domain = ?", (domain,)
        ).fetchone()
        if row is None:
            return None
        try:
            policy = parse_policy(row[1])
        except PolicyError:
            return None  # cannot happen for what save() wrote; a hand-edited row is ignored
        return CachedPolicy(domain, row[0], row[1], policy, float(row[2]))

    def save(self, cached: CachedPolicy) -> None:
        self._db.execute(
            "INSERT INTO policies (domain, policy_id, text, fetched_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (domain) DO UPDATE SET policy_id = excluded.policy_id,"
            " text = excluded.text, fetched_at = excluded.fetched_at",
            (cached.domain, cached.policy_id, cached.text, cached.fetched_at),
        )

    def close(self) -> None:
        self._db.close()
