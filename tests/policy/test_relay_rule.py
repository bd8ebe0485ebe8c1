"""The built-in relay rule as a pure function (docs/policy.md, "The built-in relay rule")."""

from __future__ import annotations

import pytest

from mailwarden.policy.relay import relay_refusal
from mailwarden.smtp import replies

LOCAL = frozenset({"example.com"})


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("user@example.com", None),
        ("User@EXAMPLE.COM.", None),
        ("postmaster", None),
        ("user@remote.example", replies.RELAY_DENIED),
        ("user@sub.example.com", replies.RELAY_DENIED),
        ("user%remote.example@example.com", replies.ROUTING_REFUSED),
        ("host!user@example.com", replies.ROUTING_REFUSED),
        ('"a@b"@example.com', replies.ROUTING_REFUSED),
    ],
)
def test_untrusted_unauthenticated_clients_reach_only_local_domains(
    address: str, expected: object
) -> None:
    assert relay_refusal(False, False, LOCAL, address) is expected


@pytest.mark.parametrize(("trusted", "authenticated"), [(True, False), (False, True)])
def test_trusted_or_authenticated_clients_may_relay(trusted: bool, authenticated: bool) -> None:
    assert relay_refusal(trusted, authenticated, LOCAL, "user%x@remote.example") is None
