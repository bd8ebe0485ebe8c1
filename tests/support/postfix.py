"""A private Postfix instance (its own config, queue and data directories, ``postfix -c``)
that relays everything it receives on loopback to one next hop, so that Postfix's smtp(8)
client can be a real peer of a Mailwarden listener without touching /etc/postfix (which the
benchmarks' shared peer, ../shared/peers/postfix-relay.sh, reconfigures)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.node import free_port


def _postconf(config: Path, *args: str) -> None:
    subprocess.run(["postconf", "-c", str(config), *args], check=True, capture_output=True)


@contextmanager
def postfix_relay(next_hop_port: int, settings: tuple[str, ...] = ()) -> Iterator[tuple[int, Path]]:
    """Start Postfix relaying to ``[127.0.0.1]:next_hop_port`` with extra main.cf
    ``settings``; yields (its smtpd port, its directory: readable by the postfix user, for
    certificate files, with ``postfix.log``). Stops it and removes the directory after."""
    # Postfix's daemons run as the postfix user: a pytest tmp_path (0700, root) is out of reach.
    root = Path(tempfile.mkdtemp(prefix="mw-postfix-"))
    root.chmod(0o755)
    config, queue, data = root / "etc", root / "queue", root / "data"
    for directory in (config, queue, data):
        directory.mkdir()
    shutil.chown(data, "postfix")
    shutil.copy("/usr/share/postfix/main.cf.debian", config / "main.cf")
    shutil.copy("/usr/share/postfix/master.cf.dist", config / "master.cf")
    port = free_port()
    _postconf(
        config,
        "-e",
        f"queue_directory = {queue}",
        f"data_directory = {data}",
        "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4",
        "mydestination =",
        "mynetworks = 127.0.0.0/8",
        "relay_domains = static:ALL",
        f"relayhost = [127.0.0.1]:{next_hop_port}",
        "smtpd_recipient_restrictions = permit_mynetworks, reject",
        f"maillog_file = {root / 'postfix.log'}",
        "maillog_file_prefixes = /tmp",
        "compatibility_level = 3.6",
        "myhostname = postfix.test.example",
        f"syslog_name = postfix-{port}",
        *settings,
    )
    _postconf(config, "-M#", "smtp/inet")
    _postconf(config, "-M", f"{port}/inet={port} inet n - n - - smtpd")
    _postconf(config, "-F", "*/*/chroot = n")  # no copies of /etc inside the queue directory
    command = ["postfix", "-c", str(config)]
    try:
        subprocess.run([*command, "start"], check=True, capture_output=True, timeout=60)
        deadline = time.monotonic() + 15
        while not _accepts(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not open port {port}")
            time.sleep(0.1)
        yield port, root
    finally:
        subprocess.run([*command, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
