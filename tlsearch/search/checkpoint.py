"""A trial's checkpoint: ``model.safetensors`` (weights) + ``trial.json`` (everything to rebuild it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from tlsearch.config import StudyConfig
from tlsearch.errors import TlsearchError
from tlsearch.files import writing
from tlsearch.kinds import TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.registry import Registry
from tlsearch.search.sampling import build_model, describe_choices, instantiate
from tlsearch.search.study_data import StudyData
from tlsearch.search.study_dir import write_json_atomic
from tlsearch.train.loop import FitResult
from tlsearch.train.targets import TargetScale

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "trial.json"


@dataclass
class TrialRecord:
    """What a finished trial wrote beside its weights.

    ``target_scale`` (regression): the ``mean``/``std`` the model's outputs were trained on
    (:class:`~tlsearch.train.targets.TargetScale`); the weights output standardised values, and
    export puts the scale back in the graph. None for classification and for older checkpoints.
    """

    number: int
    study: str
    task: str
    choices: dict[str, Any]
    data_config: dict[str, Any]
    num_outputs: int
    labels: list[str] | None
    metric: str
    value: float
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    target_scale: dict[str, list[float]] | None = None

    @classmethod
    def of_trial(
        cls,
        number: int,
        config: StudyConfig,
        choices: dict[str, Any],
        *,
        model: TransferModel,
        data: StudyData,
        result: FitResult,
        info: dict[str, Any],
    ) -> TrialRecord:
        """The record of trial ``number`` that trained to its end: its kept epoch's metrics
        (``result``), the backbone's facts and the trial's ``info`` (params, latency …)."""
        return cls(
            number=number,
            study=config.name,
            task=config.task,
            choices=choices,
            data_config=model.data_config.to_dict(),
            num_outputs=data.num_outputs,
            labels=data.labels,
            metric=config.metric,
            value=float(result.metrics[config.metric]),
            metrics=result.metrics,
            info={
                **model.info,
                **info,
                "summary": describe_choices(choices),
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
            },
            target_scale=None if data.target_scale is None else data.target_scale.to_dict(),
        )

    @property
    def preprocessing(self) -> DataConfig:
        return DataConfig.from_dict(self.data_config)

    @property
    def scale(self) -> TargetScale | None:
        """:attr:`target_scale` as a :class:`TargetScale` (None when the outputs are not standardised)."""
        return None if self.target_scale is None else TargetScale.from_dict(self.target_scale)


class CheckpointError(TlsearchError):
    """A trial's checkpoint is missing, or does not belong to the trial it is read for."""


def save_checkpoint(folder: Path, model: TransferModel, record: TrialRecord) -> None:
    """Write the weights and the record atomically (temporary names, then rename)."""
    weights = folder / WEIGHTS_FILE
    with writing(weights):
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".safetensors.tmp")
        os.close(fd)
        try:
            try:
                save_model(model.cpu(), tmp)
            except SafetensorError as exc:  # safetensors reports an OSError as its own error
                found = re.search(r"\(os error (\d+)\)", str(exc))
                if found is None:
                    raise
                code = int(found.group(1))
                raise OSError(code, os.strerror(code)) from exc
            os.replace(tmp, weights)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    write_json_atomic(folder / RECORD_FILE, asdict(record))


def load_record(folder: Path) -> TrialRecord:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise CheckpointError(
            f"no checkpoint in {str(folder)!r} (the trial did not complete, or its files were removed)"
        )
    return TrialRecord(**json.loads(path.read_text()))


def load_checkpoint(
    folder: Path,
    registry: Registry,
    *,
    number: int | None = None,
    choices: dict[str, Any] | None = None,
) -> tuple[TransferModel, TrialRecord]:
    """Rebuild a trial's model from its plugins (without fetching pretrained weights) and load its weights.

    ``number`` and ``choices`` (the study's record of the trial, when known) must match the
    checkpoint's ``trial.json``, and the weights must fit the rebuilt model exactly; otherwise a
    :class:`CheckpointError` says what differs, so a checkpoint copied from another trial or study
    is never exported under this trial's name.
    """
    record = load_record(folder)
    if number is not None and record.number != number:
        raise CheckpointError(
            f"the checkpoint in {str(folder)!r} is trial {record.number}'s, not trial {number}'s; "
            "its files were moved or copied from another trial"
        )
    if choices is not None and record.choices != choices:
        differ = sorted(
            k for k in set(record.choices) | set(choices) if record.choices.get(k) != choices.get(k)
        )
        raise CheckpointError(
            f"the checkpoint in {str(folder)!r} does not match trial {record.number} of the study: "
            f"its {RECORD_FILE} differs in {differ[:5]} (checkpoint: "
            f"{ {k: record.choices.get(k) for k in differ[:5]} }, study: { {k: choices.get(k) for k in differ[:5]} })"
        )
    plugins = instantiate(record.choices, registry)
    model = build_model(
        plugins,
        num_outputs=record.num_outputs,
        image_size=record.preprocessing.input_size,
        load_weights=False,
    )
    model.data_config = record.preprocessing
    try:
        load_model(model, folder / WEIGHTS_FILE, strict=True)
    except (RuntimeError, OSError, ValueError) as exc:  # missing/unexpected keys, shapes, a bad file
        raise CheckpointError(
            f"the weights in {str(folder / WEIGHTS_FILE)!r} do not fit the model of trial {record.number} "
            f"({record.info.get('summary') or record.choices}): {str(exc)[:400]}"
        ) from None
    return model.eval(), record
