"""SPF, DKIM, DMARC, Authentication-Results and ARC end to end: a real ``mailwarden run`` node
(its resolver set by ``[node] dns_servers`` to nsd on loopback) whose data hook evaluates
DMARC, rejects what the sender's policy rejects, replaces a forged Authentication-Results with
its own and seals the message; the stored message, as ``mailwarden queue show ID --raw``
writes it, passes Perl's Mail::DKIM ARC verifier against the same nsd."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tests.lib.test_arc import _pem, _record
from tests.server.conftest import write_script
from tests.support.dns_server import dns_server
from tests.support.mail_dkim import perl_arc_verify
from tests.support.node import free_port, node_process, write_config

from mailwarden.lib import arc, dns
from mailwarden.spool.reader import iter_messages

SCRIPT = """
from mailwarden.lib import arc, authres, dkim, dmarc, spf
from mailwarden.policy.actions import Reject

ME = "mx.relay.test"


async def data(conn, tx, message):
    spf_result = await spf.check(conn.remote_ip, tx.sender.address, conn.helo_name or "")
    dkim_results = await dkim.verify(message)
    chain = await arc.verify(message)
    verdict = await dmarc.evaluate(message, spf=spf_result, dkim=dkim_results)
    if verdict.disposition == "reject":
        raise Reject(f"DMARC policy of {verdict.from_domain} rejects this message",
                     code=550, enhanced="5.7.1")
    value = authres.add(message, ME, spf=spf_result, dkim=dkim_results, dmarc=verdict, arc=chain)
    await arc.seal(message, domain="relay.test", selector="arc", key=KEY_FILE, authres=value)
"""

ZONES = {
    "auth.test": '@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "evil.test": '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
}

FORGED = b"Authentication-Results: mx.relay.test; dmarc=pass header.from=bank.test\r\n"
BODY = b"Hello,\r\n\r\nsee you at nine.\r\n"


def mail(sender: str) -> bytes:
    header = f"From: {sender}\r\nTo: bob@example.org\r\nSubject: meeting\r\n"
    return FORGED + header.encode() + b"Message-ID: <1@auth.test>\r\n\r\n" + BODY


def test_node_evaluates_records_and_seals(tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "arc.pem"
    key_file.write_bytes(_pem(key))
    zones = {**ZONES, "relay.test": f"arc._domainkey IN TXT {_record(key)}\n"}
    with dns_server(tmp_path / "nsd", zones) as nsd:
        port = free_port()
        script = write_script(tmp_path, SCRIPT.replace("KEY_FILE", repr(str(key_file))))
        config = write_config(tmp_path, port, server=script)
        node_keys = f'dns_servers = ["{nsd.address}"]\ndns_timeout = 3.0\n'
        config.write_text(config.read_text().replace("[node]\n", "[node]\n" + node_keys, 1))
        with node_process(tmp_path, config, port) as node:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                client.ehlo("client.auth.test")
                client.sendmail("alice@auth.test", ["bob@example.org"], mail("alice@auth.test"))
                with pytest.raises(smtplib.SMTPDataError) as refused:
                    client.sendmail("x@evil.test", ["bob@example.org"], mail("x@evil.test"))
            assert refused.value.smtp_code == 550
            assert b"DMARC policy of evil.test rejects" in refused.value.smtp_error
            (queued,) = iter_messages(node.spool)
            shown = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mailwarden.cli.main",
                    "queue",
                    "show",
                    queued.id,
                    "--raw",
                    "--config",
                    str(node.config_path),
                ],
                capture_output=True,
                timeout=60,
                check=True,
            ).stdout
    header = shown.split(b"\r\n\r\n", 1)[0]
    assert FORGED not in shown and b"bank.test" not in shown
    assert (
        b"Authentication-Results: mx.relay.test;\r\n spf=pass smtp.mailfrom=auth.test;\r\n"
        b" dkim=none;\r\n dmarc=pass (p=reject dis=none) header.from=auth.test;\r\n arc=none\r\n"
    ) in header
    assert header.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=relay.test; s=arc;")
    assert shown.endswith(BODY)
    with dns_server(tmp_path / "nsd-again", zones) as nsd:
        verdict, detail = perl_arc_verify(shown, nsd)
        dns.configure([nsd.address], timeout=3.0)
        try:
            ours = asyncio.run(arc.verify(shown))
        finally:
            dns.configure()
    assert verdict == "pass", detail
    assert (ours.result, ours.instances) == ("pass", 1)
