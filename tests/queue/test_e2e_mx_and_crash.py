"""Delivery by MX from a real DNS server on loopback, and delivery surviving kill -9."""

from __future__ import annotations

import re
from pathlib import Path

from tests.queue.delivery_support import (
    FAST_RETRIES,
    parsed,
    peer_node,
    queued,
    received,
    route_to,
    send,
    sending_node,
    wait_until,
)
from tests.support.dns_server import dns_server
from tests.support.node import node_process
from tests.support.sink import smtp_sink

SENDER = "alice@sender.example"

ZONES = {
    # The first MX has an address nothing listens on: the second one must take the message.
    "twomx.test": """
        @ IN MX 10 mx1.twomx.test.
        @ IN MX 20 mx2.twomx.test.
        mx1 IN A 127.0.0.2
        mx2 IN A 127.0.0.1
    """,
    "nullmx.test": """
        @ IN MX 0 .
    """,
}


def _dns_body(peer_port: int) -> str:
    # MX hosts are reached on [delivery] port (25 in production; the peer's port here). Only
    # the sender's own domain is routed, so the DSN reaches the peer.
    delivery = f"\n[delivery]\nport = {peer_port}\n"
    return delivery + route_to(peer_port, domains='["sender.example"]') + FAST_RETRIES


def test_first_mx_down_the_second_takes_it_and_a_null_mx_bounces(tmp_path: Path) -> None:
    with (
        dns_server(tmp_path / "dns", ZONES) as dns,
        peer_node(tmp_path / "peer") as peer,
        sending_node(
            tmp_path / "out",
            body=_dns_body(peer.port),
            node_extra=f'dns_servers = ["{dns.address}"]',
        ) as node,
    ):
        send(node.port, SENDER, ["bob@twomx.test"], "two mx")
        send(node.port, SENDER, ["nobody@nullmx.test"], "null mx")
        wait_until(lambda: len(received(peer)) == 2, what="the message and the DSN")
        wait_until(lambda: not queued(node), what="an empty sending queue")
        arrived = received(peer)
    delivered = [r for r, _ in arrived if r.sender == SENDER]
    assert [r.recipients[0].address for r in delivered] == ["bob@twomx.test"]
    (dsn_data,) = [d for r, d in arrived if r.sender == ""]
    report = next(
        p for p in parsed(dsn_data).walk() if p.get_content_type() == "message/delivery-status"
    ).as_string()
    assert "Final-Recipient: rfc822; nobody@nullmx.test" in report
    assert "Status: 5.1.10" in report


def test_kill_9_during_delivery_loses_nothing(tmp_path: Path) -> None:
    # smtp-sink waits a second before answering each DATA: the node is killed mid-delivery.
    with smtp_sink(tmp_path, "-w", "1") as sink:
        out = tmp_path / "out"
        with sending_node(out, body=route_to(sink.port) + FAST_RETRIES) as node:
            for number in range(30):
                send(node.port, SENDER, [f"user{number}@example.net"], f"crash {number}")
            wait_until(lambda: len(sink.messages()) >= 3, what="some messages delivered")
            node.kill()
            assert len(sink.messages()) < 30, "everything was delivered before the kill"
        with node_process(out, out / "mailwarden.toml", node.port, log_mode="ab") as again:
            wait_until(lambda: not queued(again), timeout=120, what="an empty queue")
        subjects = set()
        for dump in sink.messages():
            match = re.search(rb"^Subject: (crash \d+)$", dump, re.MULTILINE)
            assert match is not None
            subjects.add(match[1].decode())
    # At-least-once: a message on the wire at the kill may arrive twice, none is missing.
    assert subjects == {f"crash {n}" for n in range(30)}
