"""A real ``mailwarden run`` whose policy script uses ``lib.cache`` and ``lib.lists``: the cache
is shared by the connections of a worker, and a list file edited while the node runs takes
effect without a reload (and a broken edit keeps the previous list)."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from tests.server.conftest import wait_for_log, write_script
from tests.support.node import running_node

SCRIPT = """
from pathlib import Path

from mailwarden.lib import cache, load_list
from mailwarden.policy.actions import Reject

HERE = Path(__file__).parent
DENIED_SENDERS = load_list(HERE / "denied_senders.txt", "address", check_interval=0.1)


@cache(ttl=300, size=100, namespace="plans")
async def plan(domain: str) -> str:
    # Stands for a slow operator service; the file records every real call.
    with open(HERE / "lookups.log", "a") as log:
        log.write(domain + "\\n")
    return "blocked" if domain == "blocked.example" else "ok"


async def mail_from(conn, tx, sender):
    if sender.address in DENIED_SENDERS:
        return Reject("Sender address rejected: access denied", code=550, enhanced="5.7.1")
    if await plan(sender.address.rpartition("@")[2].lower()) == "blocked":
        return Reject("Sender domain blocked by its plan", code=550, enhanced="5.7.1")
    return None
"""


def mail_from(port: int, sender: str) -> tuple[int, bytes]:
    """One connection: EHLO, MAIL FROM, QUIT; the MAIL FROM reply."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo("client.example.net")
        return client.mail(sender)


def test_script_cache_is_shared_by_connections_and_lists_reload(tmp_path: Path) -> None:
    (tmp_path / "denied_senders.txt").write_text("# refused senders\nspammer@bulk.example\n")
    server = write_script(tmp_path, SCRIPT)
    with running_node(tmp_path, server=server) as node:
        # The cache: three connections, one real lookup per domain.
        for _ in range(3):
            assert mail_from(node.port, "a@Partner.example")[0] == 250
        code, text = mail_from(node.port, "x@blocked.example")
        assert (code, text) == (550, b"5.7.1 Sender domain blocked by its plan")
        assert mail_from(node.port, "y@blocked.example")[0] == 550
        lookups = (tmp_path / "lookups.log").read_text().split()
        assert lookups == ["partner.example", "blocked.example"]

        # The list, case-insensitive; then edited while the node runs.
        code, text = mail_from(node.port, "SPAMMER@bulk.example")
        assert (code, text) == (550, b"5.7.1 Sender address rejected: access denied")
        assert mail_from(node.port, "new@bulk.example")[0] == 250
        (tmp_path / "denied_senders.txt").write_text("spammer@bulk.example\nnew@bulk.example\n")
        time.sleep(0.3)  # past the script's check_interval
        assert mail_from(node.port, "new@bulk.example")[0] == 550

        # A broken edit: logged with file and line, the previous entries stay in force.
        (tmp_path / "denied_senders.txt").write_text("other@bulk.example\nnew@ bulk.example\n")
        time.sleep(0.3)
        assert mail_from(node.port, "new@bulk.example")[0] == 550
        assert mail_from(node.port, "other@bulk.example")[0] == 250
        wait_for_log(node, f"{tmp_path / 'denied_senders.txt'}:2: one entry per line")
        assert "keeping the previous entries" in node.log()
