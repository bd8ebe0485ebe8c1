"""OpenSSL's own DANE verification (RFC 7671, RFC 7672 §3) for asyncio's ``start_tls``.

Why OpenSSL's DANE API through ctypes: DANE-TA(2) needs the server's whole chain (the trust
anchor is one of the certificates the server sends, RFC 7672 §3.1.2), and Python 3.11's
:mod:`ssl` shows only the leaf (``get_unverified_chain`` came in 3.13). Rather than collect
the chain in a verify callback and re-implement chain building, name checks and the rules of
each usage, the handshake is verified by OpenSSL's DANE code (``SSL_dane_enable``,
``SSL_dane_tlsa_add``; see their manual page), which implements exactly those RFCs: DANE-EE(3)
matches the leaf with no name or validity checks (``DANE_FLAG_NO_DANE_EE_NAMECHECKS``, RFC 7672
§3.1.1); DANE-TA(2) makes the matching certificate of the chain the only trust anchor and
checks the names (§3.2.2). The context loads no CA at all, so only the TLSA records can make
a certificate pass; a mismatch fails the handshake (``X509_V_ERR_DANE_NO_MATCH``).

The records belong to one connection (``SSL *``), which asyncio creates inside ``start_tls``
with ``SSLContext.wrap_bio`` (uvloop too). :class:`DaneContext` is a context whose
``sslobject_class`` configures the new ``SSL *`` right after it is made, before the
handshake.

Why it is safe: it fails closed. The ``SSL_CTX *`` is found and checked as in
:mod:`mailwarden.smtp.openssl_accept`. The ``SSL *`` of CPython's SSL object sits after the
object header and one pointer (``_ssl.c``: ``Socket``, then ``ssl``, then ``ctx``); it is used
only when ``SSL_get_SSL_CTX`` of it is this context's ``SSL_CTX`` and the next field is this
context object. Any other answer, or an OpenSSL call that fails, raises
:class:`~mailwarden.smtp.openssl_accept.UnsupportedError` (an ``ssl.SSLError``-free
RuntimeError) from ``wrap_bio``: the connection then fails as a TLS failure and is deferred,
never sent without the DANE check.
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from mailwarden.smtp.openssl_accept import UnsupportedError, _ssl_ctx_pointer

__all__ = ["DANE_NO_MATCH", "DaneContext", "UnsupportedError", "dane_context"]

DANE_NO_MATCH = 65  # X509_V_ERR_DANE_NO_MATCH
_DANE_FLAG_NO_DANE_EE_NAMECHECKS = 1
_X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS = 0x4

# (usage, selector, matching type, data)
Record = tuple[int, int, int, bytes]


@functools.cache
def _library() -> ctypes.CDLL:
    import _ssl

    path = getattr(_ssl, "__file__", None)
    library = ctypes.CDLL(path) if path else ctypes.CDLL(None)
    void_p, c_int = ctypes.c_void_p, ctypes.c_int
    signatures: dict[str, tuple[list[Any], Any]] = {
        # _ssl_ctx_pointer's checks call these two through this library
        "SSL_CTX_get_verify_mode": ([void_p], c_int),
        "SSL_CTX_get_options": ([void_p], ctypes.c_uint64),
        "SSL_CTX_dane_enable": ([void_p], c_int),
        "SSL_CTX_dane_set_flags": ([void_p, ctypes.c_ulong], ctypes.c_ulong),
        "SSL_get_SSL_CTX": ([void_p], void_p),
        "SSL_dane_enable": ([void_p, ctypes.c_char_p], c_int),
        "SSL_dane_set_flags": ([void_p, ctypes.c_ulong], ctypes.c_ulong),
        "SSL_dane_tlsa_add": (
            [
                void_p,
                ctypes.c_uint8,
                ctypes.c_uint8,
                ctypes.c_uint8,
                ctypes.c_char_p,
                ctypes.c_size_t,
            ],
            c_int,
        ),
        "SSL_add1_host": ([void_p, ctypes.c_char_p], c_int),
        "SSL_set_hostflags": ([void_p, ctypes.c_uint], None),
    }
    for name, (arguments, result) in signatures.items():
        function = getattr(library, name)  # AttributeError: no DANE in this OpenSSL
        function.argtypes = arguments
        function.restype = result
    return library


def _ssl_pointer(ssl_object: ssl.SSLObject, context: DaneContext) -> int:
    """The ``SSL *`` of ``ssl_object`` (made from ``context``), checked; UnsupportedError."""
    inner = getattr(ssl_object, "_sslobj", None)
    if inner is None or sys.implementation.name != "cpython":
        raise UnsupportedError("DANE verification needs CPython's ssl module")
    base = id(inner) + object.__basicsize__
    size = ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(base + size).value
    owner = ctypes.c_void_p.from_address(base + 2 * size).value
    if not pointer or owner != id(context):
        raise UnsupportedError("the SSL object's SSL is not where it was expected")
    if _library().SSL_get_SSL_CTX(pointer) != context.ctx_pointer:
        raise UnsupportedError("the SSL object's SSL is not where it was expected")
    return pointer


class _DaneSSLObject(ssl.SSLObject):
    """An SSLObject whose ``SSL *`` gets the context's TLSA records before the handshake."""

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        ssl_object: ssl.SSLObject = super()._create(*args, **kwargs)  # type: ignore[misc]
        context = ssl_object.context
        if not isinstance(context, DaneContext):
            raise UnsupportedError("a DANE SSL object from a context without DANE")
        context.configure(_ssl_pointer(ssl_object, context))
        return ssl_object


class DaneContext(ssl.SSLContext):
    """A client context that verifies the server by TLSA records only (RFC 7672 §3).

    ``names``: the reference identifiers for DANE-TA(2), the TLSA base domain first
    (RFC 7672 §3.2.2, the MX host name and its CNAME expansion); ``records``: the usable
    (usage 2 or 3) TLSA records."""

    names: tuple[str, ...]
    records: tuple[Record, ...]
    ctx_pointer: int

    def configure(self, pointer: int) -> None:
        library = _library()
        if library.SSL_dane_enable(pointer, self.names[0].encode("ascii")) <= 0:
            raise UnsupportedError("SSL_dane_enable failed")
        library.SSL_dane_set_flags(pointer, _DANE_FLAG_NO_DANE_EE_NAMECHECKS)
        library.SSL_set_hostflags(pointer, _X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        for name in self.names[1:]:
            if library.SSL_add1_host(pointer, name.encode("ascii")) <= 0:
                raise UnsupportedError(f"SSL_add1_host({name}) failed")
        added = 0
        for usage, selector, mtype, data in self.records:
            result = library.SSL_dane_tlsa_add(pointer, usage, selector, mtype, data, len(data))
            if result < 0:
                raise UnsupportedError("SSL_dane_tlsa_add failed")
            added += result > 0
        if not added:  # OpenSSL found none usable: nothing could authenticate the server
            raise UnsupportedError("no TLSA record usable by OpenSSL")


def dane_context(names: Sequence[str], records: Sequence[Record]) -> DaneContext:
    """A context verifying by ``records`` with ``names`` as reference identifiers (cached:
    the same MX host's connections share one). Raises UnsupportedError when OpenSSL's DANE
    API cannot be used safely here."""
    if not names or not records:
        raise ValueError("DANE needs a name and at least one TLSA record")
    return _dane_context(tuple(n.lower().rstrip(".") for n in names), tuple(records))


@functools.lru_cache(maxsize=256)
def _dane_context(names: tuple[str, ...], records: tuple[Record, ...]) -> DaneContext:
    library = _library()
    context = DaneContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # the names are DANE's (set per SSL), not the SNI's
    pointer = _ssl_ctx_pointer(context, library)  # leaves CERT_OPTIONAL set
    if library.SSL_CTX_dane_enable(pointer) <= 0:
        raise UnsupportedError("SSL_CTX_dane_enable failed")
    # Fail the handshake when no record matches; no CA is loaded, so PKIX cannot pass it.
    context.verify_mode = ssl.CERT_REQUIRED
    context.sslobject_class = _DaneSSLObject
    context.names = names
    context.records = records
    context.ctx_pointer = pointer
    return context
