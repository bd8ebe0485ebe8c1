"""`mailwarden queue update hold --retention D --on-expiry discard|bounce` and the retention
end as an operator sees it in `queue list` (table and --json) and `queue show`; the default
retention from `[queue] hold_retention`; values the command cannot read."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.cli.cli_support import mailwarden
from tests.support.queue_spool import Rcpt, commit, message, write_config

DAY = 86400.0
LATER = time.time() + 3600


def queue(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    commit(
        spool,
        [
            message("m1", Rcpt("a@slow.example", "deferred", retries=2, next_attempt=LATER)),
            message("m2", Rcpt("b@fast.example")),
            message(
                "m3",
                Rcpt("c@held.example", "held", reason="spam score 12", next_attempt=LATER),
            ),
        ],
    )
    return write_config(tmp_path, spool, '[queue]\nhold_retention = "3d"\n')


def cli(config: Path, *args: str):  # type: ignore[no-untyped-def]
    return mailwarden("queue", *args, "--config", str(config))


def update(config: Path, *args: str) -> str:
    done = cli(config, "update", *args, "--yes")
    assert done.returncode == 0, done.stderr
    return str(done.stdout)


def recipient(config: Path, message_id: str) -> dict[str, Any]:
    done = cli(config, "list", f"id={message_id}", "--json")
    assert done.returncode == 0, done.stderr
    ((found,),) = [m["recipients"] for m in json.loads(done.stdout)]
    return dict(found)


def test_hold_with_a_retention_shows_its_end_everywhere(tmp_path: Path) -> None:
    config = queue(tmp_path)
    before = time.time()
    said = update(config, "hold", "id=m1", "--retention", "2d", "--on-expiry", "bounce")
    after = time.time()
    assert said.startswith("hold: 1 recipient(s) of 1 message(s) changed")
    held = recipient(config, "m1")
    assert held["state"] == "held" and held["reason"] == "held by the operator"
    assert before + 2 * DAY <= held["retention_until"] <= after + 2 * DAY
    assert held["on_expiry"] == "bounce"
    assert held["next_attempt"] is None  # held: never attempted
    assert held["retry_count"] == 2

    shown = cli(config, "show", "m1").stdout
    assert "  retention     until " in shown and ", then bounce" in shown
    assert "next attempt" not in shown.split("recipient 1", 1)[1]
    table = cli(config, "list", "state=held").stdout
    assert "held until " in table and "then bounce" in table
    # Not held: no retention, and the next attempt as before.
    active = recipient(config, "m2")
    assert active["retention_until"] is None and active["on_expiry"] is None
    assert active["next_attempt"] is not None


def test_a_hold_without_a_retention_takes_the_configured_one(tmp_path: Path) -> None:
    config = queue(tmp_path)
    before = time.time()
    said = update(config, "hold", "id=m2")
    held = recipient(config, "m2")
    assert before + 3 * DAY <= held["retention_until"] <= time.time() + 3 * DAY
    assert held["on_expiry"] == "discard"
    # Already held recipients keep their terms when the operator gives none.
    said = update(config, "hold", "state=held")
    assert "0 recipient(s)" in said and "unchanged" in said
    assert recipient(config, "m3")["retention_until"] == LATER


def test_new_terms_for_held_recipients_and_a_hold_for_ever(tmp_path: Path) -> None:
    config = queue(tmp_path)
    said = update(config, "hold", "id=m3", "--retention", "forever")
    assert said.startswith("hold: 1 recipient(s) of 1 message(s) changed")
    forever = recipient(config, "m3")
    assert forever["retention_until"] is None and forever["state"] == "held"
    assert forever["reason"] == "spam score 12"  # kept: no --reason given
    assert "  retention     until released" in cli(config, "show", "m3").stdout
    assert "held until released" in cli(config, "list", "id=m3").stdout

    before = time.time()
    update(config, "hold", "id=m3", "--on-expiry", "bounce", "--reason", "reviewed")
    again = recipient(config, "m3")
    assert again["on_expiry"] == "bounce" and again["reason"] == "reviewed"
    assert before + 3 * DAY <= again["retention_until"] <= time.time() + 3 * DAY  # from now


def test_retention_options_it_cannot_use_are_refused_and_change_nothing(tmp_path: Path) -> None:
    config = queue(tmp_path)
    for args, text in [
        (("release", "id=m3", "--retention", "2d"), "--retention and --on-expiry are for hold"),
        (("bounce", "id=m1", "--on-expiry", "bounce"), "are for hold, not bounce"),
        (("hold", "id=m1", "--retention", "soon"), "bad --retention: a retention is seconds"),
        (("hold", "id=m1", "--retention", "-3d"), "bad --retention"),
        (("hold", "id=m1", "--on-expiry", "keep"), "bad --on-expiry: on_expiry must be"),
    ]:
        done = cli(config, "update", *args, "--yes")
        assert done.returncode == 1, (args, done.stdout)
        assert text in done.stderr, (args, done.stderr)
    assert recipient(config, "m1")["state"] == "deferred"
    assert recipient(config, "m3")["retention_until"] == LATER
