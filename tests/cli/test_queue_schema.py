"""`mailwarden queue` on a spool written by a newer Mailwarden: a clear error naming the shard
and both schema versions, exit 1, no traceback."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.cli.cli_support import mailwarden

from mailwarden.spool.schema import CURRENT_VERSION, SCHEMA_V1


def test_queue_commands_refuse_a_newer_shard(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    shard = spool / "shard-0.db"
    db = sqlite3.connect(shard)
    db.executescript(SCHEMA_V1)
    db.execute(f"PRAGMA user_version = {CURRENT_VERSION + 1}")
    db.close()
    config = tmp_path / "mailwarden.toml"
    config.write_text(f'[spool]\npath = "{spool}"\n')

    for command in (["list"], ["list", "--json"], ["show", "0123"]):
        done = mailwarden("queue", *command, "--config", str(config))
        assert done.returncode == 1, done
        assert str(shard) in done.stderr
        assert f"spool schema version {CURRENT_VERSION + 1} is newer" in done.stderr
        assert "Traceback" not in done.stderr
