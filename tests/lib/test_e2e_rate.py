"""``rate()`` in a real ``mailwarden run`` with two workers: one count per client for the whole
node, whichever worker each connection reaches (local table), and for every node (Redis).
Counts kept per worker would let through up to twice the limit."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from tests.server.conftest import wait_for_log
from tests.support.node import free_port, node_process, write_config
from tests.support.state_servers import RedisServer

SCRIPT = """
from mailwarden.lib import rate
from mailwarden.policy.actions import Defer


async def mail_from(conn, tx, sender):
    if not await rate("mail-per-client", conn.remote_ip, 10, 3600):
        return Defer("Too many messages, slow down", code=451, enhanced="4.7.1")
    return None
"""
CONNECTIONS = 30


def mail_code(port: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.2", 0)) as client:
        client.ehlo("client.example.net")
        return int(client.mail("sender@sender.example")[0])


@pytest.fixture(params=["local", "redis"])
def library(request: pytest.FixtureRequest) -> str:
    if request.param == "local":
        return ""
    server: RedisServer = request.getfixturevalue("redis")
    return f'[library]\nrate_backend = "redis"\nredis_url = "{server.url}"\n'


def test_two_workers_share_one_count(tmp_path: Path, library: str) -> None:
    (tmp_path / "policy.py").write_text(SCRIPT)
    port = free_port()
    config = write_config(tmp_path, port, server='script = "policy.py"\n', body=library)
    config.write_text(config.read_text().replace("workers = 1", "workers = 2"))
    with node_process(tmp_path, config, port) as node:
        codes = [mail_code(port) for _ in range(CONNECTIONS)]
        assert codes == [250] * 10 + [451] * (CONNECTIONS - 10), codes
        # A reload keeps the count: it is not in the script's module.
        assert node.mailwarden("reload").returncode == 0
        wait_for_log(node, "configuration and scripts reloaded", count=2)  # both workers
        assert [mail_code(port) for _ in range(4)] == [451] * 4
    if not library:
        assert (tmp_path / "data" / "library" / "rate-65536.table").exists()
