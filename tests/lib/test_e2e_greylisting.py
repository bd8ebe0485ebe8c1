"""examples/greylisting.py on a real ``mailwarden run``: a retry after the delay is accepted
whichever of two workers takes it, and after ``mailwarden reload``.

The same two scenarios fail with a greylisting script that keeps its triplets in a
module-level dict (the last tests run them and see the retries greylisted again): a retry that
lands on the other worker finds nothing, and a reload loads the module afresh."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest
from tests.server.conftest import wait_for_log
from tests.support.node import Node, free_port, node_process, write_config
from tests.support.state_servers import RedisServer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "greylisting.py"
# Seconds; the example's 300 is replaced in the copy the node runs. A "too early" retry is
# made right after its own first attempt (two sessions, milliseconds apart), never after a
# whole round of TRIPLETS sessions, so a busy machine cannot push it past the delay.
DELAY = 2
TRIPLETS = 24  # 24 retries all landing on the worker of their first attempt: 2**-24

IN_MEMORY = f"""
import time

from mailwarden.policy.actions import Defer

SEEN: dict[str, float] = {{}}  # what this test shows to be wrong


async def rcpt_to(conn, tx, recipient):
    key = f"{{conn.remote_ip}} {{tx.sender.address}} {{recipient.address}}"
    first = SEEN.setdefault(key, time.time())
    if time.time() - first < {DELAY}:
        return Defer("Greylisted, please try again later", code=451, enhanced="4.7.1")
    return None
"""


def example_with_short_delay() -> str:
    source = EXAMPLE.read_text()
    assert "\nDELAY = 300 " in source
    return source.replace("\nDELAY = 300 ", f"\nDELAY = {DELAY} ")


def start(directory: Path, script: str, workers: int, library: str = "") -> tuple[Path, int]:
    (directory / "greylisting.py").write_text(script)
    port = free_port()
    config = write_config(
        directory,
        port,
        # Loopback is trusted by default, and trusted clients are never greylisted.
        server='script = "greylisting.py"\ntrusted_networks = []\n',
        body=library,
    )
    config.write_text(config.read_text().replace("workers = 1", f"workers = {workers}"))
    return config, port


def rcpt_code(port: int, n: int) -> int:
    """One connection from 127.0.0.2 (not the harness's probe address): the RCPT reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("client.example.net")
        assert client.mail(f"sender{n}@sender.example")[0] == 250
        return int(client.rcpt(f"user{n}@example.org")[0])


def first_attempts(port: int) -> list[int]:
    return [rcpt_code(port, n) for n in range(TRIPLETS)]


def first_attempts_and_early_retries(port: int) -> tuple[list[int], list[int]]:
    """Each triplet's first attempt and, at once, its retry (too early): the RCPT codes of
    both. Fails, naming the time, if a pair took the whole delay (then "too early" would
    not be shown)."""
    firsts, early = [], []
    for n in range(TRIPLETS):
        started = time.monotonic()
        firsts.append(rcpt_code(port, n))
        early.append(rcpt_code(port, n))
        took = time.monotonic() - started
        assert took < DELAY, f"triplet {n}: first attempt and retry took {took:.2f} s"
    return firsts, early


def retries(port: int) -> list[int]:
    time.sleep(DELAY + 0.3)
    return [rcpt_code(port, n) for n in range(TRIPLETS)]


def reload(node: Node) -> None:
    result = node.mailwarden("reload")
    assert result.returncode == 0, result.stderr
    wait_for_log(node, "configuration and scripts reloaded")


@pytest.fixture(params=["sqlite", "redis"])
def library(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return ""  # the default: data_dir/library/datastore.db
    server: RedisServer = request.getfixturevalue("redis")
    return f'[library]\ndatastore = "redis"\nredis_url = "{server.url}"\n'


def test_a_retry_is_accepted_by_either_of_two_workers(tmp_path: Path, library: str) -> None:
    config, port = start(tmp_path, example_with_short_delay(), workers=2, library=library)
    with node_process(tmp_path, config, port):
        firsts, early = first_attempts_and_early_retries(port)
        assert firsts == [451] * TRIPLETS
        assert early == [451] * TRIPLETS  # too early: still greylisted, on either worker
        assert retries(port) == [250] * TRIPLETS
        assert retries(port) == [250] * TRIPLETS  # passed triplets stay accepted


def test_a_retry_is_accepted_after_mailwarden_reload(tmp_path: Path) -> None:
    config, port = start(tmp_path, example_with_short_delay(), workers=1)
    with node_process(tmp_path, config, port) as node:
        assert first_attempts(port) == [451] * TRIPLETS
        reload(node)
        assert retries(port) == [250] * TRIPLETS


def test_the_triplets_are_what_operators_see_with_mailwarden_datastore(tmp_path: Path) -> None:
    config, port = start(tmp_path, example_with_short_delay(), workers=1)
    with node_process(tmp_path, config, port) as node:
        assert rcpt_code(port, 7) == 451
        listed = node.mailwarden("datastore", "list", "greylisting", "--json")
        assert listed.returncode == 0, listed.stderr
        assert list(json.loads(listed.stdout)) == [
            "127.0.0.0/24 sender7@sender.example user7@example.org"
        ]


# -- the control: a module-level dict fails the same checks ------------------------------------


def test_a_module_level_dict_fails_with_two_workers(tmp_path: Path) -> None:
    config, port = start(tmp_path, IN_MEMORY, workers=2)
    with node_process(tmp_path, config, port):
        assert first_attempts(port) == [451] * TRIPLETS
        codes = retries(port)
    # Retries that reached the other worker are greylisted again.
    assert codes != [250] * TRIPLETS and 451 in codes, codes


def test_a_module_level_dict_fails_across_a_reload(tmp_path: Path) -> None:
    config, port = start(tmp_path, IN_MEMORY, workers=1)
    with node_process(tmp_path, config, port) as node:
        assert first_attempts(port) == [451] * TRIPLETS
        reload(node)
        assert retries(port) == [451] * TRIPLETS  # the reloaded module forgot everything
