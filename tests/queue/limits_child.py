"""A worker process for tests/queue/test_limits.py: one NodeLimits in its own process.

Run as ``python limits_child.py MODE DIRECTORY ARGS...``; see each mode below. Not a test
module (pytest collects only test_*.py).
"""

from __future__ import annotations

import fcntl
import os
import random
import struct
import sys
import time
from pathlib import Path

from mailwarden.queue.limits import NodeLimits
from mailwarden.queue.shaping import BackoffState


def wait_until(start_at: float) -> None:
    time.sleep(max(0.0, start_at - time.time()))


def witness(path: Path, change: int) -> None:
    """Add ``change`` to the holder count in ``path`` and keep its maximum, under flock(2)
    (a BSD lock, independent of the fcntl byte-range locks under test)."""
    with path.open("r+b") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        current, most = struct.unpack("qq", file.read(16) or b"\0" * 16)
        current += change
        file.seek(0)
        file.write(struct.pack("qq", current, max(most, current)))


def hold(limits: NodeLimits, key: str, limit: int, count: int) -> None:
    """Hold ``count`` slots of ``key`` (say how many were had), then wait to be killed."""
    slots = [limits.acquire_connection(key, limit) for _ in range(count)]
    print(f"held {sum(slot is not None for slot in slots)}", flush=True)
    time.sleep(3600)


def want(limits: NodeLimits, key: str) -> None:
    """Say this process waits for a slot of ``key``; stop saying so on "stop" from stdin."""
    limits.want(key, True)
    print("wanting", flush=True)
    sys.stdin.readline()
    limits.want(key, False)
    print("satisfied", flush=True)
    time.sleep(3600)


def churn(
    limits: NodeLimits, key: str, limit: int, start_at: float, seconds: float, counter: Path
) -> None:
    """Take and give back slots at random for ``seconds``, holding several at a time."""
    rng = random.Random(os.getpid())
    held = []
    wait_until(start_at)
    while time.time() < start_at + seconds:
        if rng.random() < 0.6:
            slot = limits.acquire_connection(key, limit)
            if slot is not None:
                witness(counter, +1)
                held.append(slot)
        elif held:
            slot = held.pop(rng.randrange(len(held)))
            witness(counter, -1)
            slot.release()
        time.sleep(rng.random() / 2000)
    for slot in held:
        witness(counter, -1)
        slot.release()


def rate(
    limits: NodeLimits,
    key: str,
    messages: int,
    interval: float,
    start_at: float,
    seconds: float,
    out: Path,
) -> None:
    """Take messages as fast as allowed for ``seconds``; write each granted ``now`` (seconds
    since ``start_at``, the clock every process shares)."""
    granted = []
    wait_until(start_at)
    while (now := time.time() - start_at) < seconds:
        wait = limits.take_rate(key, messages, interval, now)
        if wait == 0.0:
            granted.append(now)
        else:
            time.sleep(min(wait, 0.001))
    out.write_text("\n".join(repr(value) for value in granted))


def main() -> None:
    mode, directory, *args = sys.argv[1:]
    limits = NodeLimits(Path(directory))
    if mode == "hold":
        hold(limits, args[0], int(args[1]), int(args[2]))
    elif mode == "want":
        want(limits, args[0])
    elif mode == "count-wanting":
        print(limits.waiting(args[0]), flush=True)
    elif mode == "churn":
        churn(limits, args[0], int(args[1]), float(args[2]), float(args[3]), Path(args[4]))
    elif mode == "rate":
        rate(
            limits,
            args[0],
            int(args[1]),
            float(args[2]),
            float(args[3]),
            float(args[4]),
            Path(args[5]),
        )
    elif mode == "suspend":
        limits.suspend(args[0], args[1], reason=args[2])
    elif mode == "resume":
        print(limits.resume(args[0], args[1]), flush=True)
    elif mode == "set-backoff":
        limits.set_backoff(
            args[0], BackoffState(level=int(args[1]), since=float(args[2]), reason=args[3])
        )
    elif mode == "show-backoff":
        print(limits.backoff(args[0]), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
