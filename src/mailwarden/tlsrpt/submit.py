"""Sending one report to one ``rua`` destination (RFC 8460 §5).

- ``mailto:`` (§5.3): a ``multipart/report; report-type="tlsrpt"`` message with the
  ``TLS-Report-Domain`` and ``TLS-Report-Submitter`` header fields, the Subject
  ``Report Domain: … Submitter: … Report-ID: <…>``, a short text part and the gzipped report
  as an ``application/tlsrpt+gzip`` attachment named as §5.3 says. It is queued into the
  spool like any message (:func:`report_record`), so retries and bounces work as for mail.
- ``https:`` (§5.4): POST of the gzipped report as ``application/tlsrpt+gzip``; any 2xx is
  success, anything else (or no answer) a :class:`SubmitError`.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import ssl
from pathlib import Path

import httpx

from mailwarden.spool.records import SpooledRecipient, SpoolRecord
from mailwarden.tlsrpt.recorder import REPORT_METADATA
from mailwarden.tlsrpt.report import GZIP_TYPE, Report


class SubmitError(Exception):
    """A report could not be handed to its destination (try again later)."""


def report_message(
    report: Report, *, to: str, sender: str, submitter: str, now: float, message_id: str
) -> bytes:
    """The §5.3 report message, CRLF line ends, 7-bit."""
    seed = hashlib.sha256(f"{report.report_id}{to}{now}".encode()).hexdigest()[:24]
    boundary = f"----=_tlsrpt_{seed}"
    name = report.file_name(submitter)
    attachment = base64.encodebytes(report.gzipped()).decode("ascii").replace("\n", "\r\n")
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Date: {email.utils.formatdate(now, usegmt=True)}",
        f"Message-ID: <{message_id}>",
        # §5.3's Subject, folded before each part (RFC 5322 §2.2.3).
        f"Subject: Report Domain: {report.domain}",
        f" Submitter: {submitter}",
        f" Report-ID: <{report.report_id}>",
        f"TLS-Report-Domain: {report.domain}",
        f"TLS-Report-Submitter: {submitter}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type="tlsrpt";\r\n boundary="{boundary}"',
        "",
        "This is a multipart message in MIME format.",
        "",
        f"--{boundary}",
        'Content-Type: text/plain; charset="us-ascii"',
        "Content-Transfer-Encoding: 7bit",
        "",
        f"This is an aggregate TLS report from {submitter} about {report.domain}",
        f"for {report.day.isoformat()} (UTC), as RFC 8460 describes.",
        "",
        f"--{boundary}",
        f"Content-Type: {GZIP_TYPE}",
        "Content-Transfer-Encoding: base64",
        f'Content-Disposition: attachment;\r\n filename="{name}"',
        "",
        attachment.rstrip("\r\n"),
        f"--{boundary}--",
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def report_record(
    report: Report,
    *,
    to: str,
    sender: str,
    submitter: str,
    server_id: str,
    now: float,
    new_id: str,
) -> SpoolRecord:
    """The report message to ``to`` as a spool record from ``sender``, received ``now``."""
    data = report_message(
        report,
        to=to,
        sender=sender,
        submitter=submitter,
        now=now,
        message_id=f"{new_id}@{submitter}",
    )
    end = data.index(b"\r\n\r\n") + 4
    return SpoolRecord(
        id=new_id,
        server_id=server_id,
        received_at=now,
        sender=sender,
        sender_params={},
        client_ip="",
        client_port=0,
        helo=None,
        tls=None,
        auth=None,
        metadata={REPORT_METADATA: report.domain, "tlsrpt_day": report.day.isoformat()},
        headers=data[:end],
        body=data[end:],
        size=len(data),
        recipients=(SpooledRecipient(to, {}, {}),),
    )


async def post_report(
    report: Report, url: str, *, timeout: float, ca_file: Path | None = None
) -> int:
    """POST the gzipped report to ``url`` (§5.4); the status code. Raises SubmitError."""
    verify: ssl.SSLContext | bool = True
    if ca_file is not None:
        verify = ssl.create_default_context(cafile=str(ca_file))
    try:
        async with httpx.AsyncClient(timeout=timeout, verify=verify, trust_env=False) as client:
            response = await client.post(
                url, content=report.gzipped(), headers={"Content-Type": GZIP_TYPE}
            )
    except httpx.HTTPError as error:
        raise SubmitError(f"POST {url}: {error or type(error).__name__}") from None
    if not 200 <= response.status_code < 300:
        raise SubmitError(f"POST {url}: HTTP {response.status_code}")
    return response.status_code
