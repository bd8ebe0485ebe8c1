"""One TLS session-ticket key for every worker of a node, so that any worker resumes a session.

Why: a TLS 1.3 server hands the client tickets (RFC 8446 §4.6.1) encrypted with a key of its
``SSL_CTX``; OpenSSL makes that key at random for every context. The workers of a node share
the port (SO_REUSEPORT), so a client that comes back lands on any of them, and with one key per
worker a ticket resumes only on the worker that issued it (with two workers, half the offers:
benchmarks/tls_accept.py measured it) and no ticket survives a reload, which builds new
contexts. :data:`NODE_TICKET_KEYS` is drawn once, when this module is first imported: in the
supervisor, before it forks the workers, so all of them (and a worker it forks again after a
crash) inherit the same bytes; a reload keeps them, a restart of the node draws new ones.

Why ctypes: :mod:`ssl` has no API for ticket keys; OpenSSL's is ``SSL_CTX_ctrl`` with
``SSL_CTRL_SET_TLSEXT_TICKET_KEYS`` (the ``SSL_CTX_set_tlsext_ticket_keys`` macro: 80 bytes,
a 16-byte key name, a 32-byte HMAC secret and a 32-byte AES key). The context's ``SSL_CTX`` is
found and checked as in :mod:`mailwarden.smtp.openssl_accept`, and the keys are read back: when
anything is not as expected, :func:`share_ticket_keys` returns False and the context keeps its
own random key (resumption then works per worker only; nothing else changes).

What it costs: the key is never rotated while the node runs (OpenSSL's own key lives as long as
its context, i.e. until a reload), so a stolen key decrypts the tickets of that whole time;
tickets are still only valid for their lifetime (7200 s by default).
"""

from __future__ import annotations

import ctypes
import os
import ssl

from mailwarden.smtp import openssl_accept

_SET_TICKET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS
_GET_TICKET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS
KEY_LENGTH = 80

NODE_TICKET_KEYS = os.urandom(KEY_LENGTH)


def _library() -> ctypes.CDLL:
    library = openssl_accept._libssl()
    library.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    library.SSL_CTX_ctrl.restype = ctypes.c_long
    return library


def share_ticket_keys(context: ssl.SSLContext, keys: bytes = NODE_TICKET_KEYS) -> bool:
    """Make ``context`` (a server context) encrypt and decrypt tickets with ``keys``.

    True when done and read back; False when this Python's ssl module is not laid out as
    expected (the context then keeps its own key). The context's ``verify_mode`` is left as it
    was."""
    if len(keys) != KEY_LENGTH:
        raise ValueError(f"ticket keys are {KEY_LENGTH} bytes, got {len(keys)}")
    mode = context.verify_mode
    try:
        library = _library()
        pointer = openssl_accept._ssl_ctx_pointer(context, library)
    except (OSError, AttributeError, openssl_accept.UnsupportedError):
        return False
    finally:
        context.verify_mode = mode  # the pointer check changes it
    given = ctypes.create_string_buffer(keys, KEY_LENGTH)
    if library.SSL_CTX_ctrl(pointer, _SET_TICKET_KEYS, KEY_LENGTH, given) != 1:
        return False
    back = ctypes.create_string_buffer(KEY_LENGTH)
    if library.SSL_CTX_ctrl(pointer, _GET_TICKET_KEYS, KEY_LENGTH, back) != 1:
        return False
    return back.raw == keys
