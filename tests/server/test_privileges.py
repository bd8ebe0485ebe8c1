"""Running as a service: the node binds as root, then serves as ``node.user``; it refuses to
serve as root unless told to; it tells the service manager (sd_notify) where it is.

As root (CI) these tests create a real system account, ``mailwarden-test``, and check what the
kernel says about the workers. Run without root they check the unprivileged path instead:
the node runs as whoever started it.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.conftest import (
    RawClient,
    only_message,
    send_transaction,
    split_received,
    stored_bytes,
    wait_for_log,
    wait_until,
)
from tests.support.node import (
    free_port,
    node_process,
    proc_ids,
    run_cli,
    worker_pids,
    write_config,
)

TEST_USER = "mailwarden-test"
IS_ROOT = os.geteuid() == 0


@pytest.fixture(scope="module")
def account() -> pwd.struct_passwd:
    """As root: the unprivileged system account the node drops to (created if missing).
    Otherwise: the account running the tests."""
    if not IS_ROOT:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
            check=True,
        )
        return pwd.getpwnam(TEST_USER)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged account can reach (pytest's tmp_path sits under a 0700
    directory of root's)."""
    directory = Path(tempfile.mkdtemp(prefix="mailwarden-priv-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _config(directory: Path, port: int, workers: int, node: str, server: str = "") -> Path:
    path = write_config(directory, port, server=server)
    text = path.read_text().replace('user = "root"\n', "")
    text = text.replace("workers = 1\n", f"workers = {workers}\n{node}\n")
    path.write_text(text)
    return path


UID_SCRIPT = """\
import os
from pathlib import Path

# Top-level code: runs when the script is loaded, which must be after the drop.
Path(__file__).with_name("out").joinpath(f"loaded-{os.getpid()}").write_text(
    f"{os.getuid()} {os.geteuid()} {os.getgid()}"
)
"""


def _serving_processes(node_pid: int, workers: int) -> list[int]:
    return [node_pid] if workers == 1 else worker_pids(node_pid)


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_serve_as_node_user(
    shared_dir: Path, account: pwd.struct_passwd, workers: int
) -> None:
    (shared_dir / "policy.py").write_text(UID_SCRIPT)
    out = shared_dir / "out"
    out.mkdir()
    out.chmod(0o777)  # the script writes here as the unprivileged account
    port = free_port()
    node_key = f'user = "{account.pw_name}"'
    config = _config(shared_dir, port, workers, node_key, server='script = "policy.py"\n')
    with node_process(shared_dir, config, port) as node:
        for index in range(workers):
            wait_for_log(node, f"worker {index}: server inbound listening")
        serving = _serving_processes(node.process.pid, workers)
        assert len(serving) == workers
        for pid in serving:
            uids, gids, groups = proc_ids(pid)
            assert uids == [account.pw_uid] * 4, (pid, uids)
            assert gids == [account.pw_gid] * 4, (pid, gids)
            assert 0 not in groups or account.pw_uid == 0, groups  # root's groups are shed
        if workers > 1 and IS_ROOT:
            # The supervisor stays root, to fork replacements that bind port 25 again.
            assert proc_ids(node.process.pid)[0][1] == 0
        # Each script load ran as the account, in the serving processes only.
        loads = {path.name: path.read_text() for path in out.iterdir()}
        wanted = f"{account.pw_uid} {account.pw_uid} {account.pw_gid}"
        assert loads == {f"loaded-{pid}": wanted for pid in serving}, loads

        # It still listens on its port and queues mail.
        with RawClient(port) as client:
            client.greeting()
            client.ehlo()
            data = b"Subject: dropped\r\n\r\nserved unprivileged\r\n"
            reply = send_transaction(client, "a@client.test", ["user@example.org"], data)
            assert reply.code == 250, reply
        _, stored = split_received(stored_bytes(node, only_message(node).id))
        assert stored == data
        for directory in (node.spool, node.spool.parent, node.spool / "data"):
            assert directory.stat().st_uid == account.pw_uid, directory
        for shard in node.spool.glob("shard-*.db"):
            assert shard.stat().st_uid == account.pw_uid, shard
        assert node.stop() == 0, node.log()


def test_root_without_node_user_is_refused_naming_the_key(
    shared_dir: Path, account: pwd.struct_passwd
) -> None:
    port = free_port()
    config = _config(shared_dir, port, 1, "")
    if IS_ROOT:
        result = run_cli("run", "--config", str(config))
        output = result.stdout + result.stderr
        assert result.returncode == 1, output
        assert "mailwarden.toml" in output and "node.user" in output
        assert "useradd --system mailwarden" in output and 'user = "root"' in output
        assert "Traceback" not in output
        assert not (shared_dir / "data").exists()  # nothing was started
        return
    # Not root: the node runs as the invoking account with node.user unset.
    with node_process(shared_dir, config, port) as node:
        assert proc_ids(node.process.pid)[0] == [account.pw_uid] * 4
        assert node.stop() == 0


def test_unknown_node_user_is_refused(shared_dir: Path) -> None:
    config = _config(shared_dir, free_port(), 1, 'user = "no-such-account-here"')
    result = run_cli("run", "--config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "node.user" in output and "no-such-account-here" in output


def test_script_errors_surface_from_the_unprivileged_workers(
    shared_dir: Path, account: pwd.struct_passwd
) -> None:
    """With an unprivileged node.user the supervisor never imports the script (it would run
    as root): the workers load it after the drop and report what failed."""
    marker = shared_dir / "out"
    marker.mkdir()
    marker.chmod(0o777)
    (shared_dir / "policy.py").write_text(
        textwrap.dedent(
            """\
            import os
            from pathlib import Path
            Path(__file__).with_name("out").joinpath(str(os.getpid())).write_text(str(os.getuid()))
            raise RuntimeError("broken at import")
            """
        )
    )
    node_key = f'user = "{account.pw_name}"'
    config = _config(shared_dir, free_port(), 2, node_key, server='script = "policy.py"\n')
    result = run_cli("run", "--config", str(config))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "policy.py" in output and "broken at import" in output
    assert "restarting" not in output
    uids = {path.read_text() for path in marker.iterdir()}
    assert uids == {str(account.pw_uid)}, uids  # never imported as root


# --- sd_notify ---------------------------------------------------------------------------


class NotifySocket:
    """The service manager's end: an abstract AF_UNIX datagram socket."""

    def __init__(self) -> None:
        self.name = f"@mailwarden-test-{secrets.token_hex(8)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.settimeout(15)

    def next(self) -> dict[str, str]:
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sd_notify_ready_reloading_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    manager = NotifySocket()
    monkeypatch.setenv("NOTIFY_SOCKET", manager.name)
    port = free_port()
    config = write_config(tmp_path, port)
    config.write_text(config.read_text().replace("workers = 1\n", f"workers = {workers}\n"))
    try:
        with node_process(tmp_path, config, port, wait=False) as node:
            ready = manager.next()
            assert ready["READY"] == "1"
            assert ready["MAINPID"] == str(node.process.pid)
            # READY=1 only once every worker listens.
            assert node.log().count("server inbound listening") == workers
            with RawClient(port) as client:
                client.greeting()

            node.signal(signal.SIGHUP)
            reloading = manager.next()
            assert reloading["RELOADING"] == "1"
            monotonic_usec = int(reloading["MONOTONIC_USEC"])
            assert 0 < monotonic_usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert manager.next() == {"READY": "1"}
            wait_until(
                lambda: node.log().count("configuration and scripts reloaded") == workers,
                "every worker reloaded",
            )

            node.signal(signal.SIGTERM)
            assert manager.next() == {"STOPPING": "1"}
            assert node.process.wait(timeout=30) == 0
    finally:
        manager.close()
