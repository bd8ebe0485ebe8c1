"""Random and mutated command streams against one live node, over real sockets.

For every example: the node does not crash (it still takes a normal transaction afterwards),
does not hang (after the client half-closes, the connection ends within a generous timeout),
and everything it sends is well-formed SMTP replies: CRLF-terminated lines of printable ASCII,
``<code><space or dash><text>`` with a 2xx-5xx code, at most 512 octets (RFC 5321
§4.5.3.1.5), the same code on every line of a multi-line reply.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import smtplib
import socket
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tests.durability.conftest import node_with_config
from tests.support.node import Node

REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])([ -])[\x20-\x7e]*\r\n")
SOCKET_TIMEOUT = 15.0  # generous: a hang shows up as this timeout, not as a slow test
QUIET_TIME = 0.15  # how long the server may stay silent before the client half-closes


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    directory = tmp_path_factory.mktemp("fuzz")
    # BDAT chunks up to the message size may be declared: keep that small so that a random
    # BDAT size is often fully sent, and the errors cap at its default.
    with node_with_config(directory, limits="message_size = 65536") as running:
        yield running
        assert running.stop() == 0, running.log()


# --- the streams -------------------------------------------------------------------------

line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r", b""])
words = st.sampled_from(
    [b"client.test", b"[127.0.0.1]", b"<a@example.org>", b"<>", b"user@example.org", b"x" * 300]
)
garbage = st.binary(min_size=1, max_size=300)
text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40).map(
    lambda s: s.encode("utf-8")
)


@st.composite
def commands(draw: st.DrawFn) -> bytes:
    """One command line, valid or nearly so, with a chosen line ending."""
    verb = draw(
        st.sampled_from(
            [
                b"EHLO client.test",
                b"HELO client.test",
                b"MAIL FROM:<sender@client.test>",
                b"MAIL FROM:<sender@client.test> SIZE=1000 BODY=8BITMIME",
                b"MAIL FROM:<>",
                b"MAIL FROM:<sender@client.test> SIZE=99999999999",
                b"MAIL FROM:<s\xc3\xa9nder@client.test> SMTPUTF8",
                b"RCPT TO:<user@example.org>",
                b"RCPT TO:<user@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y",
                b"RCPT TO:<relay@elsewhere.test>",
                b"RCPT TO:<postmaster>",
                b"RCPT TO:<a%b@example.org>",
                b"DATA",
                b"RSET",
                b"NOOP",
                b"HELP",
                b"VRFY user",
                b"STARTTLS",
                b"AUTH PLAIN AGF1c2VyAHBhc3M=",
                b"AUTH LOGIN",
                b"*",
                b"QUIT",
                b"mail from:<Sender@Client.Test>",
                b"EHLO",
                b"MAIL",
                b"RCPT",
            ]
        )
    )
    suffix = draw(st.one_of(st.just(b""), words.map(lambda w: b" " + w), text))
    return verb + suffix + draw(line_ends)


@st.composite
def message_data(draw: st.DrawFn) -> bytes:
    """Message content after DATA: lines with odd endings, dots, NULs, smuggling vectors."""
    parts = draw(
        st.lists(
            st.one_of(
                text.map(lambda t: t + b"\r\n"),
                st.sampled_from(
                    [
                        b"Subject: fuzz\r\n",
                        b"\r\n",
                        b"..leading dot\r\n",
                        b"\n.\n",
                        b"\n.\r\n",
                        b"\r.\n",
                        b"\r\n.\n",
                        b"\r\n.\r",
                        b"\r\n\x00.\r\n",
                        b"line with NUL \x00 inside\r\n",
                        b"x" * 1200 + b"\r\n",
                    ]
                ),
                garbage,
            ),
            max_size=8,
        )
    )
    end = draw(st.sampled_from([b".\r\n", b"\r\n.\r\n", b".\n", b"", b".\r\nQUIT\r\n"]))
    return b"".join(parts) + end


@st.composite
def bdat(draw: st.DrawFn) -> bytes:
    """A BDAT command and a chunk whose length may or may not match the declared size."""
    declared = draw(st.one_of(st.integers(0, 3000), st.sampled_from([10**9, 2**64])))
    actual = draw(st.one_of(st.just(min(declared, 3000)), st.integers(0, 3000)))
    last = draw(st.sampled_from([b"", b" LAST", b" last", b" LAST junk"]))
    return b"BDAT %d%s\r\n" % (declared, last) + draw(st.binary(min_size=actual, max_size=actual))


transaction = st.just(
    b"EHLO client.test\r\nMAIL FROM:<sender@client.test>\r\nRCPT TO:<user@example.org>\r\nDATA\r\n"
)
pieces = st.one_of(
    commands(),
    commands(),
    commands(),
    message_data(),
    bdat(),
    transaction,
    garbage,
    st.integers(500, 5000).map(lambda n: b"NOOP " + b"A" * n + b"\r\n"),  # long lines
    st.integers(1000, 20000).map(lambda n: b"B" * n),  # a long line with no end
)


@st.composite
def mutated(draw: st.DrawFn, stream: bytes) -> bytes:
    """``stream`` with random bytes flipped, inserted or deleted."""
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 5))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        operation = draw(st.sampled_from(["flip", "insert", "delete"]))
        if operation == "flip":
            data[position] = draw(st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        else:
            del data[position]
    return bytes(data)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int], bool]:
    """A byte stream, where to split it into separate sends, and whether the client talks
    before the greeting."""
    stream = b"".join(draw(st.lists(pieces, min_size=1, max_size=12)))
    if draw(st.booleans()):
        stream = draw(mutated(stream))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    talk_first = draw(st.integers(0, 15)) == 0
    return stream, cuts, talk_first


# --- running one example -----------------------------------------------------------------


def read_until_quiet(sock: socket.socket, quiet: float) -> tuple[bytes, bool]:
    """What the server sends until it is silent for ``quiet`` seconds; and whether it closed."""
    received = bytearray()
    sock.settimeout(quiet)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(received), True
            received += chunk
    except TimeoutError:
        return bytes(received), False
    except ConnectionResetError:
        return bytes(received), True
    finally:
        sock.settimeout(SOCKET_TIMEOUT)


def read_to_end(sock: socket.socket) -> bytes:
    """Everything until the server closes; fails if it keeps the connection open."""
    received = bytearray()
    deadline = time.monotonic() + SOCKET_TIMEOUT
    try:
        while True:
            chunk = sock.recv(65536)  # raises TimeoutError after SOCKET_TIMEOUT of silence
            if not chunk:
                return bytes(received)
            received += chunk
            assert time.monotonic() < deadline, "the server keeps talking after EOF"
    except ConnectionResetError:
        return bytes(received)


def exchange(port: int, stream: bytes, cuts: list[int], talk_first: bool) -> bytes:
    """Play one stream; everything the server sent, up to its close."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        received = bytearray()
        if not talk_first:
            while not received.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                assert chunk, "connection closed before the greeting"
                received += chunk
        bounds = [0, *cuts, len(stream)]
        closed = False
        try:
            for start, end in itertools.pairwise(bounds):
                if end > start:
                    sock.sendall(stream[start:end])
        except (BrokenPipeError, ConnectionResetError):
            closed = True  # the server hung up (421, 554): fine, its replies are checked
        if not closed:
            more, closed = read_until_quiet(sock, QUIET_TIME)
            received += more
        if not closed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            try:
                received += read_to_end(sock)
            except TimeoutError:
                raise AssertionError(
                    f"no close within {SOCKET_TIMEOUT}s after the client's EOF"
                ) from None
        else:
            try:
                received += read_to_end(sock)
            except TimeoutError:
                raise AssertionError("connection neither closed nor answered") from None
        return bytes(received)


def check_replies(received: bytes) -> None:
    assert received, "the server sent nothing at all, not even a greeting"
    lines = received.split(b"\r\n")
    assert lines[-1] == b"", f"output does not end with CRLF: {received[-200:]!r}"
    open_code: bytes | None = None
    for raw in lines[:-1]:
        line = raw + b"\r\n"
        match = REPLY_LINE.fullmatch(line)
        assert match is not None, f"malformed reply line {line!r}"
        assert len(line) <= 512, f"reply line of {len(line)} octets: {line[:100]!r}"
        code, separator = match.group(1), match.group(2)
        if open_code is not None:
            assert code == open_code, f"multi-line reply changes code: {line!r}"
        open_code = code if separator == b"-" else None
        if separator == b" ":
            event(f"reply {code.decode()}")  # shown by --hypothesis-show-statistics
    assert open_code is None, "the last reply is unfinished"


def normal_transaction(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=SOCKET_TIMEOUT) as client:
        refused = client.sendmail(
            "sender@client.test",
            ["user@example.org"],
            b"Subject: still alive\r\n\r\nafter a fuzz example\r\n",
        )
        assert refused == {}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(example=streams())
def test_random_streams_never_crash_hang_or_garble_replies(
    node: Node, example: tuple[bytes, list[int], bool]
) -> None:
    stream, cuts, talk_first = example
    received = exchange(node.port, stream, cuts, talk_first)
    # A client that does not wait for the greeting usually still gets it first (the node
    # greets at once), so only the form of what it gets is checked, not which reply it is.
    check_replies(received)
    assert node.process.poll() is None, node.log()[-3000:]
    # A session that failed inside says 421 and logs a traceback: contained, but a bug.
    assert "Traceback" not in node.log(), node.log()[-3000:]
    normal_transaction(node.port)
