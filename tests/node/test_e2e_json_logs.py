"""``[node] log_format = "json"`` on a real ``mailwarden run`` with two workers: after real SMTP
sessions (smtplib), every line the node wrote is one JSON object, and the lines of a session
(the node's own, the script's, a hook's traceback) carry its connection and transaction ids."""

from __future__ import annotations

import json
import smtplib
import socket
import time
from pathlib import Path
from typing import Any

from tests.support.node import free_port, node_process, write_config

from mailwarden.smtp.server import connection_id

SCRIPT = """
import logging

from mailwarden.policy.actions import Reject

log = logging.getLogger("test-script")


async def helo(conn, helo):
    log.info("script saw helo %s", helo.name)


async def rcpt_to(conn, tx, recipient):
    log.info("script saw rcpt %s", recipient.address)
    if recipient.address.startswith("nobody"):
        return Reject("no such user", code=550, enhanced="5.1.1")


async def data(conn, tx, message):
    if message.headers.get("Subject") == "boom":
        # A message on two lines: the JSON line must stay one line all the same.
        raise RuntimeError("boom\\nnot a line of its own")
"""

SESSIONS = 6
WORKER_DIGITS = len(connection_id(0, 0)) - 1


def one_session(port: int, n: int) -> tuple[str, str]:
    """A queued message (a refused recipient first); returns the EHLO name and the queue id."""
    name = f"client{n}.example.net"
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.ehlo(name)
        assert client.mail("sender@sender.example")[0] == 250
        assert client.rcpt(f"nobody{n}@example.org")[0] == 550
        assert client.rcpt(f"user{n}@example.org")[0] == 250
        code, reply = client.data(b"Subject: hello\r\n\r\nbody\r\n")
        assert code == 250
        return name, reply.decode().rsplit(" ", 1)[1]


def failing_session(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("boom.example.net")
        assert client.mail("sender@sender.example")[0] == 250
        assert client.rcpt("user@example.org")[0] == 250
        assert client.data(b"Subject: boom\r\n\r\nbody\r\n")[0] == 451


def idle_session(port: int) -> None:
    """A transaction left idle: the node's sweep (outside the session's task) times it out."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("idle.example.net")
        assert client.mail("sender@sender.example")[0] == 250
        assert client.getreply()[0] == 421  # RFC 5321 §4.5.3.2: the server's timeout


def read_lines(log_path: Path) -> list[dict[str, Any]]:
    """Every line of the log as JSON; fails naming the first line that is not."""
    records = []
    for number, line in enumerate(log_path.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"log line {number} is not JSON: {line!r}") from None
        assert isinstance(record, dict), line
        records.append(record)
    return records


def test_every_line_is_json_and_a_sessions_lines_carry_its_ids(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "policy.py").write_text(SCRIPT)
    config = write_config(
        tmp_path,
        port,
        server='script = "policy.py"\n',
        body="[servers.limits]\ncommand_timeout = 1\n",
    )
    text = config.read_text().replace("workers = 1", 'workers = 2\nlog_format = "json"')
    config.write_text(text)
    with node_process(tmp_path, config, port) as node:
        sessions = [one_session(port, n) for n in range(SESSIONS)]
        failing_session(port)
        idle_session(port)
        assert node.stop() == 0
    records = read_lines(node.log_path)
    for record in records:
        assert {"time", "level", "logger", "pid", "worker", "message"} <= record.keys()
        assert record["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
        time.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ")

    # The supervisor's lines have no worker; each worker's have its index.
    ready = [r for r in records if r["message"].startswith("node ready: ")]
    assert [r["worker"] for r in ready] == [None]
    stopping = {r["worker"] for r in records if r["message"].endswith(": stopping")}
    assert stopping == {0, 1}

    for name, queue_id in sessions:
        (helo,) = [r for r in records if r["message"] == f"script saw helo {name}"]
        conn = helo["conn"]
        assert "tx" not in helo  # EHLO comes before any transaction
        assert helo["logger"] == "test-script"
        session = [r for r in records if r.get("conn") == conn]
        # The script's two rcpt lines, the refusal and the queued line are the transaction's.
        in_tx = [r for r in session if "tx" in r]
        assert {r["tx"] for r in in_tx} == {queue_id}
        messages = [r["message"] for r in in_tx]
        assert sum(m.startswith("script saw rcpt ") for m in messages) == 2
        assert any(" rcpt refused: " in m and "550 5.1.1" in m for m in messages)
        (queued,) = [r for r in in_tx if r["message"].startswith(f"{queue_id}: queued ")]
        # The worker that served the session is the one its connection id names.
        assert queued["worker"] == helo["worker"] == int(conn[:WORKER_DIGITS], 16)
        # No other session's id on this connection's lines.
        assert all(r.get("tx") in (None, queue_id) for r in session)

    (crash,) = [r for r in records if r["message"].endswith("hook data raised")]
    assert crash["level"] == "ERROR" and "tx" in crash and "conn" in crash
    assert "RuntimeError: boom\nnot a line of its own" in crash["traceback"]
    (refusal,) = [
        r for r in records if r.get("tx") == crash["tx"] and "data refused" in r["message"]
    ]
    assert refusal["conn"] == crash["conn"]

    (idle,) = [r for r in records if r["message"] == "script saw helo idle.example.net"]
    (timeout,) = [r for r in records if r["message"].endswith(": timeout")]
    assert timeout["conn"] == idle["conn"] and timeout["tx"]


def test_a_node_that_cannot_start_says_why_in_json(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write_config(tmp_path, port)
        config.write_text(
            config.read_text().replace("workers = 1", 'workers = 1\nlog_format = "json"')
        )
        with node_process(tmp_path, config, port, wait=False) as node:
            assert node.process.wait(timeout=30) == 1
    records = read_lines(node.log_path)
    assert records, "nothing was logged"
    (failure,) = [r for r in records if r["message"].startswith("cannot start: ")]
    assert failure["level"] == "ERROR" and str(port) in failure["message"]
