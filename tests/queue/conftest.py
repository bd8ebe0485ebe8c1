"""Certificates for the delivery tests' TLS peers (trustme: a CA made for the test run)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def peer_tls_keys(tmp_path: Path, ca: trustme.CA) -> str:
    """A certificate for peer.test.example in the peer's directory; its [[servers]] keys."""
    directory = tmp_path / "peer"
    directory.mkdir(parents=True, exist_ok=True)
    cert = ca.issue_cert("peer.test.example", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(directory / "cert.pem"))
    return 'tls_certificate = "cert.pem"\ntls_key = "key.pem"\n'
