"""Memory per idle session: hold N concurrent SMTP sessions open and measure what they cost.

Each client connects, reads the greeting, sends EHLO, reads the reply and then idles (as a slow
or parked client would). The worker's resident memory is read before and after; the difference
divided by N is the cost of one idle session (target: under 60 KiB).

    python benchmarks/idle_sessions.py [--sessions 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time

from common import start_mailwarden, status_kib


async def open_session(port: int) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()  # 220
    writer.write(b"EHLO idle.example\r\n")
    await writer.drain()
    while True:
        line = await reader.readline()
        if not line or line[3:4] == b" ":
            break
    return writer


async def hold(port: int, sessions: int, worker: int) -> tuple[int, int, int]:
    # Warm up: the first sessions load code and grow the allocator's pools.
    warm = [await open_session(port) for _ in range(50)]
    for writer in warm:
        writer.close()
    await asyncio.sleep(1.0)
    before = status_kib(worker, "VmRSS")
    writers: list[asyncio.StreamWriter] = []
    for start in range(0, sessions, 500):
        batch = [open_session(port) for _ in range(min(500, sessions - start))]
        writers.extend(await asyncio.gather(*batch))
    await asyncio.sleep(2.0)  # let the server settle
    after = status_kib(worker, "VmRSS")
    for writer in writers:
        writer.close()
    return before, after, len(writers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=5000)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, args.sessions * 2 + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    node = start_mailwarden(2626, workers=1, script=None, extra_limits="command_timeout = 600.0")
    try:
        worker = node.workers()[0]
        started = time.monotonic()
        before, after, held = asyncio.run(hold(node.port, args.sessions, worker))
        elapsed = time.monotonic() - started
    finally:
        node.stop()
    per_session = (after - before) / held
    print(f"{held} idle sessions held (opened in {elapsed:.1f}s)")
    print(f"  worker RSS before {before / 1024:.1f} MiB, after {after / 1024:.1f} MiB")
    print(f"  memory per idle session: {per_session:.1f} KiB (target < 60 KiB)")


if __name__ == "__main__":
    main()
