"""The aggregate report of one policy domain for one UTC day (RFC 8460 §4.4), its file
name (§5.3) and its gzip form (§5.3: ``application/tlsrpt+gzip``)."""

from __future__ import annotations

import datetime
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mailwarden.tlsrpt.store import PolicyCounts

GZIP_TYPE = "application/tlsrpt+gzip"
JSON_TYPE = "application/tlsrpt+json"


@dataclass(frozen=True, slots=True)
class Reporter:
    """Who reports: ``[tlsrpt]`` organization_name, contact_info and submitter (the
    node's host name, the sender of the §5.3 file name and header)."""

    organization_name: str
    contact_info: str
    submitter: str


@dataclass(frozen=True, slots=True)
class Report:
    domain: str
    day: datetime.date
    report_id: str
    document: dict[str, Any]

    @property
    def begin(self) -> int:
        """Unix seconds of the day's first second (UTC)."""
        start = datetime.datetime.combine(self.day, datetime.time(), datetime.UTC)
        return int(start.timestamp())

    @property
    def end(self) -> int:
        """Unix seconds of the day's last second, as the date-range's end says."""
        return self.begin + 86399

    def json_bytes(self) -> bytes:
        return json.dumps(self.document, indent=2, ensure_ascii=False).encode() + b"\n"

    def gzipped(self) -> bytes:
        # mtime 0: the same report compresses to the same bytes (a resend is recognisable).
        return gzip.compress(self.json_bytes(), mtime=0)

    def file_name(self, submitter: str) -> str:
        """§5.3: ``sender!policy-domain!begin-timestamp!end-timestamp.json.gz``."""
        return f"{submitter}!{self.domain}!{self.begin}!{self.end}.json.gz"


def report_id(day: datetime.date, domain: str, submitter: str) -> str:
    """The same id for the same day, domain and sender, so that a report sent again (a rerun
    of ``tlsrpt send``) is recognised as a duplicate (§5.3: Report-ID); shaped as a msg-id's
    content (RFC 5322 §3.6.4) so that the Subject can carry it in angle brackets."""
    return f"{day.isoformat()}.{domain}@{submitter}"


def build_report(
    domain: str, day: datetime.date, counts: Sequence[PolicyCounts], reporter: Reporter
) -> Report:
    """The §4.4 JSON object for ``domain`` on ``day`` from the stored counts."""
    identifier = report_id(day, domain, reporter.submitter)
    document: dict[str, Any] = {
        "organization-name": reporter.organization_name,
        "date-range": {
            "start-datetime": f"{day.isoformat()}T00:00:00Z",
            "end-datetime": f"{day.isoformat()}T23:59:59Z",
        },
        "contact-info": reporter.contact_info,
        "report-id": identifier,
        "policies": [_policy(entry) for entry in counts],
    }
    return Report(domain, day, identifier, document)


def _policy(entry: PolicyCounts) -> dict[str, Any]:
    key = entry.policy
    policy: dict[str, Any] = {"policy-type": key.policy_type}
    if key.policy_strings:
        policy["policy-string"] = list(key.policy_strings)
    policy["policy-domain"] = key.policy_domain
    if key.mx_patterns:
        policy["mx-host"] = list(key.mx_patterns)
    out: dict[str, Any] = {
        "policy": policy,
        "summary": {
            "total-successful-session-count": entry.successes,
            "total-failure-session-count": entry.failures,
        },
    }
    details = []
    for detail, count in entry.details:
        item: dict[str, Any] = {"result-type": detail.result_type}
        optional = (
            ("sending-mta-ip", detail.sending_mta_ip),
            ("receiving-mx-hostname", detail.receiving_mx_hostname),
            ("receiving-mx-helo", detail.receiving_mx_helo),
            ("receiving-ip", detail.receiving_ip),
        )
        item.update((name, value) for name, value in optional if value)
        item["failed-session-count"] = count
        if detail.additional_information:
            item["additional-information"] = detail.additional_information
        if detail.failure_reason_code:
            item["failure-reason-code"] = detail.failure_reason_code
        details.append(item)
    if details:
        out["failure-details"] = details
    return out
