"""``certificate_matches``: the name check used when the SNI sent differs from the name
verified (RFC 6125 §6.4.3), as properties over generated host names."""

from __future__ import annotations

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from mailwarden.delivery.tls import certificate_matches

KEY = ec.generate_private_key(ec.SECP256R1())
# Letters first: an all-digit name such as 0.0.0.0 is an IP address, never a DNS name.
LABEL = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
NAME = st.lists(LABEL, min_size=2, max_size=4).map(".".join)


def certificate(*names: x509.GeneralName) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ignored.example")])
    now = datetime.datetime.now(datetime.UTC)
    built = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(KEY.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .sign(KEY, hashes.SHA256())
    )
    return built.public_bytes(Encoding.DER)


@settings(max_examples=40, deadline=None)
@given(NAME, NAME)
def test_a_dns_name_matches_itself_in_any_case_and_no_other(name: str, other: str) -> None:
    der = certificate(x509.DNSName(name))
    assert certificate_matches(der, name.upper() + ".")
    assert certificate_matches(der, other) == (other == name)


@settings(max_examples=40, deadline=None)
@given(LABEL, NAME)
def test_a_wildcard_covers_exactly_one_left_most_label(label: str, parent: str) -> None:
    der = certificate(x509.DNSName(f"*.{parent}"))
    assert certificate_matches(der, f"{label}.{parent}")
    assert not certificate_matches(der, parent)
    assert not certificate_matches(der, f"{label}.{label}.{parent}")


def test_ip_addresses_match_ip_entries_only() -> None:
    der = certificate(x509.IPAddress(ipaddress.ip_address("192.0.2.1")), x509.DNSName("a.example"))
    assert certificate_matches(der, "192.0.2.1") and certificate_matches(der, "[192.0.2.1]")
    assert not certificate_matches(der, "192.0.2.2")
    assert not certificate_matches(certificate(x509.DNSName("192.0.2.1")), "192.0.2.1")
