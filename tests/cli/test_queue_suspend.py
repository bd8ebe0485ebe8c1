"""`mailwarden queue suspend|resume|suspended`: the node-wide suspensions every worker's queue
manager reads (``<data_dir>/queue``), as an operator sets, lists and lifts them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.cli.cli_support import mailwarden
from tests.support.queue_spool import write_config


def cli(config: Path, *args: str):  # type: ignore[no-untyped-def]
    return mailwarden("queue", *args, "--config", str(config))


@pytest.mark.parametrize("target", ["domain", "=example.net", "domain=", " = "])
def test_a_target_must_be_field_equals_value(tmp_path: Path, target: str) -> None:
    config = write_config(tmp_path, tmp_path / "spool")
    for command in ("suspend", "resume"):
        done = cli(config, command, target)
        assert done.returncode == 1, done
        assert f"bad suspension {target!r}: expected FIELD=VALUE" in done.stderr
        assert "Traceback" not in done.stderr


def test_suspend_list_and_resume(tmp_path: Path) -> None:
    """Needs the node-wide limits (mailwarden.queue.limits, part C of issue 7)."""
    config = write_config(tmp_path, tmp_path / "spool")
    done = cli(config, "suspend", "domain=slow.example", "--reason", "their MX is on fire")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "suspended domain=slow.example until resumed"
    done = cli(config, "suspend", "metadata.tenant=acme", "--for", "600")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "queue").is_dir()  # where the workers read them

    listed = json.loads(cli(config, "suspended", "--json").stdout)
    by_field = {entry["field"]: entry for entry in listed}
    assert by_field["domain"]["value"] == "slow.example"
    assert by_field["domain"]["reason"] == "their MX is on fire"
    assert by_field["domain"]["until"] is None
    assert time.time() + 590 < by_field["metadata.tenant"]["until"] <= time.time() + 600
    table = cli(config, "suspended").stdout
    assert "domain=slow.example  until resumed  (their MX is on fire)" in table
    assert table.splitlines()[-1] == "2 suspension(s)"

    done = cli(config, "resume", "domain=slow.example")
    assert done.returncode == 0 and done.stdout.strip() == "resumed domain=slow.example"
    again = cli(config, "resume", "domain=slow.example")
    assert again.returncode == 1 and "domain=slow.example is not suspended" in again.stderr
    assert [e["field"] for e in json.loads(cli(config, "suspended", "--json").stdout)] == [
        "metadata.tenant"
    ]

    bad = cli(config, "suspend", "colour=red")
    assert bad.returncode == 1 and "bad suspension 'colour=red': unknown field" in bad.stderr
