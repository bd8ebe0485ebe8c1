"""A sending node delivers what it accepted, to real peers: a second Mailwarden and smtp-sink."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.queue.delivery_support import (
    FAST_RETRIES,
    node_config,
    parsed,
    peer_connections,
    peer_node,
    queued,
    received,
    route_to,
    send,
    sending_node,
    wait_until,
)
from tests.support.node import free_port, node_process
from tests.support.sink import smtp_sink

from mailwarden.spool.operations import scan_counts
from mailwarden.spool.states import RecipientState

SENDER = "alice@sender.example"


def test_a_relayed_message_arrives_whole_and_leaves_the_queue(tmp_path: Path) -> None:
    with (
        peer_node(tmp_path / "peer") as peer,
        sending_node(tmp_path / "out", body=route_to(peer.port) + FAST_RETRIES) as node,
    ):
        body = "line one\n.a leading dot\n" + "x" * 3000 + "\n"
        send(node.port, SENDER, ["bob@example.net", "carol@example.net"], "first", body)
        wait_until(lambda: received(peer), what="the message at the peer")
        wait_until(lambda: not queued(node), what="an empty sending queue")
        ((record, data),) = received(peer)
    assert record.sender == SENDER
    assert [r.address for r in record.recipients] == ["bob@example.net", "carol@example.net"]
    message = parsed(data)
    assert message["Subject"] == "first"
    assert message.get_content().replace("\r\n", "\n") == body  # stored with CRLF
    # The sending node added its Received: line when it accepted the message.
    assert "mx.sender.example" in str(message.get_all("Received"))


def test_messages_share_connections(tmp_path: Path) -> None:
    with (
        peer_node(tmp_path / "peer") as peer,
        sending_node(tmp_path / "out", body=route_to(peer.port) + FAST_RETRIES) as node,
    ):
        for number in range(20):
            send(node.port, SENDER, [f"user{number}@example.net"], f"reuse {number}")
        wait_until(lambda: len(received(peer)) == 20, what="20 messages at the peer")
        wait_until(lambda: not queued(node), what="an empty sending queue")
        counts = peer_connections(peer)
    # 20 messages, submitted one by one: reused connections, far fewer than one each.
    assert counts["total"] <= 5, counts


def test_each_recipient_gets_its_own_fate_and_a_bounce_carries_the_remote_reply(
    tmp_path: Path,
) -> None:
    with (
        peer_node(tmp_path / "peer") as peer,
        sending_node(tmp_path / "out", body=route_to(peer.port) + FAST_RETRIES) as node,
    ):
        rcpts = ["ok@example.net", "reject-me@example.net", "defer-me@example.net"]
        send(node.port, SENDER, rcpts, "partial")
        # The delivered copy and the DSN for the rejected recipient both reach the peer.
        wait_until(lambda: len(received(peer)) == 2, what="the message and its DSN")
        (message,) = wait_until(
            lambda: [m for m in queued(node) if m.recipients[2].retry_count == 1],
            what="the deferred recipient waiting",
        )
        arrived = received(peer)
    states = [r.state for r in message.recipients]
    assert states == [RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.DEFERRED]
    assert message.recipients[2].last_reply.startswith("451 4.3.0")
    delivered = [data for record, data in arrived if record.sender == SENDER]
    assert len(delivered) == 1
    (dsn_record, dsn_data) = next((r, d) for r, d in arrived if r.sender == "")
    assert [r.address for r in dsn_record.recipients] == [SENDER]
    dsn = parsed(dsn_data)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    report = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    text = report.as_string()
    assert "Final-Recipient: rfc822; reject-me@example.net" in text
    assert "Action: failed" in text
    assert "Status: 5.1.1" in text
    assert "550 5.1.1 no such user here" in text  # the NDR: the remote's own reply
    assert "defer-me" not in text and "ok@example.net" not in text


def test_tls_required_but_not_offered_defers(tmp_path: Path) -> None:
    with (
        smtp_sink(tmp_path) as sink,
        sending_node(
            tmp_path / "out", body=route_to(sink.port, extra='tls = "required"') + FAST_RETRIES
        ) as node,
    ):
        send(node.port, SENDER, ["bob@example.net"], "needs tls")
        (message,) = wait_until(
            lambda: [m for m in queued(node) if m.recipients[0].retry_count == 1],
            what="a deferred recipient",
        )
        assert sink.messages() == []
    (recipient,) = message.recipients
    assert recipient.state is RecipientState.DEFERRED
    assert recipient.last_reply.startswith("4") and "4.7.4" in recipient.last_reply


def test_required_verify_with_a_wrong_name_defers(
    tmp_path: Path, ca_file: Path, peer_tls_keys: str
) -> None:
    extra = f'tls = "required_verify"\ntls_verify_name = "wrong.example"\ntls_ca_file = "{ca_file}"'
    with (
        peer_node(tmp_path / "peer", server=peer_tls_keys) as peer,
        sending_node(
            tmp_path / "out", body=route_to(peer.port, extra=extra) + FAST_RETRIES
        ) as node,
    ):
        send(node.port, SENDER, ["bob@example.net"], "verify me")
        (message,) = wait_until(
            lambda: [m for m in queued(node) if m.recipients[0].retry_count == 1],
            what="a deferred recipient",
        )
        assert received(peer) == []
    assert "4.7.5" in message.recipients[0].last_reply


def test_required_verify_with_the_right_name_delivers(
    tmp_path: Path, ca_file: Path, peer_tls_keys: str
) -> None:
    extra = (
        f'tls = "required_verify"\ntls_verify_name = "peer.test.example"\ntls_ca_file = "{ca_file}"'
    )
    with (
        peer_node(tmp_path / "peer", server=peer_tls_keys) as peer,
        sending_node(
            tmp_path / "out", body=route_to(peer.port, extra=extra) + FAST_RETRIES
        ) as node,
    ):
        send(node.port, SENDER, ["bob@example.net"], "verified")
        wait_until(lambda: received(peer), what="the message at the peer")
        ((record, _),) = received(peer)
    assert record.tls is not None  # the peer saw the session encrypted


def test_a_shaping_limit_holds_across_workers(tmp_path: Path) -> None:
    shaping = """
[[shaping]]
id = "two-per-domain"
fields = ["domain"]
max_connections = 2
"""
    # The peer greets after 0.3 s (under the 0.5 s the start-up probe waits for a greeting):
    # attempts pile up while connections open, so
    # without the rule the node would open many more than two.
    with (
        peer_node(tmp_path / "peer", server="greeting_delay = 0.3\n") as peer,
        sending_node(
            tmp_path / "out", body=route_to(peer.port) + FAST_RETRIES + shaping, workers=2
        ) as node,
    ):
        for number in range(40):
            send(node.port, SENDER, [f"user{number}@example.net"], f"shaped {number}")
        wait_until(lambda: len(received(peer)) == 40, timeout=60, what="40 messages")
        counts = peer_connections(peer)
    assert counts["most"] <= 2, counts


def test_suspend_holds_a_destination_until_resumed(tmp_path: Path) -> None:
    with (
        peer_node(tmp_path / "peer") as peer,
        sending_node(tmp_path / "out", body=route_to(peer.port) + FAST_RETRIES) as node,
    ):
        suspended = node.mailwarden("queue", "suspend", "domain=example.net")
        assert suspended.returncode == 0, suspended.stderr
        send(node.port, SENDER, ["bob@example.net"], "suspended")
        send(node.port, SENDER, ["dave@other.test"], "not suspended")
        wait_until(lambda: len(received(peer)) == 1, what="the other domain's message")
        assert [r.recipients[0].address for r, _ in received(peer)] == ["dave@other.test"]
        resumed = node.mailwarden("queue", "resume", "domain=example.net")
        assert resumed.returncode == 0, resumed.stderr
        node.mailwarden("queue", "update", "retry-now", "--all", "--yes")
        wait_until(lambda: len(received(peer)) == 2, timeout=60, what="the resumed message")


def test_a_route_back_to_this_node_bounces_as_a_loop(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    port = free_port()
    with peer_node(tmp_path / "peer") as peer:
        body = (
            route_to(port, domains='["example.net"]')  # this node's own listener
            + route_to(peer.port, domains='["sender.example"]')
            + FAST_RETRIES
        )
        (out / "mailwarden.toml").write_text(node_config(port, body=body))
        with node_process(out, out / "mailwarden.toml", port) as node:
            send(node.port, SENDER, ["bob@example.net"], "loop")
            (dsn,) = wait_until(
                lambda: [d for r, d in received(peer) if r.sender == ""], what="the DSN"
            )
            wait_until(lambda: not queued(node), what="an empty queue")
    report = next(
        p for p in parsed(dsn).walk() if p.get_content_type() == "message/delivery-status"
    ).as_string()
    assert "Status: 5.4.6" in report and "loops back to myself" in report


def test_domains_routed_to_one_next_hop_share_its_connections(tmp_path: Path) -> None:
    """A route's own next hop (a smarthost) carries every domain's mail over the same
    connections, as Postfix's relayhost does: not one set of connections per recipient
    domain. With 2 connections allowed per destination and 4 domains taking turns, the peer
    never sees more than 2 at once (one destination per domain would keep 4 open: each
    domain's connection waits idle for its next message)."""
    domains = ["example.net", "other.test", "twomx.test", "sender.example"]
    limit = "\n[delivery]\nmax_connections_per_destination = 2\n"
    with (
        peer_node(tmp_path / "peer") as peer,
        sending_node(tmp_path / "out", body=route_to(peer.port) + FAST_RETRIES + limit) as node,
    ):
        for number in range(12):
            domain = domains[number % len(domains)]
            send(node.port, SENDER, [f"user{number}@{domain}"], f"hop {number}")
        wait_until(lambda: len(received(peer)) == 12, what="12 messages at the peer")
        counts = peer_connections(peer)
    assert counts["most"] <= 2, counts


HOLD_EVERYTHING = """
from mailwarden.policy.actions import Hold


async def data(conn, tx, message):
    return Hold("held until the operator releases it")
"""


def test_a_release_is_delivered_at_once_not_at_the_next_poll(tmp_path: Path) -> None:
    """`queue update release` wakes the running node's workers (both of them: each owns a
    shard): the mail goes out now, although the node would not look again for a minute."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "hold.py").write_text(HOLD_EVERYTHING)
    port = free_port()
    with peer_node(tmp_path / "peer") as peer:
        config = node_config(
            port,
            workers=2,
            server='script = "hold.py"\n',
            body=route_to(peer.port) + "\n[queue]\npoll_interval = 60\n",
        )
        (out / "mailwarden.toml").write_text(config)
        with node_process(out, out / "mailwarden.toml", port) as node:
            for number in range(8):  # new connections: the kernel spreads them over workers
                send(node.port, SENDER, [f"user{number}@example.net"], f"held {number}")
            wait_until(
                lambda: (
                    len(queued(node)) == 8
                    and all(r.recipients[0].state is RecipientState.HELD for r in queued(node))
                ),
                what="8 held messages",
            )
            released = node.mailwarden("queue", "update", "release", "--all", "--yes")
            assert released.returncode == 0, released.stderr
            wait_until(lambda: len(received(peer)) == 8, timeout=20, what="8 released messages")
            wait_until(lambda: not queued(node), what="an empty sending queue")


def test_an_idle_connection_gives_its_slot_to_the_worker_waiting_for_it(tmp_path: Path) -> None:
    """Two workers, one connection allowed to the destination node-wide, a minute of idle
    time: the worker that got the slot delivers its shard's mail, and when it has no more it
    hands the slot over at once instead of keeping the connection open for the idle
    timeout, so the other worker's shard is delivered in seconds, not after a minute."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "hold.py").write_text(HOLD_EVERYTHING)
    port = free_port()
    with peer_node(tmp_path / "peer") as peer:
        config = node_config(
            port,
            workers=2,
            server='script = "hold.py"\n',
            body=route_to(peer.port)
            + "\n[delivery]\nmax_connections_per_destination = 1\nidle_timeout = 60\n",
        )
        (out / "mailwarden.toml").write_text(config)
        with node_process(out, out / "mailwarden.toml", port) as node:
            for number in range(12):  # new connections: the kernel spreads them over workers
                send(node.port, SENDER, [f"user{number}@example.net"], f"held {number}")
            wait_until(lambda: len(queued(node)) == 12, what="12 held messages")
            # Both workers' shards hold mail, or the test would show nothing.
            assert len({shard for shard, _, _ in scan_counts(node.spool)}) == 2
            released = node.mailwarden("queue", "update", "release", "--all", "--yes")
            assert released.returncode == 0, released.stderr
            wait_until(lambda: len(received(peer)) == 12, timeout=20, what="12 released messages")


def test_a_connection_the_remote_timed_out_while_idle_is_replaced_not_failed(
    tmp_path: Path,
) -> None:
    """The peer drops idle sessions after 1 s (421); the sender keeps connections for 30 s.
    The next message meets the 421 on the reused connection at MAIL FROM: it goes out at
    once on a new connection, neither deferred (the retry would be a minute later) nor
    counted as an attempt."""
    idle_peer = "\n[servers.limits]\ncommand_timeout = 1\n"
    with (
        peer_node(tmp_path / "peer", server=idle_peer) as peer,
        sending_node(
            tmp_path / "out", body=route_to(peer.port) + "\n[delivery]\nidle_timeout = 30\n"
        ) as node,
    ):
        send(node.port, SENDER, ["first@example.net"], "first")
        wait_until(lambda: len(received(peer)) == 1, what="the first message at the peer")
        time.sleep(2.5)  # the peer has timed the idle connection out meanwhile
        before = peer_connections(peer)["total"]
        send(node.port, SENDER, ["second@example.net"], "second")
        wait_until(lambda: len(received(peer)) == 2, timeout=15, what="the second message")
        wait_until(lambda: not queued(node), what="an empty sending queue")
        assert peer_connections(peer)["total"] == before + 1  # one new connection for it


def test_a_worker_leases_no_more_than_its_memory_budget(tmp_path: Path) -> None:
    """12 released messages of 60 KiB, a sink that takes a second per message, and
    `[queue] max_bytes_in_flight = 400000`: the worker never holds more than a few of them in
    flight (each costs about 120 KB: its bytes and their copy when sent), where without the
    budget it leases all 12 at once. All are delivered."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "hold.py").write_text(HOLD_EVERYTHING)
    port = free_port()
    with smtp_sink(tmp_path, "-w", "1") as sink:
        config = node_config(
            port,
            server='script = "hold.py"\n',
            body=route_to(sink.port) + "\n[queue]\nmax_bytes_in_flight = 400000\n",
        )
        (out / "mailwarden.toml").write_text(config)
        with node_process(out, out / "mailwarden.toml", port) as node:
            line = "x" * 75 + "\n"
            for number in range(12):
                send(node.port, SENDER, [f"u{number}@example.net"], f"big {number}", line * 800)
            wait_until(lambda: len(queued(node)) == 12, what="12 held messages")
            seen: list[int] = []
            done = threading.Event()

            def watch() -> None:  # from before the release on: how many are leased at once
                while not done.is_set():
                    now = time.time()
                    seen.append(sum((m.lease_until or 0) > now for m in queued(node)))
                    time.sleep(0.05)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                released = node.mailwarden("queue", "update", "release", "--all", "--yes")
                assert released.returncode == 0, released.stderr
                wait_until(lambda: len(sink.messages()) == 12, timeout=60, what="12 at the sink")
            finally:
                done.set()
                watcher.join()
    assert 1 <= max(seen) <= 4, max(seen)
