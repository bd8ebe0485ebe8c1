"""Moving the spool directory (and pointing ``spool.path`` at the new place) keeps every queued
message: no spill file is deleted at start-up, every message reads back byte for byte through
``mailwarden queue show --raw``. Also for rows written before spill files were named relative to
the spool (they name an absolute path that is stale after the move)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.durability.conftest import (
    RawClient,
    make_message,
    message_tag,
    node_with_config,
    spill_files,
    strip_received,
)

from mailwarden.spool import reader

MEMORY_THRESHOLD = 128 * 1024  # the default spool.memory_threshold


def queue_show_raw(config: Path, message_id: str) -> bytes:
    command = ["queue", "show", message_id, "--raw", "--config", str(config)]
    result = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli.main", *command],
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def send_all(port: int, messages: dict[str, bytes]) -> None:
    client = await RawClient.connect(port)
    for message in messages.values():
        reply = await client.send_message(message)
        assert reply.code == 250, reply
    await client.close()


def raw_by_tag(config: Path, spool: Path) -> dict[str | None, bytes]:
    """Every queued message as ``queue show --raw`` gives it, by the tag it was sent with."""
    found = {}
    for message in reader.iter_messages(spool):
        data = queue_show_raw(config, message.id)
        found[message_tag(data)] = data
    return found


def sent_messages() -> dict[str, bytes]:
    return {
        "small": make_message("small", 2_000),
        "spilled": make_message("spilled", MEMORY_THRESHOLD * 3),
        "spilled-too": make_message("spilled-too", MEMORY_THRESHOLD + 10_000),
    }


def move_spool(directory: Path) -> Path:
    """Move data/spool to moved/spool, as an operator moving it to another disk would."""
    (directory / "moved").mkdir()
    new_place = directory / "moved" / "spool"
    shutil.move(directory / "data" / "spool", new_place)
    return new_place


async def restart_and_check(directory: Path, spool: Path, sent: dict[str, bytes]) -> None:
    """Start the node on the moved spool: nothing deleted, everything intact, still serving."""
    files_before = {entry.name for entry in spill_files(spool)}
    assert len(files_before) == 2, files_before
    with node_with_config(directory, spool=f'path = "{spool}"') as node:
        files_after_start = {entry.name for entry in spill_files(spool)}
        await send_all(node.port, {"after-move": make_message("after-move", 500)})
        assert node.stop() == 0, node.log()
    assert files_after_start == files_before, "start-up deleted spill files rows still name"
    stored = raw_by_tag(node.config_path, spool)
    assert set(stored) == {*sent, "after-move"}
    for tag, message in sent.items():
        assert strip_received(stored[tag]) == message, f"{tag} is not intact after the move"


async def test_moving_the_spool_keeps_every_message(tmp_path: Path) -> None:
    sent = sent_messages()
    with node_with_config(tmp_path) as node:
        await send_all(node.port, sent)
        assert node.stop() == 0, node.log()
    assert len(spill_files(node.spool)) == 2
    await restart_and_check(tmp_path, move_spool(tmp_path), sent)


async def test_rows_naming_an_absolute_path_survive_a_move(tmp_path: Path) -> None:
    """Spools written by earlier versions name spill files by absolute path; after a move that
    path is wrong, and the file must still be found and kept."""
    sent = sent_messages()
    with node_with_config(tmp_path) as node:
        await send_all(node.port, sent)
        assert node.stop() == 0, node.log()
    # What the earlier code wrote: the absolute path of the file in the spool of that time.
    for shard in reader.shard_paths(node.spool):
        db = sqlite3.connect(shard)
        with db:
            db.execute(
                "UPDATE messages SET body_file = ? || '/' || body_file"
                " WHERE body_file IS NOT NULL AND body_file NOT LIKE '/%'",
                (str(node.spool),),
            )
        names = [row[0] for row in db.execute("SELECT body_file FROM messages")]
        db.close()
        assert sorted(name.startswith(f"{node.spool}/data/") for name in names if name) == [
            True,
            True,
        ], names
    await restart_and_check(tmp_path, move_spool(tmp_path), sent)
