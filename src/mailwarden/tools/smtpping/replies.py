"""Splitting the server's bytes into whole SMTP replies, for both smtpping clients.

The parsing is the shared one (``mailwarden.smtp.reply_parser``); this wrapper adds what
smtpping needs on top: ``-d`` prints every reply line, and a stream that is not SMTP reads as a
reply with code 0, which the callers treat as a failure (as 1.1 does for a code it cannot read).
"""

from __future__ import annotations

import sys

from mailwarden.smtp.reply_parser import ReplyError, ReplyParser, ServerReply

# What the callers get for a stream that is not SMTP replies.
MALFORMED = ServerReply(0, b"")


class ReplyReader:
    """Collects bytes and hands out complete replies as ``(code, raw reply bytes)``."""

    __slots__ = ("_debug", "_parser")

    def __init__(self, debug: bool = False) -> None:
        self._parser = ReplyParser()
        self._debug = debug

    @property
    def empty(self) -> bool:
        """No part of a reply is waiting for the rest of its bytes."""
        return self._parser.empty

    def feed(self, data: bytes) -> list[ServerReply]:
        try:
            replies = self._parser.feed(data)
        except ReplyError as error:
            replies = [*error.complete, MALFORMED]
            if self._debug:
                self._print(replies[:-1])
                sys.stderr.write(f"response {error.data.decode('latin-1')}\n")
            return replies
        if self._debug:
            self._print(replies)
        return replies

    @staticmethod
    def _print(replies: list[ServerReply]) -> None:
        for _, raw in replies:
            for line in raw.splitlines(keepends=True):
                sys.stderr.write(f"response {line.decode('latin-1')}")
