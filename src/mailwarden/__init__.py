"""Mailwarden: a scriptable mail transfer agent."""

__version__ = "0.1.0"
