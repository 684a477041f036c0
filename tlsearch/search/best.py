"""From a finished study to its best trial's model, and to a verified ONNX export."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from tlsearch import __version__
from tlsearch.config import StudyConfig
from tlsearch.data import DecodedImages, ImageList, decode_images, load_all_splits, load_splits
from tlsearch.errors import TlsearchError, UsageError
from tlsearch.kinds import TransferModel
from tlsearch.preprocessing import DataConfig, load_rgb
from tlsearch.registry import PluginManager, get_plugin_manager
from tlsearch.search.checkpoint import CheckpointError, TrialRecord, load_checkpoint
from tlsearch.search.decision import decision_metadata
from tlsearch.search.holdout import score_exported
from tlsearch.search.objectives import select_best
from tlsearch.search.sampling import backbone_model
from tlsearch.search.soup import Ingredient, greedy_soup, start_of, validation_metrics
from tlsearch.search.study import open_study
from tlsearch.search.study_dir import StudyDir, open_folder
from tlsearch.train import resolve_device

MAX_PARITY_IMAGES = 64
#: the study attribute that says what was exported last: trial, scores, test score, soup
EXPORT_ATTR = "export"
#: the soup's record names at most this many of the top trials it could not mix
MAX_LEFT_OUT = 10


def best_trial(study: optuna.Study, *, tie_tolerance: float = 0.0) -> optuna.trial.FrozenTrial:
    """The trial to export: the best score, the cheaper among equal ones; in a multi-objective study
    the most accurate trial of the Pareto front; with constraints, a feasible one
    (:func:`tlsearch.search.objectives.select_best`)."""
    return select_best(study, tie_tolerance=tie_tolerance)


def complete_trial(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial numbered ``number`` (Optuna's trial number, as ``tlsearch status`` shows it), which
    must be complete: an unknown, negative or unfinished number is refused (exit 2) with the
    numbers that can be chosen."""
    trials = study.get_trials(deepcopy=False)
    complete = [t.number for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    choices = ", ".join(map(str, complete)) or "none yet"
    chosen = next((t for t in trials if t.number == number), None)
    if chosen is None:
        raise UsageError(f"study {study.study_name!r} has no trial {number}; complete trials: {choices}")
    if chosen.state != optuna.trial.TrialState.COMPLETE:
        raise UsageError(
            f"trial {number} of study {study.study_name!r} is {chosen.state.name.lower()}, not complete; "
            f"complete trials: {choices}"
        )
    return chosen


def trial_fingerprint(trial: optuna.trial.FrozenTrial, *, raw_input: bool) -> str:
    """What an exported model was made from, as a short hash: the trial's number, parameters and
    plugin choices, and whether preprocessing is in the graph. An export records it in its metadata
    (``trial_hash``); :func:`exported_from_best` compares it to say a re-export would change nothing."""
    made_from = {
        "trial": trial.number,
        "params": trial.params,
        "choices": trial.user_attrs.get("choices"),
        "raw_input": bool(raw_input),
    }
    return hashlib.sha256(json.dumps(made_from, sort_keys=True, default=str).encode()).hexdigest()[:16]


def exported_from_best(
    out_dir: str | Path, *, storage: str | None = None, artifacts: str | None = None
) -> Path | None:
    """The study's exported model (``export.path``) when it is already the best trial's (same
    :func:`trial_fingerprint`, as ``tlsearch run`` would export it now); None when there is none,
    it is from another trial or it cannot be read: then exporting again is worth it."""
    study_dir, config = open_folder(Path(out_dir), artifacts)
    model = study_dir.root / config.export.path
    try:
        metadata = json.loads(model.with_suffix(".json").read_text())["metadata"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not model.is_file() or not isinstance(metadata, dict):
        return None
    study = open_study(config, study_dir.storage(config, storage), create=False)
    best = best_trial(study, tie_tolerance=config.search.tie_tolerance)
    current = trial_fingerprint(best, raw_input=config.export.raw_input)
    return model if metadata.get("trial_hash") == current else None


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
    artifacts: str | None = None,
) -> Any:
    """Export trial number ``trial`` (Optuna's number, a complete trial: :func:`complete_trial`;
    the best one by default) of the study in ``out_dir`` to ONNX.

    The model is rebuilt from the trial's checkpoint and checked against onnxruntime on the study's
    real validation images; nothing is written if a check fails. ``raw_input`` (default: the
    study's ``export.raw_input``) puts the preprocessing in the graph: the model then takes raw
    uint8 HWC images of any size. The metadata's ``trial_hash`` (:func:`trial_fingerprint`) says
    which trial it is from, so a rerun can keep it (:func:`exported_from_best`). A regression model outputs the targets' original units (the
    study's target scale is applied in the graph). Returns the export report.

    ``artifacts`` (``--artifacts``; default: the study's ``artifacts:``): the artefact store to
    fetch ``study.json`` and the checkpoints from when ``out_dir`` does not have them (another
    machine), and to upload the exported model to (``model.onnx``, then ``model.json``).
    """
    from tlsearch.export import export_onnx
    from tlsearch.export._metadata import update_metadata
    from tlsearch.export._provenance import provenance

    study_dir, config = open_folder(Path(out_dir), artifacts)
    if study_dir.shares:  # it will be written to: a store that does not take writes fails now
        study_dir.probe_artifacts()
    pm = pm or get_plugin_manager([config.resolve_path(p) for p in config.plugins])
    study = open_study(config, study_dir.storage(config, storage), create=False)
    chosen = (
        best_trial(study, tie_tolerance=config.search.tie_tolerance)
        if trial is None
        else complete_trial(study, trial)
    )
    model, record = load_checkpoint(
        study_dir.checkpoint(chosen.number),
        pm.registry,
        number=chosen.number,
        choices=chosen.user_attrs.get("choices"),
    )
    splits = load_all_splits(
        config.data, task=config.task, seed=config.search.seed or 0, resolve=config.resolve_path
    )
    soup: dict[str, Any] | None = None
    if trial is None and config.export.soup:
        soup, souped = _soup(
            study, chosen, model, record, config=config, study_dir=study_dir, pm=pm, val=splits.val
        )
        model = souped or model
    val = splits.val.subset(_spread(len(splits.val), MAX_PARITY_IMAGES))
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
        "backbone_model": backbone_model(record.choices, record.info),
        # the plugins' packages (or files) and versions, and the libraries': to reproduce the trial
        "provenance": provenance(pm, record.choices),
        "summary": record.info.get("summary"),
        "metric": record.metric,
        "value": record.value,
        "metrics": record.metrics,
        "params": record.info.get("params"),
        "trial_hash": trial_fingerprint(chosen, raw_input=raw_input),
        # the checkpoint's weights: the moving average's when it beat the last step's (training.ema)
        "weights": "ema" if (record.info.get("ema") or {}).get("used") else "trained",
    }
    if soup is not None:
        metadata["soup"] = soup
        if soup["exported"]:  # the soup's own validation score, measured on the whole val split
            metadata["value"], metadata["metrics"] = soup["value"], soup["metrics"]
    if config.task == "multilabel" or config.export.target_precision or config.export.target_recall:
        # tuned on the whole validation split, for the weights that ship (tlsearch.search.decision)
        metadata.update(
            decision_metadata(
                model,
                decode_images(
                    splits.val,
                    record.preprocessing,
                    cache_dir=study_dir.cache,
                    progress=False,
                    on_bad_image=config.data.on_bad_image,
                ),
                config=config,
                preprocessing=record.preprocessing,
                labels=list(record.labels or []),
            )
        )
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
    if splits.test is not None:  # once, on the file that ships: its score goes into its metadata
        # (multilabel: at the exported thresholds, never tuned on the test images)
        metadata["test"] = score_exported(report.path, splits.test, task=config.task)
        digest, size = update_metadata(report.path, {"test": metadata["test"]})
        report = dataclasses.replace(report, sha256=digest, size_bytes=size)
    study.set_user_attr(
        EXPORT_ATTR,
        {
            "path": str(report.path),
            "trial": record.number,
            "backbone_model": metadata["backbone_model"],
            "metric": record.metric,
            "value": metadata["value"],
            "test": metadata.get("test"),
            "soup": soup,
        },
    )
    study_dir.share_export(report.path)  # the model, then its .json: the sign it is whole
    pm.notify("tlsearch_export_done", path=str(target), metadata=metadata)
    return report


def _soup(
    study: optuna.Study,
    chosen: optuna.trial.FrozenTrial,
    model: TransferModel,
    record: TrialRecord,
    *,
    config: StudyConfig,
    study_dir: StudyDir,
    pm: PluginManager,
    val: ImageList,
) -> tuple[dict[str, Any], TransferModel | None]:
    """The greedy soup of the exported trial with the next best trials that share its start
    (:mod:`tlsearch.search.soup`): its record for the metadata, and the soup's model when it beats
    the trial alone (None otherwise). The soup is judged on the study's own metric, whichever it is,
    in the study's direction: :func:`~tlsearch.search.soup.validation_metrics` measures every one."""
    metric = config.metric
    maximize = config.direction == "maximize"
    others = sorted(
        (
            t
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.number != chosen.number and t.values
        ),
        key=lambda t: t.values[0],
        reverse=maximize,
    )
    candidates = [Ingredient(chosen.number, float(chosen.values[0]), model, record)]
    left_out: list[dict[str, Any]] = []
    start = start_of(record.choices)
    for other in others:
        if len(candidates) >= config.export.soup_size:
            break
        theirs = start_of(other.user_attrs.get("choices") or {})
        if theirs != start:  # never loaded: another backbone or pretrained start cannot be averaged
            if len(left_out) >= MAX_LEFT_OUT:  # the record names the first ones, not hundreds
                continue
            differ = sorted(k for k in set(start) | set(theirs) if start.get(k) != theirs.get(k))[:3]
            left_out.append(
                {
                    "trial": other.number,
                    "reason": f"another backbone start ({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)})",
                }
            )
            continue
        try:
            loaded, their_record = load_checkpoint(
                study_dir.checkpoint(other.number),
                pm.registry,
                number=other.number,
                choices=other.user_attrs.get("choices"),
            )
        except CheckpointError as exc:
            left_out.append({"trial": other.number, "reason": str(exc)[:300]})
            continue
        candidates.append(Ingredient(other.number, float(other.values[0]), loaded, their_record))
    decoded = decode_images(
        val,
        record.preprocessing,
        cache_dir=study_dir.cache,
        progress=False,
        on_bad_image=config.data.on_bad_image,
    )
    device = resolve_device(config.training.device)

    def evaluate(candidate: Any) -> dict[str, float]:
        return validation_metrics(
            candidate,
            decoded,
            config=record.preprocessing,
            task=config.task,
            scale=record.scale,
            device=device,
            loss=config.training.loss,
        )

    soup = greedy_soup(candidates, evaluate=evaluate, metric=metric, maximize=maximize)
    info = soup.to_dict()
    info["metrics"] = soup.metrics
    info["left_out"] = left_out + info["left_out"]
    if not soup.exported and left_out and len(candidates) == 1:
        info["reason"] = "no other top trial shares the best trial's backbone start"
    return info, soup.model  # type: ignore[return-value]


def quantize_study(
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    on_drop: str | None = None,
    artifacts: str | None = None,
) -> Any:
    """Write an INT8 copy (``<stem>.int8.onnx``) of the study's exported model and measure it.

    Calibration uses up to ``export.calibration_images`` images of the training split; the accuracy
    of INT8 against fp32 (mAP for a multi-label model) is measured on the whole validation split with its labels. A drop above
    ``export.max_accuracy_drop`` is an error (nothing written) or, with ``on_drop="warn"`` (default:
    ``export.on_accuracy_drop``), a warning. Returns the quantisation report. With an artefact
    store (``artifacts``, else the study's ``artifacts:``) the INT8 copy is uploaded there too.
    """
    from tlsearch.export import quantize_int8

    study_dir, config = open_folder(Path(out_dir), artifacts)
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
    report = quantize_int8(
        source,
        calibration_images=calibration.images,
        validation_images=validation.images,
        validation_labels=validation.targets,
        max_accuracy_drop=config.export.max_accuracy_drop,
        on_drop=on_drop or config.export.on_accuracy_drop,
    )
    study_dir.share_export(report.path)
    return report
