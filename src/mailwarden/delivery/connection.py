"""One outbound SMTP/LMTP connection: the thin asyncio adapter over the sans-I/O client machine.

:class:`OutboundConnection` moves bytes between a socket (asyncio streams) and
:class:`~mailwarden.smtp.client.SmtpClientConnection`; every protocol decision is the machine's.
The adapter adds what needs a socket or a clock, and turns every failure into a
:class:`~mailwarden.delivery.errors.DeliveryError` (httpcore style: backend errors mapped at the
edge), so the queue manager sees one small family:

============================================  =====================  =================
what happened                                 reply                  stage
============================================  =====================  =================
connection refused, unreachable, timed out    451 4.4.1 (local)      ``connect``
greeting other than 220, 421 at any point     the server's reply     where it came
EHLO and HELO refused                         the server's reply     ``ehlo``
TLS required, STARTTLS not offered/refused    454 4.7.4 (local)      ``tls``
TLS handshake or verification failed          454 4.7.5 (local)      ``tls``
MX host refused by its MTA-STS policy          454 4.7.5 (local)      ``tls``
AUTH refused with 5xx (4xx: as received)      454 4.7.8 (local)      ``auth``
no reply within the RFC 5321 §4.5.3.2 time    451 4.4.2 (local)      ``timeout``
connection lost, reset                        451 4.4.2 (local)      ``mail``/``data``
a peer that does not speak SMTP               451 4.5.0 (local)      where it came
message larger than the server's SIZE         552 5.3.4 (local)      ``mail``
SMTPUTF8 needed, not offered (RFC 6531 §3.4)  550 5.6.7 (local)      ``mail``
============================================  =====================  =================

A connection attempt (RFC 3463 X.4.1 "no answer from host") is distinct from a connection that
failed once established (X.4.2 "bad connection"). The texts come from the reply catalogue
(``smtp/replies.py``, ``DELIVERY_*``) with the host and the detail added.

STARTTLS per :class:`~mailwarden.delivery.tls.TlsPolicy` (RFC 3207; the policy's mode):

- ``none``: never.
- ``optional`` (opportunistic, RFC 7435): STARTTLS when offered, any certificate. Not offered or
  refused: plaintext. A failed handshake leaves the connection unusable, so the adapter connects
  again and goes on in plaintext without trying STARTTLS (``tls.failure`` says why).
- ``optional_verify``: when offered, the certificate must verify (else 4.7.5); plaintext only when
  STARTTLS is not offered or refused with a reply.
- ``required``: STARTTLS must succeed (else 4.7.4 / 4.7.5), any certificate.
- ``required_verify``: and the certificate must verify against ``policy.verify_name`` or, without
  one, the target's host name; that name is also the SNI sent unless ``policy.sni`` names
  another (then the name is checked against the certificate's subjectAltName here).

DANE (RFC 7672, a policy with ``tlsa`` records, :mod:`mailwarden.delivery.dane`): TLS is
required and the certificate is checked against the TLSA records only, by OpenSSL's DANE code
(:mod:`mailwarden.delivery.dane_openssl`); the SNI is the TLSA base domain (§8.1: the MX host
name, or its CNAME expansion when the records were found there). A mismatch is
4.7.5 with RFC 8460 type ``tlsa-invalid``. A policy whose TLSA lookup failed
(``dane_failure``) fails before connecting (4.7.5, ``dnssec-invalid``, §2.1.1).

The CA store is the system's unless ``policy.ca_file`` names a bundle
(:func:`~mailwarden.delivery.tls.client_context`). After TLS the extensions are forgotten and
EHLO is sent again (RFC 3207 §4.2).

AUTH (RFC 4954) when ``options.auth`` is set: PLAIN when offered, else LOGIN. Credentials travel
only inside TLS, except on a route whose TLS mode is ``none``, which the operator chose as a
plaintext path (a smarthost on loopback or a private link); otherwise a session that stayed
plaintext fails with 4.7.11 rather than expose the password. A server that offers neither
mechanism fails with 4.7.0 (sending unauthenticated to a smarthost would only get relaying
refused). A 5xx to AUTH defers (4.7.8) as Postfix's ``smtp_sasl_auth_soft_bounce`` does: a
wrong password in the configuration must not bounce every message. This module logs nothing;
the password appears in no exception, reply text or ``repr``.

Timeouts: ``connect_timeout`` for the TCP connection; then for each reply the machine's RFC 5321
§4.5.3.2 value from ``options.timeouts``, ``data_block`` for each write that has to wait, and the
command timeout for the TLS handshake. ``close()`` waits at most :data:`QUIT_TIMEOUT`.

Several transactions go over one connection (``send()`` again while ``usable``); a 421 or a lost
connection makes it unusable. The adapter is lean because it carries thousands of messages a
second: one write of whatever the machine has, reads of :data:`READ_SIZE`, no task per message,
a drain only when the transport holds unsent data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from mailwarden.auth.certificates import PeerCertificate, peer_certificate
from mailwarden.delivery.dane_openssl import UnsupportedError, dane_context
from mailwarden.delivery.errors import DeliveryError, DeliveryReply
from mailwarden.delivery.mx import Target
from mailwarden.delivery.tls import (
    TlsMode,
    TlsPolicy,
    certificate_matches,
    client_context,
    verification_failure,
)
from mailwarden.smtp import replies
from mailwarden.smtp.client import (
    NEED_DATA,
    TIMEOUTS,
    AuthDone,
    ClientState,
    ConnectionClosed,
    Envelope,
    Event,
    ExtensionMissing,
    Extensions,
    Greeting,
    HelloDone,
    MessageTooLarge,
    QuitDone,
    ServerClosing,
    SmtpClientConnection,
    Timeouts,
    TlsReady,
    TlsRefused,
    TransactionDone,
)
from mailwarden.smtp.errors import LocalProtocolError, RemoteProtocolError
from mailwarden.smtp.replies import Reply
from mailwarden.smtp.reply_parser import ServerReply

__all__ = ["ConnectOptions", "OutboundConnection", "TlsOutcome", "open_first"]

READ_SIZE = 1 << 18  # one read takes every reply a pipelined group gets, and then some
# A large message goes out in blocks, each under the §4.5.3.2.5 data block timeout, so a slow
# but moving peer is not cut off by a timeout meant for one block.
WRITE_BLOCK = 1 << 20
QUIT_TIMEOUT = 2.0  # QUIT is a courtesy (RFC 5321 §4.1.1.10); nobody waits minutes for it

# Which stage a failure while waiting for a reply belongs to (DeliveryError.stage).
_STAGE_OF = {
    "greeting": "greeting",
    "ehlo": "ehlo",
    "helo": "ehlo",
    "starttls": "tls",
    "auth": "auth",
    "mail": "mail",
    "rcpt": "mail",
    "rset": "mail",
    "data": "data",
    "data_end": "data",
    "bdat": "data",
    "bdat_last": "data",
    "quit": "quit",
}
_QUIT_STATES = frozenset({ClientState.GREETED, ClientState.REFUSED, ClientState.READY})


@dataclass(frozen=True)
class ConnectOptions:
    helo: str  # EHLO name
    source_ip: str | None = None  # local address to bind (None: the kernel chooses)
    tls: TlsPolicy = field(default_factory=TlsPolicy)
    lmtp: bool = False
    # (username, password): AUTH PLAIN, else LOGIN. Out of repr so that logging the options
    # never shows the password.
    auth: tuple[str, str] | None = field(default=None, repr=False)
    connect_timeout: float = 30.0
    timeouts: Timeouts = TIMEOUTS  # RFC 5321 §4.5.3.2


@dataclass(frozen=True)
class TlsOutcome:
    """What post_delivery and TLS reports see of a session's TLS."""

    protocol: str | None  # "TLSv1.3"; None when the session stayed plaintext
    cipher: str | None
    verified: bool  # the certificate was verified (verifying modes only)
    # Why the session is not (verified) TLS, as RFC 8460 result types where one fits:
    # "starttls-not-supported", "certificate-host-mismatch", "certificate-not-trusted",
    # "certificate-expired", "validation-failure"; None when the policy was met as asked.
    failure: str | None
    policy: TlsPolicy
    # The server's certificate (None: plaintext); ``verified`` as above, ``verify_error``
    # "not verified" in the modes that accept any certificate.
    peer_certificate: PeerCertificate | None = None


class _PlaintextRetry(Exception):
    """Opportunistic TLS failed in the handshake: connect again, plaintext this time."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


def _local(reply: Reply, detail: str = "") -> DeliveryReply:
    """One of our own verdicts from the catalogue, with the detail of this attempt."""
    text = f"{reply.text}: {detail}" if detail else reply.text
    return DeliveryReply(reply.code, reply.enhanced, text)


class OutboundConnection:
    """An open, greeted, EHLO'd (and per policy TLS'd and authenticated) connection."""

    def __init__(
        self,
        target: Target,
        options: ConnectOptions,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.target = target
        self.options = options
        sockname = writer.get_extra_info("sockname")
        self.source_ip: str = sockname[0] if sockname else ""
        self.extensions = Extensions()
        self.tls = TlsOutcome(None, None, False, None, options.tls)
        self.messages_sent = 0
        self.opened_at = time.monotonic()
        self._reader = reader
        self._writer = writer
        self._machine = SmtpClientConnection(
            options.helo, lmtp=options.lmtp, timeouts=options.timeouts
        )
        self._name = f"{target.host}[{target.address}]:{target.port}"
        self._broken = False  # 421, lost, timed out, protocol error, failed handshake
        self._closed = False
        self._eof = False
        self._awaited = "greeting"  # the reply the last read waited for, for error texts

    # ------------------------------------------------------------ opening

    @classmethod
    async def open(cls, target: Target, options: ConnectOptions) -> OutboundConnection:
        """Connect, greeting, EHLO (HELO fallback), STARTTLS per policy, EHLO again, AUTH.

        Raises DeliveryError (stage connect/greeting/ehlo/tls/auth/timeout), see the module
        docstring; the socket is closed then. In mode ``optional`` a failed handshake makes a
        second connection that stays plaintext."""
        failure = options.tls.dane_failure
        if failure is not None:  # RFC 7672 §2.1.1: no delivery to a host whose TLSA is unknown
            detail = f"{failure}: the TLSA lookup of {target.host} failed (DNSSEC)"
            reply = _local(replies.DELIVERY_TLS_FAILED, detail)
            raise DeliveryError(reply, stage="tls", host=target.host, tls_failure=failure)
        conn = await cls._connect(target, options)
        try:
            await conn._start(tls_allowed=True)
        except _PlaintextRetry as retry:
            conn._abort()
            conn = await cls._connect(target, options)
            await conn._start_or_close(retry.failure)
        except asyncio.CancelledError:
            conn._abort()
            raise
        except BaseException:
            await conn.close()  # QUIT after a refused greeting or EHLO (RFC 5321 §3.1)
            raise
        return conn

    async def _start_or_close(self, tls_failure: str) -> None:
        try:
            await self._start(tls_allowed=False, tls_failure=tls_failure)
        except asyncio.CancelledError:
            self._abort()
            raise
        except BaseException:
            await self.close()
            raise

    @classmethod
    async def _connect(cls, target: Target, options: ConnectOptions) -> OutboundConnection:
        local = (options.source_ip, 0) if options.source_ip else None
        name = f"{target.host}[{target.address}]:{target.port}"
        try:
            async with asyncio.timeout(options.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    target.address, target.port, local_addr=local, limit=READ_SIZE
                )
        except TimeoutError:
            detail = f"connect to {name}: timed out after {options.connect_timeout:g}s"
            reply = _local(replies.DELIVERY_CONNECT_FAILED, detail)
            raise DeliveryError(reply, stage="connect", host=target.host) from None
        except OSError as error:
            detail = f"connect to {name}: {_os_error(error)}"
            reply = _local(replies.DELIVERY_CONNECT_FAILED, detail)
            raise DeliveryError(reply, stage="connect", host=target.host) from None
        return cls(target, options, reader, writer)

    async def _start(self, *, tls_allowed: bool, tls_failure: str | None = None) -> None:
        greeting = await self._next(Greeting)
        assert isinstance(greeting, Greeting)
        if not greeting.accepted:
            raise self._remote_error(greeting.reply, "greeting")
        if _greeting_host(greeting.reply).lower() == self.options.helo.lower():
            # RFC 5321 §5.1 asks a client to detect that it would deliver to itself (an MX
            # or route pointing back at this node): the message would circle until expiry.
            detail = f"{self.target.host} greeted with this node's name {self.options.helo}"
            raise DeliveryError(
                _local(replies.DELIVERY_LOOPS_BACK, detail), stage="greeting", host=self._name
            )
        await self._hello()
        policy = self.options.tls
        if policy.mode is not TlsMode.NONE:
            if tls_allowed:
                await self._starttls()
            else:
                self.tls = TlsOutcome(None, None, False, tls_failure, policy)
        if self.options.auth is not None:
            await self._authenticate(*self.options.auth)

    async def _hello(self) -> None:
        self._machine.ehlo()
        hello = await self._next(HelloDone)
        assert isinstance(hello, HelloDone)
        if not hello.accepted:
            raise self._remote_error(hello.reply, "ehlo")
        self.extensions = hello.extensions

    async def _starttls(self) -> None:
        policy = self.options.tls
        if not self.extensions.starttls:
            self._without_tls("not offered")
            return
        self._machine.starttls()
        event = await self._next((TlsReady, TlsRefused))
        if isinstance(event, TlsRefused):
            self._without_tls(f"refused with {_one_line(event.reply)}")
            return
        sni = self._sni()
        # Another SNI than the name verified: OpenSSL checks the SNI name, so check ourselves.
        own_name_check = policy.verifies and sni != self._tls_name()
        try:
            if policy.dane:
                context: ssl.SSLContext = dane_context(policy.dane_names, policy.tlsa)
            else:
                context = client_context(policy, check_hostname=not own_name_check)
        except UnsupportedError as error:
            self._broken = True
            reply = _local(replies.DELIVERY_TLS_CONFIG, f"DANE: {error}")
            raise DeliveryError(reply, stage="tls", host=self.target.host) from None
        except (OSError, ssl.SSLError, ValueError) as error:
            self._broken = True
            files = [str(f) for f in (policy.ca_file, policy.client_certificate) if f]
            detail = f"TLS files {', '.join(files) or '(none)'}: {error}"
            reply = _local(replies.DELIVERY_TLS_CONFIG, detail)
            raise DeliveryError(reply, stage="tls", host=self.target.host) from None
        try:
            # The machine has checked that nothing followed the 220 (RFC 3207 §5); the
            # streams pause reading before the handshake starts.
            async with asyncio.timeout(self.options.timeouts.command):
                await self._writer.start_tls(context, server_hostname=sni)
        except (ssl.SSLError, OSError, TimeoutError, UnsupportedError) as error:
            self._broken = True
            failure = verification_failure(error)
            if policy.dane and isinstance(error, ssl.SSLCertVerificationError):
                failure = "tlsa-invalid"  # RFC 8460 §4.3.2: no TLSA record matched
            if policy.mode is TlsMode.OPTIONAL:
                raise _PlaintextRetry(failure) from None
            detail = f"{failure} with {self._name}: {_describe(error)}"
            reply = _local(replies.DELIVERY_TLS_FAILED, detail)
            raise DeliveryError(
                reply,
                stage="tls",
                host=self.target.host,
                tls_failure=failure,
                source_ip=self.source_ip,
            ) from None
        ssl_object = self._writer.get_extra_info("ssl_object")
        cipher = ssl_object.cipher()
        der = ssl_object.getpeercert(binary_form=True)
        if own_name_check and not (der and certificate_matches(der, self._tls_name())):
            self._broken = True
            failure = "certificate-host-mismatch"
            detail = f"{failure} with {self._name}: not issued for {self._tls_name()}"
            reply = _local(replies.DELIVERY_TLS_FAILED, detail)
            raise DeliveryError(reply, stage="tls", host=self.target.host, tls_failure=failure)
        verified = policy.verifies or policy.dane
        self.tls = TlsOutcome(
            ssl_object.version(),
            cipher[0] if cipher else None,
            verified,
            None,
            policy,
            _peer_certificate(der, verified),
        )
        self._machine.tls_established()
        await self._hello()

    def _without_tls(self, why: str) -> None:
        policy = self.options.tls
        if policy.requires:
            detail = f"STARTTLS {why} by {self._name}"
            reply = _local(replies.DELIVERY_TLS_NOT_OFFERED, detail)
            raise DeliveryError(
                reply,
                stage="tls",
                host=self.target.host,
                tls_failure="starttls-not-supported",
                source_ip=self.source_ip,
            )
        self.tls = TlsOutcome(None, None, False, "starttls-not-supported", policy)

    def _tls_name(self) -> str:
        """The name the certificate must match (verifying modes) and the SNI sent; under
        DANE the TLSA base domain (RFC 7672 §8.1), the MX host name unless it was a CNAME."""
        policy = self.options.tls
        if policy.dane:
            return policy.dane_names[0]
        return policy.verify_name or self.target.host.strip("[]")

    def _sni(self) -> str:
        """The SNI sent (RFC 6066 §3): the policy's ``sni``, else the name verified."""
        return self.options.tls.sni or self._tls_name()

    async def _authenticate(self, username: str, password: str) -> None:
        if self.tls.protocol is None and self.options.tls.mode is not TlsMode.NONE:
            reply = _local(replies.DELIVERY_AUTH_NEEDS_TLS, f"{self._name} stayed plaintext")
            raise DeliveryError(reply, stage="auth", host=self.target.host)
        offered = self.extensions.auth
        mechanism = "PLAIN" if "PLAIN" in offered else "LOGIN" if "LOGIN" in offered else None
        if mechanism is None:
            detail = f"{self._name} offers {' '.join(sorted(offered)) or 'no AUTH'}"
            reply = _local(replies.DELIVERY_AUTH_UNAVAILABLE, detail)
            raise DeliveryError(reply, stage="auth", host=self.target.host)
        try:
            self._machine.auth(mechanism, username, password)
        except LocalProtocolError as error:  # a NUL in PLAIN credentials; never echoes them
            reply = _local(replies.DELIVERY_AUTH_FAILED, str(error))
            raise DeliveryError(reply, stage="auth", host=self.target.host) from None
        done = await self._next(AuthDone)
        assert isinstance(done, AuthDone)
        if done.accepted:
            return
        if done.reply.code >= 500:
            detail = f"{self._name} said {_one_line(done.reply)}"
            reply = _local(replies.DELIVERY_AUTH_FAILED, detail)
            raise DeliveryError(reply, stage="auth", host=self.target.host)
        raise self._remote_error(done.reply, "auth")

    # ------------------------------------------------------------ transactions

    @property
    def usable(self) -> bool:
        """Open, between transactions, no 421 or failure seen: ``send()`` may be called. A
        server that hung up while the connection was idle is seen here once its close has been
        read; a 421 it sent while idle surfaces as the next ``send()``'s DeliveryError."""
        if self._closed or self._broken or self._reader.at_eof():
            return False
        return self._machine.state is ClientState.READY

    async def send(self, envelope: Envelope, message: bytes) -> TransactionDone:
        """One transaction; the per-recipient results as the client machine gives them.

        Raises DeliveryError: 5.3.4 when the message exceeds the server's SIZE and 5.6.7 when it
        needs SMTPUTF8 that is not offered (both before anything is sent; the connection stays
        usable); a 421 or a lost connection (4.4.2; "message may be sent more than once" when
        it happened after the end of the data) makes the connection unusable. In LMTP a 421
        after some recipients' own 250s returns the TransactionDone instead, so the delivered
        ones are not sent again. Lines over 998 octets go out as Postfix sends them (see
        :mod:`mailwarden.smtp.client`)."""
        if not self.usable:
            detail = f"{self._name} is not ready for a transaction"
            reply = _local(replies.DELIVERY_CONNECTION_LOST, detail)
            raise DeliveryError(reply, stage="mail", host=self.target.host)
        try:
            self._machine.send_message(envelope, message)
        except MessageTooLarge as error:
            detail = f"{error.size} octets, {self._name} accepts {error.limit}"
            reply = _local(replies.DELIVERY_MESSAGE_TOO_BIG, detail)
            raise DeliveryError(reply, stage="mail", host=self.target.host) from None
        except ExtensionMissing as error:
            detail = f"{self._name} does not offer {error.extension}"
            reply = _local(replies.DELIVERY_NEEDS_SMTPUTF8, detail)
            raise DeliveryError(reply, stage="mail", host=self.target.host) from None
        try:
            done = await self._next(TransactionDone)
        except BaseException:
            self._broken = True  # cancelled or failed mid-transaction: state unknown
            raise
        assert isinstance(done, TransactionDone)
        self.messages_sent += 1
        if self._machine.state is ClientState.CLOSING:
            self._broken = True
            closing = self._machine.next_event()
            if not done.delivered and isinstance(closing, ServerClosing):
                stage = _STAGE_OF.get(closing.answered, "data")  # the command it answered
                raise self._remote_error(closing.reply, stage)
        return done

    async def close(self) -> None:
        """QUIT (waiting at most QUIT_TIMEOUT for the 221), then close. Never raises an
        error; a cancellation still closes the socket before it propagates."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self._broken and self._machine.state in _QUIT_STATES:
                self._machine.quit()
                async with asyncio.timeout(QUIT_TIMEOUT):
                    await self._next(QuitDone)
        except Exception:
            pass  # the session is over either way
        finally:
            if self._broken:
                self._abort()
            else:
                self._writer.close()

    def _abort(self) -> None:
        self._closed = True
        self._writer.transport.abort()

    # ------------------------------------------------------------ the pump

    async def _next(self, kinds: type | tuple[type, ...]) -> Event:
        """Run the machine until it emits an event of ``kinds`` (skipping per-recipient ones).
        Raises DeliveryError for a 421, a close, a timeout or a protocol error."""
        machine = self._machine
        while True:
            try:
                event = machine.next_event()
            except RemoteProtocolError as error:
                raise self._protocol_error(error) from None
            if event is NEED_DATA:
                await self._exchange()
                continue
            if isinstance(event, kinds):
                return event  # type: ignore[return-value]
            if isinstance(event, ServerClosing):
                self._broken = True
                # The stage of the command the 421 answered: with PIPELINING a 421 to MAIL
                # arrives while DATA is awaited too, and nothing of the message was sent.
                stage = _STAGE_OF.get(event.answered or self._awaited, "mail")
                raise self._remote_error(event.reply, stage)
            if isinstance(event, ConnectionClosed):
                raise self._lost("the connection closed")

    async def _exchange(self) -> None:
        """Write what the machine has, then read once, under the RFC 5321 timeouts."""
        machine = self._machine
        self._awaited = machine.awaiting or "quit"
        out = machine.data_to_send()
        writer = self._writer
        try:
            for start in range(0, len(out), WRITE_BLOCK):
                writer.write(out[start : start + WRITE_BLOCK] if len(out) > WRITE_BLOCK else out)
                if writer.transport.get_write_buffer_size():
                    # §4.5.3.2.5: each block of data may take this long to go out.
                    async with asyncio.timeout(self.options.timeouts.data_block):
                        await writer.drain()
            async with asyncio.timeout(machine.current_timeout() or self.options.timeouts.command):
                data = await self._reader.read(READ_SIZE)
        except TimeoutError:
            self._broken = True
            detail = f"{self._name} while waiting for the reply to {self._awaited_text()}"
            reply = _local(replies.DELIVERY_REPLY_TIMEOUT, detail)
            raise DeliveryError(reply, stage="timeout", host=self.target.host) from None
        except OSError as error:  # reset, broken pipe, TLS record errors
            raise self._lost(_describe(error)) from None
        if not data:
            self._eof = True
        machine.receive_data(data)

    # ------------------------------------------------------------ errors

    def _awaited_text(self) -> str:
        kind = self._awaited
        text = {"data_end": "end of data", "bdat_last": "the last BDAT"}.get(kind, kind.upper())
        if kind in ("data_end", "bdat_last"):
            # As Postfix says: the server may have taken the message before it failed.
            text += " (message may be sent more than once)"
        return text

    def _remote_error(self, reply: ServerReply, stage: str) -> DeliveryError:
        return DeliveryError(DeliveryReply.from_server(reply), stage=stage, host=self.target.host)

    def _lost(self, why: str) -> DeliveryError:
        self._broken = True
        detail = f"{self._name} ({why}) while waiting for the reply to {self._awaited_text()}"
        reply = _local(replies.DELIVERY_CONNECTION_LOST, detail)
        return DeliveryError(
            reply, stage=_STAGE_OF.get(self._awaited, "mail"), host=self.target.host
        )

    def _protocol_error(self, error: RemoteProtocolError) -> DeliveryError:
        if self._eof:
            return self._lost("the connection closed")
        self._broken = True
        reply = _local(replies.DELIVERY_PROTOCOL_ERROR, f"{self._name}: {error}")
        stage = _STAGE_OF.get(self._awaited, "mail")
        return DeliveryError(reply, stage=stage, host=self.target.host)


def _peer_certificate(der: bytes | None, verified: bool) -> PeerCertificate | None:
    """The server's certificate as scripts see a client's (auth/certificates.py's model)."""
    if not der:
        return None
    certificate = peer_certificate(der, None)
    error = None if verified else "not verified (the TLS mode accepts any certificate)"
    return dataclasses.replace(certificate, verified=verified, verify_error=error)


def _greeting_host(reply: ServerReply) -> str:
    """The host name a 220 greeting starts with (RFC 5321 §4.2: ``220 domain text``)."""
    lines = reply.lines
    return lines[0].split(" ", 1)[0] if lines and lines[0] else ""


def _one_line(reply: ServerReply) -> str:
    return reply.raw.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _os_error(error: OSError) -> str:
    # asyncio's "Connect call failed (addr)" hides the reason the errno names.
    return os.strerror(error.errno) if error.errno else str(error)


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return error.verify_message or str(error)
    if isinstance(error, TimeoutError):
        return "handshake timed out"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _rank(error: DeliveryError) -> tuple[bool, bool]:
    # A permanent remote reply (a 5xx greeting from every MX) decides; then any remote reply,
    # which says more than "connection refused"; the first target's error among equals.
    return (error.reply.remote and error.reply.permanent, error.reply.remote)


async def open_first(
    targets: Sequence[Target],
    options: ConnectOptions,
    *,
    address_limit: int = 0,
    session_limit: int = 0,
    policies: Sequence[TlsPolicy] | None = None,
    tried: list[DeliveryError] | None = None,
) -> tuple[OutboundConnection, list[DeliveryError]]:
    """Try targets in order (first MX down -> the next); returns the connection and the errors
    of the targets that failed before it. Every failure of ``OutboundConnection.open`` moves
    on to the next target, a 5xx greeting and a TLS policy failure included (as Postfix tries
    the next MX). Raises the most relevant DeliveryError when all fail: a permanent remote
    reply wins, then a remote reply, then the first target's error.

    At most ``address_limit`` targets are tried, and at most ``session_limit`` of them may be
    servers that greeted, answered EHLO and then failed (TLS policy, AUTH), as Postfix's
    ``smtp_mx_address_limit`` (5) and ``smtp_mx_session_limit`` (2): a domain with dozens of
    MX addresses, or a row of servers that refuse the TLS policy, costs one attempt a bounded
    time. 0: no limit. ``policies``: each target's own TLS policy (DANE and MTA-STS decide per
    MX host, see :mod:`mailwarden.delivery.tls_selection`) instead of ``options.tls``; a
    target whose policy is ``refused`` fails (4.7.5) without a connection. ``tried``: a list
    that gets the error of each target that failed, in order, also when all fail (the TLS
    reports count each one)."""
    errors: list[DeliveryError] = tried if tried is not None else []
    sessions = 0
    tried = 0
    for index, target in enumerate(targets):
        if address_limit and tried >= address_limit:
            break
        policy = policies[index] if policies is not None else options.tls
        if policy.refused is not None:
            # Not to be used under its policy (MTA-STS enforce, RFC 8461 §5): failed without
            # a connection, and not counted against the address limit.
            reply = _local(replies.DELIVERY_TLS_POLICY_REFUSED, policy.refused)
            errors.append(
                DeliveryError(
                    reply, stage="tls", host=target.host, tls_failure="validation-failure"
                )
            )
            continue
        tried += 1
        try:
            target_options = options
            if policy != options.tls:
                target_options = dataclasses.replace(options, tls=policy)
            return await OutboundConnection.open(target, target_options), errors
        except DeliveryError as error:
            errors.append(error)
            # Postfix counts the sessions that completed the greeting and EHLO only.
            if error.stage in ("tls", "auth"):
                sessions += 1
                if session_limit and sessions >= session_limit:
                    break
    if not errors:
        reply = _local(replies.DELIVERY_CONNECT_FAILED, "no address to connect to")
        raise DeliveryError(reply, stage="connect")
    raise max(errors, key=_rank)
