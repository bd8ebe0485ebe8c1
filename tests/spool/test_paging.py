"""Paged reading: a shard of 100,000 queued messages (filled through the store's API) is read
a page at a time, so the first page costs two queries and listing all of it holds one page in
memory; `mailwarden queue list --json` streams it."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.spool.spool_support import fill

from mailwarden.spool import reader

COUNT = 100_000
PAGE = 500


@pytest.fixture(scope="module")
def big_spool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    spool = tmp_path_factory.mktemp("big") / "spool"
    return spool, fill(spool, COUNT)


def page_queries(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("SELECT") and "FROM messages WHERE id >" in s]


def test_the_first_page_costs_one_page_of_queries(big_spool: tuple[Path, list[str]]) -> None:
    spool, ids = big_spool
    statements: list[str] = []
    messages = reader.iter_messages(spool, page_size=PAGE, trace=statements.append)
    first = list(itertools.islice(messages, 10))
    messages.close()
    assert [m.id for m in first] == ids[:10]
    assert len(page_queries(statements)) == 1
    recipient_queries = [s for s in statements if "FROM recipients" in s]
    assert len(recipient_queries) == 1


def test_reading_everything_goes_page_by_page(big_spool: tuple[Path, list[str]]) -> None:
    spool, ids = big_spool
    statements: list[str] = []
    count = 0
    previous = ""
    for message in reader.iter_messages(spool, page_size=PAGE, trace=statements.append):
        assert message.id > previous and len(message.recipients) == 1
        previous = message.id
        count += 1
    assert count == COUNT and previous == ids[-1]
    # Pages of PAGE, and one more query that finds the shard read to its end.
    assert len(page_queries(statements)) == COUNT // PAGE + 1


def test_queue_list_streams_in_bounded_memory(
    big_spool: tuple[Path, list[str]], tmp_path: Path
) -> None:
    spool, ids = big_spool
    config = tmp_path / "mailwarden.toml"
    config.write_text(f'[spool]\npath = "{spool}"\n')
    out = tmp_path / "list.json"
    peak = peak_rss(["queue", "list", "--json", "--config", str(config)], out)
    documents = json.loads(out.read_bytes())
    assert [d["id"] for d in documents] == ids
    assert documents[0]["recipients"][0]["state"] == "active"
    # Holding every message (as the listing did before paging) took over 200 MB for 100,000
    # messages (600 MB for the table); a page at a time, the process stays near its start-up
    # size (about 40 MB).
    assert peak < 100 * 1024, f"peak RSS {peak} KiB"

    table = tmp_path / "list.txt"
    peak = peak_rss(["queue", "list", "--config", str(config)], table)
    lines = table.read_text().splitlines()
    assert lines[-1] == f"{COUNT} message(s)"
    assert lines[2].startswith(ids[0]) and any(line.startswith(ids[-1]) for line in lines)
    assert peak < 100 * 1024, f"peak RSS {peak} KiB"


# Measured from a small process of its own: a child forked straight from this test process
# (which holds 100,000 parsed documents) would count this process's memory as its own peak.
_MEASURE = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as out:
    command = [sys.executable, "-m", "mailwarden.cli.main", *sys.argv[2:]]
    child = subprocess.Popen(command, stdout=out)
    _, status, usage = os.wait4(child.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss(arguments: list[str], out: Path) -> int:
    """Run ``mailwarden ARGUMENTS`` with standard output to ``out``; its peak RSS in KiB."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(out), *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    status, peak = map(int, done.stdout.split())
    assert status == 0, done.stderr
    return peak
