"""The one error every part of the node raises when it cannot start."""

from __future__ import annotations


class StartupError(Exception):
    """The node cannot start; the message is one line naming the file and key involved."""
