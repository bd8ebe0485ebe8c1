"""pre_delivery and post_delivery steering real deliveries, and what they may not break."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

from tests.queue.delivery_support import (
    FAST_RETRIES,
    node_config,
    parsed,
    peer_node,
    queued,
    received,
    route_to,
    send,
    wait_until,
)
from tests.support.node import free_port, node_process
from tests.support.sink import smtp_sink

from mailwarden.queue.limits import NodeLimits
from mailwarden.spool.states import RecipientState

SENDER = "alice@sender.example"


def _sending_node_with_script(directory: Path, script: str, body: str):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "delivery.py").write_text(textwrap.dedent(script))
    port = free_port()
    path = directory / "mailwarden.toml"
    path.write_text(node_config(port, server='script = "delivery.py"\n', body=body))
    return node_process(directory, path, port)


def test_pre_delivery_chooses_the_next_hop_and_post_delivery_sees_the_session(
    tmp_path: Path,
) -> None:
    with peer_node(tmp_path / "peer") as peer:
        script = f"""
            import json
            from pathlib import Path

            OUT = Path(__file__).with_name("results.json")

            async def pre_delivery(attempt):
                # No [[routes]]: without this the node would look up example.net's MX.
                attempt.next_hop = "[127.0.0.1]:{peer.port}"
                attempt.helo = "out.sender.example"

            async def post_delivery(attempt, result):
                OUT.write_text(json.dumps({{
                    "recipients": [[r.address, r.code, r.enhanced] for r in result.recipients],
                    "remote_ip": result.remote_ip,
                    "remote_port": result.remote_port,
                    "source_ip": result.source_ip,
                    "helo": result.helo,
                    "error": result.error,
                    "message_id": attempt.message_id,
                    "domain": attempt.domain,
                }}))
        """
        with _sending_node_with_script(tmp_path / "out", script, FAST_RETRIES) as node:
            send(node.port, SENDER, ["bob@example.net"], "steered")
            wait_until(lambda: received(peer), what="the message at the peer")
            results = tmp_path / "out" / "results.json"
            wait_until(results.exists, what="post_delivery's file")
            seen = json.loads(results.read_text())
            ((record, _),) = received(peer)
    assert record.helo == "out.sender.example"
    assert seen["recipients"] == [["bob@example.net", 250, "2.0.0"]]
    assert (seen["remote_ip"], seen["remote_port"]) == ("127.0.0.1", peer.port)
    assert seen["source_ip"] == "127.0.0.1" and seen["helo"] == "out.sender.example"
    assert seen["error"] is None and seen["domain"] == "example.net"


def test_a_failing_pre_delivery_queues_for_later_without_counting_a_retry(
    tmp_path: Path,
) -> None:
    script = """
        async def pre_delivery(attempt):
            raise RuntimeError("the operator's database is down")
    """
    with (
        smtp_sink(tmp_path) as sink,
        _sending_node_with_script(
            tmp_path / "out", script, route_to(sink.port) + FAST_RETRIES
        ) as node,
    ):
        sent_at = time.time()
        send(node.port, SENDER, ["bob@example.net"], "script error")
        (message,) = wait_until(
            lambda: [m for m in queued(node) if m.recipients[0].state == "deferred"],
            what="the recipient deferred",
        )
        log = node.log()
        assert sink.messages() == []
    (recipient,) = message.recipients
    assert recipient.retry_count == 0  # a script error is not the destination's failure
    assert sent_at + 290 <= recipient.next_attempt <= time.time() + 310  # 5 minutes later
    assert "pre_delivery" in log and "the operator's database is down" in log


def test_post_delivery_bounces_with_its_own_ndr(tmp_path: Path) -> None:
    script = """
        from mailwarden.policy.delivery import Bounce

        async def post_delivery(attempt, result):
            if any(r.temporary for r in result.recipients):
                return Bounce("mailbox retired, do not retry", code=550, enhanced="5.1.6")
    """
    with (
        peer_node(tmp_path / "peer") as peer,
        _sending_node_with_script(
            tmp_path / "out", script, route_to(peer.port) + FAST_RETRIES
        ) as node,
    ):
        send(node.port, SENDER, ["defer-me@example.net"], "overridden")
        (dsn,) = wait_until(
            lambda: [d for r, d in received(peer) if r.sender == ""], what="the DSN"
        )
        wait_until(lambda: not queued(node), what="an empty queue")
    report = next(
        p for p in parsed(dsn).walk() if p.get_content_type() == "message/delivery-status"
    ).as_string()
    assert "Status: 5.1.6" in report and "mailbox retired, do not retry" in report


def test_a_421_defers_and_lowers_the_destination_limit(tmp_path: Path) -> None:
    with (
        peer_node(tmp_path / "peer") as peer,
        _sending_node_with_script(tmp_path / "out", "", route_to(peer.port) + FAST_RETRIES) as node,
    ):
        send(node.port, SENDER, ["close-now@example.net"], "busy server")
        (message,) = wait_until(
            lambda: [m for m in queued(node) if m.recipients[0].retry_count == 1],
            what="the recipient deferred",
        )
        limits = NodeLimits(Path(node.directory) / "data" / "queue")
        try:
            backoff = dict(limits.backoff_view())
        finally:
            limits.close()
    assert message.recipients[0].state is RecipientState.DEFERRED
    assert message.recipients[0].last_reply.startswith("421 4.7.0")
    assert [state.level for state in backoff.values()] == [1], backoff


def test_lmtp_route_gets_a_reply_per_recipient(tmp_path: Path) -> None:
    with smtp_sink(tmp_path, "-L") as sink:
        body = route_to(sink.port, extra='protocol = "lmtp"') + FAST_RETRIES
        out = tmp_path / "out"
        out.mkdir()
        port = free_port()
        (out / "mailwarden.toml").write_text(node_config(port, body=body))
        with node_process(out, out / "mailwarden.toml", port) as node:
            send(node.port, SENDER, ["a@example.net", "b@example.net"], "to the store")
            wait_until(lambda: not queued(node), what="an empty queue")
            dumps = sink.messages()
    assert len(dumps) == 1 and b"Subject: to the store" in dumps[0]
