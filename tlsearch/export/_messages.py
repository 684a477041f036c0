"""An exporter's error as text fit for ``model.json`` and a report: no terminal colour codes, the
lines that name the error in full, a very long tail cut with a note saying how much was cut."""

from __future__ import annotations

import re

# CSI sequences (colours, cursor moves: ``ESC [ … m``), OSC sequences (titles, links: ``ESC ] … BEL``
# or ``ESC ] … ESC \``) and the two-character escapes.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")

KEEP_CHARACTERS = 1000
"""Whole lines are kept while the text stays within this many characters (the first line always)."""

FIRST_LINE_MAX = 4000
"""A first line longer than this (a message without line breaks) is cut inside it."""


def strip_escapes(text: str) -> str:
    """``text`` without terminal escape sequences (``\\x1b[31m`` and the like)."""
    return _ESCAPES.sub("", text)


def error_text(exc: BaseException) -> str:
    """``str(exc)`` without escape sequences, whole lines up to ``KEEP_CHARACTERS`` (the first line
    in full up to ``FIRST_LINE_MAX``), then ``… (N more characters)`` when anything was cut.

    >>> error_text(ValueError("\\x1b[31mbad\\x1b[0m shape"))
    'bad shape'
    """
    text = strip_escapes(str(exc)).strip()
    if len(text) <= KEEP_CHARACTERS:
        return text
    lines = text.splitlines()
    kept = lines[0][:FIRST_LINE_MAX]
    if len(kept) == len(lines[0]):
        for line in lines[1:]:
            if len(kept) + 1 + len(line) > KEEP_CHARACTERS:
                break
            kept += "\n" + line
    kept = kept.rstrip()
    return f"{kept} … ({len(text) - len(kept)} more characters)"
