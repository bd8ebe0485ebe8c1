"""smtpping's in-place fast path for one-line replies agrees with the shared reply parser.

The epoll transaction reads a whole one-line reply straight from its receive buffer (plain.py,
``on_events``) instead of going through ``mailwarden.smtp.reply_parser``; for every line it can
see, the code it acts on must be the one the shared parser gives (0 where the parser refuses the
line). Driven over a real socket pair, through the transaction's own ``on_events``.
"""

from __future__ import annotations

import select
import socket
from time import perf_counter_ns

from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.smtp.reply_parser import ReplyError, ReplyParser
from mailwarden.tools.smtpping.plain import READ_SIZE, PlainTransaction, Step
from mailwarden.tools.smtpping.replies import ReplyReader


class _Engine:
    """The Watcher protocol the transaction calls back into; records that it finished."""

    def __init__(self) -> None:
        self.done = False

    def watch(self, fd: int, transaction: PlainTransaction, mask: int) -> None:
        pass

    def rewatch(self, fd: int, mask: int) -> None:
        pass

    def finished(self, transaction: PlainTransaction) -> None:
        self.done = True


# One step that takes any code 1..999 as the end of the session and records it (as 1.1 does
# for the reply to the message); a code of 0 fails the step.
_STEPS = (Step(1, 999, "EOM", 0, True, None),)


def code_seen_by_smtpping(line: bytes) -> int:
    engine = _Engine()
    transaction = PlainTransaction(engine, None, _STEPS, debug=False)  # type: ignore[arg-type]
    ours, server = socket.socketpair()
    with server:
        ours.setblocking(False)
        transaction.sock, transaction.fd = ours, ours.fileno()
        transaction.started_ns = perf_counter_ns()
        transaction._connected()
        server.sendall(line)
        transaction.on_events(select.EPOLLIN)
    assert engine.done
    result = transaction.result
    return result.eom_code if result.failure is None else result.code


def code_seen_by_parser(line: bytes) -> int:
    try:
        (reply,) = ReplyParser().feed(line)
    except ReplyError:
        return 0
    return reply.code


_head = st.one_of(
    st.integers(0, 999).map(lambda n: b"%03d" % n),
    st.sampled_from([b" 25", b"+25", b"-25", b"2_5", b"25 ", b"abc", b"\xff25"]),
    st.binary(min_size=0, max_size=3),
)
_separator = st.sampled_from([b" ", b"", b"x", b"\r", b"\t", b"\xc3"])
_text = st.binary(max_size=200).map(lambda b: b.replace(b"\n", b""))
_end = st.sampled_from([b"\r\n", b"\n"])


@settings(max_examples=300, deadline=None)
@given(_head, _separator, _text, _end)
def test_fast_path_and_shared_parser_agree(head, separator, text, end) -> None:
    line = head + separator + text + end
    assert code_seen_by_smtpping(line) == code_seen_by_parser(line)


def test_long_one_line_reply_agrees_at_the_read_size() -> None:
    for size in (READ_SIZE - 1, READ_SIZE, READ_SIZE + 1):
        line = b"250 " + b"x" * (size - 6) + b"\r\n"
        assert code_seen_by_smtpping(line) == code_seen_by_parser(line) == 250


def test_reader_maps_garbage_to_code_zero_after_the_good_replies() -> None:
    reader = ReplyReader()
    replies = reader.feed(b"250-a\r\n250 b\r\nnot smtp\r\n")
    assert [code for code, _ in replies] == [250, 0]
    assert replies[0][1] == b"250-a\r\n250 b\r\n"
