"""Which SASL mechanisms the core offers when: before TLS only those safe in clear (RFC 4954
§4 leaves it to the server), EXTERNAL only with a verified client certificate (RFC 4422
appendix A); EHLO and the AUTH command agree."""

from __future__ import annotations

import pytest

from mailwarden.smtp import replies
from mailwarden.smtp.protocol import ProtocolSettings, SmtpConnection

from .conftest import Driver
from .helpers import TLS, session

SETTINGS = ProtocolSettings(
    tls_available=True,
    auth_mechanisms=("PLAIN", "LOGIN", "EXTERNAL", "CRAM-MD5", "X-TOKEN"),
    auth_clear_mechanisms=frozenset({"CRAM-MD5"}),
)


@pytest.mark.parametrize(
    ("settings", "tls", "verified", "offered"),
    [
        (SETTINGS, False, False, ("CRAM-MD5",)),
        (SETTINGS, True, False, ("PLAIN", "LOGIN", "CRAM-MD5", "X-TOKEN")),
        (SETTINGS, True, True, ("PLAIN", "LOGIN", "EXTERNAL", "CRAM-MD5", "X-TOKEN")),
        (
            ProtocolSettings(auth_requires_tls=False, auth_mechanisms=("PLAIN", "EXTERNAL")),
            False,
            False,
            ("PLAIN",),
        ),
    ],
)
def test_offered_mechanisms(
    settings: ProtocolSettings, tls: bool, verified: bool, offered: tuple[str, ...]
) -> None:
    conn = SmtpConnection(settings)
    conn.tls_active, conn.client_certificate_verified = tls, verified
    assert conn.offered_mechanisms() == offered
    assert f"AUTH {' '.join(offered)}" in conn.ehlo_keywords()


def test_before_tls_only_the_clear_ones_are_accepted(smtp: Driver) -> None:
    t = smtp(
        session("EHLO c.example", "AUTH X-TOKEN", "AUTH EXTERNAL", "AUTH NOPE", "AUTH CRAM-MD5"),
        settings=SETTINGS,
    )
    # EXTERNAL needs TLS first too (538); a name the listener does not have is 504.
    assert t.codes[2:5] == [538, 538, 504]
    assert t.replies[2].lines == (
        f"{replies.AUTH_NEEDS_TLS.enhanced} {replies.AUTH_NEEDS_TLS.text}",
    )
    assert "AUTH CRAM-MD5" in t.replies[1].lines
    assert t.kinds()[-1] == "AuthRequest"


def test_after_tls_without_a_verified_certificate_external_is_unknown(smtp: Driver) -> None:
    t = smtp(
        session("EHLO c.example", "STARTTLS"),
        TLS,
        session("EHLO c.example", "AUTH EXTERNAL ="),
        settings=SETTINGS,
    )
    assert t.codes[-1] == 504
    assert "AUTH PLAIN LOGIN CRAM-MD5 X-TOKEN" in t.replies[-2].lines
