"""Command-line parsing for smtpping, compatible with Halon's smtpping 1.1.

Parsing follows GNU getopt_long as 1.1 uses it: options and operands may be mixed,
long options may be abbreviated to a unique prefix, and the numeric options of 1.1 are
read like C's ``strtoul`` (leading digits, anything else counts as 0) so that every
command line 1.1 accepts means the same here. Options added beyond 1.1 are strict.
"""

from __future__ import annotations

import getopt
import re
from dataclasses import dataclass

VERSION = "1.1.4"

USAGE = """\
Usage: smtpping [ARGS] x@y.z [@server]
Where: x@y.z  is the address that will receive e-mail
       server is the address to connect to (optional)
       ARGS   is one or many of: (optional)
       -h, --help\tShow this help message
       -v, --version\tShow version
       -d, --debug\tShow more debugging
       -4\t\tUse IPv4
       -6\t\tUse IPv6
       -b, --bind\tBind source address
       -p, --port\tWhich TCP port to use [default: 25]
       -w, --wait\tTime to wait between PINGs [default: 1000] (ms)
       -c, --count\tNumber of messages [default: unlimited]
       -P, --parallel\tNumber of parallel workers [default: 1]
       -s, --size\tMessage size in kilobytes [default: 10] (KiB)
       -f, --file\tSend message file (RFC 822)
       -H, --helo\tHELO domain [default: localhost.localdomain]
       -S, --sender\tSender address [default: empty]
       -C, --chunking\tUse CHUNKING (BDAT)
       -r, --rate\tShow message rate per second
       -q, --quiet\tShow less output
       -J\t\tRun in jailed mode (forbid --file)

  Beyond 1.1 (Mailwarden):
       --ehlo\t\tSay EHLO instead of HELO
       --starttls\tUpgrade with STARTTLS after EHLO
       --tls\t\tImplicit TLS from the first byte (port 465 style)
       --tls-verify\tVerify the server certificate (--no-tls-verify: default)
       --cafile\tCA bundle for --tls-verify [default: system store]
       --tls-cert\tClient certificate (PEM), --tls-key its key
       --auth\t\tuser:password, AUTH PLAIN or LOGIN after EHLO
       --auth-mech\tPLAIN or LOGIN [default: first one the server offers]
       --rcpts\t\tRecipients per message [default: 1]
       --timeout\tSeconds to wait for a connect or a reply [default: 60]
       --duration\tStop after this many seconds
       --processes\tSpread the -P workers over N processes [default: 1]
       --percentiles\tAdd p50/p90/p99 and stddev to the statistics
       --json\t\tOne JSON object per ping and a summary object
       --no-progress\tNever draw the live progress line
       --scheduler\tbatch or normal CPU scheduling [default: batch with -r]

  If no @server is specified, smtpping will try to find the recipient domain's
  MX record, falling back on A/AAAA records.

  smtpping 1.1.4 compatible, Mailwarden edition
"""

SHORT_OPTIONS = "hvd46b:p:w:c:P:s:f:H:S:CrqJ"
LONG_OPTIONS = [
    "help",
    "version",
    "debug",
    "bind=",
    "port=",
    "wait=",
    "count=",
    "parallel=",
    "size=",
    "file=",
    "helo=",
    "sender=",
    "chunking",
    "rate",
    "quiet",
    "ehlo",
    "starttls",
    "tls",
    "tls-verify",
    "no-tls-verify",
    "cafile=",
    "tls-cert=",
    "tls-key=",
    "auth=",
    "auth-mech=",
    "rcpts=",
    "timeout=",
    "duration=",
    "processes=",
    "percentiles",
    "json",
    "no-progress",
    "scheduler=",
]


class UsageError(Exception):
    """The command line is not one smtpping accepts: print USAGE to stderr, exit 2."""


class HelpRequested(Exception):
    """-h was given: print USAGE to stdout, exit 0."""


class VersionRequested(Exception):
    """-v was given: print the version to stdout, exit 0."""


@dataclass(slots=True)
class Options:
    recipient: str = ""
    server: str | None = None
    port: str = "25"
    bind: str | None = None
    family: int = 0  # 0, 4 or 6
    wait_ms: int = 1000
    count: int = 0  # 0 means unlimited
    parallel: int = 0
    size_kib: int = 10
    file: str | None = None
    helo: str = "localhost.localdomain"
    sender: str = ""
    chunking: bool = False
    rate: bool = False
    quiet: bool = False
    jailed: bool = False
    debug: bool = False
    # beyond 1.1
    ehlo: bool = False
    starttls: bool = False
    implicit_tls: bool = False
    tls_verify: bool = False
    cafile: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    auth: tuple[str, str] | None = None
    auth_mech: str | None = None
    rcpts: int = 1
    timeout_s: float = 60.0
    duration_s: float | None = None
    processes: int = 1
    percentiles: bool = False
    json: bool = False
    progress: bool = True
    scheduler: str | None = None  # None: batch in rate mode, normal otherwise

    @property
    def workers(self) -> int:
        """Concurrent transactions: -P, or one when -P is 0 or absent (as in 1.1)."""
        return max(1, self.parallel)

    @property
    def batch_scheduling(self) -> bool:
        """Run as SCHED_BATCH: asked for, or by default when -r measures throughput."""
        return self.scheduler == "batch" or (self.scheduler is None and self.rate)

    @property
    def says_ehlo(self) -> bool:
        return self.ehlo or self.starttls or self.auth is not None


def strtoul(text: str) -> int:
    """Read a number the way C's strtoul(text, NULL, 10) does: garbage reads as 0."""
    match = re.match(r"\s*\+?(\d+)", text)
    return int(match.group(1)) if match else 0


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{name} needs a whole number, not {text!r}") from None
    if value < 1:
        raise UsageError(f"{name} must be at least 1")
    return value


def _positive_float(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{name} needs a number of seconds, not {text!r}") from None
    if value <= 0:
        raise UsageError(f"{name} must be greater than 0")
    return value


def parse_args(argv: list[str]) -> Options:
    """Turn argv (without the program name) into Options.

    Raises UsageError for anything 1.1 would answer with its usage text and exit 2
    (unknown option, missing operand, a second operand without '@', -J with -f, a
    recipient without a domain when no @server is given), and HelpRequested or
    VersionRequested for -h and -v.
    """
    if not argv:
        raise UsageError("no arguments")
    try:
        pairs, operands = getopt.gnu_getopt(argv, SHORT_OPTIONS, LONG_OPTIONS)
    except getopt.GetoptError as error:
        raise UsageError(str(error)) from None
    options = Options()
    for flag, value in pairs:
        _apply(options, flag, value)
    if options.jailed and options.file is not None:
        raise UsageError("-J forbids -f")
    if not operands:
        raise UsageError("expected a recipient and an optional @server")
    # Like 1.1, operands after @server are ignored.
    options.recipient = operands[0]
    if len(operands) == 2:
        if not operands[1].startswith("@"):
            raise UsageError("the server must be written @server")
        options.server = operands[1][1:]
    elif "@" not in options.recipient:
        raise UsageError("the recipient has no domain to look up")
    if options.starttls and options.implicit_tls:
        raise UsageError("--starttls and --tls exclude each other")
    if options.tls_key and not options.tls_cert:
        raise UsageError("--tls-key needs --tls-cert")
    return options


def _apply(options: Options, flag: str, value: str) -> None:
    match flag:
        case "-h" | "--help":
            raise HelpRequested
        case "-v" | "--version":
            raise VersionRequested
        case "-d" | "--debug":
            options.debug = True
        case "-4":
            options.family = 4
        case "-6":
            options.family = 6
        case "-b" | "--bind":
            options.bind = value
        case "-p" | "--port":
            options.port = value
        case "-w" | "--wait":
            options.wait_ms = strtoul(value)
        case "-c" | "--count":
            options.count = strtoul(value)
        case "-P" | "--parallel":
            options.parallel = strtoul(value)
        case "-s" | "--size":
            options.size_kib = strtoul(value)
        case "-f" | "--file":
            options.file = value
        case "-H" | "--helo":
            options.helo = value
        case "-S" | "--sender":
            options.sender = value
        case "-C" | "--chunking":
            options.chunking = True
        case "-r" | "--rate":
            # 1.1: the rate view replaces the per-ping lines.
            options.rate = True
            options.quiet = True
        case "-q" | "--quiet":
            options.quiet = True
        case "-J":
            options.jailed = True
        case "--ehlo":
            options.ehlo = True
        case "--starttls":
            options.starttls = True
        case "--tls":
            options.implicit_tls = True
        case "--tls-verify":
            options.tls_verify = True
        case "--no-tls-verify":
            options.tls_verify = False
        case "--cafile":
            options.cafile = value
        case "--tls-cert":
            options.tls_cert = value
        case "--tls-key":
            options.tls_key = value
        case "--auth":
            user, colon, password = value.partition(":")
            if not colon or not user:
                raise UsageError("--auth needs user:password")
            options.auth = (user, password)
        case "--auth-mech":
            mech = value.upper()
            if mech not in ("PLAIN", "LOGIN"):
                raise UsageError("--auth-mech is PLAIN or LOGIN")
            options.auth_mech = mech
        case "--rcpts":
            options.rcpts = _positive_int(flag, value)
        case "--timeout":
            options.timeout_s = _positive_float(flag, value)
        case "--duration":
            options.duration_s = _positive_float(flag, value)
        case "--processes":
            options.processes = _positive_int(flag, value)
        case "--percentiles":
            options.percentiles = True
        case "--json":
            options.json = True
        case "--no-progress":
            options.progress = False
        case "--scheduler":
            if value not in ("batch", "normal"):
                raise UsageError("--scheduler is batch or normal")
            options.scheduler = value
        case _:  # pragma: no cover - getopt only yields the flags listed above
            raise UsageError(f"unknown option {flag}")
