"""Metrics of erasure: a functional core and thin ``update / compute / reset`` classes (torchmetrics style).

Every metric returns the aggregate, its 95% confidence interval (Wilson for rates, bootstrap otherwise) and the
per-item values, and declares whether higher is better. Concept presence is judged by a detector upstream;
here an item is ``True`` (concept present), ``False`` (absent) or ``None`` (the judgement failed: counted as an
error, never as absent).

- ``presence`` (attack success rate when the prompts are adversarial): share of images showing the concept.
- ``efficacy`` / ``generality``: presence of the erased concept on its target prompts / on paraphrases and
  implicit prompts (lower is better; e.g. ESD, Gandikota et al. 2023, Sec. 5; UCE, Gandikota et al. 2024, Sec. 5).
- ``specificity``: fidelity on neighbouring and unrelated concepts (higher is better).
- ``presence_change``: paired change of presence from the base model to the edited one at the same seeds.
- ``feature_distance``: per-seed distance between the edited and base images in a feature space (locality).
- ``clip_scores``: CLIP score of each image with its prompt (when the user gives a CLIP model).
- ``fid`` / ``kid``: set-level distances (Heusel et al. 2017; Binkowski et al. 2018) through torchmetrics with
  an injected feature extractor (the tiny classifier's features for tiny, Inception's when the user has them).

>>> metric = METRICS.get("efficacy").factory()
>>> metric.update([True, False, False, None])
>>> {k: metric.compute()[k] for k in ("value", "n_valid", "n_errors")}
{'value': 0.3333333333333333, 'n_valid': 3, 'n_errors': 1}
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from eraselab.judge.stats import bootstrap_interval, rate_with_interval
from eraselab.registry import Registry


# -- functional core --------------------------------------------------------------------------------------------
def presence_rate(flags: Sequence[bool | None]) -> dict:
    return {**rate_with_interval(flags), "per_item": list(flags)}


def presence_change(base: Sequence[bool | None], edited: Sequence[bool | None], seed: int = 0) -> dict:
    """Edited minus base presence over pairs judged on both sides, bootstrap interval over the pairs."""
    if len(base) != len(edited):
        raise ValueError(f"presence_change needs paired items, got {len(base)} base and {len(edited)} edited")
    pairs = [(b, e) for b, e in zip(base, edited, strict=True) if b is not None and e is not None]
    diffs = [float(e) - float(b) for b, e in pairs]
    return {**bootstrap_interval(diffs, seed=seed), "n_errors": len(base) - len(pairs), "per_item": diffs}


def feature_distance(base: torch.Tensor, edited: torch.Tensor, seed: int = 0) -> dict:
    """Per-pair L2 distance between (N, D) feature rows of base and edited images at the same seeds."""
    if base.shape != edited.shape:
        raise ValueError(f"feature shapes differ: {tuple(base.shape)} vs {tuple(edited.shape)}")
    distances = (base.double() - edited.double()).norm(dim=1).tolist()
    return {**bootstrap_interval(distances, seed=seed), "per_item": distances}


def clip_scores(embedder, images: Sequence, texts: Sequence[str]) -> dict:
    """CLIP score (Hessel et al., EMNLP 2021, Eq. 1) per image-text pair: ``100 * max(cos(E_I, E_T), 0)``, with
    torchmetrics' weight of 100. Computed here because torchmetrics 1.9's CLIPScore expects the tensors that
    transformers 4 returned from ``get_image_features``; ``embedder`` is a ``ClipEmbedder``."""
    cosine = (embedder.images(images) * embedder.text(texts)).sum(-1)
    scores = (100 * cosine.clamp(min=0)).tolist()
    return {**bootstrap_interval(scores), "per_item": scores}


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor, subset_size: int = 50) -> dict:
    """KID (Binkowski et al., ICLR 2018) between two sets of precomputed features, through torchmetrics (its
    feature extractor is the identity here: the features are already computed by the detector)."""
    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():  # its "features are kept in memory" notice: these are features already
        warnings.simplefilter("ignore", UserWarning)
        metric = set_distance("kid", torch.nn.Identity(), real.shape[1], subset_size=size)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    mean, std = metric.compute()
    return {"value": float(mean), "std": float(std), "subset_size": size, "n_valid": min(len(real), len(fake))}


# -- stateful wrappers ------------------------------------------------------------------------------------------
class RateMetric:
    """Streams presence flags; ``compute`` equals :func:`presence_rate` over everything seen since ``reset``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._flags: list[bool | None] = []

    def update(self, flags: Sequence[bool | None]) -> None:
        self._flags.extend(flags)

    def compute(self) -> dict:
        return presence_rate(self._flags)


class ScoreMetric:
    """Streams per-item scores (e.g. CLIP scores); ``compute`` gives their mean with a bootstrap interval."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._scores: list[float] = []

    def update(self, scores: Sequence[float]) -> None:
        self._scores.extend(scores)

    def compute(self) -> dict:
        return {**bootstrap_interval(self._scores, seed=self.seed), "per_item": list(self._scores)}


class PairedChangeMetric:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._base: list[bool | None] = []
        self._edited: list[bool | None] = []

    def update(self, base: Sequence[bool | None], edited: Sequence[bool | None]) -> None:
        self._base.extend(base)
        self._edited.extend(edited)

    def compute(self) -> dict:
        return presence_change(self._base, self._edited, self.seed)


class FeatureDistanceMetric:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        self._base: list[torch.Tensor] = []
        self._edited: list[torch.Tensor] = []

    def update(self, base: torch.Tensor, edited: torch.Tensor) -> None:
        self._base.append(base.detach().cpu())
        self._edited.append(edited.detach().cpu())

    def compute(self) -> dict:
        if not self._base:
            return {"value": None, "low": None, "high": None, "n_valid": 0, "per_item": []}
        return feature_distance(torch.cat(self._base), torch.cat(self._edited), self.seed)


class _Features(torch.nn.Module):
    """Adapts an ``images -> (N, D)`` extractor to torchmetrics (which asks for ``num_features``)."""

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor], num_features: int) -> None:
        super().__init__()
        self.extractor, self.num_features = extractor, num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)


def set_distance(kind: str, extractor: Callable[[torch.Tensor], torch.Tensor], num_features: int,
                 subset_size: int = 50):
    """A torchmetrics FID or KID over ``extractor``'s features; images go in as float [0, 1] (normalize=True)."""
    features = _Features(extractor, num_features)
    if kind == "fid":
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=features, normalize=True)
    from torchmetrics.image.kid import KernelInceptionDistance

    return KernelInceptionDistance(feature=features, normalize=True, subset_size=subset_size)


# -- registry ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    name: str
    factory: Callable[[], object]
    higher_is_better: bool | None  # None: neither (a rate whose desirable direction depends on the study)
    description: str


METRICS: Registry[MetricSpec] = Registry("metric")
for _spec in (
    MetricSpec("presence", RateMetric, None, "share of images the detector says show the concept (ASR)"),
    MetricSpec("efficacy", RateMetric, False, "presence of the erased concept on its target prompts"),
    MetricSpec("generality", RateMetric, False, "presence of the erased concept on paraphrases / implicit prompts"),
    MetricSpec("specificity", RateMetric, True, "fidelity of neighbouring and unrelated concepts"),
    MetricSpec("presence_change", PairedChangeMetric, None, "edited minus base presence, same seeds"),
    MetricSpec("feature_distance", FeatureDistanceMetric, False, "edited vs base image distance, same seeds"),
    MetricSpec("clip_score", ScoreMetric, True, "CLIP score of each image with its prompt (see clip_scores)"),
):
    METRICS.register(_spec.name)(_spec)

