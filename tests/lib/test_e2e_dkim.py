"""DKIM end to end: a real ``mailwarden run`` node whose data hook verifies the incoming
signature (its resolver set by ``[node] dns_servers`` to nsd on loopback), records the result in
a header, then signs; the stored message, as ``mailwarden queue show ID --raw`` writes it,
verifies with dkimpy's own verifier against the same nsd."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from tests.lib.test_dkim import BODY, HEADER, _pem, _public_record, dkimpy_verifies, message
from tests.server.conftest import write_script
from tests.support.dns_server import dns_server
from tests.support.node import free_port, node_process, write_config

from mailwarden.lib import dkim, dns
from mailwarden.spool.reader import iter_messages

SCRIPT = """
from mailwarden.lib import dkim


async def data(conn, tx, message):
    seen = await dkim.verify(message)
    message.headers.add(
        "X-DKIM-Seen", ", ".join(f"{r.selector}.{r.domain}={r.result}" for r in seen) or "none"
    )
    # The last edit: the signature covers the message as it is stored.
    await dkim.sign(message, domain="sign.test", selector="out", key=KEY_FILE)
"""


def test_node_signs_what_it_stores(tmp_path: Path) -> None:
    out_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    in_key = ed25519.Ed25519PrivateKey.generate()
    zone = (
        f"out._domainkey IN TXT {_public_record(out_key)}\n"
        f"in._domainkey IN TXT {_public_record(in_key)}\n"
    )
    key_file = tmp_path / "out.pem"
    key_file.write_bytes(_pem(out_key))
    with dns_server(tmp_path / "nsd", {"sign.test": zone}) as nsd:
        # What the client sends is already signed by the sender's own server ("in").
        incoming = message()
        dns.configure([nsd.address])
        try:
            asyncio.run(dkim.sign(incoming, domain="sign.test", selector="in", key=_pem(in_key)))
        finally:
            dns.configure()
        port = free_port()
        config = write_config(
            tmp_path,
            port,
            server=write_script(tmp_path, SCRIPT.replace("KEY_FILE", repr(str(key_file)))),
        )
        node_keys = f'dns_servers = ["{nsd.address}"]\ndns_timeout = 3.0\n'
        config.write_text(config.read_text().replace("[node]\n", "[node]\n" + node_keys, 1))
        with node_process(tmp_path, config, port) as node:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                raw_in = incoming.headers.to_bytes() + b"\r\n" + BODY
                client.sendmail("alice@sign.test", ["bob@example.org"], raw_in)
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
        assert HEADER in shown and shown.endswith(BODY)
        assert b"X-DKIM-Seen: in.sign.test=pass\r\n" in shown
        # The top signature is the node's; dkimpy verifies it (and the one it arrived with).
        assert dkimpy_verifies(shown, nsd)
        dns.configure([nsd.address])
        try:
            results = asyncio.run(dkim.verify(shown))
        finally:
            dns.configure()
        assert [(r.selector, r.result) for r in results] == [("out", "pass"), ("in", "pass")]
