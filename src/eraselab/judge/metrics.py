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
- ``kid``: KID (Binkowski et al. 2018) as a paired, unbiased U-statistic on the detector's features of base and
  edited images at the same seeds, with a jackknife interval (:func:`kernel_inception_distance`).

>>> metric = METRICS.get("efficacy").factory()
>>> metric.update([True, False, False, None])
>>> {k: metric.compute()[k] for k in ("value", "n_valid", "n_errors")}
{'value': 0.3333333333333333, 'n_valid': 3, 'n_errors': 1}
"""

from __future__ import annotations

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


def _polynomial_kernel_sums(x: torch.Tensor, y: torch.Tensor, block: int = 1024) -> dict[str, torch.Tensor]:
    """Row sums and diagonals of k(a, b) = (a.b / d + 1)^3 over the pairs (x, x), (y, y), (x, y), and the column
    sums of (x, y), computed in row blocks so that no n x n matrix is held (n = 5,000 would take 600 MB)."""
    d = x.shape[1]
    sums = {name: torch.zeros(len(x), dtype=torch.float64) for name in ("xx", "yy", "xy", "yx")}
    for start in range(0, len(x), block):
        rows = slice(start, start + block)
        sums["xx"][rows] = ((x[rows] @ x.T / d + 1) ** 3).sum(1)
        sums["yy"][rows] = ((y[rows] @ y.T / d + 1) ** 3).sum(1)
        sums["xy"][rows] = ((x[rows] @ y.T / d + 1) ** 3).sum(1)  # row i: sum_j k(x_i, y_j)
        sums["yx"][rows] = ((y[rows] @ x.T / d + 1) ** 3).sum(1)  # row i: sum_j k(x_j, y_i)
    diagonal = {"xx": ((x * x).sum(1) / d + 1) ** 3, "yy": ((y * y).sum(1) / d + 1) ** 3,
                "xy": ((x * y).sum(1) / d + 1) ** 3}
    return {"sums": sums, "diagonal": diagonal}


def kernel_inception_distance(real: torch.Tensor, fake: torch.Tensor) -> dict:
    """KID (Binkowski et al., ICLR 2018, Sec. 3): the squared MMD between two feature sets under the cubic
    polynomial kernel k(a, b) = (a.b / d + 1)^3, for **paired** sets (row i of ``real`` and of ``fake`` come from
    the same seed, as the runner's base and edited images do; independent draws of equal size are paired validly).

    The estimate is the unbiased U-statistic of Gretton et al. (JMLR 2012, Lemma 6) over pairs z_i = (x_i, y_i):
        MMD^2_u = 1 / (n (n - 1)) sum_{i != j} h(z_i, z_j),
        h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i),
    so a same-seed cross pair k(x_i, y_i) never enters: those pairs are near-identical images, and the two-sample
    estimator torchmetrics uses (every cross pair, the diagonal included) gave -0.82 for KID(f, f) on 60 images.
    Here KID(f, f) is 0. It is computed on all n pairs, not on random subsets, so it has no random draw at all:
    the same inputs give the same value. The interval is the estimate +- 1.96 jackknife standard errors
    (leave one pair out, computed from the row sums of h). Written here because no library offers the paired
    estimator; ``tests/test_metrics.py`` checks it against a plain double loop."""
    if real.shape != fake.shape:
        raise ValueError(f"KID needs paired feature sets of one shape, got {tuple(real.shape)} and {tuple(fake.shape)}")
    n = len(real)
    if n < 3:
        raise ValueError(f"KID needs at least 3 pairs, got {n}")
    x, y = real.double(), fake.double()
    kernel = _polynomial_kernel_sums(x, y)
    sums, diagonal = kernel["sums"], kernel["diagonal"]
    rows = (sums["xx"] - diagonal["xx"]) + (sums["yy"] - diagonal["yy"])  # sum_{j != i} k(x_i,x_j) + k(y_i,y_j)
    rows = rows - (sums["xy"] - diagonal["xy"]) - (sums["yx"] - diagonal["xy"])  # - k(x_i,y_j) - k(x_j,y_i)
    total = rows.sum()  # sum_{i != j} h(z_i, z_j)
    value = total / (n * (n - 1))  # MMD^2_u
    # h is symmetric, so leaving pair i out removes row i and column i: 2 r_i.
    leave_one_out = (total - 2 * rows) / ((n - 1) * (n - 2))
    se = ((n - 1) / n * ((leave_one_out - leave_one_out.mean()) ** 2).sum()).sqrt()
    return {"value": float(value), "low": float(value - 1.96 * se), "high": float(value + 1.96 * se),
            "se": float(se), "n_valid": n, "estimator": "paired U-statistic, cubic kernel, jackknife 95% interval"}


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


# -- registry ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricSpec:
    name: str
    factory: Callable[[], object] | None  # None: computed by the runner from base/edited pairs, not per group
    higher_is_better: bool | None  # None: neither (a rate whose desirable direction depends on the study)
    description: str


METRICS: Registry[MetricSpec] = Registry("metric")
for _spec in (
    MetricSpec("presence", RateMetric, None, "share of images the detector says show the concept (ASR)"),
    MetricSpec("efficacy", RateMetric, False, "presence of the erased concept on its target prompts"),
    MetricSpec("generality", RateMetric, False, "presence of the erased concept on paraphrases / implicit prompts"),
    MetricSpec("specificity", RateMetric, True, "fidelity of neighbouring and unrelated concepts"),
    MetricSpec("presence_change", None, None, "edited minus base presence, same seeds"),
    MetricSpec("feature_distance", None, False, "edited vs base image distance, same seeds"),
    MetricSpec("clip_score", ScoreMetric, True, "CLIP score of each image with its prompt (see clip_scores)"),
):
    METRICS.register(_spec.name)(_spec)

