"""``[library]``: where the script library keeps state that outlives a connection, and where
its spam and virus scanners listen.

Rate limits (``mailwarden.lib.rate``) and the datastore (``mailwarden.lib.datastore``) are
shared by every worker of a node by default (files under ``node.data_dir``) and cluster-wide
when pointed at Redis or PostgreSQL. docs/configuration.md describes every key.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

_MODEL = ConfigDict(extra="forbid", frozen=True, strict=True)
# The error types mailwarden.config.models defines (not imported: models imports this module).
_PROBLEM = "mailwarden_config"
_PROBLEMS = "mailwarden_config_problems"


# Debian's own defaults: clamav-daemon's LocalSocket, spamd's --listen, rspamd's normal worker.
DEFAULT_CLAMD_ADDRESS = "/var/run/clamav/clamd.ctl"
DEFAULT_SPAMD_ADDRESS = "127.0.0.1:783"
DEFAULT_RSPAMD_URL = "http://127.0.0.1:11333"
DEFAULT_SCANNER_TIMEOUT = 30.0


def split_address(address: str) -> tuple[str, int] | str:
    """A scanner's address: ``host:port`` or ``[v6]:port`` → (host, port); anything with a "/"
    is a unix socket path. Raises ValueError for anything else."""
    if "/" in address:
        return address
    host, sep, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port or a unix socket path, got {address!r}")
    return host, int(port)


def _invalid(message: str) -> PydanticCustomError:
    return PydanticCustomError(_PROBLEM, "{message}", {"message": message})


def _problem_at(key: str, text: str) -> PydanticCustomError:
    """A cross-field problem reported at ``key``, so the loader names that key's line."""
    summary = f"{key}: {text}"
    context = {"summary": summary, "problems": [((key,), text)]}
    return PydanticCustomError(_PROBLEMS, "{summary}", context)


def _check_url(value: str | None, schemes: tuple[str, ...], example: str) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.hostname or parts.path):
        raise _invalid(f"expected a URL such as {example!r}, got {value!r}")
    return value


class LibrarySettings(BaseModel):
    """``[library]``: backends of the script library's shared state."""

    model_config = _MODEL

    rate_backend: Literal["local", "redis"] = Field(
        "local", description="Where rate() counts: this node's workers, or Redis (cluster)."
    )
    rate_slots: int = Field(
        65536,
        ge=1024,
        le=16_777_216,
        description="Keys the local rate table holds (64 bytes each) before it evicts.",
    )
    datastore: Literal["sqlite", "redis", "postgresql"] = Field(
        "sqlite", description="Where the datastore lives: a SQLite file, Redis or PostgreSQL."
    )
    redis_url: str | None = Field(None, description="redis://host:port/db for the Redis backends.")
    postgresql_url: str | None = Field(
        None, description="postgresql://user@host:port/db for the PostgreSQL datastore."
    )
    timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        allow_inf_nan=False,
        description="Seconds a Redis or PostgreSQL call may take before it raises.",
    )

    dns_cache_size: int = Field(
        10_000,
        ge=0,
        le=10_000_000,
        description="DNS answers each worker keeps for their TTL (0: no cache).",
    )

    clamd_address: str = Field(
        DEFAULT_CLAMD_ADDRESS, description="clamd's socket: host:port or a unix socket path."
    )
    spamd_address: str = Field(
        DEFAULT_SPAMD_ADDRESS, description="spamd's socket: host:port or a unix socket path."
    )
    rspamd_url: str = Field(DEFAULT_RSPAMD_URL, description="rspamd's normal worker, http(s)://.")
    scanner_timeout: float = Field(
        DEFAULT_SCANNER_TIMEOUT,
        gt=0,
        le=600,
        allow_inf_nan=False,
        description="Seconds one scanner call may take (connect, send, verdict) before it raises.",
    )

    @field_validator("clamd_address", "spamd_address")
    @classmethod
    def _scanner_address(cls, value: str) -> str:
        try:
            split_address(value)
        except ValueError as error:
            raise _invalid(str(error)) from None
        return value

    @field_validator("rspamd_url")
    @classmethod
    def _rspamd_url(cls, value: str) -> str:
        _check_url(value, ("http", "https"), "http://127.0.0.1:11333")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        return _check_url(value, ("redis", "rediss", "unix"), "redis://127.0.0.1:6379/0")

    @field_validator("postgresql_url")
    @classmethod
    def _postgresql_url(cls, value: str | None) -> str | None:
        return _check_url(
            value, ("postgresql", "postgres"), "postgresql://mailwarden@127.0.0.1:5432/mailwarden"
        )

    @model_validator(mode="after")
    def _urls_for_backends(self) -> LibrarySettings:
        if self.redis_url is None and "redis" in (self.rate_backend, self.datastore):
            key = "rate_backend" if self.rate_backend == "redis" else "datastore"
            raise _problem_at(key, 'expected redis_url as well with "redis"')
        if self.postgresql_url is None and self.datastore == "postgresql":
            raise _problem_at("datastore", 'expected postgresql_url as well with "postgresql"')
        return self
