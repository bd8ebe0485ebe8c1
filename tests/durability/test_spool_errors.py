"""Local storage failures: the client gets 451 (retry later), never 250 and never 5xx, and a
retry succeeds once the problem is gone.

The failures are real, not mocks:
- a full disk: the spool lives on a small tmpfs mounted for the test (the tests run as root),
  filled with a filler file until the kernel answers ENOSPC; SQLite then fails with
  SQLITE_FULL and spill files with ENOSPC;
- a write failure that is not a full disk: ``chattr +i`` (immutable) on the spool's data
  directory, which the kernel enforces even for root, so creating a spill file fails with EPERM.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.durability.conftest import (
    RawClient,
    make_message,
    message_tag,
    node_with_config,
    referenced_body_files,
    spill_files,
    stored_messages,
    strip_received,
)

MEMORY_THRESHOLD = 64 * 1024


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted (lazily if still busy) after the test."""
    mount_point = tmp_path / "small-fs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(filesystem: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = filesystem / "filler"
    block = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
        try:  # the last partial block
            while True:
                out.write(b"\0" * 512)
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    assert os.statvfs(filesystem).f_bavail == 0
    return filler


def assert_stored_as_sent(spool: Path, sent: dict[str, bytes]) -> None:
    by_tag = {message_tag(data): data for data in stored_messages(spool).values()}
    for tag, message in sent.items():
        assert tag in by_tag, f"{tag} was acknowledged but is not queued"
        assert strip_received(by_tag[tag]) == message, f"{tag} is not stored byte for byte"
    assert set(by_tag) == set(sent), f"unexpected messages queued: {set(by_tag) - set(sent)}"
    assert spill_files(spool) == referenced_body_files(spool), "orphan or missing spill files"


async def test_full_disk_gives_451_and_a_retry_succeeds_after_space_is_freed(
    tmp_path: Path, small_filesystem: Path
) -> None:
    spool = small_filesystem / "spool"
    spool_keys = f'path = "{spool}"\nmemory_threshold = {MEMORY_THRESHOLD}'
    acknowledged: dict[str, bytes] = {}
    failed: dict[str, bytes] = {}
    with node_with_config(tmp_path, spool=spool_keys) as node:
        client = await RawClient.connect(node.port)
        first = make_message("before-full", 1000)
        reply = await client.send_message(first)
        assert reply.code == 250, reply
        acknowledged["before-full"] = first

        filler = fill(small_filesystem)

        # A body that spills to a file: the spill write fails with ENOSPC.
        large = make_message("large-on-full-disk", 4 * MEMORY_THRESHOLD)
        reply = await client.send_message(large)
        assert (reply.code, reply.enhanced) == (451, "4.3.1"), reply
        failed["large-on-full-disk"] = large

        # Bodies kept in memory: only SQLite writes, which fail once the WAL must grow. The
        # WAL's first pages already exist, so the first few may still be stored: each reply is
        # a 250 (then the message is queued) or a 451 4.3.1, and the disk runs out at last.
        for number in range(40):
            tag = f"small-on-full-disk-{number}"
            message = make_message(tag, MEMORY_THRESHOLD // 2)
            reply = await client.send_message(message)
            assert reply.code in (250, 451), reply
            if reply.code == 250:
                acknowledged[tag] = message
            else:
                assert reply.enhanced == "4.3.1", reply
                failed[tag] = message
        assert len(failed) > 1, "a full disk never refused a message"

        # The sender's retry after space was freed: on the same connection, then a new one.
        filler.unlink()
        for tag, message in list(failed.items())[:2]:
            reply = await client.send_message(message)
            assert reply.code == 250, reply
            acknowledged[tag] = message
        await client.close()
        client = await RawClient.connect(node.port)
        for tag, message in list(failed.items())[2:]:
            reply = await client.send_message(message)
            assert reply.code == 250, reply
            acknowledged[tag] = message
        await client.close()
        assert node.stop() == 0, node.log()

    assert_stored_as_sent(spool, acknowledged)


@pytest.fixture
def immutable_cleanup() -> Iterator[list[Path]]:
    """Directories made immutable by a test get ``chattr -i`` back, whatever happens."""
    paths: list[Path] = []
    try:
        yield paths
    finally:
        for path in paths:
            subprocess.run(["chattr", "-i", str(path)], check=False)


async def test_write_failure_gives_451_and_a_retry_succeeds_once_fixed(
    tmp_path: Path, immutable_cleanup: list[Path]
) -> None:
    spool_keys = f"memory_threshold = {MEMORY_THRESHOLD}"
    with node_with_config(tmp_path, spool=spool_keys) as node:
        data_dir = node.spool / "data"
        client = await RawClient.connect(node.port)
        small = make_message("small-before", 1000)
        reply = await client.send_message(small)
        assert reply.code == 250, reply

        immutable_cleanup.append(data_dir)
        subprocess.run(["chattr", "+i", str(data_dir)], check=True)
        large = make_message("large-unwritable", 4 * MEMORY_THRESHOLD)
        reply = await client.send_message(large)
        assert (reply.code, reply.enhanced) == (451, "4.3.0"), reply
        # The session is still usable after the failure.
        reply = await client.command("NOOP")
        assert reply.code == 250, reply

        subprocess.run(["chattr", "-i", str(data_dir)], check=True)
        reply = await client.send_message(large)
        assert reply.code == 250, reply
        await client.close()
        assert node.stop() == 0, node.log()

    assert_stored_as_sent(node.spool, {"small-before": small, "large-unwritable": large})
