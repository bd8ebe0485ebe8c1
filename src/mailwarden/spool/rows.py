"""How a record becomes rows: the two INSERTs of a commit, shared by the group commit and by
the delivery outcomes that queue a new message (a bounce) in the same transaction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mailwarden.spool.records import SpoolRecord


def _body_file_name(body_file: Path | None, spool_dir: Path) -> str | None:
    """How a row names its spill file: relative to the spool directory, so that the spool can
    be moved (an absolute path would point at the old place)."""
    if body_file is None:
        return None
    try:
        return Path(body_file).relative_to(spool_dir).as_posix()
    except ValueError:  # not under the spool: keep it as it is, the reader resolves by name
        return str(body_file)


# Named columns: a column added by a later schema version never shifts these values.
INSERT_MESSAGE = (
    "INSERT INTO messages (id, server_id, received_at, sender, sender_params, client_ip,"
    " client_port, helo, tls, auth, metadata, headers, body, body_file, size, retry_count,"
    " next_attempt) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
INSERT_RECIPIENT = (
    "INSERT INTO recipients (message_id, position, address, params, metadata, state, reason,"
    " retry_count, next_attempt, last_reply, on_expiry) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def message_row(r: SpoolRecord, spool_dir: Path) -> tuple[Any, ...]:
    return (
        r.id,
        r.server_id,
        r.received_at,
        r.sender,
        json.dumps(r.sender_params),
        r.client_ip,
        r.client_port,
        r.helo,
        json.dumps(r.tls) if r.tls else None,
        json.dumps(r.auth) if r.auth else None,
        json.dumps(r.metadata, default=str),
        r.headers,
        r.body,
        _body_file_name(r.body_file, spool_dir),
        r.size,
        r.retry_count,
        r.received_at if r.next_attempt is None else r.next_attempt,
    )


def recipient_rows(r: SpoolRecord) -> list[tuple[Any, ...]]:
    return [
        (
            r.id,
            position,
            rcpt.address,
            json.dumps(rcpt.params),
            json.dumps(rcpt.metadata, default=str),
            rcpt.state.value,
            rcpt.reason,
            rcpt.retry_count,
            r.received_at if rcpt.next_attempt is None else rcpt.next_attempt,
            rcpt.last_reply,
            rcpt.on_expiry,
        )
        for position, rcpt in enumerate(r.recipients)
    ]


def loads(text: str) -> Any:
    """A JSON column as Python: most params and metadata columns are an empty object, which
    is answered without the parser (it runs for every recipient of every message read)."""
    return {} if text == "{}" else json.loads(text)
