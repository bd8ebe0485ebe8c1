"""``rate()`` and ``rate_reset()``: the sliding-window counter, on the local table (shared by
processes through its file) and on a real redis-server, checked against a plain model of the
documented semantics with an injected clock."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.state_servers import RedisServer

from mailwarden.config.library import LibrarySettings
from mailwarden.lib import BackendError, rate, rate_reset
from mailwarden.lib.rate import (
    LocalRateLimiter,
    LocalRateTable,
    RedisRateLimiter,
    configure,
    estimate_error,
    use,
)

SRC = Path(__file__).resolve().parents[2] / "src"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Model:
    """The documented semantics, computed from the list of counted events (no state machine):
    ``estimate = previous · (1 − passed) + current`` over windows aligned on the epoch."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, int]]] = {}

    def call(self, key: str, now: float, limit: int, interval: float, count: int) -> bool:
        events = self.events.setdefault(key, [])
        index = math.floor(now / interval)
        previous = sum(n for t, n in events if math.floor(t / interval) == index - 1)
        current = sum(n for t, n in events if math.floor(t / interval) == index)
        passed = min(max((now - index * interval) / interval, 0.0), 1.0)
        estimate = previous * (1.0 - passed) + current
        if count == 0:
            return estimate < limit
        if estimate + count > limit:
            return False
        events.append((now, count))
        return True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def table(tmp_path: Path, clock: Clock) -> Iterator[LocalRateTable]:
    table = LocalRateTable(tmp_path / "rate.table", 65536, clock=clock)
    use(LocalRateLimiter(table))
    yield table
    use(None)
    table.close()


# -- the documented behaviour, step by step ---------------------------------------------------


async def test_limit_events_per_window_then_false_and_refused_calls_do_not_count(
    table: LocalRateTable, clock: Clock
) -> None:
    clock.now = 600.0  # the start of window 10 of 60 s
    assert [await rate("ip", "192.0.2.1", 3, 60) for _ in range(5)] == [True] * 3 + [False] * 2
    assert await rate("ip", "192.0.2.2", 3, 60)  # another key has its own count
    assert await rate("other", "192.0.2.1", 3, 60)  # and another namespace
    # Window 11, half gone: the estimate is 3 · 0.5 + 0 = 1.5, so one more fits (2.5 ≤ 3),
    # not a second (3.5 > 3). Had the two refused calls counted, the estimate would be 2.5.
    clock.now = 690.0
    assert await rate("ip", "192.0.2.1", 3, 60)
    assert not await rate("ip", "192.0.2.1", 3, 60)
    # Two windows later nothing is left.
    clock.now = 800.0
    assert await rate("ip", "192.0.2.1", 3, 60, count=3)


async def test_count_zero_only_reads(table: LocalRateTable, clock: Clock) -> None:
    assert await rate("n", "k", 2, 10, count=0)
    for _ in range(10):
        assert await rate("n", "k", 2, 10, count=0)  # counts nothing
    assert await rate("n", "k", 2, 10)
    assert await rate("n", "k", 2, 10, count=0)  # one more would fit
    assert await rate("n", "k", 2, 10)
    assert not await rate("n", "k", 2, 10, count=0)  # the limit is used up


async def test_a_count_larger_than_what_is_left_is_refused_whole(
    table: LocalRateTable, clock: Clock
) -> None:
    assert await rate("n", "k", 10, 60, count=7)
    assert not await rate("n", "k", 10, 60, count=4)
    assert await rate("n", "k", 10, 60, count=3)
    assert not await rate("n", "k", 0, 60)  # a limit of 0 allows nothing


async def test_rate_reset_forgets_the_key(table: LocalRateTable) -> None:
    assert await rate("n", "k", 1, 60)
    assert not await rate("n", "k", 1, 60)
    await rate_reset("n", "k")
    assert await rate("n", "k", 1, 60)
    await rate_reset("n", "never-seen")  # nothing to forget: fine


async def test_a_clock_that_goes_back_stays_in_the_current_window(
    table: LocalRateTable, clock: Clock
) -> None:
    clock.now = 6000.0
    assert await rate("n", "k", 2, 60, count=2)
    clock.now = 5000.0  # stepped back by NTP: still window 100, full
    assert not await rate("n", "k", 2, 60)


async def test_another_interval_for_a_key_starts_it_afresh(table: LocalRateTable) -> None:
    assert await rate("n", "k", 1, 60)
    assert not await rate("n", "k", 1, 60)
    assert await rate("n", "k", 1, 3600)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("", "k", 1, 60), TypeError),
        (("n", 5, 1, 60), TypeError),
        (("n", "k", -1, 60), ValueError),
        (("n", "k", 1.5, 60), ValueError),
        (("n", "k", 1, 0), ValueError),
        (("n", "k", 1, float("nan")), ValueError),
        (("n", "k", 1, "60"), ValueError),
    ],
)
async def test_bad_arguments_raise_before_anything_is_counted(
    table: LocalRateTable, args: tuple[object, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        await rate(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await rate("n", "k", 1, 60, count=-1)


def test_the_error_bound_is_what_the_docs_say() -> None:
    assert estimate_error(10, 0.25) == (7.5, 2.5)


# -- against the model, on both backends ------------------------------------------------------

# A step: seconds to wait (some within a window, some across several), which key, limit and
# count. Times stay on a grid of 1/8 s so the windows' edges are hit exactly too.
steps = st.lists(
    st.tuples(
        st.integers(0, 8 * 90).map(lambda eighths: eighths / 8),
        st.sampled_from(["a", "b"]),
        st.integers(0, 6),
        st.sampled_from([0, 1, 1, 1, 2, 5]),
    ),
    min_size=1,
    max_size=60,
)
INTERVAL = 30.0
namespaces = (f"model-{n}" for n in itertools.count())


def run_against_model(limiter_for: object, steps_: list[tuple[float, str, int, int]]) -> None:
    clock = Clock(1_000_000.0 + 3.0)
    limiter = limiter_for(clock)  # type: ignore[operator]
    model = Model()
    namespace = next(namespaces)
    accepted: list[tuple[float, str, int, int]] = []

    async def go() -> None:
        for wait, key, limit, count in steps_:
            clock.now += wait
            expected = model.call(key, clock.now, limit, INTERVAL, count)
            got = await limiter.hit(namespace, key, limit, INTERVAL, count)
            assert got == expected, (clock.now, key, limit, count)
            if got and count:
                accepted.append((clock.now, key, limit, count))

    asyncio.run(go())
    # What the semantics promise whatever the traffic: at most `limit` in an aligned window
    # (here: of the limits in force), and below 2·limit in any interval-long span.
    for key in ("a", "b"):
        mine = [(t, limit, n) for t, k, limit, n in accepted if k == key]
        highest = max((limit for _, limit, _ in mine), default=0)
        for t, _, _ in mine:
            span = sum(n for u, _, n in mine if t - INTERVAL < u <= t)
            assert span < 2 * highest + 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_local_table_matches_the_model(
    tmp_path_factory: pytest.TempPathFactory, steps_: list[tuple[float, str, int, int]]
) -> None:
    path = tmp_path_factory.mktemp("model") / "rate.table"
    run_against_model(lambda clock: LocalRateLimiter(LocalRateTable(path, 1024, clock)), steps_)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(steps)
def test_redis_matches_the_model(redis: RedisServer, steps_: list[tuple[float, str, int, int]]):
    run_against_model(lambda clock: RedisRateLimiter(redis.url, clock=clock), steps_)


# -- the local table: shared by processes, bounded ---------------------------------------------

WORKER = """
import asyncio, sys
from pathlib import Path
from mailwarden.lib.rate import LocalRateLimiter, LocalRateTable, use, rate

use(LocalRateLimiter(LocalRateTable(Path(sys.argv[1]), 65536)))

async def main():
    allowed = 0
    for _ in range(400):
        allowed += await rate("shared", "one key", 500, 3600)
    print(allowed)

asyncio.run(main())
"""


def test_worker_processes_share_one_count_through_the_file(tmp_path: Path) -> None:
    """Three processes (as a node's workers) call 400 times each on one key limited to 500:
    exactly 500 calls are allowed in all, whoever made them."""
    path = tmp_path / "rate.table"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER), str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": str(SRC)},
        )
        for _ in range(3)
    ]
    counts = [int(p.communicate(timeout=60)[0]) for p in processes]
    assert all(p.returncode == 0 for p in processes)
    assert sum(counts) == 500, counts


def test_the_table_keeps_its_counts_for_the_next_process(tmp_path: Path) -> None:
    """A node restart (or a script reload) keeps the counts: they live in the file."""
    path = tmp_path / "rate.table"
    first = LocalRateTable(path, 65536)
    assert first.hit("n", "k", 1, 3600, 1)
    first.close()
    again = LocalRateTable(path, 65536)
    assert not again.hit("n", "k", 1, 3600, 1)
    again.close()


def test_a_file_of_another_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rate.table"
    LocalRateTable(path, 65536).close()
    with pytest.raises(BackendError, match="expected 2048 slots"):
        LocalRateTable(path, 2048)


def test_a_full_bucket_evicts_the_key_that_expires_first(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(10_000.0)
    table = LocalRateTable(tmp_path / "small.table", 16, clock)  # one bucket of 16 keys
    assert table.hit("n", "short", 1, 10, 1)  # expires at the end of the next 10 s window
    for n in range(15):
        assert table.hit("n", f"long-{n}", 1, 3600, 1)
    with caplog.at_level(logging.WARNING, logger="mailwarden.lib"):
        assert table.hit("n", "one too many", 1, 3600, 1)
    assert "raise [library] rate_slots" in caplog.text
    assert table.evictions == 1
    assert table.hit("n", "short", 1, 10, 1)  # forgotten: counted afresh
    assert not table.hit("n", "long-0", 1, 3600, 1)  # kept
    table.close()


async def test_configure_local_puts_the_table_under_the_data_dir(tmp_path: Path) -> None:
    configure(LibrarySettings(), tmp_path)
    try:
        assert await rate("n", "k", 1, 60)
        assert (tmp_path / "library" / "rate-65536.table").stat().st_size == 64 + 65536 * 64
    finally:
        use(None)


# -- Redis ----------------------------------------------------------------------------------


async def test_redis_is_atomic_under_concurrent_calls(redis: RedisServer) -> None:
    configure(LibrarySettings(rate_backend="redis", redis_url=redis.url), Path("/nonexistent"))
    try:
        results = await asyncio.gather(*(rate("n", "k", 50, 60) for _ in range(200)))
        assert results.count(True) == 50
        await rate_reset("n", "k")
        assert await rate("n", "k", 50, 60, count=50)
    finally:
        use(None)


async def test_redis_keys_expire_once_their_windows_are_over(redis: RedisServer) -> None:
    import redis as redis_py

    limiter = RedisRateLimiter(redis.url)
    assert await limiter.hit("n", "k", 5, 60.0, 1)
    with redis_py.Redis.from_url(redis.url) as client:
        [key] = client.keys("mailwarden:rate:*")
        assert 0 < client.pttl(key) <= 120_000


async def test_redis_down_raises_backend_error() -> None:
    from tests.support.node import free_port

    limiter = RedisRateLimiter(f"redis://127.0.0.1:{free_port()}/0", timeout=1.0)
    with pytest.raises(BackendError, match=r"Redis at redis://127\.0\.0\.1"):
        await limiter.hit("n", "k", 5, 60.0, 1)


async def test_redis_script_flushed_from_the_server_is_sent_again(redis: RedisServer) -> None:
    """After a Redis restart or SCRIPT FLUSH the server no longer knows the script's SHA1:
    the call still counts (EVAL in full once), and later calls find it again."""
    import redis as redis_py

    limiter = RedisRateLimiter(redis.url)
    assert await limiter.hit("n", "flush", 2, 60.0, 1)
    with redis_py.Redis.from_url(redis.url) as client:
        client.script_flush()
    assert await limiter.hit("n", "flush", 2, 60.0, 1)
    assert not await limiter.hit("n", "flush", 2, 60.0, 1)


async def test_redis_with_a_password_and_a_database(redis: RedisServer) -> None:
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as client:
        client.acl_setuser(
            "rater", enabled=True, passwords=["+s3cret"], commands=["+@all"], keys=["*"]
        )
    host_port = redis.url.split("//", 1)[1].split("/", 1)[0]
    limiter = RedisRateLimiter(f"redis://rater:s3cret@{host_port}/3")
    assert await limiter.hit("n", "db3", 1, 60.0, 1)
    assert not await limiter.hit("n", "db3", 1, 60.0, 1)
    with redis_py.Redis.from_url(f"redis://{host_port}/3") as client:
        assert client.keys("mailwarden:rate:*")
    wrong = RedisRateLimiter(f"redis://rater:wrong@{host_port}/3")
    with pytest.raises(BackendError, match="Redis at"):
        await wrong.hit("n", "db3", 1, 60.0, 1)


async def test_redis_that_never_answers_raises_within_the_timeout() -> None:
    """A server that accepts the connection and says nothing: BackendError after the
    [library] timeout, not a session hanging on it."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        limiter = RedisRateLimiter(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        started = time.monotonic()
        with pytest.raises(BackendError, match="Redis at"):
            await limiter.hit("n", "k", 5, 60.0, 1)
        assert time.monotonic() - started < 2.0
