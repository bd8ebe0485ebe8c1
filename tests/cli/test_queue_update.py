"""`mailwarden queue update ACTION [filters]`: hold, release, retry-now, delete and bounce as an
operator sees them in `queue list` and `queue show` afterwards; the guards (no filter without
--all, no change without --yes off a terminal, messages being delivered left alone unless
--force); and the DSN a bounce queues. One test acts on the spool of a running node."""

from __future__ import annotations

import email
import email.policy
import json
import re
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.cli.cli_support import mailwarden, send
from tests.support.node import running_node
from tests.support.queue_spool import Rcpt, commit, lease, message, write_config

LATER = time.time() + 3600  # a deferred recipient's next attempt


def queue(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message(
                "m1",
                Rcpt("a@slow.example", "deferred", retries=3, next_attempt=LATER),
                Rcpt("b@fast.example"),
            ),
            message("m2", Rcpt("c@slow.example", "deferred", retries=1, next_attempt=LATER)),
            message("m3", Rcpt("d@fast.example", "held", reason="held by policy")),
        ],
    )
    return write_config(tmp_path, spool)


def cli(config: Path, *args: str):  # type: ignore[no-untyped-def]
    return mailwarden("queue", *args, "--config", str(config))


def update(config: Path, *args: str) -> str:
    done = cli(config, "update", *args, "--yes")
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def recipients(config: Path) -> dict[str, dict[str, dict[str, Any]]]:
    done = cli(config, "list", "--json")
    assert done.returncode == 0, done.stderr
    return {m["id"]: {r["address"]: r for r in m["recipients"]} for m in json.loads(done.stdout)}


def test_hold_then_release(tmp_path: Path) -> None:
    config = queue(tmp_path)
    said = update(config, "hold", "recipient_domain=slow.example")
    assert said.startswith("hold: 2 recipient(s) of 2 message(s) changed")
    after = recipients(config)
    assert after["m1"]["a@slow.example"]["state"] == "held"
    assert after["m1"]["a@slow.example"]["reason"] == "held by the operator"
    assert after["m1"]["b@fast.example"]["state"] == "active"  # not matched: untouched
    shown = cli(config, "show", "m2").stdout
    assert "  state         held" in shown and "  reason        held by the operator" in shown

    before = time.time()
    said = update(config, "release", "state=held", "domain=slow.example")
    assert said.startswith("release: 2 recipient(s) of 2 message(s) changed")
    after = recipients(config)
    released = after["m1"]["a@slow.example"]
    assert released["state"] == "active" and released["reason"] == ""
    assert before - 1 <= released["next_attempt"] <= time.time()  # due now
    assert released["retry_count"] == 3
    assert after["m3"]["d@fast.example"]["state"] == "held"  # another domain


def test_retry_now_makes_deferred_mail_due_without_counting_a_retry(tmp_path: Path) -> None:
    config = queue(tmp_path)
    said = update(config, "retry-now", "state=deferred", "retries>=2")
    assert said.startswith("retry-now: 1 recipient(s) of 1 message(s) changed")
    after = recipients(config)
    flushed = after["m1"]["a@slow.example"]
    assert flushed["state"] == "deferred" and flushed["retry_count"] == 3
    assert flushed["next_attempt"] <= time.time()
    assert after["m2"]["c@slow.example"]["next_attempt"] == LATER  # retries=1: not matched


def test_delete_whole_messages_or_only_the_matching_recipients(tmp_path: Path) -> None:
    config = queue(tmp_path)
    said = update(config, "delete", "domain=slow.example")
    assert "2 recipient(s) of 2 message(s) changed, 1 message(s) removed" in said
    after = recipients(config)
    assert "m2" not in after  # its only recipient
    assert after["m1"]["a@slow.example"]["state"] == "discarded"
    assert after["m1"]["b@fast.example"]["state"] == "active"
    assert cli(config, "show", "m2").returncode == 1


def test_bounce_queues_a_dsn_to_the_sender(tmp_path: Path) -> None:
    config = queue(tmp_path)
    done = cli(
        config, "update", "bounce", "id=m2", "--reason", "Mailbox retired", "--yes", "--json"
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert (outcome["recipients"], outcome["removed"]) == (1, 1)
    (dsn_id,) = outcome["bounces"]

    listing = {m["id"]: m for m in json.loads(cli(config, "list", "--json").stdout)}
    assert "m2" not in listing  # its only recipient is final: it left the spool
    dsn = listing[dsn_id]
    assert dsn["sender"] == "" and dsn["state"] == "active"
    assert [r["address"] for r in dsn["recipients"]] == ["alice@client.test"]

    stored = mailwarden("queue", "show", dsn_id, "--raw", "--config", str(config), text=False)
    assert stored.returncode == 0
    parsed = email.message_from_bytes(stored.stdout, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed["To"] and "alice@client.test" in parsed["To"]
    report = next(p for p in parsed.walk() if p.get_content_type() == "message/delivery-status")
    text = report.as_string().replace("\n ", " ")
    assert re.search(r"^Final-Recipient: rfc822; ?c@slow\.example$", text, re.M), text
    assert "Status: 5.0.0" in text and "Mailbox retired" in text
    returned = next(
        p
        for p in parsed.walk()
        if p.get_content_type() in ("message/rfc822", "text/rfc822-headers")
    )
    assert "Subject: test m2" in returned.as_string()


def test_whole_queue_needs_all_and_changes_need_yes(tmp_path: Path) -> None:
    config = queue(tmp_path)
    before = recipients(config)

    done = cli(config, "update", "delete", "--yes")
    assert done.returncode == 1
    assert "refusing to delete every message in the queue" in done.stderr and "--all" in done.stderr

    done = cli(config, "update", "hold", "domain=slow.example")  # stdin is not a terminal
    assert done.returncode == 1
    assert "hold 2 recipient(s) of 2 message(s)? Not confirmed: add --yes" in done.stderr
    assert recipients(config) == before  # nothing changed

    said = update(config, "hold", "--all")
    assert said.startswith("hold: 3 recipient(s) of 2 message(s) changed")
    assert "1 matching message(s) unchanged" in said  # m3 was held already


def test_a_message_being_delivered_is_left_alone_unless_forced(tmp_path: Path) -> None:
    config = queue(tmp_path)
    lease(tmp_path / "spool", "m2")
    said = update(config, "hold", "domain=slow.example")
    assert "hold: 1 recipient(s) of 1 message(s) changed" in said
    assert "1 message(s) skipped: being delivered right now" in said and "m2" in said
    assert recipients(config)["m2"]["c@slow.example"]["state"] == "sending"

    said = update(config, "hold", "id=m2", "--force")
    assert said.startswith("hold: 1 recipient(s) of 1 message(s) changed")
    assert recipients(config)["m2"]["c@slow.example"]["state"] == "held"


def test_no_match_says_so_and_changes_nothing(tmp_path: Path) -> None:
    config = queue(tmp_path)
    said = update(config, "delete", "domain=nowhere.example")
    assert said.strip() == f"0 message(s) match domain=nowhere.example in {tmp_path / 'spool'}"
    assert len(recipients(config)) == 3


HOLD_SCRIPT = """
from mailwarden.policy.actions import Hold


async def data(conn, tx, message):
    return Hold(reason="quarantined by policy")
"""


def test_delete_quarantine_of_a_running_node(tmp_path: Path) -> None:
    """The node keeps its shard open while the CLI deletes from it; both go on writing."""
    (tmp_path / "policy.py").write_text(textwrap.dedent(HOLD_SCRIPT))
    body = b"From: <alice@client.test>\r\nSubject: spam\r\n\r\nbuy\r\n"
    with running_node(tmp_path, server='script = "policy.py"\n') as node:
        spam = [send(node.port, body, ["u@example.org"], "spam@bad.test") for _ in range(3)]
        good = send(node.port, body, ["v@example.org"], "friend@good.test")
        done = node.mailwarden("queue", "update", "delete", "sender_domain=bad.test", "--yes")
        after = send(node.port, body, ["w@example.org"], "spam@bad.test")  # still accepted
        listing = json.loads(node.mailwarden("queue", "list", "--json").stdout)
    assert done.returncode == 0, done.stderr
    assert "3 recipient(s) of 3 message(s) changed, 3 message(s) removed" in done.stdout
    assert {m["id"] for m in listing} == {good, after}
    assert not set(spam) & {m["id"] for m in listing}
    assert all(m["recipients"][0]["state"] == "held" for m in listing)


def test_a_long_update_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    """More than one batch (200 messages): a progress bar on stderr when it is a terminal,
    none when it is not (logs and pipes get the summary only)."""
    import os
    import pty
    import subprocess
    import sys
    import threading

    spool = tmp_path / "spool"
    commit(spool, [message(f"m{i:04d}", "x@bulk.example") for i in range(450)])
    config = write_config(tmp_path, spool)
    command = [sys.executable, "-m", "mailwarden.cli.main", "queue", "update", "hold"]
    command += ["domain=bulk.example", "--yes", "--config", str(config)]
    controller, terminal = pty.openpty()
    shown = bytearray()

    def drain() -> None:  # read as it comes: a full terminal buffer would block the CLI
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the other end is closed and drained
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=terminal, timeout=60, env=os.environ
        )
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(controller)
    assert done.returncode == 0
    assert b"hold: 450 recipient(s) of 450 message(s) changed" in done.stdout
    assert b"updating" in shown and b"%" in shown, bytes(shown)

    piped = cli(config, "update", "release", "domain=bulk.example", "--yes")
    assert piped.returncode == 0 and piped.stderr == ""
    assert piped.stdout.startswith("release: 450 recipient(s) of 450 message(s) changed")


def test_an_update_waits_for_a_workers_transaction_and_decides_on_its_outcome(
    tmp_path: Path,
) -> None:
    """A worker's transaction (here: leasing m2, as lease_due does) holds the shard's write
    lock while the operator deletes slow.example's mail: the CLI waits for it, then reads m2 again
    and leaves it alone, since it is being delivered now."""
    import sqlite3
    import subprocess
    import sys

    config = queue(tmp_path)
    worker = sqlite3.connect(tmp_path / "spool" / "shard-0.db", isolation_level=None)
    worker.execute("BEGIN IMMEDIATE")
    worker.execute(
        "UPDATE messages SET leased_by = 'w0', lease_until = ? WHERE id = 'm2'",
        (time.time() + 300,),
    )
    command = [sys.executable, "-m", "mailwarden.cli.main", "queue", "update", "delete"]
    command += ["domain=slow.example", "--yes", "--config", str(config)]
    operator = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)  # the CLI lists (WAL readers never wait), then waits for the write lock
    assert operator.poll() is None, operator.communicate()
    worker.execute("COMMIT")
    worker.close()
    out, errors = operator.communicate(timeout=60)
    assert operator.returncode == 0, errors
    assert "1 message(s) skipped: being delivered right now" in out and "m2" in out
    after = recipients(config)
    assert after["m2"]["c@slow.example"]["state"] == "sending"
    assert after["m1"]["a@slow.example"]["state"] == "discarded"
