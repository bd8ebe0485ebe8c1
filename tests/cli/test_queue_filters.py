"""`mailwarden queue list|groupby|show` with filters, as an operator reads them: which messages
and recipients a filter selects, the counts per destination and why mail waits, the lease of a
message being delivered, and clear errors for bad filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.cli.cli_support import mailwarden
from tests.support.queue_spool import Rcpt, commit, lease, message, write_config

GREYLISTED = "451 4.7.1 Greylisted, try again later"
REFUSED = "421 4.4.1 Connection refused"


@pytest.fixture
def queue(tmp_path: Path) -> Path:
    """Five messages over two shards; returns the configuration file."""
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message(
                "m1",
                Rcpt("a@slow.example", "deferred", retries=4, last_reply=GREYLISTED),
                Rcpt("b@fast.example"),
                sender="news@lists.example",
                age=2 * 3600,
            ),
            message(
                "m2",
                Rcpt("c@slow.example", "deferred", retries=1, last_reply=GREYLISTED),
                metadata={"tenant": "acme"},
            ),
            message("m3", Rcpt("d@fast.example", "held", reason="quarantine")),
        ],
    )
    commit(
        spool,
        [
            message(
                "m4",
                Rcpt("e@slow.example", "deferred", retries=2, last_reply=REFUSED),
                age=3 * 86400 + 60,
            ),
            message("m5", "f@fast.example", sender=""),
        ],
        shard=1,
    )
    lease(spool, "m2")  # a worker is delivering it right now
    return write_config(tmp_path, spool)


def run(config: Path, *args: str):  # type: ignore[no-untyped-def]
    done = mailwarden("queue", *args, "--config", str(config), env={"COLUMNS": "100"})
    assert done.returncode == 0, done.stderr
    return done


def listed(config: Path, *filters: str) -> dict[str, list[tuple[str, str]]]:
    documents = json.loads(run(config, "list", *filters, "--json").stdout)
    return {d["id"]: [(r["address"], r["state"]) for r in d["recipients"]] for d in documents}


def test_list_filters_messages_and_their_recipients(queue: Path) -> None:
    assert listed(queue, "domain=slow.example", "state=deferred") == {
        "m1": [("a@slow.example", "deferred")],
        "m4": [("e@slow.example", "deferred")],  # m2's is being sent
    }
    assert listed(queue, "state=sending") == {"m2": [("c@slow.example", "sending")]}
    assert listed(queue, "age>1h", "retries>=2") == {
        "m1": [("a@slow.example", "deferred")],
        "m4": [("e@slow.example", "deferred")],
    }
    assert listed(queue, "age=1h..1d") == {
        "m1": [("a@slow.example", "deferred"), ("b@fast.example", "active")]
    }
    assert listed(queue, "metadata.tenant=acme") == {"m2": [("c@slow.example", "sending")]}
    assert listed(queue, "sender=<>") == {"m5": [("f@fast.example", "active")]}
    assert listed(queue, "sender_domain=lists.example", "recipient=b@*") == {
        "m1": [("b@fast.example", "active")]
    }
    assert set(listed(queue)) == {"m1", "m2", "m3", "m4", "m5"}

    table = run(queue, "list", "state=held").stdout
    assert "m3" in table and "held" in table and "to d@fast.example" in table
    assert "m1" not in table
    assert table.splitlines()[-1] == "1 message(s) match state=held"


def test_list_json_has_lease_and_last_reply(queue: Path) -> None:
    by_id = {d["id"]: d for d in json.loads(run(queue, "list", "--json").stdout)}
    assert by_id["m2"]["sending"] is True and by_id["m2"]["state"] == "sending"
    assert by_id["m2"]["recipients"][0]["spool_state"] == "deferred"
    assert by_id["m1"]["sending"] is False and by_id["m1"]["state"] == "mixed"
    assert by_id["m1"]["recipients"][0]["last_reply"] == GREYLISTED
    assert by_id["m1"]["recipients"][0]["retry_count"] == 4


def test_groupby_destination_shows_why_mail_waits(queue: Path) -> None:
    groups = json.loads(run(queue, "groupby", "domain", "--json").stdout)
    by_value = {g["value"]: g for g in groups}
    assert [g["value"] for g in groups] == ["fast.example", "slow.example"]  # ties: by name
    slow = by_value["slow.example"]
    assert (slow["messages"], slow["recipients"]) == (3, 3)
    assert (slow["last_reply"], slow["last_reply_recipients"]) == (GREYLISTED, 2)
    assert slow["oldest_age"] > 3 * 86400
    assert by_value["fast.example"]["last_reply"] == ""

    table = run(queue, "groupby", "domain").stdout
    line = next(line for line in table.splitlines() if line.startswith("slow.example"))
    assert line.split()[1:4] == ["3", "3", "3d00h"]
    assert f"{GREYLISTED} (2)" in line
    assert table.splitlines()[-1] == "6 recipient(s) in 2 group(s)"


def test_groupby_other_fields_with_filters(queue: Path) -> None:
    def counts(*args: str) -> dict[str, int]:
        groups = json.loads(run(queue, "groupby", *args, "--json").stdout)
        return {g["value"]: g["recipients"] for g in groups}

    assert counts("state") == {"active": 2, "deferred": 2, "held": 1, "sending": 1}
    ages = json.loads(run(queue, "groupby", "age", "--json").stdout)
    assert [g["value"] for g in ages] == ["< 5m", "1h-6h", ">= 3d"]  # youngest first
    assert counts("sender_domain") == {"client.test": 3, "lists.example": 2, "<>": 1}
    assert counts("metadata.tenant") == {"(none)": 5, "acme": 1}
    assert counts("domain", "state=deferred") == {"slow.example": 2}
    assert counts("retries", "domain=slow.example") == {"1": 1, "2": 1, "4": 1}


def test_show_has_lease_retries_next_attempt_and_last_reply(queue: Path) -> None:
    shown = run(queue, "show", "m2").stdout
    assert "  state         sending" in shown
    assert "  lease         sending: leased by worker-0 until " in shown
    assert "  retries       1" in shown
    assert "  next attempt  " in shown
    assert f"  last reply    {GREYLISTED}" in shown
    document = json.loads(run(queue, "show", "m2", "--json").stdout)
    assert document["leased_by"] == "worker-0" and document["lease_until"] > 0
    assert document["sending"] is True
    assert document["recipients"][0]["last_reply"] == GREYLISTED

    idle = run(queue, "show", "m4").stdout
    assert "  lease         none" in idle and "  state         deferred" in idle


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["list", "colour=red"], "bad filter 'colour=red': unknown field 'colour'"),
        (["list", "age>soon"], "bad filter 'age>soon': age needs seconds"),
        (["groupby", "domain", "state=stuck"], "bad filter 'state=stuck': unknown state"),
        (["groupby", "id"], "bad filter 'id': cannot group by id"),
        (["update", "hold", "retries>x", "--yes"], "bad filter 'retries>x'"),
    ],
)
def test_bad_filters_exit_1_naming_the_filter(queue: Path, args: list[str], says: str) -> None:
    done = mailwarden("queue", *args, "--config", str(queue))
    assert done.returncode == 1, done
    assert says in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_next_hop_follows_the_configured_routes(tmp_path: Path) -> None:
    """Needs the route table (mailwarden.delivery.routes and [[routes]], part B of issue 7)."""
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message("m1", "a@slow.example", "b@fast.example"),
            message("m2", Rcpt("c@fast.example", metadata={"next_hop": "[192.0.2.9]:25"})),
        ],
    )
    routes = """
        [[routes]]
        domains = ["slow.example"]
        next_hop = "[10.0.0.5]:2525"
    """
    config = write_config(tmp_path, spool, routes)
    assert listed(config, "next_hop=[10.0.0.5]:2525") == {"m1": [("a@slow.example", "active")]}
    assert listed(config, "transport=fast.example") == {"m1": [("b@fast.example", "active")]}
    groups = json.loads(run(config, "groupby", "next_hop", "--json").stdout)
    assert {g["value"]: g["recipients"] for g in groups} == {
        "[10.0.0.5]:2525": 1,
        "fast.example": 1,
        "[192.0.2.9]:25": 1,
    }
