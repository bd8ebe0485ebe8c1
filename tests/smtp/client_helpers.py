"""A driver for the sans-I/O SMTP client: the server's bytes in (whole or byte by byte), events
and the client's bytes out. The test plays the server."""

from __future__ import annotations

from typing import Literal

from mailwarden.smtp.client import NEED_DATA, Event, SmtpClientConnection

FeedMode = Literal["whole", "bytewise"]
MAX_EVENTS = 10_000  # the machine must reach NEED_DATA; it may never spin


class ClientRun:
    def __init__(self, mode: FeedMode, **options: object) -> None:
        self.mode = mode
        self.conn = SmtpClientConnection("client.example", **options)  # type: ignore[arg-type]

    def server(self, data: bytes) -> list[Event]:
        """Feed what the server says; return the events up to NEED_DATA."""
        pieces = [data] if self.mode == "whole" else [data[i : i + 1] for i in range(len(data))]
        events: list[Event] = []
        for piece in pieces:
            self.conn.receive_data(piece)
            events += self.events()
        return events

    def close(self) -> list[Event]:
        self.conn.receive_data(b"")
        return self.events()

    def events(self) -> list[Event]:
        events: list[Event] = []
        for _ in range(MAX_EVENTS):
            event = self.conn.next_event()
            if event is NEED_DATA:
                return events
            events.append(event)  # type: ignore[arg-type]
        raise AssertionError("the client machine never asked for more data")

    def sent(self) -> bytes:
        return self.conn.data_to_send()

    def ready(self, ehlo: bytes = b"250-mx.example.net\r\n250 PIPELINING\r\n") -> None:
        """Greeting and EHLO done with the given EHLO reply."""
        self.server(b"220 mx.example.net ESMTP\r\n")
        self.conn.ehlo()
        self.sent()
        self.server(ehlo)
