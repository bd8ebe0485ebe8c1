"""Real scanner daemons for the scanner tests: Debian's clamd, spamd and rspamd, each started on
a free loopback port with a configuration of its own in a temporary directory (never the system
services, never the distributions' signature or rule downloads), stopped afterwards. Also a
"silent" server that accepts connections and never answers, for the timeout tests.

The signatures and rules are written here, small enough that each daemon starts in about a
second: clamd gets one .ndb signature for the EICAR test file, spamd and rspamd detect GTUBE."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.support.node import free_port

from mailwarden.policy.context import Message, memory_body
from mailwarden.policy.headers import Headers

# The EICAR anti-virus test file (eicar.org): harmless, and detected by every scanner.
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# The Generic Test for Unsolicited Bulk Email: SpamAssassin's and rspamd's test pattern.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

CLAMD_SIGNATURE = "Mailwarden.Test.EICAR"
# clamd reads StreamMaxLength with a unit; the tests send more than this to see it refused.
CLAMD_STREAM_MAX = 1024 * 1024


def build(text: str, attachment: bytes | None = None, subject: str = "the file") -> bytes:
    """A message as a client sends it (CRLF line ends), with an attachment when given."""
    message = EmailMessage()
    message["From"] = "alice@sender.example"
    message["To"] = "bob@example.org"
    message["Subject"] = subject
    message["Date"] = "Thu, 03 Dec 2026 12:00:00 +0000"
    message["Message-ID"] = "<test.1@sender.example>"
    message.set_content(text)
    if attachment is not None:
        message.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="eicar.com"
        )
    return message.as_bytes().replace(b"\n", b"\r\n")


def as_message(raw: bytes) -> Message:
    """The object a data hook gets, for a message given as bytes."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return Message(Headers.parse(head + b"\r\n"), len(body), memory_body(body))


@asynccontextmanager
async def answering(reply: bytes) -> AsyncIterator[str]:
    """``127.0.0.1:PORT`` of a server that reads a little and answers ``reply``, then closes:
    something that is not the scanner the test expects there."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _wait_until(
    ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path
) -> None:
    deadline = time.monotonic() + 30
    while not ready():
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RuntimeError(f"{what} exited with {process.returncode}: {text[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after 30s: {log.read_text(errors='replace')}")
        time.sleep(0.05)


@dataclass
class ClamdServer:
    port: int
    socket_path: Path
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _clamd_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"zPING\0")
            return sock.recv(16) == b"PONG\0"
    except OSError:
        return False


@contextmanager
def clamd_server(directory: Path) -> Iterator[ClamdServer]:
    """clamd in the foreground on 127.0.0.1:PORT and a unix socket in ``directory``, with a
    database of one signature (the EICAR test string, as a ClamAV body signature, .ndb)."""
    database = directory / "db"
    database.mkdir()
    (database / "mailwarden-test.ndb").write_text(f"{CLAMD_SIGNATURE}:0:*:{EICAR.hex()}\n")
    port = free_port()
    socket_path = directory / "clamd.sock"
    log = directory / "clamd.log"
    config = directory / "clamd.conf"
    config.write_text(
        f"Foreground yes\n"
        f"DatabaseDirectory {database}\n"
        f"TemporaryDirectory {directory}\n"
        f"TCPSocket {port}\nTCPAddr 127.0.0.1\n"
        f"LocalSocket {socket_path}\n"
        f"StreamMaxLength {CLAMD_STREAM_MAX // 1024}K\n"
        f"LogFile {log}\nPidFile {directory / 'clamd.pid'}\n"
        # One scan at a time is all the tests need; fewer threads, faster start.
        "MaxThreads 2\nSelfCheck 0\n"
    )
    with open(directory / "clamd.out", "wb") as output:
        process = subprocess.Popen(
            ["clamd", "--config-file", str(config)], stdout=output, stderr=subprocess.STDOUT
        )
    try:
        _wait_until(lambda: _clamd_pong(port), process, "clamd", log)
        yield ClamdServer(port, socket_path, directory)
    finally:
        _stop(process)


@dataclass
class SpamdServer:
    port: int
    directory: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _spamd_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
            return sock.recv(64).startswith(b"SPAMD/1.5 0 PONG")
    except OSError:
        return False


# Our site configuration: the Check plugin (the one a scan needs), the default threshold, no
# Bayes and no auto-whitelist, so that a verdict depends on the rules alone.
SPAMD_INIT_PRE = "loadplugin Mail::SpamAssassin::Plugin::Check\n"
SPAMD_LOCAL_CF = "required_score 5.0\nuse_bayes 0\nbayes_auto_learn 0\n"
# Debian's spamassassin package ships its rules here (never sa-update in the tests).
SPAMD_RULES = "/usr/share/spamassassin"


@contextmanager
def spamd_server() -> Iterator[SpamdServer]:
    """spamd on 127.0.0.1:PORT with the rules Debian ships, our site configuration, local
    tests only (no DNS or network checks) and no user configuration; one child."""
    # As root spamd runs as another account (nobody) from the start, so its configuration must
    # be readable by it: under /tmp itself, not below pytest's root-only tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-spamd-"))
    account: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
        account = ["--username", "nobody"]
    try:
        site = directory / "site"
        site.mkdir(mode=0o755)
        (site / "init.pre").write_text(SPAMD_INIT_PRE)
        (site / "local.cf").write_text(SPAMD_LOCAL_CF)
        port = free_port()
        log = directory / "spamd.log"
        command = [
            *("spamd", "--configpath", SPAMD_RULES, "--siteconfigpath", str(site)),
            *("--local", "--nouser-config", "--listen", f"127.0.0.1:{port}", *account),
            *("--max-children", "1", "--min-children", "1"),
            *("--min-spare", "1", "--max-spare", "1"),
            *("--syslog", str(log), "--pidfile", str(directory / "spamd.pid")),
            f"--helper-home-dir={directory}",
        ]
        with open(directory / "spamd.out", "wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until(lambda: _spamd_pong(port), process, "spamd", directory / "spamd.out")
            yield SpamdServer(port, directory)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class RspamdServer:
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return (self.directory / "rspamd.log").read_text(errors="replace")


def _rspamd_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
            return b"pong" in sock.recv(512)
    except OSError:
        return False


# Debian's rspamd configuration and rules (/etc/rspamd/common.conf and what it includes), with
# options, logging and one normal worker of our own. The short public-suffix list and no
# Hyperscan keep the start at about two seconds (the full list is compiled for ~20 s); DNS goes
# to a closed loopback port, so network checks fail at once instead of waiting.
RSPAMD_CONF = """\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "{directory}/rspamd.pid";
    filters = "chartable,dkim,regexp";
    url_tld = "{directory}/tld.dat";
    disable_hyperscan = true;
    hs_cache_dir = "{directory}";
    allow_raw_input = true;
    local_addrs = [127.0.0.0/8];
    explicit_modules = ["settings"];
    task_timeout = 8s;
    dns {{ nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; sockets = 1; }}
}}
logging {{ type = "file"; filename = "{directory}/rspamd.log"; level = "info"; }}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    count = 1;
    .include "$CONFDIR/worker-normal.inc"
}}
"""


@contextmanager
def rspamd_server() -> Iterator[RspamdServer]:
    """rspamd in the foreground, its normal worker on 127.0.0.1:PORT (no controller, proxy or
    fuzzy worker), its state and logs in a new directory; no Redis, so no Bayes."""
    # As root rspamd runs its workers as Debian's _rspamd account, which must own the
    # directory: under /tmp itself, not below pytest's root-only tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-rspamd-"))
    account: list[str] = []
    try:
        port = free_port()
        (directory / "local").mkdir()  # LOCAL_CONFDIR: this machine's local.d is not read
        (directory / "tld.dat").write_text("com\norg\nnet\nexample\ntest\n")
        config = directory / "rspamd.conf"
        config.write_text(RSPAMD_CONF.format(directory=directory, port=port))
        if os.geteuid() == 0:
            account = ["-u", "_rspamd", "-g", "_rspamd"]
            rspamd_account = pwd.getpwnam("_rspamd")
            for path in (directory, *directory.rglob("*")):
                os.chown(path, rspamd_account.pw_uid, rspamd_account.pw_gid)
        variables = [f"--var={name}={directory}" for name in ("DBDIR", "RUNDIR", "LOGDIR")]
        command = [
            *("rspamd", "--no-fork", "--config", str(config), *account, *variables),
            f"--var=LOCAL_CONFDIR={directory / 'local'}",
        ]
        with open(directory / "rspamd.out", "wb") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until(lambda: _rspamd_pong(port), process, "rspamd", directory / "rspamd.log")
            yield RspamdServer(port, directory)
        finally:
            _stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def silent_server() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a socket that listens (the kernel completes the handshake) but is
    never read: a daemon that hangs."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def closed_port() -> str:
    """``127.0.0.1:PORT`` where nothing listens: a daemon that is down."""
    return f"127.0.0.1:{free_port()}"
