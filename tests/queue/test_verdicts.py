"""What replies and script actions mean for each recipient (pure, with an injected time)."""

from __future__ import annotations

from mailwarden.delivery.errors import DeliveryReply
from mailwarden.policy.delivery import Bounce, Delete, Hold, Retry
from mailwarden.queue.schedule import RetrySchedule
from mailwarden.queue.verdicts import apply_action, judge, override
from mailwarden.spool.states import RecipientState

RECEIVED = 1_000_000.0
SCHEDULE = RetrySchedule(intervals=(60.0, 300.0), max_age=3600.0)
OK = DeliveryReply(250, "2.0.0", "queued as 1", remote=True)
BUSY = DeliveryReply(451, "4.3.0", "busy", remote=True)
GONE = DeliveryReply(550, "5.1.1", "no such user", remote=True)


def _judge(reply: DeliveryReply, retries: int = 0, now: float = RECEIVED + 1, **kw):
    return judge(
        0, "a@x.test", retries, reply, schedule=SCHEDULE, received_at=RECEIVED, now=now, **kw
    )


def test_2xx_delivers_5xx_bounces_4xx_defers_to_the_schedule() -> None:
    delivered, bounced, deferred = _judge(OK), _judge(GONE), _judge(BUSY)
    assert delivered.state is RecipientState.DELIVERED and delivered.dsn_action is None
    assert bounced.state is RecipientState.BOUNCED and bounced.dsn_action == "failed"
    assert bounced.reply == GONE  # the NDR is the remote's own reply
    assert deferred.state is RecipientState.DEFERRED
    assert deferred.next_attempt == SCHEDULE.after_failure(1, RECEIVED, RECEIVED + 1)
    assert deferred.count_attempt and deferred.dsn_action is None


def test_a_success_dsn_is_asked_for_only_when_the_next_hop_cannot_carry_it() -> None:
    assert _judge(OK, success_dsn="relayed").dsn_action == "relayed"


def test_a_4xx_after_the_maximum_age_bounces_with_the_last_reply() -> None:
    expired = _judge(BUSY, retries=9, now=RECEIVED + 3600 + 1)
    assert expired.state is RecipientState.BOUNCED
    assert expired.reply.code == 451 and "busy" in expired.reply.text
    assert "expired after 10 attempts" in expired.reply.text


def test_script_actions_override_only_recipients_not_delivered() -> None:
    verdicts = [
        judge(0, "a@x.test", 0, OK, schedule=SCHEDULE, received_at=RECEIVED, now=RECEIVED),
        judge(1, "b@x.test", 0, BUSY, schedule=SCHEDULE, received_at=RECEIVED, now=RECEIVED),
    ]
    bounced = override(
        verdicts,
        Bounce("policy says no", code=554, enhanced="5.7.1"),
        schedule=SCHEDULE,
        retry_counts=[0, 0],
        received_at=RECEIVED,
        now=RECEIVED,
    )
    assert bounced[0] == verdicts[0]
    assert bounced[1].state is RecipientState.BOUNCED
    assert str(bounced[1].reply) == "554 5.7.1 policy says no"


def test_retry_at_a_time_and_without_counting() -> None:
    later = apply_action(
        0,
        "a@x.test",
        3,
        Retry(at=RECEIVED + 999),
        reply=None,
        schedule=SCHEDULE,
        received_at=RECEIVED,
        now=RECEIVED,
    )
    assert later.state is RecipientState.DEFERRED and later.next_attempt == RECEIVED + 999
    assert not later.count_attempt


def test_hold_and_delete() -> None:
    held = apply_action(
        0,
        "a@x.test",
        0,
        Hold("quarantine"),
        reply=BUSY,
        schedule=SCHEDULE,
        received_at=RECEIVED,
        now=RECEIVED,
    )
    deleted = apply_action(
        0,
        "a@x.test",
        0,
        Delete(),
        reply=BUSY,
        schedule=SCHEDULE,
        received_at=RECEIVED,
        now=RECEIVED,
    )
    assert held.state is RecipientState.HELD and held.reply.text == "quarantine"
    assert deleted.state is RecipientState.DISCARDED and deleted.dsn_action is None


def test_one_delay_warning_once_the_age_is_reached() -> None:
    warning = RetrySchedule(intervals=(60.0,), max_age=3600.0, delay_warning=600.0)

    def verdict(now: float, warned: bool):
        return judge(
            0, "a@x.test", 1, BUSY, schedule=warning, received_at=RECEIVED, now=now, warned=warned
        )

    assert verdict(RECEIVED + 599, warned=False).dsn_action is None
    due = verdict(RECEIVED + 600, warned=False)
    assert due.state is RecipientState.DEFERRED and due.dsn_action == "delayed"
    assert due.outcome().delay_notified is True
    assert verdict(RECEIVED + 900, warned=True).dsn_action is None  # sent once
    assert _judge(BUSY, now=RECEIVED + 900).dsn_action is None  # no warnings configured
