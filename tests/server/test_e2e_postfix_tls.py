"""Postfix's smtp(8) client as a real TLS peer of a Mailwarden listener (issue 8): relaying
with ``smtp_tls_security_level = encrypt`` and presenting a trustme client certificate to a
listener with ``tls_client_certificate = "require"``, which verifies it end to end."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import trustme
from tests.support.node import running_node
from tests.support.postfix import postfix_relay
from tests.support.tls_peers import facts_script, recorded

from mailwarden.spool.reader import iter_messages

SERVER_NAME = "mx.test.example"


def test_postfix_relays_over_tls_with_its_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert(SERVER_NAME, "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    listener = (
        'tls_certificate = "server.pem"\ntls_key = "server.key"\n'
        'tls_client_certificate = "require"\ntls_client_ca = "clients-ca.pem"\n'
        + facts_script(tmp_path)
    )
    client = ca.issue_cert("postfix.test.example")
    with running_node(tmp_path, server=listener) as node:
        # The files must be where Postfix's unprivileged smtp(8) can read them.
        settings = (
            "smtp_tls_security_level = encrypt",
            "smtp_tls_loglevel = 1",
            "smtp_tls_cert_file = $config_directory/client.pem",
            "smtp_tls_key_file = $config_directory/client.key",
        )
        with postfix_relay(node.port, settings) as (port, root):
            client.cert_chain_pems[0].write_to_path(str(root / "etc" / "client.pem"))
            client.private_key_pem.write_to_path(str(root / "etc" / "client.key"))
            with smtplib.SMTP("127.0.0.1", port, timeout=15) as smtp:
                smtp.sendmail("s@sender.example", ["r@example.org"], b"Subject: pf\r\n\r\nhi\r\n")
            deadline = time.monotonic() + 30
            while not list(iter_messages(node.spool)) and time.monotonic() < deadline:
                time.sleep(0.2)
            log = (root / "postfix.log").read_text()
            messages = list(iter_messages(node.spool))
    assert len(messages) == 1, log
    assert "TLS connection established to 127.0.0.1" in log, log
    (facts,) = [f["tls"] for f in recorded(tmp_path) if f["hook"] == "mail_from"]
    assert facts["protocol"] == "TLSv1.3"
    assert facts["cert"]["verified"] and facts["cert"]["alt_names"] == ["DNS:postfix.test.example"]
