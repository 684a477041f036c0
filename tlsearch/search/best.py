"""From a finished study to its best trial's model, and to a verified ONNX export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from tlsearch import __version__
from tlsearch.data import DecodedImages, ImageList, decode_images, load_splits
from tlsearch.errors import TlsearchError
from tlsearch.preprocessing import DataConfig, load_rgb
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


def _spread(n: int, k: int) -> list[int]:
    """``k`` indices spread over ``range(n)`` (validation lists are sorted by class)."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def export_study(
    out_dir: str | Path,
    *,
    trial: int | None = None,
    path: str | Path | None = None,
    storage: str | None = None,
    pm: PluginManager | None = None,
    raw_input: bool | None = None,
) -> Any:
    """Export trial ``trial`` (the best one by default) of the study in ``out_dir`` to ONNX.

    The model is rebuilt from the trial's checkpoint and checked against onnxruntime on the study's
    real validation images; nothing is written if a check fails. ``raw_input`` (default: the
    study's ``export.raw_input``) puts the preprocessing in the graph: the model then takes raw
    uint8 HWC images of any size. A regression model outputs the targets' original units (the
    study's target scale is applied in the graph). Returns the export report.
    """
    from tlsearch.export import export_onnx

    study_dir = StudyDir(Path(out_dir))
    config = study_dir.load_config()
    pm = pm or get_plugin_manager([config.resolve_path(p) for p in config.plugins])
    study = open_study(config, study_dir.storage(config, storage), create=False)
    chosen = (
        best_trial(study, tie_tolerance=config.search.tie_tolerance) if trial is None else study.trials[trial]
    )
    model, record = load_checkpoint(
        study_dir.trial_dir(chosen.number),
        pm.registry,
        number=chosen.number,
        choices=chosen.user_attrs.get("choices"),
    )
    _, val = load_splits(
        config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path
    )
    val = val.subset(_spread(len(val), MAX_PARITY_IMAGES))
    images = decode_images(
        val,
        record.preprocessing,
        cache_dir=study_dir.cache,
        progress=False,
        on_bad_image=config.data.on_bad_image,
    )
    raw_input = config.export.raw_input if raw_input is None else raw_input
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
        # the checkpoint's weights: the moving average's when it beat the last step's (training.ema)
        "weights": "ema" if (record.info.get("ema") or {}).get("used") else "trained",
    }
    report = export_onnx(
        model,
        path=target,
        metadata=metadata,
        validation_images=images.images,
        tolerance=config.export.tolerance,
        opset=config.export.opset,
        embed_preprocessing=raw_input,
        raw_images=[np.asarray(load_rgb(p)) for p in images.source.paths] if raw_input else None,
        target_scale=record.scale,
    )
    pm.notify("tlsearch_export_done", path=str(target), metadata=metadata)
    return report


def quantize_study(
    out_dir: str | Path, *, model: str | Path | None = None, on_drop: str | None = None
) -> Any:
    """Write an INT8 copy (``<stem>.int8.onnx``) of the study's exported model and measure it.

    Calibration uses up to ``export.calibration_images`` images of the training split; the accuracy
    of INT8 against fp32 is measured on the whole validation split with its labels. A drop above
    ``export.max_accuracy_drop`` is an error (nothing written) or, with ``on_drop="warn"`` (default:
    ``export.on_accuracy_drop``), a warning. Returns the quantisation report.
    """
    from tlsearch.export import quantize_int8

    study_dir = StudyDir(Path(out_dir))
    config = study_dir.load_config()
    source = Path(model) if model is not None else study_dir.root / config.export.path
    if not source.is_file():
        raise TlsearchError(f"no exported model at {str(source)!r}; run `tlsearch export {out_dir}` first")
    meta = json.loads(source.with_suffix(".json").read_text())["metadata"]
    preprocessing = DataConfig.from_dict(meta["data_config"])
    train, val = load_splits(
        config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path
    )

    def decode(images: ImageList) -> DecodedImages:
        return decode_images(
            images,
            preprocessing,
            cache_dir=study_dir.cache,
            progress=False,
            on_bad_image=config.data.on_bad_image,
        )

    calibration = decode(train.subset(_spread(len(train), config.export.calibration_images)))
    validation = decode(val)
    return quantize_int8(
        source,
        calibration_images=calibration.images,
        validation_images=validation.images,
        validation_labels=validation.targets,
        max_accuracy_drop=config.export.max_accuracy_drop,
        on_drop=on_drop or config.export.on_accuracy_drop,
    )
