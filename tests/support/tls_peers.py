"""Shared pieces of the receiving-side TLS tests: certificates written for the node, a policy
script that records what ``conn.tls`` showed, and clients with or without a certificate."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import trustme

# A script that writes what every hook of interest saw of conn.tls, one JSON line per hook call.
FACTS_SCRIPT = """
import json
import pathlib

OUT = pathlib.Path(__file__).with_name("tls-facts.jsonl")


def facts(conn):
    tls = conn.tls
    if tls is None:
        return None
    cert = tls.peer_certificate
    return {
        "protocol": tls.protocol,
        "cipher": tls.cipher,
        "bits": tls.bits,
        "sni": tls.sni,
        "subject_string": tls.peer_certificate_subject,
        "cert": None if cert is None else {
            "subject": cert.subject,
            "cn": cert.common_name,
            "subject_parts": {k: list(v) for k, v in cert.subject_parts.items()},
            "issuer": cert.issuer,
            "issuer_parts": {k: list(v) for k, v in cert.issuer_parts.items()},
            "serial": cert.serial,
            "alt_names": list(cert.alt_names),
            "not_before": cert.not_before.isoformat(),
            "not_after": cert.not_after.isoformat(),
            "sha1": cert.sha1,
            "sha256": cert.sha256,
            "pem": cert.pem,
            "verified": cert.verified,
            "verify_error": cert.verify_error,
        },
    }


def record(hook, conn):
    with OUT.open("a") as out:
        out.write(json.dumps({"hook": hook, "tls": facts(conn)}) + "\\n")


async def connect(conn):
    record("connect", conn)


async def helo(conn, helo):
    record("helo", conn)


async def mail_from(conn, tx, sender):
    record("mail_from", conn)
"""


def facts_script(directory: Path) -> str:
    """Write the facts script; the ``[[servers]]`` line that selects it."""
    (directory / "facts.py").write_text(FACTS_SCRIPT)
    return 'script = "facts.py"\n'


def recorded(directory: Path) -> list[dict[str, Any]]:
    path = directory / "tls-facts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_pair(directory: Path, cert: trustme.LeafCert, stem: str) -> tuple[Path, Path]:
    """The certificate chain and key of ``cert`` as ``stem.pem`` and ``stem.key``."""
    certificate, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    certificate.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    return certificate, key


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca``, presenting ``cert`` when given."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if cert is not None:
        cert.configure_cert(context)
    return context
