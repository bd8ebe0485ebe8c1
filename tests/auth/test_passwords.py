"""The password file (``auth_password_file``): its format, its errors, rewriting it, and the
``mailwarden auth`` commands that make its hashes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import argon2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.auth.passwords import (
    PasswordFile,
    PasswordFileError,
    hash_password,
    parse_password_file,
    set_user,
)

# One real hash, made once: argon2 costs tens of milliseconds by design.
HASH = hash_password("wonderland")

user_names = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S")), min_size=1, max_size=30
).filter(lambda name: ":" not in name and not name.startswith("#"))


@settings(max_examples=200, deadline=None)
@given(st.lists(user_names, unique=True, max_size=8), st.lists(st.sampled_from(["", "# note"])))
def test_parse_reads_every_user_line_and_skips_comments(names: list[str], extra: list[str]) -> None:
    text = "\n".join([*extra, *(f"{name}:{HASH}" for name in names), *extra])
    assert parse_password_file(text) == {name: HASH for name in names}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_parse_raises_only_password_file_errors(text: str) -> None:
    try:
        users = parse_password_file(text)
    except PasswordFileError as error:
        assert str(error).startswith("<password file>:")
    else:
        assert all(":" not in user for user in users)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("alice", "expected USER:ARGON2-HASH"),
        (f"alice:{HASH}\nalice:{HASH}", "appears twice"),
        ("alice:$2y$10$bcryptbcrypt", "expected an argon2 hash"),
        ("alice:$argon2id$garbage", "malformed argon2 hash"),
        (f"al ice:{HASH}", "expected USER:ARGON2-HASH"),
    ],
)
def test_parse_names_file_and_line(text: str, problem: str) -> None:
    with pytest.raises(PasswordFileError) as caught:
        parse_password_file("# users\n" + text, "/etc/mailwarden/passwords")
    line = 2 if "twice" not in problem else 3
    assert str(caught.value).startswith(f"/etc/mailwarden/passwords:{line}: ")
    assert problem in str(caught.value)


def test_verify_rereads_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    set_user(path, "alice", HASH)
    passwords = PasswordFile(path)
    assert asyncio.run(passwords.verify("alice", "wonderland"))
    assert not asyncio.run(passwords.verify("alice", "looking-glass"))
    assert not asyncio.run(passwords.verify("bob", "wonderland"))
    set_user(path, "alice", hash_password("looking-glass"))
    assert asyncio.run(passwords.verify("alice", "looking-glass"))
    assert not asyncio.run(passwords.verify("alice", "wonderland"))


def test_a_broken_file_keeps_the_previous_users(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    set_user(path, "alice", HASH)
    passwords = PasswordFile(path)
    path.write_text("this is not a password file\n")
    assert asyncio.run(passwords.verify("alice", "wonderland"))


def test_set_user_keeps_other_lines_and_creates_private_files(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    assert set_user(path, "alice", HASH)
    assert os.stat(path).st_mode & 0o777 == 0o600
    path.write_text(f"# the team\n{path.read_text()}")
    assert set_user(path, "bob", HASH)
    assert not set_user(path, "alice", HASH)
    assert path.read_text() == f"# the team\nalice:{HASH}\nbob:{HASH}\n"
    with pytest.raises(PasswordFileError):
        set_user(path, "no:colons", HASH)


def _cli(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailwarden.cli.main", "auth", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_auth_hash_prints_a_hash_of_the_password_on_stdin() -> None:
    done = _cli("hash", stdin="wonderland\n")
    assert done.returncode == 0, done.stderr
    stored = done.stdout.strip()
    assert stored.startswith("$argon2id$")
    assert argon2.PasswordHasher().verify(stored, "wonderland")


def test_auth_set_writes_a_line_the_server_reads(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    done = _cli("set", str(path), "alice", stdin="wonderland\n")
    assert done.returncode == 0, done.stderr
    assert "added alice" in done.stderr
    assert asyncio.run(PasswordFile(path).verify("alice", "wonderland"))
    assert "wonderland" not in path.read_text()


def test_auth_hash_refuses_an_empty_password() -> None:
    done = _cli("hash", stdin="")
    assert done.returncode == 1
    assert "expected a password" in done.stderr
