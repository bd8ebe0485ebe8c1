"""Mailwarden's configuration: one TOML file, validated at load.

>>> config = load_config("mailwarden.toml")      # or load_config(None) for the defaults
>>> for server in config.servers:
...     settings = server.protocol_settings(config.node.hostname)

Every failure is a :class:`ConfigError` whose lines name the file, the line, the dotted key
and what was expected. See docs/configuration.md for every key.
"""

from mailwarden.config.errors import ConfigError
from mailwarden.config.listen import format_listen_address, parse_listen_address
from mailwarden.config.loader import default_config, load_config
from mailwarden.config.models import (  # config.delivery is imported by models, never first
    DATA_DIR_ENV,
    Config,
    DeliverySettings,
    LimitSettings,
    NodeSettings,
    RouteSettings,
    ServerSettings,
    SpoolSettings,
)

__all__ = [
    "DATA_DIR_ENV",
    "Config",
    "ConfigError",
    "DeliverySettings",
    "LimitSettings",
    "NodeSettings",
    "RouteSettings",
    "ServerSettings",
    "SpoolSettings",
    "default_config",
    "format_listen_address",
    "load_config",
    "parse_listen_address",
]
