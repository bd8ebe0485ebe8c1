"""One recipient-state vocabulary: what a script sets on a recipient is what the spool stores."""

from __future__ import annotations

from mailwarden.policy.context import Recipient, RecipientState
from mailwarden.spool import states


def test_policy_and_spool_share_one_enum() -> None:
    assert RecipientState is states.RecipientState


def test_hold_and_discard_set_spool_states() -> None:
    held, discarded = Recipient("a@example.org", {}), Recipient("b@example.org", {})
    held.hold("quarantine")
    discarded.discard()
    assert held.state is states.RecipientState.HELD and not held.state.deliverable
    assert discarded.state is states.RecipientState.DISCARDED and discarded.state.final
    assert Recipient("c@example.org", {}).state.deliverable
