"""What an action means, as pure functions: greeting coercion and the end-of-data action."""

from __future__ import annotations

import pytest

from mailwarden.policy.actions import Accept, Defer, Discard, Hold, Queue, Reject
from mailwarden.policy.context import Recipient, RecipientState
from mailwarden.policy.outcome import apply_end_of_data, greeting_refusal
from mailwarden.smtp import replies


@pytest.mark.parametrize(
    ("action", "code"),
    [
        (Reject("Blocked", code=550, enhanced="5.7.1", lines=("more",)), 554),
        (Reject("Blocked", code=554), 554),
        (Defer("Busy", code=450, enhanced="4.7.0"), 421),
        (Defer("Busy", code=421, enhanced="4.7.0"), 421),
    ],
)
def test_a_connect_refusal_greets_with_554_or_421_keeping_the_scripts_words(
    action: Reject | Defer, code: int
) -> None:
    # RFC 5321 §3.1: only 220, 421 and 554 may greet.
    reply = greeting_refusal(action.reply)
    assert reply.code == code
    assert (reply.enhanced, reply.text, reply.lines) == (
        action.reply.enhanced,
        action.reply.text,
        action.reply.lines,
    )


def _recipients() -> list[Recipient]:
    return [Recipient("a@example.com", {}), Recipient("b@example.com", {})]


def test_default_and_queue_keep_everyone_and_merge_metadata() -> None:
    people = _recipients()
    assert apply_end_of_data(None, people).kept == people
    outcome = apply_end_of_data(Queue(metadata={"k": 1}, text="Thanks"), people)
    assert outcome.kept == people and outcome.text == "Thanks"
    assert [r.metadata for r in people] == [{"k": 1}, {"k": 1}]
    assert apply_end_of_data(Accept(metadata={"j": 2}), people).text is None
    assert people[0].metadata == {"k": 1, "j": 2}


def test_hold_holds_only_the_active_recipients() -> None:
    people = _recipients()
    people[1].discard("script said so")
    outcome = apply_end_of_data(Hold("spam"), people)
    assert outcome.kept == [people[0]]
    assert (people[0].state, people[0].reason) == (RecipientState.HELD, "spam")
    assert (people[1].state, people[1].reason) == (RecipientState.DISCARDED, "script said so")


def test_discard_keeps_nobody() -> None:
    people = _recipients()
    assert apply_end_of_data(Discard("junk"), people).kept == []
    assert {r.reason for r in people} == {"junk"}


def test_reject_and_defer_defaults_are_the_catalogue_entries() -> None:
    assert Reject().reply is replies.SCRIPT_REJECT
    assert Defer().reply is replies.SCRIPT_DEFER
    assert Defer(code=421).reply.encode() == b"421 4.7.1 Try again later\r\n"
    assert Reject("No").reply.encode() == b"550 5.7.1 No\r\n"
