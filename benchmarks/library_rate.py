"""Cost of one ``rate()`` call per backend: the local table, and Redis on loopback.

    python benchmarks/library_rate.py [--calls N] [--keys K]

Calls ``await rate(...)`` N times (round robin over K keys, a limit never reached, so every
call writes) in one uvloop event loop, after a warm-up, and prints µs per call. For Redis it
starts its own redis-server (Debian's) on a free loopback port in a temporary directory and
stops it afterwards; without redis-server that row is skipped.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvloop

from mailwarden.lib.rate import LocalRateLimiter, LocalRateTable, RedisRateLimiter, rate, use


async def per_call(calls: int, keys: int) -> float:
    names = [f"client-{n}" for n in range(keys)]
    for name in names:  # warm-up: every key has its slot
        await rate("bench", name, 1 << 60, 3600)
    start = time.perf_counter()
    for n in range(calls):
        await rate("bench", names[n % keys], 1 << 60, 3600)
    return (time.perf_counter() - start) / calls * 1e6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def redis_server(directory: Path) -> Iterator[str | None]:
    """Debian's redis-server on a free loopback port (no persistence), stopped afterwards;
    yields its URL, or None when redis-server is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=10_000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        table = LocalRateTable(Path(directory) / "rate.table", 65536)
        use(LocalRateLimiter(table))
        local = uvloop.run(per_call(args.calls, args.keys))
        print(f"local table: {local:.2f} µs per call ({args.calls} calls, {args.keys} keys)")

        with redis_server(Path(directory)) as url:
            if url is None:
                print("redis: skipped (no redis-server)")
                return
            use(RedisRateLimiter(url))
            calls = max(1, args.calls // 20)
            redis_us = uvloop.run(per_call(calls, min(args.keys, calls)))
            print(f"redis: {redis_us / 1000:.3f} ms per call ({calls} calls)")


if __name__ == "__main__":
    main()
