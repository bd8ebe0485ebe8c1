"""docs/howto/outbound-relay.md, run top to bottom as a reader would: in an empty directory,
the page's configuration and its copy of examples/outbound_relay.py with the constants the
page edits, then every command it shows run through bash (its users, limit and DKIM key put
in the datastore with ``mailwarden datastore set``, its ``mailwarden run`` started in the
background, swaks over STARTTLS). Each must exit 0 and print the key lines below, which the
page must show too; a command the page gains without an entry here fails the coverage test.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.howto import Command, page_commands
from tests.support.howto_run import ENV, Ran, check, coverage, running_page
from tests.support.node import free_port

PAGE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "outbound-relay.md"
SWAKS = "swaks --server 127.0.0.1 --port PORT --tls"
LOGIN = "--auth LOGIN --auth-user alice@example.org --auth-password"
ENVELOPE = "--from alice@example.org --to carol@example.net"
FAILED = ' || echo "swaks exited $?"'
BLOCKED = "--attach-name figures.pdf --attach @figures.pdf"
CONFIG = "--config mailwarden.toml"
HASH = "python3 outbound_relay.py 'correct horse'"
KEY = """jq -n --arg key "$(cat example.org.pem)" '{selector: "mw2026", key: $key}'"""

EXPECTED: dict[str, tuple[str, ...]] = {
    "printf 'the quarterly figures nobody may send out\\n' > figures.pdf": (),
    "sha256sum figures.pdf > blocked-attachments.sha256": (),
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem"
    " -out cert.pem -days 30 -subj /CN=smtp.example.org"
    " -addext subjectAltName=DNS:smtp.example.org": ("-----",),
    f"mailwarden config check {CONFIG}": (r"mailwarden\.toml: OK \(1 server\(s\)\)",),
    HASH: (r"^scrypt\$16384\$8\$1\$",),
    f'mailwarden datastore set relay-users alice@example.org "$({HASH})" --string {CONFIG}': (
        r"^relay-users alice@example\.org: set$",
    ),
    f"mailwarden datastore set relay-limits alice@example.org 2 {CONFIG}": (
        r"^relay-limits alice@example\.org: set$",
    ),
    "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out example.org.pem": (),
    f'mailwarden datastore set dkim-keys example.org "$({KEY})" {CONFIG}': (
        r"^dkim-keys example\.org: set$",
    ),
    "openssl pkey -in example.org.pem -pubout -outform DER | base64 -w0 | cut -c1-20": (
        r"^MIIBIjANBgkqhkiG9w0B$",
    ),
    f"mailwarden run {CONFIG}": (
        r"server submission listening on 127\.0\.0\.1:PORT",
        r"node ready: 1 worker",
    ),
    f"{SWAKS} {ENVELOPE}{FAILED}": (
        r"^<~\* 530 5\.7\.0 Authentication required$",
        r"^swaks exited 23$",
    ),
    f"{SWAKS} {LOGIN} 'wrong' {ENVELOPE}{FAILED}": (
        r"^<~\* 535 5\.7\.8 Authentication credentials invalid$",
        r"^swaks exited 28$",
    ),
    f"{SWAKS} {LOGIN} 'correct horse' {ENVELOPE}": (
        r"^<~  235 2\.7\.0 Authentication successful$",
        r"^<~  250 2\.0\.0 Message queued as ",
    ),
    f'mailwarden queue show {CONFIG} "$(mailwarden queue list {CONFIG} --json'
    " | jq -r '.[0].id')\" | grep -A1 '^DKIM-Signature'": (
        r"^DKIM-Signature: v=1; a=rsa-sha256; .*d=example\.org;$",
        r"^ i=@example\.org; q=dns/txt; s=mw2026; ",
    ),
    f"{SWAKS} {LOGIN} 'correct horse' {ENVELOPE} {BLOCKED}{FAILED}": (
        r"^<~\* 550 5\.7\.1 Attachment figures\.pdf is blocked by policy$",
        r"^swaks exited 26$",
    ),
    f"{SWAKS} {LOGIN} 'correct horse' {ENVELOPE}{FAILED}": (
        r"^<~\* 451 4\.7\.1 alice@example\.org sent more than 2 messages in 3600 s",
        r"^swaks exited 23$",
    ),
    f"mailwarden stats {CONFIG}": (
        r"│ messages_queued +│ 1 ",
        r"│ messages_rejected +│ 1 ",
        r"│ auth_failures +│ 1 ",
        r"│ refused_mail +│ 2 ",
    ),
}


@dataclass
class Page:
    results: dict[int, Ran]  # by the command's line in the page
    ports: dict[str, int | str]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    for tool in ("mailwarden", "swaks", "openssl", "jq", "sha256sum", "python3"):
        assert shutil.which(tool, path=ENV["PATH"]), f"{tool} is not installed (scripts/test)"
    directory = tmp_path_factory.mktemp("howto-outbound")
    ports: dict[str, int | str] = {"PORT": free_port()}
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
