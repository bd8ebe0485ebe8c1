"""One client connection: a thin asyncio Protocol over the sans-I/O core.

Bytes from the socket go into :class:`SmtpConnection`; each event it emits is decided here by
the policy script (through :mod:`mailwarden.policy.runner`) and the built-in rules that no script
may switch off (no open relay). Replies are flushed when the core has consumed all pipelined
input (RFC 2920 §3.2), so a pipelined transaction costs one write.

Flow control, both ways (as uvicorn's FlowControl does): reading pauses while unprocessed input
is above a mark (a slow hook, a flood), and while the transport's write buffer is above its
high-water mark (``pause_writing``, a client that pipelines and never reads its replies) no input
is processed until ``resume_writing``. Memory per connection stays bounded either way, and the
idle timeout keeps running, so a client that never reads is dropped.

Every session works from the :class:`~mailwarden.smtp.server.ListenerSnapshot` it started with.
The decisions are not made here but in pure functions beside their owners: the relay rule
(:mod:`mailwarden.policy.relay`), what an action means (:mod:`mailwarden.policy.outcome`), which
reply a failed hook gets (:mod:`mailwarden.policy.hooks`), the trace field
(:mod:`mailwarden.smtp.trace`), the spool record (:mod:`mailwarden.smtp.record`) and the TLS facts
(:mod:`mailwarden.smtp.peer_tls`). The listener sees a session only through
:class:`~mailwarden.smtp.server.TrackedSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mailwarden import logs
from mailwarden.auth.custom import Failure, ScriptMechanism, Success
from mailwarden.auth.sasl import Challenge, Credentials, Failed, Mechanism, mechanism_for
from mailwarden.metrics import instruments
from mailwarden.policy import hooks
from mailwarden.policy.actions import Accept, Defer, Reject
from mailwarden.policy.context import (
    AuthIdentity,
    Connection,
    Helo,
    Message,
    PeerCertificate,
    Recipient,
    RecipientState,
    Sender,
    Transaction,
    server_update,
)
from mailwarden.policy.headers import Headers
from mailwarden.policy.hooks import HookSpec
from mailwarden.policy.outcome import apply_end_of_data, greeting_refusal
from mailwarden.policy.relay import relay_refusal
from mailwarden.policy.runner import HookFailed, call_hook
from mailwarden.smtp import events, replies
from mailwarden.smtp.peer_tls import tls_info
from mailwarden.smtp.protocol import AWAITING_TLS, CLOSED, NEED_DATA, Paused, SmtpConnection
from mailwarden.smtp.record import spool_record
from mailwarden.smtp.replies import Reply
from mailwarden.smtp.trace import received_header
from mailwarden.spool.errors import SpoolError
from mailwarden.spool.writer import MessageWriter
from mailwarden.stats import counters

if TYPE_CHECKING:
    from mailwarden.smtp.server import ListenerSnapshot, SmtpServer

log = logging.getLogger("mailwarden.smtp")

ANSWERED = object()  # _decide: the client already has its reply

# A script's SASL mechanism gets this many steps per exchange (each client response is at most
# one 12288-octet line, RFC 4954 §4): a mechanism that keeps challenging is a script bug.
MAX_SASL_ROUNDS = 10

# Stop reading from a client whose unprocessed input exceeds this (a slow hook or a flood):
# memory per connection stays bounded (flow control, as uvicorn's FlowControl does).
_HIGH_WATER = 256 * 1024
# Bytes kept for the TLS layer before its handshake starts (implicit TLS): a ClientHello is at
# most one handshake message of 2^24 octets in theory, a few kilobytes in practice.
_BEFORE_TLS_LIMIT = 64 * 1024


class SmtpSession(asyncio.Protocol):
    """Failure behaviour: anything unexpected inside a session is logged with the connection id
    and answered with 421 4.3.0 before closing; it never affects other sessions."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server
        # Set at connection_made: the listener's settings, pinned for the connection's life.
        self.snapshot: ListenerSnapshot
        self.core: SmtpConnection
        self.transport: asyncio.Transport | None = None
        self.conn: Connection | None = None
        self.tx: Transaction | None = None
        self.writer: MessageWriter | None = None
        self._last_activity = 0.0
        self._busy = False  # a hook or the spool is working: the idle timeout does not run
        self._waiter: asyncio.Future[None] | None = None
        self._input_full = False  # unprocessed input above _HIGH_WATER
        self._writing_paused = False  # the transport's write buffer is above its high water
        self._reading_paused = False
        self._lost = False
        self._draining = False  # closed, waiting for the client to take the last replies
        self._task: asyncio.Task[None] | None = None
        self._sasl: Mechanism | None = None
        self._script_sasl: ScriptMechanism | None = None  # a script's mechanism, mid-exchange
        self._script_sasl_name = ""
        self._sasl_rounds = 0
        self.remote_ip = ""  # the client's address; the listener counts connections by it
        # The relay rule's facts, kept here rather than read from ``conn``: whatever a script
        # does to its Connection object, it cannot change what the relay rule sees.
        self._trusted = False
        self._auth: AuthIdentity | None = None
        self._tls = False
        self._peer_certificate: PeerCertificate | None = None
        # Implicit TLS: what the client sent before start_tls took the transport over.
        self._before_tls: bytearray | None = None
        self._hook_deadline = 0.0
        self._hook_expired = False

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.snapshot = snapshot = self.server.snapshot
        self.settings = snapshot.settings
        self.script = snapshot.script
        self.core = SmtpConnection(snapshot.protocol_settings, instruments.replies)
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.remote_ip = peer[0]
        refusal = self.server.admit(self)
        if refusal is not None:
            counters.connections_refused += 1
            instruments.replies[refusal.code] = instruments.replies.get(refusal.code, 0) + 1
            log.info(
                'connection refused: client=%s reply="%d %s %s"',
                self.remote_ip,
                refusal.code,
                refusal.enhanced,
                refusal.text,
            )
            transport.write(refusal.encode())
            transport.close()
            return
        counters.connections += 1
        if self._implicit_tls:
            # RFC 8314 §3.3: the TLS handshake comes first. Until start_tls takes the transport
            # over, bytes that arrive (the ClientHello, often) are kept for it, not parsed:
            # pausing cannot prevent them (uvloop starts reading after connection_made).
            self._before_tls = bytearray()
        self._last_activity = self.server.loop.time()
        self._trusted = snapshot.is_trusted(peer[0])
        self.conn = Connection(
            id=self.server.next_connection_id(),
            server_id=self.settings.id,
            remote_ip=peer[0],
            remote_port=peer[1],
            local_ip=local[0],
            local_port=local[1],
            trusted=self._trusted,
        )
        self._task = self.server.loop.create_task(self._run())

    def data_received(self, data: bytes) -> None:
        if self._before_tls is not None:
            if len(self._before_tls) + len(data) > _BEFORE_TLS_LIMIT:
                self.transport.abort()  # type: ignore[union-attr]  # no ClientHello is this big
                return
            self._before_tls += data
            return
        self.core.receive_data(data)
        self._last_activity = self.server.loop.time()
        if self.core.buffered_bytes > _HIGH_WATER:
            self._input_full = True
            self._update_reading()
        self.wake()

    def eof_received(self) -> bool | None:
        self.core.receive_data(b"")
        self.wake()
        if self._tls:
            # An SSL transport closes itself after EOF whatever we answer (a close_notify ends
            # the TLS session, RFC 8446 §6.1), and asyncio warns about a True answer.
            return None
        return True  # keep our sending side open: pipelined commands still get their replies

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self.core.connection_lost()
        self.wake()

    def pause_writing(self) -> None:
        """The transport's write buffer went above its high-water mark: the client does not
        read its replies. Stop reading and processing input until it does."""
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        """The write buffer drained below its low-water mark: the client reads again."""
        self._writing_paused = False
        self._last_activity = self.server.loop.time()  # reading replies is activity too
        self._update_reading()
        self.wake()

    def _update_reading(self) -> None:
        """Pause or resume reading from the socket as the two flow-control marks say."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        pause = self._input_full or self._writing_paused
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def wake(self) -> None:
        """Let the session loop look again (new input, shutdown, expiry)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until data_received, resume_writing, connection_lost or expire wakes the session."""
        self._waiter = self.server.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def _wait_for_input(self) -> None:
        if self._writing_paused:
            # The client leaves its replies unread: process nothing more until the transport
            # drains (resume_writing), the client goes away, or the idle sweep expires us.
            await self._wait()
            return
        # Everything buffered was processed: reading may go on.
        self._input_full = False
        self._update_reading()
        await self._wait()

    def _flush(self) -> None:
        out = self.core.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    # --- the session loop ------------------------------------------------------------------

    @property
    def _implicit_tls(self) -> bool:
        return self.snapshot.settings.tls_implicit and self.snapshot.tls is not None

    async def _run(self) -> None:
        assert self.conn is not None
        # This task's own context: every line logged in it (hooks and scripts too) has the id.
        logs.CONNECTION.set(self.conn.id)
        try:
            if self._implicit_tls and await self._handshake():
                self.core.tls_before_greeting()
                self._refuse_unverified_certificate()
            if not self.core.closed:
                await self._greet()
            core = self.core
            while True:
                event = core.next_event()
                if isinstance(event, Paused):
                    self._flush()
                    if event is CLOSED:
                        break
                    if event is NEED_DATA:
                        if self.server.shutting_down and not core.in_transaction:
                            core.close_with(replies.SERVICE_SHUTTING_DOWN, "shutting down")
                            continue
                        await self._wait_for_input()
                        continue
                    if event is AWAITING_TLS:
                        raise RuntimeError("STARTTLS event was not handled")
                    raise RuntimeError(f"core paused with {event}")
                handler = _HANDLERS[type(event)]
                await handler(self, event)
        except Exception:
            log.exception("connection %s: internal error", self.conn.id)
            if not self.core.closed:
                self.core.close_with(replies.LOCAL_ERROR.with_text("Internal error"), "error")
            self._flush()
        finally:
            await self._finish()

    async def _finish(self) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        self._hang_up()
        transport = self.transport
        if transport is not None and not self._lost and transport.get_write_buffer_size():
            # Replies are still buffered for a client that does not read them; the transport
            # closes (connection_lost) once they are sent. Stay registered meanwhile, so that
            # the idle sweep bounds how long (it aborts the transport, see expire).
            self._draining = True
            while not self._lost:
                await self._wait()
        try:
            with contextlib.suppress(HookFailed):
                await self._hook(hooks.DISCONNECT, self.conn)
        finally:
            self.server.forget(self)

    async def _hook(self, spec: HookSpec, *args: Any) -> Any:
        """Run a script hook. Its time limit is enforced by the server's once-a-second sweep
        (see ``sweep``) instead of a timer per call, which the profile showed to cost as much
        as the hook itself."""
        name = spec.name
        if name not in self.script.hooks:
            return None
        assert self.conn is not None
        conn_id = self.conn.id
        return await self._guarded(name, lambda: call_hook(self.script, name, conn_id, None, *args))

    async def _guarded(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Await script code under the hook time limit; HookFailed when it expires (``call``
        itself turns the script's own errors into HookFailed)."""
        assert self.conn is not None
        self._busy = True
        self._hook_deadline = self.server.loop.time() + self.settings.limits.hook_timeout
        self._hook_expired = False
        try:
            result = await call()
        except asyncio.CancelledError:
            if not self._hook_expired:
                raise
            assert self._task is not None
            self._task.uncancel()
            result = None
        finally:
            self._busy = False
            self._hook_deadline = 0.0
            self._last_activity = self.server.loop.time()
        if self._hook_expired:
            counters.script_errors += 1
            log.error(
                "connection %s: hook %s timed out after %.1fs",
                self.conn.id,
                name,
                self.settings.limits.hook_timeout,
            )
            raise HookFailed(name)
        return result

    def _expire_hook(self) -> None:
        """The running hook is past its deadline: cancel it; the client gets its failure reply."""
        if self._task is not None and not self._hook_expired:
            self._hook_expired = True
            self._task.cancel()

    async def _decide(self, spec: HookSpec, *args: Any, detail: str = "") -> Any:
        """The hook's action, or ANSWERED when the client already got its answer: the
        script's own refusal, or the hook's failure reply (both logged and counted)."""
        try:
            action = await self._hook(spec, *args)
        except HookFailed:
            self._hook_failed(spec, detail)
            return ANSWERED
        if isinstance(action, Reject | Defer):
            self._refuse(action, spec, detail)
            return ANSWERED
        return action

    def _hook_failed(self, spec: HookSpec, detail: str = "") -> None:
        """Answer a hook that raised, timed out or answered nonsense with its registry reply."""
        reply = spec.failure
        assert reply is not None  # every hook run inside a conversation has one
        self._refused(spec, reply, detail)
        self.core.send_reply(reply)

    def _refuse(self, action: Reject | Defer, spec: HookSpec, detail: str = "") -> None:
        self._refused(spec, action.reply, detail)
        self.core.send_reply(action.reply, disconnect=action.disconnect)

    def _refused(self, spec: HookSpec, reply: Reply, detail: str = "") -> None:
        """Log and count a refusal (RFC 5321 §4.2.1: the 4xx/5xx the client was sent).

        One info line each, with what an operator needs to answer "why was this refused":
        connection id, phase, client, reply; ``detail`` names the envelope address concerned.
        Never AUTH data. Script-supplied text is escaped, so it cannot forge log lines.
        """
        name = spec.counter
        setattr(counters, name, getattr(counters, name) + 1)
        text = " / ".join(replies.sanitize_text(line) for line in reply.all_lines())
        log.info(
            'connection %s: %s refused: client=%s%s reply="%d %s %s"',
            self.conn.id if self.conn is not None else "?",
            spec.phase,
            self.remote_ip,
            detail,
            reply.code,
            reply.enhanced or "-",
            text,
        )

    # --- phases ----------------------------------------------------------------------------

    async def _greet(self) -> None:
        assert self.conn is not None
        banner = self.settings.greeting_banner
        hostname = self.snapshot.protocol_settings.hostname
        spec = hooks.CONNECT
        try:
            action = await self._hook(spec, self.conn)
        except HookFailed:
            reply = spec.failure
            assert reply is not None
            self._refused(spec, reply)
            self.core.send_greeting(reply)
            return
        if isinstance(action, Reject | Defer):
            reply = greeting_refusal(action.reply)
            self._refused(spec, reply)
            self.core.send_greeting(reply)
            if action.disconnect and not self.core.closed:
                # RFC 5321 §3.1 lets a 554 server wait for QUIT; the script asked not to.
                self.core.receive_data(b"")
            return
        if isinstance(action, Accept) and action.text:
            banner = action.text
        if self.settings.greeting_delay:
            # The early-talker window (RFC 5321 §3.1: the client waits for the greeting).
            await asyncio.sleep(self.settings.greeting_delay)
        self.core.send_greeting(replies.greeting(hostname, banner))

    async def _on_helo(self, event: events.Helo) -> None:
        assert self.conn is not None
        action = await self._decide(
            hooks.HELO,
            self.conn,
            Helo(event.name, event.extended),
            detail=f" helo={replies.quote_for_reply(event.name, 255)}",
        )
        if action is ANSWERED:
            return
        server_update(self.conn, helo_name=event.name, esmtp=event.extended)
        self.core.accept()

    async def _on_starttls(self, event: events.StartTls) -> None:
        self._flush()  # the 220 must reach the client before the handshake starts
        if not await self._handshake():
            return
        assert self.conn is not None
        server_update(self.conn, helo_name=None)
        self.core.tls_established()
        self._refuse_unverified_certificate()

    async def _handshake(self) -> bool:
        """TLS on the connection (after STARTTLS's 220, or first thing on an implicit-TLS
        listener); records ``conn.tls``. False when it failed: the connection is closed then,
        with 454 after STARTTLS, and without a word on an implicit-TLS listener (the client
        expects TLS records, not a reply)."""
        assert self.transport is not None and self.conn is not None
        tls = self.snapshot.tls
        assert tls is not None  # STARTTLS is offered and tls_implicit allowed only with one
        if self._before_tls is not None:
            # Runs after start_tls has handed the socket to the TLS layer and before that
            # layer starts its handshake (both are queued behind it): the early bytes go
            # first into its input, in order, ahead of anything read later.
            self.server.loop.call_soon(self._pass_early_bytes, self.transport)
        try:
            new_transport = await self.server.loop.start_tls(
                self.transport,
                self,
                tls.context,
                server_side=True,
                ssl_handshake_timeout=self.settings.limits.command_timeout,
            )
        except Exception as error:  # ssl.SSLError, OSError, TimeoutError, ConnectionError
            new_transport = None
            log.info("connection %s: TLS handshake failed: %s", self.conn.id, error or repr(error))
        if new_transport is None:
            self._handshake_failed()
            return False
        self.transport = new_transport
        # A fresh transport with its own flow control; the old one's marks are gone with it.
        self._tls = True
        self._writing_paused = self._reading_paused = self._input_full = False
        info = tls_info(new_transport.get_extra_info("ssl_object"), tls.verifier)
        self._peer_certificate = info.peer_certificate
        certificate = info.peer_certificate
        self.core.client_certificate_verified = certificate is not None and certificate.verified
        server_update(self.conn, tls=info)
        return True

    def _pass_early_bytes(self, raw: asyncio.Transport) -> None:
        early, self._before_tls = self._before_tls, None
        layer: Any = raw.get_protocol()
        if not early or layer is self:
            return
        if not hasattr(layer, "buffer_updated"):  # a plain Protocol (neither loop's today)
            layer.data_received(bytes(early))
            return
        # Both loops' TLS layers are buffered protocols (uvloop's is not a subclass of
        # asyncio.BufferedProtocol, hence the duck typing).
        view = memoryview(early)
        while view:
            buffer = memoryview(layer.get_buffer(len(view)))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            layer.buffer_updated(size)
            view = view[size:]

    def _handshake_failed(self) -> None:
        if self._implicit_tls:
            self.core.connection_lost()
        else:
            self.core.close_with(replies.TLS_HANDSHAKE_FAILED, "TLS handshake failed")
        if self.transport is not None:
            self.transport.abort()

    def _refuse_unverified_certificate(self) -> None:
        """``tls_client_certificate = "require"``: a certificate that did not verify ends the
        session with 554 5.7.1 and the reason (one that sent none failed the handshake already,
        with OpenSSL's alert)."""
        certificate = self._peer_certificate
        if self.snapshot.settings.tls_client_certificate != "require":
            return
        if certificate is not None and certificate.verified:
            return
        problem = certificate.verify_error if certificate is not None else None
        # The verifier's text may quote what the certificate holds: never raw into a reply.
        reason = replies.quote_for_reply(problem or "no certificate", 200)
        assert self.conn is not None
        log.info(
            'connection %s: client certificate refused: client=%s subject="%s" reason="%s"',
            self.conn.id,
            self.remote_ip,
            replies.sanitize_text(certificate.subject if certificate is not None else "-"),
            reason,
        )
        reply = replies.CLIENT_CERTIFICATE_NOT_VERIFIED
        self.core.close_with(reply.with_text(f"{reply.text}: {reason}"), "client certificate")

    async def _on_auth(self, event: events.AuthRequest | events.AuthResponse) -> None:
        assert self.conn is not None
        if isinstance(event, events.AuthRequest):
            if event.mechanism in self.script.mechanisms:
                await self._start_script_mechanism(event.mechanism, event.initial_response)
                return
            self._sasl = mechanism_for(event.mechanism)
            step = self._sasl.step(event.initial_response)
        elif self._script_sasl is not None:
            await self._script_step(event.data)
            return
        else:
            assert self._sasl is not None  # the core sends AuthResponse only inside AUTH
            step = self._sasl.step(event.data)
        if isinstance(step, Challenge):
            self.core.send_auth_challenge(step.data)
            return
        self._sasl = None
        if isinstance(step, Failed):
            self.core.send_reply(step.reply)
            return
        # Logged with the mechanism only: user names and passwords stay out of the log.
        detail = f" mechanism={step.mechanism}"
        credentials = self._completed(step)
        if credentials is None:
            await self._auth_failed(detail)
            return
        try:
            action = await self._check_credentials(credentials)
        except HookFailed:
            self._hook_failed(hooks.AUTH, detail)
            return
        if isinstance(action, Accept):
            self._authenticated(credentials.username, credentials.mechanism)
        elif isinstance(action, Reject | Defer):
            await self._auth_delay()
            self._refuse(action, hooks.AUTH, detail)
        else:
            await self._auth_failed(detail)

    def _completed(self, step: Credentials) -> Credentials | None:
        """The credentials as the check sees them: with the listener's password file, and for
        EXTERNAL with the identity of the verified client certificate (None when there is
        none, or when the client asks to act as someone else, RFC 4422 appendix A)."""
        passwords = self.snapshot.passwords
        if step.mechanism != "EXTERNAL":
            if passwords is None:
                return step
            return dataclasses.replace(step, password_check=passwords.verify)
        certificate = self._peer_certificate
        identity = certificate.common_name if certificate and certificate.verified else None
        if not identity or (step.authzid and step.authzid != identity):
            return None
        return dataclasses.replace(step, username=identity)

    async def _check_credentials(self, credentials: Credentials) -> Any:
        """The script's ``auth`` hook decides when it has one; otherwise a verified certificate
        is enough for EXTERNAL, and PLAIN and LOGIN need the password file's word.
        Raises HookFailed as ``_hook`` does (the password check failing counts as that)."""
        if hooks.AUTH.name in self.script.hooks:
            return await self._hook(hooks.AUTH, self.conn, credentials)
        if credentials.mechanism == "EXTERNAL":
            return Accept()
        try:
            matched = await credentials.password_file_matches()
        except Exception:
            log.exception("connection %s: password check failed", self.conn_id)
            raise HookFailed("auth") from None
        return Accept() if matched else None

    def _authenticated(self, identity: str, mechanism: str) -> None:
        self._auth = AuthIdentity(identity, mechanism)
        server_update(self.conn, auth=self._auth)
        self.core.send_reply(replies.AUTH_SUCCEEDED)

    async def _auth_delay(self) -> None:
        counters.auth_failures += 1
        # Slow down guessing: each failure on this connection waits longer before the answer.
        await asyncio.sleep(self.core.auth_failure_delay() + 0.25)

    async def _auth_failed(self, detail: str) -> None:
        await self._auth_delay()
        self._refused(hooks.AUTH, replies.AUTH_FAILED, detail)
        self.core.send_reply(replies.AUTH_FAILED)

    # --- a script's own SASL mechanisms (mailwarden.auth.custom) ------------------------------

    async def _start_script_mechanism(self, name: str, initial: bytes | None) -> None:
        factory = self.script.mechanisms[name]
        self._sasl_rounds = 0
        try:
            self._script_sasl = factory()
        except (Exception, SystemExit, KeyboardInterrupt):  # as policy.runner: never the worker
            counters.script_errors += 1
            log.exception("connection %s: SASL mechanism %s failed to start", self.conn_id, name)
            self._script_sasl_failed(name)
            return
        self._script_sasl_name = name
        await self._script_step(initial)

    async def _script_step(self, response: bytes | None) -> None:
        """One step of the script's mechanism: 334 with its challenge, 235 with its identity,
        535 on its failure; 454 4.7.0 when it raises, runs past ``hook_timeout``, answers
        anything else or keeps challenging past the round limit."""
        mechanism, name = self._script_sasl, self._script_sasl_name
        assert mechanism is not None and self.conn is not None
        self._sasl_rounds += 1
        try:
            result = await self._guarded(
                f"SASL {name}", lambda: _run_step(mechanism, self.conn, response, name)
            )
        except HookFailed:
            self._script_sasl = None
            self._script_sasl_failed(name)
            return
        problem = None
        if isinstance(result, Challenge) and isinstance(result.data, bytes):
            if self._sasl_rounds < MAX_SASL_ROUNDS:
                self.core.send_auth_challenge(result.data)
                return
            problem = f"a challenge past the limit of {MAX_SASL_ROUNDS} rounds"
        self._script_sasl = None
        detail = f" mechanism={name}"
        if problem is None and isinstance(result, Success) and _valid_identity(result.identity):
            self._authenticated(result.identity, name)
        elif problem is None and isinstance(result, Failure):
            await self._auth_failed(detail)
        else:
            counters.script_errors += 1
            log.error(
                "connection %s: SASL mechanism %s answered %s; expected Challenge(bytes),"
                " Success(identity) or Failure()",
                self.conn_id,
                name,
                problem or _describe(result),
            )
            self._script_sasl_failed(name)

    def _script_sasl_failed(self, name: str) -> None:
        reply = replies.AUTH_TEMPORARY_FAILURE
        self._refused(hooks.AUTH, reply, f" mechanism={name}")
        self.core.send_reply(reply)

    @property
    def conn_id(self) -> str:
        return self.conn.id if self.conn is not None else "?"

    async def _on_mail(self, event: events.MailFrom) -> None:
        assert self.conn is not None
        self.tx = Transaction(id=self.server.next_message_id())
        logs.TRANSACTION.set(self.tx.id)
        sender = Sender(str(event.path.address), dict(event.path.parameters))
        action = await self._decide(
            hooks.MAIL_FROM, self.conn, self.tx, sender, detail=f" from=<{sender.address}>"
        )
        if action is ANSWERED:
            self._end_transaction()
            return
        reply = replies.SENDER_OK
        if isinstance(action, Accept):
            if action.sender is not None:
                sender.address = action.sender
            self.tx.metadata.update(action.metadata)
            if action.text:
                reply = reply.with_text(action.text)
        self.tx.sender = sender
        self.core.send_reply(reply)

    def _relay_refusal(self, address: str) -> Reply | None:
        """The built-in anti-relay rule, decided from the session's own facts, never from
        ``conn``, which scripts hold."""
        return relay_refusal(
            self._trusted, self._auth is not None, self.snapshot.local_domains, address
        )

    async def _on_rcpt(self, event: events.RcptTo) -> None:
        assert self.conn is not None and self.tx is not None
        recipient = Recipient(str(event.path.address), dict(event.path.parameters))
        detail = f" to=<{recipient.address}>"
        refusal = self._relay_refusal(recipient.address)
        if refusal is not None:
            self._refused(hooks.RCPT_TO, refusal, detail)
            self.core.send_reply(refusal)
            return
        action = await self._decide(hooks.RCPT_TO, self.conn, self.tx, recipient, detail=detail)
        if action is ANSWERED:
            return
        reply = replies.RECIPIENT_OK
        if isinstance(action, Accept):
            if action.recipient is not None:
                recipient.address = action.recipient
                # A rewrite must not open a relay path the built-in rule just closed. A bare
                # "postmaster" has no domain and passes, as RFC 5321 §4.5.1 wants.
                refusal = self._relay_refusal(action.recipient)
                if refusal is not None:
                    self._refused(
                        hooks.RCPT_TO, refusal, f"{detail} rewritten=<{action.recipient}>"
                    )
                    self.core.send_reply(refusal)
                    return
            recipient.metadata.update(action.metadata)
            if action.text:
                reply = reply.with_text(action.text)
        self.tx.recipients.append(recipient)
        self.core.send_reply(reply)

    async def _on_message_start(self, event: events.MessageStart) -> None:
        assert self.tx is not None
        self.writer = MessageWriter(
            self.tx.id, self.server.spool.spill_path, self.snapshot.spool_settings.memory_threshold
        )
        conn, tx = self.conn, self.tx
        assert conn is not None
        only = tx.recipients[0].address if len(tx.recipients) == 1 else None
        self.writer.write(
            received_header(
                conn,
                tx.id,
                only,
                self.snapshot.protocol_settings.hostname,
                self.core.utf8_transaction,
            )
        )

    async def _on_message_data(self, event: events.MessageData) -> None:
        if self.writer is None:
            return
        try:
            self.writer.write(event.data)
        except SpoolError as error:
            assert self.conn is not None
            log.error("connection %s: spool write failed: %s", self.conn.id, error)
            counters.spool_errors += 1
            self.writer.error = error.reply

    async def _on_message_complete(self, event: events.MessageComplete) -> None:
        assert self.conn is not None and self.tx is not None
        writer, self.writer = self.writer, None
        assert writer is not None
        detail = f" id={self.tx.id}"
        try:
            action = await self._end_of_data(writer)
        finally:
            writer.discard()  # closes a spill file; a committed file was already handed over
        self.tx = None
        try:
            if isinstance(action, Reject | Defer):
                self._refuse(action, hooks.DATA, detail)
                return
            if not action.is_positive:  # a script error, a spool failure
                self._refused(hooks.DATA, action, detail)
            self.core.send_reply(action)
        finally:
            logs.TRANSACTION.set(None)  # after the refusal's line, which is the transaction's

    async def _end_of_data(self, writer: MessageWriter) -> Reply | Reject | Defer:
        """Decide on and store a complete message; the reply (or refusal) to send."""
        assert self.conn is not None and self.tx is not None
        if writer.error is not None:
            return writer.error
        headers = Headers.parse(writer.header_block())
        message = Message(
            headers, writer.body_size, writer.open_body, has_body=writer.has_separator
        )
        try:
            action = await self._data_hook(writer, message)
        finally:
            message.close()
        if isinstance(action, Reply | Reject | Defer):
            return action
        outcome = apply_end_of_data(action, self.tx.recipients)
        kept, text = outcome.kept, outcome.text
        if not kept:
            counters.messages_discarded += 1
            log.info("%s: discarded (%s)", self.tx.id, self.tx.recipients[0].reason)
            return replies.MESSAGE_DISCARDED
        record = spool_record(
            self.conn,
            self.tx,
            writer,
            headers,
            kept,
            time.time(),
            self.snapshot.hold_retention,
        )
        self._busy = True
        try:
            await self.server.spool.commit(record)
        except SpoolError as error:
            counters.spool_errors += 1
            log.error("%s: not queued: %s", self.tx.id, error)
            return error.reply
        finally:
            self._busy = False
            self._last_activity = self.server.loop.time()
        writer.close_file()
        held = all(r.state is RecipientState.HELD for r in kept)
        if held:
            counters.messages_held += 1
        else:
            counters.messages_queued += 1
        log.info(
            "%s: %s from=<%s> nrcpt=%d size=%d client=%s",
            self.tx.id,
            "held" if held else "queued",
            record.sender,
            len(kept),
            record.size,
            self.conn.remote_ip,
        )
        if text:
            return replies.MESSAGE_QUEUED.with_text(text)
        return replies.MESSAGE_QUEUED.with_text(f"Message queued as {self.tx.id}")

    async def _data_hook(self, writer: MessageWriter, message: Message) -> Any:
        """The data hook's action; a body the script edited replaces the received one in the
        writer first (only then is the body copied: an untouched one stays where it is)."""
        spec = hooks.DATA
        try:
            action = await self._hook(spec, self.conn, self.tx, message)
        except HookFailed:
            assert spec.failure is not None
            return spec.failure
        if isinstance(action, Reject | Defer) or not message.body_edited:
            return action
        try:
            if message.body_size > self.snapshot.spool_settings.memory_threshold:
                # Megabytes to copy to a file: off the event loop, as the spool's fsync is.
                await asyncio.to_thread(writer.replace_body, message.body_chunks())
            else:
                writer.replace_body(message.body_chunks())
        except SpoolError as error:
            counters.spool_errors += 1
            log.error("%s: edited body not stored: %s", self.tx.id if self.tx else "?", error)
            return error.reply
        return action

    async def _on_message_aborted(self, event: events.MessageAborted) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        if not event.reason.startswith("connection closed"):
            # The core refused the content (bare CR/LF, NUL, size) and sent its 5xx itself: a
            # message refused at end of data. A connection closed mid-message is no refusal.
            counters.messages_rejected += 1
            log.info(
                "connection %s: data refused: client=%s%s reason=%s",
                self.conn.id if self.conn is not None else "?",
                self.remote_ip,
                f" id={self.tx.id}" if self.tx is not None else "",
                event.reason,
            )
        self._end_transaction()

    async def _on_reset(self, event: events.TransactionReset) -> None:
        if self.writer is not None:
            self.writer.discard()
            self.writer = None
        self._end_transaction()

    def _end_transaction(self) -> None:
        """The transaction is over (refused, aborted, reset): later lines carry no tx id."""
        self.tx = None
        logs.TRANSACTION.set(None)

    async def _on_vrfy(self, event: events.Vrfy) -> None:
        assert self.conn is not None
        action = await self._decide(hooks.VRFY, self.conn, event.argument)
        if action is ANSWERED:
            return
        if isinstance(action, Accept):
            # The client's argument goes back escaped (non-ASCII too): replies are US-ASCII
            # (RFC 5321 §4.2) and raw input is never echoed.
            text = action.text or replies.quote_for_reply(event.argument, 256)
            self.core.send_reply(replies.VRFY_OK.with_text(text))
        else:
            self.core.accept()

    async def _on_closing(self, event: events.ConnectionClosing) -> None:
        self._hang_up()

    def _hang_up(self) -> None:
        """Send what is left and close; the transport closes once its buffer has drained."""
        self._flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    # --- server-initiated ------------------------------------------------------------------

    def expire(self, reply: Reply, reason: str) -> None:
        """Close from outside (idle timeout, shutdown grace over): reply, then hang up.

        A client whose replies pile up unread (writing paused), or that stopped reading before
        the last of them, would keep the transport open for ever waiting to drain: abort it.
        """
        stuck = self._writing_paused or self._draining
        self.core.close_with(reply, reason)
        self.wake()
        if self.transport is None:
            return
        if stuck:
            self.transport.abort()
        elif self._busy:
            self._hang_up()

    def _log_ids(self) -> dict[str, str | None]:
        """The ids of a line logged outside the session's task (see mailwarden.logs)."""
        return {
            "conn": self.conn.id if self.conn else None,
            "tx": self.tx.id if self.tx else None,
        }

    def sweep(self, now: float) -> None:
        """The listener's once-a-second check: a hook past ``hook_timeout`` is cancelled; a
        client idle past its timeout (RFC 5321 §4.5.3.2) gets 421 4.4.2. The timeouts are those
        of the snapshot this session started with, not the latest reload's."""
        if self._busy:
            if self._hook_deadline and now > self._hook_deadline:
                self._expire_hook()
            return
        limits = self.settings.limits
        timeout = limits.data_timeout if self.core.in_data else limits.command_timeout
        if now - self._last_activity > timeout:
            # Called by the listener's sweep, outside the session's task: the ids go explicitly.
            log.info(
                "connection %s: timeout",
                self.conn.id if self.conn else "?",
                extra=self._log_ids(),
            )
            self.expire(replies.TIMEOUT, "timeout")


_HANDLERS: dict[type, Any] = {
    events.Helo: SmtpSession._on_helo,
    events.StartTls: SmtpSession._on_starttls,
    events.AuthRequest: SmtpSession._on_auth,
    events.AuthResponse: SmtpSession._on_auth,
    events.MailFrom: SmtpSession._on_mail,
    events.RcptTo: SmtpSession._on_rcpt,
    events.MessageStart: SmtpSession._on_message_start,
    events.MessageData: SmtpSession._on_message_data,
    events.MessageComplete: SmtpSession._on_message_complete,
    events.MessageAborted: SmtpSession._on_message_aborted,
    events.TransactionReset: SmtpSession._on_reset,
    events.Vrfy: SmtpSession._on_vrfy,
    events.ConnectionClosing: SmtpSession._on_closing,
}


async def _run_step(
    mechanism: ScriptMechanism, conn: Any, response: bytes | None, name: str
) -> Any:
    """``mechanism.step``, with the script's own errors logged and turned into HookFailed."""
    try:
        return await mechanism.step(conn, response)
    except (Exception, SystemExit, KeyboardInterrupt):  # as policy.runner: never the worker
        counters.script_errors += 1
        log.exception("connection %s: SASL mechanism %s raised", conn.id, name)
        raise HookFailed(name) from None


def _describe(result: object) -> str:
    """What a mechanism answered, for the log: its type, and for Success the identity's type
    (never a value: it may hold what the client sent)."""
    if isinstance(result, Success):
        return f"Success with an unusable identity ({type(result.identity).__name__})"
    return type(result).__name__


def _valid_identity(identity: object) -> bool:
    """An identity fit for ``conn.auth`` and the log: a non-empty printable string."""
    return isinstance(identity, str) and 0 < len(identity) <= 255 and identity.isprintable()
