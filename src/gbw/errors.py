"""Errors that describe bad input in one line (the CLI prints them without a traceback).

Standard library only, at the bottom of the import graph: any layer may raise them.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config file, override or setting is invalid; the message names the key and why."""
