"""Ask TLS clients for a certificate without letting OpenSSL refuse the ones it cannot verify.

Why ctypes: Python's :mod:`ssl` asks for a client certificate only together with OpenSSL's own
verification, and a certificate that fails it aborts the handshake (``CERT_OPTIONAL`` included;
tests/smtp/test_openssl_accept.py shows it). A listener with ``tls_client_certificate =
"request"`` must instead let such a certificate through, so that the script sees it with the
reason it failed (:mod:`mailwarden.auth.certificates` verifies it after the handshake). OpenSSL
allows exactly that with a verify callback that accepts every certificate
(``SSL_CTX_set_verify``, see its manual page); the stdlib exposes no such callback (there is no
``verify_callback`` in :mod:`ssl`, and pyOpenSSL's contexts cannot drive asyncio's
``start_tls``), so this module installs one through ctypes on the context's ``SSL_CTX``. The
callback only waives the chain check: OpenSSL still checks the client's CertificateVerify
signature, so the certificate is one whose key the client holds (RFC 8446 §4.4.3).

Why it is safe:

- It fails closed. Finding the ``SSL_CTX`` relies on the layout of CPython's context object
  (the pointer right after the object header), so :func:`accept_any_client_certificate`
  checks that the pointer it found is that context's (same verify mode, same options) before
  it writes through it, reads the callback back afterwards, and raises
  :class:`UnsupportedError` rather than guess; the listener then does not start
  (``servers[ID].tls_client_certificate: ...``). Had the callback not been installed,
  ``CERT_REQUIRED`` without any CA loaded into OpenSSL would refuse every client.
- It never decides who gets in. Under ``"require"`` the session refuses (554 5.7.1, with the
  reason) every certificate our own verification does not pass, and a client without one
  fails the handshake; a client that never starts TLS gets 530 (RFC 3207 §4).
- It works the same under uvloop: both loops make each connection's ``SSLObject`` from the
  context with ``SSLContext.wrap_bio``, so OpenSSL copies the callback from the ``SSL_CTX``
  into every ``SSL``. CPython keeps a callback installed this way when ``verify_mode`` is set
  again (``_ssl.c`` reads it back with ``SSL_CTX_get_verify_callback``).
"""

from __future__ import annotations

import ctypes
import ssl
import sys

_VERIFY_PEER = 0x01  # SSL_VERIFY_PEER
_FAIL_IF_NO_PEER_CERT = 0x02  # SSL_VERIFY_FAIL_IF_NO_PEER_CERT

_VerifyCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


@_VerifyCallback
def _accept(preverify_ok: int, store_context: int | None) -> int:
    """OpenSSL's verify callback: 1 (go on) for every certificate, whatever OpenSSL found."""
    return 1


class UnsupportedError(RuntimeError):
    """This Python's ssl module is not laid out as expected: client certificates cannot be
    requested without verification here."""


def _libssl() -> ctypes.CDLL:
    import _ssl

    # The _ssl extension links libssl: looking symbols up through it finds the very library
    # (and version) whose SSL_CTX the context holds.
    path = getattr(_ssl, "__file__", None)
    library = ctypes.CDLL(path) if path else ctypes.CDLL(None)
    library.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VerifyCallback]
    library.SSL_CTX_set_verify.restype = None
    library.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    library.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    library.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    library.SSL_CTX_get_options.restype = ctypes.c_uint64
    library.SSL_CTX_get_verify_callback.argtypes = [ctypes.c_void_p]
    library.SSL_CTX_get_verify_callback.restype = ctypes.c_void_p
    return library


_LIBRARY: ctypes.CDLL | None = None


def _ssl_ctx_pointer(context: ssl.SSLContext, library: ctypes.CDLL) -> int:
    """The ``SSL_CTX *`` of ``context``, checked; raises UnsupportedError."""
    if sys.implementation.name != "cpython":
        raise UnsupportedError("requesting unverified client certificates needs CPython")
    pointer = ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value
    if not pointer:
        raise UnsupportedError("no SSL_CTX found in the ssl context")
    # Two facts only the real SSL_CTX of this context has: change one, read both back.
    context.verify_mode = ssl.CERT_OPTIONAL
    if library.SSL_CTX_get_verify_mode(pointer) != _VERIFY_PEER:
        raise UnsupportedError("the ssl context's SSL_CTX is not where it was expected")
    if library.SSL_CTX_get_options(pointer) != int(context.options):
        raise UnsupportedError("the ssl context's SSL_CTX is not where it was expected")
    return pointer


def accept_any_client_certificate(context: ssl.SSLContext, *, required: bool) -> None:
    """Make ``context`` (a server context) ask every client for a certificate and accept
    whatever it sends; with ``required``, a client that sends none fails the handshake with a
    TLS alert (RFC 8446 §4.4.2.4: ``certificate_required``).

    Raises UnsupportedError (see the module docstring) when this cannot be done safely."""
    global _LIBRARY
    if _LIBRARY is None:
        _LIBRARY = _libssl()
    pointer = _ssl_ctx_pointer(context, _LIBRARY)
    _LIBRARY.SSL_CTX_set_verify(pointer, _VERIFY_PEER, _accept)
    # Through the ssl module from here: it keeps the callback and sets the flags it knows of.
    context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    expected = _VERIFY_PEER | (_FAIL_IF_NO_PEER_CERT if required else 0)
    if _LIBRARY.SSL_CTX_get_verify_mode(pointer) != expected:
        raise UnsupportedError("the ssl module did not keep the verify settings")
    if _LIBRARY.SSL_CTX_get_verify_callback(pointer) != ctypes.cast(_accept, ctypes.c_void_p).value:
        raise UnsupportedError("the ssl module did not keep the verify callback")
