"""Operator actions: what each does to a message (pure), and applied to real shards in batches,
re-reading each batch under the write lock, never touching a message being delivered unless
forced, and queueing the DSN of a bounce in the same transaction."""

from __future__ import annotations

import email
import email.policy
import re
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest
from tests.support.queue_spool import Rcpt, commit, lease, message

from mailwarden.queue.filters import FilterContext, parse_filters
from mailwarden.queue.operations import Action, plan, run, select
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.reader import find_message, iter_messages, read_message_bytes
from mailwarden.spool.states import RecipientState

NOW = time.time()

THREE = message(
    "m1",
    Rcpt("a@one.example", state="deferred", retries=2, last_reply="451 4.4.1 refused"),
    Rcpt("b@two.example", state="held", reason="quarantine"),
    Rcpt("c@one.example", state="delivered"),
)


def states(change) -> dict[int, str]:  # type: ignore[no-untyped-def]
    return {u.position: u.state.value for u in change.updates}


def test_hold_release_retry_now_change_only_the_states_they_apply_to() -> None:
    hold = plan(Action.HOLD, THREE, [0, 1, 2], now=NOW).change
    assert hold is not None and states(hold) == {0: "held"} and not hold.remove
    assert hold.updates[0].reason == "held by the operator"

    release = plan(Action.RELEASE, THREE, [0, 1, 2], now=NOW).change
    assert release is not None and states(release) == {1: "active"}
    assert release.updates[0].next_attempt == NOW  # due at once

    retry = plan(Action.RETRY_NOW, THREE, [0, 1], now=NOW).change
    assert retry is not None and states(retry) == {0: "deferred"}  # state and reason kept
    assert retry.updates[0].next_attempt == NOW and retry.updates[0].reason == ""

    assert plan(Action.RELEASE, THREE, [0], now=NOW).change is None  # nothing held there


def test_delete_removes_the_message_only_when_nothing_else_waits() -> None:
    part = plan(Action.DELETE, THREE, [0], now=NOW).change
    assert part is not None and states(part) == {0: "discarded"} and not part.remove
    whole = plan(Action.DELETE, THREE, [0, 1], now=NOW).change  # c@ is already delivered
    assert whole is not None and whole.remove and whole.updates == ()


def test_a_live_lease_is_skipped_unless_forced() -> None:
    leased = replace(THREE, leased_by="w0", lease_until=NOW + 60)
    skipped = plan(Action.HOLD, leased, [0], now=NOW)
    assert skipped.change is None and skipped.skipped_lease
    forced = plan(Action.HOLD, leased, [0], now=NOW, force=True).change
    assert forced is not None and states(forced) == {0: "held"}
    expired = replace(THREE, leased_by="w0", lease_until=NOW - 1)
    assert plan(Action.HOLD, expired, [0], now=NOW).change is not None


def filtered(spool: Path, *texts: str):  # type: ignore[no-untyped-def]
    query = parse_filters(list(texts))
    return query, select(spool, query, FilterContext(time.time()))


def test_run_changes_every_shard_in_batches(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(spool, [message(f"a{i:02d}", "x@slow.example", "y@fast.example") for i in range(5)])
    commit(spool, [message(f"b{i:02d}", "x@slow.example") for i in range(4)], shard=1)
    query, selection = filtered(spool, "domain=slow.example")
    assert (selection.messages, selection.recipients) == (9, 9)
    seen: list[int] = []
    outcome = run(spool, Action.HOLD, query, selection, batch_size=2, progress=seen.append)
    assert (outcome.messages, outcome.recipients, outcome.removed) == (9, 9, 0)
    assert seen == [2, 2, 2, 2, 1]  # one transaction per batch, the shards taking turns
    for m in iter_messages(spool):
        by_domain = {r.address.split("@")[1]: r.state for r in m.recipients}
        assert by_domain["slow.example"] is RecipientState.HELD
        assert by_domain.get("fast.example", RecipientState.ACTIVE) is RecipientState.ACTIVE


def test_run_decides_on_the_state_found_under_the_lock(tmp_path: Path) -> None:
    """Listed, then a worker leases one message before the update runs: it is skipped."""
    spool = tmp_path / "spool"
    commit(spool, [message("m1", "x@y.example"), message("m2", "x@y.example")])
    query, selection = filtered(spool, "state=active")
    lease(spool, "m2")
    outcome = run(spool, Action.DELETE, query, selection)
    assert outcome.removed == 1 and outcome.skipped_lease == []  # m2 no longer matches "active"
    assert find_message(spool, "m1") is None
    assert find_message(spool, "m2") is not None

    query, selection = filtered(spool, "domain=y.example")
    outcome = run(spool, Action.DELETE, query, selection)
    assert outcome.skipped_lease == ["m2"] and outcome.removed == 0
    outcome = run(spool, Action.DELETE, query, selection, force=True)
    assert outcome.removed == 1 and find_message(spool, "m2") is None


def test_delete_unlinks_the_spill_file_after_the_commit(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(spool, [message("big", "x@y.example")], spilled={"big": b"a large body\r\n"})
    spill = spool / "data" / "shard-0-big"
    assert spill.exists()
    query, selection = filtered(spool, "id=big")
    assert run(spool, Action.DELETE, query, selection).removed == 1
    assert not spill.exists()


def test_bounce_queues_the_dsn_in_the_same_shard(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    original = message(
        "m1",
        Rcpt("gone@one.example", state="deferred", params={"ORCPT": "rfc822;Gone@one.example"}),
        Rcpt("stays@two.example"),
        sender="alice@client.test",
    )
    commit(spool, [original], shard=1)
    query, selection = filtered(spool, "domain=one.example")
    outcome = run(spool, Action.BOUNCE, query, selection, reporting_mta="mx.test.example")
    assert outcome.recipients == 1 and outcome.removed == 0 and len(outcome.bounces) == 1

    kept = find_message(spool, "m1")
    assert kept is not None
    assert [r.state for r in kept.recipients] == [RecipientState.BOUNCED, RecipientState.ACTIVE]
    assert kept.recipients[0].last_reply == "550 5.0.0 Delivery cancelled by the queue operator"

    dsn_id = outcome.bounces[0]
    db = sqlite3.connect(spool / "shard-1.db")  # queued beside the message it reports on
    assert db.execute("SELECT count(*) FROM messages WHERE id = ?", (dsn_id,)).fetchone() == (1,)
    db.close()
    dsn = find_message(spool, dsn_id)
    assert dsn is not None and dsn.sender == ""
    assert [r.address for r in dsn.recipients] == ["alice@client.test"]
    data = read_message_bytes(spool, dsn_id)
    assert data is not None
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    report = next(p for p in parsed.walk() if p.get_content_type() == "message/delivery-status")
    text = report.as_string().replace("\n ", " ")  # unfolded (RFC 5322 §2.2.3)
    assert re.search(r"^Final-Recipient: rfc822; ?gone@one\.example$", text, re.M), text
    assert re.search(r"^Original-Recipient: rfc822; ?Gone@one\.example$", text, re.M), text
    assert "Status: 5.0.0" in text and "Action: failed" in text
    assert "Delivery cancelled by the queue operator" in text
    assert "stays@two.example" not in text


def test_bouncing_the_last_recipients_removes_the_message(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    commit(spool, [message("m1", "a@x.example"), message("m2", "b@x.example", sender="")])
    query, selection = filtered(spool, "domain=x.example")
    outcome = run(spool, Action.BOUNCE, query, selection, reason="spam run, cleared")
    assert outcome.removed == 2
    # The null sender's message gets no bounce (never bounce a bounce): one DSN, for m1.
    assert len(outcome.bounces) == 1
    assert [m.id for m in iter_messages(spool)] == outcome.bounces
    data = read_message_bytes(spool, outcome.bounces[0])
    assert data is not None and b"spam run, cleared" in data


def test_a_version_1_shard_is_refused_with_its_name(tmp_path: Path) -> None:
    from tests.spool.spool_support import write_v1_shard

    spool = tmp_path / "spool"
    write_v1_shard(spool, b"body\r\n")
    query, selection = filtered(spool, "id=m1")
    with pytest.raises(SpoolError, match=r"shard-0\.db: spool schema version 1; start"):
        run(spool, Action.HOLD, query, selection)


def test_bounce_of_spilled_bodies_returns_small_ones_whole_and_large_ones_headers(
    tmp_path: Path,
) -> None:
    spool = tmp_path / "spool"
    bodies = {"small": b"small spilled body\r\n", "large": (b"z" * 70 + b"\r\n") * 5000}
    commit(spool, [message(name, "x@y.example") for name in bodies], spilled=bodies)
    assert len(list((spool / "data").iterdir())) == 2  # 360 KB: over the return limit
    query, selection = filtered(spool, "domain=y.example")
    outcome = run(spool, Action.BOUNCE, query, selection)
    assert outcome.removed == 2 and len(outcome.bounces) == 2
    assert not list((spool / "data").iterdir())  # both spill files went with their messages

    returned = {}
    for dsn_id in outcome.bounces:
        data = read_message_bytes(spool, dsn_id)
        assert data is not None
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        part = parsed.get_payload()[2]
        subject = re.search(rb"Subject: test (\w+)", part.as_bytes())
        assert subject is not None
        returned[subject.group(1).decode()] = (part.get_content_type(), part.as_bytes())
    assert returned["small"][0] == "message/rfc822"
    assert b"small spilled body" in returned["small"][1]
    assert returned["large"][0] == "text/rfc822-headers"
    assert b"zzzz" not in returned["large"][1]
