"""The search: composing plugin spaces, the Optuna objective, studies and their storage, export of the best."""

from tlsearch.search.best import best_trial, export_study, quantize_study
from tlsearch.search.checkpoint import TrialRecord, load_checkpoint
from tlsearch.search.objective import Objective
from tlsearch.search.sampling import TrialPlugins, build_model, describe_choices, instantiate, sample_choices
from tlsearch.search.study import RunResult, finished_trials, open_study, prepare, run_study
from tlsearch.search.study_data import StudyData
from tlsearch.search.study_dir import StudyDir

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
