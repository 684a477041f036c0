"""Zero-cost backbone ranking: one frozen forward pass over the training split per candidate, a
transferability score of its features, and its cost (parameters, FLOPs, forward time).

The features go through the study's feature cache (:class:`tlsearch.train.FeatureCache`, keyed as
the trainer keys them, with :func:`backbone_identity`), so ranking a study twice, or a trial of a
frozen backbone after the ranking, pays the forward pass once. When the training split is larger
than ``max_images``, a seeded random subset is scored instead (and not cached: trials need all).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tlsearch.config import ResolvedSpace
from tlsearch.data.cache import DecodedImages
from tlsearch.data.sizes import derived_image_size
from tlsearch.kinds import FreezingStrategy, ParamGroup, TransferModel
from tlsearch.preprocessing import DataConfig
from tlsearch.rank.candidates import Candidate, candidates
from tlsearch.rank.scores import SCORES, transferability
from tlsearch.space import Categorical, Fixed, Hyperparameter
from tlsearch.train import FeatureCache, Trainer, TrainSettings, feature_key
from tlsearch.train.features import backbone_identity
from tlsearch.train.latency import LatencyCache, measure_latency

log = logging.getLogger("tlsearch")


class _StudyImages(Protocol):  # the part of tlsearch.search.StudyData the ranking needs
    def decoded(self, config: DataConfig) -> tuple[DecodedImages, DecodedImages]: ...


@dataclass
class RankedBackbone:
    """One candidate's result: its ``score`` (the study's chosen one; higher is better), every
    applicable score in ``scores``, and its cost: ``params``, ``gflops`` (when the backbone reports
    them), ``forward_ms`` (batch-1 forward time of the backbone, measured) and ``seconds`` spent
    scoring it, at ``input_size``. ``error`` says why a candidate could not be scored (it then ranks last)."""

    label: str
    plugin: str
    params: dict[str, Any]
    score: float
    score_name: str
    scores: dict[str, float] = field(default_factory=dict)
    num_params: int | None = None
    gflops: float | None = None
    forward_ms: float | None = None
    seconds: float = 0.0
    images: int = 0
    #: the input size it was scored at (:func:`ranking_size`)
    input_size: int | None = None
    feature_dim: int | None = None
    error: str | None = None
    expanded: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = None if not math.isfinite(self.score) else self.score
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankedBackbone:
        d = dict(d)
        d["score"] = -math.inf if d.get("score") is None else float(d["score"])
        return cls(**d)

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.plugin, dict(self.params), dict(self.expanded))


class _FrozenBackbone(FreezingStrategy):
    """Nothing trains: the ranking only runs the backbone forward (the trainer needs a strategy)."""

    name = "frozen_backbone"
    backbone_frozen = True

    def setup(self, model: TransferModel) -> list[ParamGroup]:
        model.requires_grad_(False)
        return []


def _subset(images: DecodedImages, n: int, seed: int) -> DecodedImages:
    keep = np.sort(np.random.default_rng(seed).choice(len(images), size=n, replace=False))
    return DecodedImages(
        np.asarray(images.images[keep]), np.asarray(images.targets[keep]), images.source.subset(list(keep))
    )


def _nchw(images: DecodedImages, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.images)).to(device).permute(0, 3, 1, 2)


def frozen_features(
    model: TransferModel,
    train: DecodedImages,
    val: DecodedImages | None,
    *,
    registry: Any,
    device: torch.device,
    cache_dir: str | Path | None,
    identity: Mapping[str, Any] | None,
    precision: str = "auto",
) -> np.ndarray:
    """The training split's features of ``model``'s frozen backbone (eval mode, the trainer's
    preprocessing, the study's ``precision``); through the feature cache when ``cache_dir`` and
    ``val`` are given."""
    trainer = Trainer(
        model.to(device),
        strategy=_FrozenBackbone(),
        num_outputs=1,
        settings=TrainSettings(precision=precision),
        device=device,
    )

    def compute() -> tuple[torch.Tensor, torch.Tensor]:
        assert val is not None
        return trainer.features(_nchw(train, device)), trainer.features(_nchw(val, device))

    if cache_dir is None or val is None:
        return trainer.features(_nchw(train, device)).float().cpu().numpy()
    key = feature_key(
        backbone=model.backbone,
        identity=identity,
        data_config=model.data_config,
        train=train,
        val=val,
        precision=trainer.precision.name,
    )
    (train_f, _), _ = FeatureCache(cache_dir).get_or_compute(key, compute, device=torch.device("cpu"))
    return np.asarray(train_f.float().cpu().numpy())


def score_candidate(
    candidate: Candidate,
    *,
    registry: Any,
    data: _StudyImages,
    task: str,
    score: str,
    image_size: int | None,
    device: torch.device,
    cache_dir: str | Path | None = None,
    max_images: int | None = None,
    seed: int = 0,
    precision: str = "auto",
    all_scores: bool = False,
) -> RankedBackbone:
    """Build ``candidate``, run it once over the training split and score its features (by
    ``score``; with ``all_scores`` every score that fits the task is in ``scores`` too)."""
    started = time.perf_counter()
    plugin = registry.get("backbone", candidate.plugin).cls(**candidate.params)
    torch.manual_seed(seed)  # random-weight candidates: the same weights, score and cache entry every time
    built = plugin.build(**({"input_size": image_size} if image_size is not None else {}))  # as a trial does
    if image_size is not None:
        built.data_config = built.data_config.with_size(image_size)
    model = TransferModel(built, torch.nn.Identity())
    model.requires_grad_(False)
    train, val = data.decoded(model.data_config)
    subset = max_images is not None and len(train) > max_images
    if subset:
        assert max_images is not None
        train = _subset(train, max_images, seed)
    features = frozen_features(
        model,
        train,
        None if subset else val,
        registry=registry,
        device=device,
        cache_dir=cache_dir,
        identity=backbone_identity(candidate.plugin, candidate.params),
        precision=precision,
    )
    labels = np.asarray(train.targets)
    names = [n for n in SCORES if task == "classification" or n == "logme"] if all_scores else [score]
    scores = {name: transferability(name, features, labels, task=task) for name in names}
    size = model.data_config.input_size
    forward_ms = (  # kept in the study's cache: a re-rank does not time the backbone again
        LatencyCache(Path(cache_dir)).measure(model.backbone, input_size=size, device=device)
        if cache_dir is not None
        else measure_latency(model.backbone, input_size=size, device=device)
    )
    described = _describe(plugin)
    value = scores[score]
    return RankedBackbone(
        label=candidate.label,
        plugin=candidate.plugin,
        params=dict(candidate.params),
        score=value if math.isfinite(value) else -math.inf,
        error=None if math.isfinite(value) else f"{score} score is not finite ({value}); ranked last",
        score_name=score,
        scores=scores,
        num_params=int(described.get("params") or sum(p.numel() for p in model.backbone.parameters())),
        gflops=described.get("gflops", built.info.get("gflops")),
        forward_ms=forward_ms,
        seconds=time.perf_counter() - started,
        images=len(train),
        input_size=size,
        feature_dim=int(features.shape[1]),
        expanded=dict(candidate.expanded),
    )


def _describe(plugin: Any) -> dict[str, Any]:
    try:
        return dict(plugin.describe() or {})
    except Exception as exc:  # describe() is optional and advisory: a failure must not stop a ranking
        log.debug("describe() of %s failed: %s", plugin.name, exc)
        return {}


def _largest(sizes: Hyperparameter | None) -> int | None:
    values = (
        sizes.choices if isinstance(sizes, Categorical) else [sizes.value] if isinstance(sizes, Fixed) else []
    )
    listed = [int(v) for v in values if v is not None]
    return max(listed) if listed else None


def ranking_size(space: ResolvedSpace, candidate: Candidate, image_size: int | None = None) -> int | None:
    """The input size a candidate is scored at: the largest of its backbone's own
    ``image_size`` list when it has one, else ``image_size`` when given, else the largest size
    the study lists (``data.image_size``); None (the backbone's native size) when the study sets
    none, or the data-derived default its trials train at (:func:`tlsearch.data.sizes.derived_image_size`).
    One size per backbone keeps the ranking one forward pass per candidate; the largest
    because a searched size is there to be tried, and features at the largest size are what the
    backbone can give at best."""
    choice = next((c for c in space.backbone if c.name == candidate.plugin), None)
    own = choice.image_size if choice is not None else None
    size = _largest(own) or image_size or _largest(space.image_size)
    if size is None and choice is not None:  # the data-derived default the trials train at
        size = derived_image_size(space, choice, candidate.params)
    return size


def rank_backbones(
    space: ResolvedSpace,
    *,
    registry: Any,
    data: _StudyImages,
    task: str,
    score: str = "logme",
    image_size: int | None = None,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
    max_images: int | None = None,
    seed: int = 0,
    precision: str = "auto",
    all_scores: bool = False,
    on_candidate: Callable[[RankedBackbone], None] | None = None,
) -> list[RankedBackbone]:
    """Every backbone candidate of ``space`` scored, best first (ties: fewer parameters first).

    Each candidate is scored at :func:`ranking_size` (``image_size``, else the study's largest
    listed size, else its own). A candidate that fails (e.g. its weights cannot be found) is kept
    with ``error`` and ranks last,
    so one broken entry does not hide the others."""
    if score not in SCORES:
        raise ValueError(f"unknown transferability score {score!r}; valid choices: {', '.join(SCORES)}")
    if task != "classification" and score != "logme":
        raise ValueError(f"score {score!r} needs class labels; for {task} use logme")
    device = torch.device(device)
    results: list[RankedBackbone] = []
    for candidate in candidates(space):
        try:
            result = score_candidate(
                candidate,
                registry=registry,
                data=data,
                task=task,
                score=score,
                image_size=ranking_size(space, candidate, image_size),
                device=device,
                cache_dir=cache_dir,
                max_images=max_images,
                seed=seed,
                precision=precision,
                all_scores=all_scores,
            )
        except Exception as exc:
            log.warning("could not score backbone %s: %s", candidate.label, exc)
            result = RankedBackbone(
                candidate.label,
                candidate.plugin,
                dict(candidate.params),
                -math.inf,
                score,
                error=f"{type(exc).__name__}: {exc}",
                expanded=dict(candidate.expanded),
            )
        results.append(result)
        if on_candidate is not None:
            on_candidate(result)
    return order(results)


def order(results: Sequence[RankedBackbone]) -> list[RankedBackbone]:
    """Best score first; equal scores: fewer parameters, then faster forward, first. A non-finite
    score (NaN, ±inf) ranks last: it says nothing about the backbone."""
    return sorted(
        results,
        key=lambda r: (
            -r.score if math.isfinite(r.score) else math.inf,
            r.num_params if r.num_params is not None else math.inf,
            r.forward_ms if r.forward_ms is not None else math.inf,
        ),
    )
