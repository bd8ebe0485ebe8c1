"""A day of real deliveries, counted by the node and reported as RFC 8460 says.

The sending node resolves MX records from nsd on loopback. ``mixed.test`` has two MX hosts
on a Mailwarden peer whose certificate names only the second, under ``required_verify``: the
first session fails (certificate-host-mismatch), the second delivers. ``plain.test``'s MX is
smtp-sink (no STARTTLS) under ``required``: starttls-not-supported, the message deferred.
``open.test`` goes to the same sink opportunistically: not counted (no policy asked for TLS).
``tlsrpt send --dry-run`` prints the reports and sends nothing; ``tlsrpt send`` has the node
mail them to the sink and posts one to a local HTTPS server.
"""

from __future__ import annotations

import datetime
import email
import email.policy
import gzip
import json
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme
from tests.queue.delivery_support import queued, received, send, sending_node, wait_until
from tests.support.dns_server import dns_server
from tests.support.node import Node, free_port, node_process, node_user_line
from tests.support.sink import smtp_sink
from tests.tlsrpt.schema import validate

from mailwarden.tlsrpt import store

SENDER = "alice@sender.example"


@dataclass
class Posted:
    path: str
    content_type: str
    body: bytes


@dataclass
class HttpsReceiver:
    port: int
    posts: list[Posted] = field(default_factory=list)


@contextmanager
def https_receiver(ca: trustme.CA) -> Iterator[HttpsReceiver]:
    """An HTTPS server on 127.0.0.1 that keeps every POST and answers 201."""
    receiver = HttpsReceiver(free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            receiver.posts.append(Posted(self.path, self.headers["Content-Type"], body))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", receiver.port), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def tls_peer(directory: Path, port: int, ca: trustme.CA) -> Iterator[Node]:
    """A Mailwarden that keeps what it gets for mixed.test, its certificate for mx2 only, on
    127.0.0.1 (mx1) and 127.0.0.3 (mx2): a target list holds each address once."""
    directory.mkdir(parents=True)
    cert = ca.issue_cert("mx2.mixed.test")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    path = directory / "mailwarden.toml"
    path.write_text(
        f"""
[node]
data_dir = "data"
workers = 1
shutdown_grace = 5
hostname = "peer.test.example"
{node_user_line()}

[queue]
deliver = false

[[servers]]
id = "peer"
listen = ["127.0.0.1:{port}", "127.0.0.3:{port}"]
trusted_networks = []
local_domains = ["mixed.test"]
tls_certificate = "cert.pem"
tls_key = "key.pem"
"""
    )
    with node_process(directory, path, port) as node:
        yield node


def zones(https_port: int) -> dict[str, str]:
    both = f"mailto:tlsrpt@reports.test,https://127.0.0.1:{https_port}/tlsrpt"
    return {
        "mixed.test": f"""
            @ IN MX 10 mx1.mixed.test.
            @ IN MX 20 mx2.mixed.test.
            mx1 IN A 127.0.0.1
            mx2 IN A 127.0.0.3
            _smtp._tls IN TXT "v=TLSRPTv1; rua={both}"
        """,
        "plain.test": """
            @ IN MX 10 mx.plain.test.
            mx IN A 127.0.0.2
            _smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"
        """,
        "open.test": """
            @ IN MX 10 mx.open.test.
            mx IN A 127.0.0.2
            _smtp._tls IN TXT "v=TLSRPTv1; rua=mailto:tlsrpt@reports.test"
        """,
        "reports.test": """
            @ IN MX 10 mx.reports.test.
            mx IN A 127.0.0.2
        """,
    }


def body(peer_port: int) -> str:
    return f"""
[delivery]
port = {peer_port}

[[routes]]
domains = ["mixed.test"]
tls = "required_verify"
tls_ca_file = "ca.pem"

[[routes]]
domains = ["plain.test"]
tls = "required"

[queue]
retry_intervals = [600]
poll_interval = 0.2

[tlsrpt]
organization_name = "Sender Org"
flush_interval = 0.2
https_ca_file = "ca.pem"
"""


def tlsrpt_send(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "mailwarden.cli.main", "tlsrpt", "send"]
    return subprocess.run(
        [*command, "-c", str(node.config_path), *args],
        cwd=node.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )


def documents(output: str) -> dict[str, dict[str, Any]]:
    """The JSON reports in a dry run's output, by policy domain."""
    decoder, found, at = json.JSONDecoder(), {}, 0
    while (start := output.find("\n{", at)) >= 0:
        document, at = decoder.raw_decode(output, start + 1)
        found[document["policies"][0]["policy"]["policy-domain"]] = document
    return found


def expected(day: str, domain: str, successes: int, details: list[dict[str, Any]]) -> dict:
    return {
        "organization-name": "Sender Org",
        "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": "postmaster@mx.sender.example",
        "report-id": f"{day}.{domain}@mx.sender.example",
        "policies": [
            {
                "policy": {"policy-type": "no-policy-found", "policy-domain": domain},
                "summary": {
                    "total-successful-session-count": successes,
                    "total-failure-session-count": len(details),
                },
                "failure-details": details,
            }
        ],
    }


def counted(data_dir: Path, day: str) -> dict[str, tuple[int, int]]:
    path = store.store_path(data_dir)
    if not path.exists():
        return {}
    db = store.connect(path)
    try:
        return {
            domain: (sum(c.successes for c in rows), sum(c.failures for c in rows))
            for domain in store.domains(db, day)
            for rows in [store.day_counts(db, day, domain)]
        }
    finally:
        db.close()


def test_a_day_of_deliveries_is_reported_by_mail_and_https(tmp_path: Path) -> None:
    ca = trustme.CA()
    peer_port = free_port()
    out = tmp_path / "out"
    out.mkdir()
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    with (
        https_receiver(ca) as receiver,
        dns_server(tmp_path / "dns", zones(receiver.port)) as dns,
        tls_peer(tmp_path / "peer", peer_port, ca) as peer,
        smtp_sink(tmp_path, host="127.0.0.2", port=peer_port) as sink,
        sending_node(
            out, body=body(peer_port), node_extra=f'dns_servers = ["{dns.address}"]'
        ) as node,
    ):
        day = datetime.datetime.now(datetime.UTC).date().isoformat()
        send(node.port, SENDER, ["bob@mixed.test"], "mixed")
        send(node.port, SENDER, ["carol@plain.test"], "plain")
        send(node.port, SENDER, ["dave@open.test"], "open")
        wait_until(lambda: len(received(peer)) == 1, what="mixed.test delivered by mx2")
        wait_until(lambda: len(sink.messages()) == 1, what="open.test delivered in plaintext")
        wait_until(
            lambda: counted(out / "data", day) == {"mixed.test": (1, 1), "plain.test": (0, 1)},
            what=f"the counts flushed, not {counted(out / 'data', day)}",
        )
        (deferred,) = queued(node)
        assert deferred.recipients[0].address == "carol@plain.test"

        dry = tlsrpt_send(node, "--date", day, "--dry-run")
        assert dry.returncode == 0, dry.stderr
        lines = dry.stdout.splitlines()
        assert "mixed.test mailto:tlsrpt@reports.test: would send" in lines
        assert f"mixed.test https://127.0.0.1:{receiver.port}/tlsrpt: would send" in lines
        assert "plain.test mailto:tlsrpt@reports.test: would send" in lines
        reports = documents(dry.stdout)
        for document in reports.values():
            validate(document)
        mismatch = reports["mixed.test"]["policies"][0]["failure-details"][0]
        assert mismatch.pop("failure-reason-code")  # OpenSSL's words, whatever they are
        assert reports["mixed.test"] == expected(
            day,
            "mixed.test",
            1,
            [
                {
                    "result-type": "certificate-host-mismatch",
                    "sending-mta-ip": "127.0.0.1",
                    "receiving-mx-hostname": "mx1.mixed.test",
                    "receiving-ip": "127.0.0.1",
                    "failed-session-count": 1,
                }
            ],
        )
        not_offered = reports["plain.test"]["policies"][0]["failure-details"][0]
        assert "STARTTLS not offered" in not_offered.pop("failure-reason-code")
        assert reports["plain.test"] == expected(
            day,
            "plain.test",
            0,
            [
                {
                    "result-type": "starttls-not-supported",
                    "sending-mta-ip": "127.0.0.1",
                    "receiving-mx-hostname": "mx.plain.test",
                    "receiving-ip": "127.0.0.2",
                    "failed-session-count": 1,
                }
            ],
        )
        # The dry run sent nothing: no POST, no report queued or mailed.
        assert receiver.posts == []
        assert [r.recipients[0].address for r in queued(node)] == ["carol@plain.test"]
        assert len(sink.messages()) == 1

        sent = tlsrpt_send(node, "--date", day)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"mixed.test https://127.0.0.1:{receiver.port}/tlsrpt: posted (HTTP 201)" in (
            sent.stdout.splitlines()
        )
        wait_until(lambda: len(sink.messages()) == 3, what="both mailed reports delivered")
        mailed = [email.message_from_bytes(d, policy=email.policy.default) for d in sink.messages()]
        again = tlsrpt_send(node, "--date", day)
        assert again.returncode == 0
        assert again.stdout.count("sent before") == 3
    # The POST: the gzipped report as application/tlsrpt+gzip (RFC 8460 §5.4).
    (post,) = receiver.posts
    assert (post.path, post.content_type) == ("/tlsrpt", "application/tlsrpt+gzip")
    posted = json.loads(gzip.decompress(post.body))
    validate(posted)
    assert posted["report-id"] == f"{day}.mixed.test@mx.sender.example"
    # The mails (RFC 8460 §5.3), one per domain, to the rua address.
    by_domain = {m["TLS-Report-Domain"]: m for m in mailed if m["TLS-Report-Domain"]}
    assert sorted(by_domain) == ["mixed.test", "plain.test"]
    for domain, message in by_domain.items():
        assert message["To"] == "tlsrpt@reports.test"
        assert message["From"] == "tlsrpt-noreply@mx.sender.example"
        assert message["TLS-Report-Submitter"] == "mx.sender.example"
        assert message["Subject"] == (
            f"Report Domain: {domain} Submitter: mx.sender.example"
            f" Report-ID: <{day}.{domain}@mx.sender.example>"
        )
        assert message.get_content_type() == "multipart/report"
        assert message.get_param("report-type") == "tlsrpt"
        (attachment,) = [p for p in message.iter_parts() if p.get_filename()]
        assert attachment.get_content_type() == "application/tlsrpt+gzip"
        assert attachment.get_filename().startswith(f"mx.sender.example!{domain}!")
        assert attachment.get_filename().endswith(".json.gz")
        document = json.loads(gzip.decompress(attachment.get_content()))
        validate(document)
        assert document["report-id"] == f"{day}.{domain}@mx.sender.example"
    assert by_domain["mixed.test"] is not None and posted == json.loads(
        gzip.decompress(
            next(p for p in by_domain["mixed.test"].iter_parts() if p.get_filename()).get_content()
        )
    )


def test_the_node_sends_yesterdays_reports_by_itself_despite_tls(tmp_path: Path) -> None:
    # Yesterday's counts, as the workers left them; a node that starts after today's moment
    # (max_delay 0: 00:00 UTC) catches up at once.
    yesterday = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=1)
    out = tmp_path / "out"
    db = store.connect(store.store_path(out / "data"))
    key = store.PolicyKey("no-policy-found", "plain.test")
    store.add(db, {(yesterday.isoformat(), key): store.Counts(successes=4)}, {})
    db.close()
    port = free_port()
    with (
        dns_server(tmp_path / "dns", zones(free_port())) as dns,
        smtp_sink(tmp_path, host="127.0.0.2", port=port) as sink,
        sending_node(
            out,
            # The report goes despite a route that requires TLS the sink does not offer
            # (RFC 8460 §5.3: delivered "despite any TLS-related failures").
            body=f"""
[delivery]
port = {port}

[[routes]]
domains = ["reports.test"]
tls = "required_verify"

[tlsrpt]
max_delay = 0
""",
            node_extra=f'dns_servers = ["{dns.address}"]',
        ),
    ):
        wait_until(lambda: sink.messages(), what="the report mailed by the node")
        (dump,) = sink.messages()
    # ... and its own session is not counted in the next report (§5.3); the node has stopped
    # and flushed its counts.
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert counted(out / "data", today) == {}
    message = email.message_from_bytes(dump, policy=email.policy.default)
    assert message["TLS-Report-Domain"] == "plain.test"
    (attachment,) = [p for p in message.iter_parts() if p.get_filename()]
    document = json.loads(gzip.decompress(attachment.get_content()))
    validate(document)
    assert document["date-range"]["start-datetime"] == f"{yesterday.isoformat()}T00:00:00Z"
    assert document["policies"][0]["summary"] == {
        "total-successful-session-count": 4,
        "total-failure-session-count": 0,
    }
