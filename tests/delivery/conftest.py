"""Fixtures for the delivery tests: trustme certificates for a ``mailwarden run`` TLS peer.

Shared helpers live in tests/support (never imported from a conftest); these are fixtures only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

# The name the peer node's certificate is issued for (also its [node] hostname).
PEER_NAME = "mx.test.example"


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_keys(tmp_path: Path, ca: trustme.CA) -> str:
    """Certificate and key for the peer node; the ``[[servers]]`` keys that select them."""
    cert = ca.issue_cert(PEER_NAME, "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    return 'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    """The test CA as a PEM bundle, for TlsPolicy.ca_file."""
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path
