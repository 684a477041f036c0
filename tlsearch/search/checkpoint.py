"""A trial's checkpoint: ``model.safetensors`` (weights) + ``trial.json`` (everything to rebuild it)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from safetensors.torch import load_model, save_model

from tlsearch.errors import TlsearchError
from tlsearch.kinds import TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.registry import Registry
from tlsearch.search.sampling import build_model, instantiate
from tlsearch.search.study_dir import write_json_atomic

WEIGHTS_FILE = "model.safetensors"
RECORD_FILE = "trial.json"


@dataclass
class TrialRecord:
    """What a finished trial wrote beside its weights."""

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

    @property
    def preprocessing(self) -> DataConfig:
        return DataConfig.from_dict(self.data_config)


def save_checkpoint(folder: Path, model: TransferModel, record: TrialRecord) -> None:
    """Write the weights and the record atomically (temporary names, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".safetensors.tmp")
    os.close(fd)
    save_model(model.cpu(), tmp)
    os.replace(tmp, folder / WEIGHTS_FILE)
    write_json_atomic(folder / RECORD_FILE, asdict(record))


def load_record(folder: Path) -> TrialRecord:
    path = folder / RECORD_FILE
    if not path.is_file():
        raise TlsearchError(
            f"no checkpoint in {str(folder)!r} (the trial did not complete, or its files were removed)"
        )
    return TrialRecord(**json.loads(path.read_text()))


def load_checkpoint(folder: Path, registry: Registry) -> tuple[TransferModel, TrialRecord]:
    """Rebuild a trial's model from its plugins (without fetching pretrained weights) and load its weights."""
    record = load_record(folder)
    plugins = instantiate(record.choices, registry)
    model = build_model(
        plugins,
        num_outputs=record.num_outputs,
        image_size=record.preprocessing.input_size,
        load_weights=False,
    )
    model.data_config = record.preprocessing
    load_model(model, folder / WEIGHTS_FILE, strict=True)
    return model.eval(), record
