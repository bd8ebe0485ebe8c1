"""What the spool stores for an accepted message: the record built from the session's facts.

A pure function, so that the spool's record model can change in this one place (the session
only hands over its connection, transaction and message writer).
"""

from __future__ import annotations

from collections.abc import Sequence

from mailwarden.policy.context import Connection, Recipient, Transaction
from mailwarden.policy.headers import Headers
from mailwarden.queue.retention import DEFAULT_RETENTION, HoldTerms, parse_on_expiry
from mailwarden.spool.states import RecipientState
from mailwarden.spool.store import SpooledRecipient, SpoolRecord
from mailwarden.spool.writer import MessageWriter


def spool_record(
    conn: Connection,
    tx: Transaction,
    writer: MessageWriter,
    headers: Headers,
    kept: Sequence[Recipient],
    received_at: float,
    hold_retention: float = DEFAULT_RETENTION,
) -> SpoolRecord:
    """The record for ``tx`` with the recipients ``kept`` (those not discarded) and the header
    section as the data hook left it; the body stays where the writer put it (memory or file).
    A held recipient's next attempt is its retention end (:mod:`mailwarden.queue.retention`):
    ``received_at`` plus its own retention, or ``hold_retention`` when the hold gave none."""
    assert tx.sender is not None
    header_bytes = headers.to_bytes()
    if writer.has_separator:
        header_bytes += b"\r\n"
    body = writer.memory_body()
    tls, auth = conn.tls, conn.auth
    return SpoolRecord(
        id=tx.id,
        server_id=conn.server_id,
        received_at=received_at,
        sender=tx.sender.address,
        sender_params=tx.sender.params,
        client_ip=conn.remote_ip,
        client_port=conn.remote_port,
        helo=conn.helo_name,
        tls={"protocol": tls.protocol, "cipher": tls.cipher, "bits": tls.bits} if tls else None,
        auth={"username": auth.username, "mechanism": auth.mechanism} if auth else None,
        metadata=tx.metadata,
        headers=header_bytes,
        body=body,
        body_file=None if body is not None else writer.spill_path,
        body_fd=writer.spill_fd,
        size=len(header_bytes) + writer.body_size,
        recipients=[_recipient(r, received_at, hold_retention) for r in kept],
    )


def _recipient(r: Recipient, received_at: float, hold_retention: float) -> SpooledRecipient:
    if r.state is not RecipientState.HELD:
        return SpooledRecipient(r.address, r.params, r.metadata, r.state.value, r.reason)
    retention = hold_retention if r.retention is None else r.retention
    terms = HoldTerms(retention, parse_on_expiry(r.on_expiry))
    return SpooledRecipient(
        r.address,
        r.params,
        r.metadata,
        r.state.value,
        r.reason,
        next_attempt=terms.until(received_at),
        on_expiry=terms.on_expiry.value,
    )
