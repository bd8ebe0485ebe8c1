"""``[delivery]`` and ``[[routes]]``: defaults, the route table a file gives, errors that name
file, line and key, the docs describing every key, and delivery resolving through the DNS
server ``[node] dns_servers`` names."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tests.support.dns_server import DnsServer

from mailwarden.config import ConfigError, DeliverySettings, RouteSettings, load_config
from mailwarden.config.delivery import SourceAddressSettings
from mailwarden.delivery.mx import Target, resolve_targets
from mailwarden.delivery.routes import NextHop, RouteTable, SourceAddress
from mailwarden.delivery.tls import TlsMode
from mailwarden.lib import dns

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailwarden.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path) -> list[tuple[int | None, str, str]]:
    """(line, dotted key, message) of each problem, checking every line names the file."""
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = []
    for problem in caught.value.problems:
        match = re.fullmatch(rf"{re.escape(str(path))}(?::(\d+))?: ([\w.\[\]]+): (.*)", problem)
        assert match, problem
        found.append((int(match[1]) if match[1] else None, match[2], match[3]))
    return found


def test_defaults_deliver_by_mx_from_the_kernels_address():
    config = load_config(None)
    assert config.delivery == DeliverySettings()
    assert config.routes == []
    table = RouteTable.from_config(config)
    route = table.route_for("example.org")
    assert route is table.default and route.next_hop is None
    assert route.protocol == "smtp" and route.auth is None and route.source_ips == ()
    assert route.tls.mode is TlsMode.OPTIONAL
    assert route.helo == config.node.hostname
    assert config.delivery.max_connections_per_destination == 20
    assert config.delivery.max_messages_per_connection == 100


def test_a_file_gives_its_routes_in_order(tmp_path):
    (tmp_path / "ca.pem").write_text("")
    path = write(
        tmp_path,
        """
        [node]
        hostname = "node.example"

        [delivery]
        helo = "out.example"
        tls = "optional_verify"
        source_ips = [
          { address = "192.0.2.10", helo = "out1.example" },
          { address = "2001:DB8::10", helo = "out6.example" },
        ]

        [[routes]]
        domains = ["example.net", ".Example.NET."]
        next_hop = "[10.0.0.5]:2525"
        auth_username = "node1"
        auth_password = "secret"
        tls = "required_verify"
        tls_ca_file = "ca.pem"
        tls_verify_name = "relay.example.net"
        source_ips = ["192.0.2.10", { address = "192.0.2.99" }]

        [[routes]]
        domains = ["store.example"]
        protocol = "lmtp"
        next_hop = "store.example"
        """,
    )
    table = RouteTable.from_config(load_config(path))
    first, second = table.routes
    assert table.route_for("mail.example.net") is first
    assert table.route_for("store.example") is second
    assert table.route_for("other.example") is table.default
    assert first.domains == ("example.net", ".example.net")
    assert first.next_hop == NextHop("10.0.0.5", 2525, mx_lookup=False)
    assert first.auth == ("node1", "secret")
    assert first.tls.mode is TlsMode.REQUIRED_VERIFY and first.tls.source == "route"
    assert first.tls.ca_file == tmp_path / "ca.pem"
    assert first.tls.verify_name == "relay.example.net"
    # By address alone: the pool's HELO name for that address, else [delivery] helo.
    assert first.source_ips == (
        SourceAddress("192.0.2.10", "out1.example"),
        SourceAddress("192.0.2.99", "out.example"),
    )
    # LMTP: port 24 and no MX lookup, like Postfix's lmtp client; [delivery] TLS and pool.
    assert second.next_hop == NextHop("store.example", 24, mx_lookup=False)
    assert second.lmtp and second.tls.mode is TlsMode.OPTIONAL_VERIFY
    assert second.tls.source == "config"
    assert (
        second.source_ips
        == table.default.source_ips
        == (
            SourceAddress("192.0.2.10", "out1.example"),
            SourceAddress("2001:db8::10", "out6.example"),
        )
    )
    assert table.default.helo == "out.example"


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        (
            '[delivery]\nsource_ips = [{ address = "192.0.2.300", helo = "a.example" }]\n',
            2,
            "delivery.source_ips[0].address",
            "expected an IP address",
        ),
        (
            '[delivery]\nsource_ips = [\n  { address = "192.0.2.1" },\n'
            '  { address = "out.example" },\n]\n',
            4,
            "delivery.source_ips[1].address",
            "got 'out.example'",
        ),
        (
            '[delivery]\nsource_ips = [\n  { address = "192.0.2.1" },\n'
            '  { address = "192.0.2.1" },\n]\n',
            4,
            "delivery.source_ips[1].address",
            "expected each address once, but 192.0.2.1 is also entry 0",
        ),
        (
            '[delivery]\nsource_ips = [{ address = "192.0.2.1", helo = "not a name" }]\n',
            2,
            "delivery.source_ips[0].helo",
            "expected a host name",
        ),
        ('[delivery]\nip_version = "ipv5"\n', 2, "delivery.ip_version", "one of 'any', 'ipv4'"),
        ('[delivery]\ntls = "sometimes"\n', 2, "delivery.tls", "one of 'none', 'optional'"),
        ("[delivery]\nconnect_timeout = 0\n", 2, "delivery.connect_timeout", "> 0"),
        ("[delivery]\nhelo_name = 'x'\n", 2, "delivery.helo_name", "unknown key"),
        ('[[routes]]\nnext_hop = "[10.0.0.1]"\n', 1, "routes[0].domains", "required key"),
        ("[[routes]]\ndomains = []\n", 2, "routes[0].domains", "at least 1 item"),
        (
            '[[routes]]\ndomains = ["example.net", "..example.net"]\n',
            2,
            "routes[0].domains[1]",
            "'.example.net' for its subdomains, or '*'",
        ),
        (
            '[[routes]]\ndomains = ["*"]\n\nnext_hop = "10.0.0.5:25"\n',
            4,
            "routes[0].next_hop",
            "goes in brackets, as in '[10.0.0.5]'",
        ),
        (
            '[[routes]]\ndomains = ["*"]\nnext_hop = "[10.0.0.5]:99999"\n',
            3,
            "routes[0].next_hop",
            "port from 1 to 65535",
        ),
        (
            '[[routes]]\ndomains = ["*"]\nprotocol = "esmtp"\n',
            3,
            "routes[0].protocol",
            "one of 'smtp', 'lmtp'",
        ),
        (
            '[[routes]]\ndomains = ["*"]\nnext_hop = "[10.0.0.5]"\nauth_password = "x"\n',
            4,
            "routes[0].auth_password",
            "expected auth_username as well",
        ),
        (
            '[[routes]]\ndomains = ["*"]\nprotocol = "lmtp"\n',
            3,
            "routes[0].protocol",
            "expected a next_hop",
        ),
        (
            '[[routes]]\ndomains = ["*"]\nsource_ips = ["192.0.2.1", "eth0"]\n',
            3,
            "routes[0].source_ips[1].address",
            "got 'eth0'",
        ),
        ('[[routes]]\ndomains = ["*"]\nnexthop = "x"\n', 3, "routes[0].nexthop", "next_hop"),
        (
            '[[routes]]\ndomains = ["*"]\n\n[[routes]]\ndomains = ["example.net"]\n',
            5,
            "routes[1].domains[0]",
            "'example.net' is never used: routes[0] before it already matches every domain",
        ),
        (
            '[[routes]]\ndomains = ["a.example", ".b.example"]\n\n'
            '[[routes]]\ndomains = ["c.example",\n  ".b.example"]\n',
            6,
            "routes[1].domains[1]",
            "'.b.example' is never used: routes[0] before it already matches it",
        ),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, text, line, key, message):
    found = problems(write(tmp_path, text))
    assert len(found) == 1, found
    assert found[0][:2] == (line, key)
    assert message in found[0][2]


def test_check_files_names_missing_ca_files_with_their_lines(tmp_path):
    (tmp_path / "present.pem").write_text("")
    path = write(
        tmp_path,
        """
        [delivery]
        tls_ca_file = "missing.pem"

        [[routes]]
        domains = ["a.example"]
        tls_ca_file = "present.pem"

        [[routes]]
        domains = ["b.example"]
        next_hop = "[10.0.0.5]"
        tls_ca_file = "."
        """,
    )
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    assert caught.value.problems == [
        f"{path}:2: delivery.tls_ca_file: expected a readable PEM file, but "
        f"{tmp_path / 'missing.pem'} does not exist",
        f"{path}:11: routes[1].tls_ca_file: expected a readable PEM file, but "
        f"{tmp_path} is not a regular file",
    ]


def test_config_check_reports_a_bad_route(tmp_path):
    path = write(tmp_path, '[[routes]]\ndomains = ["*"]\nnext_hop = "[10.0.0.5"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "mailwarden.cli.main", "config", "check", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"{path}:3: routes[0].next_hop: expected ']' to close the '['" in output


def test_docs_describe_every_delivery_key():
    docs = DOCS.read_text(encoding="utf-8")
    assert "## `[delivery]`" in docs and "## `[[routes]]`" in docs
    for model in (DeliverySettings, SourceAddressSettings, RouteSettings):
        for key in model.model_fields:
            assert f"| `{key}` |" in docs, f"{model.__name__}.{key} is not documented"


async def test_delivery_resolves_through_the_configured_dns_server(tmp_path, nsd: DnsServer):
    # As a worker does at start: [node] dns_servers / dns_timeout configure the resolver.
    path = write(tmp_path, f'[node]\ndns_servers = ["{nsd.address}"]\ndns_timeout = 2.0\n')
    config = load_config(path)
    dns.configure(config.node.dns_servers, config.node.dns_timeout)
    try:
        targets = await resolve_targets("order.delivery.test")
    finally:
        dns.configure()
    assert targets[0] == Target(10, "mx10.delivery.test", "192.0.2.10", 25)


def test_settings_can_be_built_in_code():
    source = SourceAddressSettings(address="192.0.2.1", helo="out.example")
    delivery = DeliverySettings(source_ips=[source], tls=TlsMode.REQUIRED)
    route = RouteSettings(domains=["*"], next_hop="[192.0.2.2]:2525")
    assert route.hop == NextHop("192.0.2.2", 2525, mx_lookup=False)
    assert route.tls_policy(delivery).mode is TlsMode.REQUIRED


def test_mta_sts_is_on_by_default_and_its_ca_file_must_be_readable(tmp_path):
    assert DeliverySettings().mta_sts is True
    path = write(tmp_path, '[delivery]\nmta_sts_ca_file = "missing.pem"\n')
    config = load_config(path)
    with pytest.raises(ConfigError) as caught:
        config.check_files()
    assert caught.value.problems == [
        f"{path}:2: delivery.mta_sts_ca_file: expected a readable PEM file, but "
        f"{tmp_path / 'missing.pem'} does not exist",
    ]
