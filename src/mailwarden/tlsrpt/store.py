"""The TLS report counts in the node's SQLite file, ``<data_dir>/tlsrpt.sqlite``.

Every worker flushes its in-memory counts here every few seconds and at stop (one
``BEGIN IMMEDIATE`` transaction, UPSERTs that add), so several workers write the same rows
without losing an increment; ``mailwarden tlsrpt send`` and the daily job read. WAL mode, so
a reader never waits for a writer. A crash loses at most the counts of one flush interval,
never counts twice. Rows older than :data:`KEEP_DAYS` go at each flush.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "tlsrpt.sqlite"
KEEP_DAYS = 31  # a report for a day is sent the next day; a month covers reruns by hand

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS sessions (
        day TEXT NOT NULL,            -- YYYY-MM-DD, UTC (RFC 8460 §4.1: whole UTC days)
        domain TEXT NOT NULL,         -- the policy domain
        policy TEXT NOT NULL,         -- PolicyKey as JSON
        successes INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        PRIMARY KEY (day, domain, policy)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS failures (
        day TEXT NOT NULL,
        domain TEXT NOT NULL,
        policy TEXT NOT NULL,
        detail TEXT NOT NULL,         -- FailureKey as JSON
        count INTEGER NOT NULL,
        PRIMARY KEY (day, domain, policy, detail)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS sent (
        day TEXT NOT NULL,
        domain TEXT NOT NULL,
        destination TEXT NOT NULL,    -- the rua URI
        at REAL NOT NULL,             -- Unix seconds
        PRIMARY KEY (day, domain, destination)
    ) WITHOUT ROWID
    """,
)


@dataclass(frozen=True, slots=True)
class PolicyKey:
    """The RFC 8460 §4.4 "policy" object a session counts under."""

    policy_type: str  # "sts", "tlsa" or "no-policy-found"
    policy_domain: str
    policy_strings: tuple[str, ...] = ()
    mx_patterns: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            [self.policy_type, self.policy_domain, self.policy_strings, self.mx_patterns]
        )

    @classmethod
    def from_json(cls, text: str) -> PolicyKey:
        kind, domain, strings, patterns = json.loads(text)
        return cls(str(kind), str(domain), tuple(strings), tuple(patterns))


@dataclass(frozen=True, slots=True)
class FailureKey:
    """One RFC 8460 §4.4 "failure-details" entry, without its count. Empty strings stand for
    fields that do not apply (no MX host for a policy fetch failure)."""

    result_type: str
    sending_mta_ip: str = ""
    receiving_mx_hostname: str = ""
    receiving_ip: str = ""
    receiving_mx_helo: str = ""
    failure_reason_code: str = ""
    additional_information: str = ""

    def to_json(self) -> str:
        return json.dumps(
            [
                self.result_type,
                self.sending_mta_ip,
                self.receiving_mx_hostname,
                self.receiving_ip,
                self.receiving_mx_helo,
                self.failure_reason_code,
                self.additional_information,
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> FailureKey:
        return cls(*(str(part) for part in json.loads(text)))


@dataclass
class Counts:
    successes: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class PolicyCounts:
    """What a day holds for one policy of one domain."""

    policy: PolicyKey
    successes: int
    failures: int
    details: tuple[tuple[FailureKey, int], ...]


def store_path(data_dir: Path) -> Path:
    return Path(data_dir) / FILE_NAME


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating) the file. Raises sqlite3.Error or OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    for statement in _SCHEMA:
        db.execute(statement)
    return db


def add(
    db: sqlite3.Connection,
    sessions: Mapping[tuple[str, PolicyKey], Counts],
    failures: Mapping[tuple[str, PolicyKey, FailureKey], int],
    *,
    oldest_day: str | None = None,
) -> None:
    """Add the counts (keyed by day first) in one transaction; with ``oldest_day``, remove
    the days before it. Raises sqlite3.Error (nothing is added then)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(
            "INSERT INTO sessions (day, domain, policy, successes, failures)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (day, domain, policy) DO UPDATE"
            " SET successes = successes + excluded.successes,"
            " failures = failures + excluded.failures",
            [
                (day, key.policy_domain, key.to_json(), counts.successes, counts.failures)
                for (day, key), counts in sessions.items()
            ],
        )
        db.executemany(
            "INSERT INTO failures (day, domain, policy, detail, count) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (day, domain, policy, detail) DO UPDATE"
            " SET count = count + excluded.count",
            [
                (day, key.policy_domain, key.to_json(), detail.to_json(), count)
                for (day, key, detail), count in failures.items()
            ],
        )
        if oldest_day is not None:
            for table in ("sessions", "failures", "sent"):
                db.execute(f"DELETE FROM {table} WHERE day < ?", (oldest_day,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def domains(db: sqlite3.Connection, day: str) -> list[str]:
    """The policy domains with sessions on ``day``, sorted."""
    rows = db.execute("SELECT DISTINCT domain FROM sessions WHERE day = ? ORDER BY domain", (day,))
    return [str(row[0]) for row in rows]


def day_counts(db: sqlite3.Connection, day: str, domain: str) -> list[PolicyCounts]:
    """Every policy ``domain`` had sessions under on ``day``, with its failure details."""
    details: dict[str, list[tuple[FailureKey, int]]] = {}
    for policy, detail, count in db.execute(
        "SELECT policy, detail, count FROM failures WHERE day = ? AND domain = ?"
        " ORDER BY policy, detail",
        (day, domain),
    ):
        details.setdefault(policy, []).append((FailureKey.from_json(detail), int(count)))
    return [
        PolicyCounts(
            PolicyKey.from_json(policy),
            int(successes),
            int(failures),
            tuple(details.get(policy, ())),
        )
        for policy, successes, failures in db.execute(
            "SELECT policy, successes, failures FROM sessions WHERE day = ? AND domain = ?"
            " ORDER BY policy",
            (day, domain),
        )
    ]


def sent_to(db: sqlite3.Connection, day: str, domain: str) -> set[str]:
    """The rua destinations the report of ``domain`` for ``day`` already went to."""
    rows = db.execute("SELECT destination FROM sent WHERE day = ? AND domain = ?", (day, domain))
    return {str(row[0]) for row in rows}


def mark_sent(
    db: sqlite3.Connection, day: str, domain: str, destinations: Iterable[str], at: float
) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO sent (day, domain, destination, at) VALUES (?, ?, ?, ?)",
        [(day, domain, destination, at) for destination in destinations],
    )
