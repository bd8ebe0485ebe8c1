"""End to end: a real ``mailwarden run`` node whose policy script asks a DNS block list at
connect, with the resolver set by ``[node] dns_servers`` to nsd on loopback. Clients connect
from 127.0.0.x source addresses, some of them listed in the loopback zone."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.server.conftest import RawClient, wait_for_log, write_script
from tests.support.dns_server import DnsServer, silent_server
from tests.support.node import Node, free_port, node_process, write_config

SCRIPT = """
from mailwarden.lib import dns
from mailwarden.policy.actions import Defer, Reject


async def connect(conn):
    try:
        listed = await dns.dnsbl(conn.remote_ip, "bl.test")
    except dns.DnsError:
        raise Defer("DNSBL lookup failed, try again later", code=421, enhanced="4.4.3")
    if listed:
        codes = ",".join(listed.codes)
        raise Reject(f"{conn.remote_ip} listed by bl.test ({codes}): {listed.reason}",
                     code=554, enhanced="5.7.1")
"""


@contextmanager
def dns_node(directory: Path, dns_server: str, timeout: float = 3.0) -> Iterator[Node]:
    """A node running SCRIPT whose [node] table points the library at ``dns_server``."""
    port = free_port()
    config = write_config(directory, port, server=write_script(directory, SCRIPT))
    node_keys = f'dns_servers = ["{dns_server}"]\ndns_timeout = {timeout}\n'
    config.write_text(config.read_text().replace("[node]\n", "[node]\n" + node_keys, 1))
    with node_process(directory, config, port) as node:
        yield node


def first_reply(port: int, source: str) -> str:
    """What a client connecting from ``source`` (a 127.0.0.x address) is greeted with."""
    with RawClient(port, source=source) as client:
        reply = client.read_reply()
    return f"{reply.code} {reply.text}"


def test_listed_client_is_rejected_at_connect(tmp_path: Path, nsd: DnsServer) -> None:
    with dns_node(tmp_path, nsd.address) as node:
        listed = first_reply(node.port, "127.0.0.2")
        assert listed.startswith("554 5.7.1 127.0.0.2 listed by bl.test (127.0.0.2): listed:")
        several = first_reply(node.port, "127.0.0.4")
        assert several.startswith("554 5.7.1 127.0.0.4 listed by bl.test (127.0.0.2,127.0.0.4)")
        assert first_reply(node.port, "127.0.0.3").startswith("220 ")


def test_unanswered_dnsbl_lookup_defers(tmp_path: Path) -> None:
    # A 4xx before the greeting is 421 and closes (RFC 5321 §3.1, §4.2.2).
    with silent_server() as address, dns_node(tmp_path, address, 0.5) as node:
        assert first_reply(node.port, "127.0.0.2").startswith(
            "421 4.4.3 DNSBL lookup failed, try again later"
        )


def test_reload_points_the_library_at_new_dns_servers(tmp_path: Path, nsd: DnsServer) -> None:
    with silent_server() as address, dns_node(tmp_path, address, 0.5) as node:
        assert first_reply(node.port, "127.0.0.2").startswith("421 ")
        node.config_path.write_text(node.config_path.read_text().replace(address, nsd.address))
        node.signal(signal.SIGHUP)
        wait_for_log(node, "configuration and scripts reloaded")
        assert first_reply(node.port, "127.0.0.2").startswith("554 5.7.1 127.0.0.2 listed")
