"""Turn Options into the prebuilt SessionPlan every ping reuses."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .message import Payload
from .options import Options
from .result import SessionPlan

if TYPE_CHECKING:
    import ssl


class SetupError(Exception):
    """A setting cannot be used (bad -b address, unreadable certificate): exit 1."""


def tls_context(options: Options) -> ssl.SSLContext | None:
    """The client TLS context, or None when no TLS is asked for.

    Raises SetupError when a CA file or client certificate cannot be loaded.
    """
    if not (options.starttls or options.implicit_tls):
        return None
    import ssl  # only TLS runs pay for loading it

    try:
        context = ssl.create_default_context(cafile=options.cafile)
        if not options.tls_verify:
            # A meter measures servers as they are; like most SMTP clients it
            # encrypts without authenticating unless told to (RFC 7435).
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if options.tls_cert:
            context.load_cert_chain(options.tls_cert, options.tls_key)
    except (OSError, ssl.SSLError) as error:
        raise SetupError(f"tls: {error}") from None
    return context


def recipients(recipient: str, count: int) -> list[str]:
    """--rcpts N: the recipient, then local+2@domain, local+3@domain, ..."""
    local, at, domain = recipient.rpartition("@")
    if not at:
        local, domain = recipient, ""
    extra = [f"{local}+{n}{at}{domain}" for n in range(2, count + 1)]
    return [recipient, *extra]


def resolve_bind(bind: str | None) -> tuple[int, tuple[object, ...]] | None:
    """The -b source address as (family, sockaddr); SetupError in 1.1's words."""
    if bind is None:
        return None
    try:
        info = socket.getaddrinfo(bind, 0, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise SetupError(f"getaddrinfo() failed {bind}: {error.strerror}") from None
    family, _, _, _, sockaddr = info[0]
    return family, sockaddr


def build_plan(
    options: Options, payload: Payload, bind: tuple[int, tuple[object, ...]] | None
) -> SessionPlan:
    verb = "EHLO" if options.says_ehlo else "HELO"
    encode = str.encode
    return SessionPlan(
        helo_command=encode(f"{verb} {options.helo}\r\n", "utf-8", "surrogateescape"),
        helo_label=verb,
        mail_command=encode(f"MAIL FROM: <{options.sender}>\r\n", "utf-8", "surrogateescape"),
        rcpt_commands=tuple(
            encode(f"RCPT TO: <{rcpt}>\r\n", "utf-8", "surrogateescape")
            for rcpt in recipients(options.recipient, options.rcpts)
        ),
        payload=payload,
        timeout_s=options.timeout_s,
        bind_address=bind[1] if bind else None,
        tls_context=tls_context(options),
        implicit_tls=options.implicit_tls,
        starttls=options.starttls,
        # SNI and --tls-verify check the name the user gave: @server, else the domain.
        server_hostname=options.server or options.recipient.rpartition("@")[2],
        auth=options.auth,
        auth_mech=options.auth_mech,
        debug=options.debug,
    )
