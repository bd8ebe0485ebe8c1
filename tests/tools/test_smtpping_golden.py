"""Debian's smtpping 1.1.4 and ours, side by side against the same real server.

Timings differ from run to run, so they are normalised to N.NN; every other byte
of stdout and stderr, the exit code and what the server received must match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.smtpping import Ran, ScriptedSMTPServer, normalise, run_smtpping


def both(
    debian: list[str], ours: list[str], server: ScriptedSMTPServer, *args: str
) -> tuple[Ran, Ran, list, list]:
    server.transactions.clear()
    theirs = run_smtpping(debian, *args)
    their_transactions = list(server.transactions)
    server.transactions.clear()
    mine = run_smtpping(ours, *args)
    return theirs, mine, their_transactions, list(server.transactions)


def assert_same_output(theirs: Ran, mine: Ran) -> None:
    assert mine.returncode == theirs.returncode
    assert normalise(mine.stdout) == normalise(theirs.stdout)
    assert normalise(mine.stderr) == normalise(theirs.stderr)


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["-q"],
        ["-s", "0"],
        ["-s", "3", "-S", "probe@sender.example"],
        ["-C"],
        ["-H", "meter.example", "-c", "1"],
        ["-P", "1"],
        ["-d", "-c", "1"],
    ],
    ids=["default", "quiet", "size0", "size3-sender", "chunking", "helo", "P1", "debug"],
)
def test_successful_pings_print_what_debian_prints(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer, extra: list[str]
) -> None:
    args = ["-c", "3", "-w", "0", *extra, "user@example.org", "@127.0.0.1", "-p"]
    theirs, mine, their_tx, my_tx = both(
        debian, ours, scripted_smtp, *args, str(scripted_smtp.port)
    )
    assert_same_output(theirs, mine)
    assert "seq=" in mine.stdout or "-q" in extra
    # Same envelope and the very same message bytes on the wire.
    assert [(t.helo, t.mail, t.rcpts, t.message, t.via_bdat) for t in my_tx] == [
        (t.helo, t.mail, t.rcpts, t.message, t.via_bdat) for t in their_tx
    ]
    assert len(my_tx) == (1 if "-c" in extra else 3)


def test_message_file_is_sent_as_is(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer, tmp_path: Path
) -> None:
    eml = tmp_path / "probe.eml"
    eml.write_bytes(b"Subject: file probe\r\nX-Test: 1\r\n\r\nbody line\r\n")
    for extra in ([], ["-C"]):
        args = ["-c", "2", "-w", "0", *extra, "-f", str(eml), "u@example.org", "@127.0.0.1"]
        theirs, mine, their_tx, my_tx = both(
            debian, ours, scripted_smtp, *args, "-p", str(scripted_smtp.port)
        )
        assert_same_output(theirs, mine)
        assert [t.message for t in my_tx] == [t.message for t in their_tx]
        assert my_tx[0].message == eml.read_bytes()


def test_missing_message_file_warns_and_sends_empty_message(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    args = ["-c", "1", "-f", "/nonexistent/probe.eml", "u@example.org", "@127.0.0.1", "-p"]
    theirs, mine, _, my_tx = both(debian, ours, scripted_smtp, *args, str(scripted_smtp.port))
    assert_same_output(theirs, mine)
    assert "warning: file /nonexistent/probe.eml could not be opened" in mine.stderr
    assert my_tx[0].message == b""


@pytest.mark.parametrize(
    ("behaviour", "expected_error"),
    [
        ({"rcpt_reply": b"550 5.1.1 no such user\r\n"}, "seq=2: recv: RCPT TO failed (550)"),
        ({"banner": b"421 4.3.2 busy\r\n"}, "seq=1: recv: BANNER failed (421)"),
        ({"eom_reply": b"554 5.6.0 rejected\r\n"}, None),  # 1.1 counts any EOM reply
    ],
    ids=["rcpt-rejected", "banner-421", "eom-rejected"],
)
def test_rejections_print_debians_error_lines_and_the_run_continues(
    debian: list[str],
    ours: list[str],
    scripted_smtp: ScriptedSMTPServer,
    behaviour: dict,
    expected_error: str | None,
) -> None:
    for key, value in behaviour.items():
        setattr(scripted_smtp.behaviour, key, value)
    args = ["-c", "2", "-w", "0", "-s", "1", "u@example.org", "@127.0.0.1", "-p"]
    theirs, mine, _, _ = both(debian, ours, scripted_smtp, *args, str(scripted_smtp.port))
    assert_same_output(theirs, mine)
    if expected_error:
        assert expected_error in mine.stderr
        assert "-1.00/N.NN/-1.00" in normalise(mine.stdout)
    else:
        assert mine.stdout.count("seq=") == 2


def test_refused_connection_is_reported_and_no_pings_sent(
    debian: list[str], ours: list[str], refused_port: int
) -> None:
    args = ["-c", "2", "-w", "0", "u@example.org", "@127.0.0.1", "-p", str(refused_port)]
    theirs = run_smtpping(debian, *args)
    mine = run_smtpping(ours, *args)
    assert_same_output(theirs, mine)
    assert mine.stderr == "seq=0: connect() failed 127.0.0.1\n"
    assert mine.stdout.endswith("--- no pings were sent ---\n")


def test_parallel_workers_print_their_own_headers_and_no_statistics(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    args = ["-P", "3", "-c", "2", "-w", "0", "-s", "1", "u@example.org", "@127.0.0.1", "-p"]
    theirs, mine, their_tx, my_tx = both(
        debian, ours, scripted_smtp, *args, str(scripted_smtp.port)
    )
    assert mine.returncode == theirs.returncode == 0
    assert sorted(normalise(mine.stdout).splitlines()) == sorted(
        normalise(theirs.stdout).splitlines()
    )
    assert len(my_tx) == len(their_tx) == 6


def test_family_filter_that_excludes_the_server_sends_nothing(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    args = ["-6", "-c", "1", "u@example.org", "@127.0.0.1", "-p", str(scripted_smtp.port)]
    theirs, mine, _, my_tx = both(debian, ours, scripted_smtp, *args)
    assert_same_output(theirs, mine)
    assert my_tx == []


def test_unresolvable_bind_address_exits_1(
    debian: list[str], ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    args = ["-b", "256.1.1.1", "-c", "1", "u@example.org", "@127.0.0.1"]
    theirs = run_smtpping(debian, *args, "-p", str(scripted_smtp.port))
    mine = run_smtpping(ours, *args, "-p", str(scripted_smtp.port))
    assert_same_output(theirs, mine)
    assert mine.returncode == 1


def test_bind_source_address_is_used(ours: list[str], scripted_smtp: ScriptedSMTPServer) -> None:
    args = ["-b", "127.0.0.3", "-c", "1", "u@example.org", "@127.0.0.1"]
    mine = run_smtpping(ours, *args, "-p", str(scripted_smtp.port))
    assert "seq=1," in mine.stdout
    assert [t.peer for t in scripted_smtp.transactions] == ["127.0.0.3"]
