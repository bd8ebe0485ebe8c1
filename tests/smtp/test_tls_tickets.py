"""smtp/tls_tickets.py: two server contexts given the same ticket keys resume each other's
sessions (as two workers of a node must), and keep their verify mode."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme

from mailwarden.smtp.tls_tickets import KEY_LENGTH, share_ticket_keys


def server_context(leaf: trustme.LeafCert, keys: bytes | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(context)
    if keys is not None:
        assert share_ticket_keys(context, keys)
    return context


def client_context() -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return client


# A session can be offered only through the client context it came from.
CLIENT = client_context()


def handshake(
    server: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[bool, ssl.SSLSession]:
    """One TLS 1.3 connection over a socket pair; whether it resumed, and its new session."""
    client = CLIENT
    ours, theirs = socket.socketpair()

    def serve() -> None:
        with server.wrap_socket(theirs, server_side=True) as tls:
            tls.sendall(b"hi")  # the tickets go out with it
            tls.recv(3)

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(ours, server_hostname="mx.example", session=session) as tls:
        assert tls.recv(2) == b"hi"
        reused, new = tls.session_reused, tls.session
        tls.sendall(b"bye")
    thread.join()
    assert new is not None
    return reused, new


@pytest.mark.parametrize(("shared", "resumed"), [(True, True), (False, False)])
def test_a_ticket_from_one_context_resumes_on_another_only_with_shared_keys(
    shared: bool, resumed: bool
) -> None:
    leaf = trustme.CA().issue_cert("mx.example")
    keys = bytes(range(KEY_LENGTH)) if shared else None
    first, second = server_context(leaf, keys), server_context(leaf, keys)
    reused, session = handshake(first, None)
    assert not reused
    assert handshake(second, session)[0] is resumed


def test_verify_mode_is_left_as_it_was() -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert share_ticket_keys(context)
    assert context.verify_mode == ssl.CERT_NONE


def test_keys_of_the_wrong_length_are_refused() -> None:
    with pytest.raises(ValueError, match="80 bytes"):
        share_ticket_keys(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"short")
