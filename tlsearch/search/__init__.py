"""The search: composing plugin spaces, the Optuna objective, studies and their storage, export of the best.

The names below are imported on first use (PEP 562), not with the package: a process that needs
only the storage (``tlsearch storage-proxy``, which serves the study's database to workers) then
starts in a second or two instead of importing torch and timm through the objective.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_WHERE = {
    "best_trial": "best",
    "export_study": "best",
    "quantize_study": "best",
    "TrialRecord": "checkpoint",
    "load_checkpoint": "checkpoint",
    "Objective": "objective",
    "TrialPlugins": "sampling",
    "build_model": "sampling",
    "describe_choices": "sampling",
    "instantiate": "sampling",
    "sample_choices": "sampling",
    "RunResult": "study",
    "finished_trials": "study",
    "open_study": "study",
    "prepare": "study",
    "run_study": "study",
    "StudyData": "study_data",
    "StudyDir": "study_dir",
}

if TYPE_CHECKING:
    from tlsearch.search.best import best_trial, export_study, quantize_study
    from tlsearch.search.checkpoint import TrialRecord, load_checkpoint
    from tlsearch.search.objective import Objective
    from tlsearch.search.sampling import (
        TrialPlugins,
        build_model,
        describe_choices,
        instantiate,
        sample_choices,
    )
    from tlsearch.search.study import RunResult, finished_trials, open_study, prepare, run_study
    from tlsearch.search.study_data import StudyData
    from tlsearch.search.study_dir import StudyDir


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is not None:
        return getattr(importlib.import_module(f"tlsearch.search.{module}"), name)
    try:  # a submodule (``tlsearch.search.study``), as the eager imports used to leave them
        return importlib.import_module(f"tlsearch.search.{name}")
    except ModuleNotFoundError:
        raise AttributeError(f"module 'tlsearch.search' has no attribute {name!r}") from None


__all__ = [
    "Objective",
    "RunResult",
    "StudyData",
    "StudyDir",
    "TrialPlugins",
    "TrialRecord",
    "best_trial",
    "build_model",
    "describe_choices",
    "export_study",
    "finished_trials",
    "instantiate",
    "load_checkpoint",
    "open_study",
    "prepare",
    "quantize_study",
    "run_study",
    "sample_choices",
]
