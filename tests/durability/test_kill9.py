"""kill -9 of a loaded node, restart, and check the spool against what the clients saw.

The contract (DESIGN.md, "Durability first"): a 250 after the message means it is on stable
storage; a crash at any instant loses no acknowledged message and never leaves a partial one
queued. A kill -9 does not lose the page cache, so this test cannot catch a missing fsync (only a
power cut would); what it does catch is a 250 sent before the commit, a row committed before its
spill file was complete, a partial body or header section stored, a spill file leaked by a
crashed transaction, and a shard that does not reopen after a crash.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.durability.conftest import (
    RawClient,
    dot_stuff,
    make_message,
    message_tag,
    node_with_config,
    referenced_body_files,
    spill_files,
    stored_messages,
    strip_received,
)

MEMORY_THRESHOLD = 16 * 1024
SENDERS = 16
SPOOL = f"memory_threshold = {MEMORY_THRESHOLD}"


@dataclass
class Load:
    """What the clients know: every message whose transaction they began (MAIL sent), and
    those that got a 250 read in full. Anything else (no reply, a cut connection) is
    "unknown": it may or may not be queued, but never partially."""

    started: dict[str, bytes] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    refused: dict[str, str] = field(default_factory=dict)
    large_started: int = 0


def _body_size(rng: random.Random, index: int, number: int) -> int:
    # Every fourth message spills to a file (some by far); a quarter of the senders start with
    # one, so that even the earliest kill finds spill files being written.
    if (index + number) % 4 == 0:
        return rng.randrange(MEMORY_THRESHOLD + 1, 20 * MEMORY_THRESHOLD)
    return rng.randrange(100, MEMORY_THRESHOLD // 2)


async def _sender(port: int, index: int, load: Load) -> None:
    """Send distinct messages back to back until the connection dies."""
    rng = random.Random(index)
    try:
        client = await RawClient.connect(port, ehlo=f"sender{index}.client.test")
        number = 0
        while True:
            tag = f"s{index:02d}-m{number:05d}"
            size = _body_size(rng, index, number)
            message = make_message(tag, size)
            # Counted from MAIL on: the transaction is in flight from then.
            load.started[tag] = message
            await client.envelope("sender@client.test", "user@example.org")
            if size > MEMORY_THRESHOLD:
                load.large_started += 1
            reply = await client.send_data(dot_stuff(message))
            if reply.code == 250:
                load.acknowledged.add(tag)
            else:
                load.refused[tag] = f"{reply.code} {reply.text}"
            number += 1
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return  # the node was killed: whatever was in flight stays "unknown"


async def _load_then_kill(node_port: int, kill: object, kill_after: int) -> Load:
    load = Load()
    tasks = [asyncio.create_task(_sender(node_port, index, load)) for index in range(SENDERS)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while len(load.acknowledged) < kill_after:
        assert loop.time() < deadline, f"only {len(load.acknowledged)} messages acknowledged"
        assert not all(task.done() for task in tasks), "every sender stopped before the kill"
        await asyncio.sleep(0.001)
    kill()  # type: ignore[operator]  # synchronous: the clients are frozen until it is done
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return load


@pytest.mark.parametrize(
    "kill_after",
    [
        # Right after the first group commits: spill files being created, shards young.
        pytest.param(2, id="first-commits"),
        pytest.param(40, id="warm"),
        # Under sustained load: large batches, WAL well past its first pages.
        pytest.param(300, id="sustained"),
    ],
)
async def test_kill9_loses_no_acknowledged_message_and_stores_nothing_partial(
    tmp_path: Path, kill_after: int
) -> None:
    with node_with_config(tmp_path, workers=2, spool=SPOOL) as node:
        load = await _load_then_kill(node.port, node.kill, kill_after)
        assert node.process.returncode == -9

    # The kill hit a node in the middle of its work, with transactions in flight.
    assert len(load.acknowledged) >= kill_after
    in_flight = set(load.started) - load.acknowledged - set(load.refused)
    assert in_flight, "no transaction was in flight when the node was killed"
    assert load.large_started > 0
    assert not load.refused, load.refused

    # Restart on the same data directory (spool recovery runs at open), prove the node
    # works, then stop it cleanly.
    with node_with_config(tmp_path, workers=2, spool=SPOOL) as node:
        client = await RawClient.connect(node.port)
        after = make_message("after-restart", MEMORY_THRESHOLD * 2)
        reply = await client.send_message(after)
        assert reply.code == 250, reply
        await client.close()
        assert node.stop() == 0, node.log()
    load.started["after-restart"] = after
    load.acknowledged.add("after-restart")

    stored_by_tag: dict[str, bytes] = {}
    for spool_id, data in stored_messages(node.spool).items():
        tag = message_tag(data)
        assert tag is not None, f"{spool_id} is not one of the messages sent: {data[:300]!r}"
        assert tag not in stored_by_tag, f"{tag} is queued twice"
        stored_by_tag[tag] = data

    # Nothing partial: every queued message is, byte for byte, a whole message a client sent.
    for tag, data in stored_by_tag.items():
        assert tag in load.started, f"{tag} was queued but never sent"
        assert strip_received(data) == load.started[tag], f"{tag} is queued incomplete"

    # Nothing acknowledged is lost.
    lost = sorted(load.acknowledged - set(stored_by_tag))
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:5]}"

    # No spill file without a row, no row without its file.
    referenced = referenced_body_files(node.spool)
    on_disk = spill_files(node.spool)
    assert on_disk - referenced == set(), "orphan spill files left after recovery"
    assert referenced - on_disk == set(), "rows name spill files that do not exist"
    assert referenced, "no committed message spilled to a file"
