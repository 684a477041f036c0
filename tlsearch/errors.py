"""The exceptions tlsearch raises on purpose, each carrying a message meant for the user."""

from __future__ import annotations

from collections.abc import Iterable


class TlsearchError(Exception):
    """Base of every error tlsearch reports to the user (the CLI prints the message, no traceback)."""

    exit_code = 1


class ConfigError(TlsearchError):
    """A study config is invalid. Raised before any work starts; the CLI exits with code 2."""

    exit_code = 2


class PluginError(TlsearchError):
    """A plugin is missing, misdeclared, duplicated or failed to load."""

    exit_code = 2


class PluginCallError(TlsearchError):
    """A plugin raised while tlsearch called it; the message names the plugin, its provider and the call."""


class DataError(TlsearchError):
    """The images or labels cannot be used (the message names the file). Found before the first
    trial (the data is checked once up front), so the CLI exits with code 2, as for a config error."""

    exit_code = 2


class ExportError(TlsearchError):
    """The exported model failed a check (onnx.checker, or parity with PyTorch)."""


def format_choices(choices: Iterable[object], limit: int = 30) -> str:
    """``a, b, c`` for an error message, shortened past ``limit`` entries."""
    items = sorted(str(c) for c in choices)
    if not items:
        return "(none)"
    if len(items) > limit:
        return ", ".join(items[:limit]) + f", … ({len(items) - limit} more)"
    return ", ".join(items)
