"""Loading every listener's policy script (at start, on SIGHUP and for ``config check``)."""

from __future__ import annotations

from mailwarden.config import Config
from mailwarden.policy.script import DEFAULT_SCRIPT, PolicyScript, load_script


def load_scripts(config: Config) -> dict[str, PolicyScript]:
    """Every server's script, loaded afresh. Raises ScriptError naming the file and line."""
    scripts: dict[str, PolicyScript] = {}
    for server in config.servers:
        scripts[server.id] = load_script(server.script) if server.script else DEFAULT_SCRIPT
    return scripts
