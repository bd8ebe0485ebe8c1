"""The node as a set of processes: what happens when the supervisor dies, when a worker cannot
start or keeps dying, and what a reload says about listen addresses."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import smtplib
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    queued,
    send_transaction,
    split_received,
    stored_bytes,
    wait_for_log,
    wait_until,
)
from tests.support.node import (
    free_port,
    node_process,
    process_gone,
    run_cli,
    wait_for_port,
    worker_pids,
    write_config,
)


def _config(directory: Path, port: int, *, workers: int, spool: str = "", server: str = "") -> Path:
    path = write_config(directory, port, server=server, body=f"[spool]\n{spool}\n")
    path.write_text(path.read_text().replace("workers = 1\n", f"workers = {workers}\n"))
    return path


# --- §1: workers do not outlive their supervisor ----------------------------------------------


@dataclass
class Load:
    """What the senders know: each message sent (by tag) and those that got a 250."""

    sent: dict[str, bytes] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _message(tag: str, size: int) -> bytes:
    head = (
        f"From: <sender@client.test>\r\nTo: <user@example.org>\r\nSubject: {tag}\r\n"
        f"Message-ID: <{tag}@client.test>\r\n\r\n"
    ).encode()
    line = f"{tag} ".encode() + b"x" * 70 + b"\r\n"
    return head + line * (size // len(line) + 1)


def _sender(port: int, index: int, load: Load) -> None:
    """Send messages back to back (new connection when one ends) until the node is gone."""
    rng = random.Random(index)
    number = 0
    while True:
        try:
            client = smtplib.SMTP("127.0.0.1", port, timeout=10)
        except OSError:
            return  # nobody listens any more
        try:
            client.ehlo("sender.client.test")
            while True:
                tag = f"s{index}-m{number}"
                number += 1
                message = _message(tag, rng.randrange(200, 40_000))
                with load.lock:
                    load.sent[tag] = message
                client.sendmail("sender@client.test", ["user@example.org"], message)
                with load.lock:  # sendmail returned: the 250 was read in full
                    load.acknowledged.add(tag)
        except (smtplib.SMTPException, OSError):
            pass  # 421, a cut connection: that message is "unknown", never partial
        finally:
            with contextlib.suppress(OSError):
                client.close()


def test_killing_the_supervisor_makes_every_worker_leave(tmp_path: Path) -> None:
    port = free_port()
    config = _config(tmp_path, port, workers=2, spool="memory_threshold = 16384")
    load = Load()
    with node_process(tmp_path, config, port) as node:
        wait_for_log(node, "worker 1: server inbound listening")
        wait_for_log(node, "worker 0: server inbound listening")
        workers = worker_pids(node.process.pid)
        assert len(workers) == 2
        senders = [
            threading.Thread(target=_sender, args=(port, index, load), daemon=True)
            for index in range(6)
        ]
        try:
            for thread in senders:
                thread.start()
            wait_until(lambda: len(load.acknowledged) >= 60, "60 messages acknowledged")
            os.kill(node.process.pid, signal.SIGKILL)  # the supervisor only
            node.process.wait(timeout=10)
            killed_at = time.monotonic()
            while not all(process_gone(pid) for pid in workers):
                assert time.monotonic() - killed_at < 2.0, (
                    f"workers still running 2 s after the supervisor died: {workers}\n" + node.log()
                )
                time.sleep(0.02)
        finally:
            for pid in workers:  # never leave orphans behind, even when the test fails
                if not process_gone(pid):
                    os.kill(pid, signal.SIGKILL)
        for thread in senders:
            thread.join(timeout=30)
        assert "supervisor is gone" in node.log()

    # A new generation takes the port at once and serves.
    with node_process(tmp_path, config, port, log_mode="ab") as node:
        with RawClient(port) as client:
            client.greeting()
            client.ehlo()
            reply = send_transaction(
                client, "a@client.test", ["user@example.org"], _message("after", 500)
            )
            assert reply.code == 250, reply
        assert node.stop() == 0, node.log()
    load.sent["after"] = _message("after", 500)
    load.acknowledged.add("after")

    # The kill -9 invariant: every 250 is in the spool byte for byte, nothing partial.
    stored: dict[str, bytes] = {}
    for message in queued(node):
        _, data = split_received(stored_bytes(node, message.id))
        tag = re.search(rb"^Message-ID: <([^>]+)@client\.test>", data, re.MULTILINE)
        assert tag is not None, data[:200]
        stored[tag.group(1).decode()] = data
    for tag, data in stored.items():
        assert data == load.sent[tag], f"{tag} is stored incomplete"
    lost = load.acknowledged - set(stored)
    assert not lost, f"acknowledged but not queued: {sorted(lost)[:5]}"
    assert len(load.acknowledged) >= 60


# --- §7: a worker that cannot start is a start-up error ---------------------------------------


def _unusable_spool(directory: Path) -> str:
    """A spool directory whose shard databases cannot be opened (they are directories):
    unusable even for root, who may write anywhere."""
    spool = directory / "spool"
    for shard in range(2):
        (spool / f"shard-{shard}.db").mkdir(parents=True)
    return f'path = "{spool}"'


@pytest.mark.parametrize("workers", [1, 2])
def test_unusable_spool_is_a_start_up_error_naming_the_key(tmp_path: Path, workers: int) -> None:
    config = _config(tmp_path, free_port(), workers=workers, spool=_unusable_spool(tmp_path))
    result = run_cli("run", "--config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    problem = r"mailwarden\.toml:\d+: spool\.path: cannot open spool \S+shard-\d\.db"
    assert re.search(problem, output), output
    assert "Traceback" not in output
    assert "restarting" not in output


@pytest.mark.parametrize("workers", [1, 2])
def test_port_in_use_is_a_start_up_error_naming_the_key(tmp_path: Path, workers: int) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _config(tmp_path, taken.getsockname()[1], workers=workers)
        result = run_cli("run", "--config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert re.search(r"mailwarden\.toml:\d+: servers\[0\]\.listen\[0\]: cannot listen on", output)
    assert "Traceback" not in output
    assert "restarting" not in output


def test_script_failing_in_the_workers_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "policy.py").write_text("import no_such_module_anywhere\n")
    config = _config(tmp_path, free_port(), workers=2, server='script = "policy.py"\n')
    result = run_cli("run", "--config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "policy.py" in output and "no_such_module_anywhere" in output
    assert "restarting" not in output


def _rows(shard: Path) -> int:
    db = sqlite3.connect(shard)
    try:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        db.close()


def test_a_killed_worker_is_restarted_and_serves(tmp_path: Path) -> None:
    port = free_port()
    with node_process(tmp_path, _config(tmp_path, port, workers=2), port) as node:
        wait_for_log(node, "worker 1: server inbound listening")
        wait_for_log(node, "worker 0: server inbound listening")
        [first, second] = worker_pids(node.process.pid)
        os.kill(first, signal.SIGKILL)
        wait_for_log(node, "was killed by signal 9; restarting it in")
        wait_until(lambda: len(worker_pids(node.process.pid)) == 2, "a replacement worker")
        wait_for_log(node, "server inbound listening", count=3)
        replacement = (set(worker_pids(node.process.pid)) - {second}).pop()
        assert replacement != first
        restarted = "0" if re.search(rf"worker 0 \(pid {first}\)", node.log()) else "1"
        # Connections are spread over both workers by the kernel: the replacement takes its
        # share and queues into its own shard.
        for number in range(40):
            with RawClient(port) as client:
                client.greeting()
                client.ehlo()
                message = _message(f"r{number}", 300)
                reply = send_transaction(client, "a@client.test", ["user@example.org"], message)
                assert reply.code == 250, reply
        assert _rows(node.spool / f"shard-{restarted}.db") > 0
        assert node.stop() == 0, node.log()


def _holder_of(path: Path, pids: list[int]) -> int:
    """The process that has ``path`` open (worker N holds shard N), or 0."""
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                if Path(os.readlink(fd)) == path:
                    return pid
            except OSError:
                continue
    return 0


def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    port = free_port()
    with node_process(tmp_path, _config(tmp_path, port, workers=2), port) as node:
        wait_for_log(node, "worker 1: server inbound listening")
        wait_for_log(node, "worker 0: server inbound listening")
        pids = worker_pids(node.process.pid)
        shard = node.spool / "shard-0.db"
        wait_until(lambda: _holder_of(shard, pids) > 0, "worker 0 holding its shard")
        worker0 = _holder_of(shard, pids)
        # Make shard 0 unopenable for whoever starts next, then kill its worker: each
        # replacement fails at once, as with a disk gone bad.
        aside = node.spool / "shard-0.db.aside"
        shard.rename(aside)
        shard.mkdir()
        os.kill(worker0, signal.SIGKILL)
        wait_for_log(node, "restarting it in", count=4)
        delays = [float(d) for d in re.findall(r"restarting it in ([\d.]+)s", node.log())]
        assert delays[:4] == [0.5, 1.0, 2.0, 4.0], node.log()
        # Each restart says why the last one failed.
        assert node.log().count("spool.path: cannot open spool") >= 3
        # Repaired, the next restart brings the worker back and the node serves.
        shard.rmdir()
        aside.rename(shard)
        wait_for_log(node, "worker 0: server inbound listening", count=2)
        with RawClient(port) as client:
            client.greeting()
            client.ehlo()
            reply = send_transaction(
                client, "a@client.test", ["user@example.org"], _message("back", 300)
            )
            assert reply.code == 250, reply
        assert node.stop() == 0, node.log()


# --- §6: a reload compares listen addresses with what is bound -------------------------------


def test_listen_changed_and_changed_back_warns_only_while_it_differs(tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    config = _config(tmp_path, port, workers=1)
    original = config.read_text()
    with node_process(tmp_path, config, port) as node:
        config.write_text(original.replace(f"127.0.0.1:{port}", f"127.0.0.1:{other}"))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        assert node.log().count("need a restart") == 1
        config.write_text(original)
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded", count=2)
        assert node.log().count("need a restart") == 1, node.log()
        wait_for_port(port)  # still listening where it always was
        # The warning said what is bound.
        assert f"127.0.0.1:{other} differs from the bound 127.0.0.1:{port}" in node.log()
        assert node.stop() == 0
