"""Counting outbound TLS sessions for the reports, in memory, flushed to ``store.py``.

Each worker has one :class:`TlsReportRecorder` (:func:`current`); counting a session is two
dictionary updates, so recording costs nothing a delivery would notice. The worker's flush
task writes what was counted every ``[tlsrpt] flush_interval`` seconds and at stop, in a
thread (SQLite must not stall the event loop); a failed write keeps the counts for the next.
Until a worker starts it, the recorder is off and counts nothing (the CLI, unit tests).

What counts (RFC 8460 §4.2, §4.4: "successfully negotiated TLS-enabled connections" and
"failures to negotiate a TLS-enabled connection", per policy):

- a session that completed STARTTLS as its policy asked: a success;
- a session whose STARTTLS or certificate failed its policy (``DeliveryError.tls_failure``,
  the next MX then tried): a failure of that result type;
- an opportunistic session whose handshake failed and that went on in plaintext: a failure
  of its result type (TLS was tried and could not be negotiated);
- an opportunistic session to a server that does not offer STARTTLS: nothing. No policy asked
  for TLS and none was tried; a report counts negotiations, and ``starttls-not-supported`` is
  counted only where the policy required TLS (then the session fails with that type);
- routes with ``tls = "none"`` and deliveries that are not to an MX (``policy_domain`` None,
  a smarthost): nothing; no policy domain can be told about them;
- the delivery of a report itself (:data:`REPORT_TLS_SOURCE`): nothing (§5.3).

The DANE and MTA-STS lookups report their own failures (``dnssec-invalid``,
``sts-policy-fetch-error``, ...) with :meth:`TlsReportRecorder.failure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mailwarden.delivery.errors import DeliveryError
from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.tlsrpt import store
from mailwarden.tlsrpt.store import Counts, FailureKey, PolicyKey

if TYPE_CHECKING:
    from mailwarden.delivery.connection import OutboundConnection
    from mailwarden.delivery.mx import Target

log = logging.getLogger("mailwarden.tlsrpt")

# A report message's metadata key (its policy domain), and the TLS policy source its delivery
# gets: RFC 8460 §5.3, reports "MUST" be delivered "despite any TLS-related failures" and
# "SHOULD NOT" be counted in the next report, so they go with opportunistic TLS, without
# DANE or MTA-STS, and are not counted.
REPORT_METADATA = "tlsrpt_for"
REPORT_TLS_SOURCE = "tlsrpt-report"

REASON_LIMIT = 300  # characters of failure-reason-code kept: a reason, not a transcript


def utc_day(timestamp: float) -> str:
    """The UTC day (``YYYY-MM-DD``) a moment belongs to (RFC 8460 §4.1: reports cover UTC days)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).date().isoformat()


def policy_key(policy: TlsPolicy) -> PolicyKey | None:
    """The report policy a session under ``policy`` counts in; None when none is reported."""
    if policy.policy_domain is None or policy.mode is TlsMode.NONE:
        return None
    if policy.source == REPORT_TLS_SOURCE:
        return None
    return PolicyKey(
        policy.policy_type,
        policy.policy_domain.lower(),
        tuple(policy.policy_strings),
        tuple(policy.mx_patterns),
    )


class TlsReportRecorder:
    """One worker's counts since the last flush."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.enabled = False
        self.path: Path | None = None
        self.flush_interval = 5.0
        self._sessions: dict[tuple[str, PolicyKey], Counts] = {}
        self._failures: dict[tuple[str, PolicyKey, FailureKey], int] = {}
        self._task: asyncio.Task[None] | None = None

    # --- counting ------------------------------------------------------------------

    def success(self, policy: TlsPolicy) -> None:
        """One session that negotiated TLS as ``policy`` asked."""
        key = policy_key(policy)
        if not self.enabled or key is None:
            return
        day = utc_day(self.clock())
        self._sessions.setdefault((day, key), Counts()).successes += 1

    def failure(
        self,
        policy: TlsPolicy,
        result_type: str,
        *,
        mx_host: str = "",
        receiving_ip: str = "",
        sending_ip: str = "",
        mx_helo: str = "",
        reason: str = "",
        information: str = "",
    ) -> None:
        """One session (or policy lookup) that failed ``policy`` with ``result_type``, an
        RFC 8460 §4.3 result type (``certificate-expired``, ``dnssec-invalid``,
        ``sts-policy-fetch-error``, ...). ``mx_host``, ``receiving_ip``, ``sending_ip`` and
        ``mx_helo`` when a session was made; ``reason`` the failure-reason-code text,
        ``information`` an additional-information URI."""
        key = policy_key(policy)
        if not self.enabled or key is None:
            return
        day = utc_day(self.clock())
        self._sessions.setdefault((day, key), Counts()).failures += 1
        detail = FailureKey(
            result_type,
            sending_ip,
            mx_host.strip("[]").rstrip(".").lower(),
            receiving_ip,
            mx_helo,
            reason[:REASON_LIMIT],
            information,
        )
        self._failures[(day, key, detail)] = self._failures.get((day, key, detail), 0) + 1

    def connection_attempts(
        self,
        targets: Sequence[Target],
        policies: Sequence[TlsPolicy],
        failures: Sequence[DeliveryError],
        connection: OutboundConnection | None,
    ) -> None:
        """What one ``open_first`` did: ``failures`` are the errors of ``targets`` tried in
        order (policy ``policies[i]``), then ``connection`` (None when every target failed)."""
        if not self.enabled:
            return
        for target, policy, error in zip(targets, policies, failures, strict=False):
            if error.tls_failure is None:
                continue  # it failed before TLS (connect, greeting) or for our own config
            self.failure(
                policy,
                error.tls_failure,
                mx_host=target.host,
                receiving_ip=target.address,
                sending_ip=error.source_ip or "",
                reason=error.reply.text,
            )
        if connection is None:
            return
        tls = connection.tls
        if tls.policy.policy_failure is not None:
            # The policy lookup failed (an MTA-STS fetch error, an MX a testing policy does
            # not list): the session counts as that failure, RFC 8460 §4.3.2.
            target = connection.target
            self.failure(
                tls.policy,
                tls.policy.policy_failure,
                mx_host=target.host,
                receiving_ip=target.address,
                sending_ip=connection.source_ip,
                reason="MTA-STS policy lookup",
            )
        elif tls.protocol is not None:
            self.success(tls.policy)
        elif tls.failure is not None and tls.failure != "starttls-not-supported":
            target = connection.target
            self.failure(
                tls.policy,
                tls.failure,
                mx_host=target.host,
                receiving_ip=target.address,
                sending_ip=connection.source_ip,
                reason="the TLS handshake failed; delivered without TLS (opportunistic)",
            )

    # --- flushing ------------------------------------------------------------------

    def start(self, data_dir: Path, flush_interval: float) -> None:
        """Count from now on and flush into ``data_dir`` every ``flush_interval`` seconds
        (on the running event loop)."""
        self.enabled = True
        self.path = store.store_path(data_dir)
        self.flush_interval = flush_interval
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def stop(self) -> None:
        """Stop counting and write what is left."""
        self.enabled = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    async def flush(self) -> None:
        """Write the counts so far (in a thread); on failure they wait for the next flush."""
        if self.path is None or not (self._sessions or self._failures):
            return
        sessions, failures = self._sessions, self._failures
        self._sessions, self._failures = {}, {}
        path = self.path
        oldest = utc_day(self.clock() - store.KEEP_DAYS * 86400)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, _write, path, sessions, failures, oldest
            )
        except Exception as error:  # kept for the next flush, logged
            log.warning("TLS report counts not written to %s (kept for later): %s", path, error)
            for key, counts in sessions.items():
                mine = self._sessions.setdefault(key, Counts())
                mine.successes += counts.successes
                mine.failures += counts.failures
            for detail, count in failures.items():
                self._failures[detail] = self._failures.get(detail, 0) + count


def _write(
    path: Path,
    sessions: dict[tuple[str, PolicyKey], Counts],
    failures: dict[tuple[str, PolicyKey, FailureKey], int],
    oldest: str,
) -> None:
    db = store.connect(path)
    try:
        store.add(db, sessions, failures, oldest_day=oldest)
    finally:
        db.close()


_CURRENT = TlsReportRecorder()


def current() -> TlsReportRecorder:
    """This process's recorder (off until its worker starts it)."""
    return _CURRENT
