"""The default data directory is the same for every command a user runs, wherever it is
started: ``$MAILWARDEN_DATA_DIR``, else ``/var/lib/mailwarden`` for root, else the user's data
directory (``$XDG_DATA_HOME/mailwarden``, by default ``~/.local/share/mailwarden``).

The tests run as root. A non-root user is a real one here: ``unshare --user`` runs the command
in a new user namespace where it is uid 65534 (the kernel still lets it reach the files it owns
outside), so it takes the per-user branch with no mock of ``geteuid``.
"""

from __future__ import annotations

import ctypes
import os
import textwrap
from pathlib import Path

from tests.cli.cli_support import mailwarden, send
from tests.support.node import free_port, node_process

AS_ANOTHER_USER = ("unshare", "--user")
UNSHARE_NEWUSER = 0x10000000  # CLONE_NEWUSER from <sched.h>


def become_another_user() -> None:
    """In the forked child before exec: the same as ``unshare --user``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(UNSHARE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def config_without_data_dir(directory: Path, port: int) -> Path:
    path = directory / "mailwarden.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [node]
            workers = 1
            shutdown_grace = 5
            hostname = "mx.test.example"

            [[servers]]
            id = "inbound"
            listen = ["127.0.0.1:{port}"]
            local_domains = ["example.org"]
            """
        )
    )
    return path


def test_every_working_directory_sees_the_same_spool(tmp_path: Path, monkeypatch) -> None:
    """`mailwarden run` started in one directory, `queue list` (embedded defaults, no file)
    in two others: the same spool, in the user's data directory."""
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_DATA_HOME", str(xdg))
    monkeypatch.delenv("MAILWARDEN_DATA_DIR", raising=False)
    monkeypatch.delenv("MAILWARDEN_CONFIG", raising=False)
    node_dir, elsewhere, further = (tmp_path / name for name in ("node", "elsewhere", "further"))
    for directory in (node_dir, elsewhere, further):
        directory.mkdir()
    port = free_port()
    config = config_without_data_dir(node_dir, port)
    with node_process(node_dir, config, port, preexec_fn=become_another_user) as node:
        message_id = send(node.port, b"Subject: one\r\n\r\nx\r\n", ["b@example.org"])
        assert node.stop() == 0, node.log()
    assert (xdg / "mailwarden" / "spool").is_dir(), "the node wrote elsewhere"

    for directory in (elsewhere, further):
        result = mailwarden("queue", "list", "--json", cwd=directory, prefix=AS_ANOTHER_USER)
        assert result.returncode == 0, result.stderr
        assert message_id in result.stdout, f"{directory} sees another spool: {result.stdout}"
    checked = mailwarden("config", "check", cwd=further, prefix=AS_ANOTHER_USER)
    assert checked.returncode == 0, checked.stderr
    assert f"data directory: {xdg / 'mailwarden'}" in checked.stdout


def test_root_defaults_to_var_lib_mailwarden(tmp_path: Path) -> None:
    result = mailwarden(
        "config", "check", cwd=tmp_path, drop_env=("MAILWARDEN_DATA_DIR", "MAILWARDEN_CONFIG")
    )
    assert result.returncode == 0, result.stderr
    assert "data directory: /var/lib/mailwarden\n" in result.stdout
    assert "spool: /var/lib/mailwarden/spool\n" in result.stdout


def test_environment_variable_comes_first(tmp_path: Path) -> None:
    state = tmp_path / "state"
    for prefix in ((), AS_ANOTHER_USER):
        result = mailwarden(
            "config",
            "check",
            cwd=tmp_path,
            env={"MAILWARDEN_DATA_DIR": str(state)},
            drop_env=("MAILWARDEN_CONFIG",),
            prefix=prefix,
        )
        assert result.returncode == 0, result.stderr
        assert f"data directory: {state}\n" in result.stdout


def test_empty_spool_and_stats_name_the_directory_they_read(tmp_path: Path) -> None:
    state = tmp_path / "state"
    env = {"MAILWARDEN_DATA_DIR": str(state)}
    drop = ("MAILWARDEN_CONFIG",)
    listed = mailwarden("queue", "list", cwd=tmp_path, env=env, drop_env=drop)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.strip() == f"0 message(s) in {state / 'spool'}"
    stats = mailwarden("stats", cwd=tmp_path, env=env, drop_env=drop)
    assert stats.returncode == 0, stats.stderr
    assert f"no statistics published in {state / 'stats'}" in stats.stdout
    shown = mailwarden("queue", "show", "0123", cwd=tmp_path, env=env, drop_env=drop)
    assert shown.returncode == 1
    assert f"no message '0123' in {state / 'spool'}" in shown.stderr
