"""``[metrics]``: the Prometheus listener and the ``stat()`` time series.

docs/configuration.md describes every key. All of them change only at a restart.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from mailwarden.config.listen import format_listen_address, parse_listen_address

_MODEL = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_listen(value: str) -> str:
    try:
        return format_listen_address(*parse_listen_address(value))
    except ValueError as error:
        raise PydanticCustomError(
            "mailwarden_config", "{message}", {"message": f"invalid listen address: {error}"}
        ) from None


class MetricsSettings(BaseModel):
    """``[metrics]``: off unless ``listen`` is set; the time series are kept by default."""

    model_config = _MODEL

    listen: Annotated[str, AfterValidator(_check_listen)] | None = Field(
        None,
        description="host:port of the Prometheus /metrics listener; unset: no listener.",
    )
    series: bool = Field(True, description="Keep stat() time series in data_dir/series.sqlite.")
    minute_retention_hours: int = Field(
        48, ge=1, le=24 * 31, description="Hours that per-minute buckets are kept."
    )
    hour_retention_days: int = Field(
        60, ge=1, le=3660, description="Days that per-hour buckets are kept."
    )
    day_retention_days: int = Field(
        730, ge=1, le=36600, description="Days that per-day buckets are kept."
    )
