"""tlsearch: a plugin-based AutoML search for transfer learning in computer vision.

The package root stays import-light (no torch): ``tlsearch.deploy`` must work where torch is absent.
The public surface for plugin authors is :data:`hookimpl` and the base classes in :mod:`tlsearch.kinds`;
for scripts, :class:`Study` (``tlsearch.Study.from_yaml("study.yaml").run()``), :class:`Worker` and
:class:`WorkerSettings`, loaded on first use (:mod:`tlsearch.study_api`).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from tlsearch.study_api import Study, Worker, WorkerSettings

PROJECT_NAME = "tlsearch"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

try:
    __version__ = version(PROJECT_NAME)
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_API = ("Study", "Worker", "WorkerSettings")


def __getattr__(name: str) -> Any:
    """``tlsearch.Study`` and friends, imported when first used (``import tlsearch`` stays light)."""
    if name in _API:
        from tlsearch import study_api

        return getattr(study_api, name)
    raise AttributeError(f"module 'tlsearch' has no attribute {name!r}")


__all__ = ["PROJECT_NAME", "Study", "Worker", "WorkerSettings", "__version__", "hookimpl", "hookspec"]
