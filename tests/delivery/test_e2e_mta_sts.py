"""MTA-STS end to end: a sending ``mailwarden run`` node, a loopback nsd with the recipient
domains' MX, A and ``_mta-sts`` TXT records, a real HTTPS policy server on port 443 and a
receiving Mailwarden with a trustme certificate for mx.other.test (RFC 8461 §4, §5)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trustme
from tests.queue.delivery_support import (
    FAST_RETRIES,
    peer_connections,
    peer_node,
    queued,
    received,
    send,
    sending_node,
    wait_until,
)
from tests.support.dns_server import dns_server
from tests.support.mta_sts_server import Answer, PolicyServer, policy_server, policy_text
from tests.support.node import Node

SENDER = "alice@sender.example"

# The peer accepts mail for other.test and twomx.test (tests/queue/delivery_support.py).
ZONE = """
@ IN MX 10 mx.{domain}.
mx IN A 127.0.0.1
mta-sts IN A {address}
_mta-sts IN TXT "v=STSv1; id=1;"
"""


@contextmanager
def world(tmp_path: Path, policies: dict[str, str]) -> Iterator[tuple[Node, Node, PolicyServer]]:
    """The policy server (with ``policies`` by domain), DNS, the peer and the sender."""
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    peer_dir = tmp_path / "peer"
    peer_dir.mkdir()
    cert = ca.issue_cert("mx.other.test")  # not mx.twomx.test
    cert.private_key_pem.write_to_path(str(peer_dir / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(peer_dir / "cert.pem"))
    keys = 'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'
    hosts = [f"mta-sts.{domain}" for domain in policies]
    with policy_server(ca, hosts) as server:
        for domain, text in policies.items():
            server.policies[f"mta-sts.{domain}"] = Answer(text)
        zones = {d: ZONE.format(domain=d, address=server.address) for d in policies}
        with dns_server(tmp_path / "dns", zones) as nsd, peer_node(peer_dir, server=keys) as peer:
            body = (
                f'\n[delivery]\nport = {peer.port}\ntls_ca_file = "{ca_file}"\n'
                f'mta_sts_ca_file = "{ca_file}"\n' + FAST_RETRIES
            )
            with sending_node(
                tmp_path / "out", body=body, node_extra=f'dns_servers = ["{nsd.address}"]'
            ) as node:
                yield node, peer, server


def deferred(node: Node, address: str) -> str:
    """The last reply of ``address`` once its first attempt was deferred."""

    def find() -> str:
        for message in queued(node):
            for recipient in message.recipients:
                if recipient.address == address and recipient.retry_count == 1:
                    return recipient.last_reply
        return ""

    return str(wait_until(find, what=f"{address} deferred"))


def test_enforce_delivers_to_a_listed_mx_with_a_valid_certificate_and_defers_a_wrong_one(
    tmp_path: Path,
) -> None:
    policies = {
        "other.test": policy_text("enforce", ["mx.other.test"]),
        "twomx.test": policy_text("enforce", ["*.twomx.test"]),  # listed, but the cert is not
    }
    with world(tmp_path, policies) as (node, peer, server):
        send(node.port, SENDER, ["bob@other.test"], "sts ok")
        send(node.port, SENDER, ["carol@twomx.test"], "sts bad cert")
        reply = deferred(node, "carol@twomx.test")
        wait_until(lambda: received(peer), what="the message at the peer")
        arrived = received(peer)
        assert server.fetches["mta-sts.other.test"] == 1
    assert [r.recipients[0].address for r, _ in arrived] == ["bob@other.test"]
    assert arrived[0][0].tls is not None  # the session was encrypted
    assert "4.7.5" in reply and "certificate-host-mismatch" in reply


def test_enforce_never_connects_to_an_unlisted_mx_and_testing_delivers_despite_a_bad_cert(
    tmp_path: Path,
) -> None:
    policies = {
        "other.test": policy_text("enforce", ["mail.elsewhere.test"]),
        "twomx.test": policy_text("testing", ["*.twomx.test"]),
    }
    with world(tmp_path, policies) as (node, peer, _):
        before = peer_connections(peer)["total"]
        send(node.port, SENDER, ["bob@other.test"], "sts unlisted mx")
        reply = deferred(node, "bob@other.test")
        assert peer_connections(peer)["total"] == before  # not even a connection
        send(node.port, SENDER, ["carol@twomx.test"], "sts testing")
        wait_until(lambda: received(peer), what="the testing-mode message at the peer")
        arrived = received(peer)
    assert [r.recipients[0].address for r, _ in arrived] == ["carol@twomx.test"]
    assert "4.7.5" in reply and "mail.elsewhere.test" in reply
