"""Named counters with legends for policy scripts, as Halon's ``stat()``.

``stat("peer-cert", {"yes": has_cert, "no": not has_cert})`` adds 1 (or 0) to the legends
``yes`` and ``no`` of the counter ``peer-cert``. The counts live in the worker process
(:data:`mailwarden.stats.script_counters`), which publishes them with its built-in counters;
``mailwarden stats`` sums them over the workers. They count since the worker started: a
script reload keeps them, a worker restart starts again from zero.

The call runs per message, so the common case (a name and legends seen before) is a few dict
look-ups and additions; names and legends are validated only the first time they appear.
"""

from __future__ import annotations

from collections.abc import Mapping

from mailwarden.stats import script_counters

__all__ = ["MAX_LABEL_LENGTH", "MAX_LEGENDS", "MAX_NAMES", "StatLimitError", "snapshot", "stat"]

MAX_LABEL_LENGTH = 64  # characters, for a name or a legend (fits the stats table's columns)
MAX_NAMES = 1_000  # distinct counter names per worker
MAX_LEGENDS = 100  # distinct legends per counter name


class StatLimitError(ValueError):
    """A ``stat()`` call would create more names or legends than a worker keeps."""


def stat(name: str, counts: Mapping[str, bool | int], /) -> None:
    """Add each legend's value to the counter ``name``: a bool adds 1 or 0, an int adds
    itself (it must be ≥ 0). The call is all or nothing: on any error nothing is counted.

    Raises TypeError (a name, legend or value of the wrong type), ValueError (an empty,
    too long or unprintable name or legend, a negative value, no legend at all) or
    StatLimitError (more than MAX_NAMES names or MAX_LEGENDS legends per name)."""
    legends = script_counters.get(name) if type(name) is str else None
    if legends is None:
        _check_label("name", name)
    if not isinstance(counts, Mapping):
        raise TypeError(
            f"stat({name!r}, …): counts must be a dict of legend to bool or int, "
            f"not {type(counts).__name__}"
        )
    if not counts:
        raise ValueError(f"stat({name!r}, {{}}): counts names no legend")
    amounts = [(legend, _amount(name, legend, value)) for legend, value in counts.items()]
    if legends is not None and all(legend in legends for legend, _ in amounts):
        for legend, amount in amounts:  # the common case: nothing new
            legends[legend] += amount
        return
    # Something new: every check passes before anything is created or counted.
    known = legends or {}
    new = [legend for legend, _ in amounts if legend not in known]
    _check_legends(name, len(known), new)
    if legends is None:
        legends = _new_name(name)
    for legend, amount in amounts:
        legends[legend] = legends.get(legend, 0) + amount


def snapshot() -> dict[str, dict[str, int]]:
    """A copy of this worker's script counters, ``{name: {legend: value}}``."""
    return {name: dict(legends) for name, legends in script_counters.items()}


def _amount(name: str, legend: object, value: object) -> int:
    kind = type(value)
    if kind is bool:
        return 1 if value else 0
    if isinstance(value, int):  # bool was handled above
        if value < 0:  # type: ignore[operator]
            raise ValueError(
                f"stat({name!r}, …): legend {legend!r} has the negative value {value}; "
                "counters only grow"
            )
        return int(value)  # type: ignore[call-overload]
    raise TypeError(
        f"stat({name!r}, …): legend {legend!r} has a value of type {kind.__name__}; "
        "a counter adds a bool (1 or 0) or an int ≥ 0"
    )


def _check_label(what: str, label: object, name: object = None) -> None:
    """A name or legend: a non-empty str of at most MAX_LABEL_LENGTH printable characters,
    none of them white space (it is shown in a table and will be an exported label)."""
    where = "stat(…)" if name is None else f"stat({name!r}, …)"
    if type(label) is not str:
        raise TypeError(f"{where}: the {what} must be a str, not {type(label).__name__}")
    if not label:
        raise ValueError(f"{where}: the {what} is empty")
    if len(label) > MAX_LABEL_LENGTH:
        raise ValueError(
            f"{where}: the {what} {label[:20]!r}… is {len(label)} characters long "
            f"(at most {MAX_LABEL_LENGTH})"
        )
    if not label.isprintable() or any(c.isspace() for c in label):
        raise ValueError(
            f"{where}: the {what} {label!r} has white space or an unprintable character"
        )


def _new_name(name: str) -> dict[str, int]:
    if len(script_counters) >= MAX_NAMES:
        raise StatLimitError(
            f"stat({name!r}, …): this worker already keeps {MAX_NAMES} counter names; "
            "a new name is refused (use a fixed set of names, and legends for the values)"
        )
    legends: dict[str, int] = {}
    script_counters[name] = legends
    return legends


def _check_legends(name: str, known: int, new: list[object]) -> None:
    for legend in new:
        _check_label("legend", legend, name)
    if known + len(new) > MAX_LEGENDS:
        raise StatLimitError(
            f"stat({name!r}, …): the counter would have more than {MAX_LEGENDS} legends "
            f"(it has {known}); new legends {new[:3]!r} are refused"
        )
