"""What smtpping does beyond 1.1: JSON, rate summary, --duration, --processes, Ctrl-C,
the progress line."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import subprocess

from tests.support.smtpping import ScriptedSMTPServer, interrupt_during_wait, run_smtpping


def target(server: ScriptedSMTPServer) -> tuple[str, ...]:
    return ("u@example.org", "@127.0.0.1", "-p", str(server.port))


def test_json_prints_one_object_per_ping_and_a_summary(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    scripted_smtp.behaviour.rcpt_reply = b"550 5.1.1 nobody\r\n"
    ran = run_smtpping(ours, "--json", "-c", "2", "-w", "0", "-s", "1", *target(scripted_smtp))
    records = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [r["type"] for r in records] == ["ping", "ping", "summary"]
    first = records[0]
    assert (first["seq"], first["ok"], first["rcptto_ms"]) == (1, False, None)
    assert first["error"] == {"step": "RCPT TO", "code": 550, "key": "550"}
    # The phases it reached have their times (ms after connect, in phase order); RCPT has none.
    assert isinstance(first["helo_ms"], float) and isinstance(first["mailfrom_ms"], float)
    assert 0 < first["helo_ms"] <= first["mailfrom_ms"]
    summary = records[-1]
    assert (summary["transmitted"], summary["completed"], summary["failed"]) == (2, 0, 2)
    assert summary["errors"] == {"550": 2}
    assert summary["phases"]["rcptto"]["count"] == 0
    assert ran.stderr == ""


def test_rate_mode_ends_with_a_summary_when_the_count_is_reached(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    ran = run_smtpping(
        ours, "-r", "-P", "3", "-c", "5", "-w", "0", "-s", "1", *target(scripted_smtp)
    )
    lines = ran.stdout.splitlines()
    counts = [int(line) for line in lines[: lines.index("")]]
    assert counts[0] == 0 and sum(counts) <= 15
    assert "--- rate summary ---" in lines
    assert any(line.startswith("15 messages completed in ") for line in lines)
    assert "errors: none" in lines
    assert len(scripted_smtp.transactions) == 15


def test_percentiles_are_added_to_the_statistics(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    ran = run_smtpping(ours, "--percentiles", "-q", "-c", "4", "-w", "0", *target(scripted_smtp))
    lines = ran.stdout.splitlines()
    assert lines[2] == "4 e-mail messages transmitted"
    quantiles = [line for line in lines if " p50/p90/p99 = " in line]
    assert [line.split()[0] for line in quantiles] == [
        "connect",
        "banner",
        "helo",
        "mailfrom",
        "rcptto",
        "data",
        "datasent",
        "quit",
    ]
    assert all(", stddev = " in line for line in quantiles)


def test_duration_stops_an_unlimited_run(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    ran = run_smtpping(ours, "--duration", "0.5", "-w", "100", "-s", "0", *target(scripted_smtp))
    assert ran.returncode == 0
    assert "--- 127.0.0.1 SMTP ping statistics ---" in ran.stdout
    assert ran.stdout.count("seq=") == len(scripted_smtp.transactions) >= 1


def test_processes_share_the_workers(ours: list[str], scripted_smtp: ScriptedSMTPServer) -> None:
    ran = run_smtpping(
        ours, "--processes", "2", "-P", "4", "-c", "3", "-w", "0", "-s", "1", *target(scripted_smtp)
    )
    lines = ran.stdout.splitlines()
    assert sum(line.startswith("PING ") for line in lines) == 4
    assert sorted(line.split(",")[0] for line in lines if line.startswith("seq=")) == sorted(
        ["seq=1", "seq=2", "seq=3"] * 4
    )
    assert len(scripted_smtp.transactions) == 12


def test_ctrl_c_lets_the_ping_finish_and_prints_statistics(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    rest = interrupt_during_wait([*ours, "-w", "60000", "-s", "0", *target(scripted_smtp)])
    assert "1 e-mail messages transmitted" in rest


def test_no_progress_line_when_stderr_is_a_pipe(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    ran = run_smtpping(ours, "-q", "-c", "3", "-w", "400", *target(scripted_smtp))
    assert ran.stderr == ""


def test_progress_line_is_redrawn_on_a_terminal(
    ours: list[str], scripted_smtp: ScriptedSMTPServer
) -> None:
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [*ours, "-q", "--duration", "2.2", "-w", "50", "-s", "1", *target(scripted_smtp)],
        stdout=subprocess.PIPE,
        stderr=secondary,
        text=True,
        env={**os.environ, "SMTPPING_NAMESERVER": "127.0.0.1:9"},
    )
    os.close(secondary)
    drawn = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(primary, 4096):
            drawn += chunk
    os.close(primary)
    assert process.wait(timeout=30) == 0
    frames = [frame for frame in drawn.decode().split("\r\x1b[K") if frame]
    # Drawn after 1 s and every 0.5 s after that, then erased before the statistics.
    assert 2 <= len(frames) <= 4
    assert all(re.fullmatch(r"\d+ sent, 0 failed, \d+ msg/s, \d s", frame) for frame in frames)
    assert drawn.endswith(b"\r\x1b[K")
