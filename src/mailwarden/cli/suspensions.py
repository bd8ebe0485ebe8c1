"""The CLI's calls into the node-wide suspensions (``queue suspend``, ``resume``,
``suspended``): :class:`mailwarden.queue.limits.NodeLimits` in ``<data_dir>/queue``, the
directory every worker's queue manager reads, so a suspension holds on all of them at once.

Field names and value patterns are the shaping rules' (:func:`mailwarden.queue.shaping.
check_field`: ``domain``, ``destination``, ``mx``, ``ip``, ``source_ip``, ``metadata.KEY``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mailwarden.config import Config
    from mailwarden.queue.limits import NodeLimits


def parse_target(text: str) -> tuple[str, str]:
    """``FIELD=VALUE`` as (field, value). Raises ValueError naming ``text`` otherwise (the
    field itself is checked by :func:`suspend`, against the shaping fields)."""
    field, equals, value = text.partition("=")
    field, value = field.strip(), value.strip()
    if not equals or not field or not value:
        raise ValueError(f"bad suspension {text!r}: expected FIELD=VALUE (e.g. domain=example.net)")
    return field, value


def limits_directory(settings: Config) -> Path:
    return Path(settings.node.data_dir) / "queue"


class Unavailable(Exception):
    """This installation has no node-wide limits (mailwarden.queue.limits)."""


def _limits(settings: Config) -> NodeLimits:
    try:
        from mailwarden.queue.limits import NodeLimits
    except ImportError as error:
        raise Unavailable(f"node-wide suspensions are not available: {error}") from None

    directory = limits_directory(settings)
    directory.mkdir(parents=True, exist_ok=True)
    return NodeLimits(directory)


def suspend(settings: Config, field: str, value: str, *, until: float | None, reason: str) -> None:
    """Raises ValueError for a field rules cannot use."""
    try:
        from mailwarden.queue.shaping import check_field
    except ImportError as error:
        raise Unavailable(f"node-wide suspensions are not available: {error}") from None
    _limits(settings).suspend(check_field(field), value, until=until, reason=reason)


def resume(settings: Config, field: str, value: str) -> bool:
    return _limits(settings).resume(field, value)


def current(settings: Config, now: float) -> list[dict[str, Any]]:
    return [
        {"field": s.field, "value": s.value, "until": s.until, "reason": s.reason}
        for s in _limits(settings).suspensions(now)
    ]
