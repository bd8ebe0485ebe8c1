"""``mailwarden.lib.stat``: Halon-style counters with legends, what a worker publishes and what
``mailwarden stats`` sums (the end-to-end test is test_e2e_stat.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailwarden import stats
from mailwarden.lib import stat
from mailwarden.lib.stat import MAX_LEGENDS, MAX_NAMES, StatLimitError, snapshot


@pytest.fixture(autouse=True)
def empty_counters() -> Iterator[None]:
    saved = dict(stats.script_counters)
    stats.script_counters.clear()
    yield
    stats.script_counters.clear()
    stats.script_counters.update(saved)


def test_bools_count_one_or_zero_and_every_legend_appears() -> None:
    for has_cert in (True, False, False):
        stat("peer-cert", {"yes": has_cert, "no": not has_cert})
    assert snapshot() == {"peer-cert": {"yes": 1, "no": 2}}


def test_a_legend_counted_zero_is_shown_with_zero() -> None:
    stat("peer-cert", {"yes": False, "no": True})
    assert snapshot() == {"peer-cert": {"yes": 0, "no": 1}}


def test_ints_add_themselves_and_new_legends_join_later() -> None:
    stat("recipients", {"local": 3, "remote": 0})
    stat("recipients", {"local": 2, "relayed": 7})
    stat("sizes", {"bytes": 10**12})
    assert snapshot() == {
        "recipients": {"local": 5, "remote": 0, "relayed": 7},
        "sizes": {"bytes": 10**12},
    }


@pytest.mark.parametrize("value", [-1, -(10**20)])
def test_a_negative_value_is_a_value_error_naming_the_legend(value: int) -> None:
    with pytest.raises(ValueError, match=r"legend 'bad' has the negative value"):
        stat("x", {"good": 1, "bad": value})
    assert snapshot() == {}  # all or nothing: 'good' was not counted either


@pytest.mark.parametrize("value", [1.5, "1", None, [1], 1j])
def test_a_value_that_is_not_a_bool_or_int_is_a_type_error_naming_the_legend(
    value: object,
) -> None:
    stat("x", {"good": 1})
    with pytest.raises(TypeError, match=r"legend 'odd' has a value of type"):
        stat("x", {"good": 1, "odd": value})
    assert snapshot() == {"x": {"good": 1}}


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("", ValueError, "the name is empty"),
        ("x" * 65, ValueError, "is 65 characters long"),
        ("two words", ValueError, "white space"),
        ("tab\there", ValueError, "white space"),
        ("bell\x07", ValueError, "unprintable"),
        (b"bytes", TypeError, "the name must be a str, not bytes"),
        (None, TypeError, "the name must be a str, not NoneType"),
        (["list"], TypeError, "the name must be a str, not list"),
    ],
)
def test_invalid_names_are_refused(name: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        stat(name, {"yes": True})  # type: ignore[arg-type]
    assert snapshot() == {}


@pytest.mark.parametrize(
    ("legend", "error", "message"),
    [
        ("", ValueError, "the legend is empty"),
        ("y" * 65, ValueError, "is 65 characters long"),
        ("new\nline", ValueError, "white space"),
        (1, TypeError, "the legend must be a str, not int"),
    ],
)
def test_invalid_legends_are_refused_and_nothing_is_created(
    legend: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        stat("x", {"ok": True, legend: True})  # type: ignore[dict-item]
    assert snapshot() == {}


def test_the_longest_name_and_legend_and_unicode_are_accepted() -> None:
    stat("n" * 64, {"l" * 64: 1, "déjà-vu": True})
    assert snapshot() == {"n" * 64: {"l" * 64: 1, "déjà-vu": 1}}


@pytest.mark.parametrize("counts", [["yes"], "yes", None, 1])
def test_counts_must_be_a_dict(counts: object) -> None:
    with pytest.raises(TypeError, match=r"counts must be a dict"):
        stat("x", counts)  # type: ignore[arg-type]


def test_counts_without_a_legend_is_refused() -> None:
    with pytest.raises(ValueError, match=r"names no legend"):
        stat("x", {})


def test_name_and_counts_are_positional_only() -> None:
    with pytest.raises(TypeError):
        stat(name="x", counts={"yes": True})  # type: ignore[call-arg]


def test_more_names_than_the_bound_raise_and_the_known_ones_still_count() -> None:
    for n in range(MAX_NAMES):
        stat(f"name-{n}", {"yes": True})
    with pytest.raises(StatLimitError, match=r"already keeps 1000 counter names"):
        stat("one-too-many", {"yes": True})
    assert isinstance(StatLimitError("x"), ValueError)
    stat("name-0", {"yes": True})
    counters = snapshot()
    assert len(counters) == MAX_NAMES
    assert "one-too-many" not in counters
    assert counters["name-0"] == {"yes": 2}


def test_more_legends_than_the_bound_raise_and_count_nothing() -> None:
    stat("x", {f"l{n}": 1 for n in range(MAX_LEGENDS - 1)})
    with pytest.raises(StatLimitError, match=r"more than 100 legends \(it has 99\)"):
        stat("x", {"l0": 1, "new-a": 1, "new-b": 1})
    assert snapshot()["x"]["l0"] == 1  # the call was refused whole
    stat("x", {"l0": 1, "last": 1})  # the hundredth legend is fine
    assert len(snapshot()["x"]) == MAX_LEGENDS
    assert snapshot()["x"]["l0"] == 2


def test_counters_are_published_and_summed_over_workers(tmp_path: Path) -> None:
    stat("peer-cert", {"yes": 2, "no": 1})
    stats.publish(tmp_path, 0)
    stats.script_counters.clear()
    stat("peer-cert", {"no": 4})
    stat("seen", {"yes": True})
    stats.publish(tmp_path, 1)
    document = json.loads((tmp_path / "stats" / "worker-1.json").read_text())
    assert document["script"] == {"peer-cert": {"no": 4}, "seen": {"yes": 1}}
    assert stats.collect_script(tmp_path) == {
        "peer-cert": {"no": 5, "yes": 2},
        "seen": {"yes": 1},
    }
    assert stats.collect(tmp_path)["connections"] >= 0  # the built-in counters still sum


def test_a_worker_file_without_script_counters_is_summed_as_none(tmp_path: Path) -> None:
    directory = tmp_path / "stats"
    directory.mkdir()
    (directory / "worker-0.json").write_text(json.dumps({"counters": {"connections": 3}}))
    (directory / "worker-1.json").write_text("{half a file")
    assert stats.collect_script(tmp_path) == {}
    assert stats.collect(tmp_path)["connections"] == 3
