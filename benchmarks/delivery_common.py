"""Shared pieces of the delivery benchmarks (relay.py, drain.py): the sink, the two servers under
test, their queues, their CPU and memory, and the report.

The sink is Postfix's ``smtp-sink -c`` on a free loopback port: it prints its own running
counters (``sess=N quit=N mesg=N``, one record per finished session, QUIT or final ".") into a
file, so counting delivered messages costs the sink nothing extra and the benchmark only reads
the file's last bytes.

CPU of a server is the user plus system time of every process of its tree (Mailwarden: the
``mailwarden run`` supervisor and its workers; Postfix: the ``master`` daemon and all its
children: smtpd, cleanup, qmgr, trivial-rewrite, smtp, postlogd, ...) plus the time of the
children those processes already reaped (``cutime``/``cstime`` of /proc/PID/stat), so a
Postfix daemon that exits during the measurement still counts. Sampled before and after; the
difference is the measurement's (to a clock tick, 10 ms, per process). Not counted: the load
generator, the sink and this script.

Memory, sampled every half second and at the end: the largest sum of the tree's proportional
set sizes (PSS: a page shared by n processes counts 1/n in each, so Postfix's many small
daemons are not charged their shared libraries over and over) and the largest peak RSS
(VmHWM) of any one process of the tree (for Mailwarden: a worker, comparable with the
README's receiving figure).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from common import PEERS, ROOT, process_tree, wait_for_port

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SENDER = "bench@source.example"
HELO = "source.example"
POLL = 0.05  # seconds between looks at the sink's counters
MEMORY_EVERY = 0.5  # seconds between samples of the server's memory
TICKS = os.sysconf("SC_CLK_TCK")


class BenchmarkError(Exception):
    """A measurement that could not complete; the message says what was seen."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def log(text: str) -> None:
    """Progress goes to stderr, so that --json leaves stdout one JSON document."""
    print(text, file=sys.stderr, flush=True)


# --- the sink --------------------------------------------------------------------------------

_COUNTERS = re.compile(rb"sess=(\d+) quit=\d+ mesg=(\d+)")


@dataclass(frozen=True)
class SinkCount:
    sessions: int  # SMTP sessions that ended
    messages: int  # final "." received (one recipient per message: messages delivered)


class Sink:
    """smtp-sink with running counters, on a free loopback port, for the whole benchmark."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.counters = directory / "sink-counters"
        user = ["-u", "root"] if os.geteuid() == 0 else []
        with open(self.counters, "wb") as out:
            self.process = subprocess.Popen(
                [SMTP_SINK, *user, "-c", f"127.0.0.1:{self.port}", "256"],
                stdout=out,
                stderr=subprocess.DEVNULL,
            )
        wait_for_port(self.port)

    def count(self) -> SinkCount:
        """The latest complete counter record (each ends with a carriage return)."""
        with open(self.counters, "rb") as counters:
            counters.seek(max(0, counters.seek(0, os.SEEK_END) - 256))
            tail = counters.read()
        complete = tail.rpartition(b"\r")[0].rpartition(b"\r")[2]
        match = _COUNTERS.search(complete)
        if match is None:
            return SinkCount(0, 0)
        return SinkCount(int(match[1]), int(match[2]))

    def open_sessions(self) -> int:
        """Established connections to the sink now (/proc/net/tcp, state 01, local port)."""
        port = f":{self.port:04X}"
        with open("/proc/net/tcp") as table:
            next(table)
            return sum(
                1 for row in map(str.split, table) if row[1].endswith(port) and row[3] == "01"
            )

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- process trees ---------------------------------------------------------------------------


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root``'s tree: each process's own and its reaped children's."""
    ticks = 0
    for pid in process_tree(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
        ticks += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return ticks / TICKS


@dataclass(frozen=True)
class Memory:
    pss_kib: int  # the tree's proportional set sizes summed: shared pages split among sharers
    largest_hwm_kib: int  # the largest peak RSS (VmHWM) of one process of the tree

    def peak(self, other: Memory) -> Memory:
        return Memory(
            max(self.pss_kib, other.pss_kib), max(self.largest_hwm_kib, other.largest_hwm_kib)
        )


def tree_memory(root: int) -> Memory:
    pss = hwm = 0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            pss += _kib_field(Path(f"/proc/{pid}/smaps_rollup").read_text(), "Pss")
            hwm = max(hwm, _kib_field(Path(f"/proc/{pid}/status").read_text(), "VmHWM"))
    return Memory(pss, hwm)


def _kib_field(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0  # a zombie has no memory left


def children_cpu() -> float:
    """CPU seconds of this benchmark's reaped children (the release commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the servers under test ------------------------------------------------------------------


class Server(Protocol):
    name: str
    port: int

    def root_pid(self) -> int: ...
    def pending(self) -> int: ...
    def confirm_empty(self) -> str | None: ...
    def stop(self) -> None: ...


@dataclass
class MailwardenNode:
    """``mailwarden run`` of this checkout with a default configuration, plus one route that
    sends every domain to the sink (and, for the drain, a policy script), in a temp directory."""

    sink_port: int
    script: str | None = None  # policy script text
    name: str = "mailwarden"
    port: int = field(default_factory=free_port)

    def __post_init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mailwarden-delivery-bench-"))
        self.config = self.directory / "mailwarden.toml"
        self.config.write_text(self._config_text())
        self.env = dict(os.environ)
        source = str(ROOT / "src")  # measure this checkout, whatever copy is installed
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, self.env.get("PYTHONPATH")]))
        self.log = open(self.directory / "mailwarden.log", "wb")  # noqa: SIM115 - node's lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailwarden.cli.main", "run", "--config", str(self.config)],
            cwd=self.directory,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_listening()

    def _wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.1)
        self.stop()
        output = (self.directory / "mailwarden.log").read_text(errors="replace").strip()
        raise BenchmarkError(f"mailwarden run did not start ({self.directory}):\n{output}")

    def _config_text(self) -> str:
        script_line = ""
        if self.script is not None:
            path = self.directory / "policy.py"
            path.write_text(self.script)
            script_line = f'script = "{path}"'
        user_line = 'user = "root"' if os.geteuid() == 0 else ""
        return textwrap.dedent(
            f"""\
            # The defaults of `mailwarden run`, plus what a benchmark needs: its data directory,
            # its port, one route to the sink{" and the policy script" if script_line else ""}.
            [node]
            data_dir = "{self.directory / "data"}"
            {user_line}

            [[servers]]
            id = "bench"
            listen = ["127.0.0.1:{self.port}"]
            {script_line}

            [[routes]]
            domains = ["*"]
            next_hop = "[127.0.0.1]:{self.sink_port}"
            """
        )

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mailwarden.cli.main", *arguments, "--config", str(self.config)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )

    def root_pid(self) -> int:
        return self.process.pid

    def _count(self, where: str) -> int:
        total = 0
        for shard in sorted((self.directory / "data" / "spool").glob("shard-*.db")):
            with contextlib.closing(sqlite3.connect(f"file:{shard}?mode=ro", uri=True)) as db:
                query = f"SELECT count(DISTINCT message_id) FROM recipients WHERE {where}"
                total += db.execute(query).fetchone()[0]
        return total

    def pending(self) -> int:
        """Messages with a recipient that is not final (delivered, bounced, discarded)."""
        return self._count("state NOT IN ('delivered', 'bounced', 'discarded')")

    def held(self) -> int:
        return self._count("state = 'held'")

    def confirm_empty(self) -> str | None:
        """``mailwarden queue list --json``: None when no message waits, else what is left."""
        listed = self.cli("queue", "list", "--json")
        if listed.returncode != 0:
            return f"queue list failed: {listed.stderr.strip()}"
        final = {"delivered", "bounced", "discarded"}
        waiting = [
            m["id"]
            for m in json.loads(listed.stdout or "[]")
            if any(r["state"] not in final for r in m["recipients"])
        ]
        return f"{len(waiting)} message(s) still queued" if waiting else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


POSTFIX_QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


@dataclass
class PostfixRelay:
    """The shared peer ../shared/peers/postfix-relay.sh: Postfix relaying everything to the sink
    (relayhost), with its defaults otherwise (connection cache, 20 connections per destination)."""

    sink_port: int
    name: str = "postfix"
    port: int = 2602
    # main.cf settings of this benchmark, made before Postfix starts so that every daemon has
    # them (a reload leaves an already running smtpd on the old ones for a while). drain.py
    # holds mail with smtpd_data_restrictions; otherwise it is empty (Postfix's default), so
    # that an interrupted drain run leaves nothing behind for the next one.
    settings: tuple[str, ...] = ("smtpd_data_restrictions =",)

    def __post_init__(self) -> None:
        script = PEERS / "postfix-relay.sh"
        hop = f"[127.0.0.1]:{self.sink_port}"
        # postconf -e needs a main.cf; on a fresh machine the peer script would make it only
        # after this, so make it the same way first (Debian's default, as the script does).
        main_cf = Path("/etc/postfix/main.cf")
        if not main_cf.exists() or not main_cf.stat().st_size:
            shutil.copy("/usr/share/postfix/main.cf.debian", main_cf)
        subprocess.run(["postconf", "-e", *self.settings], check=True)
        subprocess.run(["bash", str(script), str(self.port), hop], check=True)
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)  # earlier runs' mail
        self.queue_directory = Path(postconf("queue_directory"))

    def root_pid(self) -> int:
        return int((self.queue_directory / "pid" / "master.pid").read_text().strip())

    def count(self, *queues: str) -> int:
        """Queue files in the named queues (read from the directories: asks no Postfix daemon)."""
        total = 0
        for queue in queues:
            for _, _, files in os.walk(self.queue_directory / queue):
                total += len(files)
        return total

    def pending(self) -> int:
        return self.count(*POSTFIX_QUEUES)

    def confirm_empty(self) -> str | None:
        """``postqueue -j`` prints one JSON line per queued message: None when it prints none."""
        listed = subprocess.run(["postqueue", "-j"], capture_output=True, text=True)
        lines = [line for line in listed.stdout.splitlines() if line.strip()]
        return f"{len(lines)} message(s) still queued" if lines else None

    def stop(self) -> None:
        subprocess.run(["postsuper", "-d", "ALL"], capture_output=True)
        subprocess.run(["postfix", "stop"], capture_output=True)


def postconf(name: str) -> str:
    done = subprocess.run(["postconf", "-h", name], check=True, capture_output=True, text=True)
    return done.stdout.strip()


# --- load ------------------------------------------------------------------------------------


def smtp_source(
    port: int, *, messages: int, sessions: int, size: int, recipient: str, reuse: bool = False
) -> subprocess.Popen[bytes]:
    """Postfix's smtp-source: ``messages`` of ``size`` payload bytes, ``sessions`` in parallel,
    one recipient each; ``reuse`` (-d) sends them all over the same connections."""
    argv = [SMTP_SOURCE, *("-s", str(sessions), "-l", str(size), "-m", str(messages))]
    argv += ["-f", SENDER, "-t", recipient, "-M", HELO]
    if reuse:
        argv.append("-d")
    return subprocess.Popen(
        [*argv, f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def finish_source(source: subprocess.Popen[bytes], server: str) -> None:
    _, error = source.communicate()
    if source.returncode != 0:
        text = error.decode(errors="replace").strip()
        raise BenchmarkError(f"{server}: smtp-source failed ({source.returncode}): {text}")


# --- one measurement -------------------------------------------------------------------------


@dataclass
class Run:
    """One timed measurement of one server."""

    server: str
    round: int
    seconds: float  # from the start (first message, or the release) to empty and all delivered
    messages: int  # messages sent (relay) or queued (drain)
    delivered: int  # messages the sink received during the measurement (more: duplicates)
    connections: int  # SMTP sessions opened to the sink during the measurement
    cpu_seconds: float  # the server's processes (plus the release commands, for the drain)
    peak_pss_kib: int  # the largest summed PSS of the server's processes seen
    peak_process_rss_kib: int  # the largest VmHWM of one of its processes
    accepted_seconds: float | None = None  # relay: when smtp-source had handed over everything

    @property
    def rate(self) -> float:
        """Messages delivered per second, each counted once."""
        return self.messages / self.seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return self.cpu_seconds * 1000 / self.messages


class Measurement:
    """One server's clock, sink counters, CPU and memory, from construction until
    ``wait_delivered`` returns: construct it right before the first message (or the release)."""

    def __init__(self, server: Server, sink: Sink) -> None:
        self.server = server
        self.sink = sink
        self.before = sink.count()
        self.open_before = sink.open_sessions()
        self.memory = tree_memory(server.root_pid())
        self.children_before = children_cpu()
        self.cpu_before = tree_cpu(server.root_pid())
        self.started = time.monotonic()

    def wait_delivered(
        self,
        expected: int,
        *,
        stall: float,
        round_number: int,
        while_waiting: Callable[[], float | None] | None = None,
    ) -> Run:
        """Until the sink has ``expected`` more messages and the server's queue is empty.

        ``while_waiting`` is polled until it returns a time (e.g. when smtp-source finished).
        Raises BenchmarkError when the sink's counters do not move for ``stall`` seconds.
        """
        accepted: float | None = None
        last_progress = last_memory = time.monotonic()
        last_count = count = self.before
        delivered = 0
        while delivered < expected or self.server.pending():
            time.sleep(POLL)
            now = time.monotonic()
            count = self.sink.count()
            delivered = count.messages - self.before.messages
            if while_waiting is not None and accepted is None:
                accepted = while_waiting()
            if count != last_count:
                last_progress, last_count = now, count
            elif now - last_progress > stall:
                raise BenchmarkError(self._stalled(delivered, expected, stall))
            if now - last_memory >= MEMORY_EVERY:
                last_memory = now
                self.memory = self.memory.peak(tree_memory(self.server.root_pid()))
        seconds = time.monotonic() - self.started
        cpu = tree_cpu(self.server.root_pid()) - self.cpu_before
        cpu += children_cpu() - self.children_before
        memory = self.memory.peak(tree_memory(self.server.root_pid()))
        # Sessions that ended, plus those still open (a connection cache keeps them), minus
        # those that were open before: the connections opened during the measurement.
        ended = count.sessions - self.before.sessions
        return Run(
            server=self.server.name,
            round=round_number,
            seconds=seconds,
            messages=expected,
            delivered=delivered,
            connections=ended + self.sink.open_sessions() - self.open_before,
            cpu_seconds=cpu,
            peak_pss_kib=memory.pss_kib,
            peak_process_rss_kib=memory.largest_hwm_kib,
            accepted_seconds=accepted,
        )

    def _stalled(self, delivered: int, expected: int, stall: float) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"{self.server.name}: timed out: the sink saw nothing for {stall:.0f} s; after "
            f"{elapsed:.0f} s {delivered} of {expected} message(s) were delivered and "
            f"{self.server.pending()} still queued (does this server deliver its queue yet?)"
        )


# --- rounds ----------------------------------------------------------------------------------


def fail(server: Server, when: str, error: BenchmarkError, failures: dict[str, str]) -> None:
    """Record the failure and stop the server at once: mail it delivered late would count at
    the sink for the other server."""
    failures[server.name] = str(error)
    log(f"{when}: {error}")
    server.stop()


def interleaved(
    servers: Sequence[Server],
    repeat: int,
    measure: Callable[[Server, int], Run],
    failures: dict[str, str],
) -> list[Run]:
    """``repeat`` rounds over ``servers``, the order reversed every other round so that neither
    always runs first; a server that failed once is not measured again."""
    runs: list[Run] = []
    for round_number in range(1, repeat + 1):
        for server in servers if round_number % 2 else servers[::-1]:
            if server.name in failures:
                continue
            try:
                run = measure(server, round_number)
            except BenchmarkError as error:
                fail(server, f"round {round_number}", error, failures)
                continue
            runs.append(run)
            if run.delivered != run.messages:
                log(f"{server.name}: {run.delivered} deliveries at the sink for {run.messages}")
            log(
                f"round {round_number} {server.name:10s} {run.seconds:6.2f} s "
                f"({run.rate:6.0f} msg/s, {run.cpu_ms_per_message:.3f} ms CPU/msg, "
                f"{run.connections} connections"
                + (f", accepted in {run.accepted_seconds:.2f} s)" if run.accepted_seconds else ")")
            )
    return runs


def stop_all(servers: Sequence[Server], failures: dict[str, str]) -> None:
    for server in servers:
        server.stop()
        if isinstance(server, MailwardenNode):
            if server.name in failures:
                log(f"mailwarden's directory is kept for a look: {server.directory}")
            else:
                server.remove()


def wait_until(done: Callable[[], bool], what: Callable[[], str], stall: float) -> None:
    """Poll ``done`` until it is true; BenchmarkError with ``what()`` when the state ``what()``
    describes has not changed for ``stall`` seconds."""
    last, since = what(), time.monotonic()
    while not done():
        time.sleep(0.2)
        now, seen = time.monotonic(), what()
        if seen != last:
            last, since = seen, now
        elif now - since > stall:
            raise BenchmarkError(f"no change for {stall:.0f} s: {seen}")


# --- the report ------------------------------------------------------------------------------


def describe_run(**settings: object) -> dict[str, object]:
    """What a report row needs besides the figures: the date and the measured commit."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d", time.gmtime()), "commit": commit, **settings}


def medians(runs: Sequence[Run]) -> dict[str, float | None]:
    with_connections = [r for r in runs if r.connections > 0]
    accepted = [r.accepted_seconds for r in runs if r.accepted_seconds is not None]
    return {
        "seconds": statistics.median(r.seconds for r in runs),
        "messages_per_second": statistics.median(r.rate for r in runs),
        "accepted_seconds": statistics.median(accepted) if accepted else None,
        "cpu_ms_per_message": statistics.median(r.cpu_ms_per_message for r in runs),
        "peak_pss_mib": max(r.peak_pss_kib for r in runs) / 1024,
        "peak_process_rss_mib": max(r.peak_process_rss_kib for r in runs) / 1024,
        "messages_per_connection": statistics.median(
            r.messages / r.connections for r in with_connections
        )
        if with_connections
        else None,
    }


# The table's columns: heading, the key in medians(), and how a value is written.
COLUMNS: list[tuple[str, str, str]] = [
    ("time to empty", "seconds", "{:.2f} s"),
    ("delivered msg/s", "messages_per_second", "{:,.0f}"),
    ("all accepted after", "accepted_seconds", "{:.2f} s"),
    ("CPU per delivered message", "cpu_ms_per_message", "{:.3f} ms"),
    ("peak memory (PSS, all processes)", "peak_pss_mib", "{:.1f} MiB"),
    ("largest process peak RSS", "peak_process_rss_mib", "{:.1f} MiB"),
    ("messages per connection", "messages_per_connection", "{:.1f}"),
]


def report(
    title: str,
    runs: Sequence[Run],
    failures: dict[str, str],
    *,
    as_json: bool,
    settings: dict[str, object],
) -> None:
    """Per-server medians and the ratio Mailwarden / Postfix of the median delivered rates, as a
    Markdown table like the README's Performance section, or as one JSON document."""
    servers = list(dict.fromkeys(r.server for r in runs))
    summary = {name: medians([r for r in runs if r.server == name]) for name in servers}
    ratio = None
    if "mailwarden" in summary and "postfix" in summary:
        ratio = _rate(summary["mailwarden"]) / _rate(summary["postfix"])
    if as_json:
        document = {
            "benchmark": title,
            "settings": settings,
            "runs": [asdict(r) for r in runs],
            "medians": summary,
            "mailwarden_over_postfix": ratio,
            "failures": failures,
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    shown = [c for c in COLUMNS if any(m[c[1]] is not None for m in summary.values())]
    columns = shown or COLUMNS
    print(f"{title}: {', '.join(f'{k}={v}' for k, v in settings.items())}")
    print()
    print("| server | " + " | ".join(heading for heading, _, _ in columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for name, m in summary.items():
        cells = ["" if m[key] is None else form.format(m[key]) for _, key, form in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, reason in failures.items():
        print(f"| {name} | failed: {' '.join(reason.split())} |" + " |" * (len(columns) - 1))
    print()
    if ratio is not None:
        print(f"Mailwarden / Postfix (median delivered msg/s) = **{ratio:.2f}**")
    rounds = max((r.round for r in runs), default=0)
    print(f"Medians over {rounds} interleaved round(s); memory figures are the largest seen.")


def _rate(summary: dict[str, float | None]) -> float:
    rate = summary["messages_per_second"]
    assert rate is not None  # every run has one
    return rate
