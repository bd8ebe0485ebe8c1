"""``mailwarden datastore get|set|delete|list [--json]``, run as an operator runs it, against the
backend the configuration names: what it writes is what a script's ``datastore`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.node import run_cli
from tests.support.state_servers import RedisServer

from mailwarden.lib.datastore import Datastore, RedisDatastore, SqliteDatastore


def config(tmp_path: Path, library: str = "") -> str:
    path = tmp_path / "mailwarden.toml"
    path.write_text(f'[node]\ndata_dir = "data"\n\n[library]\n{library}')
    return str(path)


def cli(config_path: str, *args: str) -> tuple[int, str, str]:
    done = run_cli("datastore", *args, "--config", config_path)
    return done.returncode, done.stdout, done.stderr


async def test_set_get_list_delete_on_the_node_sqlite_file(tmp_path: Path) -> None:
    path = config(tmp_path)
    assert cli(path, "set", "routes", "bob@example.org", '{"via": "mx1.example.org"}')[0] == 0
    assert cli(path, "set", "routes", "amy@example.org", "hello", "--string")[0] == 0
    code, out, _ = cli(path, "get", "routes", "bob@example.org")
    assert (code, json.loads(out)) == (0, {"via": "mx1.example.org"})
    code, out, _ = cli(path, "get", "routes", "amy@example.org", "--json")
    assert json.loads(out) == {"namespace": "routes", "key": "amy@example.org", "value": "hello"}
    code, out, _ = cli(path, "list", "routes", "--json")
    assert json.loads(out) == {
        "amy@example.org": "hello",
        "bob@example.org": {"via": "mx1.example.org"},
    }
    code, out, _ = cli(path, "list", "routes")
    assert code == 0 and "2 key(s)" in out and "bob@example.org" in out

    # What a script on the node reads: the file under data_dir.
    script_side = Datastore(SqliteDatastore(tmp_path / "data" / "library" / "datastore.db"))
    assert await script_side.get("routes", "bob@example.org") == {"via": "mx1.example.org"}
    await script_side.set("routes", "cat@example.org", [1, 2])
    assert json.loads(cli(path, "get", "routes", "cat@example.org")[1]) == [1, 2]

    assert cli(path, "delete", "routes", "bob@example.org")[:2] == (
        0,
        "routes bob@example.org: deleted\n",
    )
    code, _, err = cli(path, "delete", "routes", "bob@example.org")
    assert code == 1 and "no key 'bob@example.org' in namespace 'routes'" in err
    code, _, err = cli(path, "get", "routes", "bob@example.org")
    assert code == 1 and "no key" in err


def test_a_value_that_is_not_json_is_refused_with_a_hint(tmp_path: Path) -> None:
    code, _, err = cli(config(tmp_path), "set", "n", "k", "hello")
    assert code == 1
    assert "not JSON" in err and "--string" in err
    assert cli(config(tmp_path), "get", "n", "k")[0] == 1  # nothing stored


def test_ttl(tmp_path: Path) -> None:
    path = config(tmp_path)
    assert cli(path, "set", "grey", "k", "1", "--ttl", "3600")[0] == 0
    assert cli(path, "get", "grey", "k")[1].strip() == "1"
    code, _, err = cli(path, "set", "grey", "k", "1", "--ttl", "0")
    assert code == 1 and "ttl" in err


async def test_redis_backend_from_the_configuration(tmp_path: Path, redis: RedisServer) -> None:
    path = config(tmp_path, f'datastore = "redis"\nredis_url = "{redis.url}"\n')
    assert cli(path, "set", "users", "alice", '{"quota": 5}')[0] == 0
    store = Datastore(RedisDatastore(redis.url))
    assert await store.get("users", "alice") == {"quota": 5}
    assert not (tmp_path / "data" / "library" / "datastore.db").exists()
    assert json.loads(cli(path, "list", "users", "--json")[1]) == {"alice": {"quota": 5}}


@pytest.mark.parametrize("library", ['datastore = "redis"\n', 'datastore = "postgresql"\n'])
def test_a_backend_without_its_url_is_a_configuration_error(tmp_path: Path, library: str) -> None:
    code, _, err = cli(config(tmp_path, library), "list", "n")
    assert code == 1
    assert "mailwarden.toml:5: library.datastore: expected" in err and "_url as well" in err


def test_an_unreachable_backend_exits_1_naming_it(tmp_path: Path) -> None:
    from tests.support.node import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    code, _, err = cli(config(tmp_path, f'datastore = "redis"\nredis_url = "{url}"\n'), "list", "n")
    assert code == 1 and "datastore unavailable" in err and url in err


def test_list_into_a_pipe_does_not_fold_long_values(tmp_path: Path) -> None:
    """Off a terminal (a pipe, as here) a row stays one line however wide, so that grep and
    scripts see each key with its whole value."""
    path = config(tmp_path)
    long_value = "mx-" + "a" * 150 + ".example.org"
    assert cli(path, "set", "routes", "bob@example.org", long_value, "--string")[0] == 0
    code, out, _ = cli(path, "list", "routes")
    assert code == 0
    rows = [line for line in out.splitlines() if "bob@example.org" in line]
    assert len(rows) == 1 and long_value in rows[0]
