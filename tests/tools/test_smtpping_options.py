"""Command-line handling: bad usage, help, version, -J and -r rules, as 1.1 does them."""

from __future__ import annotations

import pytest
from tests.support.smtpping import run_smtpping

from mailwarden.tools.smtpping.options import Options, parse_args, strtoul

# The option table of 1.1.4's usage text, which ours must reproduce line for line.
USAGE_HEAD_LINES = 23


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--bogus", "u@example.org"],
        ["-c"],
        ["nodomain"],
        ["u@example.org", "127.0.0.1"],
        ["-J", "-f", "/etc/hostname", "u@example.org", "@127.0.0.1"],
    ],
    ids=["nothing", "unknown", "missing-value", "no-domain", "server-without-at", "jailed-file"],
)
def test_bad_usage_prints_usage_on_stderr_and_exits_2(
    debian: list[str], ours: list[str], args: list[str]
) -> None:
    theirs = run_smtpping(debian, *args)
    mine = run_smtpping(ours, *args)
    assert theirs.returncode == mine.returncode == 2
    assert mine.stdout == theirs.stdout == ""
    head = theirs.stderr.splitlines()[:USAGE_HEAD_LINES]
    assert mine.stderr.splitlines()[:USAGE_HEAD_LINES] == head
    assert head[0] == "Usage: smtpping [ARGS] x@y.z [@server]"


def test_help_goes_to_stdout_and_exits_0(debian: list[str], ours: list[str]) -> None:
    theirs = run_smtpping(debian, "-h")
    mine = run_smtpping(ours, "--help")
    assert theirs.returncode == mine.returncode == 0
    assert mine.stderr == ""
    head = theirs.stdout.splitlines()[:USAGE_HEAD_LINES]
    assert mine.stdout.splitlines()[:USAGE_HEAD_LINES] == head
    assert "--starttls" in mine.stdout


def test_version_matches_the_release_it_replaces(debian: list[str], ours: list[str]) -> None:
    theirs = run_smtpping(debian, "-v")
    mine = run_smtpping(ours, "-v")
    assert (mine.returncode, mine.stdout) == (theirs.returncode, theirs.stdout) == (0, "1.1.4\n")


def test_rate_needs_parallel_workers(debian: list[str], ours: list[str]) -> None:
    args = ["-r", "-c", "1", "u@example.org", "@127.0.0.1", "-p", "9"]
    theirs = run_smtpping(debian, *args)
    mine = run_smtpping(ours, *args)
    assert (mine.returncode, mine.stderr) == (theirs.returncode, theirs.stderr)
    assert mine.stderr == "-r only works with -P1 or greater\n"
    assert mine.returncode == 1


def test_options_mix_with_operands_and_long_names_abbreviate() -> None:
    options = parse_args(["u@example.org", "--cou=5", "@mx.example", "-p", "2525", "-qC"])
    assert (options.count, options.server, options.port) == (5, "mx.example", "2525")
    assert options.quiet and options.chunking


def test_numbers_read_like_strtoul() -> None:
    assert [strtoul(text) for text in ("12", "12ms", "x", "", " 7")] == [12, 12, 0, 0, 7]
    assert parse_args(["-c", "abc", "u@example.org"]).count == 0  # unlimited, as in 1.1


def test_rate_implies_quiet_and_workers_default_to_one() -> None:
    options = parse_args(["-r", "-P", "2", "u@example.org"])
    assert options.rate and options.quiet and options.workers == 2
    assert Options().workers == 1


@pytest.mark.parametrize(
    "args",
    [
        ["--rcpts", "0", "u@example.org"],
        ["--duration", "-1", "u@example.org"],
        ["--auth", "nopassword", "u@example.org"],
        ["--auth-mech", "CRAM-MD5", "--auth", "a:b", "u@example.org"],
        ["--tls", "--starttls", "u@example.org"],
        ["--tls-key", "k.pem", "u@example.org"],
    ],
)
def test_new_options_are_checked_strictly(ours: list[str], args: list[str]) -> None:
    mine = run_smtpping(ours, *args)
    assert mine.returncode == 2
    assert mine.stderr.startswith("Usage: smtpping")
