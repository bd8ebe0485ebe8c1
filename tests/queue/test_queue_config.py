"""``[queue]`` and ``[[shaping]]``: defaults, the documented forms, and located errors."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from mailwarden.config import Config, ConfigError, load_config
from mailwarden.config.queue import (
    BackoffSettings,
    MatchSettings,
    QueueSettings,
    ShapingRuleSettings,
    shaping_rules,
)
from mailwarden.queue.schedule import RetrySchedule
from mailwarden.queue.shaping import Backoff, Rate, ShapingDefaults, ShapingRule

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailwarden.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [problem.removeprefix(f"{path}:") for problem in caught.value.problems]


def section(title: str) -> str:
    docs = DOCS.read_text(encoding="utf-8")
    start = docs.index(f"\n## {title}\n")
    end = docs.index("\n## ", start + 1)
    return docs[start:end]


def test_defaults_are_the_documented_schedule_and_no_rules():
    config = Config()
    assert config.shaping == []
    assert config.queue.retry_schedule() == RetrySchedule()
    assert config.queue.retry_intervals == [60, 300, 900, 1800, 3600]
    assert config.queue.max_age == 5 * 86400
    assert config.queue.delay_warning is None
    assert config.queue.lease_duration == 900
    assert config.queue.poll_interval == 1.0
    defaults = config.queue.shaping_defaults(20, 100)
    assert defaults == ShapingDefaults(20, 100, Backoff())


def test_durations_take_seconds_or_units(tmp_path):
    path = write(
        tmp_path,
        """
        [queue]
        retry_intervals = [30, "5m", "1.5h"]
        max_age = "2d"
        delay_warning = "4h"
        lease_duration = 600
        poll_interval = "0.5s"
        """,
    )
    queue = load_config(path).queue
    assert queue.retry_schedule() == RetrySchedule(
        intervals=(30.0, 300.0, 5400.0), max_age=172800.0, delay_warning=14400.0
    )
    assert (queue.lease_duration, queue.poll_interval) == (600.0, 0.5)
    assert load_config(write(tmp_path, "[queue]\ndelay_warning = 0\n")).queue.delay_warning is None


def test_queue_errors_name_line_and_key(tmp_path):
    path = write(
        tmp_path,
        """
        [queue]
        retry_intervals = ["1h", "5m"]
        max_age = "5 weeks"
        poll_interval = 120
        lease_duration = true
        """,
    )
    found = problems(path)
    assert (
        found[0]
        == "2: queue.retry_intervals: expected intervals that never shrink, got [3600.0, 300.0]"
    )
    assert found[1].startswith("3: queue.max_age: expected a duration: seconds (90) or a number")
    assert found[2].startswith("4: queue.poll_interval: expected a number")
    assert found[3].startswith("5: queue.lease_duration: expected a duration")
    assert len(found) == 4


def test_a_shaping_rule_loads_into_the_rule_the_scheduler_uses(tmp_path):
    path = write(
        tmp_path,
        """
        [[shaping]]
        id = "google"
        match = { mx = "*.google.com", metadata.tenant = ["acme", "beta*"] }
        fields = ["mx", "metadata.tenant"]
        max_connections = 10
        max_messages_per_connection = 200
        rate = "3000/1m"

        [shaping.backoff]
        codes = [421, 451]
        enhanced_codes = ["4.7.28"]
        text = "(?i)rate limit"
        factor = 0.25
        duration = "5m"
        cooldown = 10

        [[shaping]]
        id = "tenants"
        fields = ["metadata.tenant"]
        rate = "100/60"
        """,
    )
    rules = shaping_rules(load_config(path).shaping)
    assert rules == (
        ShapingRule(
            id="google",
            fields=("mx", "metadata.tenant"),
            match={"mx": ("*.google.com",), "metadata.tenant": ("acme", "beta*")},
            max_connections=10,
            max_messages_per_connection=200,
            rate=Rate(3000, 60.0),
            backoff=Backoff(
                codes=(421, 451),
                enhanced_codes=("4.7.28",),
                text="(?i)rate limit",
                factor=0.25,
                duration=300.0,
                cooldown=10.0,
            ),
        ),
        ShapingRule(id="tenants", fields=("metadata.tenant",), rate=Rate(100, 60.0)),
    )


def test_shaping_errors_name_line_and_key(tmp_path):
    path = write(
        tmp_path,
        """
        [[shaping]]
        id = "a"
        fields = ["mx", "tenant"]
        rate = "100 per minute"
        match = { domain = [], sender = "x" }
        backoff = { factor = 2, text = "(unclosed", enhanced_codes = ["4.7"] }

        [[shaping]]
        id = "b"

        [[shaping]]
        id = "c"
        fields = ["domain", "domain"]
        max_connections = 0
        """,
    )
    found = problems(path)
    expected = [
        r"3: shaping\[0\]\.fields\[1\]: unknown field 'tenant'; expected one of domain, "
        r"destination, mx, ip, source_ip or metadata\.KEY",
        r"4: shaping\[0\]\.rate: expected a rate 'MESSAGES/DURATION' .* got '100 per minute'",
        r"5: shaping\[0\]\.match\.domain: expected a pattern string or a non-empty array",
        r"5: shaping\[0\]\.match\.sender: unknown key; expected one of: domain, destination, "
        r"mx, ip, source_ip, metadata",
        r"6: shaping\[0\]\.backoff\.enhanced_codes\[0\]: expected an enhanced status code",
        r"6: shaping\[0\]\.backoff\.factor: expected a number between 0 and 1",
        r"6: shaping\[0\]\.backoff\.text: expected a regular expression",
        r"8: shaping\[1\]: expected at least one of max_connections, "
        r"max_messages_per_connection, rate",
        r"13: shaping\[2\]\.fields: expected each field at most once",
        r"14: shaping\[2\]\.max_connections: expected an integer >= 1, got 0",
    ]
    assert len(found) == len(expected), found
    for problem, pattern in zip(sorted(found), sorted(expected), strict=True):
        assert re.match(pattern, problem), (problem, pattern)


def test_rule_ids_are_unique(tmp_path):
    path = write(
        tmp_path,
        """
        [[shaping]]
        id = "same"
        rate = "1/1"

        [[shaping]]
        id = "same"
        rate = "2/1"
        """,
    )
    assert problems(path) == [
        "6: shaping[1].id: expected a unique id, but 'same' is also shaping[0].id"
    ]


def test_the_documented_examples_load(tmp_path):
    for title in ("`[queue]`", "`[[shaping]]`"):
        [example] = re.findall(r"```toml\n(.*?)```", section(title), re.DOTALL)
        config = load_config(write(tmp_path, example))
        shaping_rules(config.shaping)


def test_docs_describe_every_queue_and_shaping_key():
    for title, models in (
        ("`[queue]`", [QueueSettings]),
        ("`[[shaping]]`", [ShapingRuleSettings, MatchSettings, BackoffSettings]),
    ):
        text = section(title)
        for model in models:
            for key in model.model_fields:
                assert f"| `{key}` |" in text, f"{model.__name__}.{key} is not documented"
    assert "### `match`" in section("`[[shaping]]`")
    assert "### `backoff`" in section("`[[shaping]]`")
