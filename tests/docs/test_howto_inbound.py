"""docs/howto/inbound-filter.md, run top to bottom as a reader would: in an empty directory,
the page's configuration and its copy of examples/inbound_filter.py with the constants the
page edits, its zones served by a real nsd, real clamd and rspamd (tests/support/scanners.py)
where its configuration names them, its ``mailwarden run`` started, then every command it
shows run through bash. Each must exit 0 and print the key lines below, which the page must
show too; a command the page gains without an entry here fails the coverage test.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.dns_server import dns_server
from tests.support.howto import Command, page_commands
from tests.support.howto_run import ENV, Ran, check, coverage, running_page, write_files
from tests.support.node import free_port
from tests.support.scanners import clamd_server, rspamd_server

PAGE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "inbound-filter.md"
SWAKS = "swaks --server 127.0.0.1 --port PORT"
TRIPLET = "--from alice@good.example --to bob@example.org"
FAILED = ' || echo "swaks exited $?"'

EXPECTED: dict[str, tuple[str, ...]] = {
    "mailwarden config check --config mailwarden.toml": (
        r"mailwarden\.toml: OK \(1 server\(s\)\)",
    ),
    "mailwarden run --config mailwarden.toml": (
        r"server mx listening on 127\.0\.0\.1:PORT",
        r"node ready: 1 worker",
    ),
    f"{SWAKS} --local-interface 127.0.0.2 {TRIPLET}{FAILED}": (
        r"^<\*\* 554 5\.7\.1 127\.0\.0\.2 listed by bl\.example: listed: test entry$",
        r"^swaks exited 21$",
    ),
    f"{SWAKS} {TRIPLET}{FAILED}": (
        r"^<\*\* 451 4\.7\.1 Greylisted, please try again later$",
        r"^swaks exited 24$",
    ),
    f"sleep 6; {SWAKS} {TRIPLET}": (
        r"^<-  250 2\.1\.5 Recipient OK$",
        r"^<-  250 2\.0\.0 Message queued as ",
    ),
    "mailwarden datastore get greylisting '127.0.0.0/24 alice@good.example bob@example.org'"
    " --config mailwarden.toml": (r'^  "passed": true$',),
    "printf '%s' 'X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'"
    " > eicar.com": (),
    f"{SWAKS} {TRIPLET} --attach-name eicar.com --attach @eicar.com{FAILED}": (
        r"^<\*\* 554 5\.7\.1 Virus found: ",
        r"^swaks exited 26$",
    ),
    f"{SWAKS} {TRIPLET} --header 'From: news@shop.example'": (
        r"^<-  250 2\.0\.0 Message queued as ",
    ),
    "mailwarden queue list --config mailwarden.toml state=held": (
        r"from alice@good\.example",
        r"^1 message\(s\) match state=held$",
    ),
    "mailwarden stats --config mailwarden.toml": (
        r"│ messages_held +│ 1 ",
        r"│ refused_connect +│ 1 ",
        r"script counters \(stat\)",
        r"│ inbound-dnsbl +│ listed +│ +1 │",
        r"│ inbound-verdict +│ accepted +│ +1 │",
        r"│ inbound-verdict +│ held +│ +1 │",
        r"│ inbound-verdict +│ virus +│ +1 │",
    ),
}


@dataclass
class Page:
    results: dict[int, Ran]  # by the command's line in the page
    ports: dict[str, int | str]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    for tool in ("mailwarden", "swaks", "clamd", "rspamd"):
        assert shutil.which(tool, path=ENV["PATH"]), f"{tool} is not installed (scripts/test)"
    directory = tmp_path_factory.mktemp("howto-inbound")
    zones = write_files(PAGE, directory, {})
    with (
        dns_server(directory / "dns", zones) as nsd,
        clamd_server(tmp_path_factory.mktemp("clamd")) as clamd,
        rspamd_server() as rspamd,
    ):
        ports: dict[str, int | str] = {
            "PORT": free_port(),
            "DNSPORT": nsd.port,
            "CLAMDPORT": clamd.port,
            "RSPAMDPORT": rspamd.port,
        }
        with running_page(PAGE, directory, ports, EXPECTED) as results:
            yield Page(results, ports)


COMMANDS = page_commands(PAGE)


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[f"line{c.line}-{c.text.split()[0]}" for c in COMMANDS]
)
def test_command_works_as_shown(command: Command, page: Page) -> None:
    check(page.results[command.line], EXPECTED[command.text], page.ports)


def test_every_command_of_the_page_is_checked() -> None:
    coverage(PAGE, EXPECTED)
