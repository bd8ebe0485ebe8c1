"""The sending side's TLS settings end to end (issue 8): a route (or pre_delivery) presents a
client certificate to a peer node that requires one, and post_delivery sees the TLS outcome
with the peer's certificate. Two real ``mailwarden run`` nodes, trustme certificates."""

from __future__ import annotations

import hashlib
import json
import ssl
import textwrap
from pathlib import Path

import pytest
import trustme
from tests.queue.delivery_support import (
    FAST_RETRIES,
    node_config,
    peer_node,
    received,
    send,
    wait_until,
)
from tests.support.node import free_port, node_process

PEER_NAME = "peer.test.example"
SENDER = "alice@sender.example"

SCRIPT = """
import json
from pathlib import Path

OUT = Path(__file__).with_name("results.json")
PAIR = {pair!r}


async def pre_delivery(attempt):
    if PAIR:
        attempt.tls_client_certificate, attempt.tls_client_key = PAIR


async def post_delivery(attempt, result):
    tls = result.tls
    cert = tls.peer_certificate
    OUT.write_text(json.dumps({{
        "codes": [r.code for r in result.recipients],
        "protocol": tls.protocol,
        "flat_protocol": result.tls_protocol,
        "verified": tls.verified,
        "failure": tls.failure,
        "source": tls.policy.source,
        "mode": tls.policy.mode.value,
        "subject": cert.subject,
        "sha256": cert.sha256,
        "cert_verified": cert.verified,
    }}))
"""


def write_pair(directory: Path, cert: trustme.LeafCert, stem: str) -> tuple[Path, Path]:
    certificate, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.cert_chain_pems[0].write_to_path(str(certificate))
    cert.private_key_pem.write_to_path(str(key))
    return certificate, key


@pytest.mark.parametrize("where", ["route", "pre_delivery"])
def test_client_certificate_reaches_a_require_peer_and_post_delivery_sees_its_certificate(
    tmp_path: Path, where: str
) -> None:
    ca = trustme.CA()
    peer_dir, out_dir = tmp_path / "peer", tmp_path / "out"
    peer_dir.mkdir()
    out_dir.mkdir()
    server_cert = ca.issue_cert(PEER_NAME, "127.0.0.1", common_name=PEER_NAME)
    write_pair(peer_dir, server_cert, "server")
    ca.cert_pem.write_to_path(str(peer_dir / "ca.pem"))
    ca.cert_pem.write_to_path(str(out_dir / "ca.pem"))
    certificate, key = write_pair(out_dir, ca.issue_cert("out.sender.example"), "client")
    peer_tls = (
        'tls_certificate = "server.pem"\ntls_key = "server.key"\n'
        'tls_client_certificate = "require"\ntls_client_ca = "ca.pem"\n'
    )
    pair = (str(certificate), str(key)) if where == "pre_delivery" else None
    (out_dir / "delivery.py").write_text(SCRIPT.format(pair=pair))
    with peer_node(peer_dir, server=peer_tls) as peer:
        route = textwrap.dedent(
            f"""
            [[routes]]
            domains = ["*"]
            next_hop = "[127.0.0.1]:{peer.port}"
            tls = "required_verify"
            tls_ca_file = "ca.pem"
            tls_verify_name = "{PEER_NAME}"
            """
        )
        if where == "route":
            route += 'tls_client_certificate = "client.pem"\ntls_client_key = "client.key"\n'
        port = free_port()
        path = out_dir / "mailwarden.toml"
        body = route + FAST_RETRIES
        path.write_text(node_config(port, server='script = "delivery.py"\n', body=body))
        with node_process(out_dir, path, port) as node:
            send(node.port, SENDER, ["bob@example.net"], "with a client certificate")
            wait_until(lambda: received(peer), what="the message at the peer")
            results = out_dir / "results.json"
            wait_until(results.exists, what="post_delivery's file")
            seen = json.loads(results.read_text())
    der = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
    assert seen["codes"] == [250]
    assert seen["protocol"] == seen["flat_protocol"] == "TLSv1.3"
    assert seen["verified"] and seen["failure"] is None and seen["cert_verified"]
    assert (seen["source"], seen["mode"]) == ("route", "required_verify")
    assert seen["sha256"] == hashlib.sha256(der).hexdigest()
    assert f"CN={PEER_NAME}" in seen["subject"]
