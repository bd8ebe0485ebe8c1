"""``datastore``: the same behaviour on each backend — SQLite, a real redis-server and a real
PostgreSQL — and shared by two independent clients of one store, as a node's workers are."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from tests.support.node import free_port
from tests.support.state_servers import PostgresServer, RedisServer

from mailwarden.config.library import LibrarySettings
from mailwarden.lib import BackendError, datastore
from mailwarden.lib.datastore import (
    Datastore,
    DatastoreBackend,
    PostgresqlDatastore,
    RedisDatastore,
    SqliteDatastore,
    configure,
)

Factory = Callable[[], DatastoreBackend]


@pytest.fixture(params=["sqlite", "redis", "postgresql"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """Makes a new client of one store of the given kind (two calls: two 'workers')."""
    if request.param == "sqlite":
        return lambda: SqliteDatastore(tmp_path / "library" / "datastore.db")
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis")
        return lambda: RedisDatastore(server.url)
    database: PostgresServer = request.getfixturevalue("postgres")
    return lambda: PostgresqlDatastore(database.url)


@pytest.fixture
async def store(backend_factory: Factory) -> AsyncIterator[Datastore]:
    store = Datastore(backend_factory())
    yield store
    assert store.backend is not None
    await store.backend.close()


async def test_an_absent_key_gives_the_default(store: Datastore) -> None:
    assert await store.get("routes", "nobody@example.org") is None
    assert await store.get("routes", "nobody@example.org", default="smtp") == "smtp"
    assert await store.keys("routes") == []


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -7, 2.5, "", "text ünïcode", [1, "a", None], {"via": "mx1", "n": [1, 2]}],
)
async def test_json_values_come_back_equal(store: Datastore, value: object) -> None:
    await store.set("settings", "key", value)
    assert await store.get("settings", "key", default="absent") == value


async def test_set_replaces_and_each_get_is_a_new_object(store: Datastore) -> None:
    await store.set("users", "alice", {"quota": 1})
    await store.set("users", "alice", {"quota": 2})
    first = await store.get("users", "alice")
    first["quota"] = 99
    assert await store.get("users", "alice") == {"quota": 2}


async def test_delete_says_whether_the_key_was_there(store: Datastore) -> None:
    await store.set("n", "k", 1)
    assert await store.delete("n", "k") is True
    assert await store.delete("n", "k") is False
    assert await store.get("n", "k") is None


async def test_keys_are_sorted_and_per_namespace(store: Datastore) -> None:
    for key in ["b", "a", "c:with:colons", "d e"]:
        await store.set("one", key, key)
    await store.set("one:two", "x", 1)  # a namespace that looks like a prefix of another
    await store.set("two", "z", 1)
    assert await store.keys("one") == ["a", "b", "c:with:colons", "d e"]
    assert await store.items("one:two") == {"x": 1}
    await store.delete("one", "b")
    assert await store.keys("one") == ["a", "c:with:colons", "d e"]


async def test_a_ttl_makes_the_key_read_as_absent_afterwards(store: Datastore) -> None:
    await store.set("grey", "short", "x", ttl=0.3)
    await store.set("grey", "long", "y", ttl=3600)
    await store.set("grey", "forever", "z")
    assert await store.keys("grey") == ["forever", "long", "short"]
    await asyncio.sleep(0.6)
    assert await store.get("grey", "short") is None
    assert await store.keys("grey") == ["forever", "long"]
    assert await store.delete("grey", "short") is False
    await store.set("grey", "short", "again")  # without a ttl: kept
    await asyncio.sleep(0.4)
    assert await store.get("grey", "short") == "again"


async def test_two_clients_of_one_store_see_each_others_writes(backend_factory: Factory) -> None:
    """Two workers of a node (or two nodes on Redis/PostgreSQL) share the entries."""
    one, two = Datastore(backend_factory()), Datastore(backend_factory())
    await one.set("shared", "k", [1, 2])
    assert await two.get("shared", "k") == [1, 2]
    assert await two.delete("shared", "k")
    assert await one.get("shared", "k") is None
    for store in (one, two):
        assert store.backend is not None
        await store.backend.close()


async def test_values_that_are_not_json_are_refused(store: Datastore) -> None:
    with pytest.raises(TypeError, match="must be JSON"):
        await store.set("n", "k", {1, 2})
    with pytest.raises(TypeError, match="must be JSON"):
        await store.set("n", "k", float("nan"))
    assert await store.get("n", "k") is None


@pytest.mark.parametrize(
    ("namespace", "key", "error"),
    [("", "k", TypeError), ("n", "", TypeError), ("n", 5, TypeError), ("n", "a\nb", ValueError)],
)
async def test_bad_names_are_refused(
    store: Datastore, namespace: str, key: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await store.get(namespace, key)
    with pytest.raises(error):
        await store.set(namespace, key, 1)


async def test_a_bad_ttl_is_refused(store: Datastore) -> None:
    for ttl in (0, -1, float("inf"), "60"):
        with pytest.raises(ValueError, match="ttl"):
            await store.set("n", "k", 1, ttl=ttl)  # type: ignore[arg-type]


async def test_configure_points_the_shared_datastore_at_the_backend(
    tmp_path: Path, redis: RedisServer
) -> None:
    saved = datastore.backend
    try:
        configure(LibrarySettings(), tmp_path)
        await datastore.set("n", "k", "local")
        assert (tmp_path / "library" / "datastore.db").exists()
        configure(LibrarySettings(datastore="redis", redis_url=redis.url), tmp_path)
        assert await datastore.get("n", "k") is None  # another store
        await datastore.set("n", "k", "redis")
        assert await RedisDatastore(redis.url).get("n", "k") == '"redis"'
    finally:
        datastore.backend = saved


@pytest.mark.parametrize("kind", ["redis", "postgresql"])
async def test_a_server_that_is_down_raises_backend_error(kind: str) -> None:
    port = free_port()
    backend: DatastoreBackend
    if kind == "redis":
        backend = RedisDatastore(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    else:
        backend = PostgresqlDatastore(f"postgresql://postgres@127.0.0.1:{port}/x", timeout=1.0)
    store = Datastore(backend)
    with pytest.raises(BackendError, match=r"(Redis|PostgreSQL)"):
        await store.get("n", "k")
    with pytest.raises(BackendError):
        await store.set("n", "k", 1)


async def test_postgresql_reconnects_after_the_server_dropped_the_session(
    postgres: PostgresServer,
) -> None:
    import psycopg

    store = Datastore(PostgresqlDatastore(postgres.url))
    await store.set("n", "k", 1)
    with psycopg.connect(postgres.url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND datname = 'postgres'"
        )
    with pytest.raises(BackendError):
        await store.get("n", "k")  # the dropped session fails this call …
    assert await store.get("n", "k") == 1  # … and the next one reconnects
    assert store.backend is not None
    await store.backend.close()
