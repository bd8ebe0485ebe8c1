"""Cost of each script-library call examples/inbound_filter.py makes, in µs per call.

    python benchmarks/library_calls.py [--calls N] [--fast-calls M] [--json]

Times every call one at a time in one uvloop event loop, after a warm-up, and reports the
median wall time per call (what a hook waits) and the process CPU time per call (what it costs
the worker: pyspf and dkimpy run in threads of this process, so their CPU counts; nsd's and
redis-server's does not). The calls, with the arguments the filter uses:

* in-process, M calls each: ``stat()``, ``rate()`` on the local table, a ``@cache`` hit,
  ``authres.add()`` (build and add the Authentication-Results field);
* N calls each: ``rate()`` on Redis, ``datastore.get``/``set`` on SQLite (the default) and
  Redis, ``dns.a``/``dns.txt``/``dns.dnsbl`` against nsd on loopback (answered by the DNS
  cache after the first; ``dns.a``/``dns.dnsbl`` again with the cache off), ``spf.check`` (a pass),
  ``dkim.verify`` of a signed 10 KiB message (RSA 2048, key in the zone), ``dmarc.evaluate``.

nsd and redis-server (Debian's) are started on free loopback ports and stopped afterwards
(benchmarks/inbound_env.py, benchmarks/library_rate.py); without redis-server its rows are left
out. Where issue 9 sets a target (rate() local < 20 µs, on Redis < 0.2 ms; stat() < 5 µs) the
table shows it and whether the median meets it. ``--json`` prints the rows as a JSON list.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import uvloop
from inbound_env import (
    AUTHSERV_ID,
    CLIENT_IP,
    DNSBL_ZONE,
    DOMAIN,
    GREYLIST_NAMESPACE,
    HELO,
    SENDER,
    Environment,
    environment,
    greylist_key,
)
from library_rate import redis_server

from mailwarden.lib import authres, cache, dkim, dmarc, dns, dns_cache, rate, spf, stat
from mailwarden.lib.datastore import Datastore, RedisDatastore, SqliteDatastore
from mailwarden.lib.rate import LocalRateLimiter, LocalRateTable, RedisRateLimiter, use

TARGETS_US = {"stat": 5.0, "rate (local table)": 20.0, "rate (Redis)": 200.0}  # issue 9


@dataclass
class Row:
    call: str
    calls: int
    median_us: float
    p90_us: float
    cpu_us: float  # process CPU time per call
    target_us: float | None

    @property
    def verdict(self) -> str:
        if self.target_us is None:
            return ""
        return "met" if self.median_us < self.target_us else "NOT met"


def _row(call: str, times: list[int], cpu: float) -> Row:
    ordered = sorted(times)
    return Row(
        call,
        len(times),
        statistics.median(ordered) / 1000,
        ordered[int(len(ordered) * 0.9)] / 1000,
        cpu / len(times) * 1e6,
        TARGETS_US.get(call),
    )


async def timed(call: str, calls: int, step: Callable[[int], Awaitable[object]]) -> Row:
    """``await step(n)`` for n in range(calls), each timed on its own, after a warm-up."""
    for n in range(min(100, calls)):
        await step(n)
    times = []
    clock = time.perf_counter_ns
    cpu = time.process_time()
    for n in range(calls):
        start = clock()
        await step(n)
        times.append(clock() - start)
    return _row(call, times, time.process_time() - cpu)


def timed_sync(call: str, calls: int, step: Callable[[int], object]) -> Row:
    """As :func:`timed` for a plain function (no await around it)."""
    for n in range(min(100, calls)):
        step(n)
    times = []
    clock = time.perf_counter_ns
    cpu = time.process_time()
    for n in range(calls):
        start = clock()
        step(n)
        times.append(clock() - start)
    return _row(call, times, time.process_time() - cpu)


async def in_process(directory: Path, env: Environment, calls: int) -> list[Row]:
    rows = [timed_sync("stat", calls, lambda n: stat("inbound-verdict", {"accepted": True}))]
    use(LocalRateLimiter(LocalRateTable(directory / "rate.table", 65536)))
    clients = [f"127.0.{n // 256 % 256}.{n % 256}" for n in range(10_000)]
    rows.append(
        await timed(
            "rate (local table)",
            calls,
            lambda n: rate("inbound-per-client", clients[n % len(clients)], 10**12, 3600),
        )
    )

    @cache(ttl=3600, size=10_000, namespace="bench")
    async def lookup(domain: str) -> str:
        return domain.upper()

    rows.append(await timed("cache hit", calls, lambda n: lookup(DOMAIN)))
    message = env.message()
    spf_result = await spf.check(CLIENT_IP, SENDER, HELO)
    dkim_results = await dkim.verify(message)
    verdict = await dmarc.evaluate(message, spf=spf_result, dkim=dkim_results)

    async def add_authres(n: int) -> None:  # the forged-field removal drops the last one
        authres.add(message, AUTHSERV_ID, spf=spf_result, dkim=dkim_results, dmarc=verdict)

    rows.append(await timed("authres.add", calls, add_authres))
    return rows


async def datastore_rows(name: str, store: Datastore, calls: int) -> list[Row]:
    key = greylist_key()
    entry = {"first": 0.0, "passed": True}
    await store.set(GREYLIST_NAMESPACE, key, entry)
    get = await timed(
        f"datastore.get ({name})", calls, lambda n: store.get(GREYLIST_NAMESPACE, key)
    )
    put = await timed(
        f"datastore.set ({name})",
        calls,
        lambda n: store.set(GREYLIST_NAMESPACE, key, entry, ttl=36 * 24 * 3600),
    )
    assert store.backend is not None
    await store.backend.close()
    return [get, put]


async def with_services(
    directory: Path, env: Environment, calls: int, redis_url: str | None
) -> list[Row]:
    rows = []
    if redis_url is not None:
        use(RedisRateLimiter(redis_url))
        rows.append(
            await timed(
                "rate (Redis)",
                calls,
                lambda n: rate("inbound-per-client", f"127.0.0.{n % 250}", 10**12, 3600),
            )
        )
    rows += await datastore_rows("SQLite", Datastore(SqliteDatastore(directory / "ds.db")), calls)
    if redis_url is not None:
        rows += await datastore_rows("Redis", Datastore(RedisDatastore(redis_url)), calls)
    rows.append(await timed("dns.a", calls, lambda n: dns.a(DOMAIN)))
    rows.append(await timed("dns.txt", calls, lambda n: dns.txt(DOMAIN)))
    rows.append(
        await timed("dns.dnsbl (not listed)", calls, lambda n: dns.dnsbl(CLIENT_IP, DNSBL_ZONE))
    )
    # The same lookups with [library] dns_cache_size = 0: each one a query to nsd.
    dns_cache.configure(0)
    rows.append(await timed("dns.a (no cache)", calls, lambda n: dns.a(DOMAIN)))
    rows.append(
        await timed("dns.dnsbl (no cache)", calls, lambda n: dns.dnsbl(CLIENT_IP, DNSBL_ZONE))
    )
    dns_cache.configure(dns_cache.DEFAULT_SIZE)
    spf_result = await spf.check(CLIENT_IP, SENDER, HELO)
    if spf_result.result != "pass":
        raise RuntimeError(f"SPF of the benchmark's sender is {spf_result}, not pass")
    rows.append(
        await timed("spf.check (pass)", calls, lambda n: spf.check(CLIENT_IP, SENDER, HELO))
    )
    message = env.message()
    dkim_results = await dkim.verify(message)
    if [r.result for r in dkim_results] != ["pass"]:
        raise RuntimeError(f"the benchmark's DKIM signature does not verify: {dkim_results}")
    rows.append(await timed("dkim.verify (RSA 2048, pass)", calls, lambda n: dkim.verify(message)))
    rows.append(
        await timed(
            "dmarc.evaluate (pass)",
            calls,
            lambda n: dmarc.evaluate(message, spf=spf_result, dkim=dkim_results),
        )
    )
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        f"{'call':32s} {'calls':>7s} {'median µs':>10s} {'p90 µs':>9s} {'CPU µs':>9s}  target",
    ]
    for row in rows:
        target = f"< {row.target_us:g} µs: {row.verdict}" if row.target_us is not None else ""
        lines.append(
            f"{row.call:32s} {row.calls:7d} {row.median_us:10.2f} {row.p90_us:9.2f} "
            f"{row.cpu_us:9.2f}  {target}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="per call that leaves the process")
    parser.add_argument("--fast-calls", type=int, default=100_000, help="per in-process call")
    parser.add_argument("--json", action="store_true", help="the rows as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailwarden-bench-") as name:
        directory = Path(name)
        with environment(directory) as env, redis_server(directory) as redis_url:
            dns.configure([env.server.address], timeout=3.0)
            rows = uvloop.run(in_process(directory, env, args.fast_calls))
            rows += uvloop.run(with_services(directory, env, args.calls, redis_url))
    if args.json:
        print(json.dumps([asdict(row) | {"verdict": row.verdict} for row in rows], indent=2))
    else:
        print(table(rows))
        if redis_url is None:
            print("Redis rows left out: no redis-server")


if __name__ == "__main__":
    main()
