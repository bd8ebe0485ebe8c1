"""Counting through the real recorder into tlsrpt.sqlite and the RFC 8460 report built from it."""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import gzip
import json
import tempfile
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.tlsrpt.schema import validate

from mailwarden.delivery.tls import TlsMode, TlsPolicy
from mailwarden.tlsrpt import store
from mailwarden.tlsrpt.recorder import TlsReportRecorder
from mailwarden.tlsrpt.report import Reporter, build_report
from mailwarden.tlsrpt.submit import report_message

NOON = datetime.datetime(2026, 3, 14, 12, 0, tzinfo=datetime.UTC).timestamp()
DAY = datetime.date(2026, 3, 14)
REPORTER = Reporter("Sender Org", "postmaster@mx.sender.example", "mx.sender.example")
STS = TlsPolicy(
    mode=TlsMode.REQUIRED_VERIFY,
    source="mta-sts",
    policy_type="sts",
    policy_domain="example.net",
    policy_strings=("version: STSv1", "mode: enforce", "mx: *.example.net", "max_age: 86400"),
    mx_patterns=("*.example.net",),
)
NONE_FOUND = TlsPolicy(mode=TlsMode.OPTIONAL, policy_domain="example.net")


async def _day_of_two_workers(data_dir: Path) -> None:
    # Two workers count into the same file; the second flushes twice.
    first, second = TlsReportRecorder(clock=lambda: NOON), TlsReportRecorder(clock=lambda: NOON)
    first.start(data_dir, 60)
    second.start(data_dir, 60)
    for _ in range(3):
        first.success(STS)
    first.failure(
        STS,
        "certificate-expired",
        mx_host="mx1.example.net.",
        receiving_ip="192.0.2.1",
        sending_ip="198.51.100.7",
        reason="certificate has expired",
    )
    second.failure(
        STS,
        "certificate-expired",
        mx_host="MX1.example.net",
        receiving_ip="192.0.2.1",
        sending_ip="198.51.100.7",
        reason="certificate has expired",
    )
    await second.flush()
    second.success(NONE_FOUND)
    second.failure(STS, "sts-policy-fetch-error", reason="HTTP 404")
    # Neither a route's own next hop nor tls = "none" is reported anywhere.
    second.success(TlsPolicy(mode=TlsMode.REQUIRED))
    second.success(TlsPolicy(mode=TlsMode.NONE, policy_domain="example.net"))
    await first.stop()
    await second.stop()
    first.success(STS)  # stopped: no longer counted


async def test_a_day_of_two_workers_gives_the_rfc_report(tmp_path: Path) -> None:
    await _day_of_two_workers(tmp_path)
    db = store.connect(store.store_path(tmp_path))
    assert store.domains(db, DAY.isoformat()) == ["example.net"]
    report = build_report(
        "example.net", DAY, store.day_counts(db, DAY.isoformat(), "example.net"), REPORTER
    )
    db.close()
    validate(report.document)
    assert report.document == {
        "organization-name": "Sender Org",
        "date-range": {
            "start-datetime": "2026-03-14T00:00:00Z",
            "end-datetime": "2026-03-14T23:59:59Z",
        },
        "contact-info": "postmaster@mx.sender.example",
        "report-id": "2026-03-14.example.net@mx.sender.example",
        "policies": [
            {
                "policy": {"policy-type": "no-policy-found", "policy-domain": "example.net"},
                "summary": {
                    "total-successful-session-count": 1,
                    "total-failure-session-count": 0,
                },
            },
            {
                "policy": {
                    "policy-type": "sts",
                    "policy-string": list(STS.policy_strings),
                    "policy-domain": "example.net",
                    "mx-host": ["*.example.net"],
                },
                "summary": {
                    "total-successful-session-count": 3,
                    "total-failure-session-count": 3,
                },
                "failure-details": [
                    {
                        "result-type": "certificate-expired",
                        "sending-mta-ip": "198.51.100.7",
                        "receiving-mx-hostname": "mx1.example.net",
                        "receiving-ip": "192.0.2.1",
                        "failed-session-count": 2,
                        "failure-reason-code": "certificate has expired",
                    },
                    {
                        "result-type": "sts-policy-fetch-error",
                        "failed-session-count": 1,
                        "failure-reason-code": "HTTP 404",
                    },
                ],
            },
        ],
    }


def test_the_schema_refuses_what_the_rfc_does_not_allow() -> None:
    report = build_report("example.net", DAY, [], REPORTER).document
    with pytest.raises(jsonschema.ValidationError):
        validate(report)  # no policies
    report["policies"] = [{"policy": {"policy-type": "sts", "policy-domain": "example.net"}}]
    with pytest.raises(jsonschema.ValidationError):
        validate(report)  # no summary
    report["policies"][0]["summary"] = {
        "total-successful-session-count": 1,
        "total-failure-session-count": 0,
    }
    validate(report)
    report["date-range"]["start-datetime"] = "2026-03-14 00:00"
    with pytest.raises(jsonschema.ValidationError):
        validate(report)


async def test_the_mailed_report_has_the_rfc_headers_and_gzip_attachment(tmp_path: Path) -> None:
    await _day_of_two_workers(tmp_path)
    db = store.connect(store.store_path(tmp_path))
    report = build_report(
        "example.net", DAY, store.day_counts(db, DAY.isoformat(), "example.net"), REPORTER
    )
    db.close()
    data = report_message(
        report,
        to="tlsrpt@example.net",
        sender="tlsrpt-noreply@mx.sender.example",
        submitter="mx.sender.example",
        now=NOON + 3600,
        message_id="abc@mx.sender.example",
    )
    assert all(len(line) <= 78 for line in data.split(b"\r\n")), "lines must fit RFC 5322 §2.1.1"
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert message["TLS-Report-Domain"] == "example.net"
    assert message["TLS-Report-Submitter"] == "mx.sender.example"
    assert message["Subject"] == (
        "Report Domain: example.net Submitter: mx.sender.example"
        " Report-ID: <2026-03-14.example.net@mx.sender.example>"
    )
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    begin = int(datetime.datetime(2026, 3, 14, tzinfo=datetime.UTC).timestamp())
    assert (
        attachment.get_filename()
        == f"mx.sender.example!example.net!{begin}!{begin + 86399}.json.gz"
    )
    assert json.loads(gzip.decompress(attachment.get_content())) == report.document


RESULT_TYPES = [
    "starttls-not-supported",
    "certificate-host-mismatch",
    "certificate-expired",
    "certificate-not-trusted",
    "validation-failure",
    "tlsa-invalid",
    "dnssec-invalid",
    "sts-policy-fetch-error",
]
_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_EVENT = st.one_of(
    st.tuples(st.just("success"), st.sampled_from(["sts", "tlsa", "no-policy-found"])),
    st.tuples(
        st.sampled_from(RESULT_TYPES),
        st.sampled_from(["sts", "tlsa", "no-policy-found"]),
        st.sampled_from(["", "mx1.example.net", "MX2.example.net."]),
        st.sampled_from(["", "192.0.2.1", "2001:db8::1"]),
        _TEXT,
    ),
)


@settings(max_examples=40, deadline=None)
@given(events=st.lists(_EVENT, min_size=1, max_size=30))
def test_any_day_gives_a_valid_report_whose_details_add_up(events: list[tuple]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        document = asyncio.run(_report_of(Path(directory), events))
    validate(document)
    for entry in document["policies"]:
        details = entry.get("failure-details", [])
        assert (
            sum(d["failed-session-count"] for d in details)
            == entry["summary"]["total-failure-session-count"]
        )
    successes = sum(e["summary"]["total-successful-session-count"] for e in document["policies"])
    assert successes == sum(1 for event in events if event[0] == "success")


async def _report_of(data_dir: Path, events: list[tuple]) -> dict:
    recorder = TlsReportRecorder(clock=lambda: NOON)
    recorder.start(data_dir, 60)
    for event in events:
        policy = TlsPolicy(
            mode=TlsMode.REQUIRED_VERIFY, policy_type=event[1], policy_domain="example.net"
        )
        if event[0] == "success":
            recorder.success(policy)
        else:
            _, _, host, address, reason = event
            recorder.failure(policy, event[0], mx_host=host, receiving_ip=address, reason=reason)
    await recorder.stop()
    db = store.connect(store.store_path(data_dir))
    try:
        counts = store.day_counts(db, DAY.isoformat(), "example.net")
    finally:
        db.close()
    return build_report("example.net", DAY, counts, REPORTER).document
