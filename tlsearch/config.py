"""The study config: YAML → validated objects, before any work starts.

Two stages, both before anything is written:

1. :func:`load_config` parses the YAML (``safe_load``'s meaning, within the bounds of
   :mod:`tlsearch.study_file`: UTF-8, no aliases, no key twice) and validates its shape with
   pydantic: unknown keys, wrong types, out-of-range or non-finite numbers.
2. :func:`resolve_space` checks the ``space`` section against the loaded plugins: unknown plugin
   names, unknown hyperparameters, values outside a hyperparameter's type, range or choices, ranges
   that widen a declared one; then :func:`tlsearch.validate.check_study` refuses task × loss ×
   plugin mismatches and instantiates each plugin at the corners of its narrowed space.

Every error is one :class:`~tlsearch.errors.ConfigError` naming the file, the field, the bad value
and the valid choices; a value is echoed at most a few hundred characters long
(:func:`~tlsearch.errors.short_repr`), since a crafted file can give megabytes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tlsearch.errors import ConfigError, PluginError, format_choices, short_repr
from tlsearch.preprocessing import MIN_CROP_PCT
from tlsearch.space import Categorical, Fixed, Float, Hyperparameter, Int, SearchSpace, narrow
from tlsearch.study_file import read_study_yaml


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Range(_Strict):
    """A numeric range for a searched setting: ``{low: 1e-4, high: 1e-2, log: true}``."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"low must be <= high but got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 but got low={self.low}")
        return self


MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 1024
CropMode = Literal["center", "squash"]  # tlsearch.preprocessing.CROP_MODES


def _as_list(value: Any, name: str) -> list[Any]:
    """A setting that may be one value or a list of choices, as a list (a list must not be empty
    nor name a value twice)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return [value]
    if not value:
        raise ValueError(f"{name}: an empty list has nothing to search; give a value or a list of choices")
    if len(set(value)) != len(value):
        raise ValueError(f"{name}: the list names a value twice: {short_repr(value)}")
    return value


class DataSettings(_Strict):
    """Where the images are. Either ``train`` + ``val`` folders, or one ``folder`` split by
    ``val_fraction``; for regression, ``csv`` (columns ``path,target…``) with ``val_csv`` or
    ``val_fraction``; for multilabel, ``csv`` (``path,labels`` with ``label_delimiter``, or one 0/1
    column per label; ``labels`` fixes the vocabulary: :mod:`tlsearch.data.multilabel`) the same
    way. Folders hold one sub-folder per class.

    A held-out test split, which no trial ever sees, is either ``test`` (a class folder, or a CSV
    for regression) or ``test_fraction`` (carved from the training pool before ``val`` is, stratified
    by class, seeded by ``search.seed``); the exported model is scored on it once after the search
    (see :mod:`tlsearch.search.holdout`)."""

    train: Path | None = None
    val: Path | None = None
    folder: Path | None = None
    csv: Path | None = None
    val_csv: Path | None = None
    val_fraction: float = Field(0.2, gt=0, lt=1)
    test: Path | None = None
    test_fraction: float | None = Field(None, gt=0, lt=1)
    image_size: int | list[int] | None = Field(
        None, description="override the backbone's input size; a list is searched (a categorical choice)"
    )
    crop_pct: float | list[float] | None = Field(
        None, description="eval crop: the centre crop's share of the resized image (timm's crop_pct)"
    )
    crop_mode: CropMode | list[CropMode] | None = Field(
        None, description="eval resize: center (keep the aspect ratio) or squash (timm's crop_mode)"
    )
    on_bad_image: Literal["error", "skip"] = "error"
    # multilabel (tlsearch.data.multilabel): the label vocabulary (default: the training CSV's
    # labels, sorted) and what separates the labels of a `path,labels` CSV's cell
    labels: list[str] | None = None
    label_delimiter: str = Field("|", min_length=1, max_length=4)

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v or any(not isinstance(x, str) or not x.strip() for x in v):
                raise ValueError("labels must be a non-empty list of label names")
            if len(set(v)) != len(v):
                raise ValueError(f"labels names a label twice: {short_repr(v)}")
        return v

    @property
    def fixed_image_size(self) -> int | None:
        """The one ``image_size`` the study fixes; None when it searches a list or keeps each
        backbone's own (the zero-cost ranking then scores at the largest listed size, or at the
        backbone's native size: :func:`tlsearch.rank.ranking.ranking_size`)."""
        return self.image_size if isinstance(self.image_size, int) else None

    @field_validator("image_size")
    @classmethod
    def _image_sizes(cls, v: int | list[int] | None) -> int | list[int] | None:
        for size in _as_list(v, "image_size"):
            if isinstance(size, bool) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
                raise ValueError(f"image_size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] but got {size}")
        return v

    @field_validator("crop_pct")
    @classmethod
    def _crop_pcts(cls, v: float | list[float] | None) -> float | list[float] | None:
        for pct in _as_list(v, "crop_pct"):
            if not MIN_CROP_PCT < pct <= 1:
                raise ValueError(f"crop_pct must be in ({MIN_CROP_PCT}, 1] but got {pct}")
        return v

    @field_validator("crop_mode")
    @classmethod
    def _crop_modes(cls, v: str | list[str] | None) -> str | list[str] | None:
        _as_list(v, "crop_mode")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> DataSettings:
        sources = [s for s in ("train", "folder", "csv") if getattr(self, s) is not None]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of: train (with val), folder (split by val_fraction), csv; "
                f"got {', '.join(sources) or 'none'}"
            )
        if self.val is not None and self.train is None:
            raise ValueError("val is only valid with train")
        if self.val_csv is not None and self.csv is None:
            raise ValueError("val_csv is only valid with csv")
        if self.test is not None and self.test_fraction is not None:
            raise ValueError("give at most one of: test (a held-out folder or CSV), test_fraction")
        return self


#: the optimizers a study may use, and each one's default lr range for fine-tuning pretrained weights
OPTIMIZERS = ("adamw", "sgd")
DEFAULT_LR = {
    "adamw": Range(low=1e-5, high=3e-3, log=True),
    "sgd": Range(low=1e-4, high=1e-1, log=True),
}
#: the training augmentation policies (see :mod:`tlsearch.data.policies`)
AUGMENT_POLICIES = ("none", "crop_flip", "trivial", "randaugment")


def _choices(name: str, v: Any, valid: tuple[str, ...]) -> Any:
    """One of ``valid``, or a list of them (a searched choice): anything else names the choices."""
    for value in v if isinstance(v, list) else [v]:
        if value not in valid:
            raise ValueError(
                f"{name} {short_repr(value)} is not valid; valid choices: {', '.join(valid)} "
                "(or a list of them to search)"
            )
    return _unique_list(name, v)


def _unique_list(name: str, v: Any) -> Any:
    """A searched list: not empty, no value twice; a list of one is that value, fixed."""
    if not isinstance(v, list):
        return v
    if not v:
        raise ValueError(f"{name}: an empty list leaves nothing to choose; give a value or a list of them")
    if len(set(map(repr, v))) != len(v):
        raise ValueError(f"{name} lists a value twice: {short_repr(v)}")
    return v[0] if len(v) == 1 else v


class TrainingSettings(_Strict):
    """How one trial trains.

    The speed settings' defaults are right for searches (see ``tlsearch.train.TrainSettings``):
    ``compile`` (``auto``: only trials long enough to repay the warm-up), ``data_placement``
    (``auto``: the decoded images live on the GPU when they fit, else stream), ``loader_workers``
    for streaming (None: cores − 1, at most 8), ``feature_cache`` (frozen-backbone trials train on
    cached features), ``augment_frozen`` (randomly augment frozen-backbone trials, which then
    cannot use the cache). ``retry_oom``: a trial that runs out of GPU memory is retried once at
    half the batch size. ``threads``: PyTorch's CPU threads per process (None: the cores free
    when the study starts, see :mod:`tlsearch.train.threads`).

    ``lr`` defaults to a range that suits fine-tuning pretrained weights with AdamW
    (``1e-5 … 3e-3``, log; the head trains at the full lr, so probes reach the top of the range)
    and to ``1e-4 … 1e-1`` with SGD. ``warmup``: the fraction of all steps over which the learning
    rate ramps up linearly (default 0.05); ``clip_grad_norm``: clip the global gradient norm
    (default: off). Both may be ranges to search, like ``lr``.

    The rest of the recipe, each fixed or searched (a list: a categorical choice; a range):
    ``optimizer`` (``adamw``, ``sgd`` with Nesterov momentum 0.9; searched without an ``lr``, each
    takes its own default range), ``batch_size``, ``augment`` (``none``, ``crop_flip``,
    ``trivial``: TrivialAugmentWide, ``randaugment`` with ``randaugment_magnitude``; ``true`` /
    ``false`` mean ``crop_flip`` / ``none``), ``random_erasing`` (the probability of erasing a
    random rectangle of each training image), ``ema`` (the decay of an exponential moving average
    of the weights, evaluated beside them every epoch; null: off).
    ``patience``: stop a trial that has not improved its best epoch for this many epochs (default:
    off); it completes with its best epoch, whose weights every trial keeps.
    """

    epochs: int = Field(3, ge=1, le=10_000)
    batch_size: int | list[int] = 32
    eval_batch_size: int | None = Field(None, ge=1)
    lr: float | Range = DEFAULT_LR["adamw"]
    warmup: float | Range = 0.05
    clip_grad_norm: float | Range | None = None
    optimizer: str | list[str] = "adamw"
    scheduler: Literal["cosine", "constant"] = "cosine"
    augment: str | list[str] = "crop_flip"
    randaugment_magnitude: int | Range = 9
    random_erasing: float | Range = 0.0
    ema: float | list[float | None] | None = None
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    loss: Literal["auto", "cross_entropy", "mse", "huber", "bce"] = "auto"
    compile: Literal["auto", "always", "never"] = "auto"
    data_placement: Literal["auto", "resident", "stream"] = "auto"
    loader_workers: int | None = Field(None, ge=0, le=64)
    threads: int | None = Field(None, ge=1, le=1024)
    feature_cache: bool = True
    augment_frozen: bool = False
    retry_oom: bool = True
    patience: int | None = Field(None, ge=1)
    #: processes (GPUs, or gloo processes on the CPU) that train each trial data-parallel
    devices: int = 1

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 64:
            raise ValueError(
                f"devices is the number of devices each trial trains on, an integer in [1, 64], "
                f"but got {short_repr(v)}"
            )
        return v

    @model_validator(mode="after")
    def _devices_and_device(self) -> TrainingSettings:
        if self.devices > 1 and ":" in self.device:
            raise ValueError(
                f"devices: {self.devices} takes the first {self.devices} devices of its kind (cuda:0, "
                f"cuda:1, ...) but device is {self.device!r}; use device: cuda (pin GPUs with "
                "CUDA_VISIBLE_DEVICES or tlsearch worker --devices 0,1), or cpu"
            )
        return self

    @field_validator("optimizer", mode="before")
    @classmethod
    def _optimizer(cls, v: Any) -> Any:
        return _choices("optimizer", v, OPTIMIZERS)

    @field_validator("augment", mode="before")
    @classmethod
    def _augment(cls, v: Any) -> Any:
        if isinstance(v, bool):  # the old switch: true = crop + flip, false = none
            return "crop_flip" if v else "none"
        return _choices("augment", v, AUGMENT_POLICIES)

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        for size in v if isinstance(v, list) else [v]:
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65_536:
                raise ValueError(
                    f"batch_size must be an integer in [1, 65536] or a list of them but got {short_repr(v)}"
                )
        return _unique_list("batch_size", v)

    @field_validator("randaugment_magnitude")
    @classmethod
    def _magnitude(cls, v: int | Range) -> int | Range:
        low, high = (v.low, v.high) if isinstance(v, Range) else (v, v)
        if not 0 <= low <= high <= 30:
            raise ValueError(f"randaugment_magnitude is in [0, 30] (torchvision's bins) but got {v}")
        return v

    @field_validator("random_erasing")
    @classmethod
    def _erasing(cls, v: float | Range) -> float | Range:
        low, high = (v.low, v.high) if isinstance(v, Range) else (v, v)
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"random_erasing is a probability in [0, 1] but got {v}")
        return v

    @field_validator("ema", mode="before")
    @classmethod
    def _ema(cls, v: Any) -> Any:
        for decay in v if isinstance(v, list) else [v]:
            if decay is None:
                continue
            if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
                raise ValueError(
                    "ema is the decay of the weights' moving average in (0, 1), e.g. 0.999 "
                    f"(null: off), or a list of them to search but got {short_repr(v)}"
                )
        return _unique_list("ema", v)

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, v: float | Range) -> float | Range:
        if isinstance(v, (int, float)) and v <= 0:
            raise ValueError(f"lr must be > 0 but got {v}")
        return v

    @field_validator("warmup")
    @classmethod
    def _warmup_fraction(cls, v: float | Range) -> float | Range:
        low, high = (v.low, v.high) if isinstance(v, Range) else (v, v)
        if not (low >= 0.0 and high < 1.0):
            raise ValueError(f"warmup is a fraction of the steps in [0, 1) but got {v}")
        return v

    @field_validator("clip_grad_norm")
    @classmethod
    def _positive_clip(cls, v: float | Range | None) -> float | Range | None:
        low = v.low if isinstance(v, Range) else v
        if low is not None and not low > 0:
            raise ValueError(f"clip_grad_norm must be > 0 (omit it for no clipping) but got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _sgd_lr(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("optimizer") in ("sgd", ["sgd"]) and "lr" not in data:
            return {**data, "lr": DEFAULT_LR["sgd"]}  # SGD needs larger steps
        return data

    def searched_lr(self) -> bool:
        """Whether each searched optimizer takes its own default lr range (``lr`` not given)."""
        return "lr" not in self.model_fields_set and isinstance(self.optimizer, list)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v in {"auto", "cpu", "cuda", "mps"} or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device {short_repr(v)} is not valid; valid choices: auto, cpu, cuda, cuda:N, mps")


class RankSettings(_Strict):
    """Zero-cost backbone ranking before the first trial (see ``docs/smarter-search.md``).

    ``score``: the transferability score of frozen features over the training split; ``keep_top``:
    drop all but the best N backbone candidates from the space (None keeps all); ``order_first``:
    the first trials try the candidates best first; ``max_images``: score on at most this many
    training images (a seeded random subset), to bound the forward pass."""

    score: Literal["logme", "hscore"] = "logme"
    keep_top: int | None = Field(None, ge=1)
    order_first: bool = True
    max_images: int | None = Field(2000, ge=8)


#: objectives that measure cost (always minimised), besides the task's metrics
COST_OBJECTIVES = ("latency_ms", "params", "gflops")


class SearchSettings(_Strict):
    """The Optuna search: budget, sampler, pruner, and the smarter-search options: ``rank`` (zero-cost
    backbone ranking), ``warm_start`` (a portfolio of strong first trials), ``objectives`` (several,
    e.g. ``[accuracy, latency_ms]``: a Pareto front), ``constraints`` (cost limits, e.g.
    ``{latency_ms: 20}``), ``tie_tolerance`` (scores this close count as equal; the cheaper wins)."""

    n_trials: int | None = Field(10, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds")
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "successive_halving", "none"] = "successive_halving"
    seed: int | None = 0
    metric: str | None = None
    top_k: int = Field(5, ge=1, description="k of the top_k_accuracy metric (capped at the class count)")
    rank: RankSettings | None = None
    warm_start: bool = True
    objectives: list[str] | None = Field(None, min_length=1)
    constraints: dict[str, float] = Field(default_factory=dict)
    tie_tolerance: float = Field(0.0, ge=0)


class ExportSettings(_Strict):
    """What happens to the best trial at the end of ``tlsearch run``."""

    enabled: bool = True
    path: str = Field(
        "model.onnx",
        description="relative to the study folder and inside it, or an absolute path on purpose",
    )
    tolerance: float = Field(1e-4, gt=0)
    opset: int | None = Field(None, ge=17)
    raw_input: bool = Field(
        False, description="the model takes raw uint8 HWC images and preprocesses them itself"
    )
    int8: bool = Field(
        False, description="also write <stem>.int8.onnx (static QDQ, calibrated on training images)"
    )
    max_accuracy_drop: float = Field(
        0.01, ge=0, le=1, description="INT8: the largest accuracy drop accepted (0.01 = 1 pp)"
    )
    on_accuracy_drop: Literal["error", "warn"] = "error"
    calibration_images: int = Field(128, ge=1, le=10_000)
    soup: bool = Field(
        True,
        description="greedy soup: average the weights of top trials sharing a start when validation improves",
    )
    soup_size: int = Field(5, ge=2, le=100, description="the soup tries at most this many top trials")
    # binary classification (tlsearch.search.decision): a decision threshold on the positive
    # class's probability, tuned on validation for a target precision or recall
    target_precision: float | None = Field(None, gt=0, le=1)
    target_recall: float | None = Field(None, gt=0, le=1)
    positive_label: str | None = Field(None, description="binary: the positive class (default: the second)")

    @model_validator(mode="after")
    def _one_target(self) -> ExportSettings:
        if self.target_precision is not None and self.target_recall is not None:
            raise ValueError("give at most one of target_precision, target_recall")
        if self.positive_label is not None and self.target_precision is None and self.target_recall is None:
            raise ValueError("positive_label is only used with target_precision or target_recall")
        return self

    @model_validator(mode="after")
    def _int8_of_the_plain_model(self) -> ExportSettings:
        if self.int8 and self.raw_input:
            raise ValueError(
                "int8: true quantises the plain model (normalised input) and raw_input: true exports "
                "none; set one of them to false (export the raw-input model separately with "
                "`tlsearch export DIR --raw-input --out FILE`)"
            )
        return self

    @field_validator("path")
    @classmethod
    def _inside_the_study_folder(cls, v: str) -> str:
        # a relative path is joined to the study folder: one that climbs out of it (../../x.onnx)
        # would write wherever the study file says; outside on purpose means an absolute path
        if not v.strip():
            raise ValueError("the export path is empty; give a file name such as model.onnx")
        if escapes_the_folder(v):
            raise ValueError(
                "a relative export path must stay inside the study folder (e.g. model.onnx or "
                "export/model.onnx); give an absolute path to write elsewhere on purpose"
            )
        return v


def escapes_the_folder(path: str) -> bool:
    """Whether a relative ``path``, joined to a folder, is that folder itself or outside it."""
    return not os.path.isabs(path) and os.path.normpath(path).split(os.sep)[0] in {"..", "."}


_Choices = Annotated[dict[str, dict[str, Any]], Field(min_length=1)]


class SpaceSettings(_Strict):
    """Which plugins the search may use, each mapped to its hyperparameter overrides.

    ``head`` and ``freezing`` left out (None): the installed plugins of that kind that declare
    ``default = True`` (:attr:`tlsearch.kinds.Plugin.default`), filled in by :func:`resolve_space`."""

    backbone: _Choices
    head: _Choices | None = None
    freezing: _Choices | None = None
    regularizers: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @field_validator("backbone", "head", "freezing", "regularizers", mode="before")
    @classmethod
    def _list_as_mapping(cls, v: Any) -> Any:
        # `head: [linear, mlp]` is shorthand for `head: {linear: {}, mlp: {}}`; `linear: null` means {}.
        if isinstance(v, list) and all(isinstance(x, str) for x in v):
            return {x: {} for x in v}
        if isinstance(v, dict):
            return {k: ({} if params is None else params) for k, params in v.items()}
        return v


TASKS = ("classification", "regression", "multilabel")
METRICS = {
    "classification": {
        "accuracy": "maximize",
        "balanced_accuracy": "maximize",
        "macro_f1": "maximize",
        "top_k_accuracy": "maximize",
        "log_loss": "minimize",
        "val_loss": "minimize",
    },
    "regression": {"r2": "maximize", "mae": "minimize", "rmse": "minimize", "val_loss": "minimize"},
    # multi-label (tlsearch.train.metrics.multilabel_metrics): mAP first, the default; the F1s are
    # at per-label thresholds tuned on the same validation scores (tlsearch.train.thresholds)
    "multilabel": {
        "map": "maximize",
        "micro_f1": "maximize",
        "macro_f1": "maximize",
        "log_loss": "minimize",
        "val_loss": "minimize",
    },
}


class StudyConfig(_Strict):
    """A whole study file. ``source`` is the YAML path (relative paths inside it resolve from its folder)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: Literal["classification", "regression", "multilabel"] = "classification"
    data: DataSettings
    space: SpaceSettings
    training: TrainingSettings = TrainingSettings()
    search: SearchSettings = SearchSettings()
    export: ExportSettings = ExportSettings()
    storage: str | None = Field(
        None,
        description="a database URL, or a journal file: a relative one lives in the study folder",
    )
    artifacts: str | None = Field(
        None,
        description="where checkpoints, study.json, the trail and the exported model are shared: "
        "s3://bucket/prefix, gs://bucket/prefix or a folder (default: the study folder)",
    )
    plugins: list[Path] = Field(default_factory=list)
    source: Path | None = Field(None, exclude=True)

    @field_validator("storage")
    @classmethod
    def _journal_inside_the_study_folder(cls, v: str | None) -> str | None:
        # like export.path: a relative journal file is an output of the study, kept in its folder
        if v is not None and "://" not in v and escapes_the_folder(v.removeprefix("journal:")):
            raise ValueError(
                "a relative journal file must stay inside the study folder (e.g. study.journal); "
                "give an absolute path, or a database URL, to keep the study elsewhere"
            )
        return v

    @field_validator("artifacts")
    @classmethod
    def _artifact_url(cls, v: str | None) -> str | None:
        if v is not None:
            from tlsearch.artifacts import parse_artifacts

            try:
                parse_artifacts(v, base=Path("/"), where="artifacts")
            except ConfigError as exc:
                raise ValueError(str(exc).removeprefix("artifacts: ")) from None
        return v

    @model_validator(mode="after")
    def _metric(self) -> StudyConfig:
        metrics = METRICS[self.task]
        if self.search.metric is not None and self.search.metric not in metrics:
            raise ValueError(
                f"search.metric {short_repr(self.search.metric)} is not valid for task {self.task!r}; "
                f"valid choices: {', '.join(metrics)}"
            )
        objectives = self.search.objectives
        if objectives is not None:
            valid = [*metrics, *COST_OBJECTIVES]
            for name in objectives:
                if name not in valid:
                    raise ValueError(
                        f"search.objectives: {short_repr(name)} is not valid for task {self.task!r}; valid choices: {', '.join(valid)}"
                    )
            if objectives[0] not in metrics:
                raise ValueError(
                    f"search.objectives must start with the task's metric ({', '.join(metrics)}), got {short_repr(objectives[0])}"
                )
            if len(set(objectives)) != len(objectives):
                raise ValueError(f"search.objectives lists a name twice: {short_repr(objectives)}")
            if self.search.metric is not None and self.search.metric != objectives[0]:
                raise ValueError(
                    f"search.metric {short_repr(self.search.metric)} differs from the first objective "
                    f"{short_repr(objectives[0])}; give one"
                )
        for name, limit in self.search.constraints.items():
            if name not in COST_OBJECTIVES:
                raise ValueError(
                    f"search.constraints: {short_repr(name)} cannot be constrained; valid choices: {', '.join(COST_OBJECTIVES)}"
                )
            if limit <= 0:
                raise ValueError(f"search.constraints.{name} must be > 0 but got {limit}")
        return self

    @model_validator(mode="after")
    def _binary_threshold_task(self) -> StudyConfig:
        targets = [n for n in ("target_precision", "target_recall") if getattr(self.export, n) is not None]
        if targets and self.task != "classification":
            raise ValueError(
                f"export.{targets[0]} is for binary classification, not task {self.task!r}"
                + (" (multilabel thresholds are tuned per label for F1)" if self.task == "multilabel" else "")
            )
        return self

    @property
    def metric(self) -> str:
        if self.search.objectives is not None:
            return self.search.objectives[0]
        return self.search.metric or next(iter(METRICS[self.task]))

    @property
    def objectives(self) -> list[str]:
        """What the study optimises: ``search.objectives``, or just the metric."""
        return list(self.search.objectives or [self.metric])

    @property
    def directions(self) -> list[str]:
        """One direction per objective: the metric's own, ``minimize`` for costs."""
        return [METRICS[self.task].get(name, "minimize") for name in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def direction(self) -> str:
        return METRICS[self.task][self.metric]

    def resolve_path(self, p: Path | str) -> Path:
        p = Path(p).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p


def _field_path(loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """The dotted field name for a pydantic error location, and the valid keys where it points.

    Union members and validator tags that pydantic adds to locations are dropped, so the user sees
    ``training.lr``, not ``training.lr.Range``.
    """
    current: Any = StudyConfig
    parts: list[str] = []
    valid: list[str] = []
    after_field = False  # the previous part was a field whose type is not a model (a union, say)
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            valid = [k for k, f in current.model_fields.items() if not f.exclude]
            if part not in current.model_fields:
                if (
                    isinstance(part, str)
                    and part[:1].isupper()
                    or part in {"float", "int", "str", "bool", "none"}
                ):
                    continue  # a union member's tag
                parts.append(str(part))
                current = None
                continue
            parts.append(str(part))
            annotation = current.model_fields[part].annotation
            current = (
                annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else ...
            )
            after_field = current is ...
        elif current is ...:
            if not (after_field and _is_union_tag(part)):  # e.g. training.lr's `float`
                parts.append(str(part))
            after_field = False
    return ".".join(parts), valid


def _is_union_tag(part: object) -> bool:
    """Whether a pydantic error location part is the tag of a union member, not a user's key."""
    return isinstance(part, str) and (
        part in {"float", "int", "str", "bool", "none"} or part.startswith("function-")
    )


def format_validation_error(exc: ValidationError, *, source: str) -> str:
    lines = []
    for err in exc.errors():
        field, valid = _field_path(tuple(err["loc"]))
        if err["type"] == "extra_forbidden":
            lines.append(
                f"{source}: unknown key {short_repr(field)}; valid keys here: {format_choices(valid)}"
            )
        elif err["type"] == "missing":
            lines.append(f"{source}: {field}: required field is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {field or '(top level)'}: {msg} (got {short_repr(err.get('input'))})")
    unique = list(dict.fromkeys(lines))
    return "\n".join(unique[:8]) + (f"\n… and {len(unique) - 8} more" if len(unique) > 8 else "")


def load_config(path: str | Path, *, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """Read and validate a study file. ``overrides`` maps dotted keys (``search.n_trials``) to values."""
    path = Path(path)
    source = str(path)
    raw = read_study_yaml(path, source=source)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: the study file must be a mapping of keys (name, data, space, …), got {type(raw).__name__}"
        )
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, last = dotted.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"{source}: {'.'.join(parents[: i + 1])}: expected a mapping (to set {dotted}), "
                    f"got {short_repr(node)}"
                )
        node[last] = value
    return parse_config(raw, source=source, path=path.resolve())


def parse_config(raw: Mapping[str, Any], *, source: str = "<study>", path: Path | None = None) -> StudyConfig:
    """Validate an already-parsed study mapping (for scripts and tests)."""
    _check_finite(raw, source)
    try:
        config = StudyConfig.model_validate({**raw, "source": path})
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source=source)) from None
    _check_paths(config, source)
    return config


def _check_finite(raw: Mapping[str, Any], source: str) -> None:
    """Refuse NaN and infinity anywhere in the study (``lr: .nan`` would fail every trial, a NaN
    range or constraint compares false with everything). Iterative: ``raw`` may come from a script."""
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{source}: {where or '(top level)'}: {value} is not a finite number")
        if isinstance(value, Mapping):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{where}[{i}]", v) for i, v in enumerate(value))


def _exists(path: Path, *, folder: bool) -> bool:
    """Whether ``path`` is a folder (or a file); a name the OS refuses (too long, NUL) is neither."""
    try:
        return path.is_dir() if folder else path.is_file()
    except (OSError, ValueError):
        return False


def _check_paths(config: StudyConfig, source: str) -> None:
    d = config.data
    for field in ("train", "val", "folder"):
        value = getattr(d, field)
        if value is not None and not _exists(config.resolve_path(value), folder=True):
            raise ConfigError(
                f"{source}: data.{field}: folder {short_repr(str(config.resolve_path(value)))} does not exist"
            )
    if d.test is not None:  # a CSV for regression and multilabel, a class folder for classification
        folder = config.task == "classification"
        if not _exists(config.resolve_path(d.test), folder=folder):
            raise ConfigError(
                f"{source}: data.test: {'folder' if folder else 'file'} "
                f"{short_repr(str(config.resolve_path(d.test)))} does not exist"
            )
    for field in ("csv", "val_csv"):
        value = getattr(d, field)
        if value is not None and not _exists(config.resolve_path(value), folder=False):
            raise ConfigError(
                f"{source}: data.{field}: file {short_repr(str(config.resolve_path(value)))} does not exist"
            )
    for i, p in enumerate(config.plugins):
        if not _exists(config.resolve_path(p), folder=False):
            raise ConfigError(
                f"{source}: plugins[{i}]: plugin file {short_repr(str(config.resolve_path(p)))} does not exist"
            )


# --- stage 2: the space against the registry ------------------------------------------------------


_MESSAGE_LIMIT = 2000


def _cap(message: str, limit: int = _MESSAGE_LIMIT) -> str:
    """A message from a plugin or the registry, which may echo a name from the study in full, cut."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


SPACE_KINDS = {"backbone": "backbone", "head": "head", "freezing": "freezing", "regularizers": "regularizer"}


@dataclass(frozen=True)
class PluginChoice:
    """One plugin the search may pick, with its hyperparameters as the study narrowed them."""

    kind: str
    name: str
    space: SearchSpace
    enabled: Hyperparameter = Fixed(True)  # regularizers: searched on/off unless the study fixes it
    #: the plugin class, for the sampler's conditional rules (``Regularizer.applies_to``)
    plugin: type[Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    #: backbones: the input size(s) ``space.backbone.<name>.image_size`` gives it (None: the study's)
    image_size: Hyperparameter | None = None


@dataclass(frozen=True)
class ResolvedSpace:
    """The search space of a study: for each kind, the plugins it may choose among."""

    backbone: tuple[PluginChoice, ...]
    head: tuple[PluginChoice, ...]
    freezing: tuple[PluginChoice, ...]
    regularizers: tuple[PluginChoice, ...]
    lr: Hyperparameter
    warmup: Hyperparameter = Fixed(0.05)
    clip_grad_norm: Hyperparameter = Fixed(None)
    #: the training recipe: each fixed (the study's value) or searched (a list: categorical; a range)
    batch_size: Hyperparameter = Fixed(32)
    optimizer: Hyperparameter = Fixed("adamw")
    augment: Hyperparameter = Fixed("crop_flip")
    randaugment_magnitude: Hyperparameter = Fixed(9)
    random_erasing: Hyperparameter = Fixed(0.0)
    ema: Hyperparameter = Fixed(None)
    #: a searched optimizer's own lr range, when the study gives none (``train.lr.<optimizer>``;
    #: AdamW's is ``lr``, the name every study has)
    lr_by_optimizer: Mapping[str, Hyperparameter] = dataclass_field(default_factory=dict)
    #: ``data.image_size`` / ``crop_pct`` / ``crop_mode``: a list is searched, a value fixed, None
    #: keeps the backbone's own (a backbone's ``image_size`` replaces the study's)
    image_size: Hyperparameter = Fixed(None)
    crop_pct: Hyperparameter = Fixed(None)
    crop_mode: Hyperparameter = Fixed(None)
    #: the training images' median shorter side (px), set once the study's images are checked: a
    #: study that sets no image_size trains at the size derived from it (:mod:`tlsearch.data.sizes`)
    data_short_side: int | None = None


def resolve_space(config: StudyConfig, registry: Any) -> ResolvedSpace:
    """Check ``config.space`` against the registry; narrow every hyperparameter the study overrides."""
    try:
        return _resolve_space(config, registry)
    except ConfigError as exc:  # the plugins' own checks echo values too: none echoes megabytes
        message = str(exc)
        if len(message) <= _MESSAGE_LIMIT:
            raise
        raise ConfigError(_cap(message)) from None


def _defaults(registry: Any, section: str) -> dict[str, dict[str, Any]]:
    """The space's ``section`` when the study leaves it out: every installed plugin of that kind
    that declares ``default = True``, in name order."""
    kind = SPACE_KINDS[section]
    names = [n for n in registry.names(kind) if registry.get(kind, n).cls.default]
    if not names:
        raise ConfigError(
            f"space.{section} is not given and no installed {kind} declares default = True; "
            f"name one: {', '.join(registry.names(kind)) or '(none installed)'}"
        )
    return {n: {} for n in names}


def _resolve_space(config: StudyConfig, registry: Any) -> ResolvedSpace:
    source = str(config.source or "<study>")
    resolved: dict[str, tuple[PluginChoice, ...]] = {}
    for section, kind in SPACE_KINDS.items():
        choices = []
        given = getattr(config.space, section)
        for name, overrides in (given if given is not None else _defaults(registry, section)).items():
            where = f"{source}: space.{section}.{short_repr(name)[1:-1]}"
            try:
                info = registry.get(kind, name, where=f"{source}: space.{section}")
            except PluginError as exc:
                raise ConfigError(_cap(str(exc))) from None
            if not isinstance(overrides, Mapping):
                raise ConfigError(
                    f"{where}: expected a mapping of hyperparameter → value or range, got {short_repr(overrides)}"
                )
            try:
                overrides = info.cls.expand_overrides(overrides)
            except PluginError as exc:
                raise ConfigError(_cap(f"{where}: {exc}")) from None
            enabled: Hyperparameter = Fixed(True)
            if kind == "regularizer":
                enabled = narrow(
                    Categorical((True, False)),
                    overrides.pop("enabled", [True, False]),
                    where=f"{where}.enabled",
                )
            elif "enabled" in overrides:
                raise ConfigError(f"{where}.enabled: only regularizers can be switched on and off")
            image_size: Hyperparameter | None = None
            if kind == "backbone" and "image_size" in overrides:
                image_size = _backbone_image_size(overrides.pop("image_size"), where=f"{where}.image_size")
            declared = info.cls.hyperparameters
            unknown = set(overrides) - set(declared)
            if unknown:
                raise ConfigError(
                    f"{where}: unknown hyperparameter {short_repr(sorted(unknown, key=str)[0])}; "
                    f"valid: {format_choices(declared)}" + (", enabled" if kind == "regularizer" else "")
                )
            params: dict[str, Hyperparameter] = {}
            for pname, hp in declared.items():
                if pname in overrides:
                    params[pname] = narrow(hp, overrides[pname], where=f"{where}.{pname}")
                elif type(hp).__name__ == "Required":
                    raise ConfigError(
                        f"{where}.{pname}: required ({hp.describe()}){': ' + hp.help if hp.help else ''}"
                    )
                else:
                    params[pname] = hp
            try:
                params = info.cls.check_space(
                    params, study_dir=config.source.parent if config.source is not None else None
                )
            except PluginError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            choices.append(
                PluginChoice(kind, name, SearchSpace(params), enabled, plugin=info.cls, image_size=image_size)
            )
        resolved[section] = tuple(choices)
    t = config.training
    magnitude = t.randaugment_magnitude
    d = config.data
    space = ResolvedSpace(
        lr=_setting(t.lr),
        warmup=_setting(t.warmup),
        clip_grad_norm=_setting(t.clip_grad_norm),
        batch_size=_choice(t.batch_size),
        optimizer=_choice(t.optimizer),
        augment=_choice(t.augment),
        randaugment_magnitude=(
            Int(math.ceil(magnitude.low), math.floor(magnitude.high))
            if isinstance(magnitude, Range)
            else Fixed(int(magnitude))
        ),
        random_erasing=_setting(t.random_erasing),
        ema=_choice(t.ema),
        lr_by_optimizer=(
            {name: _setting(DEFAULT_LR[name]) for name in t.optimizer if name != "adamw"}
            if isinstance(t.optimizer, list) and t.searched_lr()
            else {}
        ),
        image_size=_choice(d.image_size),
        crop_pct=_choice(d.crop_pct),
        crop_mode=_choice(d.crop_mode),
        backbone=resolved["backbone"],
        head=resolved["head"],
        freezing=resolved["freezing"],
        regularizers=resolved["regularizers"],
    )
    from tlsearch.validate import check_study  # task × loss × plugins, and each plugin at its corners

    check_study(config, space, registry)
    return space


def _choice(value: Any) -> Hyperparameter:
    """A training or data setting given as a list is a categorical choice; a value (or None) is fixed."""
    return Categorical(tuple(value)) if isinstance(value, list) else Fixed(value)


def _setting(value: float | Range | None) -> Hyperparameter:
    """A training setting as a hyperparameter: a range is searched, a number (or None) is fixed."""
    if isinstance(value, Range):
        return Float(value.low, value.high, log=value.log)
    return Fixed(None if value is None else float(value))


def _backbone_image_size(value: Any, *, where: str) -> Hyperparameter:
    """``space.backbone.<name>.image_size``: an int or a list of ints, checked as ``data.image_size``."""
    try:
        sizes = _as_list(value, "image_size")
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if value is None or not all(isinstance(v, int) and not isinstance(v, bool) for v in sizes):
        raise ConfigError(f"{where}: expected a size in pixels or a list of sizes, got {short_repr(value)}")
    try:
        DataSettings._image_sizes(value)  # the same bounds as data.image_size
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return _choice(value)
