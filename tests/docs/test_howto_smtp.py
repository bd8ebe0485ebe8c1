"""docs/howto/test-an-smtp-server.md, run top to bottom as a reader would: in an empty
directory, the page's own files written out (certificate, configuration, policy script), its
zone served by a real nsd, its ``mailwarden run`` started, then every command it shows run
through bash with the placeholders filled in. Each command must exit 0 and print the key lines
below, and the page must show those lines too, so page and product cannot drift apart. A
command the page gains without an entry here fails the coverage test.
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

PAGE = Path(__file__).resolve().parents[2] / "docs" / "howto" / "test-an-smtp-server.md"
TLS = "openssl s_client -starttls smtp -connect 127.0.0.1:PORT"

# command as the page shows it -> regular expressions its output (stdout and stderr) must match;
# each must match what the page shows as well.
EXPECTED: dict[str, tuple[str, ...]] = {
    "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout key.pem"
    " -out cert.pem -days 30 -subj /CN=mx.example.org"
    " -addext subjectAltName=DNS:mx.example.org": ("-----",),
    "mailwarden config check --config mailwarden.toml": (
        r"mailwarden\.toml: OK \(1 server\(s\)\)",
        r"spool: .*/data/spool",
    ),
    "mailwarden run --config mailwarden.toml": (
        r"server inbound listening on 127\.0\.0\.1:PORT",
        r"node ready: 1 worker",
    ),
    "dig +short MX example.org @127.0.0.1 -p DNSPORT": (r"^10 mx\.example\.org\.$",),
    "dig +short A mx.example.org @127.0.0.1 -p DNSPORT": (r"^127\.0\.0\.1$",),
    "host -p DNSPORT -t MX example.org 127.0.0.1": (
        r"example\.org mail is handled by 10 mx\.example\.org\.",
    ),
    "dig +short TXT example.org @127.0.0.1 -p DNSPORT": (r'^"v=spf1 ip4:127\.0\.0\.1 -all"$',),
    "nc -zv 127.0.0.1 PORT": (r"Connection to 127\.0\.0\.1 PORT port .* succeeded!",),
    "{ sleep 1; printf 'EHLO client.example\\r\\n'; sleep 1; printf 'QUIT\\r\\n'; }"
    " | nc 127.0.0.1 PORT": (
        r"^220 mx\.example\.org ESMTP",
        r"^250 STARTTLS$",
        r"^221 2\.0\.0 Bye$",
    ),
    "swaks --server 127.0.0.1 --port PORT --from alice@client.example --to bob@example.org": (
        r"<-  250 2\.1\.5 Recipient OK",
        r"<-  250 2\.0\.0 Message queued as \w+",
    ),
    f"{TLS} -servername mx.example.org -CAfile cert.pem -verify_hostname mx.example.org"
    " -verify_return_error -brief </dev/null": (
        r"^Protocol version: TLSv1\.[23]$",
        r"^Peer certificate: CN = mx\.example\.org$",
        r"^Verification: OK$",
        r"^Verified peername: mx\.example\.org$",
    ),
    "printf '%s' alice | base64": (r"^YWxpY2U=$",),
    "printf '%s' secret | base64": (r"^c2VjcmV0$",),
    "echo VXNlcm5hbWU6 | base64 -d": (r"^Username:$",),
    "{ sleep 1; printf 'EHLO client.example\\n'; sleep 1; printf 'AUTH LOGIN\\n'; sleep 1;"
    " printf 'YWxpY2U=\\n'; sleep 1; printf 'c2VjcmV0\\n'; sleep 1; printf 'QUIT\\n'; }"
    f" | {TLS} -CAfile cert.pem -crlf -quiet": (
        r"^250 AUTH PLAIN LOGIN$",
        r"^334 VXNlcm5hbWU6$",
        r"^334 UGFzc3dvcmQ6$",
        r"^235 2\.7\.0 Authentication successful$",
    ),
    "printf '\\0alice\\0secret' | base64": (r"^AGFsaWNlAHNlY3JldA==$",),
    "smtpping -p PORT -c 3 -w 100 bob@example.org @127.0.0.1": (
        r"^PING bob@example\.org \(\[127\.0\.0\.1\]:PORT\)",
        r"^seq=3, connect=[\d.]+ ms, helo=",
        r"^3 e-mail messages transmitted$",
    ),
    "SMTPPING_NAMESERVER=127.0.0.1:DNSPORT smtpping -p PORT -c 1 bob@example.org": (
        r"^PING bob@example\.org \(\[127\.0\.0\.1\]:PORT\)",
        r"^1 e-mail messages transmitted$",
    ),
    "smtpping -p PORT -c 1 --starttls --auth alice:secret bob@example.org @127.0.0.1": (
        r"^1 e-mail messages transmitted$",
    ),
    "smtpping -p PORT -r -w 0 -P 4 --duration 3 bob@example.org @127.0.0.1": (
        r"^\d+ messages completed in [\d.]+ s, mean rate [\d.]+ msg/s$",
        r"^errors: none$",
    ),
    "mailwarden queue list --config mailwarden.toml": (
        r"^id +received +size +state +sender / recipients",
        r"from alice@client\.example",
    ),
    "mailwarden queue list --config mailwarden.toml sender=alice@client.example": (
        r"from alice@client\.example",
        r"^1 message\(s\) match sender=alice@client\.example$",
    ),
    "mailwarden stats --config mailwarden.toml": (
        r"│ messages_queued +│ \d+",
        r"│ auth_failures +│ 0 ",
        r"script counters \(stat\)",
        r"│ logins +│ ok +│ +2 │",
    ),
}


@dataclass
class Page:
    results: dict[int, Ran]  # by the command's line in the page
    ports: dict[str, int | str]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    for tool in ("mailwarden", "smtpping", "swaks", "openssl", "dig", "host", "nc", "base64"):
        assert shutil.which(tool, path=ENV["PATH"]), (
            f"{tool} is not installed (scripts/test installs it)"
        )
    directory = tmp_path_factory.mktemp("howto")
    zones = write_files(PAGE, directory, {"PORT": 0, "DNSPORT": 0})
    with dns_server(directory / "dns", zones) as server:
        ports: dict[str, int | str] = {"PORT": free_port(), "DNSPORT": server.port}
        # `mailwarden stats` reads what the workers publish every 2 s: asked again until
        # it shows (running_page's default).
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
