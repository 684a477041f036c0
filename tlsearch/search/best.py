"""From a finished study to its best trial's model, and to a verified ONNX export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from tlsearch import __version__
from tlsearch.data import decode_images, load_splits
from tlsearch.registry import PluginManager, get_plugin_manager
from tlsearch.search.checkpoint import load_checkpoint
from tlsearch.search.objectives import select_best
from tlsearch.search.study import open_study
from tlsearch.search.study_dir import StudyDir

MAX_PARITY_IMAGES = 64


def best_trial(study: optuna.Study, *, tie_tolerance: float = 0.0) -> optuna.trial.FrozenTrial:
    """The trial to export: the best score, the cheaper among equal ones; in a multi-objective study
    the most accurate trial of the Pareto front; with constraints, a feasible one
    (:func:`tlsearch.search.objectives.select_best`)."""
    return select_best(study, tie_tolerance=tie_tolerance)


def export_study(
    out_dir: str | Path,
    *,
    trial: int | None = None,
    path: str | Path | None = None,
    storage: str | None = None,
    pm: PluginManager | None = None,
) -> Any:
    """Export trial ``trial`` (the best one by default) of the study in ``out_dir`` to ONNX.

    The model is rebuilt from the trial's checkpoint and checked against onnxruntime on the study's
    real validation images; nothing is written if a check fails. Returns the export report.
    """
    from tlsearch.export import export_onnx

    study_dir = StudyDir(Path(out_dir))
    config = study_dir.load_config()
    pm = pm or get_plugin_manager([config.resolve_path(p) for p in config.plugins])
    study = open_study(config, study_dir.storage(config, storage), create=False)
    chosen = (
        best_trial(study, tie_tolerance=config.search.tie_tolerance) if trial is None else study.trials[trial]
    )
    model, record = load_checkpoint(study_dir.trial_dir(chosen.number), pm.registry)
    _, val = load_splits(
        config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path
    )
    val = val.subset(list(range(min(len(val), MAX_PARITY_IMAGES))))
    images = decode_images(
        val,
        record.preprocessing,
        cache_dir=study_dir.cache,
        progress=False,
        on_bad_image=config.data.on_bad_image,
    ).images
    target = Path(path) if path is not None else study_dir.root / config.export.path
    metadata = {
        "producer": "tlsearch",
        "tlsearch_version": __version__,
        "study": config.name,
        "task": config.task,
        "labels": record.labels,
        "num_outputs": record.num_outputs,
        "data_config": record.data_config,
        "trial": record.number,
        "choices": record.choices,
        "summary": record.info.get("summary"),
        "metric": record.metric,
        "value": record.value,
        "metrics": record.metrics,
        "params": record.info.get("params"),
    }
    report = export_onnx(
        model,
        path=target,
        metadata=metadata,
        validation_images=images,
        tolerance=config.export.tolerance,
        opset=config.export.opset,
    )
    pm.notify("tlsearch_export_done", path=str(target), metadata=metadata)
    return report
