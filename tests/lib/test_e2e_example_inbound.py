"""examples/inbound_filter.py end to end: the example (its settings at the top changed in the
copy the node runs: the DNSBL zone, a 1 s greylisting delay, a small rate limit) as the script
of a real ``mailwarden run`` listener with two workers, its resolver set to nsd on loopback
(a DNSBL zone, SPF and DMARC records), real clamd and rspamd daemons (tests/support/scanners.py),
clients speaking real SMTP (smtplib) from 127.0.0.x source addresses."""

from __future__ import annotations

import json
import re
import smtplib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from tests.support.dns_server import dns_server
from tests.support.node import Node, free_port, node_process, write_config
from tests.support.scanners import (
    CLAMD_SIGNATURE,
    EICAR,
    GTUBE,
    clamd_server,
    closed_port,
    rspamd_server,
)

from mailwarden.spool.reader import read_message_bytes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "inbound_filter.py"
DELAY = 1  # greylisting delay of the copy the node runs (the example's is 300 s)
RATE_LIMIT = 5  # transactions per client address per hour, in that copy
AUTHSERV_ID = "mx.test.example"

ZONES = {
    # RFC 5782 test entry: 127.0.0.2 is listed, the other 127.0.0.x are not.
    "bl.test": '2.0.0.127 IN A 127.0.0.2\n2.0.0.127 IN TXT "listed: test entry"\n',
    "good.test": '@ IN TXT "v=spf1 ip4:127.0.0.0/24 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "forged.test": '@ IN TXT "v=spf1 ip4:192.0.2.1 -all exp=why.forged.test"\n'
    'why IN TXT "%{i} is not a mail server of %{d}"\n',
    "bank.test": '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "shop.test": '@ IN TXT "v=spf1 -all"\n_dmarc IN TXT "v=DMARC1; p=quarantine"\n',
}

SETTINGS = {
    "DNSBL_ZONES": '("bl.test",)',
    "RATE_LIMIT": str(RATE_LIMIT),
    "GREYLIST_DELAY": str(DELAY),
    "AUTHSERV_ID": repr(AUTHSERV_ID),
}


def configured_example() -> str:
    """The example with SETTINGS in place of its own values (each must be there once)."""
    source = EXAMPLE.read_text()
    for name, value in SETTINGS.items():
        pattern = re.compile(rf"^{name}(: [^=]+)? = .*$", re.MULTILINE)
        source, replaced = pattern.subn(f"{name} = {value}", source)
        assert replaced == 1, name
    return source


@dataclass
class Filter:
    node: Node
    directory: Path

    def queue_list(self, *filters: str) -> list[dict]:
        listed = self.node.mailwarden("queue", "list", *filters, "--json")
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)


def start(directory: Path, dns: str, library: str) -> tuple[Path, int]:
    (directory / "inbound_filter.py").write_text(configured_example())
    port = free_port()
    config = write_config(
        directory,
        port,
        # Loopback is trusted by default, and trusted clients skip the checks.
        server='script = "inbound_filter.py"\ntrusted_networks = []\n',
        body=library,
    )
    text = config.read_text().replace("workers = 1", "workers = 2")
    node_keys = f'dns_servers = ["{dns}"]\ndns_timeout = 3.0\n'
    config.write_text(text.replace("[node]\n", "[node]\n" + node_keys, 1))
    return config, port


@pytest.fixture(scope="module")
def inbound(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filter]:
    directory = tmp_path_factory.mktemp("inbound")
    with (
        dns_server(directory / "nsd", ZONES) as nsd,
        clamd_server(tmp_path_factory.mktemp("clamd")) as clamd,
        rspamd_server() as rspamd,
    ):
        library = (
            f'[library]\nclamd_address = "{clamd.address}"\nrspamd_url = "{rspamd.url}"\n'
            "scanner_timeout = 20\n"
        )
        config, port = start(directory, nsd.address, library)
        with node_process(directory, config, port) as node:
            yield Filter(node, directory)


def mail(
    sender: str = "alice@good.test",
    recipient: str = "bob@example.org",
    text: str = "The minutes, as promised.\nSee you on Monday.\n",
    attachment: bytes | None = None,
) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = "the minutes"
    message["Date"] = "Thu, 03 Dec 2026 12:00:00 +0000"
    message["Message-ID"] = f"<{time.monotonic_ns()}@{sender.rpartition('@')[2]}>"
    message.set_content(text)
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="eicar.com"
        )
    return message.as_bytes().replace(b"\n", b"\r\n")


def attempt(
    port: int, source: str, sender: str, recipient: str, data: bytes
) -> tuple[str, int, str]:
    """One transaction from ``source``: the phase that answered last, its code and text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60, source_address=(source, 0)) as client:
        client.ehlo("client.good.test")
        code, text = client.mail(sender)
        if code != 250:
            return "mail", code, text.decode()
        code, text = client.rcpt(recipient)
        if code != 250:
            return "rcpt", code, text.decode()
        code, text = client.data(data)
        return "data", code, text.decode()


def send(port: int, source: str, data: bytes, sender: str, recipient: str) -> tuple[str, int, str]:
    """As an MTA sends: greylisted at first (451 4.7.1), then retried after the delay."""
    phase, code, text = attempt(port, source, sender, recipient, data)
    if (phase, code) == ("rcpt", 451) and text.startswith("4.7.1 Greylisted"):
        time.sleep(DELAY + 0.3)
        phase, code, text = attempt(port, source, sender, recipient, data)
    return phase, code, text


def queued_id(text: str) -> str:
    match = re.search(r"Message queued as (\S+)", text)
    assert match, text
    return match.group(1)


def header_of(inbound: Filter, text: str) -> bytes:
    stored = read_message_bytes(inbound.node.spool, queued_id(text)) or b""
    return stored.split(b"\r\n\r\n", 1)[0]


def greeting(port: int, source: str) -> tuple[int, str]:
    with smtplib.SMTP(timeout=30, source_address=(source, 0)) as client:
        code, text = client.connect("127.0.0.1", port)
        return code, text.decode()


def test_a_listed_client_is_refused_at_connect(inbound: Filter) -> None:
    code, text = greeting(inbound.node.port, "127.0.0.2")
    assert (code, text) == (554, "5.7.1 127.0.0.2 listed by bl.test: listed: test entry")
    assert greeting(inbound.node.port, "127.0.0.3")[0] == 220


def test_an_spf_fail_is_refused_at_mail_from(inbound: Filter) -> None:
    phase, code, text = attempt(
        inbound.node.port, "127.0.0.4", "x@forged.test", "spf@example.org", mail("x@forged.test")
    )
    assert (phase, code) == ("mail", 550)
    assert text == "5.7.23 SPF: 127.0.0.4 is not a mail server of forged.test"


def test_greylisted_then_accepted_on_retry(inbound: Filter) -> None:
    port, data = inbound.node.port, mail(recipient="grey@example.org")
    first = attempt(port, "127.0.0.5", "alice@good.test", "grey@example.org", data)
    assert first == ("rcpt", 451, "4.7.1 Greylisted, please try again later")
    # Too early: still greylisted (whichever of the two workers answers).
    assert attempt(port, "127.0.0.5", "alice@good.test", "grey@example.org", data)[1] == 451
    time.sleep(DELAY + 0.3)
    phase, code, text = attempt(port, "127.0.0.5", "alice@good.test", "grey@example.org", data)
    assert (phase, code) == ("data", 250), text
    # Known from now on: accepted at once.
    assert attempt(port, "127.0.0.5", "alice@good.test", "grey@example.org", data)[1] == 250


def test_clean_mail_is_queued_with_authentication_results(inbound: Filter) -> None:
    phase, code, text = send(
        inbound.node.port,
        "127.0.0.6",
        mail(recipient="clean@example.org"),
        "alice@good.test",
        "clean@example.org",
    )
    assert (phase, code) == ("data", 250), text
    header = header_of(inbound, text)
    # The field with its continuation lines (RFC 5322 §2.2.3 folding).
    (field,) = re.findall(rb"\r\nAuthentication-Results: (.*?)\r\n(?! )", header, re.DOTALL)
    assert field.startswith(b"mx.test.example;\r\n")
    assert b" spf=pass smtp.mailfrom=good.test;" in field
    assert b" dkim=none;" in field
    assert b" dmarc=pass (p=reject dis=none) header.from=good.test" in field
    assert header.startswith(b"X-Spam-Score: ")  # rspamd's score, over its reject threshold
    (entry,) = inbound.queue_list(f"id={queued_id(text)}")
    assert [r["state"] for r in entry["recipients"]] == ["active"]


def test_gtube_is_refused_as_spam(inbound: Filter) -> None:
    data = mail(recipient="gtube@example.org", text=f"Cheap watches!\n{GTUBE}\n")
    phase, code, text = send(
        inbound.node.port, "127.0.0.7", data, "alice@good.test", "gtube@example.org"
    )
    assert (phase, code) == ("data", 550)
    assert text.startswith("5.7.1 Message refused as spam (score ")


def test_eicar_is_refused_as_a_virus(inbound: Filter) -> None:
    data = mail(recipient="eicar@example.org", text="See attached.", attachment=EICAR)
    phase, code, text = send(
        inbound.node.port, "127.0.0.8", data, "alice@good.test", "eicar@example.org"
    )
    assert (phase, code) == ("data", 554)
    # clamd names a signature of an unofficial database NAME.UNOFFICIAL.
    assert text.startswith(f"5.7.1 Virus found: {CLAMD_SIGNATURE}")


def test_borderline_mail_is_held(inbound: Filter) -> None:
    # Sloppy, not spam for sure: HTML only, no MIME-Version, Date or Message-ID, a shouted
    # Subject and a link to a bare IP address. rspamd's action: "add header".
    data = (
        b"From: alice@good.test\r\nTo: held@example.org\r\nSubject: FREE MONEY NOW!!!\r\n"
        b"Content-Type: text/html\r\n\r\n"
        b"<html><body><a href='http://192.0.2.7/'>click here</a></body></html>\r\n"
    )
    phase, code, text = send(
        inbound.node.port, "127.0.0.9", data, "alice@good.test", "held@example.org"
    )
    assert (phase, code) == ("data", 250), text  # the client cannot tell
    (entry,) = inbound.queue_list("state=held", f"id={queued_id(text)}")
    (recipient,) = entry["recipients"]
    assert recipient["address"] == "held@example.org"
    assert recipient["reason"].startswith("probably spam (rspamd add header, score ")
    assert b"Authentication-Results: mx.test.example;" in header_of(inbound, text)


def test_dmarc_reject_and_quarantine(inbound: Filter) -> None:
    port = inbound.node.port
    # SPF passes for the envelope's good.test, which does not align with the From domain.
    phase, code, text = send(
        port,
        "127.0.0.10",
        mail("ceo@bank.test", "dmarc@example.org"),
        "alice@good.test",
        "dmarc@example.org",
    )
    assert (phase, code, text) == (
        "data",
        550,
        "5.7.1 DMARC policy of bank.test rejects this message",
    )
    phase, code, text = send(
        port,
        "127.0.0.10",
        mail("offers@shop.test", "dmarc@example.org"),
        "alice@good.test",
        "dmarc@example.org",
    )
    assert (phase, code) == ("data", 250), text
    (entry,) = inbound.queue_list(f"id={queued_id(text)}")
    assert [(r["state"], r["reason"]) for r in entry["recipients"]] == [
        ("held", "DMARC quarantine policy of shop.test")
    ]


def test_a_client_over_the_rate_limit_is_deferred(inbound: Filter) -> None:
    with smtplib.SMTP(
        "127.0.0.1", inbound.node.port, timeout=30, source_address=("127.0.0.11", 0)
    ) as client:
        client.ehlo("client.good.test")
        codes = []
        for _ in range(RATE_LIMIT + 2):
            code, text = client.mail("alice@good.test")
            codes.append(code)
            client.rset()
    assert codes == [250] * RATE_LIMIT + [451, 451]
    assert text == b"4.7.1 Too many messages from your address, slow down"


def test_a_scanner_that_is_down_defers(tmp_path: Path) -> None:
    (tmp_path / "clamd").mkdir()
    with dns_server(tmp_path / "nsd", ZONES) as nsd, clamd_server(tmp_path / "clamd") as clamd:
        library = (
            f'[library]\nclamd_address = "{clamd.address}"\nrspamd_url = "http://{closed_port()}"\n'
        )
        config, port = start(tmp_path, nsd.address, library)
        with node_process(tmp_path, config, port) as node:
            phase, code, text = send(
                port,
                "127.0.0.12",
                mail(recipient="down@example.org"),
                "alice@good.test",
                "down@example.org",
            )
            assert (phase, code) == ("data", 451)
            assert text.startswith("4.7.0 Content scanner unavailable (rspamd: cannot connect")
            assert node.mailwarden("queue", "list", "--json").stdout.strip() in ("[]", "")
