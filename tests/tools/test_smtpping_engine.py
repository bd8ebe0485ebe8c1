"""The raw-socket engine that runs plain pings: what its shortcuts must not change.

Replies are parsed in place only when one whole one-line reply arrives alone; these
tests feed it everything else (replies a byte at a time, multiline EHLO, two replies
in one segment), a message far larger than a socket buffer, a server that stops
answering and a handshake that never ends, hundreds of concurrent transactions
(also under a low limit on open files), and check the scheduling policy -r asks for.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import time

import pytest
from tests.support.smtpping import ScriptedSMTPServer, normalise, run_smtpping

from mailwarden.tools.smtpping.message import generated_message

SCHED_OTHER, SCHED_BATCH = 0, 3


def target(server: ScriptedSMTPServer) -> tuple[str, ...]:
    return ("u@example.org", "@127.0.0.1", "-p", str(server.port))


def test_replies_a_byte_at_a_time_are_timed_and_answered(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    scripted_smtp.behaviour.split = "bytes"
    args = ["-c", "2", "-w", "0", "-s", "1", *target(scripted_smtp)]
    theirs = run_smtpping(debian, *args)
    scripted_smtp.transactions.clear()
    mine = run_smtpping(ours, *args)
    assert normalise(mine.stdout) == normalise(theirs.stdout)
    assert mine.stderr == theirs.stderr == ""
    assert len(scripted_smtp.transactions) == 2
    # A reply sent over ~20 ms in 1-byte segments is only complete at its last byte.
    helo_ms = [float(line.split("helo=")[1].split()[0]) for line in mine.stdout.splitlines()[1:3]]
    assert all(ms >= 10 for ms in helo_ms)


@pytest.mark.parametrize("split", [None, "lines"])
def test_multiline_ehlo_reply_is_read_whole(
    ours: list[str], scripted_smtp: ScriptedSMTPServer, split: str | None
) -> None:
    # Line by line, "250-scripted" arrives alone first: it must not pass for the whole
    # reply, or every later reply would answer the command before its own.
    scripted_smtp.behaviour.split = split
    scripted_smtp.behaviour.eom_reply = b"252 2.0.0 queued\r\n"
    args = ["--json", "--ehlo", "-C", "-c", "3", "-w", "0", "-s", "1", *target(scripted_smtp)]
    ran = run_smtpping(ours, *args)
    assert ran.stderr == ""
    pings = [json.loads(line) for line in ran.stdout.splitlines()][:-1]
    assert [(p["ok"], p["eom_code"]) for p in pings] == [(True, 252)] * 3
    assert [(t.helo[:4], t.via_bdat) for t in scripted_smtp.transactions] == [(b"EHLO", True)] * 3


def test_two_replies_in_one_segment_are_taken_in_turn_as_debian_takes_them(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    # A broken server answers MAIL twice: the extra line becomes the RCPT reply, the
    # real RCPT reply the DATA reply, which fails the ping (250 is no 354).
    scripted_smtp.behaviour.mail_reply = b"250 2.1.0 ok\r\n250 2.1.0 ok again\r\n"
    args = ["-c", "2", "-w", "0", *target(scripted_smtp)]
    theirs = run_smtpping(debian, *args)
    mine = run_smtpping(ours, *args)
    assert normalise(mine.stdout) == normalise(theirs.stdout)
    assert (
        mine.stderr
        == theirs.stderr
        == "seq=1: recv: DATA failed (250)\nseq=2: recv: DATA failed (250)\n"
    )


def test_message_larger_than_the_socket_buffers_arrives_whole(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    ran = run_smtpping(
        ours, "-c", "1", "-s", "12288", "-S", "s@example.org", *target(scripted_smtp)
    )
    assert ran.stderr == ""
    assert "seq=1, connect=" in ran.stdout
    (transaction,) = scripted_smtp.transactions
    # 1.1's 12 MiB message, then the empty line its CRLF.CRLF terminator makes.
    expected = generated_message("s@example.org", "u@example.org", 12288) + b"\r\n"
    assert transaction.message == expected


def test_a_server_that_stops_answering_times_out_and_the_run_goes_on(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    scripted_smtp.behaviour.silent_after = b"MAIL"
    started = time.monotonic()
    ran = run_smtpping(ours, "--timeout", "1", "-c", "2", "-w", "0", *target(scripted_smtp))
    elapsed = time.monotonic() - started
    assert ran.returncode == 0
    assert (
        ran.stderr
        == "seq=1: recv: MAIL FROM failed (timeout)\nseq=2: recv: MAIL FROM failed (timeout)\n"
    )
    assert "2 e-mail messages transmitted" in ran.stdout
    assert elapsed >= 2  # each ping waited out its own timeout


def test_hundreds_of_concurrent_transactions(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    ran = run_smtpping(
        ours,
        "-r",
        "-P",
        "400",
        "-c",
        "2",
        "--timeout",
        "5",
        "-w",
        "0",
        "-s",
        "1",
        *target(scripted_smtp),
    )
    assert ran.returncode == 0
    assert "800 messages completed in " in ran.stdout
    assert "errors: none" in ran.stdout
    assert len(scripted_smtp.transactions) == 800


def scheduling_policy_while_running(ours: list[str], *args: str) -> int:
    """The policy (sched(7) number) of a running smtpping, from /proc/PID/stat."""
    process = subprocess.Popen(
        [*ours, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SMTPPING_NAMESERVER": "127.0.0.1:9"},
    )
    try:
        time.sleep(1.0)
        with open(f"/proc/{process.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[38])  # field 41 of proc(5), counted after "(comm)"
    finally:
        process.kill()
        process.wait()


def test_rate_mode_runs_as_a_batch_task_unless_told_otherwise(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    rate = ["-r", "-P", "2", "-w", "100", "-s", "0", *target(scripted_smtp)]
    pings = ["-w", "100", "-s", "0", *target(scripted_smtp)]
    assert scheduling_policy_while_running(ours, *rate) == SCHED_BATCH
    assert scheduling_policy_while_running(ours, "--scheduler", "normal", *rate) == SCHED_OTHER
    assert scheduling_policy_while_running(ours, *pings) == SCHED_OTHER
    assert scheduling_policy_while_running(ours, "--scheduler", "batch", *pings) == SCHED_BATCH


def test_a_handshake_that_never_completes_fails_the_connect_after_the_timeout(
    ours: list[str],
) -> None:
    # A listener whose accept queue is full drops further SYNs: connect() hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = str(listener.getsockname()[1])
        fillers = [socket.socket() for _ in range(2)]
        for filler in fillers:
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", int(port)))
        time.sleep(0.2)
        try:
            started = time.monotonic()
            ran = run_smtpping(
                ours, "--timeout", "1", "-c", "1", "u@example.org", "@127.0.0.1", "-p", port
            )
            elapsed = time.monotonic() - started
        finally:
            for filler in fillers:
                filler.close()
    assert ran.stderr == "seq=0: connect() failed 127.0.0.1\n"
    assert ran.stdout.endswith("--- no pings were sent ---\n")
    assert 1 <= elapsed < 10


def test_a_low_soft_limit_on_open_files_is_raised_for_many_workers(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    def low_soft_limit() -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))

    args = ["-r", "-P", "300", "-c", "1", "--timeout", "5", "-w", "0", "-s", "1"]
    done = subprocess.run(
        [*ours, *args, *target(scripted_smtp)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_soft_limit,
        env={**os.environ, "SMTPPING_NAMESERVER": "127.0.0.1:9"},
    )
    assert "300 messages completed in " in done.stdout
    assert "errors: none" in done.stdout
