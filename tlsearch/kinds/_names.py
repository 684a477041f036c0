"""The rule for a plugin's (and a portfolio entry's) name, shared by the contract classes and the
portfolio declarations without either importing the other."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
