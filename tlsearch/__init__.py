"""tlsearch: a plugin-based AutoML search for transfer learning in computer vision.

The package root stays import-light (no torch): ``tlsearch.deploy`` must work where torch is absent.
The public surface for plugin authors is :data:`hookimpl` and the base classes in :mod:`tlsearch.kinds`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pluggy

PROJECT_NAME = "tlsearch"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

try:
    __version__ = version(PROJECT_NAME)
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
