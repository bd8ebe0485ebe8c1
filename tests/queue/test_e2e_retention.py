"""Quarantine retention on a real ``mailwarden run``: a held message leaves the spool when its
retention ends (silently, or with a DSN that reaches a peer), a hold for ever stays, and an
operator's ``queue update hold --retention`` is honoured by the running node."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path

from tests.queue.delivery_support import (
    node_config,
    parsed,
    peer_node,
    queued,
    received,
    route_to,
    send,
    wait_until,
)
from tests.server.conftest import wait_for_log
from tests.support.node import Node, free_port, node_process

from mailwarden.spool.records import SpoolRecord
from mailwarden.spool.states import RecipientState

SENDER = "alice@sender.example"
RETENTION = 2  # seconds

HOLD_BY_SUBJECT = f"""
from mailwarden.policy.actions import Hold, Queue


async def data(conn, tx, message):
    subject = message.headers.get("Subject", "")
    if subject.startswith("bounce"):
        return Hold("kept for review", retention={RETENTION}, on_expiry="bounce")
    if subject.startswith("forever"):
        return Hold("legal hold", retention="forever")
    if subject.startswith("spam"):
        return Hold("spam", retention="{RETENTION}s")
    return Queue()
"""

QUEUE = """
[queue]
retry_intervals = [600]
poll_interval = 0.2
hold_sweep_interval = 0.5
"""


def start(directory: Path, peer_port: int, *, deliver: bool = True) -> AbstractContextManager[Node]:
    """The node under test: its data hook holds by subject; routes everything to the peer."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hold.py").write_text(HOLD_BY_SUBJECT)
    port = free_port()
    queue = QUEUE if deliver else QUEUE + "deliver = false\n"
    config = node_config(port, server='script = "hold.py"\n', body=route_to(peer_port) + queue)
    (directory / "mailwarden.toml").write_text(config)
    return node_process(directory, directory / "mailwarden.toml", port)


def held(node: Node) -> list[SpoolRecord]:
    return [m for m in queued(node) if all(r.state is RecipientState.HELD for r in m.recipients)]


def test_a_held_message_is_discarded_when_its_retention_ends_and_a_hold_for_ever_stays(
    tmp_path: Path,
) -> None:
    with peer_node(tmp_path / "peer") as peer, start(tmp_path / "out", peer.port) as node:
        send(node.port, SENDER, ["bob@example.net", "carol@example.net"], "spam offer")
        send(node.port, SENDER, ["dave@example.net"], "forever kept")
        (spam,) = wait_until(
            lambda: [m for m in held(node) if len(m.recipients) == 2], what="the held spam"
        )
        assert spam.recipients[0].next_attempt == spam.received_at + RETENTION
        wait_until(
            lambda: spam.id not in {m.id for m in queued(node)},
            timeout=15,
            what="the spam gone from the spool",
        )
        gone_at = time.time()
        wait_for_log(node, f"queue: message {spam.id}: hold retention ended: 2 recipient(s)")
        time.sleep(1)  # a sweep or two later
        (kept,) = queued(node)
        log = node.log()
        arrived = received(peer)
    assert gone_at >= spam.received_at + RETENTION  # not before its time
    assert "discarded, removed from the spool" in log
    assert kept.recipients[0].state is RecipientState.HELD
    assert kept.recipients[0].next_attempt == float("inf")
    assert arrived == []  # discarded silently: nothing delivered, no DSN


def test_a_hold_that_bounces_on_expiry_sends_a_dsn_to_the_sender(tmp_path: Path) -> None:
    with peer_node(tmp_path / "peer") as peer, start(tmp_path / "out", peer.port) as node:
        send(node.port, SENDER, ["bob@example.net"], "bounce if unreviewed")
        (message,) = wait_until(lambda: held(node), what="the held message")
        ((dsn_record, dsn_data),) = wait_until(
            lambda: received(peer), timeout=20, what="the DSN at the peer"
        )
        wait_until(lambda: not queued(node), what="an empty sending queue")
        wait_for_log(node, f"queue: message {message.id}: hold retention ended: 1 bounced")
    assert dsn_record.sender == ""
    assert [r.address for r in dsn_record.recipients] == [SENDER]
    dsn = parsed(dsn_data)
    assert dsn.get_content_type() == "multipart/report"
    report = next(p for p in dsn.walk() if p.get_content_type() == "message/delivery-status")
    text = report.as_string()
    assert "Final-Recipient: rfc822; bob@example.net" in text
    assert "Action: failed" in text
    assert "Status: 5.7.1" in text
    unfolded = " ".join(text.split())
    assert "Diagnostic-Code: x-mailwarden; 550 5.7.1 Message held by policy and not released" in (
        unfolded
    )
    returned = next(p for p in dsn.walk() if p.get_content_type() == "message/rfc822")
    assert "bounce if unreviewed" in returned.as_string()


def test_an_operators_hold_with_a_retention_ends_on_the_running_node(tmp_path: Path) -> None:
    # The peer refuses nothing but the route points at a closed port: the message waits
    # deferred, then the operator holds it for 2 s.
    with start(tmp_path / "out", free_port()) as node:
        send(node.port, SENDER, ["erin@example.net"], "deferred one")
        (message,) = wait_until(
            lambda: [m for m in queued(node) if m.recipients[0].retry_count >= 1],
            what="a deferred message",
        )
        before = time.time()
        result = node.mailwarden(
            "queue", "update", "hold", f"id={message.id}", "--retention", "2s", "--yes"
        )
        assert result.returncode == 0, result.stderr
        after = time.time()
        (kept,) = held(node)
        end = kept.recipients[0].next_attempt
        wait_until(lambda: not queued(node), timeout=15, what="the held message gone")
        gone_at = time.time()
    assert end is not None and before + 2 <= end <= after + 2  # 2 s from the hold
    assert gone_at >= end  # not before its time


def test_nothing_expires_while_delivery_is_off(tmp_path: Path) -> None:
    with start(tmp_path / "out", free_port(), deliver=False) as node:
        send(node.port, SENDER, ["bob@example.net"], "spam while frozen")
        wait_until(lambda: held(node), what="the held message")
        time.sleep(RETENTION + 1.5)  # past its retention, three sweep intervals more
        assert len(held(node)) == 1


HOLD_BEFORE_DELIVERY = f"""
from mailwarden.policy.delivery import Hold


async def pre_delivery(attempt):
    if attempt.sender:  # not the DSN it leads to
        return Hold("held by pre_delivery", retention={RETENTION}, on_expiry="bounce")
    return None
"""


def test_a_hold_from_pre_delivery_ends_with_its_retention(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "pre.py").write_text(HOLD_BEFORE_DELIVERY)
    with peer_node(tmp_path / "peer") as peer:
        port = free_port()
        config = node_config(port, server='script = "pre.py"\n', body=route_to(peer.port) + QUEUE)
        (out / "mailwarden.toml").write_text(config)
        with node_process(out, out / "mailwarden.toml", port) as node:
            send(node.port, SENDER, ["frank@example.net"], "held before delivery")
            (message,) = wait_until(lambda: held(node), what="held by pre_delivery")
            end = message.recipients[0].next_attempt
            ((dsn_record, dsn_data),) = wait_until(
                lambda: received(peer), timeout=20, what="the DSN at the peer"
            )
            gone_at = time.time()
            wait_until(lambda: not queued(node), what="an empty sending queue")
    assert message.recipients[0].reason == "held by pre_delivery"
    assert end is not None and message.received_at + RETENTION <= end  # from the attempt
    assert gone_at >= end
    assert dsn_record.sender == "" and "frank@example.net" in dsn_data.decode()
