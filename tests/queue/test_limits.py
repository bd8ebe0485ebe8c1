"""NodeLimits: connection slots, rates, backoff and suspensions shared by real processes.

Every cross-process test runs tests/queue/limits_child.py in separate interpreters
(``subprocess``), each with its own NodeLimits on the same directory, as a node's workers are.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mailwarden
from mailwarden.delivery.errors import DeliveryReply
from mailwarden.queue.limits import WAITING_TTL, NodeLimits
from mailwarden.queue.shaping import (
    BackoffState,
    DeliveryFields,
    Rate,
    ShapingDefaults,
    ShapingRule,
    Suspension,
)

CHILD = Path(__file__).with_name("limits_child.py")
SRC = str(Path(mailwarden.__file__).resolve().parents[1])


def child(*args: object, **kwargs) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, str(CHILD), *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run_child(*args: object) -> str:
    process = child(*args)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    return out.strip()


@pytest.fixture
def limits(tmp_path):
    node = NodeLimits(tmp_path / "queue")
    yield node
    node.close()


# -- connection slots -----------------------------------------------------------------------


def test_slots_within_one_process_count_each_connection(limits):
    first = limits.acquire_connection("destination|destination=example.net", 2)
    second = limits.acquire_connection("destination|destination=example.net", 2)
    assert first is not None and second is not None
    assert limits.acquire_connection("destination|destination=example.net", 2) is None
    assert limits.connections("destination|destination=example.net") == 2
    # Another key counts on its own.
    assert limits.acquire_connection("destination|destination=example.org", 2) is not None
    first.release()
    first.release()  # twice changes nothing: it must not free the next holder's slot
    third = limits.acquire_connection("destination|destination=example.net", 2)
    assert third is not None
    first.release()
    assert limits.connections("destination|destination=example.net") == 2
    assert limits.acquire_connection("destination|destination=example.net", 2) is None


def test_acquire_all_takes_every_key_or_none(limits):
    assert limits.acquire_connection("b", 1) is not None
    assert limits.acquire_all([("a", 5), ("b", 1)]) is None
    assert limits.connections("a") == 0  # nothing left held by the refused attempt
    slots = limits.acquire_all([("a", 5), ("c", 1)])
    assert slots is not None and [slot.key for slot in slots] == ["a", "c"]


def test_processes_together_never_exceed_a_concurrency_limit(tmp_path):
    limit, seconds = 4, 2.0
    counter = tmp_path / "holders"
    counter.write_bytes(struct.pack("qq", 0, 0))
    start_at = time.time() + 1.5  # after every child has started
    processes = [
        child(
            "churn",
            tmp_path / "queue",
            "shaping:mx|mx=mx.example.net",
            limit,
            start_at,
            seconds,
            counter,
        )
        for _ in range(3)
    ]
    for process in processes:
        process.communicate(timeout=60)
        assert process.returncode == 0
    current, most = struct.unpack("qq", counter.read_bytes())
    assert current == 0
    # Each process alone would take all 4 slots: the limit was reached and held node-wide.
    assert most == limit


def test_a_killed_process_frees_its_slots(tmp_path, limits):
    key = "shaping:google|mx=aspmx.l.google.com"
    holder = child("hold", tmp_path / "queue", key, 2, 2)
    try:
        assert holder.stdout.readline().strip() == "held 2"
        assert limits.connections(key) == 2
        assert limits.acquire_connection(key, 2) is None
        # A limit lowered while the connections are open (backoff) counts them too.
        assert limits.acquire_connection(key, 1) is None
        assert limits.acquire_connection(key, 3) is not None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert limits.connections(key) == 1  # our own, taken above
    assert limits.acquire_connection(key, 2) is not None


def test_a_process_waiting_for_a_slot_gets_its_share(tmp_path, limits):
    """While another worker waits for a key's slots, this one takes no more than half of
    the limit, its connections beyond that give theirs back, and an idle one gives its slot
    back at once; when nobody waits, every slot is this worker's."""
    key = "destination:[127.0.0.1]:25"
    slots = [limits.acquire_connection(key, 4) for _ in range(4)]
    assert all(slots)
    assert not limits.should_yield(slots[0], more_waiting=False)  # nobody else waits
    waiter = child("want", tmp_path / "queue", key, stdin=subprocess.PIPE)
    try:
        assert waiter.stdout.readline().strip() == "wanting"
        time.sleep(WAITING_TTL)  # what should_yield found out last is reused that long
        # Holding 4 of 4 while another waits: beyond the share (2), give back.
        assert limits.should_yield(slots[0], more_waiting=True)
        slots.pop().release()
        slots.pop().release()
        assert not limits.should_yield(slots[0], more_waiting=True)  # 2 is the share
        assert limits.should_yield(slots[0], more_waiting=False)  # idle: give it back
        assert limits.acquire_connection(key, 4) is None  # the free slots are the waiter's
        waiter.stdin.write("stop\n")
        waiter.stdin.flush()
        assert waiter.stdout.readline().strip() == "satisfied"
        time.sleep(WAITING_TTL)
        assert not limits.should_yield(slots[0], more_waiting=False)
        assert limits.acquire_connection(key, 4) is not None
    finally:
        waiter.send_signal(signal.SIGKILL)
        waiter.wait(timeout=30)


def test_a_dead_waiter_no_longer_holds_back_the_others(tmp_path, limits):
    key = "destination:[127.0.0.1]:25"
    held = limits.acquire_connection(key, 2)
    waiter = child("want", tmp_path / "queue", key, stdin=subprocess.PIPE)
    try:
        assert waiter.stdout.readline().strip() == "wanting"
        assert limits.acquire_connection(key, 2) is None  # 1 of 2 is this one's share
    finally:
        waiter.send_signal(signal.SIGKILL)
        waiter.wait(timeout=30)
    time.sleep(WAITING_TTL)
    assert held is not None and not limits.should_yield(held, more_waiting=False)
    assert limits.acquire_connection(key, 2) is not None
    assert limits.connections(key) == 2  # the waiter's mark is not counted as a connection


def test_want_is_counted_per_caller(limits, tmp_path):
    """Two destinations of one worker waiting for the same key: the worker waits until both
    stop."""
    key = "shaping:tenant=a"
    limits.want(key, True)
    limits.want(key, True)
    limits.want(key, False)
    assert run_child_wanting(tmp_path, key) == "1"  # still waiting: one caller left
    limits.want(key, False)
    assert run_child_wanting(tmp_path, key) == "0"


def run_child_wanting(tmp_path: Path, key: str) -> str:
    return run_child("count-wanting", tmp_path / "queue", key)


def test_slots_above_a_lowered_limit_count(tmp_path, limits):
    # Backoff lowers a limit while connections are open: those holding high slots still
    # count, so new connections wait until the total is below the new limit.
    key = "destination|destination=example.net"
    mine = [limits.acquire_connection(key, 10) for _ in range(3)]  # slots 0, 1, 2
    holder = child("hold", tmp_path / "queue", key, 10, 2)  # slots 3 and 4
    try:
        assert holder.stdout.readline().strip() == "held 2"
        for slot in mine:
            slot.release()
        assert limits.connections(key) == 2
        assert limits.acquire_connection(key, 2) is None  # 2 open (3 and 4): at the limit
        assert limits.acquire_connection(key, 1) is None
        taken = limits.acquire_connection(key, 3)
        assert taken is not None and taken.index == 0
        assert limits.acquire_connection(key, 3) is None
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert limits.acquire_connection(key, 2) is not None


def test_own_slots_above_a_lowered_limit_count(limits):
    key = "destination|destination=example.org"
    slots = [limits.acquire_connection(key, 3) for _ in range(3)]  # 0, 1, 2
    slots[0].release()
    slots[1].release()
    assert limits.acquire_connection(key, 2) is not None  # 2 is still open: 1 more fits
    assert limits.acquire_connection(key, 2) is None
    assert limits.connections(key) == 2


# -- rates ----------------------------------------------------------------------------------


def test_rate_is_evenly_spaced_within_one_process(limits):
    # 4 per second: one every 0.25 s, no burst (times chosen exact in binary floating point).
    assert limits.take_rate("r", 4, 1.0, now=100.0) == 0.0
    assert limits.take_rate("r", 4, 1.0, now=100.125) == 0.125
    assert limits.take_rate("r", 4, 1.0, now=100.25) == 0.0
    # A refused take takes nothing: the next one is still due at 100.5.
    assert limits.take_rate("r", 4, 1.0, now=100.375) == 0.125
    assert limits.take_rate("r", 4, 1.0, now=100.5) == 0.0
    # A batch of 3 takes 3 slots: 0.75 s.
    assert limits.take_rate("r", 4, 1.0, now=100.75, count=3) == 0.0
    assert limits.take_rate("r", 4, 1.0, now=101.0) == 0.5
    assert limits.take_rate("r", 4, 1.0, now=101.5) == 0.0
    assert limits.take_rate("other", 4, 1.0, now=101.0) == 0.0
    # After a pause the rate does not burst: idle time is not saved up.
    assert limits.take_rate("r", 4, 1.0, now=200.0) == 0.0
    assert limits.take_rate("r", 4, 1.0, now=200.0) == 0.25


def test_processes_together_never_exceed_a_rate(tmp_path):
    messages, interval, seconds = 10, 0.5, 2.0
    start_at = time.time() + 1.5
    outputs = [tmp_path / f"granted{n}" for n in range(2)]
    processes = [
        child(
            "rate",
            tmp_path / "queue",
            "shaping:tenant|metadata.tenant=acme",
            messages,
            interval,
            start_at,
            seconds,
            out,
        )
        for out in outputs
    ]
    for process in processes:
        process.communicate(timeout=60)
        assert process.returncode == 0
    per_process = [[float(line) for line in out.read_text().split()] for out in outputs]
    assert all(per_process)  # both processes were granted messages
    granted = sorted(value for values in per_process for value in values)
    # Never more than 10 in any 0.5 s window: message i and i+10 are at least 0.5 s apart
    # (1e-9: the rounding of one float addition on times of a few seconds).
    gaps = [later - earlier for earlier, later in zip(granted, granted[messages:], strict=False)]
    assert min(gaps) >= interval - 1e-9
    # ...and the limiter did let them go at that rate, not less (one every 0.05 s).
    assert len(granted) >= seconds / (interval / messages) * 0.5


# -- backoff and suspensions ----------------------------------------------------------------


def test_backoff_state_is_shared(tmp_path, limits):
    key = "destination|destination=example.net"
    assert limits.backoff(key) is None
    run_child("set-backoff", tmp_path / "queue", key, 2, 1000.5, "421 4.7.0 slow down")
    assert limits.backoff(key) == BackoffState(2, 1000.5, "421 4.7.0 slow down")
    assert limits.backoff_view().get(key) == BackoffState(2, 1000.5, "421 4.7.0 slow down")
    assert list(limits.backoff_view()) == [key]
    limits.set_backoff(key, None)
    assert run_child("show-backoff", tmp_path / "queue", key) == "None"


def test_a_421_seen_by_one_worker_lowers_the_limits_of_all(tmp_path, limits):
    rule = ShapingRule("google", fields=("mx",), max_connections=8, rate=Rate(100, 60.0))
    fields = DeliveryFields("gmail.com", mx="aspmx.l.google.com")
    defaults = ShapingDefaults(max_connections=20)
    before = limits.limits_for([rule], fields, defaults=defaults, now=1000.0)
    assert before.connection_keys[1] == ("shaping:google|mx=aspmx.l.google.com", 8)
    limits.record_reply(before, DeliveryReply(421, "4.7.0", "Try again later", True), 1000.0)
    other_worker = NodeLimits(tmp_path / "queue")
    after = other_worker.limits_for([rule], fields, defaults=defaults, now=1001.0)
    other_worker.close()
    assert after.connection_keys == (
        ("destination|destination=gmail.com", 10),
        ("shaping:google|mx=aspmx.l.google.com", 4),
    )
    assert after.rate_keys == (("shaping:google|mx=aspmx.l.google.com", 50, 60.0),)
    # A success changes nothing: the limits come back with time (10 minutes a step).
    limits.record_reply(after, DeliveryReply(250, "2.0.0", "OK", True), 1002.0)
    assert limits.limits_for([rule], fields, defaults=defaults, now=1599.0) == after
    assert limits.limits_for([rule], fields, defaults=defaults, now=1600.0) == before


def test_a_suspension_written_by_one_process_is_seen_by_another(tmp_path, limits):
    now = time.time()
    assert limits.suspensions(now) == []  # read (and cached) before the other process writes
    run_child("suspend", tmp_path / "queue", "domain", "example.net", "operator: blocklisted")
    assert limits.suspensions(now) == [
        Suspension("domain", "example.net", None, "operator: blocklisted")
    ]
    node = limits.limits_for([], DeliveryFields("example.net"), defaults=ShapingDefaults(), now=now)
    assert node.suspended == "domain=example.net is suspended: operator: blocklisted"
    other = limits.limits_for(
        [], DeliveryFields("example.org"), defaults=ShapingDefaults(), now=now
    )
    assert other.suspended is None
    # It survives a restart of the node...
    restarted = NodeLimits(tmp_path / "queue")
    assert [s.value for s in restarted.suspensions(now)] == ["example.net"]
    restarted.close()
    # ...and a resume from another process is seen too.
    assert run_child("resume", tmp_path / "queue", "domain", "example.net") == "True"
    assert limits.suspensions(now) == []
    assert run_child("resume", tmp_path / "queue", "domain", "example.net") == "False"


def test_a_suspension_with_an_end_lapses(limits):
    limits.suspend("metadata.tenant", "acme", until=2000.0, reason="abuse report")
    assert limits.suspensions(1999.0) == [
        Suspension("metadata.tenant", "acme", 2000.0, "abuse report")
    ]
    assert limits.suspensions(2000.0) == []
    limits.suspend("mx", "*.example.net")  # a pattern, as in rules
    rule = ShapingRule("any", max_connections=5)
    fields = DeliveryFields("example.com", mx="mx2.example.net")
    node = limits.limits_for([rule], fields, defaults=ShapingDefaults(), now=2000.0)
    assert node.suspended == "mx=*.example.net is suspended"


def test_suspend_refuses_an_unknown_field(limits):
    with pytest.raises(ValueError, match="unknown field 'tenant'"):
        limits.suspend("tenant", "acme")
    with pytest.raises(ValueError, match="needs a value"):
        limits.suspend("domain", "")


def test_a_damaged_rate_database_is_replaced(tmp_path):
    directory = tmp_path / "queue"
    NodeLimits(directory).close()
    (directory / "limits.sqlite").write_bytes(b"this is not a database" * 100)
    for suffix in ("-wal", "-shm"):
        (directory / f"limits.sqlite{suffix}").unlink(missing_ok=True)
    node = NodeLimits(directory)
    assert node.take_rate("r", 1, 1.0, now=5.0) == 0.0
    node.close()
